"""How a multirun trains a list of seeds: as one batched job (a seed ensemble, members.py) or as
one run per seed. Chosen by a rule measured on the development machine (docs/speed.md#routes),
deterministic, so that the same command always trains the same way and gives the same numbers.

Batching seeds saves what is paid per process and per step (start-up, Lightning's loop, the
dispatch of each small operation); it costs the explicit attention path (vmap has no rule for
the CPU's fused attention kernel) and vmap's own bookkeeping, which grow with the step's
arithmetic. So on the CPU it pays for models whose step is mostly overhead (few model FLOPs per
member-step: the few-shot models) and loses for compute-bound ones (the token models); on an
accelerator one batched job fills the device that a single small run leaves idle.
"""

from __future__ import annotations

from dataclasses import dataclass

from ihlab.data import make_family
from ihlab.metrics.flops import step_flops
from ihlab.train.schema import SeedRoute, TrainConfig

# Model FLOPs per member-step below which batching seeds pays on the CPU. Measured (docs/speed.md,
# benchmarks/batching.py): 8 batched seeds of fewshot_fast and fewshot_singh_cpu (54 MFLOP) train
# 2.0-2.2x one run's member-steps per second; induction_2l (1282 MFLOP) 0.84x, the one-layer
# token models (1411 MFLOP) 0.4-0.5x, markov_2l (2221 MFLOP) 1.0x. Whole studies
# (benchmarks/study_throughput.py): fewshot_fast 1.38x faster batched, induction_2l 0.97x.
CPU_BATCHING_FLOPS = 300e6


@dataclass(frozen=True)
class Route:
    """A multirun point's route for its seeds, and why (one line, printed at the study's start)."""

    batched: bool
    reason: str


def flops_per_member_step(config: TrainConfig) -> int:
    """Model FLOPs of one training step of one seed (ihlab.metrics.flops), on the batch shape
    its data family draws."""
    family = make_family(config.data, config.seed)
    inputs = family.model_inputs(family.train_batch(0))
    batch, positions = next(iter(inputs.values())).shape[:2]
    return step_flops(config.model, family.io, batch, positions).total


def seed_route(config: TrainConfig) -> Route:
    """The route of a config's `seeds` (`seed_route`, or the measured rule for `auto`)."""
    if config.seed_route == SeedRoute.batched:
        return Route(True, "seed_route=batched")
    if config.seed_route == SeedRoute.separate:
        return Route(False, "seed_route=separate")
    if config.trainer.accelerator != "cpu":
        return Route(True, "on an accelerator one batched job fills the device")
    flops = flops_per_member_step(config)
    size = f"{config.name}'s {flops / 1e6:.0f} MFLOP per member-step"
    limit = f"{CPU_BATCHING_FLOPS / 1e6:.0f} MFLOP"
    if flops < CPU_BATCHING_FLOPS:
        return Route(
            True, f"{size} is overhead-bound on the CPU (under {limit}), where batching pays"
        )
    return Route(
        False,
        f"{size} is compute-bound on the CPU (over {limit}), where batching seeds is slower than "
        "separate runs; seed_route=batched batches them anyway",
    )
