"""`ihlab-probe`'s run: find a pretrained model's induction heads, ablate them or knock out their
pattern, and measure in-context learning on pattern tasks (Crosbie & Shutova).

    ihlab-probe                                          # SmolLM2-135M-Instruct, offline, CPU
    ihlab-probe model.source=meta-llama/Meta-Llama-3-8B model.device=cuda model.dtype=bfloat16

Every input is checked before the model is loaded (`checks.py`). Writes `heads.csv` and
`heads.png` (every head's prefix-matching, previous-token and copying scores), `results.csv` /
`results.md` (task x shots rows; full, IH-ablated, IH-knockout and random columns per selection
size, with intervals, margin changes and paired tests), `results.png`, `predictions.csv` and
`summary.json` to the run directory.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ihlab.errors import ConfigError
from ihlab.probe.checks import plan, read_inputs
from ihlab.probe.columns import columns
from ihlab.probe.conditions import Ablation
from ihlab.probe.config import ProbeConfig
from ihlab.probe.evaluate import head_means, score_conditions
from ihlab.probe.heads import checkpoint_head_scores, pretrained_head_scores
from ihlab.probe.models import load_model
from ihlab.probe.report import (
    plot_results,
    results_markdown,
    write_heads,
    write_predictions,
    write_results_csv,
)
from ihlab.probe.results import make_row
from ihlab.probe.text_icl import (
    band_losses,
    text_icl_cells,
    text_icl_markdown,
    text_windows,
    write_text_icl,
)
from ihlab.runs.checkpoints import CheckpointError
from ihlab.sites import head_name

log = logging.getLogger("ihlab.probe")


def run_probe(cfg: ProbeConfig, out: Path) -> dict[str, Any]:
    """The whole probe into `out`; returns the summary. Bad inputs raise a ConfigError before the
    model is loaded and before anything is written."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.model.source.endswith(".ckpt"):  # the lab's own model: head scores only
        try:
            loaded, scores = checkpoint_head_scores(cfg.model.source, cfg.prefix)
        except CheckpointError as err:  # missing, corrupt, unsafe or not ihlab-train's
            raise ConfigError(f"model.source: {err}") from None
        out.mkdir(parents=True, exist_ok=True)
        write_heads(out, scores, loaded)
        summary = {"model": loaded.name, "n_layers": loaded.n_layers, "n_heads": loaded.n_heads}
        summary["max_prefix_matching"] = float(scores["prefix_matching"].max())
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    inputs = read_inputs(cfg)
    loaded = load_model(cfg.model.source, cfg.model.dtype, cfg.model.device, inputs.config)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    log.info(
        "loaded %s in %s: %d layers x %d heads (%d KV)",
        loaded.name,
        dtype,
        loaded.n_layers,
        loaded.n_heads,
        loaded.n_kv_heads,
    )
    windows = text_windows(loaded.tokenizer, inputs.text, cfg.text) if inputs.text else None
    loaded_at = time.perf_counter()
    scores = pretrained_head_scores(loaded, cfg.prefix)
    out.mkdir(parents=True, exist_ok=True)
    write_heads(out, scores, loaded)
    cols = columns(cfg, scores["prefix_matching"])
    conditions = [cond for column in cols for cond in column.conditions]
    means = None
    if cfg.select.ablation == Ablation.mean:
        reference = [p for ps in inputs.prompt_sets.values() for p in ps[:4]]
        means = head_means(loaded, reference)
    prompts = [p for ps in inputs.prompt_sets.values() for p in ps]
    logliks = score_conditions(
        loaded, prompts, conditions, means, cfg.batch_size, cfg.share_prefix, cfg.progress
    )
    offsets, start = {}, 0
    for key, prompt_set in inputs.prompt_sets.items():
        offsets[key], start = range(start, start + len(prompt_set)), start + len(prompt_set)
    rows = []
    for task, shots in plan(cfg):
        index = [i for seed in cfg.tasks.seeds for i in offsets[task, shots, seed]]
        labels = torch.tensor([prompts[i].label for i in index])
        row_logliks = {name: x[index] for name, x in logliks.items()}
        row = make_row(task, shots, cols, row_logliks, labels)
        rows.append(row)
        log.info(
            "%s %d-shot: %s",
            task,
            shots,
            {name: round(cell.accuracy, 1) for name, cell in row.cells.items()},
        )
    write_results_csv(out, rows)
    markdown = results_markdown(rows, loaded.name)
    text_cells = []
    if windows is not None:
        losses = band_losses(loaded, windows, conditions, cfg.text, means, cfg.progress)
        text_cells = text_icl_cells(cols, losses)
        write_text_icl(out, text_cells)
        markdown += "\n" + text_icl_markdown(text_cells, cfg.text, loaded.name)
        log.info("text ICL score: %s", {c.column: round(c.icl, 3) for c in text_cells})
    (out / "results.md").write_text(markdown)
    plot_results(out, rows, loaded.name)
    write_predictions(out, rows, {c.name: [cond.name for cond in c.conditions] for c in cols})
    names = [c.name for c in cols]
    summary = {
        "model": loaded.name,
        "dtype": dtype,
        "n_layers": loaded.n_layers,
        "n_heads": loaded.n_heads,
        "n_kv_heads": loaded.n_kv_heads,
        "heads": {
            c.name: [head_name(layer, head) for layer, head in c.conditions[0].heads]
            for c in cols
            if c.name.endswith("ablated")
        },
        "share_prefix_matching_ge_0.3": float((scores["prefix_matching"] >= 0.3).float().mean()),
        "max_prefix_matching": float(scores["prefix_matching"].max()),
        "prompts_per_row": rows[0].cells["full"].n,
        "mean_accuracy": {n: sum(r.cells[n].accuracy for r in rows) / len(rows) for n in names},
        "text_icl": {c.column: asdict(c) for c in text_cells},
        "load_time_s": loaded_at - started,
        "wall_time_s": time.perf_counter() - started,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
