"""Fixed-price revenue: every converter pays the same, so a hurdle fit's value is a constant."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import pytyche as pt

TINY = {"n_draws": 12, "n_trees_mu": 10, "n_trees_tau": 5, "num_threads": 1, "progress": False}
PRICE = 9.99


def fixed_price_data(seed: int = 0):
    """Two arms of 200 visitors, about 20 converters each (25 in A), all paying 9.99."""
    rng = np.random.default_rng(seed)
    tables = {}
    for arm, converters in (("control", 20), ("A", 25)):
        paid = np.zeros(200)
        paid[rng.choice(200, converters, replace=False)] = PRICE
        # Two covariates: stochtree cannot serialize (max_train_visitors) a one-covariate fit.
        x, z = rng.normal(size=200), rng.integers(0, 3, 200).astype(float)
        tables[arm] = pd.DataFrame({"x": x, "z": z, "revenue": paid})
    return pt.observed_data(tables, outcome="revenue")


def test_check_setup_notes_the_fixed_price_without_a_problem():
    report = pt.check_setup(fixed_price_data(), family="hurdle")
    assert report.ok and report.conversions == {"control": 20, "A": 25}
    (note,) = report.notes
    assert "every converter's outcome is 9.99 (a fixed price)" in note
    assert "note: every converter's outcome is 9.99" in str(report)
    assert "Notes:" in report._repr_html_()
    # Prices that vary are no note.
    from pytyche.setup_check import fixed_value

    assert fixed_value(np.array([0.0, 9.99, 5.0])) is None
    assert not pt.check_setup(
        pt.simulate_experiment(300, family="hurdle")[0], family="hurdle"
    ).notes


@pytest.mark.parametrize("max_train_visitors", [None, 300])
def test_a_fixed_price_fit_has_that_value_everywhere(max_train_visitors):
    observed = fixed_price_data()
    result = pt.fit(
        observed,
        family="hurdle",
        correction=None,
        max_train_visitors=max_train_visitors,
        seed=1,
        **TINY,
    )
    ds = result.dataset
    assert ds["value"].dtype == np.float32 and ds["value"].dims == ds["conversion"].dims
    np.testing.assert_array_equal(ds["value"].values, np.float32(PRICE))
    np.testing.assert_allclose(
        result.metric().values, ds["conversion"].values * np.float32(PRICE), rtol=1e-6
    )
    info = json.loads(ds.attrs["pytyche_fit"])
    assert info["constant_value"] == PRICE and info["train_converters"] == 0
    # The conversion part is a real fit: its posterior mean per arm near the observed rate.
    rates = ds["conversion"].mean(("visitor", "draw")).values
    assert np.all(np.abs(rates - [0.1, 0.125]) < 0.05)


def test_the_doubly_robust_correction_keeps_the_fixed_price():
    observed = fixed_price_data(seed=2)
    corrected = pt.fit(observed, family="hurdle", seed=3, **TINY)  # doubly robust by default
    assert corrected.correction["method"] == "doubly_robust"
    ds = corrected.dataset
    # value' = ψ / conversion' and ψ = 9.99 × conversion' when every converter paid 9.99.
    np.testing.assert_allclose(ds["value"].values, PRICE, rtol=1e-5)
    metric = corrected.metric().values
    np.testing.assert_allclose(metric, ds["conversion"].values * PRICE, rtol=1e-5)
    assert np.isfinite(metric).all()
