"""Off-policy evaluation: IPW / SNIPS / DR unbiased with known propensities; DR coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pytyche.sequential import evaluate_policy, logged_observed, sequential_experiment

ARMS = ["control", "A", "B"]
# Logging policy (known propensities) and true mean outcome, per device.
LOGGING = {"mobile": [0.2, 0.5, 0.3], "desktop": [0.5, 0.25, 0.25]}
MEAN = {"mobile": [1.0, 2.0, 0.5], "desktop": [1.0, 0.0, 3.0]}
TARGET = (
    {0: {"control": 0.1, "A": 0.8, "B": 0.1}, 1: {"B": 1.0}},
    {0: "device == 'mobile'", 1: "device == 'desktop'"},
)
# E over devices (half each) of Σ_k π(k | device) μ(device, k).
TRUE_VALUE = 0.5 * (0.1 * 1.0 + 0.8 * 2.0 + 0.1 * 0.5) + 0.5 * 3.0


def simulated_log(n, rng):
    device = rng.choice(["mobile", "desktop"], n)
    p = np.array([LOGGING[d] for d in device])
    mean = np.array([MEAN[d] for d in device])
    arm = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    rows = np.arange(n)
    y = mean[rows, arm] + rng.normal(0.0, 2.0, n)
    logged = xr.Dataset(
        coords={
            "variant": ("visitor", np.array(ARMS, dtype=object)[arm]),
            "outcome": ("visitor", y),
            "propensity": ("visitor", p[rows, arm]),
            "device": ("visitor", device.astype(object)),
        }
    )
    # A deliberately wrong outcome model: DR stays unbiased when the propensities are right.
    model = xr.DataArray(
        mean + np.array([0.3, -0.4, 0.2]), dims=("visitor", "arm"), coords={"arm": ARMS}
    )
    return logged, model


def test_estimators_are_unbiased_with_known_propensities():
    rng = np.random.default_rng(0)
    estimates = {"ipw": [], "snips": [], "dr": []}
    for _ in range(200):
        logged, model = simulated_log(1_000, rng)
        for estimator, values in estimates.items():
            result = evaluate_policy(
                logged, TARGET, estimator=estimator, posterior=model, n_bootstrap=0
            )
            values.append(float(result["estimate"]))
    for estimator, values in estimates.items():
        values = np.array(values)
        se = values.std(ddof=1) / np.sqrt(values.size)
        print(f"{estimator}: mean {values.mean():.4f} vs truth {TRUE_VALUE:.4f} (SE {se:.4f})")
        assert abs(values.mean() - TRUE_VALUE) < 2 * se


def test_dr_bootstrap_interval_covers_at_about_its_nominal_rate():
    rng = np.random.default_rng(1)
    covered = []
    for i in range(200):
        logged, model = simulated_log(800, rng)
        result = evaluate_policy(logged, TARGET, posterior=model, ci=0.9, n_bootstrap=200, seed=i)
        covered.append(float(result["lower"]) <= TRUE_VALUE <= float(result["upper"]))
    coverage = float(np.mean(covered))
    print(f"DR 90% bootstrap interval coverage over 200 replications: {coverage:.3f}")
    assert 0.84 <= coverage <= 0.96


def test_weights_and_diagnostics_by_hand():
    rng = np.random.default_rng(2)
    logged, _ = simulated_log(500, rng)
    result = evaluate_policy(logged, "B", estimator="ipw", n_bootstrap=0)
    served_b = logged["variant"].values == "B"
    w = np.where(served_b, 1.0 / logged["propensity"].values, 0.0)
    y = logged["outcome"].values
    assert float(result["estimate"]) == pytest.approx((w * y).mean())
    assert float(result["max_weight"]) == pytest.approx(w.max())
    assert float(result["effective_sample_size"]) == pytest.approx(w.sum() ** 2 / (w**2).sum())
    snips = evaluate_policy(logged, "B", estimator="snips", n_bootstrap=50)
    assert float(snips["estimate"]) == pytest.approx((w * y).sum() / w.sum())
    assert float(snips["lower"]) < float(snips["estimate"]) < float(snips["upper"])


def test_the_logging_plan_evaluates_to_the_observed_mean():
    exp = sequential_experiment(ARMS, schedule=500)
    plan = exp.plan()
    frame = pd.DataFrame({"visitor_id": range(500), "device": ["mobile", "desktop"] * 250})
    out = plan.assign(frame)
    out["outcome"] = np.arange(500.0)
    exp.record(logged_observed(out))
    result = evaluate_policy(exp.recorded(), plan, estimator="ipw", n_bootstrap=0)
    assert float(result["estimate"]) == pytest.approx(out["outcome"].mean())
    assert float(result["max_weight"]) == pytest.approx(1.0)
    assert float(result["effective_sample_size"]) == pytest.approx(500)


def test_bad_inputs_raise():
    logged, model = simulated_log(50, np.random.default_rng(3))
    for bad in (0.0, 1.5, np.nan):
        broken = logged.assign_coords(propensity=logged["propensity"].copy(data=np.full(50, bad)))
        with pytest.raises(ValueError, match="propensities must lie in \\(0, 1\\]"):
            evaluate_policy(broken, "A", estimator="ipw")
    with pytest.raises(ValueError, match="needs a 'propensity' coordinate"):
        evaluate_policy(logged.drop_vars("propensity"), "A", estimator="ipw")
    with pytest.raises(ValueError, match="needs posterior="):
        evaluate_policy(logged, "A")
    with pytest.raises(ValueError, match="estimator must be one of"):
        evaluate_policy(logged, "A", estimator="magic")
    partial = ({0: {"A": 1.0}}, {0: "device == 'mobile'"})
    with pytest.raises(ValueError, match="match no segment; give the allocation weights"):
        evaluate_policy(logged, partial, posterior=model)
    with_pooled = ({0: {"A": 1.0}, -1: {"B": 1.0}}, {0: "device == 'mobile'"})
    # Desktop visitors match no segment and get the -1 weights: the same policy as this one.
    spelled_out = ({0: {"A": 1.0}, 1: {"B": 1.0}}, TARGET[1])
    also = evaluate_policy(logged, with_pooled, estimator="ipw", n_bootstrap=0)
    same = evaluate_policy(logged, spelled_out, estimator="ipw", n_bootstrap=0)
    assert float(also["estimate"]) == float(same["estimate"])
    with pytest.raises(ValueError, match="unknown arm"):
        evaluate_policy(logged, "Z", posterior=model)
