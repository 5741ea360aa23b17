"""Clamped training through ihlab-train: the clamp group, conditions, windows in training and
evaluation, unclamped evaluation side by side, grafts from a real checkpoint, early errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config, quiet
from ihlab.apps.train import run_job
from ihlab.errors import ConfigError
from ihlab.runs.tables import read_metrics

FEWSHOT = ("experiment=fewshot_fast", "data.eval_size=100", "data.n_train_classes=100")
SHORT = ("trainer.max_steps=40", "trainer.eval_every=20", "trainer.score_every=20")


def test_clamp_group_names_the_condition(make_config) -> None:
    assert make_config(*FEWSHOT).condition == "baseline"
    assert make_config(*FEWSHOT, "clamps=match_copy").condition == "match+copy"
    config = make_config(*FEWSHOT, "clamps=[one_head,prev_token]", "+named_heads.kept=[0]")
    assert config.condition == "one_head+prev_token"
    copy = make_config(*FEWSHOT, "clamps=singh_copy", "+named_heads.kept=[6]")
    assert copy.clamps["copy"].heads == copy.clamps["one_head"].heads == [6]
    assert make_config(*FEWSHOT, "clamps=prev_token", "condition=mine").condition == "mine"


def test_every_shipped_clamp_config_validates(make_config) -> None:
    clamp_dir = Path(__file__).parents[2] / "conf" / "clamps"
    for path in sorted(clamp_dir.glob("*.yaml")):
        base = FEWSHOT
        if path.stem == "induction":
            base = ("experiment=induction_2l",)
        elif path.stem == "one_head" or path.stem.startswith("singh_"):  # read named_heads
            base = ("experiment=fewshot_singh_cpu",)
        required = {
            "graft": f"clamps.graft.checkpoint={__file__}",
            "custom": "clamps.custom.site=logits",
        }
        make_config(
            *base, f"clamps={path.stem}", *([required[path.stem]] if path.stem in required else [])
        )


def test_clamped_heads_show_the_clamp_inside_its_window_only(run_training, tmp_path: Path) -> None:
    summary = run_training(
        *FEWSHOT,
        *SHORT,
        "clamps=prev_token",
        "+clamps.prev_token.windows=[{start: 0, stop: 30}]",
        "trainer.eval_unclamped=true",
    )
    assert summary["condition"] == "prev_token"
    rows = {int(r["step"]): r for r in read_metrics(tmp_path / "run" / "metrics.csv")}
    key = "heads/previous_token/L0H0"
    assert rows[0][key] == rows[20][key] == 1.0  # clamped: exactly the previous token
    assert rows[40][key] < 0.9  # the window closed at step 30
    assert rows[20]["unclamped/" + key] < 0.9  # what head 0's own weights would do
    assert rows[20]["heads/previous_token/L0H1"] == rows[20]["unclamped/heads/previous_token/L0H1"]
    for split in ("train", "heldout_pairs"):
        assert f"unclamped/eval/{split}/loss" in rows[20] and f"eval/{split}/loss" in rows[20]
    assert rows[40]["eval/train/loss"] == rows[40]["unclamped/eval/train/loss"]  # window closed
    assert rows[20]["eval/train/loss"] != rows[20]["unclamped/eval/train/loss"]


def test_graft_from_a_finished_runs_checkpoint(run_training, tmp_path: Path) -> None:
    """Grafting the source's logits makes every evaluation of the grafted run the source's final
    one, whatever the grafted model's own weights (they get no gradient through the graft)."""
    source = run_training(*FEWSHOT, *SHORT, name="source")
    checkpoint = tmp_path / "source" / "checkpoints" / "last.ckpt"
    summary = run_training(
        *FEWSHOT,
        *SHORT,
        "clamps=graft",
        f"clamps.graft.checkpoint={checkpoint}",
        name="grafted",
    )
    assert summary["condition"] == "graft" and summary["status"] == "completed"
    grafted = run_training(
        *FEWSHOT,
        *SHORT,
        "clamps=graft",
        f"clamps.graft.checkpoint={checkpoint}",
        "clamps.graft.site=logits",
        name="logits",
    )
    rows = [r for r in read_metrics(tmp_path / "logits" / "metrics.csv") if "eval/train/loss" in r]
    assert [int(r["step"]) for r in rows] == [20, 40]
    for split in ("train", "heldout_pairs", "heldout_exemplars", "unseen_classes"):
        final = source["final"][f"eval/{split}/loss"]  # the source at step 40, its checkpoint
        assert final != pytest.approx(summary["final"][f"eval/{split}/loss"], rel=1e-3)
        for row in rows:
            assert row[f"eval/{split}/loss"] == pytest.approx(final, rel=1e-6), split
    assert grafted["final"]["eval/train/acc"] == source["final"]["eval/train/acc"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clamps.prev_token.site=blocks.2.attn.pattern", "site 'blocks.2.attn.pattern' does"),
        ("clamps=[prev_token,graft]", "clamps.graft: value graft needs checkpoint=PATH"),
        ("clamps.prev_token.heads=[8]", "clamps.prev_token: head 8 does not exist"),
        ("clamps.prev_token.value=copy", "clamps.prev_token: value copy"),
    ],
)
def test_bad_clamp_fails_before_training(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_config(quiet([*FEWSHOT, "clamps=prev_token", override]))  # a later clamps= wins
    with pytest.raises(SystemExit, match=message):
        run_job(cfg, tmp_path, multirun=False)
    assert not (tmp_path / "checkpoints").exists()
    status = json.loads((tmp_path / "summary.json").read_text())["status"]
    assert status == "config_error"


def test_an_unknown_clamp_key_fails_at_composition() -> None:
    with pytest.raises(Exception, match="valu"):
        compose_config(quiet([*FEWSHOT, "clamps=prev_token", "clamps.prev_token.valu=zero"]))


def test_a_graft_checkpoint_from_another_shape_is_rejected(run_training, tmp_path: Path) -> None:
    run_training("trainer.max_steps=5", name="tokens")  # induction_2l: token data
    checkpoint = tmp_path / "tokens" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="shape differs"):
        run_training(
            *FEWSHOT,
            *SHORT,
            "clamps=graft",
            f"clamps.graft.checkpoint={checkpoint}",
            name="bad",
        )
