"""Weight-based head scores: empirical copying and Q/K/V composition (Olsson et al., Elhage et al.).

Both read the parameters only (no data), so they are cheap enough for every scoring step. Matrices
use the row-vector convention of the papers: a residual vector x (d_model,) gives the head's value
x W_V and output x W_V W_O; W_OV = W_V W_O and W_QK = W_Q W_K^T are (d_model, d_model).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ihlab.model import Transformer


def head_matrices(model: Transformer, layer: int) -> dict[str, Tensor]:
    """W_Q, W_K, W_V (head, d_model, d_head) and W_O (head, d_head, d_model) of one layer."""
    attn = model.blocks[layer].attn
    n_heads, d_head = attn.n_heads, attn.d_head
    qkv = attn.qkv.weight.view(3, n_heads, d_head, -1)  # (3, head, d_head, d_model)
    w_q, w_k, w_v = (m.transpose(-1, -2) for m in qkv)  # each (head, d_model, d_head)
    w_o = attn.out.weight.T.reshape(n_heads, d_head, -1)  # (head, d_head, d_model)
    return {"q": w_q, "k": w_k, "v": w_v, "o": w_o}


@torch.no_grad()
def copying_score(model: Transformer, n_tokens: int = 200, seed: int = 0) -> Tensor:
    """Empirical copying score of every head, (layer, head), in [-1, 1].

    For input tokens t (token ids, or labels for few-shot models; at most `n_tokens`, drawn with
    `seed`), the head's direct-path logits ln_final(ln_attn(e_t) W_OV) W_U are mean-centred and
    ReLU'd; the score is the share of that raise given to t itself, averaged over t and rescaled
    from [0, 1] to [-1, 1] (1: a perfect copying head; about -1: no copying).
    """
    table = model.embed_tokens if hasattr(model, "embed_tokens") else model.embed_labels
    n_vocab = min(table.weight.shape[0], model.unembed.weight.shape[0])
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randperm(n_vocab, generator=g)[:n_tokens]  # (tokens,)
    embeddings = table.weight[tokens]  # (tokens, d_model)
    rows = []
    for layer, block in enumerate(model.blocks):
        w = head_matrices(model, layer)
        x = block.ln_attn(embeddings)  # (tokens, d_model)
        out = torch.einsum("td,hde,hem->htm", x, w["v"], w["o"])  # (head, tokens, d_model)
        logits = model.unembed(model.ln_final(out))  # (head, tokens, vocab)
        raised = (logits - logits.mean(dim=-1, keepdim=True)).relu()
        own = raised[:, torch.arange(len(tokens)), tokens]  # (head, tokens)
        share = own / raised.sum(dim=-1).clamp(min=1e-12)
        rows.append(2 * share.mean(dim=1) - 1)
    return torch.stack(rows)


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
