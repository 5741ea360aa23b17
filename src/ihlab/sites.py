"""Named activation sites: one vocabulary for the model, clamps, metrics and the probe.

Names follow TransformerLens's hook points:

    embed, pos_embed, blocks.{l}.resid_pre, blocks.{l}.attn.{q,k,v}, blocks.{l}.attn.scores,
    blocks.{l}.attn.pattern, blocks.{l}.attn.z, blocks.{l}.attn.out, blocks.{l}.mlp.out,
    blocks.{l}.resid_post, logits

Shapes: q, k, v, z are (batch, pos, head, d_head); scores and pattern are (batch, head, query, key);
every other site is (batch, pos, d_model) or (batch, pos, d_vocab_out) for logits. q and k are the
vectors whose scaled dot product gives the scores (after RoPE and key smearing); scores are
pre-softmax with masked (future) entries at -inf.

A forward pass gets a `SiteHooks` hub. Every site goes through it: the hub applies the intervention
registered for that site (a clamp, an ablation) and keeps the resulting tensor if it was requested.
Nothing is cached unless asked for, and a layer whose scores and pattern are neither requested nor
intervened on takes the fused-attention fast path.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping

from torch import Tensor

Intervention = Callable[[Tensor], Tensor]

LAYER_SITES = (
    "resid_pre",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.scores",
    "attn.pattern",
    "attn.z",
    "attn.out",
    "mlp.out",
    "resid_post",
)
HEAD_AXIS = {
    "attn.q": 2,
    "attn.k": 2,
    "attn.v": 2,
    "attn.z": 2,
    "attn.scores": 1,
    "attn.pattern": 1,
}
EXPLICIT_ATTENTION_SITES = ("attn.scores", "attn.pattern")
_LAYER_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HEAD_NAME = re.compile(r"^L(\d+)H(\d+)$")
_HEAD_KEY = re.compile(r"^heads/([^/]+)/L(\d+)H(\d+)$")


def head_name(layer: int, head: int) -> str:
    """A head as the lab names it everywhere: layer 18, head 6 -> "L18H6"."""
    return f"L{layer}H{head}"


def parse_head_name(name: str) -> tuple[int, int] | None:
    """ "L18H6" -> (18, 6); None if `name` is not a head name."""
    match = _HEAD_NAME.match(name.strip().upper())
    return (int(match.group(1)), int(match.group(2))) if match else None


def head_key(score: str, layer: int, head: int) -> str:
    """The metric key of one head's score: `heads/<score>/L<layer>H<head>`."""
    return f"heads/{score}/{head_name(layer, head)}"


def parse_head_key(key: str) -> tuple[str, int, int] | None:
    """`heads/<score>/L<layer>H<head>` -> (score, layer, head); None for any other key."""
    match = _HEAD_KEY.match(key)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def head_key_regex(score: str) -> str:
    """A regular expression matching every head's key of one score (for W&B panels)."""
    return f"^heads/{re.escape(score)}/L[0-9]+H[0-9]+$"


def site_names(n_layers: int, attn_only: bool, pos_embed: bool) -> list[str]:
    """Every site a model with this shape has, in forward order."""
    names = ["embed"] + (["pos_embed"] if pos_embed else [])
    for layer in range(n_layers):
        names += [
            f"blocks.{layer}.{kind}"
            for kind in LAYER_SITES
            if not (attn_only and kind == "mlp.out")
        ]
    return [*names, "logits"]


def parse_site(name: str) -> tuple[int | None, str]:
    """Split a site name into (layer, kind): `blocks.1.attn.z` -> (1, "attn.z")."""
    match = _LAYER_SITE.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def check_sites(names: Iterable[str], available: Collection[str]) -> None:
    """Raise a ValueError naming each unknown site, with the closest valid names."""
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, list(available), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"Unknown activation site {name!r}.{hint} This model has: {', '.join(available)}."
            )


class SiteHooks:
    """Per-forward hub: applies interventions at sites and caches the requested ones.

    `cache` names the sites to keep; `interventions` maps a site name to a function that returns the
    tensor the site must hold (it receives the computed value). The cache holds the value after the
    intervention: what the rest of the forward actually used. `store` is the dict the cache is
    written to, for interventions that read an earlier site of the same forward.
    """

    def __init__(
        self,
        cache: Iterable[str] = (),
        interventions: Mapping[str, Intervention] | None = None,
        store: dict[str, Tensor] | None = None,
    ) -> None:
        self.requested = frozenset(cache)
        self.interventions = dict(interventions or {})
        self.cache: dict[str, Tensor] = {} if store is None else store
        self._explicit_layers: set[int] = set()
        for name in self.requested | self.interventions.keys():
            self._note(name)

    def _note(self, name: str) -> None:
        layer, kind = parse_site(name)
        if layer is not None and kind in EXPLICIT_ATTENTION_SITES:
            self._explicit_layers.add(layer)

    def add_intervention(self, name: str, intervention: Intervention) -> None:
        """Apply `intervention` at `name` after any already registered there."""
        before = self.interventions.get(name)
        if before is None:
            self.interventions[name] = intervention
        else:
            self.interventions[name] = lambda x: intervention(before(x))
        self._note(name)

    def __call__(self, name: str, value: Tensor) -> Tensor:
        intervene = self.interventions.get(name)
        if intervene is not None:
            value = intervene(value)
        if name in self.requested:
            self.cache[name] = value
        return value

    def explicit_attention(self, layer: int) -> bool:
        """Whether this layer must materialise scores and pattern (else fused attention)."""
        return layer in self._explicit_layers

    @property
    def names(self) -> frozenset[str]:
        """Every site this hub reads or writes."""
        return self.requested | self.interventions.keys()


NO_HOOKS = SiteHooks()
