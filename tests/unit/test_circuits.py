"""Weight-based head scores: copying and composition against constructed and recomputed cases."""

from __future__ import annotations

import math

import torch

from ihlab.data.base import ModelIO
from ihlab.metrics.circuits import composition_score, composition_scores, copying_score
from ihlab.model import ModelConfig, Transformer


def identity_copier(n_layers: int = 1) -> Transformer:
    """d_model = vocab = 6, no norms, one 6-dim head per layer whose W_V W_O is the identity."""
    cfg = ModelConfig(n_layers=n_layers, n_heads=1, d_model=6, norm=False, unembed_bias=False)
    model = Transformer(cfg, ModelIO(n_ctx=8, d_vocab=6, d_vocab_out=6))
    with torch.no_grad():
        model.embed_tokens.weight.copy_(torch.eye(6))
        model.unembed.weight.copy_(torch.eye(6))
        for block in model.blocks:
            block.attn.qkv.weight[12:].copy_(torch.eye(6))  # W_V
            block.attn.out.weight.copy_(torch.eye(6))  # W_O
    return model


def test_a_perfect_copying_head_scores_1_and_a_silent_one_minus_1() -> None:
    model = identity_copier()
    assert copying_score(model).tolist() == [[1.0]]
    with torch.no_grad():
        model.blocks[0].attn.out.weight.zero_()
    assert copying_score(model).tolist() == [[-1.0]]


def test_composition_score_of_aligned_and_orthogonal_matrices() -> None:
    u, v, w, v_perp = torch.eye(4)
    a = torch.outer(u, v)
    assert composition_score(a, torch.outer(v, w)).item() == 1.0
    assert composition_score(a, torch.outer(v_perp, w)).item() == 0.0


def test_composition_scores_match_a_head_by_head_recomputation() -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, n_heads=3, d_model=12), ModelIO(8, 5, 5))
    scores = composition_scores(model)
    assert all(math.isnan(x) for x in scores["k_composition"][0].tolist())

    def head(layer: int, h: int) -> dict[str, torch.Tensor]:
        qkv, out = model.blocks[layer].attn.qkv.weight, model.blocks[layer].attn.out.weight
        rows = slice(4 * h, 4 * h + 4)
        w_q, w_k, w_v = (qkv[12 * i : 12 * i + 12][rows].T for i in range(3))  # (d_model, 4)
        w_o = out[:, rows].T  # (4, d_model)
        return {"qk": w_q @ w_k.T, "ov": w_v @ w_o}

    def score(x: torch.Tensor, y: torch.Tensor) -> float:
        return (torch.linalg.norm(x @ y) / (torch.linalg.norm(x) * torch.linalg.norm(y))).item()

    for b in range(3):
        later = head(1, b)
        for kind, w_b in (("q", later["qk"]), ("k", later["qk"].T), ("v", later["ov"])):
            expected = max(score(head(0, a)["ov"], w_b) for a in range(3))
            assert abs(scores[f"{kind}_composition"][1, b].item() - expected) < 1e-5
