"""Hypothesis properties of the allocation, across families, shapes and dask chunkings."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import pytyche as pt

from strategies import chunkings, epsilons, posteriors


@given(posteriors(), epsilons)
def test_weights_sum_to_one_and_respect_the_floor(case, epsilon):
    ds, segments = case
    allocation = pt.thompson_allocation(pt.posterior(ds), segments, epsilon)
    n_arms = ds.sizes["arm"]
    for weights in allocation.values():
        assert abs(math.fsum(weights.values()) - 1.0) <= 1e-12
        if epsilon > 0:
            assert min(weights.values()) >= epsilon / n_arms - 1e-12


@given(posteriors())
def test_epsilon_zero_gives_multiples_of_one_over_samples(case):
    ds, segments = case
    result = pt.posterior(ds)
    for weights in pt.thompson_allocation(result, segments, 0.0).values():
        for w in weights.values():
            wins = round(w * result.n_samples)
            assert w == wins / result.n_samples  # exactly the float of wins / samples


@given(posteriors(), st.randoms(use_true_random=False))
def test_invariant_to_visitor_order(case, random):
    ds, segments = case
    order = list(range(ds.sizes["visitor"]))
    random.shuffle(order)
    expected = pt.thompson_allocation(pt.posterior(ds), segments, 0.0)
    shuffled = pt.thompson_allocation(pt.posterior(ds.isel(visitor=order)), segments, 0.0)
    assert shuffled == expected


@given(st.data())
def test_dask_backed_equals_numpy_backed(data):
    ds, segments = data.draw(posteriors())
    chunks = data.draw(chunkings(ds))
    chunk_coords = data.draw(st.booleans())
    if chunk_coords:
        lazy = ds.chunk(chunks)
    else:
        lazy = ds.assign({name: ds[name].chunk(chunks) for name in ds.data_vars})
    eager, lazy = pt.posterior(ds), pt.posterior(lazy)
    assert pt.thompson_allocation(lazy, segments) == pt.thompson_allocation(eager, segments)
    # Chunking changes only the summation order: differences are float64 rounding of O(1)
    # values, so a mean that nearly cancels to 0 needs an absolute bound too.
    np.testing.assert_allclose(
        pt.segment_means(lazy, segments).values,
        pt.segment_means(eager, segments).values,
        rtol=1e-12,
        atol=1e-14,
    )
