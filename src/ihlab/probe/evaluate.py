"""Score prompts by the argmax of label log-likelihood, batched, under an intervention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.interventions import Ablation, Head, ablation_state, knockout_mask, knockout_state
from ihlab.probe.models import LoadedModel
from ihlab.probe.tasks import Prompt


@dataclass
class Condition:
    """A column of the results table: `full` (no intervention), `ablate` or `knockout` of heads."""

    name: str
    mode: str = "full"  # full | ablate | knockout
    heads: list[Head] = field(default_factory=list)
    ablation: Ablation = Ablation.zero


def encode(tokenizer: object, prompt: Prompt) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (BOS first, pieces tokenized one by one) and a knockout key per
    token: the token id, or one shared negative key per category for category-word pieces."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids, keys = ([bos], [bos]) if bos is not None else ([], [])
    categories: dict[str, int] = {}
    for piece in prompt.pieces:
        piece_ids = tokenizer(piece.text, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        if piece.key is None:
            keys += piece_ids
        else:
            keys += [-1 - categories.setdefault(piece.key, len(categories))] * len(piece_ids)
    return ids, keys


def option_ids(tokenizer: object, options: Sequence[str]) -> list[list[int]]:
    return [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]


@torch.no_grad()
def score_prompts(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    condition: Condition,
    means: dict[int, Tensor] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[bool]:
    """Whether the model's most likely option is the correct one, per prompt.

    An option's log-likelihood sums its tokens' log-probabilities after the prompt. One sequence
    per prompt and distinct option prefix: the prompt followed by an option's tokens but its last
    (for Foo/Bar/Mur/Res in SmolLM2's tokenizer, "F" of "F|oo": one forward per prompt), read at
    its last positions only. Sequences are left-padded with explicit position ids and sorted by
    length, so padding changes nothing and costs little.
    """
    tok, device = loaded.tokenizer, loaded.model.device
    rows: list[tuple[list[int], list[int], int, tuple[int, ...]]] = []  # ids, keys, prompt, prefix
    for p, prompt in enumerate(prompts):
        ids, keys = encode(tok, prompt)
        prefixes = {tuple(o[:-1]) for o in option_ids(tok, prompt.options)} or {()}
        for prefix in sorted(prefixes):
            rows.append((ids + list(prefix), keys + list(prefix), p, prefix))
    rows.sort(key=lambda r: len(r[0]))
    tail = 1 + max(len(r[3]) for r in rows)  # logits kept at the end of every sequence
    logp_tail: dict[tuple[int, tuple[int, ...]], Tensor] = {}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = range(0, len(rows), batch_size)
    for b in tqdm(batches, desc=condition.name, disable=not progress, leave=False):
        chunk = rows[b : b + batch_size]
        n = max(len(r[0]) for r in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        keys = -(10**6) - torch.arange(n).repeat(len(chunk), 1)  # padding never matches
        mask = torch.zeros(len(chunk), n, dtype=torch.long)
        for i, (seq, key, _, _) in enumerate(chunk):
            ids[i, n - len(seq) :] = torch.tensor(seq)
            keys[i, n - len(seq) :] = torch.tensor(key)
            mask[i, n - len(seq) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with probing(_state(condition, keys, means)):
            out = loaded.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=tail,
            )
        logp = out.logits.float().log_softmax(dim=-1).cpu()  # (batch, tail, vocab)
        for i, (_, _, p, prefix) in enumerate(chunk):
            logp_tail[p, prefix] = logp[i]
    correct = []
    for p, prompt in enumerate(prompts):
        scores = []
        for option in option_ids(tok, prompt.options):
            prefix = tuple(option[:-1])
            row = prefix if (p, prefix) in logp_tail else _any(logp_tail, p)  # single-token
            rows_logp = logp_tail[p, row]
            first = tail - 1 - len(row)  # the kept position that predicts the option's start
            steps = rows_logp[first : first + len(option)]  # (len(option), vocab)
            scores.append(float(steps.gather(1, torch.tensor(option)[:, None]).sum()))
        correct.append(max(range(len(scores)), key=scores.__getitem__) == prompt.label)
    return correct


def _any(logp_tail: dict[tuple[int, tuple[int, ...]], Tensor], p: int) -> tuple[int, ...]:
    return next(prefix for (q, prefix) in logp_tail if q == p)


def _state(condition: Condition, keys: Tensor, means: dict[int, Tensor] | None) -> ProbeState:
    if condition.mode == "ablate":
        return ablation_state(condition.heads, condition.ablation, means)
    if condition.mode == "knockout":
        return knockout_state(condition.heads, knockout_mask(keys))
    return ProbeState()


@torch.no_grad()
def head_means(loaded: LoadedModel, prompts: Sequence[Prompt]) -> dict[int, Tensor]:
    """Every head's mean output z over all positions of `prompts` (the mean-ablation values):
    layer -> (head, d_head). One prompt per forward, so no padding enters the means."""
    state = ProbeState(z_sums={})
    with probing(state):
        for prompt in prompts:
            ids, _ = encode(loaded.tokenizer, prompt)
            loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device))
    return {layer: total / state.z_count for layer, total in state.z_sums.items()}
