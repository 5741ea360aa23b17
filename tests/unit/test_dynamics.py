"""Phase-change detection on synthetic curves with planted (or no) transitions."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest

from ihlab.metrics.dynamics import detect_phase_change, learning_time

HORIZON = 10_000
STEPS = np.arange(0, HORIZON + 1, 50)  # 201 evaluations


def planted(t0: float, width: float, noise: float, seed: int) -> np.ndarray:
    """A loss with a fast convex start, an ln 2 plateau and a sigmoid drop centred at t0."""
    rng = np.random.default_rng(seed)
    start = 0.8 * np.exp(-STEPS / 200)  # the quick fall onto the plateau
    drop = 0.65 / (1 + np.exp((STEPS - t0) / width))  # 0.65 above the floor before t0
    return 0.04 + drop + start + noise * rng.standard_normal(len(STEPS))


SMOOTH_SD = 0.02 * len(STEPS) * 50  # the detector's kernel: 2% of the 201 points, in steps


@functools.cache
def expected_transition(t0: float, width: float) -> tuple[float, float, float]:
    """Onset, steepest point and end of a sigmoid drop centred at t0, worked out independently:
    the smoothed curve's rate of decrease is the sigmoid's (a logistic density of scale `width`)
    convolved with the Gaussian kernel; onset and end are where it falls to 20% of its peak."""
    u = np.arange(-4000.0, 4001.0)  # steps from t0
    e = np.exp(-np.abs(u) / width)  # the density is symmetric; |u| keeps exp from overflowing
    density = e / (width * (1 + e) ** 2)
    v = np.arange(-5 * SMOOTH_SD, 5 * SMOOTH_SD + 1)
    kernel = np.exp(-0.5 * (v / SMOOTH_SD) ** 2)
    rate = np.convolve(density, kernel / kernel.sum(), mode="same")
    inside = np.flatnonzero(rate >= 0.2 * rate.max())
    return t0 + u[inside[0]], t0 + u[np.argmax(rate)], t0 + u[inside[-1]]


def test_the_expected_transition_of_a_bare_sigmoid() -> None:
    # Without smoothing the rate falls to 20% where cosh(u / 2w) = sqrt(5): u = -+2.887 w; the
    # kernel (s.d. 200 steps) widens that to -+577 for w = 150; a tiny width leaves the kernel's
    # own 20% points, -+sqrt(2 ln 5) x 200 = -+359.
    assert 2 * np.arccosh(np.sqrt(5)) == pytest.approx(2.887, abs=1e-3)
    assert expected_transition(5000, 150) == pytest.approx((4423, 5000, 5577), abs=1)
    assert expected_transition(5000, 5) == pytest.approx((4641, 5000, 5359), abs=2)


@pytest.mark.parametrize(("t0", "width"), [(2000, 150), (4500, 150), (7000, 150), (4500, 300)])
def test_a_clean_planted_transition_is_found_to_one_evaluation(t0: int, width: float) -> None:
    """Onset, steepest point and end within 50 steps (the evaluation spacing) of where they are,
    far less than the onset-to-steepest distance (577 steps at width 150, 950 at 300): an onset
    moved by one evaluation too many, or reported at the steepest point, fails."""
    found = detect_phase_change(STEPS, planted(t0, width, 0.0, 0))
    assert found.detected, found.reason
    onset, steepest, end = expected_transition(t0, width)
    assert onset - 50 <= found.onset <= onset  # the last evaluation below 20% before the peak
    assert end <= found.end <= end + 50  # the first one after it
    assert found.steepest == steepest
    sigmoid = 0.65 / (1 + np.exp((np.array([found.onset, found.end]) - t0) / width))
    assert found.drop == pytest.approx(sigmoid[0] - sigmoid[1], abs=0.03)  # smoothed: a bit less
    assert found.noise < 1e-3


@pytest.mark.parametrize("t0", [2000, 4500, 7000])
@pytest.mark.parametrize(("noise", "tolerance"), [(0.02, 100), (0.05, 200)])
@pytest.mark.parametrize("seed", range(3))
def test_a_noisy_planted_transition_is_found_within_a_few_evaluations(
    t0: int, noise: float, tolerance: int, seed: int
) -> None:
    """With noise the points move by a few evaluations: 2 (noise 0.02) or 4 (0.05), still well
    inside the 577 steps between onset and steepest point."""
    width = 150.0
    found = detect_phase_change(STEPS, planted(t0, width, noise, seed))
    assert found.detected, found.reason
    onset, steepest, end = expected_transition(t0, width)
    assert abs(found.onset - onset) <= tolerance
    assert abs(found.steepest - steepest) <= tolerance
    assert abs(found.end - end) <= tolerance
    assert found.drop == pytest.approx(0.62, abs=0.06)  # clean: 0.65 x (0.979 - 0.021)
    assert found.noise == pytest.approx(noise, rel=0.3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", [0.01, 0.1])
def test_a_flat_noisy_curve_has_none(seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    found = detect_phase_change(STEPS, 0.69 + noise * rng.standard_normal(len(STEPS)))
    assert found.detected is False and found.onset is None and found.steepest is None
    assert found.reason and found.method == "peak-slope"
    assert found.noise == pytest.approx(noise, rel=0.25)  # the robust s.d. is reported


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
    """A curve that falls fastest at its start has no plateau before a drop: "no phase change",
    for that reason, with no step invented."""
    rng = np.random.default_rng(seed)
    found = detect_phase_change(STEPS, curve(STEPS) + 0.01 * rng.standard_normal(len(STEPS)))
    assert not found.detected, (found.onset, found.steepest, found.end)
    assert (found.onset, found.steepest, found.end, found.drop) == (None, None, None, None)
    assert found.reason.startswith("falls fastest from the start (convex decay)")


def test_too_short_or_rising_curves_say_why() -> None:
    assert "points" in detect_phase_change([0, 1, 2], [1.0, 0.5, 0.1]).reason
    rising = detect_phase_change(STEPS, STEPS / HORIZON)
    assert not rising.detected and "never decreases" in rising.reason


def test_eight_points_are_enough_and_seven_are_not() -> None:
    """A step from 1 to 0 halfway: with 8 evaluations the drop is found around the step."""
    seven = detect_phase_change(range(0, 700, 100), [1.0] * 3 + [0.0] * 4)
    assert seven.detected is False and seven.reason == "only 7 points"
    eight = detect_phase_change(range(0, 800, 100), [1.0] * 4 + [0.0] * 4)
    assert eight.detected and eight.onset < 300 < 400 == eight.steepest < eight.end
    assert eight.drop == pytest.approx(1.0, abs=0.02)


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match=r"steps \(3\) and values \(2\) differ in length"):
        detect_phase_change([0, 1, 2], [1.0, 0.5])
    with pytest.raises(ValueError, match=r"steps \(3\) and values \(2\) differ in length"):
        learning_time([0, 1, 2], [1.0, 0.5], 0.1)


def test_shifting_or_scaling_the_curve_moves_no_step() -> None:
    """Every criterion is relative (to the curve's noise and range), so a constant offset or a
    positive scale changes the drop (scaled) and nothing else."""
    curve = planted(4500, 150, 0.02, 0)
    base = detect_phase_change(STEPS, curve)
    for shifted_curve, scale in ((curve + 10.0, 1.0), (3.0 * curve, 3.0), (0.01 * curve, 0.01)):
        found = detect_phase_change(STEPS, shifted_curve)
        assert (found.onset, found.steepest, found.end) == (base.onset, base.steepest, base.end)
        assert found.drop == pytest.approx(scale * base.drop)
        assert found.noise == pytest.approx(scale * base.noise)


def test_unevenly_spaced_steps_use_the_rate_per_step() -> None:
    """Evaluations every 50 steps, every 10 from step 5000 to 7000: the steepest point of a
    sigmoid centred at 5000 is still found at 5000 (a rate per evaluation would put it earlier,
    where evaluations are sparser)."""
    steps = np.r_[0:5000:50, 5000:7000:10, 7000:10001:50]
    curve = 0.04 + 0.65 / (1 + np.exp((steps - 5000) / 300)) + 0.8 * np.exp(-steps / 200)
    found = detect_phase_change(steps, curve)
    assert found.detected and abs(found.steepest - 5000) <= 20


def test_a_drop_counts_only_above_3_noise_and_20_percent_of_the_range() -> None:
    flat = np.full(len(STEPS), 0.7) + 0.1 / (1 + np.exp((STEPS - 5000) / 150))  # a 0.1 drop
    noise = [np.random.default_rng(seed).standard_normal(len(STEPS)) for seed in (4, 3)]
    below = detect_phase_change(STEPS, flat + 0.03 * noise[0])  # drop 2.8 x noise: none
    assert not below.detected
    assert re.fullmatch(r"every drop \(at most 0\.07\d+\) is below 3\.0 x noise .*", below.reason)
    above = detect_phase_change(STEPS, flat + 0.03 * noise[1])  # drop 3.7 x noise: found
    assert above.detected and 3 < above.drop / above.noise < 4
    assert abs(above.steepest - 5000) <= 200
    # After a fast start (range ~1.8), a 0.3 drop is under 20% of the range, a 0.6 one is not.
    start = 2.0 * np.exp(-STEPS / 200) + 0.7 + 0.005 * noise[0]
    for size, counts in ((0.3, False), (0.6, True)):
        found = detect_phase_change(STEPS, start + size / (1 + np.exp((STEPS - 5000) / 150)))
        assert found.detected is counts, found.reason
        if not counts:
            assert "every drop (at most 0.2" in found.reason and "0.2 x range 1.8" in found.reason


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
    found = detect_phase_change(STEPS, late)
    assert not found.detected and "still falling steeply at the last step" in found.reason
    broken = curve.copy()
    broken[[10, 20, 30, 40, 50, 60]] = np.nan  # six bad steps: the first five are named
    found = detect_phase_change(STEPS, broken)
    assert found.reason == "the curve has non-finite values (steps 500, 1000, 1500, 2000, 2500)"


def test_learning_time_is_the_first_step_below_threshold() -> None:
    assert learning_time([0, 10, 20], [1.0, 0.2, 0.1], 0.25) == 10
    assert learning_time([0, 10, 20], [1.0, 0.25, 0.1], 0.25) == 20  # strictly below
    singh = 0.4 * math.log(2)  # Singh et al.'s threshold, exactly at it and one float below it
    assert learning_time([100, 200, 300], [0.7, singh, 0.1], singh) == 300
    assert learning_time([100, 200, 300], [0.7, math.nextafter(singh, 0), 0.1], singh) == 200
    assert learning_time([100, 200, 300], [0.7, 0.2, 0.3], singh) == 200  # first, not last
    assert learning_time([0, 10], [1.0, 0.9], 0.25) is None
    assert learning_time([0, 10, 20], [1.0, math.nan, 0.1], 0.25) is None  # broken first
    assert learning_time([0, 10, 20], [1.0, 0.1, math.inf], 0.25) == 10  # learned, then broke


@pytest.mark.parametrize("start", [0, 6])
def test_per_token_loss_pca_recovers_a_planar_trajectory(start: int) -> None:
    """Whichever checkpoint comes first (start 6: the trajectory begins at its middle, where
    the raw SVD gives positive coordinates), the first row ends with non-positive ones."""
    from ihlab.metrics.dynamics import per_token_loss_pca

    rng = np.random.default_rng(0)
    v1, v2 = np.linalg.qr(rng.standard_normal((50, 2)))[0].T  # orthonormal directions
    t = np.roll(np.linspace(0, 1, 12), -start)
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


def test_per_token_loss_pca_of_flat_or_tiny_losses() -> None:
    from ihlab.metrics.dynamics import per_token_loss_pca

    coords, explained = per_token_loss_pca(np.full((5, 8), 0.7))  # no variance at all
    assert np.array_equal(coords, np.zeros((5, 2))) and explained.tolist() == [0.0, 0.0]
    tiny = 1e-3 * np.outer(np.arange(5.0), np.ones(8))  # all variance on one line, total < 1
    coords, explained = per_token_loss_pca(tiny)
    assert explained.tolist() == pytest.approx([1.0, 0.0], abs=1e-9)
    assert np.abs(coords[:, 0]).tolist() == pytest.approx(
        (1e-3 * np.sqrt(8) * np.abs(np.arange(5.0) - 2)).tolist()
    )
