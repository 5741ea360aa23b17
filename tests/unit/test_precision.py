"""`trainer.precision=bf16-mixed`: training steps under bfloat16 autocast, every measurement in
float32. A clamped site holds its clamp value under autocast as in float32, a clamped forward
stays within the stated tolerance of float32, and a bf16 run's evaluations and head scores are
the float32 numbers of its float32 weights (at step 0, before the two runs' weights part, they
are equal to the bit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config, quiet, train_in_process
from ihlab.data import make_family
from ihlab.errors import ConfigError
from ihlab.runs.checkpoints import load_lab_model
from ihlab.runs.files import LOSS_BY_POSITION, RunFiles
from ihlab.runs.tables import read_metrics, read_step_table
from ihlab.train.members import MemberBatches, member_batch, stack
from ihlab.train.module import Member
from ihlab.train.run import build_module
from ihlab.train.schema import read_run_config, to_train_config

# bfloat16 keeps 8 significant bits (a relative rounding of at most 2^-9 = 0.2%). Through the
# 2-layer models' matmuls, softmaxes and norms, measured on these clamped forwards at their initial
# weights (seeds 0-2): logits within 1.1% of their largest magnitude, losses within 0.004 nats.
# Stated tolerance, with margin: logits within 2% of their largest magnitude, the loss within
# 0.02 nats.
LOGIT_TOLERANCE = 0.02
LOSS_TOLERANCE = 0.02

FEWSHOT = ["experiment=fewshot_fast", "data.n_train_classes=40"]
KEPT = ["+named_heads.kept=[3]", "+named_heads.prev_token=[2]"]
HEAD_0 = (slice(None), slice(None), 0)  # (member, batch, head): head 0's whole pattern
QUERY_ROW = (slice(None), slice(None), slice(None), -1)  # every head's query row
CLAMPED = {  # clamp preset -> (config, {clamped site: the entries the paper's ideal fixes})
    "previous-token pattern": (
        [*FEWSHOT, "clamps=prev_token"],
        {"blocks.0.attn.pattern": HEAD_0},
    ),
    "perfect match": ([*FEWSHOT, "clamps=match"], {"blocks.1.attn.pattern": QUERY_ROW}),
    "perfect copy (logits from scores)": ([*FEWSHOT, "clamps=copy"], {}),
    "layer-1 clamp with one head kept": ([*FEWSHOT, "clamps=singh_layer1", *KEPT], {}),
    "mean of head outputs": (
        [
            *FEWSHOT,
            "clamps=custom",
            "clamps.custom.site=blocks.0.attn.z",
            "clamps.custom.value=mean",
        ],
        {},
    ),
    "induction pattern on tokens": (["experiment=induction_2l", "clamps=induction"], {}),
}


@pytest.mark.parametrize("name", list(CLAMPED))
def test_a_clamped_forward_under_bfloat16_autocast_stays_within_tolerance(name: str) -> None:
    overrides, constant = CLAMPED[name]
    config = to_train_config(compose_config(quiet(overrides)))
    family = make_family(config.data, 0)
    module = build_module(config, [Member(0, family)])
    module.prepare(MemberBatches([family]))
    batch = stack([family.train_batch(0)])
    sites = tuple(constant)  # the ideal values: 0 and 1, exact in bfloat16
    with torch.no_grad():
        logits, cached = module.run(batch, cache=sites)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_cached = module.run(batch, cache=sites)
    assert low.dtype == torch.bfloat16  # autocast was on
    for site, entries in constant.items():  # the clamp value itself, as in float32
        held = cached[site][entries]
        assert torch.equal(low_cached[site][entries].float(), held), site
        assert set(held.unique().tolist()) == {0.0, 1.0}
    scale = float(logits.abs().max())
    assert float((low.float() - logits).abs().max()) <= LOGIT_TOLERANCE * scale
    lg, tg = family.loss_positions(member_batch(batch, 0), logits[0])
    low_lg, _ = family.loss_positions(member_batch(batch, 0), low[0].float())
    loss, low_loss = (F.cross_entropy(x.flatten(0, -2), tg.flatten()) for x in (lg, low_lg))
    assert abs(float(low_loss) - float(loss)) <= LOSS_TOLERANCE


def test_a_bf16_run_measures_in_float32(tmp_path: Path) -> None:
    """Step 0 (the same initial weights): the evaluation, the loss-by-position table and the head
    scores of a bf16-mixed run equal the 32-true run's exactly; its first training loss (the
    step's bf16 forward) is within the loss tolerance. At step 2, an evaluation Lightning runs
    inside training, the logged loss is the float32 loss of that step's weights (a bfloat16
    evaluation would be ~1e-3 off)."""
    overrides = [
        "experiment=induction_2l",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.eval_at_start=true",
        "trainer.score_every=2",
        "trainer.log_every=1",
        "trainer.checkpoint_every=2",
        "optim.lr=0.01",
        "data.eval_size=64",
        "data.eval_batch_size=32",
    ]
    rows, tables = {}, {}
    for precision in ("32-true", "bf16-mixed"):
        run = tmp_path / precision
        train_in_process(run, *overrides, f"trainer.precision={precision}")
        rows[precision] = {int(r["step"]): r for r in read_metrics(run / "metrics.csv")}
        steps, _, values = read_step_table(RunFiles(run).table(LOSS_BY_POSITION))
        tables[precision] = values[list(steps).index(0)]
    full, low = rows["32-true"][0], rows["bf16-mixed"][0]
    measured = [k for k in full if k.startswith(("eval/", "heads/"))]
    assert len([k for k in measured if k.startswith("heads/")]) >= 8
    for key in measured:
        assert low[key] == full[key], key
    assert (tables["bf16-mixed"] == tables["32-true"]).all()
    assert low["train/loss"] != full["train/loss"]  # the training step did run in bf16
    assert abs(low["train/loss"] - full["train/loss"]) <= LOSS_TOLERANCE
    # Step 4, an evaluation inside Lightning's loop: the float32 loss of the step-4 weights.
    run = tmp_path / "bf16-mixed"
    config = read_run_config(run)
    family = make_family(config.data, config.seed)
    model = load_lab_model(RunFiles(run).checkpoints / "step_000004.ckpt")
    eval_set = family.eval_sets[family.eval_splits[0]]
    with torch.no_grad():
        logits = model(family.model_inputs(eval_set))
    lg, tg = family.loss_positions(eval_set, logits)
    loss = float(F.cross_entropy(lg.flatten(0, -2), tg.flatten()))
    assert rows["bf16-mixed"][4]["eval/loss"] == pytest.approx(loss, abs=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=bf16"], r"trainer.precision=bf16 is not a precision"),
        (["trainer.precision=16-mixed"], r"trainer.precision=16-mixed needs a GPU"),
    ],
)
def test_a_precision_the_lab_does_not_train_in_is_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        to_train_config(compose_config(quiet(overrides)))
