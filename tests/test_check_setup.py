"""check_setup: each problem and warning it names, the sample-size check, and fit raising."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import norm

import pytyche as pt
from pytyche.setup_check import (
    MIN_CONVERTERS,
    MIN_VISITORS_PER_ARM,
    RELATIVE_PRACTICAL_EFFECT,
    SetupReport,
    check_setup,
)


def observed(counts=None, outcome=None, **covariates) -> xr.Dataset:
    """Observed data: ``counts`` visitors per arm (variant-major), an outcome, covariates."""
    counts = counts or {"control": 50, "A": 50}
    variant = np.repeat(np.array(list(counts), dtype=object), list(counts.values()))
    n = variant.size
    rng = np.random.default_rng(0)
    if outcome is None:
        outcome = (rng.random(n) < 0.3).astype(float)
    coords = {"variant": ("visitor", variant), "outcome": ("visitor", np.asarray(outcome))}
    if not covariates:
        covariates = {"device": rng.choice(np.array(["mobile", "desktop"], dtype=object), n)}
    for name, values in covariates.items():
        coords[name] = ("visitor", np.asarray(values))
    return xr.Dataset(coords=coords, attrs={"pytyche_arms": list(counts)})


def only(messages: list[str], fragment: str) -> str:
    found = [m for m in messages if fragment in m]
    assert len(found) == 1, (fragment, messages)
    return found[0]


def test_clean_setup_is_ok_and_counts_visitors_and_conversions():
    outcome = np.r_[np.zeros(40), np.ones(10), np.zeros(30), np.ones(20)]
    report = check_setup(observed(outcome=outcome), family="binary", min_practical_effect=0.3)
    assert isinstance(report, SetupReport)
    assert report.ok and report.problems == []
    assert report.arms == ["control", "A"]
    assert report.visitors == {"control": 50, "A": 50}
    assert report.conversions == {"control": 10, "A": 20}
    assert report.missing_share == {"device": 0.0}
    assert report.warnings == []
    text = str(report)
    assert "ok" in text.splitlines()[0] and "control: 50 visitors, 10 conversions" in text
    report.raise_for_problems()  # nothing to raise


def test_sample_size_check_is_the_normal_approximation():
    outcome = np.r_[np.zeros(40), np.ones(10), np.zeros(40), np.ones(10)]
    report = check_setup(observed(outcome=outcome), family="binary", min_practical_effect=0.05)
    p = 0.2  # control's conversion rate
    z = norm.ppf(0.975) + norm.ppf(0.8)
    needed = math.ceil(2 * p * (1 - p) * z**2 / 0.05**2)
    assert report.visitors_needed_per_arm == needed  # 1,005 per arm
    message = only(report.warnings, "needs about")
    assert f"{needed:,}" in message and "'control' 50" in message and "'A' 50" in message
    assert report.ok  # a warning, not a problem
    assert check_setup(observed(outcome=outcome), min_practical_effect=0.5).warnings == []
    assert (
        check_setup(observed(outcome=outcome), min_practical_effect=0).visitors_needed_per_arm
        is None
    )


def test_continuous_sample_size_uses_the_control_variance():
    rng = np.random.default_rng(1)
    outcome = np.r_[rng.normal(0, 2.0, 50), rng.normal(0, 9.0, 50)]
    report = check_setup(observed(outcome=outcome), family="continuous", min_practical_effect=1)
    variance = np.var(outcome[:50])
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert report.visitors_needed_per_arm == math.ceil(2 * variance * z**2)
    assert report.conversions is None


# -- problems ----------------------------------------------------------------------------------


def test_no_variant():
    ds = xr.Dataset(coords={"outcome": ("visitor", [0.0, 1.0])})
    report = check_setup(ds)
    assert not report.ok
    only(report.problems, "no 'variant' coordinate")


def test_no_visitors():
    ds = xr.Dataset(coords={"variant": ("visitor", np.array([], dtype=object))})
    only(check_setup(ds).problems, "no visitors")


def test_single_arm():
    report = check_setup(observed({"control": 30}))
    only(report.problems, "at least 2 arms")


def test_labels_that_are_not_arms():
    report = check_setup(observed(), arms=["control", "B"])
    message = only(report.problems, "not arms")
    assert "['A']" in message and "['control', 'B']" in message
    # B has no visitors at all: too few for a fit.
    assert "arm 'B' has 0 visitor(s)" in only(report.problems, "'B' has 0")
    # The attribute of observed_data is the default list of arms.
    ds = observed().assign_attrs(pytyche_arms=["control", "C"])
    only(check_setup(ds).problems, "not arms")


def test_rows_not_variant_major():
    ds = observed()
    shuffled = ds.isel(visitor=np.r_[0:10, 60:70, 10:60, 70:100])
    message = only(check_setup(shuffled).problems, "variant-major")
    assert "row 20 is served 'control' after 'A'" in message


def test_arm_with_too_few_visitors_names_the_minimum():
    report = check_setup(observed({"control": 40, "A": MIN_VISITORS_PER_ARM - 1}))
    message = only(report.problems, "arm 'A'")
    assert f"has {MIN_VISITORS_PER_ARM - 1} visitor(s)" in message
    assert f"at least {MIN_VISITORS_PER_ARM} per arm" in message
    assert check_setup(observed({"control": 40, "A": MIN_VISITORS_PER_ARM})).ok


def test_outcome_missing_non_numeric_or_not_finite():
    ds = observed().drop_vars("outcome")
    only(check_setup(ds).problems, "no 'outcome'")
    text = observed(outcome=np.array(["yes"] * 100, dtype=object))
    only(check_setup(text).problems, "dtype object; expected numbers")
    holes = np.zeros(100)
    holes[[3, 7]] = np.nan
    only(check_setup(observed(outcome=holes)).problems, "NaN or infinite for 2 visitor(s)")


def test_binary_outcome_problems():
    twos = np.r_[np.zeros(99), 2.0]
    only(check_setup(observed(outcome=twos), family="binary").problems, "0/1 outcome; found 2")
    zeros = np.zeros(100)
    only(check_setup(observed(outcome=zeros), family="binary").problems, "0 for every visitor")
    assert check_setup(observed(outcome=twos)).ok  # no family: nothing family-specific


def test_continuous_constant_outcome():
    report = check_setup(observed(outcome=np.full(100, 3.5)), family="continuous")
    only(report.problems, "3.5 for every visitor")


def test_hurdle_problems():
    rng = np.random.default_rng(2)
    spend = np.where(rng.random(100) < 0.5, rng.gamma(2, 10, 100), 0.0)
    assert check_setup(observed(outcome=spend), family="hurdle").ok
    negative = spend.copy()
    negative[5] = -1.0
    only(check_setup(observed(outcome=negative), family="hurdle").problems, "non-negative")
    positive = rng.gamma(2, 10, 100)
    only(check_setup(observed(outcome=positive), family="hurdle").problems, "no hurdle")
    few = np.r_[spend[:50], np.zeros(50)]
    few[50 : 50 + MIN_CONVERTERS - 1] = 5.0
    report = check_setup(observed(outcome=few), family="hurdle")
    message = only(report.problems, "converter")
    assert f"arm 'A' has {MIN_CONVERTERS - 1} converter(s)" in message
    assert f"at least {MIN_CONVERTERS}" in message
    assert report.conversions["A"] == MIN_CONVERTERS - 1


def test_unsupported_covariate_kind():
    mixed = np.array(["a", 1.5] * 50, dtype=object)
    only(check_setup(observed(mixed=mixed)).problems, "'mixed'")


# -- warnings ----------------------------------------------------------------------------------


def test_missing_values_are_reported_per_covariate():
    rng = np.random.default_rng(3)
    age = rng.uniform(18, 80, 100)
    age[:10] = np.nan
    mostly = np.full(100, np.nan)
    mostly[:30] = 1.0
    device = np.array(["mobile", None] * 50, dtype=object)
    report = check_setup(
        observed(age=age, mostly=mostly, device=device, empty=np.full(100, np.nan))
    )
    assert report.ok
    assert report.missing_share["age"] == pytest.approx(0.1)
    assert report.missing_share["mostly"] == pytest.approx(0.7)
    assert report.missing_share["device"] == pytest.approx(0.5)
    assert report.missing_share["empty"] == 1.0
    assert "70.0%" in only(report.warnings, "'mostly' is missing")
    only(report.warnings, "'empty' is missing for every visitor")
    assert not [w for w in report.warnings if "'age'" in w or "'device' is missing" in w]
    assert "age 10.0%" in str(report)


def test_covariate_with_one_level():
    report = check_setup(observed(country=np.array(["fr"] * 100, dtype=object)))
    message = only(report.warnings, "'country'")
    assert "single value 'fr'" in message


def test_identifier_like_covariates():
    ids = np.array([f"user-{i}" for i in range(100)], dtype=object)
    numbers = np.arange(100) * 7
    rng = np.random.default_rng(4)
    report = check_setup(observed(user=ids, account=numbers, income=rng.normal(size=100)))
    only(report.warnings, "'user' has a different value")
    only(report.warnings, "'account' has a different value")
    assert not [w for w in report.warnings if "'income'" in w]  # continuous numbers are fine


def test_no_covariates():
    ds = observed().drop_vars("device")
    only(check_setup(ds).warnings, "no covariates")


def test_binary_arm_without_conversions():
    outcome = np.r_[(np.arange(50) % 3 == 0).astype(float), np.zeros(50)]
    report = check_setup(observed(outcome=outcome), family="binary")
    assert report.ok
    only(report.warnings, "arm 'A': 0 of 50 visitors converted")


def test_simulated_experiment_passes():
    data, _ = pt.simulate_experiment(900, family="hurdle", seed=1)
    report = check_setup(data, family="hurdle", min_practical_effect=2.0)
    assert report.ok, report.problems
    assert report.arms == ["control", "A", "B"]
    assert sum(report.visitors.values()) == 900


# -- arguments and fit -------------------------------------------------------------------------


def test_arguments_are_checked():
    with pytest.raises(TypeError, match=r"observed must be an xarray\.Dataset"):
        check_setup(pd.DataFrame({"variant": ["a"]}))
    with pytest.raises(ValueError, match="family must be one of"):
        check_setup(observed(), family="poisson")
    with pytest.raises(ValueError, match="min_practical_effect must be a finite number >= 0"):
        check_setup(observed(), min_practical_effect=-1)
    with pytest.raises(ValueError, match="duplicate arm names"):
        check_setup(observed(), arms=["control", "A", "A"])


def test_raise_for_problems_lists_every_problem():
    report = check_setup(
        observed({"control": 40, "A": 3}, outcome=np.full(43, 2.0)), family="binary"
    )
    with pytest.raises(ValueError, match="not ready for a fit") as error:
        report.raise_for_problems()
    assert "arm 'A' has 3 visitor(s)" in str(error.value)
    assert "0/1 outcome" in str(error.value)


def test_fit_runs_the_check_and_raises_before_fitting():
    outcome = np.r_[np.zeros(30), np.ones(10), np.zeros(3), np.ones(2)]
    ds = observed({"control": 40, "A": 5}, outcome=outcome)
    with pytest.raises(ValueError, match=r"not ready for a fit[\s\S]*arm 'A' has 5 visitor"):
        pt.fit(ds)
    with pytest.raises(ValueError, match="not arms"):
        pt.fit(observed().assign_attrs(pytyche_arms=["control", "C"]), family="binary")


def test_an_outcome_whose_variance_overflows_is_a_problem_not_a_warning():
    observed, _ = pt.simulate_experiment(300, family="continuous", seed=2)
    huge = observed.assign_coords(outcome=observed["outcome"] * 1e300)
    report = pt.check_setup(huge)
    assert not report.ok
    assert any("variance overflows" in p for p in report.problems), report.problems


def test_default_effect_is_two_percent_of_controls_observed_mean():
    outcome = np.r_[np.full(25, 30.0), np.full(25, 50.0), np.full(50, 45.0)]  # control: 40
    report = check_setup(observed(outcome=outcome), family="continuous")
    assert RELATIVE_PRACTICAL_EFFECT == 0.02
    assert report.min_practical_effect == pytest.approx(0.8)
    assert report.min_practical_effect_basis == "2% of control's mean outcome (40)"
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert report.visitors_needed_per_arm == math.ceil(2 * 100 * z**2 / 0.8**2)
    assert "a lift of 0.8 (2% of control's mean outcome (40))" in str(report)
    given = check_setup(observed(outcome=outcome), family="continuous", min_practical_effect=2)
    assert (given.min_practical_effect, given.min_practical_effect_basis) == (2.0, "given")


def test_default_effect_with_a_control_mean_of_zero_skips_the_sample_size_check():
    outcome = np.r_[np.zeros(50), np.ones(50) * 3.0]
    report = check_setup(observed(outcome=outcome), family="continuous")
    assert report.ok and report.visitors_needed_per_arm is None
    assert report.min_practical_effect is None
    warning = only(report.warnings, "no sample-size check")
    assert "which is 0" in warning and "pass min_practical_effect=" in warning
