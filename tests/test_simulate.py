"""The simulator: deterministic, contract-shaped, and its truth is what each scenario says."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche.fitting import infer_family

FAMILIES = ("binary", "continuous", "hurdle")


def segment_means(truth: xr.Dataset) -> np.ndarray:
    """(segment, arm) mean true metric over each planted segment's members, by loops."""
    segments = pt.planted_segments()
    device = truth["device"].values
    age = truth["age"].values
    metric = truth["metric"].values
    rows = []
    for segment in segments:
        members = []
        for i in range(device.size):
            if "mobile" in str(segment.rule):
                hit = device[i] == "mobile"
            elif "tablet" in str(segment.rule):
                hit = device[i] == "tablet"
            elif "age > 40" in str(segment.rule):
                hit = device[i] == "desktop" and age[i] > 40
            else:
                hit = device[i] == "desktop" and age[i] <= 40
            if hit:
                members.append(i)
        rows.append(metric[members].mean(axis=0))
    return np.array(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_experiment(family):
    a = pt.simulate_experiment(500, family=family, seed=4)
    b = pt.simulate_experiment(500, family=family, seed=4)
    c = pt.simulate_experiment(500, family=family, seed=5)
    xr.testing.assert_identical(a[0], b[0])
    xr.testing.assert_identical(a[1], b[1])
    assert not np.array_equal(a[0]["outcome"].values, c[0]["outcome"].values)


@pytest.mark.parametrize("family", FAMILIES)
def test_observed_is_contract_shaped_with_mixed_covariates(family):
    observed, truth = pt.simulate_experiment(1_001, ("control", "A", "B"), family, seed=0)
    assert observed["variant"].values.tolist() == ["control"] * 334 + ["A"] * 334 + ["B"] * 333
    assert observed["device"].dtype == object
    assert set(observed["device"].values) == {"mobile", "desktop", "tablet"}
    assert observed["age"].dtype == np.float64 and np.isnan(observed["age"].values).any()
    assert observed["returning"].dtype == bool
    assert observed["visits"].dtype == np.int64
    assert truth["metric"].dims == ("visitor", "arm")
    assert truth["arm"].values.tolist() == ["control", "A", "B"]
    outcome = observed["outcome"].values
    if family == "binary":
        assert set(np.unique(outcome)) == {0.0, 1.0}
        np.testing.assert_array_equal(truth["metric"].values, truth["conversion"].values)
    elif family == "hurdle":
        assert outcome.min() == 0 and (outcome > 0).mean() > 0.1
        np.testing.assert_allclose(
            truth["metric"].values, truth["conversion"].values * truth["value"].values
        )
    else:
        np.testing.assert_array_equal(truth["metric"].values, truth["expected"].values)
    # family="auto" of the fits reads each simulated outcome as its own family.
    assert infer_family(outcome) == family


@pytest.mark.parametrize("family", FAMILIES)
def test_outcomes_follow_the_truth(family):
    # Each arm's mean outcome matches the mean true metric of the visitors it served.
    observed, truth = pt.simulate_experiment(60_000, family=family, seed=7)
    served = observed["variant"].values
    for k, arm in enumerate(truth["arm"].values):
        rows = served == arm
        expected = truth["metric"].values[rows, k].mean()
        got = observed["outcome"].values[rows].mean()
        spread = observed["outcome"].values[rows].std() / np.sqrt(rows.sum())
        assert abs(got - expected) < 4 * spread, (arm, got, expected)


@pytest.mark.parametrize("n_arms", [2, 3, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_scenarios_plant_what_they_say(family, n_arms):
    arms = ["control", "A", "B", "C"][:n_arms]
    _, null = pt.simulate_experiment(3_000, arms, family, "null", seed=1)
    metric = null["metric"].values
    np.testing.assert_allclose(metric, np.repeat(metric[:, :1], n_arms, axis=1))

    _, uniform = pt.simulate_experiment(3_000, arms, family, "uniform", seed=1)
    metric = uniform["metric"].values
    assert (metric[:, 1] > metric[:, 0]).all()
    np.testing.assert_allclose(metric[:, 2:], np.repeat(metric[:, :1], n_arms - 2, axis=1))

    _, segmented = pt.simulate_experiment(3_000, arms, family, "segmented", seed=1)
    best = segment_means(segmented).argmax(axis=1)
    # mobile: A; desktop over 40: B (control with 2 arms); desktop 40 or under: A; tablet: control
    assert best.tolist() == [1, 2 if n_arms > 2 else 0, 1, 0]
    # Within a planted segment the best arm is the same for every member.
    metric = segmented["metric"].values
    members = pt.membership(pt.planted_segments(), segmented).values
    for segment, arm in zip(members, best, strict=True):
        assert (metric[segment].argmax(axis=1) == arm).all()


def test_errors():
    with pytest.raises(ValueError, match="family must be one of"):
        pt.simulate_experiment(10, family="poisson")
    with pytest.raises(ValueError, match="scenario must be one of"):
        pt.simulate_experiment(10, scenario="weird")
    with pytest.raises(ValueError, match="at least 2 arms"):
        pt.simulate_experiment(10, arms=["control"])
    with pytest.raises(ValueError, match=r"duplicate arm names \['A'\]"):
        pt.simulate_experiment(10, arms=["control", "A", "A"])
    with pytest.raises(ValueError, match="at least one visitor per arm"):
        pt.simulate_experiment(2, arms=["control", "A", "B"])
