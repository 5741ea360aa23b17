"""The model-FLOP count of a training step equals what PyTorch's FlopCounterMode counts, op by op,
on a forward and backward of the lab's model, for every model variant and both input kinds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ihlab.metrics.flops import step_flops
from ihlab.model import ModelConfig, ModelIO, Transformer, unfused_attention

TOKENS = ModelIO(n_ctx=12, d_vocab=20, d_vocab_out=20)
FEWSHOT = ModelIO(n_ctx=5, d_features=24, n_labels=3, d_vocab_out=3)
VARIANTS = {
    "attention-only, learned positions": (ModelConfig(), TOKENS),
    "MLPs, d_mlp set": (ModelConfig(attn_only=False, d_mlp=48), TOKENS),
    "MLPs, 4 x d_model": (ModelConfig(attn_only=False, n_layers=3), TOKENS),
    "rotary, biases, d_head set": (
        ModelConfig(positional="rope", bias=True, d_head=6, n_heads=3, d_model=24),
        TOKENS,
    ),
    "smeared keys, one layer": (ModelConfig(n_layers=1, smeared_keys=True), TOKENS),
    "few-shot exemplar features": (ModelConfig(positional="rope", n_heads=8), FEWSHOT),
}


def inputs(io: ModelIO, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if io.d_vocab is not None:
        return {"tokens": torch.randint(io.d_vocab, (batch, io.n_ctx), generator=g)}
    labels = torch.full((batch, io.n_ctx), -1)
    labels[:, 1::2] = torch.randint(io.n_labels, (batch, io.n_ctx // 2), generator=g)
    return {"features": torch.randn(batch, io.n_ctx, io.d_features, generator=g), "labels": labels}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_count_is_what_pytorch_counts_op_by_op(name: str) -> None:
    cfg, io = VARIANTS[name]
    model = Transformer(cfg, io)
    batch = 7
    x = inputs(io, batch)
    with unfused_attention():  # PyTorch's counter has no formula for the CPU's fused kernel
        with FlopCounterMode(display=False) as forward:
            loss = model(x).logsumexp(-1).sum()
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    counted = step_flops(cfg, io, batch, io.n_ctx)
    assert counted.forward == forward.get_total_flops()
    assert counted.backward == backward.get_total_flops()
    assert counted.total == forward.get_total_flops() + backward.get_total_flops()


def test_a_hand_count_of_one_small_model() -> None:
    """One layer, 2 heads of 4, d_model 8, vocab 10, 3 positions, 1 sequence: q/k/v 2*3*8*24 =
    1152, q k^T and pattern v 2*2*2*3*3*4 = 288, output 2*3*8*8 = 384, unembedding 2*3*8*10 =
    480; forward 2304, backward twice that."""
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=8)
    io = ModelIO(n_ctx=3, d_vocab=10, d_vocab_out=10)
    assert step_flops(cfg, io, 1, 3).forward == 2304
    assert step_flops(cfg, io, 1, 3).backward == 4608
    assert step_flops(cfg, io, 5, 3).total == 5 * 6912
