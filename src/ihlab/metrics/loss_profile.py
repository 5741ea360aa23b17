"""Loss as a function of context position, accumulated over an evaluation set."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PositionalLoss(Metric):
    """Mean per-token loss at each context position: compute() -> (pos,).

    Feeds the ICL score (loss late minus loss early, Olsson et al.) and the loss x position x step
    picture of the phase change.
    """

    full_state_update = False

    def __init__(self, n_positions: int) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.zeros(n_positions, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, token_loss: Tensor) -> None:
        """token_loss: (batch, pos) per-token cross-entropy."""
        self.total += token_loss.detach().sum(dim=0).to(torch.float64)
        self.count += token_loss.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count).to(torch.float32)
