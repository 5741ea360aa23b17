"""Label log-likelihoods of prompts under several conditions (full model, interventions) at once.

An option's log-likelihood sums its tokens' log-probabilities after the prompt. Where the time goes,
and what is done about it:
- One sequence per prompt and maximal option prefix: the prompt followed by an option's tokens but
  its last, read at its last positions. An option whose prefix is a prefix of another's shares that
  one's sequence, so SmolLM2's Foo/Bar/Mur/Res ("F|oo", "Bar", ...) need one sequence per prompt.
- Layers below a condition's first intervened layer compute what the clean model computes, so each
  batch runs the clean model once, keeping the residual stream at every condition's first layer,
  and each condition runs only the layers from there (`layers.py`). For the default selections
  (first induction head in layer 17 of 30) that is 17 + 13 per condition instead of 30.
- Every prompt starts with the same tokens (BOS and the instruction: 31 of SmolLM2's ~105), and
  causal attention makes their keys and values the same in every prompt, so each condition runs
  them once and every batch attends to them as a shared prefix (`attention.py`).
- Logits only at the read positions (`logits_to_keep`): the unembedding, the largest matrix, runs on
  a few positions per sequence.
Sequences are left-padded with explicit position ids and sorted by length, so padding changes
nothing and costs little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ihlab.clamps.context import ClampContext
from ihlab.clamps.engine import ClampSet
from ihlab.clamps.values.mean import SiteMeans
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.conditions import Condition
from ihlab.probe.layers import capturing, decoder_layers, starting_at
from ihlab.probe.models import LoadedModel
from ihlab.probe.prompts import Prompt
from ihlab.sites import SiteHooks

HeadMeans = dict[str, Tensor]  # blocks.{l}.attn.z -> every head's mean output, (1, 1, head, d_head)


@dataclass
class PromptSequence:
    """One sequence: a prompt's tokens and an option prefix, with what to read from it."""

    ids: list[int]
    keys: list[int]  # knockout keys (see `encode`)
    prompt: int
    reads: list[tuple[int, list[int]]]  # (option index, option token ids) read from this row
    branch: int  # tokens appended after the prompt


def encode(tokenizer: object, prompt: Prompt) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (BOS first, pieces tokenized one by one) and a knockout key per
    token: the token id, except at the last token of a category word, which gets its category's
    key (one negative key per category). The word's last token is where it is read as a whole, so
    a later word of the category is kept from attending to what followed an earlier one; giving
    every token of a word the category key would also make a word's second token "follow" its
    first and knock out attention inside the word."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids, keys = ([bos], [bos]) if bos is not None else ([], [])
    categories: dict[str, int] = {}
    for piece in prompt.pieces:
        piece_ids = tokenizer(piece.text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        keys += piece_ids
        if piece.key is not None and piece_ids:
            keys[-1] = -1 - categories.setdefault(piece.key, len(categories))
    return ids, keys


def option_ids(tokenizer: object, options: Sequence[str]) -> list[list[int]]:
    return [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]


def prompt_sequences(tokenizer: object, prompts: Sequence[Prompt]) -> list[PromptSequence]:
    """The sequences to run: per prompt, one per option prefix that no other prefix extends; each
    option is read from the first of them that starts with its prefix."""
    rows = []
    for p, prompt in enumerate(prompts):
        ids, keys = encode(tokenizer, prompt)
        options = option_ids(tokenizer, prompt.options)
        prefixes = {tuple(o[:-1]) for o in options}
        branches = [b for b in sorted(prefixes) if not any(_extends(o, b) for o in prefixes)]
        owner = [next(k for k, b in enumerate(branches) if _starts(b, o[:-1])) for o in options]
        for k, branch in enumerate(branches):
            reads = [(i, o) for i, o in enumerate(options) if owner[i] == k]
            rows.append(
                PromptSequence(ids + list(branch), keys + list(branch), p, reads, len(branch))
            )
    return rows


def _extends(longer: tuple[int, ...], prefix: tuple[int, ...]) -> bool:
    return len(longer) > len(prefix) and _starts(longer, prefix)


def _starts(sequence: Sequence[int], prefix: Sequence[int]) -> bool:
    return tuple(sequence[: len(prefix)]) == tuple(prefix)


@torch.no_grad()
def score_conditions(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    conditions: Sequence[Condition],
    means: HeadMeans | None = None,
    batch_size: int = 16,
    share_prefix: bool = True,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Log-likelihood of every option of every prompt, (prompt, option), per condition name
    (-inf for options a prompt does not have: prompts of 2- and 4-way tasks can share a call).

    Each batch runs the clean model once (it is the `full` condition). With `share_prefix`, every
    other condition reuses the clean residual stream below its first layer, and the tokens every
    prompt starts with (BOS and the instruction) are run once per condition, their keys and values
    then shared by every batch; without it, every condition runs every layer on every token (the
    reference path: the same numbers up to floating-point summation order)."""
    model, tok = loaded.model, loaded.tokenizer
    layers = decoder_layers(model)
    rows = sorted(prompt_sequences(tok, prompts), key=lambda r: len(r.ids))
    tail = 1 + max(r.branch for r in rows)  # logits kept at the end of every sequence
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    shape = (len(prompts), max(len(p.options) for p in prompts))
    result = {c.name: torch.full(shape, -torch.inf) for c in conditions}
    starts = {c.first_layer for c in conditions if share_prefix and c.mode != "full"} - {0}
    n_shared = common_prefix(rows, tail) if share_prefix else 0
    clamps = {c.name: c.clamp_set(loaded.n_layers, loaded.n_heads) for c in conditions}
    clean_kv = _prefix_kv(model, rows[0], n_shared, ClampSet([], loaded.n_layers), means)
    shared = {
        c.name: _prefix_kv(model, rows[0], n_shared, clamps[c.name], means)
        if clamps[c.name]
        else clean_kv
        for c in conditions
    }
    batches = range(0, len(rows), batch_size)
    for b in tqdm(batches, desc="scoring", disable=not progress, leave=False):
        chunk = rows[b : b + batch_size]
        inputs, keys = _pad(chunk, pad, n_shared, model.device)
        with capturing(layers, starts) as residuals:
            clean = _logp(model, inputs, tail, ProbeState(prefix_kv=clean_kv))
        for condition in conditions:
            scores = clean
            if condition.mode != "full":
                start = condition.first_layer
                skip = starting_at(layers, start, residuals[start]) if start in residuals else None
                hooks = condition_hooks(clamps[condition.name], keys, means)
                state = ProbeState(hooks, prefix_kv=shared[condition.name])
                with skip or contextlib.nullcontext():
                    scores = _logp(model, inputs, tail, state)
            _read(scores, chunk, tail, result[condition.name])
    return result


def common_prefix(rows: Sequence[PromptSequence], tail: int) -> int:
    """How many leading tokens (ids and knockout keys) every row shares, leaving each row at least
    the `tail` positions that are read."""
    first = rows[0]
    n = min(len(r.ids) for r in rows) - tail
    for row in rows:
        while n > 0 and (row.ids[:n] != first.ids[:n] or row.keys[:n] != first.keys[:n]):
            n -= 1
    return max(n, 0)


def _prefix_kv(
    model: torch.nn.Module,
    row: PromptSequence,
    n: int,
    clamps: ClampSet,
    means: HeadMeans | None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Every layer's keys and values of `row`'s first `n` tokens under `clamps` ({} if n=0)."""
    if n == 0:
        return {}
    keys = torch.tensor([row.keys[:n]], device=model.device)
    state = ProbeState(condition_hooks(clamps, keys, means), capture_kv=True)
    with probing(state):
        model(input_ids=torch.tensor([row.ids[:n]], device=model.device), use_cache=False)
    return state.kv


def _logp(
    model: torch.nn.Module, inputs: dict[str, Tensor], tail: int, state: ProbeState
) -> Tensor:
    """Log-probabilities at the last `tail` positions, (batch, tail, vocab), under `state`."""
    with probing(state):
        out = model(**inputs, logits_to_keep=tail, use_cache=False)
    return out.logits.float().log_softmax(dim=-1)


def _pad(
    chunk: Sequence[PromptSequence], pad: int, n_shared: int, device: torch.device
) -> tuple[dict[str, Tensor], Tensor]:
    """Model inputs of a batch without its first `n_shared` tokens, left-padded, positions after
    the shared ones; and the knockout keys of the whole sequences (padding never matches)."""
    n = max(len(r.ids) for r in chunk) - n_shared
    ids = torch.full((len(chunk), n), pad, dtype=torch.long)
    keys = -(10**6) - torch.arange(n_shared + n).repeat(len(chunk), 1)
    mask = torch.zeros(len(chunk), n, dtype=torch.long)
    for i, row in enumerate(chunk):
        own = len(row.ids) - n_shared
        ids[i, n - own :] = torch.tensor(row.ids[n_shared:])
        keys[i, :n_shared] = torch.tensor(row.keys[:n_shared])
        keys[i, n_shared + n - own :] = torch.tensor(row.keys[n_shared:])
        mask[i, n - own :] = 1
    positions = n_shared + (mask.cumsum(dim=1) - 1).clamp(min=0)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    return {k: v.to(device) for k, v in inputs.items()}, keys.to(device)


def _read(logp: Tensor, chunk: Sequence[PromptSequence], tail: int, into: Tensor) -> None:
    """Sum each option's token log-probabilities: the kept position `tail - 1 - branch` predicts
    an option's first token."""
    for i, row in enumerate(chunk):
        first = tail - 1 - row.branch
        for option, tokens in row.reads:
            steps = logp[i, first : first + len(tokens)]  # (len(option), vocab)
            index = torch.tensor(tokens, device=steps.device)[:, None]
            into[row.prompt, option] = float(steps.gather(1, index).sum())


@torch.no_grad()
def head_means(loaded: LoadedModel, prompts: Sequence[Prompt]) -> HeadMeans:
    """Every head's mean output z over all positions of `prompts` (the mean-ablation values),
    by site, (1, 1, head, d_head). One prompt per forward, so no padding enters the means."""
    sites = [f"blocks.{layer}.attn.z" for layer in range(loaded.n_layers)]
    sums: dict[str, Tensor] = {}
    count = 0
    for prompt in prompts:
        ids, _ = encode(loaded.tokenizer, prompt)
        hooks = SiteHooks(cache=sites)
        with probing(ProbeState(hooks)):
            loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device))
        for site in sites:
            sums[site] = sums.get(site, 0) + hooks.cache[site].sum(dim=(0, 1))  # (head, d_head)
        count += len(ids)
    return {site: (total / count)[None, None] for site, total in sums.items()}


def condition_hooks(clamps: ClampSet, keys: Tensor | None, means: HeadMeans | None) -> SiteHooks:
    """The hooks of one forward of a condition, from the lab's one hook assembly
    (`ClampSet.hooks`): `keys` (batch, key) are the knockout keys of the whole sequences (see
    `encode`), `means` the heads' reference means (the probe's mean ablation)."""
    reference = SiteMeans(means) if means is not None else None
    inputs = {} if keys is None else {"knockout_keys": keys}
    ctx = ClampContext(inputs, None, 0, reference)
    return clamps.hooks(ctx) or SiteHooks()
