"""Every clamp preset named after Singh et al. computes what the paper's method computes.

Each test composes the preset as `ihlab-train` does (experiment fewshot_singh_cpu: the paper's
2-layer x 8-head RoPE model), runs the lab's clamped forward on a few sequences, and compares it
with a forward written here from the paper's description of the condition (its Section 5 and the
method of its public code), sharing only the model's parameters (and its rotary module):

- one head kept: every other layer-2 head's values are 0 at every position;
- previous-token clamp: the chosen layer-1 head's pattern is the fixed previous-token matrix at
  every query (position 0 attends to itself);
- layer-1 clamp: layer-2 scores come from a pass whose residual after layer 1 is
  [e(x1), e(x1), e(l1), e(x2), e(xq)]; the forward then holds that residual at the raw embeddings
  (values and skip path from them) and layer 2's patterns at that pass's;
- perfect match: the kept head's query row is 1 on the correct label's position, 0 elsewhere;
- perfect copy: the query's logits are -1e9 except the two context labels, which get the kept
  head's pre-softmax query scores to positions 1 and 3 (layer 1 + copy: from the layer-1 clamp's
  pattern pass).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import compose_config
from ihlab.clamps.context import ClampContext
from ihlab.clamps.engine import build_clamp_set
from ihlab.model import ModelIO, Transformer
from ihlab.train.schema import to_train_config

N_LABELS, D_FEATURES, BATCH = 5, 12, 6
IO = ModelIO(n_ctx=5, d_features=D_FEATURES, n_labels=N_LABELS, d_vocab_out=N_LABELS)


def preset(name: str):
    """The composed, validated config of `clamps=<name>` on fewshot_singh_cpu."""
    return to_train_config(compose_config(["experiment=fewshot_singh_cpu", f"clamps={name}"]))


def sequences() -> dict[str, Tensor]:
    """x1 l1 x2 l2 xq: two distinct labels in context, the query's label one of them."""
    g = torch.Generator().manual_seed(4)
    pair = torch.stack([torch.randperm(N_LABELS, generator=g)[:2] for _ in range(BATCH)])
    labels = torch.full((BATCH, 5), -1)
    labels[:, 1::2] = pair
    features = torch.randn(BATCH, 5, D_FEATURES, generator=g) * (labels < 0)[..., None]
    target = pair.gather(1, torch.randint(2, (BATCH, 1), generator=g))[:, 0]
    return {"features": features, "labels": labels, "target": target}


# The paper's forward, written from its description.


def embeddings(model: Transformer, batch: dict[str, Tensor]) -> Tensor:
    """(batch, 5, d): exemplars through the linear embedding, labels through the label table."""
    exemplars = batch["features"] @ model.embed_features.weight.T + model.embed_features.bias
    labels = model.embed_labels.weight[batch["labels"].clamp(min=0)]
    return torch.where((batch["labels"] >= 0)[..., None], labels, exemplars)


def scores_and_values(model: Transformer, layer: int, resid: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-LN attention inputs of `layer` from a residual: causal scaled scores (batch, head,
    query, key) with RoPE on queries and keys, and values (batch, pos, head, d_head)."""
    block = model.blocks[layer]
    d_head = model.cfg.head_dim
    x = F.layer_norm(resid, (resid.shape[-1],), block.ln_attn.weight, block.ln_attn.bias, 1e-5)
    q, k, v = (x @ block.attn.qkv.weight.T).view(*x.shape[:2], 3, -1, d_head).unbind(2)
    q, k = block.attn.rotary(q), block.attn.rotary(k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d_head)
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")), v


def attend(model: Transformer, layer: int, pattern: Tensor, v: Tensor) -> Tensor:
    """The layer's attention output: heads' pattern-weighted values through the output map."""
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
    return z.flatten(2) @ model.blocks[layer].attn.out.weight.T


def unembed(model: Transformer, resid: Tensor) -> Tensor:
    ln = model.ln_final
    x = F.layer_norm(resid, (resid.shape[-1],), ln.weight, ln.bias, 1e-5)
    return x @ model.unembed.weight.T + model.unembed.bias


def keep_only(v: Tensor, kept: list[int]) -> Tensor:
    """Values of every head but `kept` set to 0."""
    keep = torch.zeros(v.shape[2], dtype=torch.bool)
    keep[kept] = True
    return v * keep[None, None, :, None]


def previous_token_matrix() -> Tensor:
    """Row 0 attends to itself, row i to i - 1."""
    m = torch.zeros(5, 5)
    m[0, 0] = 1.0
    for i in range(1, 5):
        m[i, i - 1] = 1.0
    return m


def perfect_prev_token_input(e: Tensor) -> Tensor:
    """[e(x1), e(x1), e(l1), e(x2), e(xq)]."""
    return torch.stack([e[:, 0], e[:, 0], e[:, 1], e[:, 2], e[:, 4]], dim=1)


def copy_logits(scores: Tensor, head: int, labels: Tensor) -> Tensor:
    """(batch, labels): -1e9, but the labels at positions 1 and 3 get the head's query scores."""
    logits = torch.full((labels.shape[0], N_LABELS), -1e9)
    for b in range(labels.shape[0]):
        for pos in (1, 3):
            logits[b, labels[b, pos]] = scores[b, head, 4, pos]
    return logits


def layer0(model: Transformer, e: Tensor, prev_token_head: int | None = None) -> Tensor:
    """The residual after layer 1 (blocks.0), its head `prev_token_head` clamped if given."""
    s0, v0 = scores_and_values(model, 0, e)
    p0 = s0.softmax(-1)
    if prev_token_head is not None:
        p0 = p0.clone()
        p0[:, prev_token_head] = previous_token_matrix()
    return e + attend(model, 0, p0, v0)


def paper_query_logits(
    model: Transformer, batch: dict[str, Tensor], condition: str, kept: int, pt: int
) -> Tensor:
    e = embeddings(model, batch)
    if condition in ("layer1", "layer1_copy"):
        perfected, _ = scores_and_values(model, 1, perfect_prev_token_input(e))
        if condition == "layer1_copy":
            return copy_logits(perfected, kept, batch["labels"])
        _, v1 = scores_and_values(model, 1, e)
        out = attend(model, 1, perfected.softmax(-1), keep_only(v1, [kept]))
        return unembed(model, e + out)[:, -1]
    resid = layer0(model, e, pt if condition == "prev_token" else None)
    s1, v1 = scores_and_values(model, 1, resid)
    if condition == "copy":
        return copy_logits(s1, kept, batch["labels"])
    p1 = s1.softmax(-1)
    if condition == "match":
        p1 = p1.clone()
        p1[:, kept, 4] = 0.0
        for b in range(BATCH):
            correct = 1 if batch["labels"][b, 1] == batch["target"][b] else 3
            p1[b, kept, 4, correct] = 1.0
    return unembed(model, resid + attend(model, 1, p1, keep_only(v1, [kept])))[:, -1]


PRESETS = {
    "one_head": "none",
    "singh_prev_token": "prev_token",
    "singh_layer1": "layer1",
    "singh_match": "match",
    "singh_copy": "copy",
    "singh_layer1_copy": "layer1_copy",
}


def lab_forward(name: str, model: Transformer, batch: dict[str, Tensor]) -> Tensor:
    cfg = preset(name)
    clamps = build_clamp_set(cfg.clamps, cfg.model, IO)
    inputs = {k: batch[k] for k in ("features", "labels")}
    hooks = clamps.hooks(ClampContext(inputs, batch["target"], step=0), (), model)
    return model(inputs, hooks)  # (batch, pos, labels)


@pytest.fixture(scope="module")
def model() -> Transformer:
    cfg = preset("one_head")
    torch.manual_seed(0)
    return Transformer(cfg.model, IO)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_computes_the_papers_query_logits(name: str, model: Transformer) -> None:
    cfg = preset(name)
    kept, pt = cfg.named_heads["kept"], cfg.named_heads["prev_token"]
    assert len(kept) == 1 and len(pt) == 1  # the paper keeps one head, clamps one
    batch = sequences()
    with torch.no_grad():
        expected = paper_query_logits(model, batch, PRESETS[name], kept[0], pt[0])
        actual = lab_forward(name, model, batch)[:, -1]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_the_kept_head_is_the_only_layer2_head_that_reaches_the_output(model) -> None:
    """A control on the comparison above: with the other heads active the logits differ."""
    batch = sequences()
    kept = preset("one_head").named_heads["kept"][0]
    with torch.no_grad():
        e = embeddings(model, batch)
        resid = layer0(model, e)
        s1, v1 = scores_and_values(model, 1, resid)
        all_heads = unembed(model, resid + attend(model, 1, s1.softmax(-1), v1))[:, -1]
        one = paper_query_logits(model, batch, "none", kept, 0)
    assert not torch.allclose(all_heads, one, atol=1e-3)


def gradients(name: str, model: Transformer) -> dict[str, Tensor]:
    model.zero_grad()
    batch = sequences()
    logits = lab_forward(name, model, batch)
    F.cross_entropy(logits[:, -1], batch["target"]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def qkv_head(grad: Tensor, part: int, head: int, d_head: int = 8) -> Tensor:
    """The rows of a fused qkv weight's gradient that make `part` (0 q, 1 k, 2 v) of `head`."""
    return grad.view(3, -1, d_head, grad.shape[-1])[part, head]


def test_gradients_follow_the_papers_rules(model) -> None:
    """Layer-1 clamp: layer 1 gets no gradient, the kept head's queries and keys do (through the
    held scores). Match: the kept head's queries and keys get none, its values do. Layer 1 + copy:
    only the kept head's queries and keys and the exemplar embedding learn. Ablated heads never
    learn."""
    kept = preset("one_head").named_heads["kept"][0]
    other = (kept + 1) % 8
    g = gradients("singh_layer1", model)
    assert torch.count_nonzero(g.get("blocks.0.attn.qkv.weight", torch.zeros(1))) == 0
    assert torch.count_nonzero(qkv_head(g["blocks.1.attn.qkv.weight"], 0, kept)) > 0
    assert torch.count_nonzero(qkv_head(g["blocks.1.attn.qkv.weight"], 2, other)) == 0
    g = gradients("singh_match", model)
    for part in (0, 1):
        assert torch.count_nonzero(qkv_head(g["blocks.1.attn.qkv.weight"], part, kept)) == 0
    assert torch.count_nonzero(qkv_head(g["blocks.1.attn.qkv.weight"], 2, kept)) > 0
    g = gradients("singh_layer1_copy", model)
    assert torch.count_nonzero(qkv_head(g["blocks.1.attn.qkv.weight"], 2, kept)) == 0
    assert torch.count_nonzero(qkv_head(g["blocks.1.attn.qkv.weight"], 0, kept)) > 0
    # the keys at the label positions hold the preceding exemplars: labels never enter
    assert torch.count_nonzero(g["embed_features.weight"]) > 0
    assert torch.count_nonzero(g.get("embed_labels.weight", torch.zeros(1))) == 0
