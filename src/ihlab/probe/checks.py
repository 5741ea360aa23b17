"""Everything `ihlab-probe` reads besides the weights, read and checked before the weights are.

The model's shape comes from its config alone (config.json or GGUF metadata, seconds even for an
8B model), so head names are checked against it; NLP rows are read and checked, and every prompt
set is built. A bad value fails here with a ConfigError naming the key and the fix, before the
model is loaded and before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ihlab.data.text.corpus import Document
from ihlab.probe.columns import check_heads_exist
from ihlab.probe.config import ProbeConfig
from ihlab.probe.models import model_config, model_shape
from ihlab.probe.prompts import Prompt, load_hf_rows, make_prompts, read_nlp_rows
from ihlab.probe.text_icl import text_documents

PromptSets = dict[tuple[str, int, int], list[Prompt]]  # (task, shots, seed) -> prompts


@dataclass
class Inputs:
    """What the probe needs besides the weights: the model's config, the prompt sets and the
    documents of the text ICL score (none when `text.windows` is 0)."""

    config: Any
    prompt_sets: PromptSets
    text: list[Document]


def plan(cfg: ProbeConfig) -> list[tuple[str, int]]:
    """The (task, shots) rows of the results table."""
    t = cfg.tasks
    return [(task, s) for task in t.names for s in (t.shots_4way if "4way" in task else t.shots)]


def read_inputs(cfg: ProbeConfig) -> Inputs:
    """The model's config (heads checked against its shape) and every prompt set."""
    config = model_config(cfg.model.source)
    n_layers, n_heads, _ = model_shape(config)
    check_heads_exist(cfg, n_layers, n_heads)
    t = cfg.tasks
    rows = None
    if "nlp" in t.names:
        rows = (
            read_nlp_rows(t.nlp_path)
            if t.nlp_path
            else load_hf_rows(t.nlp_dataset, t.nlp_split, *t.nlp_fields)
        )
    prompt_sets = {
        (task, shots, seed): make_prompts(task, shots, t.n_prompts, seed, rows)
        for task, shots in plan(cfg)
        for seed in t.seeds
    }
    text = text_documents(cfg.text) if cfg.text.windows else []
    return Inputs(config, prompt_sets, text)
