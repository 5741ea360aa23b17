"""Phase-change detection on synthetic curves with planted (or no) transitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ihlab.dynamics import detect_phase_change, learning_time

HORIZON = 10_000
STEPS = np.arange(0, HORIZON + 1, 50)  # 201 evaluations


def planted(t0: float, width: float, noise: float, seed: int) -> np.ndarray:
    """A loss with a fast convex start, an ln 2 plateau and a sigmoid drop centred at t0."""
    rng = np.random.default_rng(seed)
    start = 0.8 * np.exp(-STEPS / 200)  # the quick fall onto the plateau
    drop = 0.65 / (1 + np.exp((STEPS - t0) / width))  # 0.65 above the floor before t0
    return 0.04 + drop + start + noise * rng.standard_normal(len(STEPS))


@pytest.mark.parametrize("t0", [2000, 4500, 7000])
@pytest.mark.parametrize("noise", [0.0, 0.02, 0.05])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_planted_transition_is_found_within_5_percent(t0: int, noise: float, seed: int) -> None:
    width = 150.0
    found = detect_phase_change(STEPS, planted(t0, width, noise, seed))
    assert found.detected, found.reason
    tolerance = 0.05 * HORIZON
    # onset / end: where the sigmoid's rate is 20% of its peak, t0 -+ 2.94 width
    assert abs(found.steepest - t0) <= tolerance
    assert abs(found.onset - (t0 - 2.94 * width)) <= tolerance
    assert abs(found.end - (t0 + 2.94 * width)) <= tolerance
    assert found.drop == pytest.approx(0.65, abs=0.15)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", [0.01, 0.1])
def test_a_flat_noisy_curve_has_none(seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    found = detect_phase_change(STEPS, 0.69 + noise * rng.standard_normal(len(STEPS)))
    assert not found.detected and found.onset is None and found.steepest is None
    assert found.reason


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "curve",
    [
        lambda t: 2.0 * np.exp(-t / 1500) + 0.1,  # exponential decay
        lambda t: 3.0 * (1 + t / 100) ** -0.5,  # power law
        lambda t: 1.0 - t / HORIZON,  # a straight line
    ],
)
def test_monotone_convex_curves_have_none(curve, seed: int) -> None:
    rng = np.random.default_rng(seed)
    found = detect_phase_change(STEPS, curve(STEPS) + 0.01 * rng.standard_normal(len(STEPS)))
    assert not found.detected, (found.onset, found.steepest, found.end)


def test_too_short_or_rising_curves_say_why() -> None:
    assert "points" in detect_phase_change([0, 1, 2], [1.0, 0.5, 0.1]).reason
    rising = detect_phase_change(STEPS, STEPS / HORIZON)
    assert not rising.detected and "never decreases" in rising.reason


def test_a_curve_with_non_finite_values_is_refused_and_a_drop_at_the_end_not_invented() -> None:
    curve = planted(4500, 150, 0.02, 0)
    assert detect_phase_change(STEPS, curve).detected
    for bad in (np.nan, np.inf):
        broken = curve.copy()
        broken[[70, 140]] = bad  # steps 3500 and 7000
        found = detect_phase_change(STEPS, broken)
        assert not found.detected and found.onset is None
        assert found.reason == "the curve has non-finite values (steps 3500, 7000)"
    late = planted(HORIZON - 50, 150, 0.0, 0)
    assert not detect_phase_change(STEPS, late).detected


def test_learning_time_is_the_first_step_below_threshold() -> None:
    assert learning_time([0, 10, 20], [1.0, 0.2, 0.1], 0.25) == 10
    assert learning_time([0, 10, 20], [1.0, 0.25, 0.1], 0.25) == 20  # strictly below
    assert learning_time([0, 10], [1.0, 0.9], 0.25) is None
    assert learning_time([0, 10, 20], [1.0, math.nan, 0.1], 0.25) is None  # broken first
    assert learning_time([0, 10, 20], [1.0, 0.1, math.inf], 0.25) == 10  # learned, then broke


def test_per_token_loss_pca_recovers_a_planar_trajectory() -> None:
    from ihlab.dynamics import per_token_loss_pca

    rng = np.random.default_rng(0)
    v1, v2 = np.linalg.qr(rng.standard_normal((50, 2)))[0].T  # orthonormal directions
    t = np.linspace(0, 1, 12)
    a, b = 3 * t, np.where(t > 0.5, 2 * (t - 0.5), 0.0)  # a trajectory with a turn at t = 0.5
    losses = 2.0 + np.outer(a, v1) + np.outer(b, v2)  # (checkpoints, examples)
    coords, explained = per_token_loss_pca(losses)
    assert coords.shape == (12, 2) and explained.sum() == pytest.approx(1.0)
    assert (coords[0] <= 0).all()
    centred = np.stack([a - a.mean(), b - b.mean()], axis=1)
    gram = centred @ centred.T  # distances between checkpoints are what PCA keeps
    assert np.allclose(coords @ coords.T, gram, atol=1e-9)


def test_example_loss_takes_one_fixed_position_per_example_in_order() -> None:
    import torch

    from ihlab.metrics.loss_profile import ExampleLoss

    metric = ExampleLoss(n_examples=5, n_positions=4, seed=0)
    losses = torch.arange(28, dtype=torch.float32).view(7, 4)  # 7 examples x 4 positions
    metric.update(losses[:3])
    metric.update(losses[3:])
    expected = losses[torch.arange(5), metric.positions]
    assert torch.equal(metric.compute(), expected)
    metric.reset()
    metric.update(torch.ones(2))  # one loss per sequence (few-shot queries)
    assert metric.compute().tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
