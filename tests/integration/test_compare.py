"""`ihlab-compare` on real runs: fewshot_fast unclamped (no learning within 300 steps) against
subcircuit A clamped (learns within 300 steps), 2 seeds each, beside a failed and an unfinished run,
all in one folder shaped like a multirun; and the statistics helper on synthetic samples."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import compose_config, quiet
from ihlab.compare import compare, compare_samples, main
from ihlab.config import to_train_config
from ihlab.outputs import write_summary
from ihlab.train import config_dir, train

SHORT = (
    "experiment=fewshot_fast",
    "data.eval_size=200",
    "data.n_train_classes=200",
    "trainer.max_steps=300",
    "trainer.eval_every=20",
    "trainer.score_every=100",
)
RUNS = ("0_baseline_s0", "1_baseline_s1", "2_subcircuit_a_s0", "3_subcircuit_a_s1")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multirun-shaped folder: 4 trained runs, a failed one and an unfinished one."""
    root = tmp_path_factory.mktemp("multirun")
    for num, (clamp, seed) in enumerate(
        [("none", 0), ("none", 1), ("subcircuit_a", 0), ("subcircuit_a", 1)]
    ):
        cfg = compose_config(quiet([*SHORT, f"clamp={clamp}", f"seed={seed}"]))
        assert f"{num}_{cfg.condition}_s{seed}" == RUNS[num]
        train(to_train_config(cfg), root / RUNS[num], OmegaConf.to_container(cfg, resolve=True))
    failed = root / "4_baseline_s2"
    failed.mkdir()
    error = {"status": "failed", "error": "RuntimeError: boom", "condition": "baseline", "seed": 2}
    write_summary(failed / "summary.json", error)
    unfinished = root / "5_subcircuit_a_s2"  # still going: metrics and config, no summary yet
    shutil.copytree(root / RUNS[2] / ".hydra", unfinished / ".hydra")
    shutil.copy(root / RUNS[2] / "metrics.csv", unfinished / "metrics.csv")
    return root


@pytest.fixture(scope="module")
def result(sweep: Path) -> dict[str, Any]:
    return compare([sweep])  # out defaults to the multirun folder


def summaries(sweep: Path) -> dict[str, dict[str, Any]]:
    return {name: json.loads((sweep / name / "summary.json").read_text()) for name in RUNS}


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["condition"]: row for row in csv.DictReader(f)}


def test_csv_has_one_row_per_condition_matching_the_summaries(
    sweep: Path, result: dict[str, Any]
) -> None:
    rows = read_rows(sweep / "comparison.csv")
    assert list(rows) == ["baseline", "subcircuit_a"] and result["baseline"] == "baseline"
    by_condition: dict[str, list[dict[str, Any]]] = {}
    for s in summaries(sweep).values():
        by_condition.setdefault(s["condition"], []).append(s)
    for condition, runs in by_condition.items():
        row = rows[condition]
        assert row["n_runs"] == "2" and row["seeds"] == "0,1"
        times = [s["learning_time"]["step"] or s["steps"] for s in runs]  # never learned: last step
        assert float(row["learning_time_mean"]) == pytest.approx(sum(times) / 2)
        losses = [s["final"]["eval/train/loss"] for s in runs]
        assert float(row["final_loss_mean"]) == pytest.approx(sum(losses) / 2)
        assert float(row["best_eval/heldout_pairs/acc_mean"]) == pytest.approx(
            sum(s["best"]["eval/heldout_pairs/acc"] for s in runs) / 2
        )
    assert [s["learning_time"]["step"] for s in by_condition["baseline"]] == [None, None]
    assert rows["baseline"]["n_not_learned"] == "2" and rows["subcircuit_a"]["n_not_learned"] == "0"
    assert float(rows["subcircuit_a"]["learning_time_mean"]) < 300
    for quantity in ("learning_time", "final_loss"):
        assert rows["baseline"][f"{quantity}_mwu_p"] == ""  # the baseline is not tested
        for test in ("mwu_p", "welch_p"):
            p = float(rows["subcircuit_a"][f"{quantity}_{test}"])
            assert math.isnan(p) or 0 <= p <= 1
    assert float(rows["subcircuit_a"]["final_loss_cohen_d"]) < -2  # far lower final loss
    assert float(rows["subcircuit_a"]["final_loss_rank_biserial"]) == -1


def test_markdown_lists_the_runs_left_out_and_the_learning_time_rule(sweep: Path) -> None:
    md = (sweep / "comparison.md").read_text()
    assert "| baseline | 2 | 0,1 |" in md and "| subcircuit_a | 2 | 0,1 |" in md
    assert "counts as its last step" in md
    assert "| 4_baseline_s2 | failed | baseline | RuntimeError: boom |" in md
    assert "| 5_subcircuit_a_s2 | unfinished | subcircuit_a |" in md


def test_plots_are_png_files(sweep: Path, result: dict[str, Any]) -> None:
    for name in ("curves", "onsets", "heads"):
        path = sweep / f"{name}.png"
        assert result["files"][name] == str(path)
        assert path.read_bytes()[:8] == PNG


@pytest.mark.parametrize(("key", "groups"), [("seed", ["0", "1"]), ("data.n_labels", ["5"])])
def test_grouping_by_a_config_key(sweep: Path, tmp_path: Path, key: str, groups: list[str]) -> None:
    out = compare([sweep / name for name in RUNS], group_by=key, out=tmp_path)
    assert out["baseline"] == groups[0]
    rows = read_rows(tmp_path / "comparison.csv")
    assert list(rows) == groups
    assert sum(int(row["n_runs"]) for row in rows.values()) == 4
    assert "None: every run completed." in (tmp_path / "comparison.md").read_text()


def test_main_through_hydra_compose(sweep: Path, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("compare", overrides=[f"runs=['{sweep}']", f"out='{tmp_path}'"])
        with pytest.raises(ConfigCompositionException, match="grouping"):
            compose("compare", overrides=[f"runs=['{sweep}']", "grouping=seed"])
    result = main(cfg)
    assert result["baseline"] == "baseline" and result["metric"] == "eval/train/loss"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "comparison.csv",
        "comparison.md",
        "curves.png",
        "heads.png",
        "onsets.png",
    ]


def test_compare_samples_on_synthetic_numbers() -> None:
    apart = compare_samples([10.0, 11, 12, 13, 14], [0.0, 1, 2, 3, 4])
    assert apart["mwu_p"] < 0.01 and apart["welch_p"] < 0.001
    assert apart["cohen_d"] > 5 and apart["rank_biserial"] == 1 and apart["note"] == ""
    close = compare_samples([1.0, 2, 3, 4], [1.5, 2.5, 3.5, 4.5])
    assert close["mwu_p"] > 0.5 and abs(close["cohen_d"]) < 0.5
    few = compare_samples([1.0], [2.0, 3.0])
    assert math.isnan(few["mwu_p"]) and math.isnan(few["cohen_d"]) and "at least 2" in few["note"]
    flat = compare_samples([5.0, 5.0], [3.0, 3.0])
    assert flat["rank_biserial"] == 1 and 0 <= flat["mwu_p"] <= 1
    assert (
        math.isnan(flat["welch_p"])
        and math.isnan(flat["cohen_d"])
        and "zero variance" in flat["note"]
    )
    same = compare_samples([2.0, 2.0], [2.0, 2.0])
    assert math.isnan(same["mwu_p"]) and "equal" in same["note"]
