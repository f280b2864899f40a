"""The posterior contract: validation, typed views, lazy metric and contrast."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import pytyche as pt

from helpers import counting_scheduler, random_dataset


@pytest.mark.parametrize(
    ("family", "cls"),
    [
        ("binary", pt.BinaryBCFResult),
        ("continuous", pt.ContinuousBCFResult),
        ("hurdle", pt.HurdleBCFResult),
    ],
)
def test_posterior_picks_the_family(family, cls):
    ds = random_dataset(family)
    assert type(pt.posterior(ds)) is cls
    # Without the attribute the family variables decide.
    assert type(pt.posterior(ds.drop_attrs())) is cls
    assert cls(ds).dataset is ds


@pytest.mark.parametrize("n_arms", [2, 3, 5])
def test_views(n_arms):
    ds = random_dataset("hurdle", n_arms=n_arms, n_chains=2, n_draws=4)
    result = pt.posterior(ds)
    assert result.variants == ("control", *(f"T{k}" for k in range(1, n_arms)))
    assert result.control == "control"
    assert result.sample_dims == ("chain", "draw")
    assert result.n_samples == 8
    observed = result.observed
    assert set(observed.data_vars) == {"variant", "device", "age", "returning"}
    np.testing.assert_array_equal(observed["device"].values, ds["device"].values)


def test_metric_and_contrast_values():
    ds = random_dataset("hurdle", n_arms=3, seed=3)
    result = pt.posterior(ds)
    metric = result.metric()
    assert metric.dims == ("visitor", "draw", "arm")
    np.testing.assert_allclose(metric.values, ds["conversion"].values * ds["value"].values)
    contrast = result.contrast()
    np.testing.assert_allclose(
        contrast.values, metric.values - metric.values[..., :1], rtol=0, atol=1e-12
    )
    assert (contrast.sel(arm="control") == 0).all()


def test_metric_is_visitor_major_whatever_the_stored_order():
    ds = random_dataset("continuous", n_chains=2).transpose("draw", "arm", "chain", "visitor")
    metric = pt.posterior(ds).metric()
    assert metric.dims == ("visitor", "chain", "draw", "arm")


def test_metric_and_contrast_stay_lazy():
    ds = random_dataset("hurdle").chunk({"visitor": 20})
    with counting_scheduler(computes=0):
        result = pt.posterior(ds)
        metric, contrast = result.metric(), result.contrast()
    assert metric.chunks is not None and contrast.chunks is not None


def test_validation_loads_no_draws():
    def explode(*_args, **_kwargs):
        raise AssertionError("the posterior's draws were read")

    ds = random_dataset("hurdle")
    import dask.array as da

    lazy_draws = da.map_blocks(explode, da.zeros(ds["conversion"].shape, chunks=20), dtype=float)
    lazy = ds.assign(conversion=(ds["conversion"].dims, lazy_draws))
    result = pt.posterior(lazy)  # would raise if validation computed the draws
    assert result.variants[0] == "control"


def test_no_variant_means_no_observed_data():
    assert pt.posterior(random_dataset(observed=False)).observed is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ds: ds.drop_vars("value"), "needs the variable 'value'"),
        (lambda ds: ds.rename({"conversion": "p"}), "needs the variable 'conversion'"),
        (lambda ds: ds.isel(draw=0), r"lacks the dim\(s\) \['draw'\]"),
        (lambda ds: ds.rename_dims({"visitor": "row"}), r"lacks the dim\(s\) \['visitor'\]"),
        (lambda ds: ds.expand_dims(extra=2), r"unexpected dim\(s\) \['extra'\]"),
        (lambda ds: ds.isel(arm=[0]), "at least 2 arms"),
        (lambda ds: ds.assign_coords(arm=["control", "T1", "T1"]), r"duplicate arm names \['T1'\]"),
        (
            lambda ds: ds.assign_coords(variant=("visitor", ["ghost"] * ds.sizes["visitor"])),
            r"not arm names: \['ghost'\]",
        ),
        (lambda ds: ds.assign_attrs(pytyche_family="binary"), "pytyche_family is 'binary'"),
        (lambda ds: ds.assign_attrs(pytyche_schema=2), "pytyche_schema is 2"),
        (lambda ds: ds.drop_vars("arm"), "no 'arm' coordinate"),
        (lambda ds: ds.assign(value=ds["value"].astype(str)), "expected a real number"),
    ],
)
def test_contract_violations_raise_value_error_naming_the_problem(mutate, message):
    ds = mutate(random_dataset("hurdle"))
    with pytest.raises(ValueError, match=message):
        pt.HurdleBCFResult(ds)


def test_posterior_without_family_variables():
    ds = random_dataset("continuous").rename({"expected": "mu"}).drop_attrs()
    with pytest.raises(ValueError, match="cannot tell the posterior's family"):
        pt.posterior(ds)
    with pytest.raises(ValueError, match=r"pytyche_family must be one of \[.*\], got 'poisson'"):
        pt.posterior(ds.assign_attrs(pytyche_family="poisson"))


def test_result_requires_a_dataset():
    with pytest.raises(TypeError, match=r"wraps an xarray\.Dataset"):
        pt.BinaryBCFResult(random_dataset("binary")["conversion"])
    with pytest.raises(TypeError, match=r"takes an xarray\.Dataset"):
        pt.posterior({"conversion": 1})


def test_repr_names_type_sizes_and_arms():
    text = repr(pt.posterior(random_dataset("binary", n_arms=2)))
    assert text.startswith("<BinaryBCFResult (")
    assert "visitor: 60" in text and "['control', 'T1']" in text


def test_observed_keeps_the_visitor_index():
    ds = random_dataset("binary").assign_coords(visitor=[f"v{i}" for i in range(60)])
    observed = pt.posterior(ds).observed
    assert list(observed.indexes["visitor"][:2]) == ["v0", "v1"]
    assert isinstance(observed, xr.Dataset)


@pytest.mark.parametrize("dims", [{"draw": 0}, {"chain": 0}])
def test_a_posterior_without_samples_is_rejected(dims):
    ds = random_dataset("binary", n_chains=2)
    with pytest.raises(ValueError, match=f"no samples: {dims}"):
        pt.posterior(ds.isel({d: slice(0, 0) for d in dims}))
