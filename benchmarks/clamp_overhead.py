"""Clamp overhead: training steps per second with a typical clamp set vs unclamped, side by side.

Both runs train `fewshot_fast` (the CPU-sized Singh et al. model and task) with ihlab-train's module
on the same batches; the clamped one holds previous-token attention in a layer-0 head and a perfect
match pattern in every layer-1 head (clamps=[prev_token,match]), which also switches both layers
from fused attention to the explicit path that materialises patterns. Rounds alternate to spread
machine noise; the median ratio and every round's ratio are printed, then both runs' model FLOP/s
against this machine's matmul peak.

    python benchmarks/clamp_overhead.py [--steps 600] [--rounds 5] [--clamp '[prev_token,match]']
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from timing import (
    MATMUL,
    SMALL_MATMUL,
    alternate,
    flops_line,
    lab_steps_per_sec,
    measure_peak,
    parse,
)

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.routes import flops_per_member_step
from ihlab.train.schema import register_configs, to_train_config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clamp", default="[prev_token,match]")
    args = parse(parser, argv, small={"steps": 8, "rounds": 1})
    register_configs()
    base = ["experiment=fewshot_fast", "wandb=off", "trainer.progress_bar=false"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        plain = compose("train", overrides=base)
        clamped = compose("train", overrides=[*base, f"clamps={args.clamp}"])
    with tempfile.TemporaryDirectory() as tmp:

        def measure(r: int) -> tuple[float, float]:
            free = lab_steps_per_sec(to_train_config(plain), args.steps, Path(tmp) / f"p{r}")
            held = lab_steps_per_sec(to_train_config(clamped), args.steps, Path(tmp) / f"c{r}")
            return held, free

        rounds = alternate(args.rounds, measure, ("clamped", "unclamped"))
    print(
        f"ratio (clamps={args.clamp} / unclamped), median of {args.rounds}: {rounds.ratio:.3f} "
        f"(rounds: {rounds.spread()})"
    )
    peak = measure_peak(0, SMALL_MATMUL if args.small else MATMUL)
    print(peak.line())
    flops = flops_per_member_step(to_train_config(plain))
    print(flops_line("unclamped", flops, statistics.median(rounds.b), peak))
    print(flops_line(f"clamps={args.clamp}", flops, statistics.median(rounds.a), peak))


if __name__ == "__main__":
    main()
