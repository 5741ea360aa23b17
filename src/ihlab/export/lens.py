"""The lab's token models as TransformerLens `HookedTransformer`s, exact to float precision.

What maps (`lens_config`, `lens_state_dict`):
- widths, layers, heads, context, vocabulary in and out; attention-only or with GELU MLPs;
- pre-LayerNorm blocks and the final LayerNorm (`normalization_type="LN"`, eps 1e-5 as
  `nn.LayerNorm`), or no norms;
- learned positions (`"standard"`), RoPE (`"rotary"` over the whole head, halves rotated as
  GPT-NeoX does: `rotary_adjacent_pairs=False`; the lab's cosine and sine tables are copied into
  the exported model, so positions agree to the bit), and no positions (`"standard"` with a zero
  position table: adding zeros changes nothing);
- biases: the lab's absent biases are TransformerLens's zero biases; the attention scale is
  1/sqrt(d_head) in both.
Weights are copied as they are, with none of TransformerLens's weight processing; `fold=True`
loads them through `load_and_process_state_dict` (LayerNorm folded into the next weights,
writing weights and the unembedding centred, value biases folded into the output bias): the
log-probabilities stay the same, the logits move by a constant per position (the centred
unembedding), and the LayerNorm hooks read LNPre's normalised-only values.

What does not map is refused by name before any work (`ExportError`): Olsson et al.'s smeared keys
(TransformerLens has no key smearing) and the few-shot models' exemplar-feature inputs (a linear
embedding of feature vectors; `HookedTransformer` embeds token ids only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ihlab.errors import ConfigError
from ihlab.model import ModelConfig, ModelIO, Positional, Transformer
from ihlab.runs.atomic import open_atomic, write_text_atomic
from ihlab.runs.checkpoints import load_lab_model

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

CONFIG_FILE = "config.json"  # the HookedTransformerConfig's fields
WEIGHTS_FILE = "model.safetensors"  # the state dict (no pickle)


class ExportError(ConfigError):
    """A lab model that TransformerLens cannot express; the message names the feature."""


def check_exportable(cfg: ModelConfig, io: ModelIO) -> None:
    """Refuse, naming the feature, what `HookedTransformer` cannot express."""
    if cfg.smeared_keys:
        raise ExportError(
            "model.smeared_keys=true: TransformerLens has no smeared keys (Olsson et al.'s "
            "per-head mix of each key with the previous one), so the export would compute "
            "another model. Export a model without smeared keys."
        )
    if io.d_vocab is None:
        raise ExportError(
            "the model reads exemplar feature vectors (a few-shot model): HookedTransformer "
            "embeds token ids only. Export a token model (repeated tokens, Markov chains, text)."
        )


def _positional(cfg: ModelConfig) -> str:
    return "rotary" if cfg.positional == Positional.rope else "standard"


def lens_config(cfg: ModelConfig, io: ModelIO) -> HookedTransformerConfig:
    """TransformerLens's config of the lab model of this shape."""
    from transformer_lens import HookedTransformerConfig

    check_exportable(cfg, io)
    rotary = cfg.positional == Positional.rope
    return HookedTransformerConfig(
        d_model=cfg.d_model,
        d_head=cfg.head_dim,
        n_layers=cfg.n_layers,
        n_ctx=io.n_ctx,
        n_heads=cfg.n_heads,
        d_vocab=io.d_vocab,
        d_vocab_out=io.d_vocab_out,
        attn_only=cfg.attn_only,
        d_mlp=None if cfg.attn_only else cfg.mlp_dim,
        act_fn=None if cfg.attn_only else "gelu",  # F.gelu, the exact (erf) form
        normalization_type="LN" if cfg.norm else None,
        eps=1e-5,
        positional_embedding_type=_positional(cfg),
        rotary_dim=cfg.head_dim if rotary else None,
        rotary_base=cfg.rope_base if rotary else 10000,
        rotary_adjacent_pairs=False,
        default_prepend_bos=False,  # the lab's tokens are the whole input
        dtype=torch.float32,
        device="cpu",
    )


def lens_state_dict(model: Transformer) -> dict[str, Tensor]:
    """The lab model's weights under TransformerLens's names and shapes (no processing)."""
    cfg, io = model.cfg, model.io
    check_exportable(cfg, io)
    h, dh, d = cfg.n_heads, cfg.head_dim, cfg.d_model
    zeros = torch.zeros
    state = {"embed.W_E": model.embed_tokens.weight}
    if model.pos_embed is not None:
        state["pos_embed.W_pos"] = model.pos_embed.weight
    elif cfg.positional == Positional.none:
        state["pos_embed.W_pos"] = zeros(io.n_ctx, d)
    for layer, block in enumerate(model.blocks):
        p, attn = f"blocks.{layer}", block.attn
        qkv = attn.qkv.weight.view(3, h, dh, d)  # rows (q|k|v, head, d_head) as forward views
        bias = attn.qkv.bias.view(3, h, dh) if attn.qkv.bias is not None else zeros(3, h, dh)
        for i, name in enumerate("QKV"):
            state[f"{p}.attn.W_{name}"] = qkv[i].transpose(1, 2)  # (head, d_model, d_head)
            state[f"{p}.attn.b_{name}"] = bias[i]  # (head, d_head)
        state[f"{p}.attn.W_O"] = attn.out.weight.T.reshape(h, dh, d)  # (head, d_head, d_model)
        state[f"{p}.attn.b_O"] = attn.out.bias if attn.out.bias is not None else zeros(d)
        if attn.rotary is not None:
            state[f"{p}.attn.rotary_cos"] = attn.rotary.cos  # (n_ctx, d_head)
            state[f"{p}.attn.rotary_sin"] = attn.rotary.sin
        if cfg.norm:
            state[f"{p}.ln1.w"], state[f"{p}.ln1.b"] = block.ln_attn.weight, block.ln_attn.bias
        if block.mlp is not None:
            fc, proj = block.mlp.fc, block.mlp.proj
            state[f"{p}.mlp.W_in"] = fc.weight.T  # (d_model, d_mlp)
            state[f"{p}.mlp.b_in"] = fc.bias if fc.bias is not None else zeros(cfg.mlp_dim)
            state[f"{p}.mlp.W_out"] = proj.weight.T  # (d_mlp, d_model)
            state[f"{p}.mlp.b_out"] = proj.bias if proj.bias is not None else zeros(d)
            if cfg.norm:
                state[f"{p}.ln2.w"], state[f"{p}.ln2.b"] = block.ln_mlp.weight, block.ln_mlp.bias
    if cfg.norm:
        state["ln_final.w"], state["ln_final.b"] = model.ln_final.weight, model.ln_final.bias
    state["unembed.W_U"] = model.unembed.weight.T  # (d_model, d_vocab_out)
    unembed_bias = model.unembed.bias
    state["unembed.b_U"] = unembed_bias if unembed_bias is not None else zeros(io.d_vocab_out)
    return {name: t.detach().clone().contiguous() for name, t in state.items()}


def to_lens(model: Transformer, fold: bool = False) -> HookedTransformer:
    """The lab model as a `HookedTransformer` in eval mode (weights copied, or folded)."""
    from transformer_lens import HookedTransformer

    lens = HookedTransformer(lens_config(model.cfg, model.io))
    weights = lens_state_dict(model)
    if fold:
        lens.load_and_process_state_dict(
            weights,
            fold_ln=model.cfg.norm,
            center_writing_weights=model.cfg.norm,
            center_unembed=True,
            fold_value_biases=True,
        )
        _copy_rotary(lens, weights)
    else:
        state = lens.state_dict()
        unknown = set(weights) - set(state)
        assert not unknown, f"no such TransformerLens weights: {sorted(unknown)}"
        state.update(weights)
        lens.load_state_dict(state)
    return lens.eval()


def _copy_rotary(lens: HookedTransformer, weights: dict[str, Tensor]) -> None:
    """Put the lab's rotary tables in (weight processing rebuilds TransformerLens's own)."""
    for layer, block in enumerate(lens.blocks):
        for table in ("rotary_cos", "rotary_sin"):
            name = f"blocks.{layer}.attn.{table}"
            if name in weights:
                getattr(block.attn, table).copy_(weights[name])


def id_tokenizer(d_vocab: int):
    """A tokenizer whose tokens are the lab's ids written `t0`, `t1`, ... (space-separated), so
    TransformerLens's string functions (`to_tokens`, `to_str_tokens`, the head detector) work on
    the synthetic-token models; an unknown word is an error, never a silent id. Padding uses
    `t0`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(d_vocab)}, unk_token=None))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # padding (batches of strings of unequal length) needs a pad token; t0 serves, and
    # TransformerLens's attention mask keeps padded positions out of every other position
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0")


def export_checkpoint(checkpoint: str | Path, member: int = 0, fold: bool = False):
    """An `ihlab-train` checkpoint's model (member `member` of an ensemble) as a
    `HookedTransformer` with `id_tokenizer`. Refusals (`ExportError`) come before the weights
    are converted."""
    lens = to_lens(load_lab_model(checkpoint, member), fold=fold)
    lens.set_tokenizer(id_tokenizer(lens.cfg.d_vocab), default_padding_side="right")
    return lens


def save_lens(lens: HookedTransformer, folder: str | Path) -> Path:
    """Write `config.json` (the HookedTransformerConfig's fields) and `model.safetensors`
    into `folder`; `load_lens` (or the three lines in docs/lens.md) reads them back."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = lens.cfg.to_dict()
    config = {k: fields[k] for k in _SAVED if k in fields}
    config["dtype"] = "float32"
    state = {k: v.contiguous() for k, v in lens.state_dict().items()}
    with open_atomic(folder / WEIGHTS_FILE, "wb") as f:
        f.write(save(state))
    write_text_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return folder


def load_lens(folder: str | Path) -> HookedTransformer:
    """A `HookedTransformer` saved by `save_lens`."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["dtype"] = getattr(torch, config["dtype"])
    lens = HookedTransformer(HookedTransformerConfig(**config))
    lens.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return lens.eval()


# The config fields `save_lens` keeps: what `lens_config` sets, and what folding changes.
_SAVED = (
    "d_model",
    "d_head",
    "n_layers",
    "n_ctx",
    "n_heads",
    "d_vocab",
    "d_vocab_out",
    "attn_only",
    "d_mlp",
    "act_fn",
    "normalization_type",
    "eps",
    "positional_embedding_type",
    "rotary_dim",
    "rotary_base",
    "rotary_adjacent_pairs",
    "default_prepend_bos",
)
