"""The offline simulation: the sequential experiment beats a uniform A/B test on regret."""

from __future__ import annotations

import numpy as np
import pytest

import pytyche as pt
from pytyche.sequential import simulate_sequential

FIT = {"n_draws": 40, "n_trees_mu": 20, "n_trees_tau": 10, "n_warmstart": 5, "num_threads": 1}


@pytest.fixture(scope="module")
def result():
    return simulate_sequential(
        "segmented", arms=("control", "A", "B"), rounds=3, schedule=1_000, seed=0, fit_options=FIT
    )


def test_sequential_regret_is_lower_than_uniform(result):
    final = result["cumulative_regret"].isel(round=-1)
    sequential, uniform = float(final.sel(policy="sequential")), float(final.sel(policy="uniform"))
    thompson = float(final.sel(policy="thompson"))
    print(
        f"cumulative regret after 3 rounds of 1,000: sequential {sequential:.1f}, "
        f"non-segmented Thompson {thompson:.1f}, uniform {uniform:.1f}; "
        f"margin vs uniform {uniform - sequential:.1f} ({1 - sequential / uniform:.1%})"
    )
    assert sequential < uniform


def test_simulation_bookkeeping(result):
    assert result["visitors"].values.tolist() == [1_000] * 3
    regret = result["regret"].values
    assert (regret >= 0).all()
    np.testing.assert_allclose(result["cumulative_regret"].values, np.cumsum(regret, axis=1))
    # Regret per visitor = oracle - served.
    np.testing.assert_allclose(
        result["regret_per_visitor"].values,
        result["oracle_metric"].values - result["served_metric"].values,
        rtol=1e-9,
    )
    share = result["best_arm_share"].values
    assert np.nanmin(share) >= 0 and np.nanmax(share) <= 1
    # Uniform serves each true best arm about a third of the time.
    assert abs(np.nanmean(share[2]) - 1 / 3) < 0.06
    # The next plan's off-policy estimate exists for the adaptive policies, not the baseline.
    ope = result["ope_estimate"]
    assert np.isfinite(ope.sel(policy=["sequential", "thompson"]).isel(round=[0, 1])).all()
    assert np.isnan(ope.sel(policy="uniform")).all()
    assert np.isfinite(result["ope_true"].sel(policy="sequential").isel(round=[0, 1])).all()


def test_regret_plot(result):
    import matplotlib  # a test dependency

    matplotlib.use("Agg")
    ax = pt.plot.regret(result)
    assert [line.get_label() for line in ax.get_lines()] == ["sequential", "thompson", "uniform"]
    matplotlib.pyplot.close(ax.figure)
