"""Memory per ensemble member: the peak memory of a short `fewshot_fast` ensemble job (20 steps,
evaluation and head scores included) at two ensemble sizes, each in its own process, and the slope
between them: what one more member costs (its parameters, gradients, Adam's two moments and its
share of the batched activations). The intercept (interpreter, torch, start-up) drops out.

On the CPU the peak is the process's peak resident set size; with `--device cuda`, torch's peak
allocated GPU memory.

    python benchmarks/member_memory.py [--sizes 4 32] [--device cpu] [--small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence

from timing import parse

JOB = """
import json, resource, sys, tempfile
import torch
from ihlab.apps.train import main

members, device = int(sys.argv[1]), sys.argv[2]
seeds = ",".join(map(str, range(members)))
sys.argv = ["ihlab-train", "experiment=fewshot_fast", "wandb=off", f"seeds=[{seeds}]",
            "trainer.max_steps=20", "trainer.eval_every=10", "trainer.score_every=10",
            "trainer.progress_bar=false", "hydra.run.dir=" + tempfile.mkdtemp()]
if device == "cuda":
    sys.argv.append("trainer=gpu")
main()
if device == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"peak_mib": peak}))
"""


def peak_mib(members: int, device: str) -> float:
    """Peak memory (MiB) of a process training a `members`-member ensemble job."""
    result = subprocess.run(
        [sys.executable, "-c", JOB, str(members), device], capture_output=True, text=True
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith('{"peak_mib"')]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"the {members}-member job failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])["peak_mib"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[4, 32], metavar=("FEW", "MANY"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parse(parser, argv, small={"sizes": [1, 2]})
    few, many = args.sizes
    low, high = peak_mib(few, args.device), peak_mib(many, args.device)
    print(f"peak with {few} members: {low:.0f} MiB, with {many}: {high:.0f} MiB")
    per_member = (high - low) / (many - few)
    print(f"memory per member ({args.device}, fewshot_fast): {per_member:.2f} MiB")


if __name__ == "__main__":
    main()
