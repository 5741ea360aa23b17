"""Heads chosen by a reference run's scores (`clamps.<name>.select`)."""

from __future__ import annotations

from pathlib import Path

from ihlab.clamps.spec import HeadSelect
from ihlab.errors import ConfigError
from ihlab.runs.files import RunFiles
from ihlab.runs.tables import read_metrics
from ihlab.sites import parse_head_key


def selected_heads(select: HeadSelect, layer: int) -> list[int]:
    """The top heads of `layer` by a logged score of a reference run (see HeadSelect)."""
    rows = read_metrics(RunFiles(Path(select.run)).metrics)
    scored = []
    for row in rows:
        heads = {
            parsed[2]: value
            for key, value in row.items()
            if (parsed := parse_head_key(key)) and parsed[:2] == (select.score, layer)
        }
        if heads and (select.step is None or int(row["step"]) == select.step):
            scored.append(heads)
    if not scored:
        at = "any step" if select.step is None else f"step {select.step}"
        raise ConfigError(
            f"select: {select.run} has no {select.score} scores of layer {layer} at {at}. Fix: "
            "choose a step at which the reference run scored heads (trainer.score_every)."
        )
    scores = scored[-1]
    return sorted(sorted(scores, key=lambda h: -scores[h])[: select.top])
