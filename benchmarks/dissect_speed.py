"""ihlab-dissect's speed: interventions x sequences per second, batched (interventions stacked as
a batch axis, lower layers shared) against evaluating each intervention by its own full forward
(`batched=False`, the plain loop), on `induction_2l` and `fewshot_fast` checkpoints; and the wall
time of dissecting a default run of each (every checkpoint x every head alone, as
`ihlab-dissect 'runs=[RUN]' keep_one=false layers=false` does).

    .venv/bin/python benchmarks/dissect_speed.py                 # trains the two runs first
    .venv/bin/python benchmarks/dissect_speed.py --rounds 3 --induction RUN --fewshot RUN
    .venv/bin/python benchmarks/dissect_speed.py --small         # tiny runs, last checkpoint

Prints the ratio of the batched route's rate to the loop's (median of per-round ratios, the two
routes timed back to back in each round).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timing import parse

from ihlab.apps.hydra_entry import config_dir
from ihlab.data import make_family
from ihlab.dissect.evaluate import CheckpointEvaluation
from ihlab.dissect.plan import run_checkpoints
from ihlab.dissect.run import dissect
from ihlab.dissect.spec import DissectConfig, generated
from ihlab.runs.checkpoints import load_lab_model
from ihlab.train.run import train as train_run
from ihlab.train.schema import read_run_config, register_configs, to_train_config

# --small: a few steps, checkpoints every 10, small evaluation sets
SMALL_RUN = [
    "trainer.max_steps=20",
    "trainer.eval_every=10",
    "trainer.checkpoint_every=10",
    "data.eval_size=32",
    "data.eval_batch_size=32",
]


def train(experiment: str, root: Path, overrides: Sequence[str] = ()) -> Path:
    """A run of `experiment` trained in this process, as `ihlab-train` composes it."""
    run = root / experiment
    args = [f"experiment={experiment}", "wandb=off", "trainer.progress_bar=false", *overrides]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=args)
    train_run(to_train_config(cfg), run, OmegaConf.to_container(cfg, resolve=True))
    return run


def rate(run: Path, batched: bool) -> tuple[float, float]:
    """(interventions x sequences per second, seconds) of one checkpoint's heads family and
    keep-one family on every split."""
    config = read_run_config(run)
    family = make_family(config.data, config.seed)
    checkpoints = run_checkpoints(run)
    step = max(checkpoints)
    model = load_lab_model(checkpoints[step])
    interventions = generated(DissectConfig(runs=[str(run)], layers=False), config.model)
    evaluation = CheckpointEvaluation(model, family, config.clamps, step, batch_rows=4096)
    started = time.perf_counter()
    sequences = 0
    for split in family.eval_splits:
        evaluation.run(split, interventions, batched)
        sequences += next(iter(family.eval_sets[split].values())).shape[0]
    seconds = time.perf_counter() - started
    return len(interventions) * sequences / seconds, seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--induction", type=Path, help="a default induction_2l run (else trained)")
    parser.add_argument("--fewshot", type=Path, help="a default fewshot_fast run (else trained)")
    args = parse(parser, argv, small={"rounds": 1})
    register_configs()
    root = Path(tempfile.mkdtemp(prefix="dissect-speed-"))
    small = SMALL_RUN if args.small else []
    runs = {
        "induction_2l": args.induction or train("induction_2l", root, small),
        "fewshot_fast": args.fewshot or train("fewshot_fast", root, small),
    }
    for name, run in runs.items():
        ratios, batched_rates, loop_rates = [], [], []
        for _ in range(args.rounds):
            loop, _ = rate(run, batched=False)
            fast, _ = rate(run, batched=True)
            ratios.append(fast / loop)
            batched_rates.append(fast)
            loop_rates.append(loop)
        fast, loop = statistics.median(batched_rates), statistics.median(loop_rates)
        print(
            f"{name}: interventions x sequences per second, batched {fast:.0f}, loop {loop:.0f}; "
            f"ratio {statistics.median(ratios):.2f} (median of {args.rounds} rounds: "
            f"{', '.join(f'{r:.2f}' for r in ratios)})"
        )
        out = root / f"{name}-dissection"
        started = time.perf_counter()
        checkpoints = "last" if args.small else "all"
        dissection = DissectConfig(
            runs=[str(run)], checkpoints=checkpoints, keep_one=False, layers=False, out=str(out)
        )
        result = dissect(dissection)
        seconds = time.perf_counter() - started
        steps = sorted({r["step"] for r in result["rows"]})
        print(
            f"{name}: dissecting the run, {len(steps)} checkpoints x every head alone: "
            f"{seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
