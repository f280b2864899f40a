"""The doubly robust correction: against a naive reference, chunk-invariant, lazy, unbiased."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

import pytyche as pt
from pytyche._aipw import bootstrap_weights, stream_key

from helpers import counting_scheduler, random_dataset
from reference import reference_doubly_robust, reference_weight
from strategies import chunkings


def with_outcome(ds: xr.Dataset, seed: int = 0) -> xr.Dataset:
    """``ds`` with an outcome of its family's kind along visitor."""
    rng = np.random.default_rng(seed)
    n = ds.sizes["visitor"]
    family = ds.attrs["pytyche_family"]
    if family == "binary":
        outcome = (rng.random(n) < 0.3).astype(float)
    elif family == "hurdle":
        outcome = np.where(rng.random(n) < 0.3, rng.gamma(2.0, 10.0, n), 0.0)
    else:
        outcome = rng.normal(0.0, 2.0, n)
    return ds.assign_coords(outcome=("visitor", outcome))


def served_codes(result) -> np.ndarray:
    arms = list(result.variants)
    return np.array([arms.index(str(v)) for v in result.observed["variant"].values])


def factor_arrays(result) -> list[np.ndarray]:
    n = result.dataset.sizes["visitor"]
    k = len(result.variants)
    factors = result.metric_factors()
    return [np.asarray(f.values, dtype=np.float64).reshape(n, -1, k) for f in factors]


@pytest.mark.parametrize("family", ["binary", "continuous", "hurdle"])
@pytest.mark.parametrize("n_chains", [None, 2])
def test_matches_the_naive_reference(family, n_chains):
    ds = with_outcome(random_dataset(family, n_visitors=30, n_draws=6, n_chains=n_chains), seed=1)
    raw = pt.posterior(ds)
    corrected = pt.doubly_robust(raw, seed=5)
    served = served_codes(raw)
    counts = np.bincount(served, minlength=len(raw.variants))
    propensity = (counts / counts.sum())[served]
    expected = reference_doubly_robust(
        factor_arrays(raw), served, raw.observed["outcome"].values, propensity, stream_key(5)
    )
    for got, want in zip(factor_arrays(corrected), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    # Only the served arm moves.
    for got, before in zip(factor_arrays(corrected), factor_arrays(raw), strict=True):
        other = np.ones(got.shape, bool)
        other[np.arange(served.size), :, served] = False
        np.testing.assert_allclose(got[other], before[other], rtol=1e-6)
    assert corrected.correction["propensity"].startswith("observed arm shares")


def test_hurdle_parts_multiply_to_the_metric_pseudo_outcome():
    ds = with_outcome(random_dataset("hurdle", n_visitors=40, n_draws=5), seed=2)
    raw = pt.posterior(ds)
    corrected = pt.doubly_robust(raw, propensity=[0.5, 0.25, 0.25], seed=3)
    served = served_codes(raw)
    e = np.array([0.5, 0.25, 0.25])[served]
    y = raw.observed["outcome"].values
    metric = raw.metric().values.astype(np.float64)
    weights = bootstrap_weights(stream_key(3), 0, served.size, 5)
    rows = np.arange(served.size)
    m = metric[rows, :, served]
    want = m + weights * (y[:, None] - m) / e[:, None]
    got = corrected.metric().values[rows, :, served]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    conversion = corrected.dataset["conversion"].values[rows, :, served]
    assert (conversion[y > 0] > 0).all()  # at least the forests' conversion for a buyer


def test_weights_are_the_hash_and_exponential():
    weights = bootstrap_weights(stream_key(0), 7, 3, 4)
    assert weights[1, 2] == pytest.approx(reference_weight(stream_key(0), 8, 2), rel=1e-15)
    many = bootstrap_weights(stream_key(1), 0, 2000, 100).ravel()
    assert abs(many.mean() - 1.0) < 0.01 and abs(many.var() - 1.0) < 0.03
    assert (many > 0).all()


@given(data=st.data(), family=st.sampled_from(["binary", "continuous", "hurdle"]))
def test_any_chunking_gives_the_same_draws(data, family):
    ds = with_outcome(random_dataset(family, n_visitors=25, n_draws=7, n_chains=2, seed=4))
    whole = pt.doubly_robust(pt.posterior(ds), seed=9).metric().values
    chunked = ds.chunk(data.draw(chunkings(ds)))
    lazy = pt.doubly_robust(pt.posterior(chunked), seed=9)
    assert all(isinstance(lazy.dataset[v].data, da.Array) for v in lazy.metric_variables)
    np.testing.assert_array_equal(lazy.metric().values, whole)


def test_stays_lazy_until_asked():
    ds = with_outcome(random_dataset("hurdle", n_visitors=50, n_draws=8)).chunk(visitor=16)
    ds = ds.assign_coords({name: ds[name].chunk(16) for name in ("variant", "outcome")})
    with counting_scheduler(1):  # the variant and outcome columns, together
        corrected = pt.doubly_robust(pt.posterior(ds), seed=1)
    with counting_scheduler(0):
        summary = pt.segment_summary(corrected, {0: "everyone"})
    with counting_scheduler(1):
        summary.compute()


def test_removes_a_forest_bias_and_counts_the_outcome_noise():
    """A posterior biased by a constant recovers each arm's observed mean and its noise."""
    rng = np.random.default_rng(0)
    n, draws = 3000, 2000
    variant = np.repeat(["control", "A"], n // 2)
    outcome = rng.normal(np.where(variant == "A", 1.0, 0.0), 2.0)
    biased = np.full((n, draws, 2), 0.3)  # the forests say: no effect, both arms 0.3
    observed = xr.Dataset(coords={"variant": ("visitor", variant), "outcome": ("visitor", outcome)})
    raw = pt.from_arrays("continuous", ["control", "A"], observed, expected=biased)
    means = pt.segment_means(pt.doubly_robust(raw, seed=2), {0: "everyone"}).values[0]
    arm_means = [outcome[variant == a].mean() for a in ("control", "A")]
    arm_ses = [outcome[variant == a].std() / np.sqrt(n / 2) for a in ("control", "A")]
    for k in range(2):
        draws_k = means[:, k]
        # The posterior mean is the arm's observed mean, up to Monte Carlo error of the weights.
        assert abs(draws_k.mean() - arm_means[k]) < 4 * arm_ses[k] / np.sqrt(draws) * 1.5
        # Its spread is the mean's standard error, up to the residual's offset from 0.3.
        offset = np.sqrt(arm_ses[k] ** 2 + (arm_means[k] - 0.3) ** 2 / (n / 2))
        assert draws_k.std() == pytest.approx(offset, rel=0.08)


def test_fit_corrects_by_default_and_keeps_it_on_disk(tmp_path):
    observed, _ = pt.simulate_experiment(600, family="binary", seed=1)
    options = dict(n_draws=10, n_trees_mu=10, n_trees_tau=5, progress=False, num_threads=1)
    corrected = pt.fit(observed, **options)
    raw = pt.fit(observed, correction=None, **options)
    assert raw.correction is None
    assert corrected.correction["method"] == "doubly_robust"
    again = pt.doubly_robust(raw, seed=corrected.correction["seed"])
    np.testing.assert_array_equal(corrected.metric().values, again.metric().values)
    reopened = pt.open_posterior(corrected.to_zarr(tmp_path / "p.zarr"))
    assert reopened.correction == corrected.correction


@pytest.mark.parametrize(
    ("family", "outcome", "match"),
    [
        ("binary", [0.0, 2.0], r"needs outcomes 0 or 1 \(a conversion\); visitor row 1 has 2"),
        ("hurdle", [-3.0, 1.0], "needs outcomes >= 0.*visitor row 0 has -3"),
        ("continuous", [np.nan, 1.0], "NaN or infinite.*visitor row 0"),
    ],
)
def test_refuses_outcomes_the_family_cannot_have(family, outcome, match):
    ds = random_dataset(family, n_visitors=2, n_arms=2, n_draws=3)
    ds = ds.assign_coords(variant=("visitor", ["control", "T1"]), outcome=("visitor", outcome))
    with pytest.raises(ValueError, match=match):
        pt.doubly_robust(pt.posterior(ds))


def test_refuses_twice_no_outcome_and_bad_propensities():
    ds = with_outcome(random_dataset("continuous", n_visitors=20))
    once = pt.doubly_robust(pt.posterior(ds))
    with pytest.raises(ValueError, match="corrected already"):
        pt.doubly_robust(once)
    with pytest.raises(ValueError, match="no 'outcome'"):
        pt.doubly_robust(pt.posterior(random_dataset("continuous", n_visitors=20)))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        pt.doubly_robust(pt.posterior(ds), propensity=[0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="2 shares but there are 3 arms"):
        pt.doubly_robust(pt.posterior(ds), propensity=[0.5, 0.5])


def test_keeps_the_forests_prediction_for_off_policy_evaluation():
    ds = with_outcome(random_dataset("continuous", n_visitors=40, n_draws=9, seed=3))
    raw = pt.posterior(ds)
    corrected = pt.doubly_robust(raw, seed=4)
    np.testing.assert_allclose(
        corrected.dataset["outcome_model"].transpose("visitor", "arm").values,
        raw.metric().mean("draw").values,
        rtol=1e-6,
    )
    # The doubly robust estimate reads the forests' prediction, not the corrected draws.
    logged = corrected.observed.assign_coords(propensity=("visitor", np.full(40, 1 / 3)))
    estimates = [
        pt.evaluate_policy(logged, "T1", estimator="dr", posterior=p, n_bootstrap=0)["estimate"]
        for p in (corrected, raw)
    ]
    estimates = [float(e) for e in estimates]
    assert estimates[0] == pytest.approx(estimates[1], rel=1e-6)
