"""Whole-study speed: `--seeds` seeds of an experiment as separate runs against batched seed
ensembles, and what measurement costs a default run. Everything runs `ihlab-train` as a user does
(start-up, W&B offline unless `--wandb off`, evaluation, head scores, files), side by side.

    python benchmarks/study_throughput.py [--experiment fewshot_fast] [--steps 1500] [--seeds 8]
        [--rounds 3] [--run-rounds 3] [--wandb offline] [--small]

Prints the median over rounds of each round's ratio, with every round's (a round's routes run back
to back, so the machine's drift over the script's minutes cancels out of its ratios):
- `study speed-up (separate runs / fastest batched route)`: the wall time of
  `ihlab-train -m launcher=parallel seed=0,...,7` (one process per seed, one per core at a time)
  over the fastest batched route: one job of all seeds (torch's threads), or the seeds split into
  one batched job per core (`-m launcher=parallel 'seeds=[..],[..]'`, timed where every job
  gets at least two seeds: a job of one seed batches nothing); both with seed_route=batched.
  Then the route a multirun picks for the experiment (ihlab.train.routes).
- `measurement overhead (default run wall / training-only wall)`: one default run (evaluation,
  head scores, W&B) over the same run with evaluation, head scores and W&B off; `--run-rounds`
  alternating rounds (single runs are short, so noisier).
- for fewshot_fast, `ceiling of the study speed-up (separate runs / floor of a batched route)`:
  the separate runs' wall time over the least any batched route must spend here: the fastest
  bare batched loop (bare_ensemble.py: the members' batches drawn from their tasks, training
  arithmetic and the evaluations; all seeds in one process on torch's threads, or split into one
  process per core, at most one per seed) plus one default run of a single step (start-up, W&B's
  start and finish, the step-0 head scores). Past that, the floor has no Lightning, hooks, head
  scores, logging or files, so a real route is slower still.
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

from hydra import compose, initialize_config_dir
from timing import parse

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.routes import seed_route
from ihlab.train.schema import register_configs, to_train_config

IHLAB_TRAIN = str(Path(sys.executable).parent / "ihlab-train")
CORES = os.cpu_count() or 1


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, all) CPU ticks so far, from Linux's /proc/stat (None elsewhere): steal is the time
    the hypervisor gave this machine's CPUs to someone else."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields[:8])


def wall(args: list[str], cwd: Path) -> tuple[float, float | None]:
    """Seconds `ihlab-train args` takes, start-up included, and the share of the machine's CPU
    time stolen meanwhile; fails loudly if it fails."""
    before = cpu_ticks()
    started = time.perf_counter()
    result = subprocess.run([IHLAB_TRAIN, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ihlab-train {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    seconds, after = time.perf_counter() - started, cpu_ticks()
    if before is None or after is None or after[1] == before[1]:
        return seconds, None
    return seconds, (after[0] - before[0]) / (after[1] - before[1])


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


def spread(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fewshot_fast")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-rounds", type=int, default=3)
    parser.add_argument("--wandb", choices=["offline", "off"], default="offline")
    small = {"steps": 4, "seeds": 2, "rounds": 1, "run_rounds": 1, "wandb": "off"}
    args = parse(parser, argv, small=small)
    base = [f"experiment={args.experiment}", "trainer.progress_bar=false", f"wandb={args.wandb}"]
    steps = f"trainer.max_steps={args.steps}"
    seeds = ",".join(map(str, range(args.seeds)))
    batched = "seed_route=batched"
    routes = {
        "separate runs": ["-m", steps, "launcher=parallel", f"seed={seeds}"],
        "one batched job": [steps, f"seeds=[{seeds}]", batched],
    }
    if CORES > 1 and args.seeds >= 2 * CORES:
        routes[f"{CORES} batched jobs"] = [
            "-m",
            steps,
            "launcher=parallel",
            f"hydra.launcher.n_jobs={CORES}",
            f"seeds={seed_groups(args.seeds, CORES)}",
            batched,
        ]
    measure = {
        "default run": [steps],
        "training only": [
            steps,
            "trainer.eval_every=1000000",
            "trainer.score_every=0",
            "wandb=off",
        ],
    }
    ceiling = args.experiment == "fewshot_fast"  # bare_ensemble.py is that model written out
    times: dict[str, list[float]] = {}
    root = Path(tempfile.mkdtemp(prefix="ihlab-study-"))

    def time_route(name: str, extra: list[str], r: int) -> None:
        where = "sweep" if "-m" in extra else "run"
        flags = [a for a in extra if a == "-m"]  # before the overrides, for argparse
        overrides = [a for a in extra if a != "-m"]
        out = f"hydra.{where}.dir={root}/{r}/{name.replace(' ', '_')}"
        seconds, steal = wall([*flags, *base, *overrides, out], root)
        times.setdefault(name, []).append(seconds)
        stolen = "" if steal is None else f" ({steal:.1%} of the CPU time stolen)"
        print(f"round {r}: {name}: {seconds:.1f} s{stolen}", flush=True)

    try:
        for r in range(args.rounds):
            order = list(routes)[r % len(routes) :] + list(routes)[: r % len(routes)]
            for name in order:  # rotated, so that no route always runs first or last
                time_route(name, routes[name], r)
            if ceiling:
                for processes in sorted({1, min(CORES, args.seeds)}):
                    name = f"bare batched loop, {processes} process{'es' * (processes > 1)}"
                    seconds = bare_seconds(args.seeds, args.steps, processes)
                    times.setdefault(name, []).append(seconds)
                    print(f"round {r}: {name}: {seconds:.1f} s", flush=True)
                time_route("one-step run", ["trainer.max_steps=1"], r)
        for r in range(args.run_rounds):
            for name, extra in measure.items():
                time_route(name, extra, r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    batched_routes = [n for n in routes if n != "separate runs"]
    fastest = [min(batched_routes, key=lambda n: times[n][r]) for r in range(args.rounds)]
    speedups = [times["separate runs"][r] / times[f][r] for r, f in enumerate(fastest)]
    overheads = [d / t for d, t in zip(times["default run"], times["training only"], strict=True)]
    median = statistics.median
    name = args.experiment
    print(f"fastest batched route per round, {name}: {', '.join(fastest)}")
    print(
        f"study speed-up (separate runs / fastest batched route), {name}, median of "
        f"{args.rounds}: {median(speedups):.2f} (rounds: {spread(speedups)})"
    )
    print(f"route a multirun picks for {name}: {lab_route(args.experiment)}")
    print(
        f"measurement overhead (default run wall / training-only wall), {name}, median of "
        f"{args.run_rounds}: {median(overheads):.2f} (rounds: {spread(overheads)})"
    )
    if ceiling:
        floors = [
            min(t[r] for n, t in times.items() if n.startswith("bare")) + times["one-step run"][r]
            for r in range(args.rounds)
        ]
        ceilings = [times["separate runs"][r] / floor for r, floor in enumerate(floors)]
        print(
            "ceiling of the study speed-up (separate runs / floor of a batched route: bare "
            f"batched loop + one-step run), median of {args.rounds}: {median(ceilings):.2f} "
            f"(rounds: {spread(ceilings)})"
        )


def lab_route(experiment: str) -> str:
    """The route `ihlab-train -m experiment=... seeds=[...]` takes, and why."""
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "seeds=[0,1]"])
    route = seed_route(to_train_config(cfg))
    return f"{'batched' if route.batched else 'one run per seed'} ({route.reason})"


if __name__ == "__main__":
    main()
