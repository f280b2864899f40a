"""Public analysis functions: from a posterior and segments to per-segment decisions."""

from __future__ import annotations

import dask
import pandas as pd
import xarray as xr

from ._kernels import apply_exploration_floor
from ._validate import check_probability
from .decisions import recommend
from .reduction import segment_sums
from .results import BCFResult, check_variant_labels
from .segments import membership
from .statistics import (
    Segments,
    check_members,
    means_from_sums,
    member_counts,
    posterior_and_membership,
    segment_statistics,
    win_counts,
)
from .summary import segment_summary

__all__ = [
    "membership",
    "recommend",
    "segment_means",
    "segment_summary",
    "thompson_allocation",
    "win_frequencies",
]


def segment_means(posterior: BCFResult, segments: Segments) -> xr.DataArray:
    """Segment-mean expected metric per posterior sample and arm.

    The mean over a segment's members of the per-visitor metric (conversion probability,
    expected outcome, or conversion × value), for every draw. One streaming pass over the
    posterior; lazy on a dask-backed posterior.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        A posterior carrying observed data.
    segments : Sequence[DiscoveredSegment]
        Segments to summarize; only ``id`` and ``rule`` are used. A mapping ``{id: rule}``
        is accepted too.

    Returns
    -------
    xarray.DataArray
        float64, dims (segment, sample dims..., arm), coordinates ``segment`` (the ids),
        ``rule`` and ``arm``. A segment with no members, or whose members have a non-finite
        draw, is NaN throughout (:func:`thompson_allocation` raises on both instead).

    Raises
    ------
    TypeError
        When ``posterior`` is not one of the three result types.
    ValueError
        When ``posterior.observed`` is None, or the segments are empty or share an id.
    """
    means, _, _ = segment_statistics(*posterior_and_membership(posterior, segments))
    return means


def win_frequencies(posterior: BCFResult, segments: Segments) -> xr.DataArray:
    """Posterior probability that each arm is each segment's best arm (no exploration floor).

    Each posterior sample votes once per segment, for the treatment whose segment-mean
    contrast against control is largest, or for control when no contrast is positive; ties go
    to the earlier arm. Lazy on a dask-backed posterior.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        A posterior carrying observed data.
    segments : Sequence[DiscoveredSegment]
        Segments to allocate over; only ``id`` and ``rule`` are used.

    Returns
    -------
    xarray.DataArray
        float64 (segment, arm) win frequencies, each row summing to 1; NaN rows for segments
        with no members or non-finite draws.

    Raises
    ------
    TypeError
        When ``posterior`` is not one of the three result types.
    ValueError
        When ``posterior.observed`` is None, or the segments are empty or share an id.
    """
    result, member = posterior_and_membership(posterior, segments)
    means, _, valid = segment_statistics(result, member)
    wins = win_counts(means, result.sample_dims)
    return (wins / result.n_samples).where(valid).rename("win_frequency")


def thompson_allocation(
    posterior: BCFResult, segments: Segments, epsilon: float = 0.02
) -> dict[int, dict[str, float]]:
    """Per-segment traffic split: each arm's weight is the posterior probability that it is the
    segment's best arm.

    This is Thompson sampling at segment granularity. Each posterior draw casts one vote per
    segment: the draw's treatment-vs-control contrasts are averaged over the segment's members,
    and the vote goes to the treatment with the largest contrast — or to control, when no
    contrast is positive. An arm's weight is the fraction of draws it wins. Where the posterior
    is confident, traffic concentrates on the winner; where arms are still close, traffic stays
    spread across the contenders, so the next round collects evidence exactly where the
    decision is open.

    Every (chain, draw) pair votes once; ties go to the earlier arm. On a dask-backed posterior
    the call builds one graph (member counts and the segments' sums of every draw) and
    computes it once; the non-finite check, the votes and the floor then run in numpy on the
    small (segment, draw, arm) sums.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        One of the three posterior result types, carrying observed data (raises otherwise).
    segments : Sequence[DiscoveredSegment]
        Segments to allocate over — typically ``fit_policy_tree(...).segments``. Only ``id``
        and ``rule`` are consumed. Membership is each segment's rule applied to the
        concatenated visitor rows (all of ``variants[0]``'s rows, then ``variants[1]``'s, and so
        on — the same row order every per-visitor sample array uses). Segments may overlap.
    epsilon : float, default 0.02
        Safety-net exploration floor: arms whose win frequency falls below ``epsilon / K`` are
        raised to exactly ``epsilon / K`` and the rest rescaled to preserve sum-to-1,
        iterating until stable — so no arm's traffic is starved to zero. Inert when every arm
        is already above the floor; 0.0 returns raw win frequencies verbatim. This is NOT the
        dial for how much traffic stays on control — that is ``min_control_weight`` /
        ``min_explore_weight`` on :func:`pytyche.sequential_experiment`. In the canonical Control +
        Explore + Optimized cell structure this floor is mostly redundant; rarely worth
        overriding.

    Returns
    -------
    dict[int, dict[str, float]]
        ``{segment.id: {variant_name: weight}}`` — segments in the given order, inner dicts in
        variant order (control first), control included, summing to 1.

    Raises
    ------
    ValueError
        When ``posterior.observed`` is None; when ``epsilon`` is outside [0, 1] or NaN (the
        floor-clip is only well-defined on that range — ``epsilon > 1`` would demand per-arm
        floors that cannot sum to 1); when a segment's rule matches zero visitors (an empty
        mean over members would silently produce NaN weights); when two segments share an id;
        or when a member's draws contain NaN or infinity.
    TypeError
        When ``posterior`` is not an accepted result type (a bare Dataset included: use
        ``ds.tyche.thompson_allocation``).

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=2_000, n_draws=200, seed=1)
    >>> segments = [pt.DiscoveredSegment(0, "device == 'mobile'"),
    ...             pt.DiscoveredSegment(1, "device != 'mobile'")]
    >>> allocation = pt.thompson_allocation(result, segments, epsilon=0.02)
    >>> sorted(allocation)
    [0, 1]
    >>> round(sum(allocation[0].values()), 12)
    1.0
    """  # noqa: D205 (the reference page's summary sentence: two lines here)
    epsilon = check_probability(
        "epsilon", epsilon, why=": the floor epsilon / K per arm can only sum to at most 1"
    )
    result, member = posterior_and_membership(posterior, segments)
    members = member_counts(member, check_empty=True)
    sums = segment_sums(result, member)
    # Labels of a lazily opened store are checked in the same compute as everything else.
    arms = list(result.variants)
    variant = result.dataset.coords["variant"]
    unknown_labels = (~variant.isin(arms)).sum() if variant.chunks else 0
    # One compute, of the pass only: the rest works on (segment, sample, arm) sums, small
    # next to the posterior, in numpy (each lazy step would cost graph time, not work).
    sums, members, unknown_labels = dask.compute(sums, members, unknown_labels)

    if unknown_labels:
        check_variant_labels(pd.unique(variant.values.ravel()), arms)
    means, valid = means_from_sums(sums, members)
    check_members(member, members.values, valid.values)
    wins = win_counts(means, result.sample_dims)
    weights = apply_exploration_floor(wins.values / result.n_samples, epsilon)
    return {
        int(segment_id): dict(zip(arms, row.tolist(), strict=True))
        for segment_id, row in zip(member["segment"].values, weights, strict=True)
    }
