"""What a run measured, read back from its files: the final and best metrics, the learning time,
the phase changes and the per-token-loss PCA (written to loss_pca.csv). Read from the whole run's
rows, so a resumed run's summary covers all of it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ihlab.data.base import LearningTime
from ihlab.metrics.dynamics import (
    PHASE_CHANGE_METHOD,
    detect_phase_change,
    learning_time,
    per_token_loss_pca,
)
from ihlab.runs.atomic import write_text_atomic
from ihlab.runs.files import LOSS_PCA, PER_TOKEN_LOSS, RunFiles
from ihlab.runs.summary import Status
from ihlab.runs.tables import read_metrics, read_step_table


def write_loss_pca(run_dir: Path) -> dict[str, Any] | None:
    """loss_pca.csv (step, pc1, pc2) from the finite rows of per_token_loss.csv; None with fewer
    than 3 of them."""
    files = RunFiles(run_dir)
    path = files.table(PER_TOKEN_LOSS)
    if not path.exists():
        return None
    steps, _, losses = read_step_table(path)
    finite = np.isfinite(losses).all(axis=1)
    steps, losses = steps[finite], losses[finite]
    if len(steps) < 3:
        return None
    coords, explained = per_token_loss_pca(losses)
    lines = ["step,pc1,pc2"] + [f"{s},{a},{b}" for s, (a, b) in zip(steps, coords, strict=True)]
    write_text_atomic(files.loss_pca, "\n".join(lines) + "\n")
    return {"file": LOSS_PCA, "explained_variance": explained.tolist()}


def measure(
    run_dir: Path, steps: int, learning: LearningTime | None, status: Status
) -> dict[str, Any]:
    """Final, best and learning-time metrics read back from metrics.csv (the whole run's rows).
    A diverged run gets no learning time and no phase change: its curve is broken; neither does
    a run that failed before its data family existed (`learning` None)."""
    files = RunFiles(run_dir)
    rows = read_metrics(files.metrics) if files.metrics.exists() else []
    final: dict[str, float] = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if not k.startswith("heads/")})
    best = {
        k: max((r[k] for r in rows if k in r and math.isfinite(r[k])), default=math.nan)
        for k in final
        if k.endswith("/acc")
    }
    metric, threshold = (learning.metric, learning.threshold) if learning else (None, None)
    curve = [(int(r["step"]), r[metric]) for r in rows if metric in r]
    steps_, values = [s for s, _ in curve], [v for _, v in curve]
    if status == Status.diverged or learning is None:
        learned = None
        why = "the run diverged" if learning else "the run failed before training"
        phase = {"detected": False, "method": PHASE_CHANGE_METHOD, "reason": why}
    else:
        learned = learning_time(steps_, values, learning.threshold)
        phase = detect_phase_change(steps_, values, smooth_frac=learning.smooth_frac).to_dict()
    return {
        "final": final,
        "best": best,
        "learning_time": {"metric": metric, "threshold": threshold, "step": learned},
        "phase_change": {"metric": metric, **phase},
        "loss_pca": write_loss_pca(run_dir),
    }
