"""In-context Markov chains (Edelman et al. 2024, "The evolution of statistical induction heads").

Every sequence comes from its own Markov chain over `n_states` states: each row of its transition
matrix is drawn from Dirichlet(alpha), the first state uniformly. No fixed statistics carry over
from one sequence to the next, so the only way to predict well is to estimate the chain from the
sequence so far: the Bayes-optimal predictor under this prior is the in-context bigram estimate

    p(next = j | x_0..x_t) = (count(x_t -> j) + alpha) / (count(x_t -> .) + n_states alpha).

Models pass through stages: the uniform guess (loss ln n_states), the in-context unigram estimate
(counts of each state so far), and the bigram solution ("statistical induction heads": a layer-0
previous-token head and a layer-1 head attending to positions whose predecessor equals the current
token). Each evaluation logs the losses of those three predictors on the same sequences, the
model's KL divergence from the unigram and bigram predictors, and its excess loss over the bigram
one, so the stages show on one plot.

With `prior=doubly_stochastic` every chain's rows and columns sum to 1 (a Dirichlet matrix made
doubly stochastic by Sinkhorn balancing), so every state is equally frequent in the long run and
the unigram statistics carry no information.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from ihlab.choices import Choice
from ihlab.data.base import Batch, LearningTime, SplitMetrics, Terms, register_family
from ihlab.data.tokens import TokenDataConfig, TokenFamily, TokenSplitMetrics
from ihlab.errors import ConfigError
from ihlab.model import ModelIO

SINKHORN_ITERATIONS = 100


class ChainPrior(Choice):
    dirichlet = "dirichlet"  # rows ~ Dirichlet(alpha)
    doubly_stochastic = "doubly_stochastic"  # ... balanced so that columns sum to 1 too


@dataclass
class MarkovConfig(TokenDataConfig):
    """Sequences of `seq_len` states from per-sequence random Markov chains."""

    n_states: int = 5
    seq_len: int = 100
    alpha: float = 1.0  # Dirichlet concentration of each transition row
    prior: ChainPrior = ChainPrior.dirichlet
    eval_size: int = 1024

    def __post_init__(self) -> None:
        if self.n_states < 2:
            raise ConfigError(
                f"data.n_states={self.n_states} must be at least 2: one state leaves nothing to "
                "predict. Fix: raise data.n_states."
            )
        if self.seq_len < 3:
            raise ConfigError(
                f"data.seq_len={self.seq_len} must be at least 3: a chain needs transitions to "
                "learn from. Fix: raise data.seq_len."
            )
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(
                f"data.alpha={self.alpha} must be a finite number > 0 (the Dirichlet "
                "concentration). Fix: e.g. data.alpha=1."
            )
        self.check_sizes()


def transition_matrices(cfg: MarkovConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k, k) row-stochastic matrices from the prior."""
    k = cfg.n_states
    matrices = rng.dirichlet(np.full(k, cfg.alpha), size=(n, k))  # (n, k, k)
    if cfg.prior == ChainPrior.doubly_stochastic:
        for _ in range(SINKHORN_ITERATIONS):
            matrices /= matrices.sum(axis=1, keepdims=True)  # columns
            matrices /= matrices.sum(axis=2, keepdims=True)  # rows
    return matrices


def sample_chains(cfg: MarkovConfig, n: int, g: torch.Generator) -> Tensor:
    """(n, seq_len) state sequences, each from its own chain, drawn with `g`."""
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))
    matrices = transition_matrices(cfg, n, rng)  # (n, k, k)
    cumulative = matrices.cumsum(axis=2)  # (n, k, k)
    states = np.empty((n, cfg.seq_len), dtype=np.int64)
    states[:, 0] = rng.integers(cfg.n_states, size=n)
    draws = rng.random((n, cfg.seq_len - 1))  # (n, seq - 1)
    rows = np.arange(n)
    for t in range(1, cfg.seq_len):
        row = cumulative[rows, states[:, t - 1]]  # (n, k)
        states[:, t] = np.minimum((row < draws[:, t - 1, None]).sum(axis=1), cfg.n_states - 1)
    return torch.from_numpy(states)


def in_context_predictors(tokens: Tensor, n_states: int, alpha: float) -> dict[str, Tensor]:
    """Log-probabilities of the next state at every position but the last, (batch, pos, k), of
    the in-context unigram estimate (counts of each state so far) and the Bayes bigram estimate
    (counts of transitions out of the current state so far), both with Dirichlet(alpha) pseudo-
    counts."""
    k = n_states
    seen = torch.nn.functional.one_hot(tokens[:, :-1], k).double()  # (b, pos, k) x_t
    unigram = seen.cumsum(dim=1)  # (b, pos, k) counts of x_0..x_t
    moves = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, k, k, dtype=torch.float64)
    moves[:, 1:] = seen[:, :-1, :, None] * seen[:, 1:, None, :]  # (b, pos, k, k) x_{t-1} -> x_t
    bigram = moves.cumsum(dim=1)  # (b, pos, from, to) transitions among x_0..x_t
    from_current = (bigram * seen[..., None]).sum(dim=2)  # (b, pos, k) out of x_t
    return {
        "unigram": ((unigram + alpha) / (unigram + alpha).sum(-1, keepdim=True)).log(),
        "bigram": ((from_current + alpha) / (from_current + alpha).sum(-1, keepdim=True)).log(),
    }


class MarkovSplitMetrics(TokenSplitMetrics):
    """Adds the uniform, unigram and bigram predictors' losses, the model's KL divergence from
    the last two (KL(predictor || model), the model's excess loss were the predictor true), and
    its excess loss over the bigram predictor."""

    def __init__(self, n_examples: int, cfg: MarkovConfig, icl: tuple[int, int]) -> None:
        super().__init__(n_examples, cfg.model_positions, icl, cfg.icl_band)
        self.n_states, self.alpha = cfg.n_states, cfg.alpha
        names = ("loss_unigram", "loss_bigram", "kl_unigram", "kl_bigram")
        self.predictors = torch.nn.ModuleDict({name: MeanMetric() for name in names})

    def update(self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor) -> None:
        super().update(batch, logits, targets, token_loss)
        model = logits.double().log_softmax(dim=-1)  # (b, pos, k)
        for name, predictor in in_context_predictors(
            batch["tokens"].to(logits.device), self.n_states, self.alpha
        ).items():
            loss = -predictor.gather(-1, targets[..., None])[..., 0]  # (b, pos)
            kl = (predictor.exp() * (predictor - model)).sum(dim=-1)  # (b, pos)
            self.predictors[f"loss_{name}"].update(loss)
            self.predictors[f"kl_{name}"].update(kl)

    def compute(self) -> dict[str, Tensor]:
        out = super().compute()
        out.update({name: metric.compute() for name, metric in self.predictors.items()})
        out["loss_uniform"] = torch.tensor(math.log(self.n_states))
        out["excess_loss"] = out["loss"] - out["loss_bigram"]
        return out

    def terms(
        self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor
    ) -> dict[str, Terms]:
        out = super().terms(batch, logits, targets, token_loss)
        loss, count = out["loss"]
        model = logits.detach().double().log_softmax(dim=-1)  # (b, pos, k)
        for name, predictor in in_context_predictors(
            batch["tokens"].to(logits.device), self.n_states, self.alpha
        ).items():
            nll = -predictor.gather(-1, targets[..., None])[..., 0]  # (b, pos)
            kl = (predictor.exp() * (predictor - model)).sum(dim=-1)  # (b, pos)
            out[f"loss_{name}"] = (nll.sum(dim=1), count)
            out[f"kl_{name}"] = (kl.sum(dim=1), count)
        out["loss_uniform"] = (count * math.log(self.n_states), count)
        out["excess_loss"] = (loss - out["loss_bigram"][0], count)
        return out


@register_family("markov", MarkovConfig)
class MarkovChains(TokenFamily):
    """In-context Markov chains: batches hold "tokens" (batch, seq_len) and "ids"."""

    def __init__(self, cfg: MarkovConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self.io = ModelIO(n_ctx=cfg.seq_len, d_vocab=cfg.n_states, d_vocab_out=cfg.n_states)

    def sample(self, split: str, n: int, g: torch.Generator) -> Batch:
        tokens = sample_chains(self.cfg, n, g)
        return {"tokens": tokens, "ids": tokens[:, :-1]}

    @cached_property
    def reference_losses(self) -> dict[str, float]:
        """The unigram and bigram predictors' mean losses on the evaluation set."""
        tokens = self.eval_sets["eval"]["tokens"]
        targets = tokens[:, 1:, None]
        predictors = in_context_predictors(tokens, self.cfg.n_states, self.cfg.alpha)
        return {k: float(-p.gather(-1, targets).mean()) for k, p in predictors.items()}

    def learning_time(self) -> LearningTime:
        """The model has the bigram solution once its excess loss over the bigram predictor is
        below 10% of the unigram predictor's (on the evaluation set): 90% of the way from the
        unigram stage to the bigram one. Phase changes are read on the unsmoothed curve (a kernel
        of one evaluation): the uniform-to-unigram stage lasts about ten evaluations, and the
        default kernel, 2% of the evaluations, smears it into the start of a long run."""
        gap = self.reference_losses["unigram"] - self.reference_losses["bigram"]
        return LearningTime("eval/excess_loss", 0.1 * gap, smooth_frac=0.0)

    def split_metrics(self) -> SplitMetrics:
        return MarkovSplitMetrics(self.pca_examples, self.cfg, self.icl_positions())
