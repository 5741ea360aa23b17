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


class ExampleLoss(Metric):
    """The loss of each of the first `n_examples` evaluation sequences at one fixed position per
    sequence: compute() -> (n_examples,). One such vector per evaluation step is what Olsson et
    al.'s per-token-loss PCA projects. Batches must arrive in evaluation-set order.
    """

    full_state_update = False

    def __init__(self, n_examples: int, n_positions: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        positions = torch.randint(n_positions, (n_examples,), generator=g)  # (examples,)
        self.register_buffer("positions", positions, persistent=False)
        self.add_state("losses", default=torch.zeros(n_examples), dist_reduce_fx="sum")
        self.add_state("cursor", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    def update(self, token_loss: Tensor) -> None:
        """token_loss: (batch, pos) per-token losses, or (batch,) one loss per sequence."""
        start, n = int(self.cursor), len(self.losses)
        take = max(0, min(token_loss.shape[0], n - start))
        if take:
            rows = token_loss[:take].detach().float()
            if rows.dim() == 2:
                index = self.positions[start : start + take, None]  # (take, 1)
                rows = rows.gather(1, index)[:, 0]
            self.losses[start : start + take] = rows
        self.cursor += token_loss.shape[0]

    def compute(self) -> Tensor:
        return self.losses.clone()
