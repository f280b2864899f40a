"""The ds.tyche accessor forwards to the documented functions."""

from __future__ import annotations

import inspect

import pytest
import xarray as xr

import pytyche as pt
from pytyche.accessor import TycheAccessor

from helpers import OVERLAPPING_SEGMENTS, counting_scheduler, random_dataset


@pytest.mark.parametrize("family", ["binary", "continuous", "hurdle"])
def test_accessor_equals_functions(family):
    ds = random_dataset(family, seed=6)
    result = pt.posterior(ds)
    assert type(ds.tyche.result) is type(result)
    assert ds.tyche.thompson_allocation(OVERLAPPING_SEGMENTS) == pt.thompson_allocation(
        result, OVERLAPPING_SEGMENTS
    )
    assert ds.tyche.thompson_allocation(OVERLAPPING_SEGMENTS, epsilon=0.5) == (
        pt.thompson_allocation(result, OVERLAPPING_SEGMENTS, epsilon=0.5)
    )
    xr.testing.assert_identical(
        ds.tyche.segment_means(OVERLAPPING_SEGMENTS),
        pt.segment_means(result, OVERLAPPING_SEGMENTS),
    )
    xr.testing.assert_identical(
        ds.tyche.win_frequencies(OVERLAPPING_SEGMENTS),
        pt.win_frequencies(result, OVERLAPPING_SEGMENTS),
    )
    xr.testing.assert_identical(
        ds.tyche.segment_summary(OVERLAPPING_SEGMENTS, ci=0.9),
        pt.segment_summary(result, OVERLAPPING_SEGMENTS, ci=0.9),
    )
    xr.testing.assert_identical(
        ds.tyche.membership(OVERLAPPING_SEGMENTS),
        pt.membership(OVERLAPPING_SEGMENTS, result.observed),
    )


def test_accessor_stays_lazy():
    ds = random_dataset("hurdle").chunk({"visitor": 16})
    with counting_scheduler(computes=0):
        ds.tyche.segment_means(OVERLAPPING_SEGMENTS)
        ds.tyche.win_frequencies(OVERLAPPING_SEGMENTS)
    with counting_scheduler(computes=1) as scheduler:
        ds.tyche.thompson_allocation(OVERLAPPING_SEGMENTS)
    assert scheduler.computes == 1


def test_accessor_errors_come_from_the_contract():
    with pytest.raises(ValueError, match="cannot tell the posterior's family"):
        xr.Dataset({"x": ("visitor", [1.0])}).tyche.thompson_allocation({0: "everyone"})
    with pytest.raises(ValueError, match="no observed data"):
        random_dataset(observed=False).tyche.membership({0: "everyone"})


def test_each_method_says_which_function_it_calls():
    for name, method in inspect.getmembers(TycheAccessor, inspect.isfunction):
        if name.startswith("_"):
            continue
        assert f"pytyche.analysis.{name}" in method.__doc__, name
    assert "pytyche.posterior(ds)" in TycheAccessor.result.__doc__


def test_analysis_module_is_the_public_namespace():
    assert pt.analysis.thompson_allocation is pt.thompson_allocation
    assert pt.analysis.segment_means is pt.segment_means
    assert pt.analysis.win_frequencies is pt.win_frequencies
    assert pt.analysis.segment_summary is pt.segment_summary
    assert pt.analysis.recommend is pt.recommend
