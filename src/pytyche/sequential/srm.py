"""Sample ratio mismatch under changing weights: recorded vs planned counts, chi-square.

The plans give every segment its own arm weights, so a round is tested per (segment, cell,
arm): each segment's recorded visitors are fixed by the data, and its counts over (cell, arm)
are compared with that total spread by the segment's plan. Pooling the segments into one
(cell, arm) table (the check before, still reported as ``cell_arm_*``) sums multinomials
with different probabilities: its counts vary less than its chi-square assumes, so it is
conservative and misses mismatches confined to one segment (``benchmarks/bench_srm.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import chi2

__all__ = ["MIN_EXPECTED", "SampleRatioMismatchWarning", "assignment_counts", "srm_test"]

# Cells expected to hold fewer visitors than this are left out (the chi-square approximation
# needs moderately large expected counts).
MIN_EXPECTED = 5.0
COUNT_DIMS = ("round", "cell", "arm")
SEGMENT_DIMS = ("round", "segment", "cell", "arm")


class SampleRatioMismatchWarning(UserWarning):
    """A round's recorded counts per (segment, cell, arm) are unlikely under its plan."""


def assignment_counts(
    segment, cell, arm, segment_ids: Sequence[int], cells: Sequence[str], arms: Sequence[str]
) -> np.ndarray:
    """Visitors per (segment, cell, arm), in one pass over three visitor columns.

    Parameters
    ----------
    segment, cell, arm : numpy.ndarray or dask.array.Array
        One entry per visitor, same length (and chunks, when dask-backed): the segment id,
        the cell name and the arm name.
    segment_ids, cells, arms : sequence
        The possible values of each column, in the order of the result's axes.

    Returns
    -------
    numpy.ndarray
        int64 counts, shape ``(len(segment_ids), len(cells), len(arms))``. Dask-backed
        columns are counted chunk by chunk (``dask.array.bincount``), never loaded whole.

    Raises
    ------
    ValueError
        When a column holds a value outside its list (up to 5 shown).

    Examples
    --------
    >>> counts = assignment_counts(
    ...     np.array([0, 0, 1]), np.array(["a", "b", "a"]), np.array(["x", "x", "y"]),
    ...     [0, 1], ["a", "b"], ["x", "y"])
    >>> counts[0].tolist(), counts[1].tolist()
    ([[1, 0], [1, 0]], [[0, 1], [0, 0]])
    """
    shape = (len(segment_ids), len(cells), len(arms))
    lists = (list(segment_ids), list(cells), list(arms))

    def codes(segment_block, cell_block, arm_block):
        index = []
        for name, values, known in zip(
            ("segment", "cell", "arm"), (segment_block, cell_block, arm_block), lists, strict=True
        ):
            values = np.asarray(values)
            found = pd.Index(known).get_indexer(values)
            if (found < 0).any():
                odd = pd.unique(values[found < 0])[:5].tolist()
                raise ValueError(f"{name} values {odd} are not among the plan's {known}")
            index.append(found.astype(np.int64))
        return (index[0] * shape[1] + index[1]) * shape[2] + index[2]

    size = int(np.prod(shape))
    if any(isinstance(v, da.Array) for v in (segment, cell, arm)):
        columns = [v if isinstance(v, da.Array) else da.from_array(v) for v in (segment, cell, arm)]
        combined = da.map_blocks(codes, *columns, dtype=np.int64)
        flat = da.bincount(combined, minlength=size).compute()
    else:
        flat = np.bincount(codes(segment, cell, arm), minlength=size)
    return np.asarray(flat, dtype=np.int64).reshape(shape)


def _chi_square(o: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per round: statistic, dof and p-value over (round, group, count) tables.

    Each group's (segment's) total is fixed, so it adds its kept counts minus one degrees of
    freedom; a group with fewer than 2 kept counts adds nothing (its one term has none).
    """
    kept = e >= MIN_EXPECTED
    per_group = kept.sum(axis=2)
    tested = per_group >= 2
    terms = np.where(kept, (o - e) ** 2 / np.where(kept, e, 1.0), 0.0)
    statistic = np.where(tested, terms.sum(axis=2), 0.0).sum(axis=1)
    dof = np.where(tested, per_group - 1, 0).sum(axis=1)
    with np.errstate(invalid="ignore"):
        p_value = np.where(dof >= 1, chi2.sf(statistic, np.maximum(dof, 1)), np.nan)
    return statistic, dof, p_value


def _tables(observed: xr.DataArray, expected: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """(round, segment, cell × arm) float arrays; one segment when there is no segment dim."""
    if (
        set(observed.dims) != set(expected.dims)
        or observed.shape != expected.transpose(*observed.dims).shape
    ):
        raise ValueError(
            f"observed counts {dict(observed.sizes)} and expected counts "
            f"{dict(expected.sizes)} differ in shape"
        )
    if "segment" in observed.dims:
        if set(observed.dims) != set(SEGMENT_DIMS):
            raise ValueError(f"counts by segment need dims {SEGMENT_DIMS}, got {observed.dims}")
        observed = observed.transpose(*SEGMENT_DIMS)
    elif observed.ndim != 3:
        raise ValueError(f"counts need dims {COUNT_DIMS} or {SEGMENT_DIMS}, got {observed.dims}")
    expected = expected.transpose(*observed.dims)
    rounds = observed.shape[0]
    groups = observed.shape[1] if "segment" in observed.dims else 1
    o = np.asarray(observed.values, dtype=np.float64).reshape(rounds, groups, -1)
    e = np.asarray(expected.values, dtype=np.float64).reshape(rounds, groups, -1)
    return o, e


def srm_test(
    observed: xr.DataArray, expected: xr.DataArray, threshold: float = 0.001
) -> xr.Dataset:
    """Chi-square test of recorded against planned counts, per round and pooled.

    Parameters
    ----------
    observed : xarray.DataArray
        Recorded visitors, dims (round, segment, cell, arm), or (round, cell, arm) for one
        segment.
    expected : xarray.DataArray
        Visitors the plans expected, same dims and coordinates: per (round, segment), the
        segment's recorded visitors times the cell's weight times the arm's probability in
        that cell for that segment, so each segment's expected total equals its recorded one.
    threshold : float, default 0.001
        A round (or the pooled table) is flagged when its p-value is below this.

    Returns
    -------
    xarray.Dataset
        Per ``round``, the test per (segment, cell, arm): ``statistic``, ``dof`` (kept counts
        minus one per segment with at least 2 kept counts), ``p_value`` and ``flagged``; and
        the test of the segments pooled into one (cell, arm) table: ``cell_arm_statistic``,
        ``cell_arm_dof`` (kept counts minus one), ``cell_arm_p_value``,
        ``cell_arm_flagged`` (reported, never what ``flagged`` says: it is conservative when
        segments have different weights). ``pooled_statistic``, ``pooled_dof``,
        ``pooled_p_value``, ``pooled_flagged`` add the per-segment terms of every tested
        round. ``observed`` and ``expected`` per (round, cell, arm) (summed over segments)
        and, with a segment dim, ``observed_by_segment`` and ``expected_by_segment``.
        Counts expected below 5 visitors are skipped; a round with no degree of freedom
        has NaN p-value and is not flagged.

    Raises
    ------
    ValueError
        When `threshold` is not in (0, 1) or the two tables differ in dims or shape.

    Examples
    --------
    >>> obs = xr.DataArray([[[480, 520]]], dims=("round", "cell", "arm"))
    >>> exp = xr.DataArray([[[500.0, 500.0]]], dims=("round", "cell", "arm"))
    >>> bool(srm_test(obs, exp)["flagged"][0])
    False

    Two segments with opposite weights: each has lost a third of its rarer arm, which the
    pooled (cell, arm) table cannot see.

    >>> dims = ("round", "segment", "cell", "arm")
    >>> obs = xr.DataArray([[[[800, 130]], [[130, 800]]]], dims=dims)
    >>> exp = xr.DataArray([[[[744.0, 186.0]], [[186.0, 744.0]]]], dims=dims)
    >>> check = srm_test(obs, exp)
    >>> bool(check["flagged"][0]), bool(check["cell_arm_flagged"][0])
    (True, False)
    """
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    o, e = _tables(observed, expected)
    statistic, dof, p_value = _chi_square(o, e)
    # The segments pooled into one (cell, arm) table: the check as it was.
    cell_arm = _chi_square(o.sum(axis=1, keepdims=True), e.sum(axis=1, keepdims=True))
    pooled_dof = int(dof.sum())
    pooled_statistic = float(statistic[dof >= 1].sum())
    pooled_p = float(chi2.sf(pooled_statistic, pooled_dof)) if pooled_dof >= 1 else np.nan
    by_segment = "segment" in observed.dims
    expected = expected.transpose(*observed.dims)
    rounds = observed.coords.get("round")
    coords = {"round": rounds.values} if rounds is not None else {}
    variables = {
        "statistic": ("round", statistic),
        "dof": ("round", dof),
        "p_value": ("round", p_value),
        "flagged": ("round", _flag(p_value, threshold)),
        "cell_arm_statistic": ("round", cell_arm[0]),
        "cell_arm_dof": ("round", cell_arm[1]),
        "cell_arm_p_value": ("round", cell_arm[2]),
        "cell_arm_flagged": ("round", _flag(cell_arm[2], threshold)),
        "pooled_statistic": pooled_statistic,
        "pooled_dof": pooled_dof,
        "pooled_p_value": pooled_p,
        "pooled_flagged": bool(pooled_dof >= 1 and pooled_p < threshold),
        "observed": observed.sum("segment") if by_segment else observed,
        "expected": expected.sum("segment") if by_segment else expected,
    }
    if by_segment:
        variables["observed_by_segment"] = observed.transpose(*SEGMENT_DIMS)
        variables["expected_by_segment"] = expected.transpose(*SEGMENT_DIMS)
    return xr.Dataset(
        variables, coords=coords, attrs={"threshold": threshold, "min_expected": MIN_EXPECTED}
    )


def _flag(p_value: np.ndarray, threshold: float) -> np.ndarray:
    return np.nan_to_num(p_value, nan=1.0) < threshold
