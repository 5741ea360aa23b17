"""Singh et al.'s toy model of interacting subcircuits (their Figure 5a and Appendix Figure 9).

Three vectors a, b, c in R^d stand for three subcircuits that must all be right, and that act
multiplicatively, for the output to be right. The model is the rank-1 tensor a (x) b (x) c; its
target T = a* (x) b* (x) c*, with a*, b*, c*, a0, b0, c0 ~ N(0, I_d) drawn independently. The loss
is half the mean squared error over the N = d^3 entries,

    L(a, b, c) = 1/(2N) sum_ijk (T_ijk - a_i b_j c_k)^2
               = 1/(2N) [ |a*|^2 |b*|^2 |c*|^2 - 2 (a.a*)(b.b*)(c.c*) + |a|^2 |b|^2 |c|^2 ],

and dL/da = [ |b|^2 |c|^2 a - (b.b*)(c.c*) a* ] / N (b and c by cycling the roles). Training is
full-batch gradient descent (step 1, 1000 iterations, all three vectors updated together); a
clamped vector is set to its target at the start and after every step, the toy analogue of
clamping a subcircuit. With b and c clamped, a relaxes exponentially with no plateau; with none
clamped the loss sits on a plateau until the three overlaps grow together.

Progress measures (Appendix Figure 9): 1 - cos^2(a, a*), and the loss a would give were b and c
right, min over s = +-1 of L(s a, b*, c*) (the sign fixes the model's a/b/c sign symmetry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VECTORS = ("a", "b", "c")
CONDITIONS: dict[str, tuple[str, ...]] = {"None": (), "c": ("c",), "b, c": ("b", "c")}


@dataclass(frozen=True)
class Problem:
    """Targets and initial vectors, each (d,)."""

    targets: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """The number of tensor entries, d^3."""
        return len(self.targets["a"]) ** 3


def draw_problem(dim: int = 20, seed: int = 1) -> Problem:
    """Targets and initial vectors ~ N(0, I_dim), independent."""
    rng = np.random.default_rng(seed)
    targets = {v: rng.standard_normal(dim) for v in VECTORS}
    initial = {v: rng.standard_normal(dim) for v in VECTORS}
    return Problem(targets, initial)


def outer(x: dict[str, np.ndarray]) -> np.ndarray:
    """(d, d, d): a (x) b (x) c."""
    return np.einsum("i,j,k->ijk", x["a"], x["b"], x["c"])


def loss(p: Problem, x: dict[str, np.ndarray]) -> float:
    """L(a, b, c), computed entry by entry (the mean above): the closed form loses the small
    losses of late training to cancellation."""
    return float(((outer(p.targets) - outer(x)) ** 2).mean() / 2)


def gradients(p: Problem, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """dL/dv for v in a, b, c."""
    out = {}
    for i, v in enumerate(VECTORS):
        others = [VECTORS[(i + 1) % 3], VECTORS[(i + 2) % 3]]
        norms = np.prod([x[o] @ x[o] for o in others])
        overlaps = np.prod([x[o] @ p.targets[o] for o in others])
        out[v] = (norms * x[v] - overlaps * p.targets[v]) / p.n
    return out


@dataclass(frozen=True)
class Trajectory:
    """Per iteration (before its update): the loss and both progress measures, each (iters,)."""

    clamped: tuple[str, ...]
    loss: np.ndarray
    misalignment: np.ndarray  # 1 - cos^2(a, a*)
    loss_if_bc_right: np.ndarray  # min_s L(s a, b*, c*)


def solve(
    p: Problem, clamped: Sequence[str] = (), lr: float = 1.0, iters: int = 1000
) -> Trajectory:
    """Gradient descent from the problem's initial vectors, `clamped` held at their targets."""
    unknown = set(clamped) - set(VECTORS)
    if unknown:
        raise ValueError(f"clamped vectors must be among {VECTORS}, got {sorted(unknown)}")
    x = {v: (p.targets[v] if v in clamped else p.initial[v]).copy() for v in VECTORS}
    losses, misaligned, if_right = (np.empty(iters) for _ in range(3))
    for i in range(iters):
        losses[i] = loss(p, x)
        a, a_star = x["a"], p.targets["a"]
        misaligned[i] = 1 - float(a @ a_star) ** 2 / (float(a @ a) * float(a_star @ a_star))
        if_right[i] = min(loss(p, {**p.targets, "a": s * a}) for s in (1.0, -1.0))
        grads = gradients(p, x)
        x = {v: p.targets[v].copy() if v in clamped else x[v] - lr * grads[v] for v in VECTORS}
    return Trajectory(tuple(clamped), losses, misaligned, if_right)


def solve_conditions(dim: int = 20, seed: int = 1, iters: int = 1000) -> dict[str, Trajectory]:
    """The paper's Figure 5a conditions (None; c; b, c) on one drawn problem."""
    p = draw_problem(dim, seed)
    return {name: solve(p, clamped, iters=iters) for name, clamped in CONDITIONS.items()}
