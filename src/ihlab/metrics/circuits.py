"""Weight-based head scores: OV copying and Q/K/V composition (Olsson et al., Elhage et al.).

Both read the parameters only (no data), so they are cheap enough for every scoring step. Matrices
use the row-vector convention of the papers: a residual vector x (d_model,) gives the head's value
x W_V and output x W_V W_O; W_OV = W_V W_O and W_QK = W_Q W_K^T are (d_model, d_model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ihlab.model import Transformer


def head_matrices(model: Transformer, layer: int) -> dict[str, Tensor]:
    """W_Q, W_K, W_V (head, d_model, d_head) and W_O (head, d_head, d_model) of one layer."""
    attn = model.blocks[layer].attn
    n_heads, d_head = attn.n_heads, attn.d_head
    qkv = attn.qkv.weight.view(3, n_heads, d_head, -1)  # (3, head, d_head, d_model)
    w_q, w_k, w_v = (m.transpose(-1, -2) for m in qkv)  # each (head, d_model, d_head)
    w_o = attn.out.weight.T.reshape(n_heads, d_head, -1)  # (head, d_head, d_model)
    return {"q": w_q, "k": w_k, "v": w_v, "o": w_o}


def ln_linear_part(norm: nn.Module, d_model: int) -> Tensor:
    """The linear part of a LayerNorm as a (d_model, d_model) float64 matrix acting on row
    vectors: centring then the gain, (I - 11^T / d) diag(gamma); the identity without a norm."""
    eye = torch.eye(d_model, dtype=torch.float64)
    if not isinstance(norm, nn.LayerNorm):
        return eye
    gain = torch.ones(d_model) if norm.weight is None else norm.weight.detach().cpu()
    return (eye - 1 / d_model) * gain.double()  # column j scaled by gamma_j


@torch.no_grad()
def ov_copying_score(model: Transformer) -> Tensor:
    """Olsson et al.'s copying score of every head, (layer, head), in [-1, 1], logged as
    `ov_copying` (weight-based; the probe's `direct_copying` is an activation-based score):
    sum(Re lambda) / sum(|lambda|) over the eigenvalues of the head's full OV circuit
    W_E W_V W_O W_U (vocab x vocab; for few-shot models the label embeddings and the unembedding
    to the labels). +1: every token raises its own logit (a copying head); -1: it lowers it;
    about 0: a random head. NaN for a head whose OV circuit is zero.

    The nonzero eigenvalues of A B equal those of B A, so they come from the d_head x d_head
    product (W_O W_U)(W_E W_V), or the vocab x vocab one if smaller (as TransformerLens'
    FactoredMatrix.eigenvalues): cheap enough for every scoring step.

    Decision: LayerNorms are folded in by their linear part, as TransformerLens' fold_ln and
    centring do: the block's input norm (centring and gain) between W_E and W_V, the final norm
    between W_O and W_U. Their 1/sigma is left out: it is a positive number per position set by
    the whole residual stream at run time, not by the weights, and it does not change which tokens
    a head raises. Their biases and the unembedding bias are left out too: they add the same
    logits whatever token the head reads.
    """
    embed = model.embed_tokens if hasattr(model, "embed_tokens") else model.embed_labels
    n_vocab = min(embed.weight.shape[0], model.unembed.weight.shape[0])
    d_model = model.cfg.d_model
    w_e = embed.weight[:n_vocab].detach().cpu().double()  # (vocab, d_model)
    w_u = model.unembed.weight[:n_vocab].detach().cpu().double().T  # (d_model, vocab)
    w_u = ln_linear_part(model.ln_final, d_model) @ w_u
    rows = []
    for layer, block in enumerate(model.blocks):
        w = {k: m.detach().cpu().double() for k, m in head_matrices(model, layer).items()}
        a = w_e @ ln_linear_part(block.ln_attn, d_model) @ w["v"]  # (head, vocab, d_head)
        b = w["o"] @ w_u  # (head, d_head, vocab)
        small = b @ a if a.shape[-1] <= n_vocab else a @ b  # same nonzero eigenvalues
        eigenvalues = torch.linalg.eigvals(small)  # (head, d)
        rows.append(eigenvalues.real.sum(-1) / eigenvalues.abs().sum(-1))
    return torch.stack(rows).float()


def composition_score(w_a: Tensor, w_b: Tensor) -> Tensor:
    """||W_A W_B||_F / (||W_A||_F ||W_B||_F), batched over leading axes."""
    num = torch.linalg.matrix_norm(w_a @ w_b)
    return num / (torch.linalg.matrix_norm(w_a) * torch.linalg.matrix_norm(w_b))


@torch.no_grad()
def composition_scores(model: Transformer) -> dict[str, Tensor]:
    """Q-, K- and V-composition of every head with the earlier layers' heads, (layer, head) each.

    Entry (l, h) is the largest composition score between head h of layer l and any head of an
    earlier layer (its W_OV feeding this head's W_QK on the query side, on the key side, or its
    W_OV); layer 0, with no earlier head, is NaN.
    """
    n_layers, n_heads = len(model.blocks), model.cfg.n_heads
    scores = {kind: torch.full((n_layers, n_heads), float("nan")) for kind in ("q", "k", "v")}
    ov = []
    for layer in range(n_layers):
        w = head_matrices(model, layer)
        w_ov = w["v"] @ w["o"]  # (head, d_model, d_model)
        w_qk = w["q"] @ w["k"].transpose(-1, -2)  # (head, d_model, d_model)
        if ov:
            earlier = torch.cat(ov)[:, None]  # (earlier heads, 1, d_model, d_model)
            targets = {"q": w_qk, "k": w_qk.transpose(-1, -2), "v": w_ov}
            for kind, w_b in targets.items():
                scores[kind][layer] = composition_score(earlier, w_b[None]).amax(dim=0).cpu()
        ov.append(w_ov)
    return {f"{kind}_composition": grid for kind, grid in scores.items()}
