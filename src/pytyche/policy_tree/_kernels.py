"""Numpy/numba kernels of the policy-tree search: numpy in, numpy out. No xarray, no dask.

The search never touches visitors once their covariates are binned: every decision is made on
histograms — per covariate bin (or pair of bins), the sums of the visitors' posterior-mean
contrasts and their count. Building those histograms is the only step that reads every
visitor, so it is compiled; everything after it works on arrays of at most a few thousand bins.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "best_depth1",
    "best_depth2",
    "best_exact3",
    "node_histograms",
    "posterior_mean_block",
]


# Visitors are gathered this many at a time into a small local copy (their codes and rows),
# which every histogram of the node then reads from cache: one pass over the node's visitors,
# not one per covariate and pair.
HISTOGRAM_BLOCK = 2048


@numba.njit(nogil=True, cache=True)
def _node_histograms(codes, index, values, features, pairs, hists, joint):
    n_columns = values.shape[1]
    n_rows = hists.shape[1]
    block = min(HISTOGRAM_BLOCK, max(index.size, 1))
    block_codes = np.empty((codes.shape[0], block), dtype=np.int32)
    block_rows = np.empty((block, n_columns))
    unrolled = n_columns - n_columns % 4
    n_jobs = features.size + pairs.shape[0]
    for start in range(0, index.size, block):
        n = min(block, index.size - start)
        for i in range(n):
            visitor = index[start + i]
            for c in range(n_columns):
                block_rows[i, c] = values[visitor, c]
            for f in range(codes.shape[0]):
                block_codes[f, i] = codes[f, visitor]
        for job in range(n_jobs):
            # A covariate's histogram is a pair histogram whose first code is always 0.
            if job < features.size:
                out = hists[features[job]]
                first = block_codes[features[job]]
                second = first
                scale = 0
            else:
                pair = job - features.size
                out = joint[pairs[pair, 2]]
                first = block_codes[pairs[pair, 0]]
                second = block_codes[pairs[pair, 1]]
                scale = n_rows
            for i in range(n):
                cell = first[i] * scale + second[i]
                # Four columns at a time, written out: the compiler adds them as one vector.
                for c in range(0, unrolled, 4):
                    out[cell, c] += block_rows[i, c]
                    out[cell, c + 1] += block_rows[i, c + 1]
                    out[cell, c + 2] += block_rows[i, c + 2]
                    out[cell, c + 3] += block_rows[i, c + 3]
                for c in range(unrolled, n_columns):
                    out[cell, c] += block_rows[i, c]


def node_histograms(
    codes: np.ndarray,
    index: np.ndarray,
    values: np.ndarray,
    features: np.ndarray,
    pairs: np.ndarray,
    hists: np.ndarray,
    joint: np.ndarray,
) -> None:
    """Add the rows of the visitors in `index` into per-bin and per-pair-of-bins histograms.

    One pass over the visitors, a block at a time; each histogram adds its visitors in
    `index` order, so the sums do not depend on which histograms share a call. Reads
    `codes`, `index`, `values`, `features` and `pairs`; writes only the histograms named in
    `features` and `pairs`, by adding into them.

    Parameters
    ----------
    codes : numpy.ndarray
        int32 (covariate, visitor) bin codes, each in ``[0, hists.shape[1])`` (not checked:
        the binning makes them so).
    index : numpy.ndarray
        int64 positions of the visitors to include.
    values : numpy.ndarray
        float64 (visitor, column), C-contiguous.
    features : numpy.ndarray
        int64 covariates whose histogram ``hists[f]`` to build.
    pairs : numpy.ndarray
        int64 (k, 3) rows ``(f, g, p)``: build ``joint[p]``, by the codes of f and g.
    hists : numpy.ndarray
        float64 (covariate, code, column), C-contiguous, added to in place.
    joint : numpy.ndarray
        float64 (pair, code of f, code of g, column), C-contiguous, added to in place.

    Raises
    ------
    ValueError
        When a histogram array is not C-contiguous or `joint` does not match `hists`.

    Examples
    --------
    >>> codes = np.array([[0, 1, 1], [1, 1, 0]], dtype=np.int32)
    >>> values = np.array([[1.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    >>> hists, joint = np.zeros((2, 2, 2)), np.zeros((1, 2, 2, 2))
    >>> node_histograms(codes, np.arange(3), values, np.array([0]),
    ...                 np.array([[0, 1, 0]]), hists, joint)
    >>> hists[0, :, 0], joint[0, 1, :, 0]
    (array([1., 6.]), array([4., 2.]))
    """
    rows = hists.shape[1]
    if not (hists.flags.c_contiguous and joint.flags.c_contiguous):
        raise ValueError("node_histograms writes into C-contiguous histograms only")
    if joint.size and joint.shape[1:3] != (rows, rows):
        raise ValueError(f"joint histograms must have {rows} × {rows} codes, got {joint.shape}")
    _node_histograms(
        codes,
        index,
        values,
        features,
        pairs,
        hists,
        joint.reshape(len(joint), rows * rows, values.shape[1]),
    )


@numba.njit(nogil=True, cache=True)
def _mean_rows(rows, out):
    n_samples = rows.shape[1]
    for visitor in range(rows.shape[0]):
        for arm in range(rows.shape[2]):
            total = 0.0
            for sample in range(n_samples):
                total += np.float64(rows[visitor, sample, arm])
            out[visitor, arm] = total / n_samples


@numba.njit(nogil=True, cache=True)
def _mean_products(rows, factor_rows, out):
    # Hurdle metric: conversion × value in float64, never materialized.
    n_samples = rows.shape[1]
    for visitor in range(rows.shape[0]):
        for arm in range(rows.shape[2]):
            total = 0.0
            for sample in range(n_samples):
                total += np.float64(rows[visitor, sample, arm]) * np.float64(
                    factor_rows[visitor, sample, arm]
                )
            out[visitor, arm] = total / n_samples


def posterior_mean_block(*factors: np.ndarray) -> np.ndarray:
    """Posterior-mean metric of one visitor block: the mean over samples of the factors' product.

    Parameters
    ----------
    *factors : numpy.ndarray
        One or two arrays of shape (visitor, sample dims..., arm) whose product is the metric.

    Returns
    -------
    numpy.ndarray
        float64 (visitor, arm). Non-finite draws propagate.
    """
    shape = factors[0].shape
    n_visitors, n_arms = shape[0], shape[-1]
    n_samples = math.prod(shape[1:-1])
    rows = [np.ascontiguousarray(f).reshape(n_visitors, n_samples, n_arms) for f in factors]
    out = np.empty((n_visitors, n_arms), dtype=np.float64)
    if n_visitors == 0:
        return out
    if len(rows) == 1:
        _mean_rows(rows[0], out)
    else:
        _mean_products(rows[0], rows[1], out)
    return out


# --------------------------------------------------------------------------- split scoring
#
# The depth-1 and depth-2 searches of one node, on its histograms. A covariate's candidate
# splits are either the prefixes of its value bins ("x <= t": split s sends bins 0..s left) or,
# for a few-level categorical, explicit two-way partitions (``masks[f, s, b]``: split s sends
# bin b left). Value rows are ``[contrast sums..., count]``. Sums run in bin order: prefix
# splits sum the left side from the front and the right side from the back, so neither side
# is a difference.


@numba.njit(nogil=True, cache=True)
def _leaf(row, n_contrasts):
    # Value and arm of a leaf from its row: the largest positive contrast sum and its arm
    # (first maximum), else 0 and control.
    best = row[0]
    arm = 0
    for k in range(1, n_contrasts):
        if row[k] > best:
            best = row[k]
            arm = k
    if best > 0:
        return best, arm + 1
    return 0.0, 0


@numba.njit(nogil=True, cache=True)
def _side_sums(get, n_bins, subset, masks_f, n_splits, left, right):
    # Left and right sums (split, column) of rows get[b] (b < n_bins).
    n_columns = left.shape[1]
    if subset:
        for s in range(n_splits):
            for c in range(n_columns):
                lo = 0.0
                hi = 0.0
                for b in range(n_bins):
                    if masks_f[s, b]:
                        lo += get[b, c]
                    else:
                        hi += get[b, c]
                left[s, c] = lo
                right[s, c] = hi
    else:
        for c in range(n_columns):
            acc = 0.0
            for s in range(n_splits):
                acc += get[s, c]
                left[s, c] = acc
            acc = 0.0
            for b in range(n_bins - 1, 0, -1):
                acc += get[b, c]
                right[b - 1, c] = acc


@numba.njit(nogil=True, cache=True)
def _best_split(hist, n_bins, subset, masks_f, n_splits, min_size, n_contrasts, cost, left, right):
    # Best split of one node on one covariate: (value, split); -inf when none is feasible (a
    # side under min_size, or both sides serving the same arm).
    _side_sums(hist, n_bins, subset, masks_f, n_splits, left, right)
    count = left.shape[1] - 1
    best = -np.inf
    split = 0
    for s in range(n_splits):
        if left[s, count] >= min_size and right[s, count] >= min_size:
            left_value, left_arm = _leaf(left[s], n_contrasts)
            right_value, right_arm = _leaf(right[s], n_contrasts)
            if left_arm != right_arm:
                value = left_value + right_value - cost
                if value > best:
                    best = value
                    split = s
    return best, split


def best_depth1(hists, n_bins, n_splits, subset, masks, min_size, cost):
    """The best split of one node: the depth-1 search on its histograms.

    Parameters
    ----------
    hists : numpy.ndarray
        float64 (covariate, bin, column): per covariate the value-bin sums of the node's
        visitors (rows past ``n_bins`` are ignored); columns are the contrast sums, then the
        count.
    n_bins : numpy.ndarray
        int64 (covariate,): value bins per covariate.
    n_splits : numpy.ndarray
        int64 (covariate,): candidate splits per covariate.
    subset : numpy.ndarray
        bool (covariate,): True where the splits are explicit partitions, else bin prefixes.
    masks : numpy.ndarray
        bool (covariate, split, bin): the bins each partition sends left.
    min_size : float
        Smallest side, in visitors (count column).
    cost : float
        Subtracted once per split.

    Returns
    -------
    tuple
        ``(value, covariate, split)``: the best split's value (-inf and covariate -1 when no
        split is feasible); ties go to the first covariate, then the first split.
    """
    return _best_depth1(hists, n_bins, n_splits, subset, masks, float(min_size), float(cost))


@numba.njit(nogil=True, cache=True)
def _best_depth1(hists, n_bins, n_splits, subset, masks, min_size, cost):
    n_features, _, n_columns = hists.shape
    n_contrasts = n_columns - 1
    most = max(1, n_splits.max())
    left = np.empty((most, n_columns))
    right = np.empty((most, n_columns))
    best, feature, split = -np.inf, -1, 0
    for f in range(n_features):
        if n_splits[f] == 0:
            continue
        value, s = _best_split(
            hists[f],
            n_bins[f],
            subset[f],
            masks[f],
            n_splits[f],
            min_size,
            n_contrasts,
            cost,
            left,
            right,
        )
        if value > best:
            best, feature, split = value, f, s
    return best, feature, split


def best_depth2(hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost):
    """The best tree of depth <= 2 below one node, from its histograms.

    A depth-2 tree is a split on some covariate, then on each side a leaf or that side's best
    split (:func:`best_depth1`). Two leaf children must serve different arms.

    Parameters
    ----------
    hists, n_bins, n_splits, subset, masks, min_size, cost
        As :func:`best_depth1`.
    joint : numpy.ndarray
        float64 (pair, bin, bin, column): per pair of covariates f < g, the sums per pair of
        bins (bin of f, bin of g).
    pair_ids : numpy.ndarray
        int64 (covariate, covariate): the pair index of f < g in `joint` (both orders).

    Returns
    -------
    tuple
        ``(value, covariate, split, shape, left covariate, left split, right covariate,
        right split)``: the best root split's value (-inf and covariate -1 when none), and
        which children split (``shape``: 0 neither, 1 right, 2 left, 3 both), on what. Ties
        go to the first covariate, the first split, then the simplest shape.
    """
    return _best_depth2(
        hists, joint, pair_ids, n_bins, n_splits, subset, masks, float(min_size), float(cost)
    )


@numba.njit(nogil=True, cache=True)
def _best_depth2(hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost):
    work = _workspace(hists.shape[1], hists.shape[2], n_splits)
    return _depth2(hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost, work)


@numba.njit(nogil=True, cache=True)
def _workspace(n_rows, n_columns, n_splits):
    most = max(1, n_splits.max())
    return (
        np.empty((2, most, n_columns)),  # the two sides' totals per split
        np.empty((2, most, n_rows, n_columns)),  # the two children's histograms per split
        np.empty((most, n_columns)),
        np.empty((most, n_columns)),
        np.empty((n_rows, n_columns)),
        np.empty(most, dtype=np.int64),  # feasible splits
        np.empty((2, most)),  # best split value of each child
        np.empty((2, most), dtype=np.int64),  # its covariate
        np.empty((2, most), dtype=np.int64),  # and split
    )


@numba.njit(nogil=True, cache=True)
def _joint_at(joint, pair, f, g, b_f, b_g, c):
    # Sums of (bin b_f of f, bin b_g of g); the pair is stored with the smaller index first.
    if f < g:
        return joint[pair, b_f, b_g, c]
    return joint[pair, b_g, b_f, c]


@numba.njit(nogil=True, cache=True)
def _depth2(hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost, work):
    totals, children, left, right, acc, feasible, child_value, child_feature, child_split = work
    n_features = hists.shape[0]
    n_columns = hists.shape[2]
    n_contrasts = n_columns - 1
    count = n_columns - 1
    best = -np.inf
    result = (-1, 0, 0, -1, 0, -1, 0)
    for f in range(n_features):
        splits_f = n_splits[f]
        if splits_f == 0:
            continue
        bins_f = n_bins[f]
        _side_sums(hists[f], bins_f, subset[f], masks[f], splits_f, totals[0], totals[1])
        n_feasible = 0
        for s in range(splits_f):
            if totals[0, s, count] >= min_size and totals[1, s, count] >= min_size:
                feasible[n_feasible] = s
                n_feasible += 1
        if n_feasible == 0:
            continue
        child_value[:, :n_feasible] = -np.inf
        child_feature[:, :n_feasible] = -1
        child_split[:, :n_feasible] = 0
        for g in range(n_features):
            splits_g = n_splits[g]
            if splits_g == 0:
                continue
            bins_g = n_bins[g]
            if g == f and not subset[f]:
                # A prefix split of f again: the left child holds bins 0..s, so only splits
                # t < s can leave both sides non-empty; the right child holds bins s+1...
                for i in range(n_feasible):
                    s = feasible[i]
                    for side in range(2):
                        if totals[side, s, count] < 2 * min_size:
                            continue  # too small for two leaves of min_size
                        lo = 0 if side == 0 else s + 1
                        hi = s + 1 if side == 0 else bins_f
                        if hi - lo < 2:
                            continue
                        value, t = _best_split(
                            hists[f, lo:hi],
                            hi - lo,
                            False,
                            masks[f],
                            hi - lo - 1,
                            min_size,
                            n_contrasts,
                            cost,
                            left,
                            right,
                        )
                        if value > child_value[side, i]:
                            child_value[side, i] = value
                            child_feature[side, i] = g
                            child_split[side, i] = t + lo
                continue
            # The two children's histograms of g, for every split of f.
            if g == f:  # a partition of f again: each child keeps its side's bins
                for i in range(n_feasible):
                    s = feasible[i]
                    for b in range(bins_f):
                        goes_left = masks[f, s, b]
                        for c in range(n_columns):
                            value = hists[f, b, c]
                            children[0, s, b, c] = value if goes_left else 0.0
                            children[1, s, b, c] = 0.0 if goes_left else value
            elif subset[f]:
                pair = pair_ids[f, g]
                for s in range(splits_f):
                    for b_g in range(bins_g):
                        for c in range(n_columns):
                            lo = 0.0
                            hi = 0.0
                            for b in range(bins_f):
                                if masks[f, s, b]:
                                    lo += _joint_at(joint, pair, f, g, b, b_g, c)
                                else:
                                    hi += _joint_at(joint, pair, f, g, b, b_g, c)
                            children[0, s, b_g, c] = lo
                            children[1, s, b_g, c] = hi
            else:  # prefixes of f: running sums from the front (left) and the back (right)
                pair = pair_ids[f, g]
                acc[:bins_g] = 0.0
                for s in range(splits_f):
                    for b_g in range(bins_g):
                        for c in range(n_columns):
                            acc[b_g, c] += _joint_at(joint, pair, f, g, s, b_g, c)
                            children[0, s, b_g, c] = acc[b_g, c]
                acc[:bins_g] = 0.0
                for b in range(bins_f - 1, 0, -1):
                    for b_g in range(bins_g):
                        for c in range(n_columns):
                            acc[b_g, c] += _joint_at(joint, pair, f, g, b, b_g, c)
                            children[1, b - 1, b_g, c] = acc[b_g, c]
            for i in range(n_feasible):
                s = feasible[i]
                for side in range(2):
                    if totals[side, s, count] < 2 * min_size:
                        continue  # too small for two leaves of min_size
                    value, t = _best_split(
                        children[side, s],
                        bins_g,
                        subset[g],
                        masks[g],
                        splits_g,
                        min_size,
                        n_contrasts,
                        cost,
                        left,
                        right,
                    )
                    if value > child_value[side, i]:
                        child_value[side, i] = value
                        child_feature[side, i] = g
                        child_split[side, i] = t
        for i in range(n_feasible):
            s = feasible[i]
            left_leaf, left_arm = _leaf(totals[0, s], n_contrasts)
            right_leaf, right_arm = _leaf(totals[1, s], n_contrasts)
            # The four shapes, simplest first so that ties keep it simple.
            shape_value = (left_leaf + right_leaf if left_arm != right_arm else -np.inf) - cost
            shape = 0
            value = left_leaf + child_value[1, i] - cost
            if value > shape_value:
                shape_value, shape = value, 1
            value = child_value[0, i] + right_leaf - cost
            if value > shape_value:
                shape_value, shape = value, 2
            value = child_value[0, i] + child_value[1, i] - cost
            if value > shape_value:
                shape_value, shape = value, 3
            if shape_value > best:
                best = shape_value
                result = (
                    f,
                    s,
                    shape,
                    child_feature[0, i],
                    child_split[0, i],
                    child_feature[1, i],
                    child_split[1, i],
                )
    f, s, shape, left_f, left_s, right_f, right_s = result
    return best, f, s, shape, left_f, left_s, right_f, right_s


# --------------------------------------------------------------------------- exact depth 3


def best_exact3(
    codes, index, values, n_bins, n_splits, subset, masks, pairs, pair_ids, min_size, cost
):
    """The best tree of depth <= 3 below one node, exhaustively.

    Every candidate root split is scored with the best depth-2 tree of each child
    (:func:`best_depth2`). The children's histograms are not rebuilt for each split: the
    visitors are sorted by their bin of the split covariate once, and the left children of
    the prefix splits s = 0, 1, ... are grown by adding the visitors of bin s (the right
    children likewise from the last bin down).

    Parameters
    ----------
    codes : numpy.ndarray
        int32 (covariate, visitor): every visitor's bin code (``n_bins`` for missing).
    index : numpy.ndarray
        int64 positions of the node's visitors.
    values : numpy.ndarray
        float64 (visitor, column): weighted contrasts, then the weight.
    n_bins, n_splits, subset, masks, min_size, cost
        As :func:`best_depth1`.
    pairs : numpy.ndarray
        int64 (pair, 2): the covariate pairs f < g, in ``pair_ids`` order.
    pair_ids : numpy.ndarray
        As :func:`best_depth2`.

    Returns
    -------
    tuple
        ``(value, covariate, split, grow left, grow right)``: the best root split's value
        (-inf and covariate -1 when none), and whether each child is a depth-2 tree (True)
        or a leaf. Ties go to the first covariate, the first split, then the simplest shape.
    """
    return _best_exact3(
        codes,
        index,
        values,
        n_bins,
        n_splits,
        subset,
        masks,
        pairs,
        pair_ids,
        float(min_size),
        float(cost),
    )


@numba.njit(nogil=True, cache=True)
def _add_visitor(codes, values, visitor, pairs, hists, joint):
    for f in range(codes.shape[0]):
        row = codes[f, visitor]
        for c in range(values.shape[1]):
            hists[f, row, c] += values[visitor, c]
    for pair in range(pairs.shape[0]):
        a = codes[pairs[pair, 0], visitor]
        b = codes[pairs[pair, 1], visitor]
        for c in range(values.shape[1]):
            joint[pair, a, b, c] += values[visitor, c]


@numba.njit(nogil=True, cache=True)
def _child_plan(hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost, work):
    # (leaf value, leaf arm, best depth-2 split value) of a child from its histograms. The
    # total sums the first covariate's bins, its missing bin included.
    n_columns = hists.shape[2]
    total = np.zeros(n_columns)
    for b in range(n_bins[0] + 1):
        for c in range(n_columns):
            total[c] += hists[0, b, c]
    leaf_value, leaf_arm = _leaf(total, n_columns - 1)
    split_value = _depth2(
        hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost, work
    )[0]
    return leaf_value, leaf_arm, split_value


@numba.njit(nogil=True, cache=True)
def _best_exact3(
    codes, index, values, n_bins, n_splits, subset, masks, pairs, pair_ids, min_size, cost
):
    n_features = codes.shape[0]
    n_columns = values.shape[1]
    n_rows = n_bins.max() + 1
    count = n_columns - 1
    most = max(1, n_splits.max())
    work = _workspace(n_rows, n_columns, n_splits)
    hists = np.zeros((n_features, n_rows, n_columns))
    joint = np.zeros((pairs.shape[0], n_rows, n_rows, n_columns))
    other_hists = np.zeros((n_features, n_rows, n_columns))
    other_joint = np.zeros((pairs.shape[0], n_rows, n_rows, n_columns))
    node = np.zeros((n_rows, n_columns))
    sides = np.empty((2, most, n_columns))
    # Per split and side: leaf value, leaf arm, best depth-2 split value.
    plans = np.empty((2, most, 3))
    best = -np.inf
    result = (-1, 0, False, False)
    for f in range(n_features):
        splits_f = n_splits[f]
        if splits_f == 0:
            continue
        bins_f = n_bins[f]
        # The node's histogram of f gives every split's side counts, as the depth-2 search
        # computes them.
        node[:] = 0.0
        for position in range(index.size):
            visitor = index[position]
            for c in range(n_columns):
                node[codes[f, visitor], c] += values[visitor, c]
        _side_sums(node, bins_f, subset[f], masks[f], splits_f, sides[0], sides[1])
        feasible = np.zeros(splits_f, dtype=np.bool_)
        for s in range(splits_f):
            feasible[s] = sides[0, s, count] >= min_size and sides[1, s, count] >= min_size
        if not feasible.any():
            continue
        if subset[f]:
            for s in range(splits_f):
                if not feasible[s]:
                    continue
                hists[:] = 0.0
                joint[:] = 0.0
                other_hists[:] = 0.0
                other_joint[:] = 0.0
                for position in range(index.size):
                    visitor = index[position]
                    row = codes[f, visitor]
                    if row == bins_f:  # missing: in neither child
                        continue
                    if masks[f, s, row]:
                        _add_visitor(codes, values, visitor, pairs, hists, joint)
                    else:
                        _add_visitor(codes, values, visitor, pairs, other_hists, other_joint)
                (
                    plans[0, s, 0],
                    plans[0, s, 1],
                    plans[0, s, 2],
                ) = _child_plan(
                    hists, joint, pair_ids, n_bins, n_splits, subset, masks, min_size, cost, work
                )
                (
                    plans[1, s, 0],
                    plans[1, s, 1],
                    plans[1, s, 2],
                ) = _child_plan(
                    other_hists,
                    other_joint,
                    pair_ids,
                    n_bins,
                    n_splits,
                    subset,
                    masks,
                    min_size,
                    cost,
                    work,
                )
        else:
            # The node's visitors by their bin of f (missing last), in node order within a bin.
            starts = np.zeros(bins_f + 2, dtype=np.int64)
            for position in range(index.size):
                starts[codes[f, index[position]] + 1] += 1
            for b in range(bins_f + 1):
                starts[b + 1] += starts[b]
            fill = starts.copy()
            ordered = np.empty(index.size, dtype=np.int64)
            for position in range(index.size):
                visitor = index[position]
                row = codes[f, visitor]
                ordered[fill[row]] = visitor
                fill[row] += 1
            hists[:] = 0.0
            joint[:] = 0.0
            for s in range(splits_f):  # left child of s: bins 0..s
                for position in range(starts[s], starts[s + 1]):
                    _add_visitor(codes, values, ordered[position], pairs, hists, joint)
                if feasible[s]:
                    (
                        plans[0, s, 0],
                        plans[0, s, 1],
                        plans[0, s, 2],
                    ) = _child_plan(
                        hists,
                        joint,
                        pair_ids,
                        n_bins,
                        n_splits,
                        subset,
                        masks,
                        min_size,
                        cost,
                        work,
                    )
            hists[:] = 0.0
            joint[:] = 0.0
            for s in range(splits_f - 1, -1, -1):  # right child of s: bins s+1..
                for position in range(starts[s + 1], starts[s + 2]):
                    _add_visitor(codes, values, ordered[position], pairs, hists, joint)
                if feasible[s]:
                    (
                        plans[1, s, 0],
                        plans[1, s, 1],
                        plans[1, s, 2],
                    ) = _child_plan(
                        hists,
                        joint,
                        pair_ids,
                        n_bins,
                        n_splits,
                        subset,
                        masks,
                        min_size,
                        cost,
                        work,
                    )
        for s in range(splits_f):
            if not feasible[s]:
                continue
            # The best combination of the children: each a leaf or its depth-2 tree; two
            # leaves must serve different arms.
            value = -np.inf
            grown = (False, False)
            for option in range(4):
                grow_left = option >= 2
                grow_right = option % 2 == 1
                if not grow_left and not grow_right and plans[0, s, 1] == plans[1, s, 1]:
                    continue
                candidate = (
                    (plans[0, s, 2] if grow_left else plans[0, s, 0])
                    + (plans[1, s, 2] if grow_right else plans[1, s, 0])
                    - cost
                )
                if candidate > value:
                    value = candidate
                    grown = (grow_left, grow_right)
            if value > best:
                best = value
                result = (f, s, grown[0], grown[1])
    f, s, grow_left, grow_right = result
    return best, f, s, grow_left, grow_right
