"""ihlab-probe scoring speed: prompts x conditions per second, side by side in one process.

Three paths over the same prompts (the default tasks) and the default run's conditions (full, 1%
induction heads ablated and knocked out, 3 random controls: 6), on SmolLM2-135M:
- reference: float32, every condition runs every layer on every token (`share_prefix=False`);
- shared: float32, the layers below the first intervened one and the prompts' common first
  tokens computed once (`share_prefix=True`);
- new: the default, shared and in `model.dtype=auto` (bfloat16 on CPUs with AVX512-BF16 or AMX).
Rounds alternate the paths to spread machine noise; the median speed-up over the reference is
printed.

    python benchmarks/probe_speed.py [--prompts 8] [--rounds 3] [--small]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence

import torch
from timing import parse

from ihlab.probe.checks import plan
from ihlab.probe.columns import columns
from ihlab.probe.config import ProbeConfig
from ihlab.probe.evaluate import score_conditions
from ihlab.probe.heads import pretrained_head_scores
from ihlab.probe.models import fast_dtype, load_model
from ihlab.probe.prompts import make_prompts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="per default task")
    parser.add_argument("--rounds", type=int, default=3)
    args = parse(parser, argv, small={"prompts": 1, "rounds": 1})
    cfg = ProbeConfig()
    reference = load_model(dtype="float32")
    fast = copy.copy(reference)
    fast.model = copy.deepcopy(reference.model).to(fast_dtype("cpu"))
    conditions = [
        c
        for col in columns(cfg, pretrained_head_scores(fast)["prefix_matching"])
        for c in col.conditions
    ]
    prompts = [p for task, shots in plan(cfg) for p in make_prompts(task, shots, args.prompts, 0)]
    work = len(prompts) * len(conditions)
    paths = {
        "reference (float32, recompute all)": (reference, False),
        "shared (float32)": (reference, True),
        f"new ({str(fast_dtype('cpu')).removeprefix('torch.')}, shared)": (fast, True),
    }
    print(
        f"{len(prompts)} prompts x {len(conditions)} conditions, {torch.get_num_threads()} threads"
    )
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.rounds):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            loaded, share = paths[name]
            started = time.perf_counter()
            score_conditions(loaded, prompts, conditions, share_prefix=share)
            rates[name].append(work / (time.perf_counter() - started))
        print(f"round {r}: " + ", ".join(f"{n} {rates[n][-1]:.2f}/s" for n in paths))
    base, *others = paths
    for name in others:
        ratios = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
        print(f"speed-up of {name} over the reference, median of {args.rounds}: ", end="")
        print(f"{statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
