"""`ihlab-compare` on real runs: fewshot_fast unclamped (no learning within 300 steps: censored)
against subcircuit A clamped (learns within 300 steps), 2 seeds each, beside a failed and an
unfinished run, all in one folder shaped like a multirun; runs of another experiment and runs with
unreadable files beside them. The statistics themselves: tests/unit/test_compare_stats.py."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from conftest import SharedRuns
from ihlab.apps.compare import main
from ihlab.apps.hydra_entry import config_dir
from ihlab.compare.study import compare
from ihlab.runs.summary import write_summary
from ihlab.stats.groups import holm

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
def sweep(shared_runs: SharedRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multirun-shaped folder: 4 trained runs (trained once per session, shared by the xdist
    workers), a failed one and an unfinished one; this module's own copy."""
    root = tmp_path_factory.mktemp("multirun")
    points = [("none", 0), ("none", 1), ("subcircuit_a", 0), ("subcircuit_a", 1)]
    runs = shared_runs.get_all(
        {
            f"compare_{name}": (*SHORT, f"clamps={c}", f"seed={s}")
            for name, (c, s) in zip(RUNS, points, strict=True)
        }
    )
    for num, (_, seed) in enumerate(points):
        run = runs[f"compare_{RUNS[num]}"]
        condition = json.loads((run / "summary.json").read_text())["condition"]
        assert f"{num}_{condition}_s{seed}" == RUNS[num]
        SharedRuns.copy(run, root / RUNS[num])
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
        losses = [s["final"]["eval/train/loss"] for s in runs]
        assert float(row["final_loss_mean"]) == pytest.approx(sum(losses) / 2)
        assert float(row["best_eval/heldout_pairs/acc_mean"]) == pytest.approx(
            sum(s["best"]["eval/heldout_pairs/acc"] for s in runs) / 2
        )
        # 2 values: the bootstrap means run from the smaller value to the larger.
        assert float(row["final_loss_ci_low"]) == min(losses)
        assert float(row["final_loss_ci_high"]) == max(losses)
    # Baseline: never learned in 300 steps, both runs censored; no median, no mean.
    assert [s["learning_time"]["step"] for s in by_condition["baseline"]] == [None, None]
    base, clamped = rows["baseline"], rows["subcircuit_a"]
    assert base["n_censored"] == "2" and base["learning_time_median"] == "inf"
    assert base["learning_time_mean"] == "nan"
    # Subcircuit A: both learned; Kaplan-Meier median = the first learning time (S drops to 1/2).
    times = sorted(s["learning_time"]["step"] for s in by_condition["subcircuit_a"])
    assert clamped["n_censored"] == "0" and float(clamped["learning_time_median"]) == times[0] < 300
    assert float(clamped["learning_time_mean"]) == pytest.approx(sum(times) / 2)
    # 2 learned vs 2 censored: the observed split and its mirror are the most extreme of C(4, 2).
    assert float(clamped["learning_time_logrank_p"]) == pytest.approx(2 / 6)
    assert clamped["learning_time_mwu_p"] == "nan" and "censored" in clamped["learning_time_note"]
    # Final loss: 2 vs 2 completely separated, exact Mann-Whitney p = 2/6.
    assert float(clamped["final_loss_mwu_p"]) == pytest.approx(2 / 6)
    assert clamped["final_loss_mwu_method"] == "exact"
    assert float(clamped["final_loss_cohen_d"]) < -2  # far lower final loss
    assert float(clamped["final_loss_rank_biserial"]) == -1
    assert base["final_loss_mwu_p"] == ""  # the baseline is not tested
    # Holm over the comparison's 3 tests: log-rank, Mann-Whitney and Welch.
    keys = ["learning_time_logrank_p", "final_loss_mwu_p", "final_loss_welch_p"]
    raw = [float(clamped[k]) for k in keys]
    for key, adjusted in zip(keys, holm(raw), strict=True):
        assert float(clamped[f"{key}_holm"]) == pytest.approx(adjusted)


def test_markdown_lists_the_runs_left_out_and_the_censoring_rule(
    sweep: Path, result: dict[str, Any]
) -> None:
    md = (sweep / "comparison.md").read_text()
    assert "| baseline | 2 | 0,1 | not reached | 2 |" in md
    assert "| subcircuit_a | 2 | 0,1 |" in md and "censored there" in md
    assert "| subcircuit_a | learning time | log-rank (exact permutation) | χ² = " in md
    assert "| subcircuit_a | final loss | Mann-Whitney (exact) | U = 0 | 0.333 |" in md
    assert "adjusted over all 3 tests" in md
    assert "| 4_baseline_s2 | failed | baseline | RuntimeError: boom |" in md
    assert "| 5_subcircuit_a_s2 | unfinished | subcircuit_a | no summary.json yet" in md


def test_plots_are_png_files(sweep: Path, result: dict[str, Any]) -> None:
    for name in ("learning_time", "curves", "onsets", "heads"):
        path = sweep / f"{name}.png"
        assert result["files"][name] == str(path)
        assert path.read_bytes()[:8] == PNG


def test_report_html_holds_the_tables_and_embeds_every_plot(
    sweep: Path, result: dict[str, Any]
) -> None:
    page = (sweep / "report.html").read_text()
    assert result["files"]["report.html"] == str(sweep / "report.html")
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    plots = ("learning_time", "curves", "onsets", "heads", "loss_pca")  # no per-position loss
    assert [base64.b64decode(e) for e in embedded] == [
        (sweep / f"{name}.png").read_bytes() for name in plots
    ]
    assert "<th>condition</th>" in page
    assert "<td>baseline</td>" in page and "<td>subcircuit_a</td>" in page
    markdown = (sweep / "comparison.md").read_text().splitlines()
    assert page.count("<table>") == sum(line.startswith("|---") for line in markdown)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: opens offline


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
        "learning_time.png",
        "loss_pca.png",
        "loss_pca_joint.csv",
        "onsets.png",
        "report.html",
    ]


def copy_runs(sweep: Path, dest: Path, names: tuple[str, ...] = RUNS) -> Path:
    for name in names:
        shutil.copytree(sweep / name, dest / name)
    return dest


def test_runs_of_different_experiments_are_not_pooled(sweep: Path, tmp_path: Path) -> None:
    root = copy_runs(sweep, tmp_path / "runs")
    other = root / "1_baseline_s1"  # now a run of another experiment, in the same condition
    summary = json.loads((other / "summary.json").read_text())
    write_summary(other / "summary.json", {**summary, "name": "induction_2l"})
    resolved = other / ".hydra" / "resolved.yaml"
    resolved.write_text(resolved.read_text().replace("name: fewshot_fast", "name: induction_2l"))
    with pytest.raises(ValueError, match=r"'baseline' .* different experiments .*group_by=name"):
        compare([root], out=tmp_path / "out")
    with pytest.raises(ValueError, match=r"fewshot_fast: 3 runs.*induction_2l: 1 runs"):
        compare([root], group_by="data.n_labels", out=tmp_path / "out")
    rows = compare([root], group_by="name", out=tmp_path / "out")["rows"]
    assert [(r["condition"], r["n_runs"]) for r in rows] == [
        ("fewshot_fast", 3),
        ("induction_2l", 1),
    ]


@pytest.mark.parametrize(
    ("file", "content", "group_by"),
    [
        ("metrics.csv", "step,sequences,eval/train/loss\n100,3200,0.5\n200,x,0.4\n", "condition"),
        ("metrics.csv", "", "condition"),
        ("summary.json", '{"status": "completed", "condition": "baseline"', "condition"),
        ("summary.json", '{"status": "completed", "steps": 300}', "condition"),
        (".hydra/resolved.yaml", "seed: [0, 1", "seed"),
    ],
)
def test_an_unreadable_file_is_named_and_its_run_left_out(
    sweep: Path, tmp_path: Path, file: str, content: str, group_by: str
) -> None:
    root = copy_runs(sweep, tmp_path / "runs")
    bad = root / "2_subcircuit_a_s0"
    (bad / file).write_text(content)
    result = compare([root], group_by=group_by, out=tmp_path / "out")
    assert [(s["dir"], s["status"]) for s in result["skipped"]] == [(str(bad), "unreadable")]
    reason = result["skipped"][0]["reason"]
    assert str(bad / file) in reason and "Fix:" in reason
    assert sum(r["n_runs"] for r in result["rows"]) == 3
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert f"| {bad} | unreadable |" in md
