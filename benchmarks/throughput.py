"""Training throughput: ihlab-train's LightningModule vs a bare PyTorch loop, side by side.

Both train the `induction_2l` model on the same batches with the same optimizer; the bare loop runs
a hand-written copy of the model (no site hooks) that loads the lab model's weights, so the ratio
prices everything the lab adds: Lightning, the module, site hooks, logging to metrics.csv and the
progress bar. Rounds alternate to spread machine noise evenly; the median ratio is printed.
A second line prices a seed ensemble: member-steps per second of one job training `--members`
seeds as one batched computation, against the bare loop's single-run steps per second. Both
routes' model FLOP/s are printed against this machine's matmul peak (timing.measure_peak).

    python benchmarks/throughput.py [--steps 300] [--rounds 3] [--members 8] [--small]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from timing import (
    MATMUL,
    SMALL_MATMUL,
    WARMUP,
    alternate,
    flops_line,
    lab_steps_per_sec,
    measure_peak,
    parse,
)
from torch import Tensor, nn

from ihlab.apps.hydra_entry import config_dir
from ihlab.data import make_family
from ihlab.model import Transformer
from ihlab.train.routes import flops_per_member_step
from ihlab.train.schema import register_configs, to_train_config


class BareBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.attn.qkv(self.ln_attn(x)).view(b, n, 3, self.n_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, head, pos, d_head)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (batch, head, pos, d_head)
        return x + self.attn.out(z.transpose(1, 2).reshape(b, n, d))


class BareModel(nn.Module):
    """The induction_2l architecture in the fewest lines: same parameter names as ihlab's model."""

    def __init__(self, d_vocab: int, n_ctx: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(d_vocab, d_model)
        self.pos_embed = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(BareBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, d_vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed_tokens(tokens) + self.pos_embed.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))


def bare_steps_per_sec(config, steps: int) -> float:
    warmup = min(WARMUP, steps // 2)
    datamodule = make_family(config.data, config.seed)
    lab = Transformer(config.model, datamodule.io)
    m = config.model
    model = BareModel(datamodule.io.d_vocab, datamodule.io.n_ctx, m.d_model, m.n_heads, m.n_layers)
    model.load_state_dict(lab.state_dict())
    tokens = datamodule.train_batch(0)["tokens"]
    assert torch.allclose(model(tokens[:, :-1]), lab({"tokens": tokens[:, :-1]}), atol=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        tokens = datamodule.train_batch(step)["tokens"]  # (batch, seq)
        logits = model(tokens[:, :-1])  # (batch, seq - 1, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (steps - warmup) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=8)
    args = parse(parser, argv, small={"steps": 8, "rounds": 1, "members": 2})
    register_configs()
    seeds = ",".join(map(str, range(args.members)))
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=induction_2l", "wandb=off"])
        job = compose(
            "train", overrides=["experiment=induction_2l", "wandb=off", f"seeds=[{seeds}]"]
        )
    with tempfile.TemporaryDirectory() as tmp:

        def measure(r: int) -> tuple[float, float]:
            config = to_train_config(cfg)
            lab = lab_steps_per_sec(config, args.steps, Path(tmp) / f"round{r}")
            return lab, bare_steps_per_sec(config, args.steps)

        def measure_job(r: int) -> tuple[float, float]:
            steps = lab_steps_per_sec(to_train_config(job), args.steps, Path(tmp) / f"job{r}")
            return args.members * steps, bare_steps_per_sec(to_train_config(cfg), args.steps)

        single = alternate(args.rounds, measure, ("ihlab", "bare loop"))
        print(f"ratio (ihlab module / bare loop), median of {args.rounds}: {single.ratio:.3f}")
        names = (f"ensemble of {args.members} (member-steps/s)", "bare loop")
        ensemble = alternate(args.rounds, measure_job, names)
        print(
            f"ensemble ratio (member-steps/s of {args.members} seeds / bare single-run steps/s), "
            f"median of {args.rounds}: {ensemble.ratio:.3f}"
        )
    peak = measure_peak(0, SMALL_MATMUL if args.small else MATMUL)
    print(peak.line())
    flops = flops_per_member_step(to_train_config(cfg))
    median = statistics.median
    print(flops_line("ihlab module", flops, median(single.a), peak))
    print(flops_line("bare loop", flops, median(single.b), peak))
    print(flops_line(f"ensemble of {args.members}, per member", flops, median(ensemble.a), peak))


if __name__ == "__main__":
    main()
