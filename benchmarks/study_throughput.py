"""Whole-study speed: 8 seeds of `fewshot_fast` as separate runs against seed ensembles, and what
measurement costs a default run. Everything runs `ihlab-train` as a user does (start-up, W&B
offline, evaluation, head scores, files), side by side in one script.

    python benchmarks/study_throughput.py [--steps 1500] [--seeds 8] [--rounds 1]

Prints:
- `study speed-up (ensemble / separate runs): X`: the wall time of today's route,
  `ihlab-train -m launcher=parallel seed=0,...,7` (one process per seed, two at a time on two
  cores), over the fastest ensemble route tried: one job of all seeds (torch's threads), or the
  seeds split into one job per core (`launcher=parallel 'seeds=[..],[..]'`).
- `measurement overhead (default run wall / training-only wall): Y`: one default run (evaluation
  every 100 steps, head scores, W&B offline) over the same run with evaluation, head scores and
  W&B off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IHLAB_TRAIN = str(Path(sys.executable).parent / "ihlab-train")
CORES = os.cpu_count() or 1


def wall(args: list[str], cwd: Path) -> float:
    """Seconds `ihlab-train args` takes, start-up included; fails loudly if it fails."""
    started = time.perf_counter()
    result = subprocess.run([IHLAB_TRAIN, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ihlab-train {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def seed_groups(seeds: int, groups: int) -> str:
    """'[0,1,2,3],[4,5,6,7]': the seeds cut into `groups` ensemble jobs."""
    size = -(-seeds // groups)
    chunks = [list(range(seeds))[i : i + size] for i in range(0, seeds, size)]
    return ",".join("[" + ",".join(map(str, c)) + "]" for c in chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    base = [
        "experiment=fewshot_fast",
        f"trainer.max_steps={args.steps}",
        "trainer.progress_bar=false",
    ]
    seeds = ",".join(map(str, range(args.seeds)))
    routes = {
        "separate runs": ["-m", "launcher=parallel", f"seed={seeds}"],
        "one ensemble job": [f"seeds=[{seeds}]"],
        f"{CORES} ensemble jobs": [
            "-m",
            "launcher=parallel",
            f"hydra.launcher.n_jobs={CORES}",
            f"seeds={seed_groups(args.seeds, CORES)}",
        ],
    }
    measure = {
        "default run": [],
        "training only": ["trainer.eval_every=1000000", "trainer.score_every=0", "wandb=off"],
    }
    times: dict[str, list[float]] = {}
    root = Path(tempfile.mkdtemp(prefix="ihlab-study-"))
    try:
        for r in range(args.rounds):
            for name, extra in {**routes, **measure}.items():
                where = "sweep" if "-m" in extra else "run"
                flags = [a for a in extra if a == "-m"]  # before the overrides, for argparse
                overrides = [a for a in extra if a != "-m"]
                out = f"hydra.{where}.dir={root}/{r}/{name.replace(' ', '_')}"
                cmd = [*flags, *base, *overrides, out]
                times.setdefault(name, []).append(wall(cmd, root))
                print(f"round {r}: {name}: {times[name][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = {name: min(t) for name, t in times.items()}
    fastest = min((n for n in routes if n != "separate runs"), key=best.__getitem__)
    print(f"fastest ensemble route: {fastest}")
    print(f"study speed-up (ensemble / separate runs): {best['separate runs'] / best[fastest]:.2f}")
    overhead = best["default run"] / best["training only"]
    print(f"measurement overhead (default run wall / training-only wall): {overhead:.2f}")


if __name__ == "__main__":
    main()
