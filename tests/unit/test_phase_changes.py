"""Several phase changes in one curve: every transition reported, the largest as the headline."""

from __future__ import annotations

import numpy as np
import pytest

from ihlab.metrics.dynamics import detect_phase_change

STEPS = np.arange(0, 6001, 20)  # 301 evaluations


def two_steps(first: tuple[float, float, float], second: tuple[float, float, float], seed: int):
    """A loss with two sigmoid drops (centre, width, size) after a flat start, plus noise."""
    rng = np.random.default_rng(seed)
    curve = np.full(len(STEPS), 1.0)
    for centre, width, size in (first, second):
        curve += size / (1 + np.exp((STEPS - centre) / width)) - size
    return curve + 0.002 * rng.standard_normal(len(STEPS))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_planted_drops_are_two_transitions_in_order(seed: int) -> None:
    # A small early drop (0.1 at step 1000) and a larger late one (0.3 at step 4000): the
    # stages uniform -> unigram -> bigram of an in-context Markov chain.
    found = detect_phase_change(STEPS, two_steps((1000, 60, 0.1), (4000, 80, 0.3), seed))
    assert found.detected and len(found.transitions) == 2
    early, late = found.transitions
    # The steepest points are where the drops are centred (within one evaluation), and each
    # transition's window contains its own centre and not the other's.
    assert abs(early.steepest - 1000) <= 20 and abs(late.steepest - 4000) <= 20
    assert early.onset < 1000 < early.end < late.onset < 4000 < late.end
    assert early.drop == pytest.approx(0.1, abs=0.02) and late.drop == pytest.approx(0.3, abs=0.03)
    headline = (found.onset, found.steepest, found.end, found.drop)
    assert headline == (late.onset, late.steepest, late.end, late.drop)  # the largest drop


def test_the_headline_is_the_largest_drop_even_when_it_comes_first() -> None:
    found = detect_phase_change(STEPS, two_steps((1500, 60, 0.4), (4500, 60, 0.15), 0))
    assert [t.steepest for t in found.transitions] == pytest.approx([1500, 4500], abs=20)
    assert found.steepest == found.transitions[0].steepest


def test_a_single_drop_is_one_transition_and_a_flat_curve_none() -> None:
    one = detect_phase_change(STEPS, two_steps((3000, 60, 0.3), (3000, 60, 0.0), 0))
    assert len(one.transitions) == 1 and one.transitions[0].steepest == one.steepest
    flat = detect_phase_change(STEPS, two_steps((3000, 60, 0.0), (3000, 60, 0.0), 0))
    assert not flat.detected and flat.transitions == []
    assert detect_phase_change(STEPS, STEPS * 0.0 + 1.0).to_dict()["transitions"] == []


def test_overlapping_stages_are_split_at_the_valley_between_them() -> None:
    """A curve that leaves one stage for the next before settling (the rate falls to ~35% of
    the peaks between them, never to 20%): two transitions, split where the rate is lowest."""
    steps = np.arange(0, 1501, 20)
    curve = two_steps_at(steps, (200, 25, 0.12), (420, 45, 0.2))
    rate = -np.gradient(curve, steps)
    between = (steps > 200) & (steps < 420)
    valley = steps[between][np.argmin(rate[between])]  # where the rate is lowest, by hand
    assert 0.2 < rate[between].min() / rate.max() < 0.5  # overlapping, by construction
    found = detect_phase_change(steps, curve)
    assert [t.steepest for t in found.transitions] == pytest.approx([200, 420], abs=20)
    first, second = found.transitions
    assert abs(first.end - valley) <= 20 and abs(second.onset - valley) <= 20
    unsplit = detect_phase_change(steps, curve, split_frac=0.0)
    assert len(unsplit.transitions) < 2


def two_steps_at(steps: np.ndarray, *drops: tuple[float, float, float]) -> np.ndarray:
    """Noise-free: 1 minus sigmoid drops (centre, width, size)."""
    curve = np.full(len(steps), 1.0)
    for centre, width, size in drops:
        curve += size / (1 + np.exp((steps - centre) / width)) - size
    return curve
