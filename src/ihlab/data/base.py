"""What every datamodule tells the model and the training module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelIO:
    """Input and output sizes the data imposes on the model.

    Token data sets `d_vocab`; few-shot data sets `d_features` (exemplar vectors) and `n_labels`
    (label tokens share the sequence with exemplars). `d_vocab_out` is the unembedding width.
    """

    n_ctx: int
    d_vocab_out: int
    d_vocab: int | None = None
    d_features: int | None = None
    n_labels: int | None = None
