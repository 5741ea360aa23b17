"""bfloat16 against float32 training: steps per second of ihlab-train's module with
`trainer.precision=bf16-mixed` over `32-true`, on `induction_2l`, `fewshot_fast`, `markov_2l`
and a clamped `fewshot_fast` run (clamps=prev_token), training steps only. Each round times the
two precisions back to back; the median ratio and every round's ratio are printed per config,
with this machine's matmul peak in both precisions (whether its bfloat16 is native decides much).

    python benchmarks/precision.py [--steps 200] [--rounds 3] [--small]

Whether bfloat16 changes the science is a study, not a benchmark: docs/speed.md#bfloat16.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from timing import MATMUL, SMALL_MATMUL, alternate, lab_steps_per_sec, measure_peak, parse

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.schema import register_configs, to_train_config

CONFIGS = {
    "induction_2l": ["experiment=induction_2l"],
    "fewshot_fast": ["experiment=fewshot_fast"],
    "markov_2l": ["experiment=markov_2l"],
    "fewshot_fast clamps=prev_token": ["experiment=fewshot_fast", "clamps=prev_token"],
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse(parser, argv, small={"steps": 6, "rounds": 1})
    register_configs()
    quiet = ["wandb=off", "trainer.progress_bar=false"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        configs = {
            name: {
                precision: compose(
                    "train", overrides=[*overrides, *quiet, f"trainer.precision={precision}"]
                )
                for precision in ("bf16-mixed", "32-true")
            }
            for name, overrides in CONFIGS.items()
        }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pair in configs.items():

            def measure(r: int, name: str = name, pair: dict = pair) -> tuple[float, float]:
                rates = [
                    lab_steps_per_sec(to_train_config(cfg), args.steps, Path(tmp) / f"{p}{r}")
                    for p, cfg in pair.items()
                ]
                return rates[0], rates[1]

            print(f"{name}:")
            results[name] = alternate(args.rounds, measure, ("bf16-mixed", "32-true"))
    print(measure_peak(0, SMALL_MATMUL if args.small else MATMUL).line())
    for name, rounds in results.items():
        print(
            f"ratio (bf16-mixed / 32-true steps/s), {name}, median of {args.rounds}: "
            f"{rounds.ratio:.3f} (rounds: {rounds.spread()})"
        )


if __name__ == "__main__":
    main()
