"""Text training: preparation throughput, and ihlab-train's module vs a bare PyTorch loop over the
same windows.

Preparation is timed from nothing, in an empty cache folder: reading the corpus, training the
BPE, tokenizing into the token file; the line gives tokens per second of the tokenizing step and
of the whole. Training: the `text_2l` experiment through the lab (Lightning, site hooks, logging)
against throughput.py's hand-written copy of the model on the same windows (`train_batch`), in
alternating rounds; the median ratio is printed, with the model FLOP/s of both.

    python benchmarks/text_throughput.py [--steps 300] [--rounds 3] [--small]

`--small` uses a generated corpus of a few thousand words and contexts of 64, so the suite can
run it in seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from throughput import bare_steps_per_sec
from timing import MATMUL, SMALL_MATMUL, alternate, flops_line, lab_steps_per_sec, measure_peak
from timing import parse as parse_args

from ihlab.apps.hydra_entry import config_dir
from ihlab.data import make_family
from ihlab.train.routes import flops_per_member_step
from ihlab.train.schema import register_configs, to_train_config

SMALL_OVERRIDES = ["data.seq_len=65", "data.vocab_size=300", "data.eval_size=8"]


def small_corpus(folder: Path, n_docs: int = 12, words: int = 600) -> Path:
    """`n_docs` text files of pseudo-words (a fixed seed), enough for a BPE and a few windows."""
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "the", "and", "of"]
    lexicon = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(200)]
    folder.mkdir(parents=True)
    for d in range(n_docs):
        text = " ".join(rng.choices(lexicon, k=words))
        (folder / f"doc{d:02d}.txt").write_text(text + ".\n")
    return folder


def preparation_line(config, cache: Path) -> str:
    """Time the corpus's preparation into the empty folder `cache`: building the family (it reads
    the corpus and trains the BPE, since the model's vocabulary is the tokenizer's), then
    tokenizing into the token file."""
    config.data.cache_dir = str(cache)
    start = time.perf_counter()
    family = make_family(config.data, config.seed)
    built = time.perf_counter()
    prepared = family.token_file
    done = time.perf_counter()
    tokens = prepared.train.size + prepared.validation.size
    chars = sum(len(d.text) for d in family.corpus)
    return (
        f"preparation ({config.data.source}, {chars / 1e6:.2f}M characters, "
        f"{len(family.corpus)} documents): reading and tokenizer {built - start:.1f} s, "
        f"tokenizing {tokens / 1e6:.2f}M tokens {done - built:.1f} s = "
        f"{tokens / (done - built):.0f} tokens/s ({tokens / (done - start):.0f} tokens/s "
        "from nothing)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parse_args(parser, argv, small={"steps": 8, "rounds": 1})
    register_configs()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["experiment=text_2l", "wandb=off", f"data.cache_dir={tmp}/cache"]
        if args.small:
            corpus = small_corpus(Path(tmp) / "corpus")
            overrides += [*SMALL_OVERRIDES, "data.source=files", f"data.paths=[{corpus}]"]
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        print(preparation_line(to_train_config(cfg), Path(tmp) / "cache"))

        def measure(r: int) -> tuple[float, float]:
            config = to_train_config(cfg)
            lab = lab_steps_per_sec(config, args.steps, Path(tmp) / f"round{r}")
            return lab, bare_steps_per_sec(config, args.steps)

        rounds = alternate(args.rounds, measure, ("ihlab", "bare loop"))
        print(
            f"ratio (ihlab text module / bare loop), median of {args.rounds}: {rounds.ratio:.3f} "
            f"(rounds: {rounds.spread()})"
        )
        flops = flops_per_member_step(to_train_config(cfg))  # reads the corpus: inside tmp
    peak = measure_peak(0, SMALL_MATMUL if args.small else MATMUL)
    print(peak.line())
    print(flops_line("ihlab module", flops, statistics.median(rounds.a), peak))
    print(flops_line("bare loop", flops, statistics.median(rounds.b), peak))


if __name__ == "__main__":
    main()
