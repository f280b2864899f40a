"""segment_summary: against a naive reference, numpy vs dask, laziness, one pass."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import pytyche as pt

from helpers import OVERLAPPING_SEGMENTS, counting_scheduler, random_dataset
from reference import reference_members, reference_metric

VARIABLES = (
    "members",
    "share",
    "metric",
    "contrast",
    "contrast_lower",
    "contrast_upper",
    "prob_best",
    "prob_positive",
    "expected_loss",
)


def reference_summary(dataset: xr.Dataset, segments, ci: float) -> dict[str, np.ndarray]:
    """Loops over segments, samples and arms, in float64."""
    metric = reference_metric(dataset)
    n_visitors, n_chains, n_draws, n_arms = metric.shape
    observed = dataset.coords.to_dataset()
    out = {name: [] for name in VARIABLES}
    for segment in segments:
        members = reference_members(segment.rule, observed)
        out["members"].append(len(members))
        out["share"].append(len(members) / n_visitors)
        if not members:
            for name in VARIABLES[2:]:
                out[name].append([np.nan] * n_arms)
            continue
        means = np.zeros((n_chains * n_draws, n_arms))
        for chain in range(n_chains):
            for draw in range(n_draws):
                for arm in range(n_arms):
                    total = sum(metric[v, chain, draw, arm] for v in members)
                    means[chain * n_draws + draw, arm] = total / len(members)
        contrast = means - means[:, :1]
        wins = np.zeros(n_arms)
        for row in contrast:
            best, best_contrast = 0, 0.0
            for arm in range(1, n_arms):
                if row[arm] > best_contrast:
                    best, best_contrast = arm, row[arm]
            wins[best] += 1
        out["metric"].append(means.mean(axis=0))
        out["contrast"].append(contrast.mean(axis=0))
        out["contrast_lower"].append(np.quantile(contrast, (1 - ci) / 2, axis=0))
        out["contrast_upper"].append(np.quantile(contrast, (1 + ci) / 2, axis=0))
        out["prob_best"].append(wins / len(contrast))
        out["prob_positive"].append((contrast > 0).mean(axis=0))
        out["expected_loss"].append((means.max(axis=1, keepdims=True) - means).mean(axis=0))
    return {name: np.array(values, dtype=float) for name, values in out.items()}


def assert_matches_reference(summary: xr.Dataset, dataset, segments, ci) -> None:
    expected = reference_summary(dataset, segments, ci)
    for name in VARIABLES:
        np.testing.assert_allclose(
            summary[name].values, expected[name], rtol=1e-9, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize("family", ["binary", "continuous", "hurdle"])
@pytest.mark.parametrize("n_chains", [None, 2])
def test_matches_the_naive_reference(family, n_chains):
    ds = random_dataset(family, n_visitors=50, n_draws=15, n_chains=n_chains, seed=4)
    summary = pt.segment_summary(pt.posterior(ds), OVERLAPPING_SEGMENTS, ci=0.8)
    assert summary["prob_best"].dims == ("segment", "arm")
    assert summary["members"].dims == ("segment",)
    assert list(summary["segment"].values) == [s.id for s in OVERLAPPING_SEGMENTS]
    assert list(summary["rule"].values) == [str(s.rule) for s in OVERLAPPING_SEGMENTS]
    assert list(summary["arm"].values) == list(ds["arm"].values)
    assert summary.attrs == {"ci": 0.8, "n_samples": 15 * (n_chains or 1)}
    assert_matches_reference(summary, ds, OVERLAPPING_SEGMENTS, 0.8)


@pytest.mark.parametrize("chunks", [{"visitor": 7}, {"visitor": 25, "draw": 4}])
def test_dask_is_lazy_one_pass_and_agrees_with_numpy(chunks):
    ds = random_dataset("hurdle", n_visitors=60, n_draws=12, n_chains=2, seed=2)
    eager = pt.segment_summary(pt.posterior(ds), OVERLAPPING_SEGMENTS, ci=0.9)
    with counting_scheduler(computes=0):
        lazy = pt.segment_summary(pt.posterior(ds.chunk(chunks)), OVERLAPPING_SEGMENTS, ci=0.9)
    assert all(lazy[name].chunks is not None for name in VARIABLES)
    with counting_scheduler(computes=1) as scheduler:
        computed = lazy.compute()
    assert scheduler.computes == 1
    for name in VARIABLES:
        np.testing.assert_allclose(
            computed[name].values, eager[name].values, rtol=1e-10, err_msg=name
        )
    assert_matches_reference(computed, ds, OVERLAPPING_SEGMENTS, 0.9)


def test_prob_best_is_thompson_allocation_without_floor_to_the_last_digit():
    result = pt.example_posterior(n_visitors=3000, n_draws=97, seed=6)
    segments = [
        pt.DiscoveredSegment(0, "device == 'mobile'"),
        pt.DiscoveredSegment(1, "device == 'desktop' and age > 40"),
        pt.DiscoveredSegment(2, "everyone"),
    ]
    summary = pt.segment_summary(result, segments)
    allocation = pt.thompson_allocation(result, segments, epsilon=0.0)
    for i, segment in enumerate(segments):
        assert (
            dict(zip(result.variants, summary["prob_best"].values[i].tolist(), strict=True))
            == allocation[segment.id]
        )


def test_empty_segment_is_nan_without_warnings_and_control_columns_are_exact():
    ds = random_dataset("continuous", n_visitors=40, n_draws=10, seed=1)
    segments = [pt.DiscoveredSegment(0, "age > 1000"), pt.DiscoveredSegment(1, "everyone")]
    summary = pt.segment_summary(pt.posterior(ds), segments)
    assert summary["members"].values.tolist() == [0, 40]
    assert summary["share"].values.tolist() == [0.0, 1.0]
    for name in VARIABLES[2:]:
        assert np.isnan(summary[name].values[0]).all(), name
        assert np.isfinite(summary[name].values[1]).all(), name
    control = summary.isel(segment=1, arm=0)
    for name in ("contrast", "contrast_lower", "contrast_upper", "prob_positive"):
        assert float(control[name]) == 0.0
    assert summary["prob_best"].values[1].sum() == pytest.approx(1.0)
    assert (summary["expected_loss"].values[1] >= 0).all()


def test_expected_loss_is_zero_for_an_arm_that_always_wins():
    n_visitors, n_draws = 8, 5
    expected = np.zeros((n_visitors, n_draws, 3))
    expected[..., 0] = 0.5
    expected[..., 2] = 1.0
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={"arm": ["c", "a", "b"], "variant": ("visitor", ["c", "a", "b", "c"] * 2)},
    )
    summary = pt.segment_summary(pt.ContinuousBCFResult(ds), {0: "everyone"}, ci=0.5)
    row = summary.isel(segment=0)
    np.testing.assert_array_equal(row["expected_loss"].values, [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(row["prob_best"].values, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(row["contrast_lower"].values, [0.0, -0.5, 0.5])


@pytest.mark.parametrize(
    ("ci", "error"),
    [
        (0.0, ValueError),
        (1.0, ValueError),
        (float("nan"), ValueError),
        ("0.8", TypeError),
        (True, TypeError),
    ],
)
def test_invalid_ci_raises(ci, error):
    with pytest.raises(error, match="ci must"):
        pt.segment_summary(pt.posterior(random_dataset()), {0: "everyone"}, ci=ci)


def test_inputs_are_checked_like_the_allocation():
    with pytest.raises(ValueError, match="no observed data"):
        pt.segment_summary(pt.posterior(random_dataset(observed=False)), {0: "everyone"})
    with pytest.raises(TypeError, match="posterior must be"):
        pt.segment_summary(random_dataset(), {0: "everyone"})
