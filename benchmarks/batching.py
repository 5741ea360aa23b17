"""What batching seeds gains per experiment, the measurement behind the multirun's route rule
(ihlab.train.routes): member-steps per second of one job training `--members` seeds as one
batched computation against one run's steps per second, same threads, training steps only,
timed back to back in each round; printed with each model's FLOPs per member-step, the quantity
the rule reads. Above 1, a batched job trains more seeds per second than runs one after another
(start-up, evaluation and W&B, which batching also shares or not, are in study_throughput.py).

    python benchmarks/batching.py [--steps 200] [--rounds 3] [--members 8] [--threads 0]
        [--experiments induction_2l fewshot_fast ...] [--small]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from timing import alternate, lab_steps_per_sec, parse

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.routes import flops_per_member_step
from ihlab.train.schema import register_configs, to_train_config

EXPERIMENTS = [
    "fewshot_fast",
    "fewshot_singh_cpu",
    "induction_2l",
    "smeared_1l",
    "plain_1l",
    "markov_2l",
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    args = parse(parser, argv, small={"steps": 6, "rounds": 1, "members": 2})
    register_configs()
    quiet = ["wandb=off", "trainer.progress_bar=false", f"trainer.threads={args.threads}"]
    seeds = ",".join(map(str, range(args.members)))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        configs = {
            name: (
                compose("train", overrides=[f"experiment={name}", *quiet, f"seeds=[{seeds}]"]),
                compose("train", overrides=[f"experiment={name}", *quiet]),
            )
            for name in args.experiments
        }
    threads = torch.get_num_threads()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (job, single) in configs.items():

            def measure(r: int, name: str = name, job=job, single=single) -> tuple[float, float]:
                out = Path(tmp) / f"{name}{r}"
                batched = lab_steps_per_sec(to_train_config(job), args.steps, out / "job")
                alone = lab_steps_per_sec(to_train_config(single), args.steps, out / "one")
                return args.members * batched, alone

            print(f"{name}:")
            results[name] = alternate(args.rounds, measure, ("batched member-steps", "one run"))
            torch.set_num_threads(threads)
    for name, rounds in results.items():
        flops = flops_per_member_step(to_train_config(configs[name][1]))
        print(
            f"batching gain ({args.members} seeds batched / one run, member-steps/s), {name} "
            f"({flops / 1e6:.0f} MFLOP per member-step), median of {args.rounds}: "
            f"{rounds.ratio:.3f} (rounds: {rounds.spread()})"
        )


if __name__ == "__main__":
    main()
