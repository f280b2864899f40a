"""Hypothesis properties of the allocation, across families, shapes and dask chunkings."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import pytyche as pt

from helpers import random_dataset

CANDIDATE_RULES = [
    "everyone",
    "device == 'mobile'",
    "device != 'mobile'",
    "device in ('desktop', 'tablet') and age > 30",
    "age <= 45",
    "returning == True",
    "returning == False and age > 25",
]


@st.composite
def posteriors(draw):
    ds = random_dataset(
        family=draw(st.sampled_from(["binary", "continuous", "hurdle"])),
        n_visitors=draw(st.integers(8, 40)),
        n_arms=draw(st.integers(2, 5)),
        n_draws=draw(st.integers(1, 12)),
        n_chains=draw(st.sampled_from([None, 1, 2])),
        seed=draw(st.integers(0, 2**32 - 1)),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
    )
    rules = draw(st.lists(st.sampled_from(CANDIDATE_RULES), min_size=1, max_size=5, unique=True))
    ids = draw(st.permutations(range(len(rules))))
    segments = [pt.DiscoveredSegment(i, rule) for i, rule in zip(ids, rules, strict=True)]
    members = pt.membership(segments, pt.posterior(ds).observed).sum("visitor")
    assume(bool((members > 0).all()))
    return ds, segments


@st.composite
def chunkings(draw, ds):
    """Random chunk sizes along every dim of the posterior."""

    def split(n):
        cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4, unique=True))
        edges = [0, *sorted(c for c in cuts if c < n), n]
        return tuple(b - a for a, b in itertools.pairwise(edges) if b > a)

    return {dim: split(size) for dim, size in ds.sizes.items()}


epsilons = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))


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
