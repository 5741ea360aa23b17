"""Whole-study speed: 8 seeds of `fewshot_fast` as separate runs against seed ensembles, and what
measurement costs a default run. Everything runs `ihlab-train` as a user does (start-up, W&B
offline, evaluation, head scores, files), side by side in one script.

    python benchmarks/study_throughput.py [--steps 1500] [--seeds 8] [--rounds 1] [--run-rounds 3]
        [--small]

Prints the median over rounds of each round's ratio (a round's routes run back to back, so the
machine's drift over the script's minutes cancels out of its ratios):
- `study speed-up (ensemble / separate runs): X`: the wall time of today's route,
  `ihlab-train -m launcher=parallel seed=0,...,7` (one process per seed, two at a time on two
  cores), over the fastest ensemble route tried: one job of all seeds (torch's threads), or the
  seeds split into one job per core (`launcher=parallel 'seeds=[..],[..]'`). `--rounds` rounds.
- `measurement overhead (default run wall / training-only wall): Y`: one default run (evaluation
  every 100 steps, head scores, W&B offline) over the same run with evaluation, head scores and
  W&B off; `--run-rounds` alternating rounds (single runs are short, so noisier).
- `ceiling of the study speed-up (separate runs / floor of an ensemble route): Z`: the separate
  runs' wall time over the least any ensemble route must spend here: the fastest bare batched
  loop (bare_ensemble.py: the members' batches drawn from their tasks, training arithmetic and
  the evaluations; all seeds in one process on torch's threads, or split into one process per
  core) plus one default run of a single step (start-up, W&B's start and finish, the step-0 head
  scores; no evaluation). Past that, the floor has no Lightning, hooks, head scores,
  logging or files, so a real route is slower still.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from timing import parse

IHLAB_TRAIN = str(Path(sys.executable).parent / "ihlab-train")
CORES = os.cpu_count() or 1


def wall(args: list[str], cwd: Path) -> float:
    """Seconds `ihlab-train args` takes, start-up included; fails loudly if it fails."""
    started = time.perf_counter()
    result = subprocess.run([IHLAB_TRAIN, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ihlab-train {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def bare_seconds(members: int, steps: int, processes: int) -> float:
    """Wall seconds of `processes` concurrent bare batched loops (bare_ensemble.py) sharing
    `members` seeds: the slowest one's time for training and evaluation (one process: torch's
    default threads; several: one thread each)."""
    script = str(Path(__file__).with_name("bare_ensemble.py"))
    size = -(-members // processes)
    threads = "0" if processes == 1 else "1"
    args = ["--members", str(size), "--steps", str(steps), "--threads", threads]
    jobs = [
        subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outputs = [job.communicate()[0] for job in jobs]
    if any(job.returncode for job in jobs):
        raise SystemExit(f"bare_ensemble.py {' '.join(args)} failed")
    return max(float(out.split("seconds:")[1]) for out in outputs)


def seed_groups(seeds: int, groups: int) -> str:
    """'[0,1,2,3],[4,5,6,7]': the seeds cut into `groups` ensemble jobs."""
    size = -(-seeds // groups)
    chunks = [list(range(seeds))[i : i + size] for i in range(0, seeds, size)]
    return ",".join("[" + ",".join(map(str, c)) + "]" for c in chunks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--run-rounds", type=int, default=3)
    small = {"steps": 4, "seeds": 2, "rounds": 1, "run_rounds": 1}
    args = parse(parser, argv, small=small)
    base = ["experiment=fewshot_fast", "trainer.progress_bar=false"]
    steps = f"trainer.max_steps={args.steps}"
    seeds = ",".join(map(str, range(args.seeds)))
    routes = {
        "separate runs": ["-m", steps, "launcher=parallel", f"seed={seeds}"],
        "one ensemble job": [steps, f"seeds=[{seeds}]"],
        f"{CORES} ensemble jobs": [
            "-m",
            steps,
            "launcher=parallel",
            f"hydra.launcher.n_jobs={CORES}",
            f"seeds={seed_groups(args.seeds, CORES)}",
        ],
    }
    measure = {
        "default run": [steps],
        "training only": [
            steps,
            "trainer.eval_every=1000000",
            "trainer.score_every=0",
            "wandb=off",
        ],
    }
    one_step = ["trainer.max_steps=1"]
    times: dict[str, list[float]] = {}
    root = Path(tempfile.mkdtemp(prefix="ihlab-study-"))

    def time_route(name: str, extra: list[str], r: int) -> None:
        where = "sweep" if "-m" in extra else "run"
        flags = [a for a in extra if a == "-m"]  # before the overrides, for argparse
        overrides = [a for a in extra if a != "-m"]
        out = f"hydra.{where}.dir={root}/{r}/{name.replace(' ', '_')}"
        times.setdefault(name, []).append(wall([*flags, *base, *overrides, out], root))
        print(f"round {r}: {name}: {times[name][-1]:.1f} s", flush=True)

    try:
        for r in range(args.rounds):
            for name, extra in routes.items():
                time_route(name, extra, r)
            for processes in sorted({1, CORES}):
                name = f"bare batched loop, {processes} process{'es' if processes > 1 else ''}"
                times.setdefault(name, []).append(bare_seconds(args.seeds, args.steps, processes))
                print(f"round {r}: {name}: {times[name][-1]:.1f} s", flush=True)
            time_route("one-step run", one_step, r)
        for r in range(args.run_rounds):
            for name, extra in measure.items():
                time_route(name, extra, r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ensembles = [n for n in routes if n != "separate runs"]
    speedups, ceilings = [], []
    for r in range(args.rounds):
        separate = times["separate runs"][r]
        at = {n: t[r] for n, t in times.items() if n not in measure}
        speedups.append(separate / min(at[n] for n in ensembles))
        bare = min(t for n, t in at.items() if n.startswith("bare"))
        ceilings.append(separate / (bare + at["one-step run"]))
    overheads = [d / t for d, t in zip(times["default run"], times["training only"], strict=True)]
    median = statistics.median
    fastest = min(ensembles, key=lambda n: median(times[n]))
    print(f"fastest ensemble route: {fastest}")
    print(f"study speed-up (ensemble / separate runs): {median(speedups):.2f}")
    print(f"measurement overhead (default run wall / training-only wall): {median(overheads):.2f}")
    print(
        "ceiling of the study speed-up (separate runs / floor of an ensemble route: bare batched "
        f"loop + one-step run): {median(ceilings):.2f}"
    )


if __name__ == "__main__":
    main()
