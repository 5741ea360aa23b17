"""Singh et al.'s toy model of interacting subcircuits, against cases solved by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ihlab.theory.figure import draw, measured_curves
from ihlab.theory.subcircuits import Problem, draw_problem, gradients, loss, solve, solve_conditions


def scalar_problem() -> Problem:
    """d = 1, every target 1, every start 0.5."""
    one, half = np.ones(1), np.full(1, 0.5)
    return Problem({v: one for v in "abc"}, {v: half for v in "abc"})


def test_two_steps_of_gradient_descent_by_hand() -> None:
    # L = (1 - abc)^2 / 2; dL/da = -(1 - abc) bc. At 0.5: L = 0.875^2 / 2, dL/da = -0.21875,
    # so a, b, c all step to 0.71875.
    t = solve(scalar_problem(), iters=2)
    assert t.loss[0] == pytest.approx(0.875**2 / 2, abs=1e-15)
    assert t.loss[1] == pytest.approx((1 - 0.71875**3) ** 2 / 2, abs=1e-15)
    assert t.misalignment[0] == pytest.approx(0.0, abs=1e-15)  # in 1-d every a is aligned


def test_with_b_and_c_clamped_a_relaxes_exponentially() -> None:
    """a_t = a* + (1 - k)^t (a0 - a*), k = |b*|^2 |c*|^2 / N, so
    L_t = (k / 2) (1 - k)^(2t) |a0 - a*|^2: no plateau."""
    p = draw_problem(dim=5, seed=3)
    tb, tc, ta = (p.targets[v] for v in "bca")
    k = (tb @ tb) * (tc @ tc) / 125
    t = solve(p, clamped=("b", "c"), iters=50)
    gap = p.initial["a"] - ta
    expected = k / 2 * (1 - k) ** (2 * np.arange(50)) * (gap @ gap)
    np.testing.assert_allclose(t.loss, expected, rtol=1e-10)
    # b and c right: the second progress measure is the loss itself (a's sign agrees with a*)
    assert t.loss_if_bc_right[-1] == pytest.approx(t.loss[-1], rel=1e-10)


def test_loss_matches_the_closed_form_and_gradients_the_finite_differences() -> None:
    p = draw_problem(dim=4, seed=0)
    x = {v: np.random.default_rng(9).standard_normal(4) for v in "abc"}
    sq = np.prod([x[v] @ x[v] for v in "abc"])
    sq_t = np.prod([p.targets[v] @ p.targets[v] for v in "abc"])
    overlap = np.prod([x[v] @ p.targets[v] for v in "abc"])
    assert loss(p, x) == pytest.approx((sq_t - 2 * overlap + sq) / (2 * 64), rel=1e-12)
    grads, eps = gradients(p, x), 1e-6
    for v in "abc":
        for i in range(4):
            up = {**x, v: x[v] + eps * np.eye(4)[i]}
            down = {**x, v: x[v] - eps * np.eye(4)[i]}
            numeric = (loss(p, up) - loss(p, down)) / (2 * eps)
            assert grads[v][i] == pytest.approx(numeric, rel=1e-6, abs=1e-12)


def test_clamped_vectors_sit_at_their_targets_from_the_start() -> None:
    p = draw_problem(dim=6, seed=2)
    t = solve(p, clamped=("a",), iters=1)
    expected = loss(p, {"a": p.targets["a"], "b": p.initial["b"], "c": p.initial["c"]})
    assert t.loss[0] == pytest.approx(expected, rel=1e-12)
    assert t.misalignment[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="among"):
        solve(p, clamped=("d",))


def test_figure_5a_ordering_and_the_figure(tmp_path) -> None:
    """The paper's claim: clamping more subcircuits shortens the plateau. By iteration 400 the
    loss is ordered None > c > b, c on the paper's problem size (d = 20)."""
    runs = solve_conditions(dim=20, seed=1, iters=400)
    last = {name: t.loss[-1] for name, t in runs.items()}
    assert last["None"] > last["c"] > last["b, c"]
    out = tmp_path / "toy.png"
    draw(runs, measured_curves(tmp_path), out)  # no runs there: the toy panel alone
    assert out.stat().st_size > 0
