"""Reject, before any work, a clamp the model or data cannot honour: every check names the key
(`clamps.<name>`) and the fix."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values import VALUES, ClampValue, Where
from ihlab.clamps.values.base import check_fields
from ihlab.errors import ConfigError
from ihlab.runs.files import RunFiles
from ihlab.sites import HEAD_AXIS, parse_site, site_names

SCORE_NAMES = ("previous_token", "prefix_matching")  # scores `select` may rank heads by


def check_clamps(
    clamps: dict[str, ClampConfig], model: Any, data: Any, section: str = "clamps"
) -> None:
    """Check every clamp against a ModelConfig and a DataConfig (the positions the model reads
    and what its batches offer values); ConfigError naming the clamp's key
    (`<section>.<name>`) and the fix."""
    sites = site_names(model.n_layers, model.attn_only, model.positional.value == "learned")
    n_pos = data.model_positions
    for name, c in clamps.items():
        key = f"{section}.{name}"

        def fail(msg: str, key: str = key) -> ConfigError:
            return ConfigError(f"{key}: {msg}")

        if not c.site:
            raise fail(f"site is required. Fix: set {key}.site=NAME, one of {sites}.")
        if c.site not in sites:
            raise fail(f"site {c.site!r} does not exist in this model. Fix: use one of {sites}.")
        value = check_value(c, key)
        layer, kind = parse_site(c.site)
        where = Where(key, c.site, layer, kind, sites, model.n_layers, data.clamp_inputs)
        value.check(c, where)
        check_fields(c, where, ClampConfig())
        head_site = value.head_site(c)
        if c.heads is not None or c.select is not None:
            if c.heads is not None and c.select is not None:
                raise fail("set heads or select, not both.")
            if head_site not in sites or parse_site(head_site)[1] not in HEAD_AXIS:
                raise fail(
                    f"site {c.site!r} has no head axis, so heads/select cannot apply. Fix: remove "
                    "them or clamp a per-head site (attn.q/k/v/scores/pattern/z)."
                )
        for h in c.heads or []:
            if not 0 <= h < model.n_heads:
                raise fail(f"head {h} does not exist (heads 0-{model.n_heads - 1}).")
        if c.heads is not None and len(set(c.heads)) != len(c.heads):
            raise fail(f"heads {c.heads} repeats a head.")
        if c.select is not None:
            if c.select.score not in SCORE_NAMES:
                raise fail(f"select.score={c.select.score!r}: use one of {SCORE_NAMES}.")
            if not 1 <= c.select.top <= model.n_heads:
                raise fail(f"select.top={c.select.top} must be in 1..{model.n_heads}.")
            if not RunFiles(Path(c.select.run)).metrics.exists():
                raise fail(
                    f"select.run={c.select.run!r} has no metrics.csv. Fix: point it at the run "
                    "directory of a finished reference run."
                )
        for p in c.positions or []:
            if not -n_pos <= p < n_pos:
                raise fail(f"position {p} is outside the {n_pos} model positions.")
        for w in c.windows:
            if w.start < 0 or (w.stop is not None and w.stop <= w.start):
                raise fail(f"window [{w.start}, {w.stop}) is empty or negative.")


def check_value(c: ClampConfig, key: str) -> type[ClampValue]:
    """The registered class of c.value; a ConfigError naming the key and the closest names."""
    if c.value in VALUES:
        return VALUES[c.value]
    close = difflib.get_close_matches(str(c.value), list(VALUES), n=2)
    hint = f"Did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(
        f"{key}: value {c.value!r} is not a clamp value. {hint}Fix: use one of {sorted(VALUES)}."
    )
