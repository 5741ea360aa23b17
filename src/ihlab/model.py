"""A small decoder-only transformer with named activation sites (see sites.py).

One model serves both data families: token sequences (an embedding table) and few-shot
sequences whose exemplars are feature vectors (a linear embedding) and whose labels are tokens (a
label table). Pre-LayerNorm blocks, a final norm, optional MLPs, learned / rotary / no positions,
and Olsson et al.'s smeared keys. With no site requested the attention takes PyTorch's fused kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ihlab.choices import Choice
from ihlab.errors import ConfigError, choice
from ihlab.sites import NO_HOOKS, SiteHooks, check_sites, site_names


@dataclass(frozen=True)
class ModelIO:
    """Input and output sizes the data imposes on the model (each data family makes one).

    Token data sets `d_vocab`; few-shot data sets `d_features` (exemplar vectors) and `n_labels`
    (label tokens share the sequence with exemplars). `d_vocab_out` is the unembedding width.
    """

    n_ctx: int
    d_vocab_out: int
    d_vocab: int | None = None
    d_features: int | None = None
    n_labels: int | None = None


class Positional(Choice):
    learned = "learned"
    rope = "rope"
    none = "none"


class Init(Choice):
    """How weights start (biases always at 0, LayerNorms at gain 1, bias 0).

    - `normal`: every linear map and embedding table N(0, init_std^2) (GPT-2's scheme);
    - `lecun`: Singh et al.'s: every linear map (attention q/k/v and output, MLP, exemplar
      embedding, unembedding) LeCun normal, a normal truncated at two standard deviations and
      rescaled so its std is exactly 1/sqrt(fan_in) (0.125 at width 64; 0.044 for 512-d
      exemplars); embedding tables (labels, tokens, learned positions) 0.02 x a standard normal
      truncated to [-2, 2] (std 0.0176). `init_std` is not used.
    """

    normal = "normal"
    lecun = "lecun"


TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
EMBED_SCALE = 0.02  # lecun: the embedding tables' scale


def truncated_normal_(weight: Tensor, std: float) -> Tensor:
    """In place: std x (a standard normal truncated to [-2, 2]); its std is std x TRUNC_STD."""
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


@dataclass
class ModelConfig:
    """Shape of the transformer; input and output sizes come from the data (ModelIO)."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int | None = None  # None: d_model // n_heads
    attn_only: bool = True
    d_mlp: int | None = None  # None: 4 * d_model
    positional: Positional = Positional.learned
    rope_base: float = 10000.0
    smeared_keys: bool = False
    norm: bool = True  # pre-LayerNorm in every block plus a final LayerNorm
    bias: bool = False  # biases of q/k/v, output projection and MLP
    unembed_bias: bool = True
    init: Init = Init.normal
    init_std: float = 0.02  # init=normal

    def __post_init__(self) -> None:
        self.init = choice(Init, self.init, "model.init", "an init scheme")
        for key in ("n_layers", "n_heads", "d_model"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 1.")
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0]
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}. "
                f"Fix: set model.n_heads to a divisor of d_model {divisors} or change d_model."
            )
        for key in ("init_std", "rope_base"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"model.{key}={value} must be a finite number > 0. Fix: e.g. "
                    "model.init_std=0.02, model.rope_base=10000."
                )
        if self.d_mlp is not None and self.d_mlp < 1:
            raise ConfigError(f"model.d_mlp={self.d_mlp} must be >= 1 (or null for 4 x d_model).")
        if self.d_head is not None and self.d_head < 1:
            raise ConfigError(
                f"model.d_head={self.d_head} must be >= 1 (or null for d_model/n_heads)."
            )
        if self.positional == Positional.rope and self.head_dim % 2:
            raise ConfigError(
                f"model.positional=rope needs an even head dimension, got {self.head_dim}. "
                "Fix: set model.d_head to an even number or use model.positional=learned."
            )

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model


class Rotary(nn.Module):
    """Rotary position embedding on the last axis of (batch, pos, head, d_head) tensors."""

    def __init__(self, d_head: int, n_ctx: int, base: float) -> None:
        super().__init__()
        freqs = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)  # (d_head/2,)
        angles = torch.outer(torch.arange(n_ctx, dtype=torch.float32), freqs)  # (n_ctx, d_head/2)
        self.register_buffer("cos", angles.cos().repeat(1, 2), persistent=False)  # (n_ctx, d_head)
        self.register_buffer("sin", angles.sin().repeat(1, 2), persistent=False)  # (n_ctx, d_head)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        cos, sin = self.cos[:n, None, :], self.sin[:n, None, :]  # (pos, 1, d_head)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


_FUSED = contextvars.ContextVar("ihlab_fused_attention", default=True)


@contextlib.contextmanager
def unfused_attention() -> Iterator[None]:
    """Every layer takes the explicit attention path inside this block (vmap over a member axis:
    PyTorch's fused attention kernel has no batching rule)."""
    token = _FUSED.set(False)
    try:
        yield
    finally:
        _FUSED.reset(token)


@functools.lru_cache(maxsize=16)
def future_mask(n: int, device: torch.device) -> Tensor:
    """(query, key) True where the key lies in the query's future."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def smear_keys(k: Tensor, alpha: Tensor) -> Tensor:
    """key_j <- sigmoid(alpha) key_j + (1 - sigmoid(alpha)) key_{j-1}, per head; key_0 unchanged."""
    s = torch.sigmoid(alpha)[:, None]  # (head, 1)
    smeared = s * k[:, 1:] + (1 - s) * k[:, :-1]  # (batch, pos-1, head, d_head)
    return torch.cat([k[:, :1], smeared], dim=1)  # (batch, pos, head, d_head)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rotary: Rotary | None) -> None:
        super().__init__()
        self.layer, self.n_heads, self.d_head = layer, cfg.n_heads, cfg.head_dim
        self.prefix = f"blocks.{layer}.attn"
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.rotary = rotary
        self.smear_alpha = nn.Parameter(torch.zeros(cfg.n_heads)) if cfg.smeared_keys else None

    def forward(self, x: Tensor, hooks: SiteHooks) -> Tensor:
        batch, n, _ = x.shape  # x: (batch, pos, d_model)
        p = self.prefix
        q, k, v = self.qkv(x).view(batch, n, 3, self.n_heads, self.d_head).unbind(2)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.smear_alpha is not None:
            k = smear_keys(k, self.smear_alpha)
        q = hooks(f"{p}.q", q)  # (batch, pos, head, d_head)
        k = hooks(f"{p}.k", k)  # (batch, pos, head, d_head)
        v = hooks(f"{p}.v", v)  # (batch, pos, head, d_head)
        if hooks.explicit_attention(self.layer) or not _FUSED.get():
            qh, kh = q.transpose(1, 2), k.transpose(1, 2)  # (batch, head, pos, d_head)
            scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(self.d_head)  # (b, head, q, k)
            future = future_mask(n, x.device)  # (query, key)
            scores = hooks(f"{p}.scores", scores.masked_fill(future, float("-inf")))
            pattern = hooks(f"{p}.pattern", scores.softmax(dim=-1))  # (batch, head, query, key)
            z = (pattern @ v.transpose(1, 2)).transpose(1, 2)  # (batch, pos, head, d_head)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            ).transpose(1, 2)  # (batch, pos, head, d_head)
        z = hooks(f"{p}.z", z)
        return hooks(f"{p}.out", self.out(z.reshape(batch, n, -1)))  # (batch, pos, d_model)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rotary: Rotary | None) -> None:
        super().__init__()
        self.prefix = f"blocks.{layer}"
        self.ln_attn = nn.LayerNorm(cfg.d_model) if cfg.norm else nn.Identity()
        self.attn = Attention(cfg, layer, rotary)
        self.ln_mlp = nn.LayerNorm(cfg.d_model) if cfg.norm and not cfg.attn_only else nn.Identity()
        self.mlp = None if cfg.attn_only else MLP(cfg)

    def forward(self, x: Tensor, hooks: SiteHooks) -> Tensor:
        x = hooks(f"{self.prefix}.resid_pre", x)  # (batch, pos, d_model)
        x = x + self.attn(self.ln_attn(x), hooks)
        if self.mlp is not None:
            x = x + hooks(f"{self.prefix}.mlp.out", self.mlp(self.ln_mlp(x)))
        return hooks(f"{self.prefix}.resid_post", x)


class Transformer(nn.Module):
    """Decoder-only transformer over tokens or (exemplar features, label tokens).

    Inputs are a dict: {"tokens": (batch, pos)} or {"features": (batch, pos, d_features),
    "labels": (batch, pos)} where labels are -1 at exemplar positions. Returns logits
    (batch, pos, d_vocab_out).
    """

    def __init__(self, cfg: ModelConfig, io: ModelIO) -> None:
        super().__init__()
        self.cfg, self.io = cfg, io
        if io.d_vocab is not None:
            self.embed_tokens = nn.Embedding(io.d_vocab, cfg.d_model)
        else:
            if io.d_features is None or io.n_labels is None:
                raise ValueError("ModelIO needs d_vocab, or d_features and n_labels.")
            self.embed_features = nn.Linear(io.d_features, cfg.d_model)
            self.embed_labels = nn.Embedding(io.n_labels, cfg.d_model)
        learned = cfg.positional == Positional.learned
        self.pos_embed = nn.Embedding(io.n_ctx, cfg.d_model) if learned else None
        rotary = (
            Rotary(cfg.head_dim, io.n_ctx, cfg.rope_base)
            if cfg.positional == Positional.rope
            else None
        )
        self.blocks = nn.ModuleList(Block(cfg, layer, rotary) for layer in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model) if cfg.norm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, io.d_vocab_out, bias=cfg.unembed_bias)
        self.sites = site_names(cfg.n_layers, cfg.attn_only, pos_embed=learned)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Linear | nn.Embedding):
            return
        if self.cfg.init == Init.normal:
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        elif isinstance(module, nn.Linear):  # weight (out, in): fan_in = in
            truncated_normal_(module.weight, module.in_features**-0.5 / TRUNC_STD)
        else:
            truncated_normal_(module.weight, EMBED_SCALE)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)

    def embed(self, inputs: dict[str, Tensor]) -> Tensor:
        """Token or exemplar/label embedding, (batch, pos, d_model)."""
        if "tokens" in inputs:
            return self.embed_tokens(inputs["tokens"])
        labels = inputs["labels"]  # (batch, pos), -1 at exemplar positions
        features = inputs["features"]  # (batch, pos, d_features)
        # on rows, (batch * pos, d_features): under vmap a 3-d input to a per-member Linear
        # broadcasts the weight over the batch (a copy per sequence); rows make it one bmm
        exemplars = self.embed_features(features.flatten(0, 1)).unflatten(0, features.shape[:2])
        label_vecs = self.embed_labels(labels.clamp(min=0))  # (batch, pos, d_model)
        return torch.where((labels >= 0)[..., None], label_vecs, exemplars)

    def forward(
        self,
        inputs: dict[str, Tensor],
        hooks: SiteHooks = NO_HOOKS,
        start: tuple[int, Tensor] | None = None,
    ) -> Tensor:
        """Logits of `inputs`. `start` = (layer l, residual (batch, pos, d_model) at block l's
        input): run blocks l onwards from that residual, the layers below it computed elsewhere
        (what an intervention in layer l shares with the intact forward)."""
        first, x = start if start is not None else (0, None)
        if x is None:
            x = hooks("embed", self.embed(inputs))  # (batch, pos, d_model)
            if self.pos_embed is not None:
                batch, n = x.shape[:2]
                pos = self.pos_embed.weight[:n].expand(batch, n, -1)  # (batch, pos, d_model)
                x = x + hooks("pos_embed", pos)
        for block in self.blocks[first:]:
            x = block(x, hooks)
        return hooks("logits", self.unembed(self.ln_final(x)))  # (batch, pos, d_vocab_out)

    def run_with_cache(
        self, inputs: dict[str, Tensor], names: list[str] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward that returns the logits and the requested sites (all sites if None)."""
        names = self.sites if names is None else names
        check_sites(names, self.sites)
        hooks = SiteHooks(cache=names)
        logits = self(inputs, hooks)
        return logits, hooks.cache


def shape_state(cfg: ModelConfig, io: ModelIO) -> dict[str, Any]:
    """Model config and IO as plain data: a checkpoint entry weights-only loading can read."""
    model = {k: v.value if isinstance(v, Enum) else v for k, v in asdict(cfg).items()}
    return {"model": model, "io": asdict(io)}


def from_shape_state(state: dict[str, Any]) -> tuple[ModelConfig, ModelIO]:
    """Inverse of `shape_state`."""
    model = dict(state["model"])
    model["positional"] = Positional(model["positional"])
    model["init"] = Init(model.get("init", Init.normal))  # a state without `init` used normal
    return ModelConfig(**model), ModelIO(**state["io"])
