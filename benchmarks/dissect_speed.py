"""ihlab-dissect's speed: interventions x sequences per second, batched (interventions stacked as
a batch axis, lower layers shared) against evaluating each intervention by its own full forward
(`batched=False`, the plain loop), on `induction_2l` and `fewshot_fast` checkpoints; and the wall
time of dissecting a default run of each (every checkpoint x every head alone, as
`ihlab-dissect 'runs=[RUN]' keep_one=false layers=false` does).

    .venv/bin/python benchmarks/dissect_speed.py                 # trains the two runs first
    .venv/bin/python benchmarks/dissect_speed.py --rounds 3 --induction RUN --fewshot RUN

Prints the ratio of the batched route's rate to the loop's (median of per-round ratios, the two
routes timed back to back in each round).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ihlab.data import make_family
from ihlab.dissect.evaluate import CheckpointEvaluation
from ihlab.dissect.plan import run_checkpoints
from ihlab.dissect.run import dissect
from ihlab.dissect.spec import DissectConfig, generated
from ihlab.runs.checkpoints import load_lab_model
from ihlab.train.schema import read_run_config

TRAIN = str(Path(sys.executable).parent / "ihlab-train")


def train(experiment: str, root: Path) -> Path:
    run = root / experiment
    args = [TRAIN, f"experiment={experiment}", "wandb=off", "trainer.progress_bar=false"]
    subprocess.run([*args, f"hydra.run.dir={run}"], check=True, capture_output=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--induction", type=Path, help="a default induction_2l run (else trained)")
    parser.add_argument("--fewshot", type=Path, help="a default fewshot_fast run (else trained)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    root = Path(tempfile.mkdtemp(prefix="dissect-speed-"))
    runs = {
        "induction_2l": args.induction or train("induction_2l", root),
        "fewshot_fast": args.fewshot or train("fewshot_fast", root),
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
        result = dissect(DissectConfig(runs=[str(run)], keep_one=False, layers=False, out=str(out)))
        seconds = time.perf_counter() - started
        steps = sorted({r["step"] for r in result["rows"]})
        print(
            f"{name}: dissecting the default run, {len(steps)} checkpoints x every head alone: "
            f"{seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
