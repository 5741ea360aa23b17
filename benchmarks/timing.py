"""Shared by the benchmarks: steps per second of ihlab-train's module on a config and where a
step's time goes, the model FLOP/s that rate means against this machine's measured matmul peak,
and the `--small` size every benchmark runs at in the test suite (tests/integration/
test_benchmarks.py), so that an API change that breaks a benchmark fails a test."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.profilers import SimpleProfiler

from ihlab.data import make_family
from ihlab.tracking.loggers import MetricsCSV
from ihlab.train.members import MemberBatches
from ihlab.train.module import Member
from ihlab.train.run import build_module, build_trainer
from ihlab.train.schema import TrainConfig

WARMUP = 20
SMALL_HELP = "a seconds-long run at the sizes the test suite uses (its numbers mean nothing)"


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, small: dict[str, Any]
) -> argparse.Namespace:
    """The script's arguments, with `--small` setting the `small` defaults (flags given on the
    command line still win)."""
    parser.add_argument("--small", action="store_true", help=SMALL_HELP)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--small" in argv:
        parser.set_defaults(**small)
    return parser.parse_args(argv)


class StepTimer(L.Callback):
    """Wall time of the training steps after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        seconds = time.perf_counter() - self.start
        self.steps_per_sec = (trainer.global_step - self.warmup) / seconds


# Where a step's time goes, from Lightning's SimpleProfiler actions (one call per step each). The
# optimizer step's action holds the closure (forward, backward) and is counted without them.
PARTS = {
    "data": "[_TrainingEpochLoop].train_dataloader_next",
    "forward": "[Strategy]SingleDeviceStrategy.training_step",
    "backward": "[Strategy]SingleDeviceStrategy.backward",
    "zero_grad": "[LightningModule]LabModule.optimizer_zero_grad",
    "optimizer": "[LightningModule]LabModule.optimizer_step",
}


@dataclass
class LabTiming:
    """Training steps per second after the warm-up; with a profile, the seconds per step of its
    parts: data, forward (the training step: forward, loss, logging), backward, optimizer (step
    and zero_grad) and framework (everything else: Lightning's loop, hooks, callbacks)."""

    steps_per_sec: float
    parts: dict[str, float] = field(default_factory=dict)


def lab_timing(config: TrainConfig, steps: int, out: Path, profile: bool = False) -> LabTiming:
    """Time `steps` training steps of ihlab-train's module (the config's clamps and precision,
    no evaluation or head scores; an ensemble's steps train every member of `config.seeds`)."""
    warmup = min(WARMUP, steps // 2)
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
    timer = StepTimer(warmup)
    trainer.callbacks.append(timer)
    if profile:  # its report goes to a file in `out`, not to the screen
        trainer.profiler = SimpleProfiler(dirpath=out, filename="profile")
    trainer.fit(module, datamodule=MemberBatches([m.family for m in members]))
    timing = LabTiming(timer.steps_per_sec)
    if profile:
        durations = trainer.profiler.recorded_durations
        mean = {
            part: statistics.fmean(durations[action][warmup:]) for part, action in PARTS.items()
        }
        mean["optimizer"] += mean.pop("zero_grad") - mean["forward"] - mean["backward"]
        mean["framework"] = 1 / timing.steps_per_sec - sum(mean.values())
        timing.parts = mean
    return timing


def lab_steps_per_sec(config: TrainConfig, steps: int, out: Path) -> float:
    """Training steps per second after the warm-up (see `lab_timing`)."""
    return lab_timing(config, steps, out).steps_per_sec


@dataclass
class Peak:
    """This machine's measured matmul throughput (FLOP/s) at a thread count and matrix size."""

    threads: int
    size: int
    float32: float
    bfloat16: float

    def line(self) -> str:
        native = any(
            getattr(torch.cpu, f, lambda: False)()
            for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
        kind = "native (AVX512-BF16 or AMX)" if native else "emulated: no AVX512-BF16 or AMX here"
        return (
            f"peak ({self.threads} threads, {self.size}^3 matmul): float32 "
            f"{self.float32 / 1e9:.0f} GFLOP/s, bfloat16 {self.bfloat16 / 1e9:.0f} GFLOP/s ({kind})"
        )


MATMUL = 2048  # large enough for the float32 peak here (4096 is no faster)
SMALL_MATMUL = 256  # --small


def matmul_flops(dtype: torch.dtype, size: int = MATMUL, seconds: float = 1.0) -> float:
    """The best FLOP/s of a size x size matmul in `dtype` over about `seconds` of repeats."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: kernel selection, page faults
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - started
        best = max(best, 2 * size**3 / elapsed)
        if started + elapsed > deadline:
            return best


def measure_peak(threads: int, size: int = MATMUL, seconds: float = 1.0) -> Peak:
    """The machine's float32 and bfloat16 matmul peak with `threads` torch threads (0: torch's
    default); torch's thread count is left as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return Peak(
            torch.get_num_threads(),
            size,
            matmul_flops(torch.float32, size, seconds),
            matmul_flops(torch.bfloat16, size, seconds),
        )
    finally:
        torch.set_num_threads(before)


def flops_line(name: str, flops_per_step: int, steps_per_sec: float, peak: Peak) -> str:
    """`name`: model FLOP/s at this rate and its fraction of the float32 peak."""
    rate = flops_per_step * steps_per_sec
    return (
        f"{name}: {flops_per_step / 1e6:.1f} MFLOP per step, {rate / 1e9:.2f} GFLOP/s = "
        f"{rate / peak.float32:.1%} of the float32 peak"
    )


@dataclass
class Rounds:
    """Rates (steps per second) of two routes, `a` and `b`, timed back to back in each round."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """The median of the rounds' a / b (each round's machine state cancels out of it)."""
        return statistics.median(x / y for x, y in zip(self.a, self.b, strict=True))

    def spread(self) -> str:
        """Every round's a / b, for the reader who asks how stable the median is."""
        return ", ".join(f"{x / y:.3f}" for x, y in zip(self.a, self.b, strict=True))


def alternate(
    rounds: int, measure: Callable[[int], tuple[float, float]], names: tuple[str, str]
) -> Rounds:
    """`rounds` rounds of measure(round) -> (a, b) steps per second, each printed."""
    out = Rounds()
    for r in range(rounds):
        a, b = measure(r)
        out.a.append(a)
        out.b.append(b)
        print(f"round {r}: {names[0]} {a:.1f} steps/s, {names[1]} {b:.1f} steps/s", flush=True)
    return out
