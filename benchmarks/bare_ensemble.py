"""The least a seed ensemble of `fewshot_fast` must compute here: a bare batched loop.

K members' parameters stacked on a member axis, the model written out as batched matmuls (member
axis first) with PyTorch's fused attention over all members' sequences at once, and foreach Adam.
Each step draws every member's batch from its own task (the batches its single run trains on);
every `eval_every` steps each member's evaluation sets go through a no-grad forward, member by
member as the lab does on the CPU. Nothing else: no Lightning, hooks, metrics, head scores,
logging, files or start-up. The model is checked to give each member's lab-model logits before it
is timed.

    python benchmarks/bare_ensemble.py [--members 8] [--steps 1500] [--threads 0] [--small]

Prints `seconds: S` (the wall time of `--steps` steps and their evaluations, after a warm-up).
study_throughput.py runs it to price the ceiling of the study speed-up on this machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from timing import parse
from torch import Tensor

from ihlab.apps.hydra_entry import config_dir
from ihlab.data import make_family
from ihlab.model import Transformer
from ihlab.seeding import derive_seed
from ihlab.train.members import stack
from ihlab.train.schema import register_configs, to_train_config

WARMUP = 20


def stacked(models: list[Transformer]) -> dict[str, Tensor]:
    """The members' parameters by the lab model's names, (member, ...), as leaf tensors."""
    names = [n for n, _ in models[0].named_parameters()]
    return {
        n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
        for n in names
    }


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary positions on (sequences, head, pos, d_head)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def forward(p: dict[str, Tensor], features: Tensor, labels: Tensor, n_heads: int) -> Tensor:
    """All members' logits at every position: features (K, B, T, D_in), labels (K, B, T) with -1 at
    exemplar positions -> (K, B, T, n_labels). Pre-LN, attention-only, RoPE, no q/k/v biases."""
    k, b, t, _ = features.shape
    d = p["embed_labels.weight"].shape[-1]
    d_head = d // n_heads
    ex = features.flatten(1, 2) @ p["embed_features.weight"].transpose(1, 2)  # (K, B*T, d)
    ex = ex + p["embed_features.bias"][:, None]
    offsets = torch.arange(k)[:, None, None] * p["embed_labels.weight"].shape[1]  # (K, 1, 1)
    lab = p["embed_labels.weight"].flatten(0, 1)[labels.clamp(min=0) + offsets]  # (K, B, T, d)
    x = torch.where((labels >= 0)[..., None], lab, ex.view(k, b, t, d)).view(k, b * t, d)
    freqs = 10000.0 ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(t, dtype=torch.float32), freqs)  # (T, d_head/2)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # (T, d_head)
    n_layers = sum(1 for name in p if name.endswith(".attn.qkv.weight"))
    for layer in range(n_layers):
        pre = f"blocks.{layer}"
        h = F.layer_norm(x, (d,)) * p[f"{pre}.ln_attn.weight"][:, None]
        h = h + p[f"{pre}.ln_attn.bias"][:, None]  # (K, B*T, d)
        qkv = (h @ p[f"{pre}.attn.qkv.weight"].transpose(1, 2)).view(k * b, t, 3, n_heads, d_head)
        q, kk, v = qkv.permute(2, 0, 3, 1, 4)  # each (K*B, head, T, d_head)
        q, kk = rope(q, cos, sin), rope(kk, cos, sin)
        z = F.scaled_dot_product_attention(q, kk, v, is_causal=True)  # (K*B, head, T, d_head)
        z = z.transpose(1, 2).reshape(k, b * t, d)
        x = x + z @ p[f"{pre}.attn.out.weight"].transpose(1, 2)
    x = F.layer_norm(x, (d,)) * p["ln_final.weight"][:, None] + p["ln_final.bias"][:, None]
    logits = x @ p["unembed.weight"].transpose(1, 2) + p["unembed.bias"][:, None]
    return logits.view(k, b, t, -1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parse(parser, argv, small={"members": 2, "steps": 4})
    if args.threads:
        torch.set_num_threads(args.threads)
    register_configs()
    overrides = ["experiment=fewshot_fast"]
    if args.small:  # evaluations every 2 steps on small sets
        overrides += ["trainer.eval_every=2", "data.eval_size=16"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        config = to_train_config(compose("train", overrides=overrides))
    assert config.model.positional.value == "rope" and config.model.attn_only
    assert not config.model.bias and not config.model.smeared_keys
    tasks = [make_family(config.data, seed) for seed in range(args.members)]
    models = []
    for seed in range(args.members):  # each member's lab init
        torch.manual_seed(derive_seed(seed, "init"))
        models.append(Transformer(config.model, tasks[0].io))
    params = stacked(models)
    heads = config.model.n_heads
    first = stack([task.train_batch(0) for task in tasks])
    with torch.no_grad():  # the same model as the lab's, member by member
        mine = forward(params, first["features"], first["labels"], heads)
        for k, model in enumerate(models):
            inputs = {"features": first["features"][k], "labels": first["labels"][k]}
            torch.testing.assert_close(mine[k], model(inputs), atol=1e-5, rtol=1e-4)
    optimizer = torch.optim.Adam(params.values(), lr=config.optim.lr, foreach=True)
    eval_sets = [stack([t.eval_sets[s] for t in tasks]) for s in tasks[0].eval_splits]

    def step(i: int) -> None:
        batch = stack([task.train_batch(i) for task in tasks])
        logits = forward(params, batch["features"], batch["labels"], heads)[:, :, -1]  # (K, B, L)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), reduction="none")
        optimizer.zero_grad(set_to_none=True)
        loss.view(args.members, -1).mean(1).sum().backward()  # members' losses: independent grads
        optimizer.step()

    @torch.no_grad()
    def evaluate() -> None:  # member by member: 1000-sequence batches already fill the cores
        for k in range(args.members):
            own = {name: p[k : k + 1] for name, p in params.items()}
            for batch in eval_sets:  # (K, eval_size, ...)
                logits = forward(
                    own, batch["features"][k : k + 1], batch["labels"][k : k + 1], heads
                )
                F.cross_entropy(logits[0, :, -1], batch["target"][k])

    for i in range(min(WARMUP, args.steps)):
        step(i)
    every = config.trainer.eval_every
    started = time.perf_counter()
    for i in range(1, args.steps + 1):
        step(i)
        if i % every == 0:
            evaluate()
    seconds = time.perf_counter() - started
    print(f"seconds: {seconds:.2f}")


if __name__ == "__main__":
    main()
