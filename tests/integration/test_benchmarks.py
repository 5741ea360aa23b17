"""Every script in benchmarks/ runs at its small size (`--small`) and prints the lines its
documented numbers come from (their form, not their values: a benchmark's numbers are measured at
full size, docs/speed.md), so an API change that breaks a benchmark fails here."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
NUMBER = r"-?\d+(\.\d+)?"
PEAK = r"^peak \(\d+ threads, \d+\^3 matmul\): float32 \d+ GFLOP/s, bfloat16 \d+ GFLOP/s \(.+\)$"
FLOPS = rf"{NUMBER} MFLOP per step, {NUMBER} GFLOP/s = {NUMBER}% of the float32 peak"

# script -> the lines it must print (regular expressions, each matched against a whole line)
EXPECTED = {
    "throughput": [
        rf"^ratio \(ihlab module / bare loop\), median of 1: {NUMBER}$",
        rf"^ensemble ratio \(member-steps/s of 2 seeds / bare single-run steps/s\), median of 1: "
        rf"{NUMBER}$",
        PEAK,
        rf"^ihlab module: {FLOPS}$",
        rf"^bare loop: {FLOPS}$",
        rf"^ensemble of 2, per member: {FLOPS}$",
    ],
    "clamp_overhead": [
        rf"^ratio \(clamps=\[prev_token,match\] / unclamped\), median of 1: {NUMBER} "
        rf"\(rounds: {NUMBER}\)$",
        PEAK,
        rf"^unclamped: {FLOPS}$",
        rf"^clamps=\[prev_token,match\]: {FLOPS}$",
    ],
    "bare_ensemble": [rf"^seconds: {NUMBER}$"],
    "utilisation": [
        PEAK,
        *(
            rf"^{name} \(32-true\): {NUMBER} steps/s, {FLOPS}; ms per step: data {NUMBER}, "
            rf"forward {NUMBER}, backward {NUMBER}, optimizer {NUMBER}, framework {NUMBER} "
            rf"\(profiled step {NUMBER}\)$"
            for name in (
                "induction_2l",
                "smeared_1l",
                "plain_1l",
                "fewshot_fast",
                "fewshot_singh_cpu",
                "markov_2l",
            )
        ),
    ],
    "precision": [
        PEAK,
        *(
            rf"^ratio \(bf16-mixed / 32-true steps/s\), {re.escape(name)}, median of 1: "
            rf"{NUMBER} \(rounds: {NUMBER}\)$"
            for name in (
                "induction_2l",
                "fewshot_fast",
                "markov_2l",
                "fewshot_fast clamps=prev_token",
            )
        ),
    ],
    "batching": [
        rf"^batching gain \(2 seeds batched / one run, member-steps/s\), {name} \(\d+ MFLOP per "
        rf"member-step\), median of 1: {NUMBER} \(rounds: {NUMBER}\)$"
        for name in ("fewshot_fast", "fewshot_singh_cpu", "induction_2l", "markov_2l")
    ],
    "dissect_speed": [
        rf"^{name}: interventions x sequences per second, batched {NUMBER}, loop {NUMBER}; ratio "
        rf"{NUMBER} \(median of 1 rounds: {NUMBER}\)$"
        for name in ("induction_2l", "fewshot_fast")
    ],
    "member_memory": [
        rf"^peak with 1 members: {NUMBER} MiB, with 2: {NUMBER} MiB$",
        rf"^memory per member \(cpu, fewshot_fast\): {NUMBER} MiB$",
    ],
    "probe_speed": [
        rf"^speed-up of shared \(float32\) over the reference, median of 1: {NUMBER}x$",
        rf"^speed-up of new \(\w+, shared\) over the reference, median of 1: {NUMBER}x$",
    ],
    "study_throughput": [
        r"^fastest batched route per round, fewshot_fast: (one batched job|\d+ batched jobs)$",
        rf"^study speed-up \(separate runs / fastest batched route\), fewshot_fast, median of 1: "
        rf"{NUMBER} \(rounds: {NUMBER}\)$",
        r"^route a multirun picks for fewshot_fast: batched \(fewshot_fast's 54 MFLOP per "
        r"member-step is overhead-bound on the CPU .*\)$",
        rf"^measurement overhead \(default run wall / training-only wall\), fewshot_fast, median "
        rf"of 1: {NUMBER} \(rounds: {NUMBER}\)$",
        rf"^ceiling of the study speed-up .*, median of 1: {NUMBER} \(rounds: {NUMBER}\)$",
    ],
    "text_throughput": [
        rf"^preparation \(files, {NUMBER}M characters, 12 documents\): reading and tokenizer "
        rf"{NUMBER} s, tokenizing {NUMBER}M tokens {NUMBER} s = {NUMBER} tokens/s "
        rf"\({NUMBER} tokens/s from nothing\)$",
        rf"^ratio \(ihlab text module / bare loop\), median of 1: {NUMBER} \(rounds: {NUMBER}\)$",
        PEAK,
        rf"^ihlab module: {FLOPS}$",
        rf"^bare loop: {FLOPS}$",
    ],
}
# benchmarks that start processes, load SmolLM2 or train several models: > 5 s at their small size
SLOW = {
    "member_memory",
    "probe_speed",
    "study_throughput",
    "utilisation",
    "precision",
    "batching",
    "dissect_speed",
    "text_throughput",
}
HELPERS = {"timing"}  # imported by the benchmarks, not a benchmark


def test_every_benchmark_has_its_small_run_here() -> None:
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - HELPERS
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXPECTED],
)
def test_a_benchmark_runs_at_its_small_size(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.chdir(BENCHMARKS.parent)
    threads = torch.get_num_threads()
    try:
        importlib.import_module(name).main(["--small"])
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop(name, None)
    printed = capsys.readouterr().out
    missing = [p for p in EXPECTED[name] if not re.search(p, printed, re.MULTILINE)]
    assert not missing, f"{name} --small did not print lines matching {missing}:\n{printed}"
