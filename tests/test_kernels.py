"""The numpy kernels and the numpy/dask reduction paths against dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pytyche as pt
from pytyche import _kernels, reduction, statistics
from pytyche._kernels import (
    apply_exploration_floor,
    segment_sums_block,
    visitor_atoms,
)

from helpers import OVERLAPPING_SEGMENTS, random_dataset

DEFAULTS = pt.get_options()


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


@pytest.mark.parametrize(
    ("n_segments", "n_visitors", "share"),
    [(1, 50, 0.5), (7, 3_000, 0.3), (12, 20_000, 0.5), (64, 5_000, 0.5), (70, 2_000, 0.05)],
)
@pytest.mark.parametrize("few_atoms", [_kernels.FEW_ATOMS, 1])
def test_visitor_atoms_are_the_distinct_patterns_in_pattern_order(
    monkeypatch, n_segments, n_visitors, share, few_atoms
):
    # few_atoms=1 forces the sort where the hash table would serve: both give one answer.
    monkeypatch.setattr(_kernels, "FEW_ATOMS", few_atoms)
    rng = np.random.default_rng(n_segments)
    membership = rng.random((n_segments, n_visitors)) < share
    membership[:, :20] = membership[:, 20:40]  # repeated patterns
    labels, atom_membership = visitor_atoms(membership)

    # The reference: distinct non-empty columns, ordered by np.packbits bytes as words.
    packed = np.zeros((n_visitors, 8 * -(-n_segments // 64)), dtype=np.uint8)
    packed[:, : -(-n_segments // 8)] = np.packbits(membership, axis=0).T
    words = [tuple(row) for row in packed.view(np.uint64)]  # the first word sorts first
    distinct = sorted({w for w, col in zip(words, membership.T, strict=True) if col.any()})
    expected = np.array([distinct.index(w) if any(w) else -1 for w in words])
    np.testing.assert_array_equal(labels, expected)
    assert atom_membership.shape == (len(distinct), n_segments)
    for atom in range(len(distinct)):
        column = membership[:, np.flatnonzero(labels == atom)[0]]
        np.testing.assert_array_equal(atom_membership[atom], column)


def test_non_finite_members_propagate_and_non_members_are_not_read():
    x = np.ones((4, 2))
    x[3, 1] = np.nan
    sums = segment_sums_block((x,), np.array([[1, 1, 1, 0], [0, 0, 1, 1]], dtype=bool))
    assert np.isfinite(sums[0]).all()
    assert np.isnan(sums[1, 1])


@pytest.mark.parametrize("budget", [DEFAULTS["atom_budget_bytes"], 0])
@pytest.mark.parametrize("block_bytes", [DEFAULTS["numpy_block_bytes"], 200])
def test_numpy_paths_agree_with_dense(options, budget, block_bytes):
    # budget 0 forces per-block atoms; a tiny block size forces many blocks and both threads.
    options(atom_budget_bytes=budget, numpy_block_bytes=block_bytes)
    result = pt.posterior(random_dataset("hurdle", n_visitors=97, n_chains=2, seed=4))
    member = pt.membership(OVERLAPPING_SEGMENTS, result.observed)
    sums = reduction.segment_sums(result, member)
    _, members, _ = statistics.segment_statistics(result, member)
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


@pytest.mark.parametrize("budget", [DEFAULTS["atom_budget_bytes"], 0])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_draws_stay_in_their_own_segments(options, budget, bad_value):
    options(atom_budget_bytes=budget)
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


# --- The run-unrolled scatter kernel: runs of same-target rows summed in registers ----------


def naive_scatter(visitors, targets, n_targets, *factors):
    """out[targets[i]] += Π factors[visitors[i]], one pair at a time, in float64."""
    rows = [np.asarray(f, dtype=np.float64).reshape(len(f), -1) for f in factors]
    out = np.zeros((n_targets, rows[0].shape[1]))
    for visitor, target in zip(visitors, targets, strict=True):
        value = rows[0][visitor].copy()
        for other in rows[1:]:
            value *= other[visitor]
        out[target] += value
    return out


def runs_of(lengths, rng):
    """Pairs sorted by target with runs of the given lengths; visitors shuffled across runs."""
    targets = np.repeat(np.arange(len(lengths)), lengths).astype(np.intp)
    visitors = rng.permutation(len(targets)).astype(np.intp)
    return visitors, targets


@pytest.mark.parametrize("hurdle", [False, True])
def test_scatter_rows_runs_of_every_length(hurdle):
    # Runs of 1..9 and beyond 16 cover the 8-row step, the 4/2/1 remainders and their mixes.
    rng = np.random.default_rng(0)
    lengths = [*range(1, 10), 12, 15, 16, 17, 23]
    visitors, targets = runs_of(lengths, rng)
    factors = [rng.standard_normal((len(visitors), 5, 3)).astype(np.float32)]
    if hurdle:
        factors.append(rng.random((len(visitors), 5, 3)).astype(np.float32))
    out = np.zeros((len(lengths), 15))
    _kernels.scatter_rows(tuple(factors), visitors, targets, out)
    expected = naive_scatter(visitors, targets, len(lengths), *factors)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hurdle", [False, True])
def test_scatter_rows_interleaved_targets_and_repeated_visitors(hurdle):
    # Targets not sorted (short runs, a target revisited later) and a visitor added into
    # several targets, as the direct path does: every pair still lands exactly once.
    rng = np.random.default_rng(1)
    visitors = rng.integers(0, 11, 200).astype(np.intp)
    targets = rng.integers(0, 4, 200).astype(np.intp)
    targets[50:80] = 2  # one long run in the middle
    factors = [rng.standard_normal((11, 7)) for _ in range(1 + hurdle)]
    out = np.ones((4, 7))  # added into, not overwritten
    _kernels.scatter_rows(tuple(factors), visitors, targets, out)
    expected = 1 + naive_scatter(visitors, targets, 4, *factors)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hurdle", [False, True])
@pytest.mark.parametrize("position", [0, 3, 7, 8])  # first, inside the 8-row step, after it
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_row_inside_a_run_reaches_its_target_only(hurdle, position, bad):
    rng = np.random.default_rng(2)
    visitors, targets = runs_of([5, 11, 3], rng)
    run = np.flatnonzero(targets == 1)
    factors = [rng.standard_normal((len(visitors), 4)).astype(np.float32)]
    if hurdle:
        factors.append(rng.random((len(visitors), 4)).astype(np.float32) + 0.5)
    factors[0][visitors[run[position]], 2] = bad
    out = np.zeros((3, 4))
    _kernels.scatter_rows(tuple(factors), visitors, targets, out)
    expected = naive_scatter(visitors, targets, 3, *factors)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isfinite(out[[0, 2]]).all() and np.isfinite(np.delete(out[1], 2)).all()
    assert np.isnan(out[1, 2]) if np.isnan(bad) else out[1, 2] == bad


def test_opposite_infinities_in_one_run_make_nan():
    x = np.zeros((9, 2), dtype=np.float32)
    x[2, 0], x[6, 0] = np.inf, -np.inf  # summed together in registers: inf + -inf
    out = np.zeros((1, 2))
    _kernels.scatter_rows((x,), np.arange(9), np.zeros(9, dtype=np.intp), out)
    assert np.isnan(out[0, 0]) and out[0, 1] == 0


@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f2", "<i4", "<u2", ">i8", "<f4", "<f8"])
def test_scatter_rows_non_native_dtypes(dtype):
    # Big-endian (netCDF, Zarr), float16 and integer rows are converted block-wise; the sums
    # are the float64 sums of the stored values.
    rng = np.random.default_rng(3)
    visitors, targets = runs_of([1, 9, 4, 13], rng)
    values = rng.integers(0, 50, (len(visitors), 3, 2))
    factors = [values.astype(dtype), (values % 7).astype(dtype)]
    for n_factors in (1, 2):
        out = np.zeros((4, 6))
        _kernels.scatter_rows(tuple(factors[:n_factors]), visitors, targets, out)
        expected = naive_scatter(visitors, targets, 4, *factors[:n_factors])
        np.testing.assert_array_equal(out, expected)  # small integers: exact in any order


def test_scatter_rows_mixed_factor_dtypes_and_non_contiguous_rows():
    rng = np.random.default_rng(4)
    visitors, targets = runs_of([10, 2, 7], rng)
    conversion = rng.random((4, len(visitors), 3)).astype(np.float32).transpose(1, 0, 2)
    value = rng.gamma(2.0, 3.0, (len(visitors), 4, 3)).astype(">f8")
    out = np.zeros((3, 12))
    _kernels.scatter_rows((conversion, value), visitors, targets, out)
    expected = naive_scatter(visitors, targets, 3, conversion, value)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_atoms_to_segments_non_finite_atom_only_in_its_segments():
    rng = np.random.default_rng(5)
    atom_sums = rng.standard_normal((13, 6))
    atom_sums[4, 1] = np.nan
    atom_sums[9, 3] = np.inf
    atom_membership = rng.random((13, 10)) < 0.5
    atom_membership[4] = False
    atom_membership[4, [2, 7]] = True
    atom_membership[9] = False
    atom_membership[9, 7] = True
    actual = _kernels.atoms_to_segments(atom_sums, atom_membership)
    expected = np.zeros((10, 6))
    for atom, segment in zip(*np.nonzero(atom_membership), strict=True):
        expected[segment] += atom_sums[atom]
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    finite = np.isfinite(actual).all(axis=1)
    np.testing.assert_array_equal(np.flatnonzero(~finite), [2, 7])


@pytest.mark.parametrize("group_bytes", [1, 100, 10**9])  # groups of 8 rows, a few, one
@pytest.mark.parametrize("hurdle", [False, True])
def test_direct_path_groups_equal_the_masked_sum(monkeypatch, group_bytes, hurdle):
    # Independent overlapping segments: atoms as many as visitors, so each visitor's row is
    # added straight into its segments, group by group, pairs sorted by segment in a group.
    monkeypatch.setattr(_kernels, "DIRECT_GROUP_BYTES", group_bytes)
    rng = np.random.default_rng(6)
    membership = rng.random((24, 53)) < 0.5
    factors = [rng.standard_normal((53, 2, 3)).astype(np.float32) for _ in range(1 + hurdle)]
    factors[0][17, 1, 2] = np.nan
    actual = segment_sums_block(tuple(factors), membership)
    metric = np.prod([f.astype(np.float64) for f in factors], axis=0)
    expected = np.stack([metric[m].sum(axis=0) for m in membership])
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(actual).any(axis=(1, 2)), membership[:, 17])


@pytest.mark.parametrize("min_visitors_per_atom", [1, 10**9])  # atoms once / per chunk
@pytest.mark.parametrize("lazy_membership", [False, True])
@pytest.mark.parametrize("family", ["continuous", "hurdle"])
def test_dask_paths_agree_with_dense(monkeypatch, min_visitors_per_atom, lazy_membership, family):
    # With the membership in memory and few atoms, atoms are found once and each chunk returns
    # per-atom partials; otherwise (lazy membership, many atoms) each chunk finds its own.
    monkeypatch.setattr(reduction, "MIN_VISITORS_PER_ATOM", min_visitors_per_atom)
    ds = random_dataset(family, n_visitors=90, n_chains=2, seed=9)
    first = "expected" if family == "continuous" else "conversion"
    ds[first][31, 1, 5, 2] = np.nan  # a broken draw: only its segments become non-finite
    result = pt.posterior(ds.chunk({"visitor": 23}))
    member = pt.membership(OVERLAPPING_SEGMENTS, result.observed)  # lazy: chunked covariates
    member = member.chunk({"visitor": 40}) if lazy_membership else member.compute()
    sums = reduction.segment_sums(result, member)
    atoms_once = min_visitors_per_atom == 1 and not lazy_membership
    assert any("atom_sums" in name for name in sums.data.dask.layers) == atoms_once
    metric = np.prod([f.values.astype(np.float64) for f in result.metric_factors()], axis=0)
    expected = np.stack([metric[m].sum(axis=0) for m in np.asarray(member.values)])
    np.testing.assert_allclose(sums.values, expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(
        ~np.isfinite(sums.values).all(axis=(1, 2, 3)), np.asarray(member.values)[:, 31]
    )


@pytest.mark.parametrize("dtype", [">f4", "<f2", ">f8", "<f4"])
@pytest.mark.parametrize("draw_major", [False, True])
@pytest.mark.parametrize("budget", [DEFAULTS["atom_budget_bytes"], 0])
def test_numpy_path_converts_blocks_it_cannot_read_in_place(options, dtype, draw_major, budget):
    # Native visitor-major float blocks are read in place (large blocks: views); big-endian,
    # float16 and draw-major blocks are converted block by block (smaller blocks).
    options(atom_budget_bytes=budget, numpy_block_bytes=3000)
    ds = random_dataset("hurdle", n_visitors=70, n_chains=2, seed=10)
    for name in ("conversion", "value"):
        values = ds[name].values.astype(dtype)
        if draw_major:
            values = np.asfortranarray(values)
        ds[name] = (ds[name].dims, values)
    result = pt.posterior(ds)
    member = pt.membership(OVERLAPPING_SEGMENTS, result.observed)
    sums = reduction.segment_sums(result, member)
    factors = [f.values for f in result.metric_factors()]
    assert factors[0].dtype == np.dtype(dtype)
    metric = factors[0].astype(np.float64) * factors[1].astype(np.float64)
    expected = np.stack([metric[m].sum(axis=0) for m in member.values])
    np.testing.assert_allclose(sums.values, expected, rtol=1e-12)


@pytest.mark.parametrize("hurdle", [False, True])
def test_disjoint_block_goes_straight_into_segments(hurdle):
    # Disjoint segments: rows are added straight into their segment's row (no atom array);
    # visitors in no segment are never read, an empty segment sums to 0, a NaN stays in its
    # own segment, and a membership with no member at all gives zeros.
    rng = np.random.default_rng(11)
    segment = rng.integers(-1, 6, 75)  # -1: in no segment; segment 6 has no member
    membership = np.stack([segment == s for s in range(7)])
    factors = [rng.standard_normal((75, 3, 4)).astype(np.float32) for _ in range(1 + hurdle)]
    outside = np.flatnonzero(segment == -1)[0]
    factors[0][outside] = np.inf  # never read
    broken = np.flatnonzero(segment == 2)[3]
    factors[0][broken, 1, 1] = np.nan
    actual = segment_sums_block(tuple(factors), membership)
    metric = np.prod([f.astype(np.float64) for f in factors], axis=0)
    expected = np.stack([metric[m].sum(axis=0) for m in membership])
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(~np.isfinite(actual).all(axis=(1, 2)), np.arange(7) == 2)
    assert (actual[6] == 0).all()
    empty = segment_sums_block(tuple(factors), np.zeros((3, 75), dtype=bool))
    np.testing.assert_array_equal(empty, np.zeros((3, 3, 4)))


def test_atom_sums_block_groups_any_labels_and_checks_their_range():
    # Labels in any order, -1 for visitors in no atom, atoms without members.
    rng = np.random.default_rng(12)
    labels = rng.integers(-1, 9, 300)
    labels[labels == 4] = 5  # atom 4 has no member
    x = rng.standard_normal((300, 2, 3)).astype(np.float32)
    x[labels == -1] = np.nan  # never read
    sums = np.zeros((10, 6))
    _kernels.atom_sums_block((x,), labels, sums)
    expected = naive_scatter(np.flatnonzero(labels >= 0), labels[labels >= 0], 10, x)
    np.testing.assert_allclose(sums, expected, rtol=1e-12, atol=1e-12)
    assert (sums[4] == 0).all() and (sums[9] == 0).all()
    with pytest.raises(IndexError, match=r"atom labels must lie in \[-1, 10\), got -1 to 10"):
        _kernels.atom_sums_block((x,), np.where(labels == 8, 10, labels), sums)
    with pytest.raises(IndexError, match="atom labels"):
        _kernels.atom_sums_block((x,), np.full(300, -2), sums)


def test_scatter_rows_checks_its_pairs():
    x = np.ones((3, 2))
    out = np.zeros((2, 2))
    with pytest.raises(IndexError, match=r"targets must lie in \[0, 2\), got up to 2"):
        _kernels.scatter_rows((x,), np.array([0, 1]), np.array([0, 2]), out)
    with pytest.raises(IndexError, match=r"visitors must lie in \[0, 3\)"):
        _kernels.scatter_rows((x,), np.array([0, 3]), np.array([0, 1]), out)
    with pytest.raises(IndexError, match="visitors must lie"):
        _kernels.scatter_rows((x,), np.array([0, 1]), np.array([-1, 1]), out)
    with pytest.raises(ValueError, match="2 visitors but 1 targets"):
        _kernels.scatter_rows((x,), np.array([0, 1]), np.array([0]), out)
    assert (out == 0).all()
