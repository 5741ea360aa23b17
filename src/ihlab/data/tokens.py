"""Next-token families: the model reads a token sequence but its last token and is scored on the
next token at every position. Shared by repeated tokens and in-context Markov chains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ihlab.data.base import Batch, DataConfig, DataFamily, SplitMetrics, Terms
from ihlab.errors import ConfigError
from ihlab.metrics.loss_profile import PositionalLoss
from ihlab.runs.files import LOSS_BY_POSITION


@dataclass
class TokenDataConfig(DataConfig):
    """Sizes every next-token family shares, and the ICL score's target positions. A family's
    config adds `seq_len` (a field or a property): tokens per sequence."""

    batch_size: int = 64
    eval_size: int = 512
    eval_batch_size: int = 256
    probe_size: int = 32
    # Target positions of the ICL score (loss late minus loss early); None: the family's default.
    icl_early: int | None = None
    icl_late: int | None = None
    # The score averages the loss over the targets within `icl_band` of each position (clipped to
    # the context): 0 reads the two positions alone; a band trades a little locality for a much
    # smaller standard error where one position's loss is noisy (natural text).
    icl_band: int = 0

    @property
    def model_positions(self) -> int:
        return self.seq_len - 1

    @property
    def clamp_inputs(self) -> frozenset[str]:
        return frozenset({"tokens"})

    def check_sizes(self) -> None:
        """Batch sizes positive; ICL positions both or neither, in order, within the targets."""
        for key in ("batch_size", "eval_size", "eval_batch_size", "probe_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(
                    f"data.{key}={getattr(self, key)} must be positive. Fix: set data.{key} >= 1."
                )
        if self.icl_band < 0:
            raise ConfigError(
                f"data.icl_band={self.icl_band} must be >= 0 (0: the two positions alone)."
            )
        early, late, n = self.icl_early, self.icl_late, self.model_positions
        if (early is None) != (late is None):
            raise ConfigError(
                f"data.icl_early={early} and data.icl_late={late}: set both target positions of "
                "the ICL score, or neither (the data's default)."
            )
        if early is not None and not 0 <= early < late < n:
            raise ConfigError(
                f"data.icl_early={early}, data.icl_late={late}: need 0 <= early < late < {n} "
                f"(the {n} target positions; the score is loss late minus loss early)."
            )


def icl_targets(position: int, band: int, n_positions: int) -> slice:
    """The targets the ICL score averages at `position`: those within `band`, inside the context."""
    return slice(max(0, position - band), min(n_positions, position + band + 1))


class TokenSplitMetrics(SplitMetrics):
    """Adds the loss at every context position: the ICL score (Olsson et al.: loss at a late
    target minus loss at an early one, each averaged over the targets within `band`) and the
    loss x position x step picture."""

    def __init__(
        self, n_examples: int, n_positions: int, icl: tuple[int, int], band: int = 0
    ) -> None:
        super().__init__(n_examples, n_positions)
        self.profile = PositionalLoss(n_positions)
        early, late = icl
        self.early = icl_targets(early, band, n_positions)
        self.late = icl_targets(late, band, n_positions)

    def update(self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor) -> None:
        super().update(batch, logits, targets, token_loss)
        self.profile.update(token_loss)

    def compute(self) -> dict[str, Tensor]:
        profile = self.profile.compute()  # (pos,)
        icl = profile[self.late].mean() - profile[self.early].mean()
        return {**super().compute(), "icl_score": icl}

    def rows(self) -> dict[str, Tensor]:
        return {**super().rows(), LOSS_BY_POSITION: self.profile.compute()}

    def terms(
        self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor
    ) -> dict[str, Terms]:
        late, early = token_loss[:, self.late], token_loss[:, self.early]  # (seq, band)
        icl = (late.mean(dim=1) - early.mean(dim=1)).detach().double()  # (seq,)
        return {
            **super().terms(batch, logits, targets, token_loss),
            "icl_score": (icl, icl * 0 + 1),
        }


class TokenFamily(DataFamily):
    """A next-token family: batches hold "tokens" (batch, seq); "ids" are the tokens the model
    reads."""

    eval_splits = ("eval",)

    def model_inputs(self, batch: Batch) -> Batch:
        return {"tokens": batch["tokens"][:, :-1]}

    def loss_positions(self, batch: Batch, logits: Tensor) -> tuple[Tensor, Tensor]:
        return logits, batch["tokens"][:, 1:]  # (batch, pos, vocab), (batch, pos)

    def default_icl_positions(self) -> tuple[int, int]:
        """(early, late) target positions of the ICL score when the config sets none."""
        n = self.cfg.model_positions
        return n // 10, n - 1

    def icl_positions(self) -> tuple[int, int]:
        if self.cfg.icl_early is None:
            return self.default_icl_positions()
        return self.cfg.icl_early, self.cfg.icl_late

    def split_metrics(self) -> SplitMetrics:
        n = self.cfg.model_positions
        return TokenSplitMetrics(self.pca_examples, n, self.icl_positions(), self.cfg.icl_band)

    def table_columns(self) -> dict[str, list[str]]:
        positions = [f"pos{i}" for i in range(self.cfg.model_positions)]
        return {**super().table_columns(), LOSS_BY_POSITION: positions}
