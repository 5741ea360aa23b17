"""Model FLOPs of a training step, counted from the model's shapes: the benchmarks' yardstick
(FLOP/s reached, against the machine's measured matmul peak).

What counts: every matrix product of the forward and the backward, 2 FLOPs per multiply-add, as
PyTorch's `FlopCounterMode` counts them (tests/unit/test_flops.py checks the two agree on every
model variant). Attention counts the whole (query, key) square of both products (scores = q k^T
and pattern v), as the kernels compute it, causal mask or not. The backward of a product is two
products of the same size (the gradient of its input and of its weight), except where the input
needs no gradient: the exemplar embedding reads data, so its backward is one. Every position is
counted, as the model computes logits at every position even where the loss reads one.

What does not count: layer norms, softmax, GELU, rotary positions, smeared keys, embedding
lookups, the loss and the optimizer (element-wise work, small next to the products in a
transformer, and no matmul unit runs it), and any extra forward a clamp runs: these are the
model's FLOPs (as in "model FLOPs utilisation"), the same for every route that trains it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ihlab.model import ModelConfig, ModelIO


@dataclass(frozen=True)
class StepFlops:
    """Matmul FLOPs of one training step of one model: its forward and its backward."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def step_flops(cfg: ModelConfig, io: ModelIO, batch: int, positions: int) -> StepFlops:
    """FLOPs of a forward and backward over `batch` sequences of `positions` model inputs."""
    d, heads, d_head = cfg.d_model, cfg.n_heads, cfg.head_dim
    n = positions
    data_read = 0  # products whose input is data: no input gradient
    if io.d_features is not None:
        data_read += 2 * n * io.d_features * d  # exemplar embedding, every position
    products = 0  # products whose input carries a gradient
    for _ in range(cfg.n_layers):
        products += 2 * n * d * 3 * heads * d_head  # q, k, v
        products += 2 * 2 * heads * n * n * d_head  # q k^T and pattern v
        products += 2 * n * heads * d_head * d  # output projection
        if not cfg.attn_only:
            products += 2 * 2 * n * d * cfg.mlp_dim  # MLP in and out
    products += 2 * n * d * io.d_vocab_out  # unembedding
    return StepFlops(
        forward=batch * (products + data_read), backward=batch * (2 * products + data_read)
    )
