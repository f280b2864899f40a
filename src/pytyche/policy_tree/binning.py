"""Binning: the covariates a policy tree may split on, and their candidate splits.

Every covariate becomes a :class:`Feature`: one small integer code per visitor (its value
bin; one extra code for a missing value) and the candidate splits over those bins.

- A numeric covariate is cut at thresholds ``x <= t``: every distinct value but the largest
  when there are at most ``MAX_THRESHOLDS`` of them, else ``MAX_THRESHOLDS`` quantiles
  (:func:`cut_points`).
- A numeric covariate whose values are all 0 or 1 (a 0/1 flag) has the same single split,
  but as the levels 0 and 1 (:func:`zero_one_feature`), so its rules read ``x == 0`` /
  ``x == 1``, not ``x <= 0`` / ``x > 0``.
- A text or boolean covariate with at most ``MAX_EXACT_LEVELS`` levels has one bin per level
  and every two-way partition of its levels as a candidate split.
- A text covariate with more levels is ordered once, over all visitors, by best arm and that
  arm's mean gain (:func:`level_order`), and then cut like a number at quantiles of that
  order, so every covariate has at most ``MAX_THRESHOLDS + 1`` value bins.
- An ordered text covariate (its levels listed in order, :func:`pytyche.segments.ordered_levels`)
  is ordinal (:func:`ordinal_feature`): cut like a number on its levels' ranks, so every split
  sends a contiguous range of the order each way, whatever its number of levels.

The kind of a covariate (number, text or bool) comes from
:func:`pytyche.segments.covariate_kind`; numbers are numeric features, text and booleans
categorical ones.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..segments import covariate_kind, covariate_names, dtype_kind

__all__ = [
    "MAX_EXACT_LEVELS",
    "MAX_THRESHOLDS",
    "NOT_COVARIATES",
    "Feature",
    "bin_features",
    "categorical_feature",
    "cut_points",
    "level_order",
    "numeric_feature",
    "ordinal_feature",
    "python_literal",
    "select_features",
    "zero_one_feature",
]

# Candidate thresholds of a numeric covariate (and of a many-level categorical's level ranks):
# every distinct value but the largest when there are at most this many, else this many
# quantiles. Every covariate therefore has at most this many + 1 value bins.
MAX_THRESHOLDS = 64
# Categorical covariates with at most this many levels get the exact best two-way partition
# (2 ** (levels - 1) - 1 candidates); more levels are ordered once, on all visitors, by their
# best-arm gain, and the covariate is then cut like a number at quantiles of that order.
MAX_EXACT_LEVELS = 12
# Observed data along ``visitor`` that a policy cannot split on.
NOT_COVARIATES = ("variant", "outcome")


@dataclasses.dataclass(eq=False)
class Feature:
    """A covariate binned for the search: codes 0..n_bins-1 for values, n_bins for missing.

    Every covariate has at most ``MAX_THRESHOLDS + 1`` value bins, so that the pair
    histograms of the depth-2 search stay small whatever the number of distinct values.
    """

    name: str
    kind: str  # "numeric" or "categorical"
    codes: np.ndarray
    n_bins: int
    thresholds: np.ndarray | None = None  # numeric: value bin b holds thresholds[b-1] < x <= ..
    levels: tuple = ()  # categorical: Python literals, sorted (ordinal: in the order)
    level_bins: np.ndarray | None = None  # categorical: the value bin of each level
    is_bool: bool = False
    # Few-level categorical: every two-way partition, (split, bin) 0/1 float64. None: the
    # splits are the prefixes of the bins (numeric, or a many-level categorical whose levels
    # are binned in best-arm-gain order).
    subsets: np.ndarray | None = None

    @property
    def n_splits(self) -> int:
        """Number of candidate splits."""
        if self.subsets is not None:
            return self.subsets.shape[0]
        return max(self.n_bins - 1, 0)

    def left_masks(self) -> np.ndarray:
        """float64 (split, value bin): 1 where the split sends the bin left."""
        if self.subsets is not None:
            return self.subsets
        return np.tri(self.n_splits, self.n_bins, dtype=np.float64)


def cut_points(ordered: np.ndarray) -> np.ndarray:
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


def numeric_feature(name: str, values: np.ndarray) -> Feature:
    """Bin a numeric covariate at its :func:`cut_points` (finite ones only); NaN is missing.

    Parameters
    ----------
    name : str
        The covariate's name.
    values : numpy.ndarray
        Integer or float (visitor,) values.

    Returns
    -------
    Feature
        Value bin ``b`` holds ``thresholds[b - 1] < x <= thresholds[b]``.
    """
    present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.size, bool)
    candidates = cut_points(np.sort(values[present]))
    if candidates.dtype.kind == "f":  # infinite thresholds cannot be rule literals
        candidates = candidates[np.isfinite(candidates)]
    n_bins = candidates.size + 1
    codes = np.full(values.size, n_bins, dtype=np.int32)
    codes[present] = np.searchsorted(candidates, values[present], side="left")
    return Feature(name, "numeric", codes, n_bins, thresholds=candidates)


def categorical_feature(name: str, values: np.ndarray, contrasts: np.ndarray) -> Feature:
    """Bin a text or boolean covariate: one bin per level, or level ranks cut like a number.

    Parameters
    ----------
    name : str
        The covariate's name.
    values : numpy.ndarray
        Text, boolean or object (visitor,) values; None, NaN and ``pd.NA`` are missing.
    contrasts : numpy.ndarray
        float64 (visitor, treatment) contrasts, which order the levels when there are more
        than ``MAX_EXACT_LEVELS`` of them.

    Returns
    -------
    Feature
        With ``levels`` (sorted Python literals) and the value bin of each level.
    """
    # A hash-based factorisation: sorting a million Python strings would take seconds.
    # Missing values (None, NaN, pd.NA) get -1.
    level_codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    levels = tuple(python_literal(v) for v in np.asarray(uniques))
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
        rank[level_order(sums, contrasts.shape[1])] = np.arange(n_levels)
        cuts = cut_points(np.sort(rank[level_codes[present]]))
        level_bins = np.searchsorted(cuts, rank, side="left")
    n_bins = int(level_bins.max()) + 1 if n_levels else 0
    codes = np.full(values.size, n_bins, dtype=np.int32)
    codes[present] = level_bins[level_codes[present]]
    return Feature(
        name,
        "categorical",
        codes,
        n_bins,
        levels=levels,
        level_bins=level_bins,
        is_bool=values.dtype.kind == "b",
        subsets=subsets,
    )


def zero_one_feature(name: str, values: np.ndarray) -> Feature | None:
    """Bin a 0/1 numeric covariate as the levels 0 and 1; None when it holds other values.

    Parameters
    ----------
    name : str
        The covariate's name.
    values : numpy.ndarray
        Integer or float (visitor,) values; NaN is missing.

    Returns
    -------
    Feature or None
        A categorical feature with the levels (int) 0 and/or 1 that occur, one bin each, the
        split a prefix of the bins: the same bins and split as :func:`numeric_feature`'s
        threshold at 0, so the search is unchanged and only the rule text differs.
    """
    present = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(values.size, bool)
    kept = values[present]
    if not ((kept == 0) | (kept == 1)).all():
        return None
    levels = tuple(int(v) for v in (0, 1) if (kept == v).any())
    level_bins = np.arange(len(levels))
    n_bins = len(levels)
    codes = np.full(values.size, n_bins, dtype=np.int32)
    codes[present] = (kept == 1) if n_bins == 2 else 0
    return Feature(name, "categorical", codes, n_bins, levels=levels, level_bins=level_bins)


def ordinal_feature(name: str, values: np.ndarray, order: Sequence[str]) -> Feature:
    """Bin an ordered text covariate: ranges of its order, cut like a number on the ranks.

    Parameters
    ----------
    name : str
        The covariate's name.
    values : numpy.ndarray
        Text or object (visitor,) values; None, NaN and ``pd.NA`` are missing.
    order : sequence of str
        Every level, lowest first.

    Returns
    -------
    Feature
        ``levels`` in `order` (levels no visitor has included, in the bin of the next level
        present, so that each side of a split is a contiguous range of `order`); splits are
        prefixes of the bins.

    Raises
    ------
    ValueError
        When a value is not one of `order`.
    """
    level_codes = pd.Index(list(order), dtype=object).get_indexer(values).astype(np.int64)
    present = level_codes >= 0
    unknown = ~present & ~np.asarray(pd.isna(values), dtype=bool)
    if unknown.any():
        stray = sorted({str(v) for v in values[unknown]})[:5]
        raise ValueError(
            f"ordered covariate {name!r} holds value(s) {stray} that are not among its ordered "
            f"levels {list(order)}; add them to the order (pytyche_ordered_levels) or fix the data"
        )
    cuts = cut_points(np.sort(level_codes[present]))
    level_bins = np.searchsorted(cuts, np.arange(len(order)), side="left")
    n_bins = int(level_bins.max()) + 1
    codes = np.full(values.size, n_bins, dtype=np.int32)
    codes[present] = level_bins[level_codes[present]]
    levels = tuple(str(level) for level in order)
    return Feature(name, "categorical", codes, n_bins, levels=levels, level_bins=level_bins)


def python_literal(value: Any) -> bool | int | float | str:
    """A level or threshold as the plain Python value a rule literal holds.

    Parameters
    ----------
    value : object
        A numpy or Python scalar; bytes are decoded, anything else not a number or a bool
        becomes its ``str``.

    Returns
    -------
    bool, int, float or str
    """
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode()
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def select_features(
    observed: xr.Dataset, features: str | Sequence[str] | None
) -> tuple[list[str], bool]:
    """The covariates to bin, and whether they were chosen by default (not by the user).

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data: covariates along ``visitor``.
    features : str, sequence of str or None
        The covariates the user named, or None for every covariate whose dtype can hold
        numbers, text or booleans (object columns are checked on their values later, by
        :func:`bin_features`), ``variant`` and ``outcome`` excepted.

    Returns
    -------
    names : list of str
    by_default : bool
        True when `features` was None.

    Raises
    ------
    ValueError
        When `features` is empty, names ``variant`` or ``outcome``, names an unknown
        covariate or one of an unsupported dtype, or names a covariate twice.
    """
    candidates = covariate_names(observed, exclude=NOT_COVARIATES)
    if features is None:
        names = [n for n in candidates if dtype_kind(observed[n].dtype) != "unsupported"]
        return names, True
    if isinstance(features, str):
        features = [features]
    names = [str(name) for name in features]
    if not names:
        raise ValueError(
            f"features is empty (got {features!r}): name at least one covariate, or pass None "
            "for every covariate"
        )
    for name in names:
        if name in NOT_COVARIATES:
            raise ValueError(
                f"{name!r} is observed data, not a covariate: a policy cannot split on it; "
                f"covariates: {candidates}"
            )
        if name not in candidates:
            raise ValueError(f"unknown feature {name!r}; covariates along 'visitor': {candidates}")
        if dtype_kind(observed[name].dtype) == "unsupported":
            raise ValueError(
                f"feature {name!r} has dtype {observed[name].dtype}; expected numbers, text or "
                "booleans"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"features are listed more than once: {duplicates}")
    return names, False


def bin_features(
    columns: Mapping[str, np.ndarray],
    contrasts: np.ndarray,
    skip_unusable: bool = False,
    orders: Mapping[str, Sequence[str]] | None = None,
) -> list[Feature]:
    """Bin each covariate for the search.

    Parameters
    ----------
    columns : mapping of str to numpy.ndarray
        The covariates, (visitor,) each, in memory.
    contrasts : numpy.ndarray
        float64 (visitor, treatment): posterior-mean contrasts against control; they order
        the levels of a many-level categorical.
    skip_unusable : bool, default False
        Skip a column :func:`pytyche.segments.covariate_kind` rejects (an object column
        mixing kinds of values, or an unsupported dtype) instead of raising.
    orders : mapping of str to sequence of str, optional
        The levels, lowest first, of the ordered text covariates: binned by
        :func:`ordinal_feature`.

    Returns
    -------
    list of Feature
        In the order of `columns`, unusable columns skipped.

    Raises
    ------
    ValueError
        When a column is unusable and `skip_unusable` is False, an ordered covariate is not
        text, or holds a value not in its order.
    """
    orders = orders or {}
    features = []
    for name, values in columns.items():
        values = np.asarray(values)
        try:
            kind = covariate_kind(values, name)
        except TypeError as error:
            if skip_unusable:
                continue
            if values.dtype.kind != "O":
                raise ValueError(
                    f"feature {name!r} has dtype {values.dtype}; expected numbers, text or booleans"
                ) from error
            raise ValueError(
                f"feature {name!r} (dtype object) mixes kinds of values "
                f"({pd.api.types.infer_dtype(values, skipna=True)}); expected all text, all "
                "numbers or all booleans, with None/NaN for missing"
            ) from error
        if name in orders:
            if kind != "text":
                raise ValueError(
                    f"feature {name!r} has ordered levels {list(orders[name])} but holds "
                    f"{kind} values; an order applies to text only: delete the attribute"
                )
            features.append(ordinal_feature(name, values, orders[name]))
        elif kind == "number":
            if values.dtype.kind == "O":  # numbers in an object column: float, NaN missing
                present = ~np.asarray(pd.isna(values), dtype=bool)
                numbers_ = np.full(values.shape, np.nan)
                numbers_[present] = values[present].astype(np.float64)
                values = numbers_
            zero_one = zero_one_feature(name, values)
            features.append(numeric_feature(name, values) if zero_one is None else zero_one)
        else:  # text or bool
            features.append(categorical_feature(name, values, contrasts))
    return features


def level_order(level_sums: np.ndarray, n_contrasts: int) -> np.ndarray:
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
