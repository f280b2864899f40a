"""Segment discovery: a shallow policy tree whose leaves are the segments to allocate over.

The objective is the posterior expected metric of the policy "serve each leaf its best arm".
It is linear in the posterior, so it only needs the posterior-mean metric of every visitor and
arm, Γ̄[visitor, arm]: a leaf's value is the largest, over arms, of the sum of Γ̄ over its
members. ``fit_policy_tree`` makes two passes over the posterior (two dask computes on a
dask-backed one):

1. Γ̄ and the covariates. Γ̄ reduces each visitor over its draws, not visitors into segments,
   so it has its own per-visitor kernel (``_tree_kernels.posterior_mean_block``) rather than
   the allocation's segment reduction.
2. The leaf summaries, through :func:`pytyche.analysis.segment_summary` (the allocation's
   reduction).

Between the two, the search works in memory on the contrasts ``Γ̄[:, k] - Γ̄[:, control]``
(so that control is exactly 0 and wins ties, as in the allocation) and the binned covariates.

Search (see ``docs/segments.md``): every covariate is binned into at most
``MAX_THRESHOLDS + 1`` value bins (numeric: quantile thresholds; text with more than
``MAX_EXACT_LEVELS`` levels: levels ordered by best-arm gain, then cut like a number), and

- depth 1 and 2 are exhaustive over those candidate splits, like the ``policytree`` R
  package, but on histograms: one pass over the visitors builds, for every pair of distinct
  covariates, the contrast sums per pair of bins; every depth-2 tree is then scored with
  cumulative sums;
- depth >= 3 is exhaustive when the estimated work fits ``EXACT_WORK_BUDGET``, else each node
  takes the root split of the best depth-2 tree below it (a look-ahead of depth 2) and the
  last two levels are exhaustive.

"Exhaustive" is over trees whose sibling leaves serve different arms (the issue's merge
rule). Without missing values that loses nothing; with them it can (see the docs)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ._tree_kernels import histogram, pair_histogram, posterior_mean_block
from .analysis import thompson_allocation
from .reduction import worker_threads
from .results import VISITOR, BCFResult, check_posterior
from .segments import Clause, DiscoveredSegment, SegmentRule
from .summary import segment_summary

__all__ = ["PolicyTreeResult", "fit_policy_tree"]

MAX_DEPTH = 6
# Candidate thresholds of a numeric covariate (and of a many-level categorical's level ranks):
# every distinct value but the largest when there are at most this many, else this many
# quantiles. Every covariate therefore has at most this many + 1 value bins.
MAX_THRESHOLDS = 64
# Categorical covariates with at most this many levels get the exact best two-way partition
# (2 ** (levels - 1) - 1 candidates); more levels are ordered once, on all visitors, by their
# best-arm gain, and the covariate is then cut like a number at quantiles of that order.
MAX_EXACT_LEVELS = 12
# Depth >= 3 is searched exhaustively only when the estimated number of elementary
# operations (histogram adds plus scored split pairs, `_work`) is below this: exhaustive
# depth-3 searches ran at 1.3-2.0e8 estimated operations per second on this project's 2-core
# machine (2 continuous covariates, 500-20,000 visitors), so about 1.5-2.5 s at the budget.
EXACT_WORK_BUDGET = 3e8
# Cost of one split, relative to the summed absolute contrasts: breaks rounding-level ties
# in favour of the simpler tree (rounding is ~1e-16 × that sum per add).
SPLIT_COST = 1e-9
# Interval of the best arm's contrast reported on each leaf.
GATE_CI = 0.8
# A leaf counts as reproduced by a bootstrap refit when some refit leaf overlaps it this much.
STABILITY_JACCARD = 0.5
# Rows × splits × columns held at once when scoring a batch of child nodes.
CHUNK_ELEMENTS = 2**21
# Histograms of nodes with fewer visitors are built on one thread (threads cost more).
THREADED_VISITORS = 50_000
NOT_COVARIATES = ("variant", "outcome")
# Dtype kinds a covariate may have: numbers, booleans, text (object columns are checked later).
SUPPORTED_KINDS = "iufbUSO"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- covariates


@dataclasses.dataclass(eq=False)
class _Feature:
    """A covariate binned for the search: codes 0..n_bins-1 for values, n_bins for missing.

    Every covariate has at most ``MAX_THRESHOLDS + 1`` value bins, so that the pair
    histograms of the depth-2 search stay small whatever the number of distinct values.
    """

    name: str
    kind: str  # "numeric" or "categorical"
    codes: np.ndarray
    n_bins: int
    thresholds: np.ndarray | None = None  # numeric: value bin b holds thresholds[b-1] < x <= ..
    levels: tuple = ()  # categorical: Python literals, sorted
    level_bins: np.ndarray | None = None  # categorical: the value bin of each level
    is_bool: bool = False
    # Few-level categorical: every two-way partition, (split, bin) 0/1 float64. None: the
    # splits are the prefixes of the bins (numeric, or a many-level categorical whose levels
    # are binned in best-arm-gain order).
    subsets: np.ndarray | None = None

    @property
    def n_splits(self) -> int:
        if self.subsets is not None:
            return self.subsets.shape[0]
        return max(self.n_bins - 1, 0)

    def left_masks(self) -> np.ndarray:
        """float64 (split, value bin): 1 where the split sends the bin left."""
        if self.subsets is not None:
            return self.subsets
        return np.tri(self.n_splits, self.n_bins, dtype=np.float64)


def _cut_points(ordered: np.ndarray) -> np.ndarray:
    """Candidate thresholds ``t`` (splits ``x <= t``) of sorted, non-missing values.

    Every distinct value but the largest when there are at most ``MAX_THRESHOLDS`` of them,
    else the distinct values among the ``MAX_THRESHOLDS`` quantiles
    ``ordered[(i * n) // (MAX_THRESHOLDS + 1)]``, i = 1..MAX_THRESHOLDS, below the largest.
    """
    if ordered.size == 0:
        return ordered
    distinct = ordered[np.append(True, ordered[1:] != ordered[:-1])]
    # Splitting at the largest value sends everyone left.
    candidates = distinct[:-1]
    if candidates.size > MAX_THRESHOLDS:
        positions = (np.arange(1, MAX_THRESHOLDS + 1) * ordered.size) // (MAX_THRESHOLDS + 1)
        candidates = np.unique(ordered[positions])
        candidates = candidates[candidates < distinct[-1]]
    return candidates


def _numeric_feature(name: str, values: np.ndarray) -> _Feature:
    present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.size, bool)
    candidates = _cut_points(np.sort(values[present]))
    if candidates.dtype.kind == "f":  # infinite thresholds cannot be rule literals
        candidates = candidates[np.isfinite(candidates)]
    n_bins = candidates.size + 1
    codes = np.full(values.size, n_bins, dtype=np.int32)
    codes[present] = np.searchsorted(candidates, values[present], side="left")
    return _Feature(name, "numeric", codes, n_bins, thresholds=candidates)


def _categorical_feature(name: str, values: np.ndarray, contrasts: np.ndarray) -> _Feature:
    # A hash-based factorisation: sorting a million Python strings would take seconds.
    # Missing values (None, NaN, pd.NA) get -1.
    level_codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    levels = tuple(_python_literal(v) for v in np.asarray(uniques))
    n_levels = len(levels)
    present = level_codes >= 0
    subsets = None
    if n_levels <= MAX_EXACT_LEVELS:
        # One bin per level; every two-way partition once: the last level always goes right.
        level_bins = np.arange(n_levels)
        patterns = np.arange(1, 2 ** (n_levels - 1)) if n_levels >= 2 else np.arange(0)
        subsets = ((patterns[:, None] >> np.arange(n_levels)) & 1).astype(np.float64)
    else:
        # Many levels: order them once, on all visitors, by best arm and its mean gain; the
        # covariate is then ordinal (a level's rank in that order) and is cut like a number,
        # at most MAX_THRESHOLDS cuts, so each bin is a run of consecutive levels.
        sums = np.stack(
            [
                np.bincount(level_codes[present], weights=column, minlength=n_levels)
                for column in (*contrasts[present].T, np.ones(int(present.sum())))
            ],
            axis=-1,
        )
        rank = np.empty(n_levels, dtype=np.int64)
        rank[_level_order(sums, contrasts.shape[1])] = np.arange(n_levels)
        cuts = _cut_points(np.sort(rank[level_codes[present]]))
        level_bins = np.searchsorted(cuts, rank, side="left")
    n_bins = int(level_bins.max()) + 1 if n_levels else 0
    codes = np.full(values.size, n_bins, dtype=np.int32)
    codes[present] = level_bins[level_codes[present]]
    return _Feature(
        name,
        "categorical",
        codes,
        n_bins,
        levels=levels,
        level_bins=level_bins,
        is_bool=values.dtype.kind == "b",
        subsets=subsets,
    )


def _python_literal(value: Any) -> bool | int | float | str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode()
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _covariate_names(observed: xr.Dataset) -> list[str]:
    return [
        str(name)
        for name, var in observed.variables.items()
        if var.dims == (VISITOR,) and name not in observed.xindexes
    ]


def _select_features(observed: xr.Dataset, features) -> tuple[list[str], bool]:
    """The covariates to bin, and whether they were chosen by default (not by the user)."""
    available = _covariate_names(observed)
    if features is None:
        names = [
            name
            for name in available
            if name not in NOT_COVARIATES and observed[name].dtype.kind in SUPPORTED_KINDS
        ]
        return names, True
    if isinstance(features, str):
        features = [features]
    names = [str(name) for name in features]
    if not names:
        raise ValueError(
            f"features is empty (got {features!r}): name at least one covariate, or pass None "
            "for every covariate"
        )
    candidates = [n for n in available if n not in NOT_COVARIATES]
    for name in names:
        if name in NOT_COVARIATES:
            raise ValueError(
                f"{name!r} is observed data, not a covariate: a policy cannot split on it; "
                f"covariates: {candidates}"
            )
        if name not in available:
            raise ValueError(f"unknown feature {name!r}; covariates along 'visitor': {candidates}")
        if observed[name].dtype.kind not in SUPPORTED_KINDS:
            raise ValueError(
                f"feature {name!r} has dtype {observed[name].dtype}; expected numbers, text or "
                "booleans"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"features are listed more than once: {duplicates}")
    return names, False


def _column_kind(values: np.ndarray) -> str | None:
    """``'numeric'``, ``'categorical'`` or None (unusable), from the dtype or, for an object
    column, from its non-missing values (all text, all booleans or all numbers)."""
    kind = values.dtype.kind
    if kind in "iuf":
        return "numeric"
    if kind in "bUS":
        return "categorical"
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        return "numeric"
    if inferred in ("string", "boolean", "empty"):
        return "categorical"
    return None


def _bin_features(
    columns: Mapping[str, np.ndarray], contrasts: np.ndarray, skip_unusable: bool = False
) -> list[_Feature]:
    """Bin each covariate; an unusable object column raises, or is skipped by default.

    ``contrasts`` (visitor, treatment) orders the levels of a many-level categorical.
    """
    features = []
    for name, values in columns.items():
        values = np.asarray(values)
        kind = _column_kind(values)
        if kind is None:
            if skip_unusable:
                continue
            raise ValueError(
                f"feature {name!r} (dtype object) mixes kinds of values "
                f"({pd.api.types.infer_dtype(values, skipna=True)}); expected all text, all "
                "numbers or all booleans, with None/NaN for missing"
            )
        if kind == "numeric":
            if values.dtype.kind == "O":  # numbers in an object column: float, NaN missing
                present = ~np.asarray(pd.isna(values), dtype=bool)
                numbers_ = np.full(values.shape, np.nan)
                numbers_[present] = values[present].astype(np.float64)
                values = numbers_
            features.append(_numeric_feature(name, values))
        else:
            features.append(_categorical_feature(name, values, contrasts))
    return features


# --------------------------------------------------------------------------- Γ̄


def _posterior_mean_metric(result: BCFResult):
    """Γ̄ (visitor, arm) float64: numpy, or a lazy dask array on a dask-backed posterior."""
    factors = [f.data for f in result.metric_factors()]
    ndim = factors[0].ndim
    if any(isinstance(f, da.Array) for f in factors):
        first = next(f for f in factors if isinstance(f, da.Array))
        visitor_chunks = first.chunks[0]
        # Sample dims and arm whole in each block; the visitor axis as the posterior has it.
        arrays = [
            da.asarray(f).rechunk({0: visitor_chunks, **{a: -1 for a in range(1, ndim)}})
            for f in factors
        ]
        return da.map_blocks(
            posterior_mean_block,
            *arrays,
            drop_axis=list(range(1, ndim - 1)),
            chunks=(visitor_chunks, (factors[0].shape[-1],)),
            dtype=np.float64,
            meta=np.empty((0, 0), dtype=np.float64),
        )
    n_visitors = factors[0].shape[0]
    row_bytes = max(1, sum(f.dtype.itemsize for f in factors) * math.prod(factors[0].shape[1:]))
    block = max(1, (32 * 2**20) // row_bytes)
    starts = list(range(0, n_visitors, block))
    out = np.empty((n_visitors, factors[0].shape[-1]), dtype=np.float64)

    def fill(start: int) -> None:
        stop = min(start + block, n_visitors)
        out[start:stop] = posterior_mean_block(*(f[start:stop] for f in factors))

    if len(starts) > 1:
        with ThreadPoolExecutor(min(worker_threads(), len(starts))) as pool:
            list(pool.map(fill, starts))
    elif starts:
        fill(0)
    return out


# --------------------------------------------------------------------------- search kernels


def _leaf(total: np.ndarray, n_contrasts: int) -> tuple[np.ndarray, np.ndarray]:
    """Value and best arm of leaves from their (..., column) sums.

    The value is the summed contrast of the best arm (0 for control); the best arm is the
    first treatment with the largest positive sum, else control — the allocation's tie rule.
    """
    sums = total[..., :n_contrasts]
    best = sums.max(axis=-1)
    arm = np.where(best > 0, sums.argmax(axis=-1) + 1, 0)
    return np.maximum(best, 0.0), arm


def _level_order(level_sums: np.ndarray, n_contrasts: int) -> np.ndarray:
    """Order the levels of a many-level categorical by best arm, then by that arm's gain.

    ``level_sums`` is (level, column): contrast sums, then the count. Levels whose best arm
    is control come first, then those of the first treatment, and so on; within an arm, by
    increasing mean gain (ties keep the sorted level order). With two arms this is the order
    of the mean contrast, for which the best prefix split is the optimal two-way partition
    (when the leaf-size constraint does not bind).
    Returns the levels' positions in that order.
    """
    counts = level_sums[:, -1]
    means = level_sums[:, :n_contrasts] / np.where(counts > 0, counts, 1.0)[:, None]
    gain = means.max(axis=-1)
    arm = np.where(gain > 0, means.argmax(axis=-1) + 1, 0)
    return np.lexsort((gain, arm))


def _split_sums(feature: _Feature, values: np.ndarray):
    """Left and right sums of every candidate split of `feature`.

    ``values`` is (..., value bin, column) — missing values excluded; returns two
    (..., split, column) arrays. Numeric and many-level categorical splits are prefixes of
    the bins; a few-level categorical's are the exact two-way partitions.
    """
    if feature.subsets is not None:
        return feature.subsets @ values, (1.0 - feature.subsets) @ values
    # Left from the front, right from the back: both are exact sums, neither a difference.
    left = np.cumsum(values, axis=-2)[..., :-1, :]
    right = np.cumsum(values[..., ::-1, :], axis=-2)[..., ::-1, :][..., 1:, :]
    return left, right


def _left_bins(feature: _Feature, split: int) -> np.ndarray:
    """Boolean (value bin,) mask of the bins a split sends left."""
    return feature.left_masks()[split].astype(bool)


def _best_splits(
    feature: _Feature, hists: np.ndarray, min_size: float, n_contrasts: int, cost: float
):
    """Best depth-1 split on `feature` of each node of a batch.

    ``hists`` is (node, value bin [+ missing], column); a missing-value row is ignored. A split
    is feasible when both children hold at least ``min_size`` visitors and their best arms
    differ (sibling leaves with the same best arm are one leaf). Returns the best value (-inf
    if none) and split per node.
    """
    n_nodes = hists.shape[0]
    best_value = np.full(n_nodes, -np.inf)
    best_split = np.zeros(n_nodes, dtype=np.int64)
    n_splits = feature.n_splits
    if n_splits == 0 or n_nodes == 0:
        return best_value, best_split
    step = max(1, CHUNK_ELEMENTS // (n_splits * hists.shape[-1]))
    for lo in range(0, n_nodes, step):
        left, right = _split_sums(feature, hists[lo : lo + step, : feature.n_bins])
        left_value, left_arm = _leaf(left, n_contrasts)
        right_value, right_arm = _leaf(right, n_contrasts)
        feasible = (
            (left[..., -1] >= min_size) & (right[..., -1] >= min_size) & (left_arm != right_arm)
        )
        value = np.where(feasible, left_value + right_value - cost, -np.inf)
        split = value.argmax(axis=-1)
        best_value[lo : lo + step] = np.take_along_axis(value, split[:, None], axis=-1)[:, 0]
        best_split[lo : lo + step] = split
    return best_value, best_split


def _own_children(feature: _Feature, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of `feature` in the two children of each of its own splits.

    ``hist`` is (value bin + missing, column) of a node; returns two (split, value bin,
    column) arrays (the missing visitors are in neither child). A covariate against itself
    needs no pair histogram: each child keeps the bins its side takes.
    """
    masks = feature.left_masks()[:, :, None]
    values = hist[None, : feature.n_bins]
    return masks * values, (1.0 - masks) * values


# --------------------------------------------------------------------------- the search


@dataclasses.dataclass(eq=False)
class _Plan:
    """The best tree of a node: as a leaf, and as its best split (value -inf if none)."""

    leaf_value: float
    leaf_arm: int
    split_value: float = -np.inf
    feature: int = -1
    left_bins: np.ndarray | None = None
    # The children: from depth1/depth2, each child's own split as (feature, left bins), or
    # None for a leaf; from the exhaustive search of depth >= 3, "leaf" or "split", the shape
    # its best combination needs (the child's subtree is searched again when grown).
    children: tuple = ()


@dataclasses.dataclass(eq=False)
class _Node:
    """A node of the grown tree: its visitors, their column sums and its split, if any."""

    index: np.ndarray
    total: np.ndarray
    feature: int = -1
    left_bins: np.ndarray | None = None
    left: _Node | None = None
    right: _Node | None = None

    @property
    def is_leaf(self) -> bool:
        return self.left is None


class _Search:
    """The tree search on binned covariates and weighted visitor contrasts."""

    def __init__(
        self,
        features: list[_Feature],
        contrasts: np.ndarray,
        weights: np.ndarray,
        min_size: float,
        exact: bool,
    ):
        self.features = features
        self.n_contrasts = contrasts.shape[1]
        values = np.empty((contrasts.shape[0], self.n_contrasts + 1), dtype=np.float64)
        np.multiply(contrasts, weights[:, None], out=values[:, :-1])
        values[:, -1] = weights
        self.values = values
        self.root_index = np.flatnonzero(weights > 0)
        self.min_size = min_size
        self.exhaustive = exact
        # Every split costs a tiny amount, far above rounding and far below any real gain: a
        # tree whose value ties a simpler one (up to rounding) only adds rules, so it loses.
        self.cost = SPLIT_COST * float(np.abs(values[:, :-1]).sum())

    # -- histograms -----------------------------------------------------------------------

    def _node_histograms(self, index: np.ndarray, pairs: bool):
        """Per covariate, the (bin + missing, column) sums of a node's visitors; with
        ``pairs``, per pair of distinct covariates f < g, the (bin f, bin g, column) sums."""
        features = self.features
        jobs: list[tuple[int, ...]] = [(f,) for f in range(len(features))]
        if pairs:
            jobs += list(itertools.combinations(range(len(features)), 2))

        def run(job):
            a = features[job[0]]
            if len(job) == 1:
                return histogram(a.codes, a.n_bins + 1, index, self.values)
            b = features[job[1]]
            return pair_histogram(a.codes, a.n_bins + 1, b.codes, b.n_bins + 1, index, self.values)

        threads = min(worker_threads(), len(jobs))
        if index.size >= THREADED_VISITORS and threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(run, jobs))
        else:
            results = [run(job) for job in jobs]
        hists = results[: len(features)]
        joint = dict(zip(jobs[len(features) :], results[len(features) :], strict=True))
        return hists, joint

    @staticmethod
    def _joint(joint, f: int, g: int) -> np.ndarray:
        """(bin f + missing, bin g + missing, column) sums of two distinct covariates."""
        return joint[(f, g)] if f < g else joint[(g, f)].transpose(1, 0, 2)

    def _leaf_of(self, index: np.ndarray, hists=None) -> tuple[np.ndarray, float, int]:
        total = hists[0].sum(axis=0) if hists else self.values[index].sum(axis=0)
        value, arm = _leaf(total, self.n_contrasts)
        return total, float(value), int(arm)

    # -- depth 1 and 2: exhaustive on histograms ------------------------------------------

    def depth1(self, index: np.ndarray) -> _Plan:
        hists, _ = self._node_histograms(index, pairs=False)
        _, leaf_value, leaf_arm = self._leaf_of(index, hists)
        plan = _Plan(leaf_value, leaf_arm)
        for f, feature in enumerate(self.features):
            value, split = _best_splits(
                feature, hists[f][None], self.min_size, self.n_contrasts, self.cost
            )
            if value[0] > plan.split_value:
                plan.split_value = float(value[0])
                plan.feature = f
                plan.left_bins = _left_bins(feature, int(split[0]))
                plan.children = (None, None)
        return plan

    def depth2(self, index: np.ndarray) -> _Plan:
        """The best tree of depth <= 2 below a node, scored from pairwise histograms."""
        features, m, k = self.features, self.min_size, self.n_contrasts
        hists, joint = self._node_histograms(index, pairs=True)
        _, leaf_value, leaf_arm = self._leaf_of(index, hists)
        plan = _Plan(leaf_value, leaf_arm)
        for f, feature in enumerate(features):
            if feature.n_splits == 0:
                continue
            left_total, right_total = _split_sums(feature, hists[f][: feature.n_bins])
            feasible = np.flatnonzero((left_total[:, -1] >= m) & (right_total[:, -1] >= m))
            if feasible.size == 0:
                continue
            left_leaf, left_arm = _leaf(left_total[feasible], k)
            right_leaf, right_arm = _leaf(right_total[feasible], k)
            # Best split of each child, over every covariate: feature index and split.
            child_value = np.full((2, feasible.size), -np.inf)
            child_feature = np.full((2, feasible.size), -1)
            child_split = np.zeros((2, feasible.size), dtype=np.int64)
            for g, other in enumerate(features):
                if other.n_splits == 0:
                    continue
                if g == f:
                    sides = [side[feasible] for side in _own_children(feature, hists[f])]
                else:
                    # (bin f, bin g + missing, column), split along f's bins.
                    flat = self._joint(joint, f, g)[: feature.n_bins].reshape(feature.n_bins, -1)
                    sides = [
                        side[feasible].reshape(feasible.size, other.n_bins + 1, -1)
                        for side in _split_sums(feature, flat)
                    ]
                for side, child_hists in enumerate(sides):
                    value, split = _best_splits(other, child_hists, m, k, self.cost)
                    better = value > child_value[side]
                    child_value[side, better] = value[better]
                    child_feature[side, better] = g
                    child_split[side, better] = split[better]
            # The four shapes of a depth-2 tree, simplest first so that ties keep it simple;
            # two leaf children must serve different arms.
            cases = (
                np.stack(
                    [
                        np.where(left_arm != right_arm, left_leaf + right_leaf, -np.inf),
                        left_leaf + child_value[1],
                        child_value[0] + right_leaf,
                        child_value[0] + child_value[1],
                    ]
                )
                - self.cost
            )
            shape = cases.argmax(axis=0)
            value = np.take_along_axis(cases, shape[None], axis=0)[0]
            best = int(value.argmax())
            if value[best] > plan.split_value:
                plan.split_value = float(value[best])
                plan.feature = f
                plan.left_bins = _left_bins(feature, int(feasible[best]))
                grown = ((False, False), (False, True), (True, False), (True, True))[shape[best]]
                plan.children = tuple(
                    (
                        int(child_feature[side, best]),
                        _left_bins(
                            features[child_feature[side, best]], int(child_split[side, best])
                        ),
                    )
                    if split_child
                    else None
                    for side, split_child in enumerate(grown)
                )
        return plan

    # -- depth >= 3 -----------------------------------------------------------------------

    def exact(self, index: np.ndarray, depth: int) -> _Plan:
        """The best tree of depth <= `depth`, exhaustively (children searched per split)."""
        if depth <= 0:
            _, value, arm = self._leaf_of(index)
            return _Plan(value, arm)
        if depth == 1:
            return self.depth1(index)
        if depth == 2:
            return self.depth2(index)
        hists, _ = self._node_histograms(index, pairs=False)
        _, leaf_value, leaf_arm = self._leaf_of(index, hists)
        plan = _Plan(leaf_value, leaf_arm)
        for f, feature in enumerate(self.features):
            left_total, right_total = _split_sums(feature, hists[f][: feature.n_bins])
            codes = feature.codes[index]
            for s in range(feature.n_splits):
                if left_total[s, -1] < self.min_size or right_total[s, -1] < self.min_size:
                    continue
                left_bins = _left_bins(feature, s)
                goes_left = np.append(left_bins, False)[codes]
                missing = codes == feature.n_bins
                children = [
                    self.exact(index[goes_left], depth - 1),
                    self.exact(index[~goes_left & ~missing], depth - 1),
                ]
                value, grown = _combine(children, self.cost)
                if value > plan.split_value:
                    plan.split_value = value
                    plan.feature = f
                    plan.left_bins = left_bins
                    plan.children = tuple("split" if g else "leaf" for g in grown)
        return plan

    def grow(self, index: np.ndarray, depth: int, directive: str = "free") -> _Node:
        """Build the tree below a node; `directive` forces it to be a leaf or a split."""
        total = self.values[index].sum(axis=0)
        if depth == 0 or directive == "leaf" or not self.features:
            return _Node(index, total)
        if depth <= 2:
            plan = self.depth1(index) if depth == 1 else self.depth2(index)
        elif self.exhaustive:
            plan = self.exact(index, depth)
        else:  # look-ahead: the root split of the best depth-2 tree
            plan = self.depth2(index)
        wants_split = plan.split_value > plan.leaf_value
        if plan.left_bins is None or not (wants_split or directive == "split"):
            return _Node(index, total)
        feature = self.features[plan.feature]
        codes = feature.codes[index]
        goes_left = np.append(plan.left_bins, False)[codes]
        goes_right = ~goes_left & (codes != feature.n_bins)
        node = _Node(index, total, plan.feature, plan.left_bins)
        sides = (index[goes_left], index[goes_right])
        if depth <= 2:
            # The plan already holds the children: leaves or a split into two leaves.
            children = []
            for side, child in zip(sides, plan.children, strict=True):
                children.append(self._grow_planned(side, child))
            node.left, node.right = children
            return node
        if self.exhaustive:
            directives = plan.children
        else:  # a child the look-ahead grew must split; one it left as a leaf may grow
            directives = tuple("free" if c is None else "split" for c in plan.children)
        node.left = self.grow(sides[0], depth - 1, directives[0])
        node.right = self.grow(sides[1], depth - 1, directives[1])
        return node

    def _grow_planned(self, index: np.ndarray, child) -> _Node:
        total = self.values[index].sum(axis=0)
        if child is None:
            return _Node(index, total)
        f, left_bins = child
        codes = self.features[f].codes[index]
        goes_left = np.append(left_bins, False)[codes]
        goes_right = ~goes_left & (codes != self.features[f].n_bins)
        node = _Node(index, total, f, left_bins)
        node.left = _Node(index[goes_left], self.values[index[goes_left]].sum(axis=0))
        node.right = _Node(index[goes_right], self.values[index[goes_right]].sum(axis=0))
        return node

    def fit(self, max_depth: int) -> _Node:
        root = self.grow(self.root_index, max_depth)
        _merge_same_arm_leaves(root, self.n_contrasts)
        return root


def _combine(children: list[_Plan], cost: float) -> tuple[float, tuple[bool, bool]]:
    """Best value of a split from its children's plans; which children split."""
    left, right = children
    best, grown = -np.inf, (False, False)
    for grow_left, grow_right in ((False, False), (False, True), (True, False), (True, True)):
        if not grow_left and not grow_right and left.leaf_arm == right.leaf_arm:
            continue
        value = (
            (left.split_value if grow_left else left.leaf_value)
            + (right.split_value if grow_right else right.leaf_value)
            - cost
        )
        if value > best:
            best, grown = value, (grow_left, grow_right)
    return float(best), grown


def _merge_same_arm_leaves(node: _Node, n_contrasts: int) -> None:
    """Merge sibling leaves that serve the same arm into their parent, bottom-up.

    The search never chooses such a pair on the histogram sums it scores; a grown node's
    total is summed again, in another order, and a near-tie between arms could flip by
    rounding. This keeps the guarantee whatever the rounding (tested on hand-built trees).
    """
    if node.is_leaf:
        return
    _merge_same_arm_leaves(node.left, n_contrasts)
    _merge_same_arm_leaves(node.right, n_contrasts)
    if node.left.is_leaf and node.right.is_leaf:
        arms = [int(_leaf(child.total, n_contrasts)[1]) for child in (node.left, node.right)]
        if arms[0] == arms[1]:
            node.feature, node.left_bins, node.left, node.right = -1, None, None, None


def _work(features: list[_Feature], n_visitors: int, columns: int, depth: int) -> float:
    """Elementary operations of an exhaustive search of `depth` (an upper bound)."""
    p = len(features)
    splits = [f.n_splits for f in features]
    if depth <= 1:
        return p * n_visitors * columns + sum(splits) * columns * 10
    if depth == 2:
        pairs = p * (p + 1) / 2 * n_visitors * columns
        return pairs + sum(a * b for a in splits for b in splits) * columns * 10
    return sum(splits) * 2 * _work(features, n_visitors, columns, depth - 1)


def _leaf_labels(root: _Node, features: list[_Feature], n_visitors: int) -> np.ndarray:
    """Leaf number (left to right) of every visitor by its bin codes; -1 when unassigned."""
    labels = np.full(n_visitors, -1, dtype=np.int64)
    counter = itertools.count()

    def visit(node: _Node, positions: np.ndarray) -> None:
        if node.is_leaf:
            labels[positions] = next(counter)
            return
        feature = features[node.feature]
        codes = feature.codes[positions]
        goes_left = np.append(node.left_bins, False)[codes]
        visit(node.left, positions[goes_left])
        visit(node.right, positions[~goes_left & (codes != feature.n_bins)])

    visit(root, np.arange(n_visitors))
    return labels


# --------------------------------------------------------------------------- public result


class PolicyTreeResult:
    """A fitted policy tree: its leaves are segments, each served its best arm.

    Built by :func:`fit_policy_tree`, or from :meth:`to_dict` output with :meth:`from_dict`.

    Attributes
    ----------
    segments : tuple of DiscoveredSegment
        The leaves, ids 0..L-1 left to right (left = the ``<=`` / ``in`` side of each split),
        each with its descriptive fields filled in.
    arms : tuple of str
        Arm names, control first.
    features : tuple of str
        The covariates the search could split on.
    objective : float
        Posterior expected metric per visitor of the policy "serve each leaf its best arm"
        (unassigned visitors served control).
    control_objective : float
        The same for "serve everyone control".
    unassigned_share : float
        Fraction of the fitted visitors in no leaf (a missing value on a split covariate).
    search : str
        ``"exact"`` or ``"lookahead"``: how levels below the last two were searched.
    n_visitors, max_depth, min_segment_share, min_segment_size, n_bootstrap, seed
        The fit's inputs (``min_segment_size`` is the share as a visitor count).
    posterior : BCFResult or None
        The fitted posterior (None after :meth:`from_dict` without one).
    """

    def __init__(self, *, nodes, segments, info: Mapping[str, Any], posterior=None):
        self._nodes = nodes
        self.segments = tuple(segments)
        self.posterior = posterior
        self.arms = tuple(info["arms"])
        self.features = tuple(info["features"])
        self.n_visitors = int(info["n_visitors"])
        self.max_depth = int(info["max_depth"])
        self.min_segment_share = info["min_segment_share"]
        self.min_segment_size = int(info["min_segment_size"])
        self.n_bootstrap = int(info["n_bootstrap"])
        self.seed = int(info["seed"])
        self.search = str(info["search"])
        self.objective = float(info["objective"])
        self.control_objective = float(info["control_objective"])
        self.unassigned_share = float(info["unassigned_share"])

    # -- use ------------------------------------------------------------------------------

    def assign(self, observed: xr.Dataset | None = None) -> xr.DataArray:
        """The segment id of every visitor, by walking the tree.

        Parameters
        ----------
        observed : xarray.Dataset, optional
            Covariates along ``visitor`` (e.g. ``posterior.observed``, or the next round's
            visitors); defaults to the fitted posterior's observed data.

        Returns
        -------
        xarray.DataArray
            int64 (visitor,) segment ids; -1 for a visitor the tree cannot place: a missing
            value, or a category level the fit never saw, on a covariate its path splits on.
            Applying each segment's rule to the same rows gives exactly the visitors with its
            id. Lazy when the covariates used are dask-backed.

        Raises
        ------
        ValueError
            When no `observed` is given and the tree carries no posterior, or a covariate is
            missing from `observed`.
        """
        if observed is None:
            if self.posterior is None:
                raise ValueError("this tree carries no posterior: pass the observed covariates")
            observed = self.posterior.observed
        used = sorted({node["split"]["covariate"] for node in self._nodes if node["split"]})
        for name in used:
            if name not in observed.variables or observed.variables[name].dims != (VISITOR,):
                raise ValueError(
                    f"the tree splits on {name!r}, which is not a covariate along 'visitor' of "
                    f"the observed data; found {_covariate_names(observed)}"
                )
        coords = {VISITOR: observed.variables[VISITOR]} if VISITOR in observed.xindexes else {}
        if not used:
            size = observed.sizes[VISITOR]
            chunks = next(
                (
                    v.chunks[0]
                    for v in observed.variables.values()
                    if v.dims == (VISITOR,) and v.chunks is not None
                ),
                None,
            )
            data = (
                np.zeros(size, np.int64)
                if chunks is None
                else da.zeros(size, dtype=np.int64, chunks=(chunks,))
            )
            return xr.DataArray(data, dims=VISITOR, coords=coords, name="segment")
        variables = [observed.variables[name] for name in used]
        labels = xr.apply_ufunc(
            lambda *columns: self._walk(dict(zip(used, columns, strict=True))),
            *variables,
            dask="parallelized",
            output_dtypes=[np.int64],
        )
        return xr.DataArray(labels, coords=coords, name="segment")

    def _walk(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        size = len(next(iter(columns.values())))
        labels = np.full(size, -1, dtype=np.int64)

        def visit(node_id: int, positions: np.ndarray) -> None:
            node = self._nodes[node_id]
            if node["split"] is None:
                labels[positions] = node["segment"]
                return
            split = node["split"]
            values = np.asarray(columns[split["covariate"]])[positions]
            left, right = _split_sides(split, values)
            visit(node["left"], positions[left])
            visit(node["right"], positions[right])

        visit(0, np.arange(size))
        return labels

    def allocation(self, epsilon: float = 0.02) -> dict[int, dict[str, float]]:
        """Per-segment traffic split over the leaves: ``thompson_allocation(posterior, segments)``.

        Parameters
        ----------
        epsilon : float, default 0.02
            Exploration floor, as :func:`pytyche.thompson_allocation`.

        Returns
        -------
        dict[int, dict[str, float]]
            ``{segment id: {arm: weight}}``.

        Raises
        ------
        ValueError
            When the tree carries no posterior (rebuilt by :meth:`from_dict` without one), or
            as :func:`pytyche.thompson_allocation`.
        """
        if self.posterior is None:
            raise ValueError(
                "this tree carries no posterior (from_dict without one): call "
                "pytyche.thompson_allocation(posterior, tree.segments, epsilon) instead"
            )
        return thompson_allocation(self.posterior, self.segments, epsilon=epsilon)

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description of the tree: splits, leaves and their summaries.

        Returns
        -------
        dict
            Plain lists, dicts, str, int, float, bool and None only (``json.dumps(...,
            allow_nan=False)`` works; a NaN stability score is written as None). The
            posterior is not included.
        """
        segments = []
        for segment in self.segments:
            stability = segment.stability_score
            segments.append(
                {
                    "id": segment.id,
                    "rule": str(segment.rule),
                    "population_share": segment.population_share,
                    "best_arm": segment.best_arm,
                    "arm_best_probabilities": dict(segment.arm_best_probabilities or {}),
                    "gate_estimate": segment.gate_estimate,
                    "gate_interval": list(segment.gate_interval or ()),
                    "stability_score": None
                    if stability is None or math.isnan(stability)
                    else stability,
                }
            )
        return {
            "pytyche_policy_tree": FORMAT_VERSION,
            "arms": list(self.arms),
            "features": list(self.features),
            "n_visitors": self.n_visitors,
            "max_depth": self.max_depth,
            "min_segment_share": self.min_segment_share,
            "min_segment_size": self.min_segment_size,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "search": self.search,
            "objective": self.objective,
            "control_objective": self.control_objective,
            "unassigned_share": self.unassigned_share,
            "nodes": json.loads(json.dumps(self._nodes)),
            "segments": segments,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], posterior=None) -> PolicyTreeResult:
        """Rebuild a tree from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            As returned by :meth:`to_dict` (or read back from its JSON).
        posterior : BCFResult, optional
            The posterior to attach, for :meth:`allocation` and a default :meth:`assign`.

        Returns
        -------
        PolicyTreeResult

        Raises
        ------
        ValueError
            When `data` is not a policy tree description of a known version.
        """
        version = data.get("pytyche_policy_tree") if isinstance(data, Mapping) else None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"not a pytyche policy tree description (version {FORMAT_VERSION}); got "
                f"pytyche_policy_tree={version!r}"
            )
        nan_stability = int(data["n_bootstrap"]) == 0
        segments = []
        for item in data["segments"]:
            stability = item["stability_score"]
            if stability is None and nan_stability:
                stability = math.nan
            segments.append(
                DiscoveredSegment(
                    item["id"],
                    item["rule"],
                    population_share=item["population_share"],
                    best_arm=item["best_arm"],
                    arm_best_probabilities=item["arm_best_probabilities"],
                    gate_estimate=item["gate_estimate"],
                    gate_interval=tuple(item["gate_interval"]),
                    stability_score=stability,
                )
            )
        nodes = json.loads(json.dumps(list(data["nodes"])))
        return cls(nodes=nodes, segments=segments, info=data, posterior=posterior)

    # -- display --------------------------------------------------------------------------

    def __str__(self) -> str:
        header = (
            f"Policy tree: {len(self.segments)} segment(s) over {self.n_visitors:,} visitors "
            f"(max_depth {self.max_depth}, {self.search} search; arms {', '.join(self.arms)})\n"
            f"expected metric per visitor {self.objective:.6g} under this policy, "
            f"{self.control_objective:.6g} with everyone on control"
        )
        if self.unassigned_share > 0:
            header += (
                f"\n{self.unassigned_share:.1%} of visitors unassigned (a missing value on a "
                "split covariate)"
            )
        lines = [header, "everyone"]

        def visit(node_id: int, prefix: str) -> None:
            node = self._nodes[node_id]
            split = node["split"]
            if split is None:
                return
            for side, last in (("left", False), ("right", True)):
                child = self._nodes[node[side]]
                branch = "└── " if last else "├── "
                text = str(_split_clauses(split, side))
                if child["split"] is None:
                    text += "  →  " + self._leaf_text(self.segments[child["segment"]])
                lines.append(prefix + branch + text)
                visit(node[side], prefix + ("    " if last else "│   "))

        if self._nodes[0]["split"] is None:
            lines[-1] += "  →  " + self._leaf_text(self.segments[0])
        visit(0, "")
        return "\n".join(lines)

    @staticmethod
    def _leaf_text(segment: DiscoveredSegment) -> str:
        probabilities = ", ".join(
            f"{arm} {p:.3f}" for arm, p in (segment.arm_best_probabilities or {}).items()
        )
        text = (
            f"segment {segment.id}: {segment.population_share:.1%} of visitors, best arm "
            f"{segment.best_arm}; P(best) {probabilities}"
        )
        if segment.gate_interval is not None:
            lo, hi = segment.gate_interval
            text += f"; gain vs control {segment.gate_estimate:+.4g} [{lo:+.4g}, {hi:+.4g}]"
        if segment.stability_score is not None and not math.isnan(segment.stability_score):
            text += f"; stability {segment.stability_score:.2f}"
        return text

    def __repr__(self) -> str:
        return (
            f"<PolicyTreeResult: {len(self.segments)} segment(s), max_depth={self.max_depth}, "
            f"arms={list(self.arms)}>"
        )

    def plot(self, ax=None):
        """Draw the tree with matplotlib: splits on the edges, a box per leaf.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; a new figure is made when omitted.

        Returns
        -------
        matplotlib.axes.Axes

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install pytyche[plot]``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - matplotlib is a test dependency
            raise ImportError(
                "PolicyTreeResult.plot needs matplotlib: pip install pytyche[plot]"
            ) from exc
        if ax is None:
            n_leaves = max(1, len(self.segments))
            _, ax = plt.subplots(figsize=(max(6.0, 3.2 * n_leaves), 1.8 + 1.6 * self.depth))
        positions: dict[int, tuple[float, float]] = {}
        leaves = itertools.count()

        def place(node_id: int, depth: int) -> float:
            node = self._nodes[node_id]
            if node["split"] is None:
                x = float(next(leaves))
            else:
                x = (place(node["left"], depth + 1) + place(node["right"], depth + 1)) / 2
            positions[node_id] = (x, -float(depth))
            return x

        place(0, 0)
        for node_id, (x, y) in positions.items():
            node = self._nodes[node_id]
            if node["split"] is None:
                segment = self.segments[node["segment"]]
                probability = (segment.arm_best_probabilities or {}).get(segment.best_arm, math.nan)
                label = (
                    f"segment {segment.id}\n{segment.population_share:.1%} of visitors\n"
                    f"best: {segment.best_arm} (P={probability:.2f})"
                )
                style = {"boxstyle": "round", "facecolor": "#e8f1fb", "edgecolor": "#3a6ea5"}
            else:
                label = f"{node['members']:,} visitors"
                style = {"boxstyle": "round", "facecolor": "#f4f4f4", "edgecolor": "#888888"}
                for side in ("left", "right"):
                    cx, cy = positions[node[side]]
                    ax.plot([x, cx], [y, cy], color="#888888", zorder=1)
                    ax.text(
                        (x + cx) / 2,
                        (y + cy) / 2,
                        str(_split_clauses(node["split"], side)),
                        ha="center",
                        va="center",
                        fontsize=8,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
                    )
            ax.text(x, y, label, ha="center", va="center", fontsize=9, bbox=style, zorder=2)
        xs = [p[0] for p in positions.values()]
        ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
        ax.set_ylim(-self.depth - 0.6, 0.6)
        ax.set_axis_off()
        ax.set_title(f"Policy tree: {len(self.segments)} segment(s)")
        return ax

    @property
    def depth(self) -> int:
        """Depth of the fitted tree (0 for a root-only tree)."""
        return max(node["depth"] for node in self._nodes)


def _split_sides(split: Mapping[str, Any], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which values go left and which right; missing values (and unseen levels) go nowhere."""
    if split["type"] == "numeric":
        present = ~np.asarray(pd.isna(values), dtype=bool)
        left = np.zeros(values.shape, bool)
        right = np.zeros(values.shape, bool)
        kept = values[present]
        left[present] = kept <= split["threshold"]
        right[present] = kept > split["threshold"]
        return left, right
    return _isin(values, split["left"]), _isin(values, split["right"])


def _isin(values: np.ndarray, levels: Sequence) -> np.ndarray:
    # The same comparisons a rule makes: each literal by ==, missing values never match.
    present = ~np.asarray(pd.isna(values), dtype=bool)
    out = np.zeros(values.shape, dtype=bool)
    kept = values[present]
    if values.dtype.kind == "S":
        levels = [level.encode() if isinstance(level, str) else level for level in levels]
    for level in levels:
        out[present] |= np.asarray(kept == level, dtype=bool)
    return out


def _split_clauses(split: Mapping[str, Any], side: str) -> Clause:
    name = split["covariate"]
    if split["type"] == "numeric":
        return Clause(name, "<=" if side == "left" else ">", split["threshold"])
    return _set_clause(name, split[side])


def _set_clause(name: str, levels: Sequence) -> Clause:
    if len(levels) == 1:
        return Clause(name, "==", levels[0])
    return Clause(name, "in", tuple(levels))


def _path_rule(path: list[tuple[Mapping[str, Any], str]]) -> SegmentRule:
    """The AND of a leaf's path, with clauses on one covariate merged into one or two."""
    bounds: dict[str, dict[str, Any]] = {}
    for split, side in path:
        state = bounds.setdefault(split["covariate"], {"split": split})
        if split["type"] == "numeric":
            key, pick = ("upper", min) if side == "left" else ("lower", max)
            threshold = split["threshold"]
            state[key] = threshold if key not in state else pick(state[key], threshold)
        else:
            levels = split[side]
            allowed = state.get("allowed")
            state["allowed"] = (
                list(levels) if allowed is None else [lv for lv in allowed if lv in levels]
            )
    clauses = []
    for name, state in bounds.items():
        if state["split"]["type"] == "numeric":
            if "lower" in state:
                clauses.append(Clause(name, ">", state["lower"]))
            if "upper" in state:
                clauses.append(Clause(name, "<=", state["upper"]))
        else:
            clauses.append(_set_clause(name, state["allowed"]))
    return SegmentRule(tuple(clauses))


# --------------------------------------------------------------------------- the fit


def fit_policy_tree(
    posterior: BCFResult,
    *,
    max_depth: int = 3,
    min_segment_share: float | int = 0.1,
    features: Sequence[str] | None = None,
    n_bootstrap: int = 50,
    seed: int = 0,
    search: str = "auto",
) -> PolicyTreeResult:
    """Discover segments: the shallow tree whose leaves, each served its best arm, maximise the
    posterior expected metric.

    The objective of a tree is the posterior expected metric of the policy "serve each leaf
    the arm with the highest posterior expected segment-mean metric". It is linear in the
    posterior, so it is the sum over leaves of the largest, over arms, of the summed
    per-visitor posterior-mean metric Γ̄[visitor, arm]. The fit makes two passes over the
    posterior — two computes on a dask-backed one: the first computes Γ̄ (a per-visitor mean
    over draws) and loads the covariates; the search then runs in memory on Γ̄ and the
    covariates (bootstrap refits included); the second pass summarises the leaves with
    :func:`pytyche.analysis.segment_summary`, the allocation's reduction.

    Splits are ``x <= t`` / ``x > t`` on a numeric covariate (candidate thresholds: every
    distinct value, or 64 quantiles when there are more) and a two-way partition of the
    levels of a text or boolean covariate, written as set membership (every partition up to
    12 levels; with more, the levels are ordered once, over all visitors, by best arm and
    gain, and cut at up to 64 quantiles of that order, like a number). Depth 1 and 2 are
    exact: the best tree over those candidate splits. Depth 3 and more are exact when the
    work fits a budget, else searched with a look-ahead of depth 2 at each node. Every leaf
    holds at least `min_segment_share` of the visitors; sibling leaves never serve the same
    arm (such a pair is one leaf), and "exact" means best among the trees that respect this;
    a tree with no useful split is the root alone, one segment with the ``everyone`` rule.

    A visitor with a missing value of a covariate its path splits on goes down neither
    branch: it is in no leaf, ``assign`` reports -1, and no rule matches it (rules never
    match missing values). The objective counts such visitors as served control. A split
    can therefore pay just by shedding such visitors to control while both sides keep one
    arm; the sibling rule forbids that tree, so with missing values the result can be worse
    than the best tree without the rule.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        The posterior, carrying observed data (covariates along ``visitor``).
    max_depth : int, default 3
        Largest depth of the tree, 0 to 6.
    min_segment_share : float or int, default 0.1
        Smallest leaf: a share of the visitors in (0, 0.5], or an int number of visitors
        between 1 and half of the visitors.
    features : sequence of str, optional
        Covariates to split on; default every covariate along ``visitor`` holding numbers,
        text or booleans (an object column qualifies when all its non-missing values are of
        one of those kinds), except ``variant`` and ``outcome``.
    n_bootstrap : int, default 50
        Bootstrap refits (visitors resampled with replacement, Γ̄ reused) for each leaf's
        ``stability_score``; 0 skips them (scores are NaN).
    seed : int, default 0
        Seed of the bootstrap; the tree itself is deterministic.
    search : {"auto", "exact", "lookahead"}, default "auto"
        How depth 3 and more are searched: ``"exact"`` always exhaustively (can be very
        slow), ``"lookahead"`` always with the depth-2 look-ahead, ``"auto"`` exhaustively when
        the estimated work is below ``EXACT_WORK_BUDGET``. Depth 1 and 2 are always exact.

    Returns
    -------
    PolicyTreeResult
        ``.segments`` are the leaves, ids 0..L-1 left to right, with ``population_share``,
        ``best_arm``, ``arm_best_probabilities`` (equal to ``thompson_allocation(...,
        epsilon=0)``), ``gate_estimate`` and ``gate_interval`` (posterior mean and 80%
        interval of the best arm's segment-mean contrast against control) and
        ``stability_score`` (fraction of bootstrap refits with a leaf of Jaccard overlap
        >= 0.5 with this leaf's members).

    Raises
    ------
    ValueError
        When `max_depth` is outside 0..6, `min_segment_share` is outside (0, 0.5] (or an int
        below 1 or above half of the visitors), `features` is empty or names an unknown
        covariate or not a covariate, `search` or `n_bootstrap` is invalid,
        ``posterior.observed`` is None, or the posterior-mean metric is not finite.
    TypeError
        When `posterior` is not an accepted result type, or an argument has the wrong type.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=3_000, n_draws=50, seed=1)
    >>> tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    >>> sorted({segment.best_arm for segment in tree.segments})
    ['A', 'B', 'control']
    """
    result = check_posterior(posterior)
    max_depth = _check_int(max_depth, "max_depth")
    if not 0 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth must be between 0 and {MAX_DEPTH}, got {max_depth}")
    n_bootstrap = _check_int(n_bootstrap, "n_bootstrap")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    seed = _check_int(seed, "seed")
    if search not in ("auto", "exact", "lookahead"):
        raise ValueError(f"search must be 'auto', 'exact' or 'lookahead', got {search!r}")
    observed = result.observed
    n_visitors = observed.sizes[VISITOR]
    min_size = _min_segment_size(min_segment_share, n_visitors)
    names, by_default = _select_features(observed, features)

    # Pass 1: Γ̄ and the covariates, in one compute.
    mean_metric, *columns = dask.compute(
        _posterior_mean_metric(result), *(observed[name].data for name in names)
    )
    mean_metric = np.asarray(mean_metric, dtype=np.float64)
    finite = np.isfinite(mean_metric).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"the posterior-mean metric of {bad.size} visitor(s) is NaN or infinite (first at "
            f"visitor position {bad[0]}): check the posterior's draws"
        )
    search_result = _search_tree(
        mean_metric,
        dict(zip(names, columns, strict=True)),
        max_depth=max_depth,
        min_size=min_size,
        n_bootstrap=n_bootstrap,
        seed=seed,
        search=search,
        skip_unusable=by_default,
    )
    root, bins, labels, stability, exact = search_result
    contrasts_width = mean_metric.shape[1] - 1

    nodes, paths = _describe(root, bins)
    segments = [DiscoveredSegment(leaf, _path_rule(path)) for leaf, path in enumerate(paths)]
    # Pass 2: leaf summaries from the allocation's own reduction.
    summary = segment_summary(result, segments, ci=GATE_CI).compute()
    leaves = _leaves(root)
    arms = result.variants
    described = []
    for leaf, (segment, node) in enumerate(zip(segments, leaves, strict=True)):
        best = int(_leaf(node.total, contrasts_width)[1])
        row = summary.isel(segment=leaf)
        probabilities = row["prob_best"].values
        described.append(
            dataclasses.replace(
                segment,
                population_share=float(row["share"].values),
                best_arm=arms[best],
                arm_best_probabilities={
                    arm: float(p) for arm, p in zip(arms, probabilities, strict=True)
                },
                gate_estimate=float(row["contrast"].values[best]),
                gate_interval=(
                    float(row["contrast_lower"].values[best]),
                    float(row["contrast_upper"].values[best]),
                ),
                stability_score=float(stability[leaf]),
            )
        )
    leaf_values = sum(float(_leaf(node.total, contrasts_width)[0]) for node in leaves)
    control_total = float(mean_metric[:, 0].sum())
    info = {
        "arms": arms,
        "features": [feature.name for feature in bins],
        "n_visitors": n_visitors,
        "max_depth": max_depth,
        "min_segment_share": (
            int(min_segment_share)
            if isinstance(min_segment_share, numbers.Integral)
            else float(min_segment_share)
        ),
        "min_segment_size": int(min_size),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "search": "exact" if exact or max_depth <= 2 else "lookahead",
        "objective": (control_total + leaf_values) / n_visitors,
        "control_objective": control_total / n_visitors,
        "unassigned_share": float((labels < 0).mean()),
    }
    return PolicyTreeResult(nodes=nodes, segments=described, info=info, posterior=result)


def _search_tree(
    mean_metric: np.ndarray,
    columns: Mapping[str, np.ndarray],
    *,
    max_depth: int,
    min_size: float,
    n_bootstrap: int,
    seed: int,
    search: str,
    skip_unusable: bool = False,
):
    """The in-memory part of the fit: bin, search, and refit on bootstrap resamples.

    Parameters
    ----------
    mean_metric : numpy.ndarray
        Γ̄: float64 (visitor, arm), control first.
    columns : mapping of str to numpy.ndarray
        The covariates to split on, (visitor,) each.
    skip_unusable : bool
        Skip object columns of mixed kinds instead of raising (for the default features).

    Returns
    -------
    root, bins, labels, stability, exact
        The tree, the binned covariates, each visitor's leaf (-1 unassigned), each leaf's
        stability score and whether depth >= 3 was searched exhaustively.
    """
    n_visitors = mean_metric.shape[0]
    contrasts = np.ascontiguousarray(mean_metric[:, 1:] - mean_metric[:, :1])
    bins = _bin_features(columns, contrasts, skip_unusable)
    if search == "auto":
        work = _work(bins, n_visitors, contrasts.shape[1] + 1, max_depth)
        exact = work <= EXACT_WORK_BUDGET
    else:
        exact = search == "exact"

    def fit(weights: np.ndarray) -> _Node:
        return _Search(bins, contrasts, weights, min_size, exact).fit(max_depth)

    root = fit(np.ones(n_visitors))
    labels = _leaf_labels(root, bins, n_visitors)
    stability = _stability(labels, fit, bins, n_visitors, n_bootstrap, seed)
    return root, bins, labels, stability, exact


def _stability(labels, fit, bins, n_visitors, n_bootstrap, seed) -> np.ndarray:
    """Per leaf: the fraction of bootstrap refits with a leaf of Jaccard overlap >= 0.5."""
    n_leaves = int(labels.max()) + 1
    if n_bootstrap == 0:
        return np.full(n_leaves, np.nan)
    rng = np.random.default_rng(seed)
    assigned = labels >= 0
    sizes = np.bincount(labels[assigned], minlength=n_leaves)
    reproduced = np.zeros(n_leaves)
    for _ in range(n_bootstrap):
        draws = rng.integers(0, n_visitors, size=n_visitors)
        weights = np.bincount(draws, minlength=n_visitors).astype(np.float64)
        refit = _leaf_labels(fit(weights), bins, n_visitors)
        # Overlaps on the original visitors (each once), via one contingency table.
        n_refit = int(refit.max()) + 1
        both = assigned & (refit >= 0)
        table = np.bincount(
            labels[both] * n_refit + refit[both], minlength=n_leaves * n_refit
        ).reshape(n_leaves, n_refit)
        refit_sizes = np.bincount(refit[refit >= 0], minlength=n_refit)
        union = sizes[:, None] + refit_sizes[None, :] - table
        jaccard = np.divide(table, union, out=np.zeros(table.shape), where=union > 0)
        reproduced += jaccard.max(axis=1) >= STABILITY_JACCARD
    return reproduced / n_bootstrap


def _leaves(root: _Node) -> list[_Node]:
    if root.is_leaf:
        return [root]
    return _leaves(root.left) + _leaves(root.right)


def _describe(root: _Node, bins: list[_Feature]):
    """JSON-ready nodes in level order (ids 0..), and each leaf's path, leaves left to right."""
    order: list[tuple[_Node, int, dict]] = []
    # Levels of each categorical covariate that the path to a node lets through.
    queue: list[tuple[_Node, int, dict]] = [(root, 0, {})]
    while queue:
        node, depth, allowed = queue.pop(0)
        order.append((node, depth, allowed))
        if not node.is_leaf:
            feature = bins[node.feature]
            sides = [allowed, allowed]
            if feature.kind == "categorical":
                levels = allowed.get(feature.name, feature.levels)
                sides = [
                    {**allowed, feature.name: _levels(feature, node.left_bins == go, levels)}
                    for go in (True, False)
                ]
            queue += [(node.left, depth + 1, sides[0]), (node.right, depth + 1, sides[1])]
    ids = {id(node): i for i, (node, _, _) in enumerate(order)}
    leaf_ids = {id(node): i for i, node in enumerate(_leaves(root))}
    nodes = []
    for node, depth, allowed in order:
        entry: dict[str, Any] = {
            "id": ids[id(node)],
            "depth": depth,
            "members": round(float(node.total[-1])),
            "split": None,
        }
        if node.is_leaf:
            entry["segment"] = leaf_ids[id(node)]
        else:
            entry["split"] = _split_description(bins[node.feature], node.left_bins, allowed)
            entry["left"] = ids[id(node.left)]
            entry["right"] = ids[id(node.right)]
        nodes.append(entry)
    paths: list[list] = []

    def walk(node_id: int, path: list) -> None:
        node = nodes[node_id]
        if node["split"] is None:
            paths.append(path)
            return
        walk(node["left"], [*path, (node["split"], "left")])
        walk(node["right"], [*path, (node["split"], "right")])

    walk(0, [])
    return nodes, paths


def _levels(feature: _Feature, side_bins: np.ndarray, allowed: Sequence) -> list:
    """The levels, in sorted order, whose bin is on a side and that the path lets through."""
    allowed = set(allowed)
    on_side = side_bins[feature.level_bins]
    return [
        level for level, on in zip(feature.levels, on_side, strict=True) if on and level in allowed
    ]


def _split_description(feature: _Feature, left_bins: np.ndarray, allowed: Mapping) -> dict:
    """A split as JSON: a numeric threshold, or the levels each side takes.

    A categorical side lists only the levels the path lets reach the node, so the rule and
    the text show no level that cannot be there.
    """
    if feature.kind == "numeric":
        # Bins 0..j go left: x <= thresholds[j].
        last = int(np.flatnonzero(left_bins).max())
        return {
            "covariate": feature.name,
            "type": "numeric",
            "threshold": _python_literal(feature.thresholds[last]),
        }
    levels = allowed.get(feature.name, feature.levels)
    return {
        "covariate": feature.name,
        "type": "categorical",
        "left": _levels(feature, left_bins, levels),
        "right": _levels(feature, ~left_bins, levels),
    }


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _min_segment_size(share, n_visitors: int) -> float:
    if isinstance(share, bool):
        raise TypeError(f"min_segment_share must be a float share or an int count, got {share!r}")
    if isinstance(share, numbers.Integral):
        if share < 1:
            raise ValueError(f"min_segment_share as a visitor count must be >= 1, got {share}")
        if 2 * share > n_visitors:
            raise ValueError(
                f"min_segment_share={share} visitors is more than half of the {n_visitors} "
                "visitors (as a share, above 0.5): at most n_visitors // 2 = "
                f"{n_visitors // 2}"
            )
        return float(share)
    if isinstance(share, numbers.Real):
        if not 0.0 < share <= 0.5:
            raise ValueError(
                f"min_segment_share must be in (0, 0.5] (a share of visitors) or an int count, "
                f"got {share!r}"
            )
        # round() first: 0.1 * 300 is 30.000000000000004, which must mean 30 visitors.
        return float(max(1, math.ceil(round(share * n_visitors, 9))))
    raise TypeError(f"min_segment_share must be a float share or an int count, got {share!r}")
