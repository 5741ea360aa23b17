"""ihlab-dissect on real runs: the intact model is what training logged, every intervention's
numbers equal a hand-written computation (the model's weights run by code of this file, not by
the lab's forward, hooks, clamps or metrics), a stopped dissection resumes without recomputing,
and bad input fails before any model is evaluated, naming it."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import SharedRuns, train_in_process
from hand_ablation import hand_ablated_loss
from ihlab.clamps.spec import ClampConfig
from ihlab.data import make_family
from ihlab.dissect import run as dissect_run
from ihlab.dissect.evaluate import CheckpointEvaluation
from ihlab.dissect.run import dissect
from ihlab.dissect.spec import DissectConfig, HeadValue
from ihlab.errors import ConfigError
from ihlab.model import ModelConfig, ModelIO, Positional, shape_state
from ihlab.runs.checkpoints import load_lab_model
from ihlab.runs.tables import read_metrics
from ihlab.train.schema import read_run_config

# A tiny few-shot run whose forward this file writes out by hand: learned positions, pre-LayerNorm,
# attention-only, no biases but the embedding's and the unembedding's.
TINY_FEWSHOT = (
    "experiment=fewshot_fast",
    "model.positional=learned",
    "model.n_heads=4",
    "model.d_model=16",
    "data.eval_size=64",
    "data.eval_batch_size=32",
    "data.n_train_classes=40",
    "trainer.max_steps=60",
    "trainer.eval_every=30",
    "trainer.checkpoint_every=30",
    "trainer.score_every=0",
)


def rows_of(result: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in result["rows"] if all(r[k] == v for k, v in match.items())]


def one(result: dict[str, Any], **match: Any) -> dict[str, Any]:
    (row,) = rows_of(result, **match)
    return row


@pytest.fixture(scope="module")
def token_dissection(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shared reference run (RUN: checkpoints at 50, 100, 120) dissected, heads zeroed."""
    out = tmp_path_factory.mktemp("dissect")
    return dissect(DissectConfig(runs=[str(reference)], keep_one=False, layers=False, out=str(out)))


def test_the_intact_model_is_what_training_logged(token_dissection, reference: Path) -> None:
    logged = {int(r["step"]): r for r in read_metrics(reference / "metrics.csv")}
    steps = sorted({r["step"] for r in token_dissection["rows"]})
    assert steps == [50, 100, 120]
    for step in (100, 120):  # the evaluation steps among them
        for metric in ("loss", "acc", "icl_score", "loss_first", "loss_repeat"):
            row = one(token_dissection, step=step, intervention="intact", metric=metric)
            assert row["value"] == pytest.approx(logged[step][f"eval/{metric}"], abs=1e-5)
            assert row["ci_low"] < row["value"] < row["ci_high"]
            assert row["n"] == 64  # RUN's evaluation sequences


def test_the_first_ranked_head_changes_the_repeat_loss_as_a_hand_written_ablation_does(
    token_dissection, reference: Path
) -> None:
    heads = rows_of(token_dissection, step=120, family="heads/zero", metric="loss_repeat")
    first = max(heads, key=lambda r: abs(r["change"]))
    config = read_run_config(reference)
    batch = make_family(config.data, config.seed).eval_sets["eval"]
    model = load_lab_model(reference / "checkpoints" / "last.ckpt")
    repeat = batch["repeat_mask"]
    intact = hand_ablated_loss(model, batch, 0, None)[repeat].mean()
    ablated = hand_ablated_loss(model, batch, first["layer"], first["head"])[repeat].mean()
    assert first["change"] == pytest.approx(float(ablated - intact), abs=1e-5)
    assert first["ci_low"] <= first["change"] <= first["ci_high"]


def test_the_tables_and_figures_are_written(token_dissection) -> None:
    files = {name: Path(path) for name, path in token_dissection["files"].items()}
    for name in ("table", "seeds", "markdown", "attribution", "progress", "wiring", "report"):
        assert files[name].stat().st_size > 0, name
    markdown = files["markdown"].read_text()
    assert "### Remove one head: `induction_2l/baseline`, step 120 (1 run)" in markdown
    assert "### Wiring: `induction_2l/baseline`" in markdown
    page = files["report"].read_text()
    assert page.count("data:image/png;base64,") == 3


def test_a_stopped_dissection_resumes_without_recomputing_a_finished_checkpoint(
    reference: Path, tmp_path: Path, monkeypatch
) -> None:
    config = DissectConfig(runs=[str(reference)], heads=[], keep_one=False, out=str(tmp_path))
    evaluated: list[int] = []
    run = CheckpointEvaluation.run

    def counted(self, split, interventions, batched=True):
        evaluated.append(self.step)
        if self.step == 100 and evaluated.count(100) == 1:
            raise KeyboardInterrupt  # stopped in the middle of the second checkpoint
        return run(self, split, interventions, batched)

    monkeypatch.setattr(CheckpointEvaluation, "run", counted)
    with pytest.raises(KeyboardInterrupt):
        dissect(config)
    assert {r["step"] for r in dissect_run.read_rows(tmp_path / "dissection.csv")} == {50}
    resumed = dissect(config)
    assert evaluated == [50, 100, 100, 120]  # 50 was not evaluated again
    monkeypatch.undo()
    fresh = dissect(DissectConfig(**{**config.__dict__, "out": str(tmp_path / "fresh")}))
    assert [(r["step"], r["intervention"], r["metric"]) for r in resumed["rows"]] == [
        (r["step"], r["intervention"], r["metric"]) for r in fresh["rows"]
    ]
    for mine, theirs in zip(resumed["rows"], fresh["rows"], strict=True):
        assert mine["value"] == pytest.approx(theirs["value"], abs=1e-12)
    with pytest.raises(ConfigError, match=r"holds another dissection \(its layers differ\)"):
        dissect(
            DissectConfig(
                runs=[str(reference)], heads=[], keep_one=False, layers=False, out=str(tmp_path)
            )
        )


def broken_copies(reference: Path, root: Path) -> dict[str, Path]:
    """Copies of the reference: one without checkpoints, one holding another model's, one whose
    step-100 checkpoint lost its second half (a disk that filled)."""
    bare = SharedRuns.copy(reference, root / "bare")
    shutil.rmtree(bare / "checkpoints")
    alien = SharedRuns.copy(reference, root / "alien")
    other = ModelConfig(n_layers=1, n_heads=2, d_model=8, positional=Positional.none)
    state = {
        "global_step": 50,
        "state_dict": {},
        "ihlab_model": shape_state(other, ModelIO(n_ctx=10, d_vocab_out=7, d_vocab=7)),
    }
    torch.save(state, alien / "checkpoints" / "step_000050.ckpt")
    truncated = SharedRuns.copy(reference, root / "truncated")
    path = truncated / "checkpoints" / "step_000100.ckpt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {"bare": bare, "alien": alien, "truncated": truncated}


@pytest.mark.parametrize(
    ("case", "fields", "message"),
    [
        ("bare", {}, r"runs: .*bare has no checkpoints, so there is nothing to dissect"),
        ("alien", {}, r"checkpoint .*step_000050.ckpt is another experiment's"),
        (
            "truncated",
            {"checkpoints": "last"},
            r"runs: checkpoint .*step_000100.ckpt is corrupt or truncated .*Fix: move it out of",
        ),
        ("reference", {"steps": [70]}, r"steps: .* has no checkpoint at step\(s\) \[70\]"),
        ("reference", {"splits": ["heldout_pairs"]}, r"splits: \['heldout_pairs'\] are not"),
        (
            "reference",
            {"interventions": {"far": ClampConfig(site="blocks.5.attn.z")}},
            r"interventions.far: site 'blocks.5.attn.z' does not exist",
        ),
        (
            "reference",
            {"interventions": {"h9": ClampConfig(site="blocks.1.attn.z", heads=[9])}},
            r"interventions.h9: head 9 does not exist",
        ),
        (
            "reference",
            {"interventions": {"p": ClampConfig(site="blocks.1.attn.z", value="previous_token")}},
            r"interventions.p: value previous_token needs an attn.pattern site",
        ),
    ],
    ids=[
        "no checkpoints",
        "another experiment",
        "a truncated checkpoint",
        "missing step",
        "unknown split",
        "missing site",
        "missing head",
        "value the site cannot take",
    ],
)
def test_bad_input_fails_before_any_model_is_evaluated(
    reference: Path, tmp_path: Path, monkeypatch, case: str, fields: dict, message: str
) -> None:
    runs = {**broken_copies(reference, tmp_path), "reference": reference}
    monkeypatch.setattr(dissect_run, "load_lab_model", lambda *a: pytest.fail("evaluated"))
    with pytest.raises(ConfigError, match=message):
        dissect(DissectConfig(runs=[str(runs[case])], out=str(tmp_path / "out"), **fields))
    assert not (tmp_path / "out" / "dissection.csv").exists()


def manual_forward(
    model: Any,
    batch: dict[str, Tensor],
    zero: dict[int, list[int]] | None = None,
    zero_layers: tuple[int, ...] = (),
    patterns: dict[int, tuple[list[int], Tensor]] | None = None,
    held: dict[int, tuple[int, Tensor]] | None = None,
    outputs: list[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """The tiny few-shot model's forward written out here from its weights: `zero` heads' outputs
    zeroed per layer, `zero_layers` whose attention output is zeroed, `patterns` holding the
    listed heads' attention at a given (query, key) matrix, `held` one head's output per layer
    held at a given (pos, d_head) value. Returns logits and patterns; `outputs` receives every
    layer's head outputs, (batch, pos, head, d_head)."""
    labels, features = batch["labels"], batch["features"]
    b, n = labels.shape
    d, heads, d_head = model.cfg.d_model, model.cfg.n_heads, model.cfg.head_dim
    exemplar = features @ model.embed_features.weight.T + model.embed_features.bias
    label = model.embed_labels.weight[labels.clamp(min=0)]
    x = torch.where((labels >= 0)[..., None], label, exemplar) + model.pos_embed.weight[:n]
    seen = []
    for layer, block in enumerate(model.blocks):
        h = F.layer_norm(x, (d,), block.ln_attn.weight, block.ln_attn.bias)
        q, k, v = (h @ block.attn.qkv.weight.T).view(b, n, 3, heads, d_head).unbind(2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d_head)
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        pattern = scores.masked_fill(future, -math.inf).softmax(-1)
        if patterns and layer in patterns:
            fixed, matrix = patterns[layer]
            pattern = pattern.clone()
            pattern[:, fixed] = matrix
        seen.append(pattern)
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v).clone()
        if zero and layer in zero:
            z[:, :, zero[layer]] = 0
        if held and layer in held:
            head, value = held[layer]
            z[:, :, head] = value
        if outputs is not None:
            outputs.append(z)
        out = z.reshape(b, n, heads * d_head) @ block.attn.out.weight.T
        x = x + (out * 0 if layer in zero_layers else out)
    final = F.layer_norm(x, (d,), model.ln_final.weight, model.ln_final.bias)
    return final @ model.unembed.weight.T + model.unembed.bias, seen


def accuracy(logits: Tensor, batch: dict[str, Tensor]) -> float:
    return float((logits[:, -1].argmax(-1) == batch["target"]).double().mean())


def strength(pattern: Tensor, batch: dict[str, Tensor], head: int) -> float:
    """Singh et al.'s induction strength of one head, from its pattern: the query's attention
    to the correct label's position minus to the other label's."""
    query = pattern[:, head, -1]  # (batch, key)
    labels, target = batch["labels"], batch["target"]
    correct = (labels == target[:, None]) & (labels >= 0)
    wrong = (labels != target[:, None]) & (labels >= 0)
    return float(((query * correct).sum(-1) - (query * wrong).sum(-1)).double().mean())


def test_fewshot_remove_one_keep_one_wiring_and_progress_measures_match_a_hand_written_forward(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    train_in_process(run, *TINY_FEWSHOT)
    previous = ClampConfig(site="blocks.0.attn.pattern", value="previous_token", heads=[1])
    result = dissect(
        DissectConfig(
            runs=[str(run)],
            checkpoints="last",
            heads=[HeadValue.zero],
            interventions={"prev": previous},
            out=str(tmp_path / "out"),
        )
    )
    config = read_run_config(run)
    family = make_family(config.data, config.seed)
    model = load_lab_model(run / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        for split in family.eval_splits:
            batch = family.eval_sets[split]

            def value(name: str, metric: str = "acc", split: str = split) -> float:
                return one(result, step=60, intervention=name, split=split, metric=metric)["value"]

            logits, patterns = manual_forward(model, batch)
            assert value("intact") == pytest.approx(accuracy(logits, batch), abs=1e-9)
            for layer in range(2):
                for head in range(4):
                    logits, patterns = manual_forward(model, batch, zero={layer: [head]})
                    got = value(f"L{layer}H{head} zero")
                    assert got == pytest.approx(accuracy(logits, batch), abs=1e-9)
                    if layer == 0:  # wiring: every layer-1 head's induction strength
                        for reader in range(4):
                            metric = f"heads/induction_strength/L1H{reader}"
                            expected = strength(patterns[1], batch, reader)
                            assert value(f"L0H{head} zero", metric) == pytest.approx(
                                expected, abs=1e-6
                            )
                    others = [h for h in range(4) if h != head]
                    logits, _ = manual_forward(model, batch, zero={layer: others})
                    got = value(f"keep L{layer}H{head}")
                    assert got == pytest.approx(accuracy(logits, batch), abs=1e-9)
                logits, _ = manual_forward(model, batch, zero_layers=(layer,))
                assert value(f"layer {layer}") == pytest.approx(accuracy(logits, batch), abs=1e-9)
            ideal = torch.zeros(5, 5)
            ideal[0, 0] = 1.0
            ideal[torch.arange(1, 5), torch.arange(0, 4)] = 1.0
            logits, _ = manual_forward(model, batch, patterns={0: ([1], ideal)})
            assert value("prev") == pytest.approx(accuracy(logits, batch), abs=1e-9)
            loss = F.cross_entropy(logits[:, -1], batch["target"])
            assert value("prev", "loss") == pytest.approx(float(loss), abs=1e-5)


def test_the_app_refuses_a_truncated_checkpoint_in_one_line(
    reference: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from ihlab.apps.dissect import main

    run = broken_copies(reference, tmp_path)["truncated"]
    monkeypatch.setattr(sys, "argv", ["ihlab-dissect", f"runs=[{run}]", f"out={tmp_path}/o"])
    with pytest.raises(SystemExit) as stopped:
        main()
    (line,) = str(stopped.value).splitlines()
    assert line.startswith(f"ihlab-dissect: config error: runs: checkpoint {run}/checkpoints/")
    assert "step_000100.ckpt is corrupt or truncated" in line and "Fix: move it out of" in line
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_app_writes_the_dissection(reference: Path, tmp_path: Path, monkeypatch) -> None:
    from ihlab.apps.dissect import main

    args = [f"runs=[{reference}]", "checkpoints=last", "keep_one=false", f"out={tmp_path}"]
    monkeypatch.setattr(sys, "argv", ["ihlab-dissect", *args])
    main()
    request = json.loads((tmp_path / "dissect.json").read_text())
    assert request["checkpoints"] == "last" and request["keep_one"] is False
    rows = dissect_run.read_rows(tmp_path / "dissection.csv")
    assert {r["step"] for r in rows} == {120}
    monkeypatch.setattr(sys, "argv", ["ihlab-dissect", *args, "steps=[-1]"])
    with pytest.raises(SystemExit, match=r"ihlab-dissect: config error: steps=\[-1\]"):
        main()


def test_mean_ablation_holds_a_head_at_its_mean_over_the_runs_own_reference_batch(
    tmp_path: Path,
) -> None:
    """`heads=[mean]`: each head's output held at its mean, position by position, over the run's
    own reference batch (the mean clamp's `reference_size` training sequences drawn from the run's
    seed), as training's mean clamps take it: not over the sequences being evaluated. Expected
    values from the hand-written forward; the evaluated sequences' own mean is shown to give
    other numbers, so a mean taken from them fails here."""
    run = tmp_path / "run"
    train_in_process(run, *TINY_FEWSHOT)
    result = dissect(
        DissectConfig(
            runs=[str(run)],
            checkpoints="last",
            heads=[HeadValue.mean],
            keep_one=False,
            layers=False,
            out=str(tmp_path / "out"),
        )
    )
    config = read_run_config(run)
    family = make_family(config.data, config.seed)
    model = load_lab_model(run / "checkpoints" / "last.ckpt")
    reference: list[Tensor] = []
    with torch.no_grad():
        manual_forward(
            model, family.reference_batch(ClampConfig().reference_size), outputs=reference
        )
        apart = 0
        for split in family.eval_splits:
            batch = family.eval_sets[split]
            own: list[Tensor] = []
            manual_forward(model, batch, outputs=own)
            for layer in range(2):
                for head in range(4):
                    name = f"L{layer}H{head} mean"
                    acc, loss = (
                        one(result, step=60, intervention=name, split=split, metric=m)["value"]
                        for m in ("acc", "loss")
                    )
                    mean = reference[layer][:, :, head].mean(0)  # (pos, d_head)
                    logits, _ = manual_forward(model, batch, held={layer: (head, mean)})
                    assert acc == pytest.approx(accuracy(logits, batch), abs=1e-9)
                    expected = F.cross_entropy(logits[:, -1], batch["target"])
                    assert loss == pytest.approx(float(expected), abs=1e-5)
                    wrong = own[layer][:, :, head].mean(0)
                    logits, _ = manual_forward(model, batch, held={layer: (head, wrong)})
                    other = F.cross_entropy(logits[:, -1], batch["target"])
                    apart += abs(float(other) - float(expected)) > 1e-4
    assert apart > 0
