"""The numpy kernels and the numpy/dask reduction paths against dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pytyche as pt
from pytyche import _kernels, analysis, reduction
from pytyche._kernels import apply_exploration_floor, segment_sums_block, visitor_atoms

from conftest import OVERLAPPING_SEGMENTS, random_dataset


def dense_sums(membership, *factors):
    metric = np.prod([f.astype(np.float64) for f in factors], axis=0)
    return np.einsum("sv,v...->s...", membership.astype(np.float64), metric)


@given(
    n_segments=st.integers(1, 140),
    n_visitors=st.integers(0, 60),
    density=st.floats(0.0, 1.0),
    disjoint=st.booleans(),
    seed=st.integers(0, 2**16),
    hurdle=st.booleans(),
)
def test_segment_sums_block_equals_dense_product(
    n_segments, n_visitors, density, disjoint, seed, hurdle
):
    rng = np.random.default_rng(seed)
    if disjoint:
        membership = np.zeros((n_segments, n_visitors), dtype=bool)
        member = rng.random(n_visitors) < density
        membership[rng.integers(0, n_segments, n_visitors)[member], np.flatnonzero(member)] = True
    else:
        membership = rng.random((n_segments, n_visitors)) < density
    factors = [rng.standard_normal((n_visitors, 3, 2)).astype(np.float32)]
    if hurdle:
        factors.append(rng.random((n_visitors, 3, 2)).astype(np.float32))
    actual = segment_sums_block(tuple(factors), membership)
    assert actual.dtype == np.float64 and actual.shape == (n_segments, 3, 2)
    np.testing.assert_allclose(actual, dense_sums(membership, *factors), rtol=1e-6, atol=1e-9)


def test_visitor_atoms_group_identical_patterns():
    membership = np.array(
        [
            [1, 0, 1, 0, 1, 0],
            [1, 0, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    labels, atom_membership = visitor_atoms(membership)
    assert labels[1] == labels[3] == labels[5] == -1  # in no segment: never read
    assert labels[0] == labels[2] != labels[4]
    np.testing.assert_array_equal(atom_membership[labels[0]], [True, True])
    np.testing.assert_array_equal(atom_membership[labels[4]], [True, False])


def test_non_finite_members_propagate_and_non_members_are_not_read():
    x = np.ones((4, 2))
    x[3, 1] = np.nan
    sums = segment_sums_block((x,), np.array([[1, 1, 1, 0], [0, 0, 1, 1]], dtype=bool))
    assert np.isfinite(sums[0]).all()
    assert np.isnan(sums[1, 1])


@pytest.mark.parametrize("budget", [reduction.ATOM_BUDGET_BYTES, 0])
@pytest.mark.parametrize("block_bytes", [reduction.NUMPY_BLOCK_BYTES, 200])
def test_numpy_paths_agree_with_dense(monkeypatch, budget, block_bytes):
    # budget 0 forces per-block atoms; a tiny block size forces many blocks and both threads.
    monkeypatch.setattr(reduction, "ATOM_BUDGET_BYTES", budget)
    monkeypatch.setattr(reduction, "NUMPY_BLOCK_BYTES", block_bytes)
    result = pt.posterior(random_dataset("hurdle", n_visitors=97, n_chains=2, seed=4))
    member = pt.membership(OVERLAPPING_SEGMENTS, result.observed)
    sums = reduction.segment_sums(result, member)
    _, members, _ = analysis._segment_statistics(result, member)
    np.testing.assert_array_equal(members.values, member.values.sum(axis=1))
    factors = [f.values for f in result.metric_factors()]
    np.testing.assert_allclose(sums.values, dense_sums(member.values, *factors), rtol=1e-12)
    assert sums.dims == ("segment", "chain", "draw", "arm")
    assert list(sums["segment"].values) == [s.id for s in OVERLAPPING_SEGMENTS]


def test_membership_length_must_match():
    result = pt.posterior(random_dataset("binary"))
    member = pt.membership(OVERLAPPING_SEGMENTS, result.observed).isel(visitor=slice(0, 10))
    with pytest.raises(ValueError, match="membership covers 10 visitors but the posterior has 60"):
        reduction.segment_sums(result, member)


@pytest.mark.parametrize(
    ("frequencies", "epsilon", "expected"),
    [
        ([0.5, 0.5], 0.0, [0.5, 0.5]),
        ([1.0, 0.0], 0.0, [1.0, 0.0]),
        ([1.0, 0.0, 0.0], 0.3, [0.8, 0.1, 0.1]),
        ([0.75, 0.105, 0.1, 0.045], 0.4, [0.7, 0.1, 0.1, 0.1]),
        ([0.4, 0.35, 0.25], 0.75, [0.4, 0.35, 0.25]),
        ([0.2, 0.8], 1.0, [0.5, 0.5]),
    ],
)
def test_exploration_floor_cases(frequencies, epsilon, expected):
    weights = apply_exploration_floor(np.array([frequencies]), epsilon)[0]
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)
    floor = epsilon / len(frequencies)
    assert (weights[np.array(expected) == floor] == floor).all()  # raised to exactly the floor


def test_exploration_floor_does_not_modify_its_input():
    frequencies = np.array([[1.0, 0.0]])
    apply_exploration_floor(frequencies, 0.5)
    np.testing.assert_array_equal(frequencies, [[1.0, 0.0]])


@pytest.mark.parametrize("budget", [reduction.ATOM_BUDGET_BYTES, 0])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_draws_stay_in_their_own_segments(monkeypatch, budget, bad_value):
    monkeypatch.setattr(reduction, "ATOM_BUDGET_BYTES", budget)
    ds = random_dataset("continuous", n_visitors=50, seed=8)
    result = pt.posterior(ds)
    member = pt.membership(OVERLAPPING_SEGMENTS, result.observed).values
    broken = int(np.flatnonzero(member.sum(axis=0) == 1)[0])  # in exactly one segment
    ds["expected"][broken, 2, 1] = bad_value
    sums = reduction.segment_sums(pt.posterior(ds), pt.membership(OVERLAPPING_SEGMENTS, ds))
    draws = ds["expected"].values
    expected = np.stack([draws[m].sum(axis=0) for m in member])  # members only, by masking
    np.testing.assert_allclose(sums.values, expected, rtol=1e-12, equal_nan=True)
    assert (~np.isfinite(sums.values)).any(axis=(1, 2)).sum() == 1


@pytest.mark.parametrize("min_visitors_per_atom", [0, 10**9])  # always atoms / always direct
@pytest.mark.parametrize("hurdle", [False, True])
def test_both_block_strategies_equal_the_masked_sum(monkeypatch, min_visitors_per_atom, hurdle):
    monkeypatch.setattr(_kernels, "MIN_VISITORS_PER_ATOM", min_visitors_per_atom)
    rng = np.random.default_rng(12)
    for n_segments in (1, 5, 70):
        membership = rng.random((n_segments, 40)) < 0.4
        factors = [rng.standard_normal((40, 6)) for _ in range(1 + hurdle)]
        factors[0][7, 2] = np.nan  # must reach exactly the segments holding visitor 7
        metric = factors[0] * factors[1] if hurdle else factors[0]
        expected = np.stack([metric[m].sum(axis=0) for m in membership])
        actual = segment_sums_block(tuple(factors), membership)
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
