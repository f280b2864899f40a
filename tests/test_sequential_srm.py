"""Sample ratio mismatch: false alarms under correct assignment, power against a 2-point shift."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import chi2

from pytyche.sequential import srm_test

# (cell, arm) probabilities of a plan: control cell 5% on control, explore 5% uniform over 3
# arms, optimized 90% split 0.2 / 0.5 / 0.3.
PLAN = np.array([[0.05, 0.0, 0.0], [0.05 / 3] * 3, [0.9 * 0.2, 0.9 * 0.5, 0.9 * 0.3]])


def tables(counts: np.ndarray, probabilities: np.ndarray, n: int):
    dims = ("round", "cell", "arm")
    rounds = counts.shape[0]
    expected = np.broadcast_to(probabilities * n, counts.shape)
    coords = {"round": np.arange(rounds)}
    return (
        xr.DataArray(counts, dims=dims, coords=coords),
        xr.DataArray(expected, dims=dims, coords=coords),
    )


def test_false_alarm_rate_under_correct_assignment():
    rng = np.random.default_rng(0)
    n, rounds = 10_000, 1_000
    counts = rng.multinomial(n, PLAN.ravel(), size=rounds).reshape(rounds, 3, 3)
    result = srm_test(*tables(counts, PLAN, n), threshold=0.001)
    rate = float(result["flagged"].mean())
    print(f"false-alarm rate at p < 0.001 over {rounds} rounds: {rate:.4f}")
    assert rate < 0.005
    # Zero-probability cells are skipped: 7 kept cells, 6 degrees of freedom per round.
    assert (result["dof"] == 6).all()
    # p-values are about uniform: a fifth of them below 0.2.
    assert 0.16 < float((result["p_value"] < 0.2).mean()) < 0.24


def test_two_point_shift_at_50k_visitors_is_flagged():
    rng = np.random.default_rng(1)
    n, rounds = 50_000, 100
    shifted = PLAN.copy()
    shifted[2, 1] += 0.02  # arm A gains 2 points of traffic, taken from B
    shifted[2, 2] -= 0.02
    counts = rng.multinomial(n, shifted.ravel(), size=rounds).reshape(rounds, 3, 3)
    result = srm_test(*tables(counts, PLAN, n))
    print(f"flagged {int(result['flagged'].sum())} of {rounds} shifted rounds")
    assert bool(result["flagged"].all())
    assert bool(result["pooled_flagged"])


def test_statistic_matches_a_naive_chi_square_and_pools_rounds():
    observed = np.array([[[30, 0, 2], [40, 60, 70]], [[25, 1, 0], [50, 50, 50]]], dtype=float)
    expected = np.array([[[33, 1, 1], [45, 55, 67]], [[30, 0.5, 0.5], [45, 50, 50]]])
    result = srm_test(*tables(observed, expected, 1))
    naive = []
    for r in range(2):
        keep = expected[r] >= 5
        naive.append(((observed[r][keep] - expected[r][keep]) ** 2 / expected[r][keep]).sum())
    np.testing.assert_allclose(result["statistic"], naive)
    np.testing.assert_allclose(result["p_value"], chi2.sf(naive, [3, 3]))
    assert float(result["pooled_statistic"]) == pytest.approx(sum(naive))
    assert int(result["pooled_dof"]) == 6


def test_threshold_is_checked():
    observed, expected = tables(np.ones((1, 3, 3)), PLAN, 9)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 2\.0"):
        srm_test(observed, expected, threshold=2)
