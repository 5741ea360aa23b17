"""Head scores of a pretrained model, every (layer, query head) at once (Crosbie & Shutova).

Prefix matching by the paper's protocol: BOS + 50 distinct tokens from the middle of the
vocabulary, repeated 4 times (201 tokens), 5 seeded sequences, one batched forward; for every query
in repeats 2-4, the attention summed over the positions that follow the same token in all earlier
repeats, averaged over queries and sequences. The previous-token score and an activation-based
copying score (`direct_copying`) come from the same forward.

Decision: no token-frequency table ships with a model, so "the middle of the vocabulary by
frequency" is taken as ids between the 4th and 96th percentile of the (BPE-ordered) vocabulary,
special tokens excluded: BPE ids are assigned in merge order, roughly by frequency.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ihlab.errors import ConfigError
from ihlab.metrics.circuits import ov_copying_score
from ihlab.metrics.heads import prefix_matching_score, previous_token_score
from ihlab.model import Positional
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.models import LoadedModel
from ihlab.runs.checkpoints import load_lab_model
from ihlab.seeding import generator
from ihlab.sites import Intervention, SiteHooks


@dataclass
class PrefixProtocol:
    n_tokens: int = 50
    n_repeats: int = 4
    n_sequences: int = 5
    seed: int = 0
    low: float = 0.04  # vocabulary quantiles the tokens are drawn between
    high: float = 0.96


def repeated_token_batch(loaded: LoadedModel, protocol: PrefixProtocol) -> Tensor:
    """(sequences, 1 + n_tokens * n_repeats) token ids: BOS then n_tokens distinct ids, repeated."""
    tok = loaded.tokenizer
    vocab = len(tok)
    special = set(tok.all_special_ids)
    lo, hi = int(protocol.low * vocab), int(protocol.high * vocab)
    pool = torch.tensor([i for i in range(lo, hi) if i not in special])
    g = generator(protocol.seed, "prefix_matching")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    rows = []
    for _ in range(protocol.n_sequences):
        tokens = pool[torch.randperm(len(pool), generator=g)[: protocol.n_tokens]]
        rows.append(torch.cat([torch.tensor([bos]), tokens.repeat(protocol.n_repeats)]))
    return torch.stack(rows)


def output_projection(attention: nn.Module) -> nn.Module:
    """The attention module's output projection (o_proj, c_proj, dense or out_proj)."""
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        if hasattr(attention, name):
            return getattr(attention, name)
    raise ValueError(f"no output projection found in {type(attention).__name__}.")


def final_norm(model: nn.Module) -> nn.Module:
    """The base model's final norm (norm, ln_f or final_layer_norm)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise ValueError(f"no final norm found in {type(base).__name__}.")


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every layer's attention module, in layer order (those with a `layer_idx`)."""
    found = {m.layer_idx: m for m in model.modules() if hasattr(m, "layer_idx") and _is_attn(m)}
    return [found[i] for i in sorted(found)]


def _is_attn(module: nn.Module) -> bool:
    return any(hasattr(module, n) for n in ("o_proj", "c_proj", "dense", "out_proj")) and not any(
        hasattr(module, n) for n in ("self_attn", "attn", "attention")
    )


@torch.no_grad()
def direct_copying_scores(
    loaded: LoadedModel,
    z: dict[int, Tensor],
    tokens: Tensor,
    patterns: dict[int, Tensor],
    first: int,
) -> Tensor:
    """In-context copying score per head, (layer, head): the share of the head's direct-path logit
    raise that goes to the token it attends to, above chance, on one repeated sequence.

    At the queries of the second repeat (`first` to `2 * first - 1`), each head's direct-path
    logits (its z through its slice of the output projection, the final norm and the unembedding)
    over the sequence's n distinct tokens are mean-centred and ReLU'd; the share of that raise
    given to the token the head attends to most (0 where that is not one of them, e.g. BOS) is
    averaged over those queries and calibrated against chance, (share - 1/n) / (1 - 1/n): 1 when
    all the raise goes to the attended token, 0 for a random head, -1/(n - 1) at the least. So a
    head that lowers the attended token reads about 0, not -1: unlike the lab's weight-based
    eigenvalue score (`ov_copying`, `ihlab.metrics.circuits.ov_copying_score`), this one does not
    separate anti-copying from not copying; hence its own name, `direct_copying`. Decision: the
    share is taken among the tokens in context, not the whole vocabulary: over ~50k logits any
    single token's share is ~0 even for a strong copier.
    """
    model = loaded.model
    unembed, norm = model.get_output_embeddings(), final_norm(model)
    attns = attention_modules(model)
    queries = torch.arange(first, min(2 * first - 1, tokens.shape[1]), device=tokens.device)
    candidates = tokens[0, 1:first]  # (tokens,) the distinct tokens in context
    w_u = unembed.weight[candidates]  # (tokens, d_model)
    b_u = unembed.bias[candidates] if getattr(unembed, "bias", None) is not None else 0.0
    slot = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long, device=tokens.device)
    slot[candidates] = torch.arange(len(candidates), device=tokens.device)
    rows = []
    for layer in range(loaded.n_layers):
        proj = output_projection(attns[layer])
        zl = z[layer][0, queries]  # (query, head, d_head)
        n, heads, d_head = zl.shape
        masked = torch.zeros(heads, n, heads, d_head, dtype=zl.dtype, device=zl.device)
        for h in range(heads):
            masked[h, :, h] = zl[:, h]
        flat = masked.reshape(heads, n, heads * d_head)
        out = proj(flat) - proj(torch.zeros_like(flat[:1]))  # (head, query, d_model)
        logits = (norm(out) @ w_u.T + b_u).float()  # (head, query, tokens)
        raised = (logits - logits.mean(dim=-1, keepdim=True)).relu()
        attended = slot[tokens[0][patterns[layer][0][:, queries].argmax(-1)]]  # (head, query)
        own = raised.gather(-1, attended.clamp(min=0)[..., None])[..., 0] * (attended >= 0)
        share = own / raised.sum(dim=-1).clamp(min=1e-12)
        chance = 1 / len(candidates)
        rows.append((share.mean(dim=1) - chance) / (1 - chance))
    return torch.stack(rows)


@torch.no_grad()
def pretrained_head_scores(
    loaded: LoadedModel,
    protocol: PrefixProtocol | None = None,
    interventions: Mapping[str, Intervention] | None = None,
) -> dict[str, Tensor]:
    """prefix_matching, previous_token and direct_copying, each (layer, query head), from one
    batched forward (with `interventions` at their sites, if given)."""
    protocol = protocol or PrefixProtocol()
    tokens = repeated_token_batch(loaded, protocol).to(loaded.model.device)
    layers = range(loaded.n_layers)
    sites = [f"blocks.{i}.attn.{kind}" for i in layers for kind in ("pattern", "z")]
    hooks = SiteHooks(cache=sites, interventions=interventions)
    with probing(ProbeState(hooks)):
        loaded.model(input_ids=tokens)
    patterns = {i: hooks.cache[f"blocks.{i}.attn.pattern"] for i in layers}
    z = {i: hooks.cache[f"blocks.{i}.attn.z"] for i in layers}
    first = 1 + protocol.n_tokens  # queries in repeats 2-4 have an earlier occurrence
    prefix = torch.stack([prefix_matching_score(patterns[i].float(), tokens) for i in layers])
    previous = torch.stack([previous_token_score(patterns[i].float()) for i in layers])
    copying = direct_copying_scores(loaded, z, tokens, patterns, first)
    return {"prefix_matching": prefix, "previous_token": previous, "direct_copying": copying}


@torch.no_grad()
def checkpoint_head_scores(
    checkpoint: str, protocol: PrefixProtocol | None = None
) -> tuple[LoadedModel, dict[str, Tensor]]:
    """Prefix matching and previous-token scores for a checkpoint of the lab's own token models
    (`ihlab-train`): repeated random tokens from its vocabulary (as many distinct tokens as fit
    its context), BOS first when the model has one; beside them the weight-based `ov_copying`
    score of `ihlab.metrics.circuits`, as training runs log it."""
    protocol = protocol or PrefixProtocol()
    model = load_lab_model(checkpoint)
    cfg, io = model.cfg, model.io
    if io.d_vocab is None:
        raise ConfigError(
            f"model.source={checkpoint}: head scores need a token model (this one reads features)."
        )
    room = io.n_ctx - 1 if cfg.positional == Positional.learned else 10**6
    n_tokens = min(protocol.n_tokens, io.d_vocab - 1, room // protocol.n_repeats)
    g = generator(protocol.seed, "prefix_matching")
    bos = io.d_vocab - 1  # ihlab's BOS is the last id when the data has one
    rows = []
    for _ in range(protocol.n_sequences):
        tokens = torch.randperm(io.d_vocab - 1, generator=g)[:n_tokens]
        rows.append(torch.cat([torch.tensor([bos]), tokens.repeat(protocol.n_repeats)]))
    tokens = torch.stack(rows)[:, : io.n_ctx]
    names = [f"blocks.{layer}.attn.pattern" for layer in range(cfg.n_layers)]
    _, cache = model.run_with_cache({"tokens": tokens}, names)
    scores = {
        "prefix_matching": torch.stack([prefix_matching_score(cache[n], tokens) for n in names]),
        "previous_token": torch.stack([previous_token_score(cache[n]) for n in names]),
        "ov_copying": ov_copying_score(model),
    }
    name = Path(checkpoint).stem
    loaded = LoadedModel(None, None, name, cfg.n_layers, cfg.n_heads, cfg.n_heads)
    return loaded, scores
