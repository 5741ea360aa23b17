"""Tiny randomly initialized Hugging Face models of every architecture the probe supports."""

from __future__ import annotations

import torch
import transformers

from ihlab.probe.attention import NAME, register
from ihlab.probe.heads import PrefixProtocol
from ihlab.probe.models import LoadedModel, wrap

VOCAB = 300


class TinyTokenizer:
    """What the probe needs from a tokenizer, for models with random weights."""

    bos_token_id, eos_token_id = 0, 1
    all_special_ids = (0, 1)

    def __len__(self) -> int:
        return VOCAB


class CharTokenizer(TinyTokenizer):
    """Characters as tokens (ids 2-291), for scoring prompts on tiny models."""

    pad_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [2 + ord(c) % 290 for c in text]}


def tiny(arch: str) -> LoadedModel:
    """A 2-layer random model of `arch`; Llama and Qwen2 with grouped-query attention."""
    register()
    common = {"vocab_size": VOCAB, "num_hidden_layers": 2, "num_attention_heads": 4}
    configs = {
        "llama": transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common
        ),
        "qwen2": transformers.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common
        ),
        "gpt2": transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256
        ),
        "gpt_neox": transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, **common),
    }
    torch.manual_seed(0)
    config = configs[arch]
    config._attn_implementation = NAME
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=NAME)
    return wrap(model, TinyTokenizer(), arch)


ARCHS = ["llama", "qwen2", "gpt2", "gpt_neox"]
PROTOCOL = PrefixProtocol(n_tokens=10, n_repeats=4, n_sequences=3)
