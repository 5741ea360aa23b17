"""What a clamp is, as configured: `clamps.<name>` = site + selection + value + windows.

A leaf module (no engine, no values): the train schema and the probe's config type their clamp
entries with it, and `checks.py` validates it against a model and data before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Window:
    """Steps [start, stop) in which a clamp is on; stop None: to the end of training."""

    start: int = 0
    stop: int | None = None


@dataclass
class HeadSelect:
    """Heads chosen by a score: the `top` heads of the clamp's layer with the highest `score`
    (a heads/<score>/L<l>H<h> column of metrics.csv) at `step` (None: the last scored step) of the
    run in directory `run`."""

    run: str = ""
    score: str = "previous_token"
    top: int = 1
    step: int | None = None


@dataclass
class ClampConfig:
    """One clamp. `site` is a full site name (`blocks.0.attn.pattern`); `heads` (or `select`) and
    `positions` narrow it; `windows` (empty: all of training) say when it is on."""

    site: str = ""
    value: str = "zero"  # a name in ihlab.clamps.values.VALUES
    heads: list[int] | None = None  # None: every head (per-head sites); copy: heads of `source`
    select: HeadSelect | None = None
    positions: list[int] | None = None  # query positions for patterns; negative counts from the end
    windows: list[Window] = field(default_factory=list)
    constant: float = 0.0  # value=constant
    strength: float = 1.0  # value=match: attention to the correct label
    source: str | None = None  # value=copy: the scores site whose heads give the logits
    reference_size: int = 64  # value=mean: sequences in the reference batch
    checkpoint: str | None = None  # value=graft: a checkpoint of another run
