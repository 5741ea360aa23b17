"""How far each training experiment is from this machine's limit: steps per second of
ihlab-train's module (training steps only: no evaluation, head scores or W&B), the model FLOP/s
that rate is (ihlab.metrics.flops: the forward and backward matmuls), its fraction of the matmul
peak this script measures (a large float32 and bfloat16 matmul at the run's thread count), and
where a step's time goes (Lightning's SimpleProfiler: data, forward = the training step with its
loss and logging, backward, optimizer, and framework = the rest of the step).

Each round times every experiment twice, once plain (its steps per second) and once profiled (its
parts); the medians over rounds are printed, one line per experiment.

    python benchmarks/utilisation.py [--steps 300] [--rounds 3] [--precision 32-true]
        [--experiments induction_2l fewshot_fast ...] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from timing import MATMUL, SMALL_MATMUL, LabTiming, lab_timing, measure_peak, parse

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.routes import flops_per_member_step
from ihlab.train.schema import register_configs, to_train_config

EXPERIMENTS = [
    "induction_2l",
    "smeared_1l",
    "plain_1l",
    "fewshot_fast",
    "fewshot_singh_cpu",
    "markov_2l",
]
PARTS = ("data", "forward", "backward", "optimizer", "framework")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    args = parse(parser, argv, small={"steps": 6, "rounds": 1})
    register_configs()
    configs = {}
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for name in args.experiments:
            overrides = [f"experiment={name}", "wandb=off", "trainer.progress_bar=false"]
            configs[name] = compose(
                "train", overrides=[*overrides, f"trainer.precision={args.precision}"]
            )
    plain: dict[str, list[float]] = {name: [] for name in configs}
    profiled: dict[str, list[LabTiming]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, cfg in configs.items():
                out = Path(tmp) / f"{name}-{r}"
                plain[name].append(lab_timing(to_train_config(cfg), args.steps, out).steps_per_sec)
                timing = lab_timing(to_train_config(cfg), args.steps, out / "p", profile=True)
                profiled[name].append(timing)
                print(f"round {r}: {name} {plain[name][-1]:.1f} steps/s", flush=True)
    peak = measure_peak(0, SMALL_MATMUL if args.small else MATMUL)
    print(peak.line())
    bf16 = args.precision == "bf16-mixed"
    for name, cfg in configs.items():
        rate = statistics.median(plain[name])
        flops = flops_per_member_step(to_train_config(cfg))
        parts = {p: statistics.median(t.parts[p] for t in profiled[name]) for p in PARTS}
        shown = ", ".join(f"{p} {1e3 * s:.2f}" for p, s in parts.items())
        against = f" = {flops * rate / peak.bfloat16:.1%} of the bfloat16 peak" if bf16 else ""
        print(
            f"{name} ({args.precision}): {rate:.1f} steps/s, {flops / 1e6:.1f} MFLOP per step, "
            f"{flops * rate / 1e9:.2f} GFLOP/s = {flops * rate / peak.float32:.1%} of the float32 "
            f"peak{against}; ms per step: {shown} (profiled step {1e3 * sum(parts.values()):.2f})"
        )


if __name__ == "__main__":
    main()
