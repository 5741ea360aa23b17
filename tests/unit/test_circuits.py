"""Weight-based head scores: copying and composition against constructed and recomputed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ihlab.metrics.circuits import composition_score, composition_scores, ov_copying_score
from ihlab.model import ModelConfig, ModelIO, Transformer


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


def test_a_copying_head_scores_1_an_anti_copying_head_minus_1_a_silent_one_nan() -> None:
    model = identity_copier()
    assert ov_copying_score(model).tolist() == [[pytest.approx(1.0)]]
    with torch.no_grad():
        model.blocks[0].attn.out.weight.copy_(-torch.eye(6))  # every token lowers its own logit
    assert ov_copying_score(model).tolist() == [[pytest.approx(-1.0)]]
    with torch.no_grad():
        model.blocks[0].attn.out.weight.zero_()
    assert math.isnan(ov_copying_score(model).item())


def full_ov_score(model: Transformer, embed: torch.Tensor, layer: int, head: int) -> float:
    """The copying score from numpy's eigenvalues of the full vocab x vocab circuit, LayerNorms
    as their linear part (centre, then gain), built from the raw weights."""
    block, d = model.blocks[layer], model.cfg.d_model
    dh = model.cfg.head_dim
    qkv, out = block.attn.qkv.weight.detach().numpy(), block.attn.out.weight.detach().numpy()
    w_v = qkv[2 * d + head * dh : 2 * d + (head + 1) * dh].T  # (d_model, d_head)
    w_o = out[:, head * dh : (head + 1) * dh].T  # (d_head, d_model)
    x = embed.detach().numpy().astype(np.float64)
    x = (x - x.mean(axis=1, keepdims=True)) * block.ln_attn.weight.detach().numpy()
    o = x @ w_v @ w_o  # (vocab, d_model): what each token's value writes
    o = (o - o.mean(axis=1, keepdims=True)) * model.ln_final.weight.detach().numpy()
    circuit = o @ model.unembed.weight.detach().numpy()[: len(x)].T  # (vocab, vocab)
    eigenvalues = np.linalg.eigvals(circuit)
    return float(eigenvalues.real.sum() / np.abs(eigenvalues).sum())


def randomize_norms(model: Transformer) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)


def test_random_heads_score_about_0_as_numpy_computes_on_the_full_circuit() -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=4, n_heads=4, d_model=32), ModelIO(8, 50, 50))
    randomize_norms(model)
    scores = ov_copying_score(model)
    expected = [
        [full_ov_score(model, model.embed_tokens.weight, layer, h) for h in range(4)]
        for layer in range(4)
    ]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-5)
    assert abs(scores.mean().item()) < 0.15  # 16 random heads: eigenvalues of either sign


def test_few_shot_models_use_the_label_embeddings() -> None:
    torch.manual_seed(1)
    io = ModelIO(n_ctx=8, d_vocab_out=5, d_features=7, n_labels=5)  # 5 labels < d_head 8
    model = Transformer(ModelConfig(n_layers=2, n_heads=4, d_model=32), io)
    randomize_norms(model)
    expected = [
        [full_ov_score(model, model.embed_labels.weight, layer, h) for h in range(4)]
        for layer in range(2)
    ]
    np.testing.assert_allclose(ov_copying_score(model).numpy(), expected, atol=1e-5)


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
