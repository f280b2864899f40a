"""Per-segment posterior summaries: what each arm is expected to do in each segment."""

from __future__ import annotations

import xarray as xr

from ._validate import check_probability
from .results import ARM, VISITOR, BCFResult
from .statistics import Segments, posterior_and_membership, segment_statistics, win_counts

__all__ = ["segment_summary"]


def segment_summary(posterior: BCFResult, segments: Segments, ci: float = 0.8) -> xr.Dataset:
    """Posterior summary of every arm in every segment, from one pass over the posterior.

    Each posterior sample gives every segment a segment-mean metric per arm (the mean over
    the segment's members of the per-visitor metric), and so a contrast of each arm against
    control and a best arm (the allocation's vote: the treatment with the largest positive
    contrast, else control; ties to the earlier arm). The summary reduces those over the
    samples. The segment means come from the same reduction as
    :func:`pytyche.thompson_allocation`, and ``prob_best`` equals its weights with
    ``epsilon=0``.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        A posterior carrying observed data.
    segments : Sequence[DiscoveredSegment]
        Any segments (hand-written or discovered, overlapping or not); only ``id`` and
        ``rule`` are used. A mapping ``{id: rule}`` is accepted too.
    ci : float, default 0.8
        Probability mass of the central interval of the contrast, in (0, 1).

    Returns
    -------
    xarray.Dataset
        Dims (segment, arm), coordinates ``segment`` (the ids), ``rule`` and ``arm``;
        attributes ``ci`` and ``n_samples``. Lazy (one dask graph, one pass over the
        posterior) on a dask-backed posterior. Variables:

        - ``members`` (segment): number of visitors the rule matches;
        - ``share`` (segment): ``members`` over all visitors;
        - ``metric``: posterior mean of the segment-mean metric;
        - ``contrast``: posterior mean of the segment-mean contrast against control (0 for
          control);
        - ``contrast_lower``, ``contrast_upper``: its central ``ci`` interval (linear
          interpolation between samples);
        - ``prob_best``: posterior probability that the arm is the segment's best (the raw
          win frequency);
        - ``prob_positive``: posterior probability that the contrast is > 0 (0 for control);
        - ``expected_loss``: posterior mean of the best arm's segment-mean metric minus this
          arm's: what serving this arm to the segment is expected to cost.

        Every variable but ``members`` and ``share`` is NaN for a segment with no members or
        whose members have a non-finite draw.

    Raises
    ------
    TypeError
        When ``posterior`` is not one of the three result types, or ``ci`` is not a number.
    ValueError
        When ``posterior.observed`` is None, ``ci`` is outside (0, 1), or the segments are
        empty or share an id.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=2_000, n_draws=100, seed=1)
    >>> summary = pt.segment_summary(result, {0: "device == 'mobile'", 1: "everyone"})
    >>> summary["prob_best"].sizes
    Frozen({'segment': 2, 'arm': 3})
    """
    ci = check_probability("ci", ci, low_open=True, high_open=True)
    result, member = posterior_and_membership(posterior, segments)
    means, members, valid = segment_statistics(result, member)
    sample_dims = list(result.sample_dims)
    n_visitors = result.dataset.sizes[VISITOR]

    contrast = means - means.isel({ARM: 0})
    wins = win_counts(means, result.sample_dims)
    # The same division as thompson_allocation's, so the two agree to the last digit.
    prob_best = (wins / result.n_samples).where(valid)
    # Quantiles need every sample of a segment in one block; the array is small. Rechunk the
    # data only: DataArray.chunk would also chunk the 'rule' coordinate, and merging lazy
    # coordinates into one Dataset compares them, which computes.
    whole = contrast
    if contrast.chunks is not None:
        axes = {contrast.get_axis_num(d): -1 for d in sample_dims}
        whole = contrast.copy(data=contrast.data.rechunk(axes))
    bounds = whole.quantile(
        [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0], dim=sample_dims, skipna=False
    ).drop_vars("quantile")
    best_metric = means.max(ARM, skipna=False)
    summary = xr.Dataset(
        {
            "members": members,
            "share": members / n_visitors,
            "metric": means.mean(sample_dims, skipna=False),
            "contrast": contrast.mean(sample_dims, skipna=False),
            "contrast_lower": bounds.isel(quantile=0),
            "contrast_upper": bounds.isel(quantile=1),
            "prob_best": prob_best,
            "prob_positive": (contrast > 0).mean(sample_dims).where(valid),
            "expected_loss": (best_metric - means).mean(sample_dims, skipna=False),
        },
        attrs={"ci": ci, "n_samples": result.n_samples},
    )
    return summary.transpose("segment", ARM)
