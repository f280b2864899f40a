"""segment_summary: against a naive reference, numpy vs dask, laziness, one pass; Monte Carlo
errors against a naive loop; R-hat and ESS against ArviZ; the convergence warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche._mcse import bulk_effective_sample_size, rank_normalized_rhat
from pytyche.summary import ConvergenceWarning, check_convergence

from helpers import OVERLAPPING_SEGMENTS, counting_scheduler, random_dataset
from reference import reference_members, reference_metric

with warnings.catch_warnings():  # ArviZ announces its coming refactor, once a day, on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

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
DIAGNOSTICS = ("prob_best_mcse", "prob_positive_mcse", "contrast_rhat", "contrast_ess")


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


def reference_samples(dataset: xr.Dataset, segment) -> np.ndarray | None:
    """(chain, draw, arm) segment means by loops, float64; None without members."""
    metric = reference_metric(dataset)
    _, n_chains, n_draws, n_arms = metric.shape
    members = reference_members(segment.rule, dataset.coords.to_dataset())
    if not members:
        return None
    means = np.zeros((n_chains, n_draws, n_arms))
    for chain in range(n_chains):
        for draw in range(n_draws):
            for arm in range(n_arms):
                total = sum(metric[v, chain, draw, arm] for v in members)
                means[chain, draw, arm] = total / len(members)
    return means


def reference_ess(indicator: np.ndarray) -> float:
    """ArviZ's basic ESS across chains, chains not split (its public "mean" method splits)."""
    from arviz.stats.diagnostics import _ess

    return float(_ess(indicator.astype(float)))


def reference_mcse(dataset: xr.Dataset, segments) -> dict[str, np.ndarray]:
    """sqrt(p (1 - p) / ESS) of prob_best and prob_positive, from per-sample indicators."""
    has_chain = "chain" in dataset.dims
    out = {"prob_best_mcse": [], "prob_positive_mcse": []}
    for segment in segments:
        means = reference_samples(dataset, segment)
        n_arms = dataset.sizes["arm"]
        if means is None:
            for values in out.values():
                values.append([np.nan] * n_arms)
            continue
        if not has_chain:  # the draws are one chain
            means = means.reshape(1, -1, n_arms)
        n_chains, n_draws, _ = means.shape
        best = np.zeros((n_chains, n_draws, n_arms))
        positive = np.zeros((n_chains, n_draws, n_arms))
        for chain in range(n_chains):
            for draw in range(n_draws):
                winner, top = 0, 0.0
                for arm in range(1, n_arms):
                    contrast = means[chain, draw, arm] - means[chain, draw, 0]
                    positive[chain, draw, arm] = contrast > 0
                    if contrast > top:
                        winner, top = arm, contrast
                best[chain, draw, winner] = 1.0
        for name, indicator in (("prob_best_mcse", best), ("prob_positive_mcse", positive)):
            row = []
            for arm in range(n_arms):
                series = indicator[..., arm]
                p = series.mean()
                ess = reference_ess(series)  # (chain, draw); one chain without a chain dim
                row.append(np.sqrt(p * (1 - p) / ess))
            out[name].append(row)
    return {name: np.array(values, dtype=float) for name, values in out.items()}


def assert_matches_reference(summary: xr.Dataset, dataset, segments, ci) -> None:
    expected = reference_summary(dataset, segments, ci)
    for name in VARIABLES:
        np.testing.assert_allclose(
            summary[name].values, expected[name], rtol=1e-9, atol=1e-12, err_msg=name
        )
    for name, values in reference_mcse(dataset, segments).items():
        np.testing.assert_allclose(summary[name].values, values, rtol=1e-9, err_msg=name)


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
    assert {k: summary.attrs[k] for k in ("ci", "n_samples", "n_chains")} == {
        "ci": 0.8,
        "n_samples": 15 * (n_chains or 1),
        "n_chains": n_chains or 0,
    }
    assert "ESS" in summary.attrs["mcse_method"]
    assert ("contrast_rhat" in summary) == ("contrast_ess" in summary) == bool(n_chains)
    assert_matches_reference(summary, ds, OVERLAPPING_SEGMENTS, 0.8)


@pytest.mark.parametrize("n_chains", [None, 2])
@pytest.mark.parametrize("chunks", [{"visitor": 7}, {"visitor": 25, "draw": 4}])
def test_dask_is_lazy_one_pass_and_agrees_with_numpy(chunks, n_chains):
    ds = random_dataset("hurdle", n_visitors=60, n_draws=12, n_chains=n_chains, seed=2)
    eager = pt.segment_summary(pt.posterior(ds), OVERLAPPING_SEGMENTS, ci=0.9)
    with counting_scheduler(computes=0):
        lazy = pt.segment_summary(pt.posterior(ds.chunk(chunks)), OVERLAPPING_SEGMENTS, ci=0.9)
    expected = {*VARIABLES, *DIAGNOSTICS[: 4 if n_chains else 2]}
    assert set(lazy.data_vars) == set(eager.data_vars) == expected
    assert all(lazy[name].chunks is not None for name in lazy.data_vars)
    with counting_scheduler(computes=1) as scheduler:
        computed = lazy.compute()
    assert scheduler.computes == 1
    for name in eager.data_vars:
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


# -- sampler diagnostics: R-hat and bulk ESS against ArviZ, and the convergence warning -------


@pytest.mark.parametrize("shape", [(4, 100), (2, 15), (3, 9), (4, 7), (2, 4), (1, 50)])
@pytest.mark.parametrize("sticky", [False, True])
def test_rhat_and_bulk_ess_kernels_match_arviz(shape, sticky):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape)
    if sticky:  # autocorrelated chains wandering apart
        x = 0.3 * x.cumsum(axis=1) + rng.normal(size=shape)
    expected_rhat = az.rhat(x) if shape[0] > 1 else np.nan
    np.testing.assert_allclose(rank_normalized_rhat(x), expected_rhat, rtol=1e-12)
    np.testing.assert_allclose(bulk_effective_sample_size(x), az.ess(x), rtol=1e-12)


def test_rhat_and_bulk_ess_kernels_are_nan_where_there_is_nothing_to_diagnose():
    constant = np.zeros((2, 20))
    short = np.random.default_rng(0).normal(size=(2, 3))
    holed = np.random.default_rng(1).normal(size=(2, 20))
    holed[1, 5] = np.nan
    for x in (constant, short, holed):
        assert np.isnan(rank_normalized_rhat(x)) and np.isnan(bulk_effective_sample_size(x))
    stacked = np.stack([constant, np.random.default_rng(2).normal(size=(2, 20))])
    assert rank_normalized_rhat(stacked).shape == (2,)
    with pytest.raises(ValueError, match="chain, draw"):
        rank_normalized_rhat(np.zeros(5))


def test_contrast_diagnostics_are_arviz_on_the_naive_contrasts():
    ds = random_dataset("continuous", n_visitors=40, n_draws=30, n_chains=3, seed=5)
    segments = [pt.DiscoveredSegment(0, "age > 1000"), *OVERLAPPING_SEGMENTS[:2]]
    summary = pt.segment_summary(pt.posterior(ds), segments)
    assert np.isnan(summary["contrast_rhat"].values[0]).all()  # no members
    assert np.isnan(summary["contrast_ess"].values[:, 0]).all()  # control: always 0
    for i, segment in enumerate(segments[1:], start=1):
        means = reference_samples(ds, segment)
        for arm in range(1, ds.sizes["arm"]):
            contrast = means[..., arm] - means[..., 0]
            assert float(summary["contrast_rhat"][i, arm]) == pytest.approx(az.rhat(contrast))
            assert float(summary["contrast_ess"][i, arm]) == pytest.approx(az.ess(contrast))


def unmixed_dataset(n_chains: int = 2, n_draws: int = 300, offset: float = 0.0) -> xr.Dataset:
    """Continuous draws, independent everywhere, but treatment T1 sits ``offset`` higher in the
    first chain: chains that disagree when ``offset`` is large."""
    ds = random_dataset("continuous", n_visitors=30, n_draws=n_draws, n_chains=n_chains, seed=3)
    shift = xr.zeros_like(ds["expected"])
    shift.loc[{"chain": 0, "arm": "T1"}] = offset
    return ds.assign(expected=ds["expected"] + shift)


def test_the_warning_fires_on_chains_that_do_not_mix_and_names_the_worst_pair():
    result = pt.posterior(unmixed_dataset(offset=1.0))
    summary = pt.segment_summary(result, {4: "everyone", 9: "device == 'mobile'"})
    with pytest.warns(ConvergenceWarning, match=r"R-hat .* > 1.01 .* arm 'T1'") as caught:
        problems = check_convergence(summary)
    assert len(caught) == 1 and "R-hat" in problems[0] and "worst 1." in problems[0]
    assert str(caught[0].message).count("\n") == 0
    assert issubclass(ConvergenceWarning, UserWarning)
    with pytest.warns(ConvergenceWarning, match="R-hat"):
        pt.segment_summary(result, {4: "everyone"}, check=True)


def test_the_warning_fires_when_effective_samples_are_too_few():
    sticky = unmixed_dataset(n_draws=40)
    summary = pt.segment_summary(pt.posterior(sticky), {0: "everyone"})
    with pytest.warns(ConvergenceWarning, match=r"bulk ESS .* < 200 \(100 per chain × 2"):
        check_convergence(summary)
    # A lower bar passes the same summary.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if float(summary["contrast_rhat"].max()) <= 1.01:
            assert check_convergence(summary, min_ess_per_chain=1) == []


def test_no_warning_on_mixing_chains_or_without_chains():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixing = pt.example_posterior(n_visitors=600, n_draws=400, n_chains=2, seed=2)
        summary = pt.segment_summary(mixing, {0: "everyone", 1: "device == 'mobile'"}, check=True)
        assert float(summary["contrast_rhat"].max()) <= 1.01
        assert check_convergence(summary) == []
        plain = pt.example_posterior(n_visitors=600, n_draws=10, seed=2)
        summary = pt.segment_summary(plain, {0: "everyone"}, check=True)
        assert "contrast_rhat" not in summary and check_convergence(summary) == []


def test_check_computes_a_lazy_summary_once():
    ds = unmixed_dataset(offset=1.0).chunk({"visitor": 8})
    with counting_scheduler(computes=1) as scheduler, pytest.warns(ConvergenceWarning):
        summary = pt.segment_summary(pt.posterior(ds), OVERLAPPING_SEGMENTS, check=True)
    assert scheduler.computes == 1
    assert all(v.chunks is None for v in summary.data_vars.values())
    lazy = pt.segment_summary(pt.posterior(ds), OVERLAPPING_SEGMENTS)
    with counting_scheduler(computes=1), pytest.warns(ConvergenceWarning):
        check_convergence(lazy)  # reads the two diagnostic variables, in one compute


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_rhat": 0.9}, ValueError, "max_rhat must be a number >= 1"),
        ({"max_rhat": float("nan")}, ValueError, "max_rhat must be"),
        ({"min_ess_per_chain": -1}, ValueError, "min_ess_per_chain must be a number >= 0"),
        ({"min_ess_per_chain": True}, TypeError, "min_ess_per_chain must be a real number"),
        ({"max_rhat": "1.1"}, TypeError, "max_rhat must be a real number"),
    ],
)
def test_check_convergence_arguments(kwargs, error, match):
    summary = pt.segment_summary(pt.posterior(random_dataset()), {0: "everyone"})
    with pytest.raises(error, match=match):
        check_convergence(summary, **kwargs)
    with pytest.raises(TypeError, match=r"summary must be an xarray\.Dataset"):
        check_convergence(summary["prob_best"])
    with pytest.raises(TypeError, match="check must be True or False"):
        pt.segment_summary(pt.posterior(random_dataset()), {0: "everyone"}, check="yes")


def test_mcse_without_chains_counts_the_one_chains_autocorrelation():
    rng = np.random.default_rng(1)
    independent = rng.normal(size=(30, 400, 2))
    sticky = np.repeat(independent[:, :40], 10, axis=1)  # each draw 10 times in a row
    mcse = []
    for draws in (independent, sticky):
        ds = xr.Dataset(
            {"expected": (("visitor", "draw", "arm"), draws)},
            coords={"arm": ["c", "t"], "variant": ("visitor", ["c"] * 15 + ["t"] * 15)},
        )
        summary = pt.segment_summary(pt.ContinuousBCFResult(ds), {0: "everyone"})
        p = float(summary["prob_best"].sel(segment=0, arm="t"))
        mcse.append(float(summary["prob_best_mcse"].sel(segment=0, arm="t")))
        assert (summary["prob_positive_mcse"].sel(arm="c").values == 0).all()
    # Independent draws: about the binomial error; the same draws repeated: far larger.
    assert mcse[0] == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.35)
    assert mcse[1] > 2.5 * mcse[0]


def test_mcse_grows_when_chains_are_sticky():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(30, 4, 200, 2))
    sticky = np.repeat(independent[:, :, :20], 10, axis=2)  # each draw repeated 10 times
    mcse = []
    for draws in (independent, sticky):
        ds = xr.Dataset(
            {"expected": (("visitor", "chain", "draw", "arm"), draws)},
            coords={"arm": ["c", "t"], "variant": ("visitor", ["c"] * 15 + ["t"] * 15)},
        )
        summary = pt.segment_summary(pt.ContinuousBCFResult(ds), {0: "everyone"})
        mcse.append(float(summary["prob_best_mcse"].sel(arm="t").item()))
    assert mcse[1] > 2.5 * mcse[0]


def test_the_whole_summary_computes_as_one_collection_on_a_cluster():
    # client.compute(summary) computes the Dataset as one collection; a variable built from
    # another output variable once made dask.distributed cancel it ("lost dependencies").
    distributed = pytest.importorskip("distributed")
    ds = random_dataset("hurdle", n_visitors=60, n_draws=12, n_chains=2, seed=2)
    eager = pt.segment_summary(pt.posterior(ds), OVERLAPPING_SEGMENTS)
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        lazy = pt.segment_summary(pt.posterior(ds.chunk({"visitor": 20})), OVERLAPPING_SEGMENTS)
        computed = client.compute(lazy).result()
    xr.testing.assert_allclose(computed, eager, rtol=1e-10)
