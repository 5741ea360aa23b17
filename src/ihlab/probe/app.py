"""`ihlab-probe`: find a pretrained model's induction heads, ablate them or knock out their pattern,
and measure in-context learning on pattern tasks (Crosbie & Shutova).

    ihlab-probe                                          # SmolLM2-135M-Instruct, offline, CPU
    ihlab-probe model.source=meta-llama/Meta-Llama-3-8B model.device=cuda model.dtype=bfloat16

Writes `heads.csv` and `heads.png` (every head's prefix-matching, previous-token and copying
scores), `results.csv` / `results.md` (task x shots rows; full, IH-ablated, IH-knockout and random
columns per selection size), `results.png` and `summary.json` to the run directory.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from ihlab.clamps import ClampConfig, ValueKind
from ihlab.errors import ConfigError
from ihlab.probe.evaluate import Condition, head_means, score_prompts
from ihlab.probe.heads import SCORES, PrefixProtocol, head_scores, lab_head_scores
from ihlab.probe.interventions import Ablation, Head, parse_heads, random_heads, top_heads
from ihlab.probe.models import DEFAULT_MODEL, LoadedModel, load_model
from ihlab.probe.tasks import TASKS, load_hf_rows, make_prompts, read_nlp_rows
from ihlab.sites import parse_site
from ihlab.train import config_dir

log = logging.getLogger("ihlab.probe")


@dataclass
class ModelSource:
    # smollm2 | a hub id | a local folder | a .gguf file | an ihlab-train .ckpt (head scores only)
    source: str = DEFAULT_MODEL
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    device: str = "cpu"  # cpu | cuda | auto (accelerate's device map)


@dataclass
class SelectConfig:
    percents: list[float] = field(default_factory=lambda: [1.0, 3.0])  # top p% by prefix matching
    heads: list[str] = field(default_factory=list)  # or explicit heads, e.g. [L18H6, L17H3]
    ablation: Ablation = Ablation.zero  # zero | mean (over reference prompts)
    random_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class TaskConfig:
    names: list[str] = field(
        default_factory=lambda: [
            "repetition",
            "recursion",
            "centre_embedding",
            "wordseq1",
            "wordseq1_4way",
        ]
    )
    shots: list[int] = field(default_factory=lambda: [10])  # binary tasks (the paper's table)
    shots_4way: list[int] = field(default_factory=lambda: [20])
    n_prompts: int = 32  # per task, shot count and seed
    seeds: list[int] = field(default_factory=lambda: [0])  # prompt sets, averaged
    nlp_path: str | None = None  # JSONL/CSV with text,label for task "nlp"
    nlp_dataset: str | None = None  # or a Hugging Face dataset, e.g. stanfordnlp/sst2
    nlp_split: str = "validation"
    nlp_fields: list[str] = field(default_factory=lambda: ["sentence", "label"])  # text, label


@dataclass
class ProbeConfig:
    model: ModelSource = field(default_factory=ModelSource)
    prefix: PrefixProtocol = field(default_factory=PrefixProtocol)
    select: SelectConfig = field(default_factory=SelectConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    # Extra result columns as clamp specs in the lab's site vocabulary (clamps.py), e.g.
    # {site: blocks.18.attn.z, heads: [6], value: zero} or {site: blocks.18.attn.scores,
    # heads: [6], value: knockout}.
    interventions: dict[str, ClampConfig] = field(default_factory=dict)
    batch_size: int = 16
    progress: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.tasks.names:
            if name not in TASKS:
                raise ConfigError(f"tasks.names: unknown task {name!r}. Fix: choose from {TASKS}.")
        if "nlp" in self.tasks.names and not (self.tasks.nlp_path or self.tasks.nlp_dataset):
            raise ConfigError(
                "tasks.names has nlp but neither tasks.nlp_path nor tasks.nlp_dataset is set. "
                "Fix: give a JSONL/CSV file or a Hugging Face dataset name."
            )
        if self.tasks.nlp_path and not Path(self.tasks.nlp_path).exists():
            raise ConfigError(f"tasks.nlp_path={self.tasks.nlp_path} does not exist.")
        if not self.select.percents and not self.select.heads and not self.interventions:
            raise ConfigError("select: give percents or heads (or interventions).")
        for name, spec in self.interventions.items():
            intervention_condition(name, spec)  # raises ConfigError naming the key


def write_heads(out: Path, scores: dict[str, torch.Tensor], loaded: LoadedModel) -> None:
    """heads.csv (layer, head, kv_head, scores) and heads.png (one heatmap per score)."""
    group = loaded.n_heads // loaded.n_kv_heads
    with (out / "heads.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", "kv_head", *SCORES])
        for layer in range(loaded.n_layers):
            for head in range(loaded.n_heads):
                values = [f"{float(scores[s][layer, head]):.6f}" for s in SCORES]
                writer.writerow([layer, head, head // group, *values])
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 0.18 * loaded.n_layers + 2))
    for ax, name in zip(axes, SCORES, strict=True):
        low = -1 if name == "copying" else 0
        image = ax.imshow(scores[name].cpu().numpy(), vmin=low, vmax=1, aspect="auto")
        ax.set(title=name, xlabel="query head", ylabel="layer")
        fig.colorbar(image, ax=ax)
    fig.suptitle(loaded.name)
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=110)
    plt.close(fig)


ABLATION_VALUES = {ValueKind.zero: Ablation.zero, ValueKind.mean: Ablation.mean}


def intervention_condition(name: str, spec: ClampConfig) -> Condition:
    """A result column from a clamp spec: zero/mean at `blocks.{l}.attn.z`, or knockout at
    `blocks.{l}.attn.scores` (or `.pattern`), on the listed heads."""
    layer, kind = parse_site(spec.site)
    value = ValueKind(spec.value)
    key = f"interventions.{name}"
    if layer is None or not spec.heads:
        raise ConfigError(f"{key}: give a per-layer site blocks.<l>.attn.* and its heads.")
    if kind == "attn.z" and value in ABLATION_VALUES:
        return Condition(name, "ablate", [(layer, h) for h in spec.heads], ABLATION_VALUES[value])
    if kind in ("attn.scores", "attn.pattern") and value == ValueKind.knockout:
        return Condition(name, "knockout", [(layer, h) for h in spec.heads])
    raise ConfigError(
        f"{key}: the probe supports value zero or mean at attn.z and value knockout at "
        f"attn.scores, got value {value.value} at {spec.site}."
    )


def conditions(
    cfg: ProbeConfig, prefix: torch.Tensor, n_layers: int, n_heads: int
) -> list[tuple[str, list[Condition]]]:
    """Result columns: `full`, then per selection its IH ablation, IH knockout and random control
    (a list: one condition per random seed, averaged)."""
    columns: list[tuple[str, list[Condition]]] = [("full", [Condition("full")])]
    selections: list[tuple[str, list[Head]]] = []
    if cfg.select.heads:
        selections.append(("selected", parse_heads(cfg.select.heads, n_layers, n_heads)))
    selections += [(f"{p:g}%", top_heads(prefix, p)) for p in cfg.select.percents]
    for label, heads in selections:
        columns.append(
            (
                f"{label} IH ablated",
                [Condition(f"{label} ablated", "ablate", heads, cfg.select.ablation)],
            )
        )
        columns.append(
            (f"{label} IH knockout", [Condition(f"{label} knockout", "knockout", heads)])
        )
        randoms = [
            Condition(
                f"{label} random s{s}",
                "ablate",
                random_heads(heads, n_heads, s),
                cfg.select.ablation,
            )
            for s in cfg.select.random_seeds
        ]
        columns.append((f"{label} random", randoms))
    for name, spec in cfg.interventions.items():
        condition = intervention_condition(name, spec)
        for layer, head in condition.heads:
            if not (layer < n_layers and head < n_heads):
                raise ConfigError(f"interventions.{name}: head L{layer}H{head} does not exist.")
        columns.append((name, [condition]))
    return columns


def run_probe(cfg: ProbeConfig, out: Path) -> dict[str, Any]:
    """The whole probe into `out`; returns the summary."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.model.source.endswith(".ckpt"):  # the lab's own model: head scores only
        loaded, scores = lab_head_scores(cfg.model.source, cfg.prefix)
        write_heads(out, scores, loaded)
        summary = {"model": loaded.name, "n_layers": loaded.n_layers, "n_heads": loaded.n_heads}
        summary["max_prefix_matching"] = float(scores["prefix_matching"].max())
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    loaded = load_model(cfg.model.source, cfg.model.dtype, cfg.model.device)
    log.info(
        "loaded %s: %d layers x %d heads (%d KV)",
        loaded.name,
        loaded.n_layers,
        loaded.n_heads,
        loaded.n_kv_heads,
    )
    scores = head_scores(loaded, cfg.prefix)
    write_heads(out, scores, loaded)
    columns = conditions(cfg, scores["prefix_matching"], loaded.n_layers, loaded.n_heads)
    t = cfg.tasks
    nlp_rows = read_nlp_rows(t.nlp_path) if t.nlp_path else None
    if t.nlp_dataset:
        nlp_rows = load_hf_rows(t.nlp_dataset, t.nlp_split, *t.nlp_fields)
    plan = [
        (task, shots)
        for task in cfg.tasks.names
        for shots in (cfg.tasks.shots_4way if task.endswith("4way") else cfg.tasks.shots)
    ]
    prompt_sets = {
        (task, shots, seed): make_prompts(task, shots, cfg.tasks.n_prompts, seed, nlp_rows)
        for task, shots in plan
        for seed in cfg.tasks.seeds
    }
    means = None
    if cfg.select.ablation == Ablation.mean:
        reference = [p for ps in prompt_sets.values() for p in ps[:4]]
        means = head_means(loaded, reference)
    rows = []
    for task, shots in plan:
        row: dict[str, Any] = {"task": task, "shots": shots}
        for column, conds in columns:
            accuracies = [
                float(
                    np.mean(
                        score_prompts(
                            loaded,
                            prompt_sets[task, shots, seed],
                            cond,
                            means,
                            cfg.batch_size,
                            cfg.progress,
                        )
                    )
                )
                for cond in conds
                for seed in cfg.tasks.seeds
            ]
            row[column] = 100 * float(np.mean(accuracies))
        rows.append(row)
        log.info(
            "%s %d-shot: %s",
            task,
            shots,
            {k: round(v, 1) for k, v in row.items() if k not in ("task", "shots")},
        )
    names = [c for c, _ in columns]
    write_results(out, rows, names, loaded.name)
    summary = {
        "model": loaded.name,
        "n_layers": loaded.n_layers,
        "n_heads": loaded.n_heads,
        "n_kv_heads": loaded.n_kv_heads,
        "heads": {
            col: [f"L{layer}H{head}" for layer, head in conds[0].heads]
            for col, conds in columns
            if col.endswith("ablated")
        },
        "share_prefix_matching_ge_0.3": float((scores["prefix_matching"] >= 0.3).float().mean()),
        "max_prefix_matching": float(scores["prefix_matching"].max()),
        "mean_accuracy": {c: float(np.mean([r[c] for r in rows])) for c in names},
        "wall_time_s": time.perf_counter() - started,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_results(out: Path, rows: list[dict[str, Any]], columns: list[str], model: str) -> None:
    """results.csv, results.md (the paper's table shape) and results.png (grouped bars)."""
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "shots", *columns])
        writer.writeheader()
        writer.writerows(
            {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        )
    lines = [
        f"# In-context learning with induction heads intervened on: {model}",
        "",
        "Accuracy (%), argmax of label log-likelihood; random: mean over seeds.",
        "",
        "| task | shots | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['shots']} | " + " | ".join(f"{r[c]:.1f}" for c in columns) + " |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) * len(columns) / 3), 3.6))
    width = 0.8 / len(columns)
    x = np.arange(len(rows))
    for i, column in enumerate(columns):
        ax.bar(x + i * width, [r[column] for r in rows], width, label=column)
    ax.set_xticks(
        x + 0.4 - width / 2, [f"{r['task']}\n{r['shots']}-shot" for r in rows], fontsize=8
    )
    ax.axhline(50, color="gray", linestyle=":", linewidth=1)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title=model)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def register_probe_config() -> None:
    ConfigStore.instance().store(name="probe_schema", node=ProbeConfig)


register_probe_config()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="probe")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        config = OmegaConf.to_object(cfg)
    except (ConfigError, ValidationError) as err:
        raise SystemExit(f"ihlab-probe: config error: {err}") from None
    return run_probe(config, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
