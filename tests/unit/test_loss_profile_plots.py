"""The loss over log context index and its derivative (ihlab-compare's loss_by_position.png): a
loss exactly linear in ln(index) has that slope everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from ihlab.compare.loss_pca import log_index_profile


def test_a_loss_linear_in_log_index_has_its_slope_in_every_bin() -> None:
    index = np.arange(1, 512 + 1)  # token index of targets 0..511
    losses = np.stack([5.0 - 0.3 * np.log(index), np.full(512, 4.0)])  # (steps, positions)
    centres, (binned, slope) = log_index_profile(losses, bins=24)
    assert centres[0] == pytest.approx(1.0) and centres[-1] < 513
    np.testing.assert_allclose(binned[0], 5.0 - 0.3 * np.log(centres), atol=1e-12)
    np.testing.assert_allclose(slope[0], -0.3, atol=1e-9)
    np.testing.assert_allclose(slope[1], 0.0, atol=1e-12)
