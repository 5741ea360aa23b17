"""Shared by the benchmarks: steps per second of ihlab-train's module on a config."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

from ihlab.data import make_family
from ihlab.tracking.loggers import MetricsCSV
from ihlab.train.members import MemberBatches
from ihlab.train.module import Member
from ihlab.train.run import build_module, build_trainer
from ihlab.train.schema import TrainConfig

WARMUP = 20


class StepTimer(L.Callback):
    """Wall time of the training steps after the warm-up."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        self.steps_per_sec = (trainer.global_step - WARMUP) / (time.perf_counter() - self.start)


def lab_steps_per_sec(config: TrainConfig, steps: int, out: Path) -> float:
    """Training steps per second after WARMUP steps, with the config's clamps, no evaluation (an
    ensemble's steps: each trains every member of `config.seeds`)."""
    config.trainer.max_steps = steps
    config.trainer.eval_every = steps + 1  # training steps only
    config.trainer.score_every = 0
    seeds = config.seeds or [config.seed]
    members = []
    for seed in seeds:
        csv = MetricsCSV(out / f"s{seed}" / "metrics.csv", config.data.batch_size)
        members.append(Member(seed, make_family(config.data, seed), [csv]))
    module = build_module(config, members)
    trainer = build_trainer(config, out)
    timer = StepTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=MemberBatches([m.task for m in members]))
    return timer.steps_per_sec


def median_ratio(
    rounds: int, measure: Callable[[int], tuple[float, float]], names: tuple[str, str]
) -> float:
    """Alternating rounds of measure(round) -> (a, b) steps per second; prints each round and
    returns the median of a / b."""
    ratios = []
    for r in range(rounds):
        a, b = measure(r)
        ratios.append(a / b)
        print(f"round {r}: {names[0]} {a:.1f} steps/s, {names[1]} {b:.1f} steps/s")
    return statistics.median(ratios)
