"""Olsson et al.'s in-context learning score of a pretrained model on natural text, intact and
under the probe's conditions (Arguments 3 and 6 at the scale of a real language model).

The score is the mean loss at context index `late` (500) minus the mean loss at index `early` (50),
each averaged over the targets within `band` of the index (the lab's text runs do the same: one
position of a few dozen windows is too noisy to read), over fixed windows of held-out text: by
default the validation books of the lab's default corpus (`ihlab.data.text.corpus`: the
translations no `ihlab-train` text run trains on, though a pretrained model may have read any of
them), or the user's files. Windows are `context` tokens of the model's own tokenizer, spread
evenly over the text (documents joined by the tokenizer's end-of-text token); the model reads
its BOS token first where it has one, so context index t is the t-th text token after it.

Every window gets each condition's score, so conditions are compared per window: a mean with a
95% t interval over windows, and paired tests (Wilcoxon's signed rank) against the full model and
against the random-head control (whose per-window score is the mean over its head draws).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ihlab.data.text.corpus import Document, bible_documents, file_documents
from ihlab.data.text.family import DEFAULT_TRANSLATIONS
from ihlab.errors import ConfigError
from ihlab.probe.attention import ProbeState, probing
from ihlab.probe.columns import Column
from ihlab.probe.conditions import Condition
from ihlab.probe.config import TextICLConfig
from ihlab.probe.evaluate import HeadMeans, condition_hooks
from ihlab.probe.layers import capturing, decoder_layers, starting_at
from ihlab.probe.models import LoadedModel
from ihlab.stats.paired import signed_rank, t_interval


def text_documents(cfg: TextICLConfig) -> list[Document]:
    """The text to score: the user's files (every document), or the default corpus's
    validation books in every default translation."""
    if cfg.paths:
        return file_documents(cfg.paths, cfg.text_field, 0.0, key="text")
    return [d for d in bible_documents(list(DEFAULT_TRANSLATIONS)) if d.validation]


def text_windows(tokenizer: object, documents: Sequence[Document], cfg: TextICLConfig) -> Tensor:
    """(windows, context) token ids: `cfg.windows` windows spread evenly over the documents'
    tokens, the documents joined by the end-of-text token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for document in documents:
        stream += tokenizer(document.text, add_special_tokens=False)["input_ids"]
        stream += [eos] if eos is not None else []
    if len(stream) < cfg.context:
        raise ConfigError(
            f"text.paths: the text has {len(stream)} tokens, fewer than one window "
            f"(text.context={cfg.context}). Fix: give more text or a shorter text.context."
        )
    tokens = torch.tensor(stream)
    starts = torch.linspace(0, len(stream) - cfg.context, cfg.windows).long()
    return torch.stack([tokens[s : s + cfg.context] for s in starts.tolist()])


def band_targets(cfg: TextICLConfig) -> tuple[Tensor, Tensor]:
    """Context indices of the early and the late band."""
    early = torch.arange(cfg.early - cfg.band, cfg.early + cfg.band + 1)
    late = torch.arange(cfg.late - cfg.band, cfg.late + cfg.band + 1)
    return early, late


@torch.no_grad()
def band_losses(
    loaded: LoadedModel,
    windows: Tensor,
    conditions: Sequence[Condition],
    cfg: TextICLConfig,
    means: HeadMeans | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Per condition, (window, 2): each window's mean loss over the early and the late band.

    The clean model runs once per batch, keeping the residual stream at each condition's first
    intervened layer, and each condition runs from there (`layers.py`); logits are computed at
    the band positions only."""
    model, device = loaded.model, loaded.model.device
    layers = decoder_layers(model)
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    prefix = [bos] if bos is not None else []
    early, late = band_targets(cfg)
    if not prefix and int(early[0]) == 0:
        raise ConfigError(
            "text.early - text.band = 0, but this model has no BOS token: the first text token "
            "has nothing before it to be predicted from. Fix: raise text.early."
        )
    targets = torch.cat([early, late])  # context indices, (2 * band_width,)
    keep = (targets + len(prefix) - 1).to(device)  # positions whose logits predict them
    clamps = {c.name: c.clamp_set(loaded.n_layers, loaded.n_heads) for c in conditions}
    starts = {c.first_layer for c in conditions if c.mode != "full"} - {0}
    result: dict[str, list[Tensor]] = {c.name: [] for c in conditions}
    batches = range(0, len(windows), cfg.batch_size)
    for b in tqdm(batches, desc="text ICL", disable=not progress, leave=False):
        chunk = windows[b : b + cfg.batch_size]
        ids = torch.cat([torch.tensor(prefix).expand(len(chunk), -1).long(), chunk], dim=1)
        ids = ids[:, : len(prefix) + int(targets.max())].to(device)  # no logit past the last
        answers = chunk[:, targets].to(device)  # (batch, targets)
        with capturing(layers, starts) as residuals:
            clean = _losses(model, ids, keep, answers, ProbeState())
        for condition in conditions:
            losses = clean
            if condition.mode != "full":
                start = condition.first_layer
                skip = starting_at(layers, start, residuals[start]) if start in residuals else None
                state = ProbeState(condition_hooks(clamps[condition.name], ids, means))
                with skip or contextlib.nullcontext():
                    losses = _losses(model, ids, keep, answers, state)
            n = len(early)
            result[condition.name].append(
                torch.stack([losses[:, :n].mean(dim=1), losses[:, n:].mean(dim=1)], dim=1)
            )
    return {name: torch.cat(parts).double().cpu() for name, parts in result.items()}


def _losses(
    model: torch.nn.Module, ids: Tensor, keep: Tensor, answers: Tensor, state: ProbeState
) -> Tensor:
    """Cross-entropy of `answers` (batch, targets) from the logits at positions `keep`."""
    with probing(state):
        logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
    logp = logits.float().log_softmax(dim=-1)  # (batch, targets, vocab)
    return -logp.gather(-1, answers[..., None])[..., 0]


@dataclass
class TextICLCell:
    """One column's ICL score over the windows (nats), and its change from the full model."""

    column: str
    n: int
    icl: float
    icl_ci: float  # 95% half-width (t over windows)
    loss_early: float
    loss_late: float
    change: float | None = None  # minus the full model's, per window
    change_ci: float | None = None
    p_vs_full: float | None = None  # Wilcoxon signed rank over windows
    p_vs_random: float | None = None
    share_removed: float | None = None  # how much of the full model's score is gone (1: all)


def text_icl_cells(columns: Sequence[Column], losses: dict[str, Tensor]) -> list[TextICLCell]:
    """A cell per column from `band_losses`; a random control averages its head draws per
    window."""

    def column_losses(column: Column) -> Tensor:  # (window, 2)
        return torch.stack([losses[c.name] for c in column.conditions]).mean(dim=0)

    per_window = {c.name: column_losses(c) for c in columns}
    scores = {name: x[:, 1] - x[:, 0] for name, x in per_window.items()}
    full = scores["full"]
    cells = []
    for column in columns:
        score, x = scores[column.name], per_window[column.name]
        icl, icl_ci = t_interval(score)
        cell = TextICLCell(column.name, len(score), icl, icl_ci, *x.mean(dim=0).tolist())
        if column.name != "full":
            cell.change, cell.change_ci = t_interval(score - full)
            cell.p_vs_full = signed_rank(score, full)
            cell.share_removed = -cell.change / float(full.mean())
        if column.control is not None:
            cell.p_vs_random = signed_rank(score, scores[column.control])
        cells.append(cell)
    return cells


def write_text_icl(out: Path, cells: Sequence[TextICLCell]) -> None:
    """`text_icl.csv`: one line per column."""
    with (out / "text_icl.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, [field.name for field in fields(TextICLCell)])
        writer.writeheader()
        writer.writerows(asdict(c) for c in cells)


def text_icl_markdown(cells: Sequence[TextICLCell], cfg: TextICLConfig, model: str) -> str:
    """The table of `results.md`'s text section."""
    lines = [
        f"ICL score of {model} on text: loss at context index {cfg.late} minus index "
        f"{cfg.early} (each averaged over +-{cfg.band} targets), {cells[0].n} windows of "
        f"{cfg.context} tokens. Share removed: the change as a share of the full model's score "
        "(100%: none left).",
        "",
        "| condition | ICL score (nats) [95% CI] | loss early / late | change from full | "
        "share removed | p vs full | p vs random |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        change = "" if c.change is None else f"{c.change:+.3f} ± {c.change_ci:.3f}"
        share = "" if c.share_removed is None else f"{100 * c.share_removed:.0f}%"
        lines.append(
            f"| {c.column} | {c.icl:+.3f} [{c.icl - c.icl_ci:+.3f}, {c.icl + c.icl_ci:+.3f}] | "
            f"{c.loss_early:.3f} / {c.loss_late:.3f} | {change} | {share} | "
            f"{_p(c.p_vs_full)} | {_p(c.p_vs_random)} |"
        )
    return "\n".join(lines) + "\n"


def _p(p: float | None) -> str:
    return "" if p is None else f"{p:.2g}"
