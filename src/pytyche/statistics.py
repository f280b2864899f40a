"""The xarray layer of every segment-level answer: segment means, member counts, win counts.

Each function stays lazy on dask input; the public functions of :mod:`pytyche.analysis`,
:mod:`pytyche.summary` and :mod:`pytyche.decisions` compose them and compute once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from ._mcse import effective_sample_size
from .reduction import segment_sums
from .results import ARM, CHAIN, DRAW, BCFResult, check_posterior
from .segments import DiscoveredSegment, as_segments, membership

__all__ = [
    "MCSE_METHOD",
    "Segments",
    "check_members",
    "indicator_ess",
    "means_from_sums",
    "member_counts",
    "posterior_and_membership",
    "segment_statistics",
    "whole_samples",
    "win_counts",
]

#: Segments as every public function takes them: a sequence, or a mapping ``{id: rule}``.
Segments = Sequence[DiscoveredSegment] | Mapping[int, Any]


def posterior_and_membership(posterior: Any, segments: Segments) -> tuple[BCFResult, xr.DataArray]:
    """Check the posterior and evaluate the segments' rules on its observed data.

    Parameters
    ----------
    posterior : BCFResult
        A posterior carrying observed data.
    segments : sequence of DiscoveredSegment, or mapping of id to rule
        The segments.

    Returns
    -------
    result : BCFResult
        ``posterior``, checked.
    membership : xarray.DataArray
        Boolean (segment, visitor), lazy when the covariates are.

    Raises
    ------
    TypeError, ValueError
        As :func:`pytyche.results.check_posterior` and :func:`pytyche.membership`.
    """
    result = check_posterior(posterior)
    observed = result.observed
    assert observed is not None  # check_posterior ensured it
    return result, membership(as_segments(segments), observed)


def segment_statistics(
    result: BCFResult, member: xr.DataArray, check_empty: bool = False
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Segment means, member counts and a per-segment "usable" flag, from one pass.

    Parameters
    ----------
    result : BCFResult
        The posterior.
    member : xarray.DataArray
        Boolean (segment, visitor) membership.
    check_empty : bool, default False
        Raise before the pass over the posterior for a segment without members, when the
        membership is in memory (its counts are then known without a compute).

    Returns
    -------
    means : xarray.DataArray
        float64 (segment, sample dims..., arm) segment-mean metric; NaN for unusable segments.
    members : xarray.DataArray
        int64 (segment,) member counts.
    valid : xarray.DataArray
        bool (segment,): the segment has members and all its members' draws are finite.

    Raises
    ------
    ValueError
        With ``check_empty``, for a segment without members (as :func:`check_members`).
    """
    members = member_counts(member, check_empty)
    means, valid = means_from_sums(segment_sums(result, member), members)
    return means, members, valid


def member_counts(member: xr.DataArray, check_empty: bool = False) -> xr.DataArray:
    """int64 (segment,) member counts, lazy when the membership is.

    With ``check_empty`` and the membership in memory, raise ValueError for a segment without
    members (as :func:`check_members`), before any pass over the posterior.
    """
    members = member.sum("visitor", dtype=np.int64).rename("members")
    if check_empty and members.chunks is None:
        check_members(member, members.values)
    return members


def means_from_sums(sums: xr.DataArray, members: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Segment means, NaN where unusable, and the (segment,) "usable" flag, from the sums.

    A segment is usable when it has members and every sum of its members' draws is finite.
    """
    # Empty or non-finite segments become NaN before any arithmetic that would warn on them.
    # numpy's stubs type a ufunc of a DataArray as an ndarray; __array_ufunc__ keeps the DataArray.
    finite = cast(xr.DataArray, np.isfinite(sums))
    valid = finite.all([d for d in sums.dims if d != "segment"]) & (members > 0)
    means = (sums / members.where(members > 0)).where(valid).rename("segment_mean")
    return means, valid


def win_counts(means: xr.DataArray, sample_dims: Sequence[str]) -> xr.DataArray:
    """(segment, arm) count of samples in which each arm has the largest mean contrast.

    Control's contrast is exactly zero and ``argmax`` takes the first maximum, so control
    wins unless some treatment's contrast is strictly positive.

    Parameters
    ----------
    means : xarray.DataArray
        (segment, sample dims..., arm) segment means, control first along ``arm``.
    sample_dims : sequence of str
        The dims over which samples vote.

    Returns
    -------
    xarray.DataArray
        int64 (segment, arm) win counts, lazy when ``means`` is.
    """
    contrast = means - means.isel({ARM: 0})
    winner = contrast.argmax(ARM, skipna=False)
    arm_index = xr.DataArray(np.arange(means.sizes[ARM]), dims=ARM, coords={ARM: means[ARM]})
    return (winner == arm_index).sum(list(sample_dims), dtype=np.int64).rename("wins")


def check_members(member: xr.DataArray, counts: np.ndarray, valid: np.ndarray | None = None):
    """Raise ValueError for the first segment with no members or with non-finite draws.

    Parameters
    ----------
    member : xarray.DataArray
        The (segment, visitor) membership, for the segments' ids and rules.
    counts : numpy.ndarray
        Computed member counts per segment.
    valid : numpy.ndarray, optional
        Computed "usable" flags per segment (see :func:`segment_statistics`).

    Raises
    ------
    ValueError
        Naming the segment, its rule and what is wrong.
    """
    for index, (segment_id, rule) in enumerate(
        zip(member["segment"].values, member["rule"].values, strict=True)
    ):
        if counts[index] == 0:
            raise ValueError(
                f"segment {int(segment_id)} ({rule}) matches zero visitors: its mean over "
                "members is undefined; drop it or widen its rule"
            )
        if valid is not None and not valid[index]:
            raise ValueError(
                f"segment {int(segment_id)} ({rule}): a member's posterior draws contain NaN "
                "or infinity; check the posterior"
            )


# How every reported probability's Monte Carlo standard error is computed (indicator_ess).
MCSE_METHOD = (
    "sqrt(p (1 - p) / ESS); ESS: autocorrelation-based effective sample size of the event's "
    "indicator, within and across chains (one chain without a chain dim)"
)


def indicator_ess(
    events: dict[str, xr.DataArray], sample_dims: list[str]
) -> xr.DataArray:
    """Effective sample size of each event's per-sample indicator, along a new ``event`` dim.

    Parameters
    ----------
    events : dict of str to xarray.DataArray
        Indicators (boolean or 0/1) with the sample dims, all of the same shape.
    sample_dims : list of str
        The sample dims: ``[draw]`` or ``[chain, draw]``.

    Returns
    -------
    xarray.DataArray
        float64, the indicators' other dims and ``event``:
        :func:`pytyche._mcse.effective_sample_size` from the draws' autocorrelation, within
        and across chains; without a ``chain`` dim the draws are one chain, in the order the
        sampler drew them. Lazy on dask input.
    """
    names = list(events)
    index = pd.Index(names, name="event")
    stacked = xr.concat([events[n] for n in names], dim=index)
    if CHAIN not in sample_dims:
        stacked = stacked.expand_dims(CHAIN, axis=stacked.get_axis_num(DRAW))
    stacked = whole_samples(stacked, [CHAIN, DRAW])
    return xr.apply_ufunc(
        effective_sample_size,
        stacked,
        input_core_dims=[[CHAIN, DRAW]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def whole_samples(array: xr.DataArray, sample_dims: list[str]) -> xr.DataArray:
    """``array`` with each sample dim in one dask chunk (unchanged when in memory).

    Rechunks the data only: ``DataArray.chunk`` would also chunk a ``rule`` coordinate, and
    merging lazy coordinates into one Dataset compares them, which computes.

    Parameters
    ----------
    array : xarray.DataArray
        Any array with the sample dims.
    sample_dims : list of str
        The dims to put in one chunk.

    Returns
    -------
    xarray.DataArray
    """
    if array.chunks is None:
        return array
    axes = {array.get_axis_num(d): -1 for d in sample_dims}
    return array.copy(data=array.data.rechunk(axes))
