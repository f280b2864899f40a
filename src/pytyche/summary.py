"""Per-segment posterior summaries, their Monte Carlo errors and the sampler's diagnostics.

What each arm is expected to do in each segment, how precisely the posterior samples pin each
figure down, and whether the sampler's chains mixed.
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
import xarray as xr

from ._mcse import (
    bulk_effective_sample_size,
    probability_mcse,
    rank_normalized_rhat,
)
from ._validate import check_probability
from .results import ARM, CHAIN, DRAW, VISITOR, BCFResult
from .statistics import (
    MCSE_METHOD,
    Segments,
    indicator_ess,
    posterior_and_membership,
    segment_statistics,
    whole_samples,
    win_counts,
)

__all__ = [
    "MAX_RHAT",
    "MIN_ESS_PER_CHAIN",
    "ConvergenceWarning",
    "check_convergence",
    "segment_summary",
]

#: R-hat above this says the chains have not mixed (Vehtari et al. 2021).
MAX_RHAT = 1.01
#: Bulk ESS below this many per chain makes R-hat, ESS and the Monte Carlo errors unreliable.
MIN_ESS_PER_CHAIN = 100
# The frequencies whose Monte Carlo standard error the summary reports.
FREQUENCIES = ("prob_best", "prob_positive")


class ConvergenceWarning(UserWarning):
    """The sampler's chains have not mixed, or too few effective samples back a summary."""


def segment_summary(
    posterior: BCFResult, segments: Segments, ci: float = 0.8, *, check: bool = False
) -> xr.Dataset:
    """Posterior summary of every arm in every segment, from one pass over the posterior.

    Each posterior sample gives every segment a segment-mean metric per arm (the mean over
    the segment's members of the per-visitor metric), and so a contrast of each arm against
    control and a best arm (the allocation's vote: the treatment with the largest positive
    contrast, else control; ties to the earlier arm). The summary reduces those over the
    samples. The segment means come from the same reduction as
    :func:`pytyche.thompson_allocation`, and ``prob_best`` equals its weights with
    ``epsilon=0``.

    **Precision.** ``prob_best`` and ``prob_positive`` are frequencies over the S posterior
    samples, so they carry Monte Carlo error: ``prob_best_mcse`` and ``prob_positive_mcse``
    are their standard errors ``sqrt(p (1 - p) / ESS)``. Without a ``chain`` dim the samples
    are taken as independent (``ESS = S``); with one, ESS is the autocorrelation-based
    effective sample size of the event's indicator across chains, as in
    :func:`pytyche.recommend`.

    **Sampler diagnostics.** With a ``chain`` dim the summary also holds ``contrast_rhat``
    and ``contrast_ess``, the rank-normalized split R-hat and the bulk effective sample size
    of each segment-mean contrast (Vehtari et al. 2021; the values of ``arviz.rhat`` and
    ``arviz.ess``).

    **When it warns.** A lazy Dataset has no values to judge until it is computed, and
    pytyche never computes behind your back, nor warns from inside a dask task (on a cluster
    the warning would be raised on a worker and lost, and once per chunk). So the check is a
    separate, explicit step: ``check=True`` computes the summary (the one pass over the
    posterior) and then calls :func:`check_convergence` on it, which raises a
    :class:`ConvergenceWarning` when R-hat > 1.01 or the bulk ESS is below 100 per chain.
    With the default ``check=False`` nothing is computed; call
    ``check_convergence(summary.compute())`` yourself, or read the two variables.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        A posterior carrying observed data.
    segments : Sequence[DiscoveredSegment]
        Any segments (hand-written or discovered, overlapping or not); only ``id`` and
        ``rule`` are used. A mapping ``{id: rule}`` is accepted too.
    ci : float, default 0.8
        Probability mass of the central interval of the contrast, in (0, 1).
    check : bool, default False
        Compute the summary and check the sampler diagnostics (see above); the result is
        then in memory.

    Returns
    -------
    xarray.Dataset
        Dims (segment, arm), coordinates ``segment`` (the ids), ``rule`` and ``arm``;
        attributes ``ci``, ``n_samples``, ``n_chains`` (0 without a ``chain`` dim) and
        ``mcse_method``. Lazy (one dask graph, one pass over the posterior, one compute) on
        a dask-backed posterior unless ``check``. Variables:

        - ``members`` (segment): number of visitors the rule matches;
        - ``share`` (segment): ``members`` over all visitors;
        - ``metric``: posterior mean of the segment-mean metric;
        - ``contrast``: posterior mean of the segment-mean contrast against control (0 for
          control);
        - ``contrast_lower``, ``contrast_upper``: its central ``ci`` interval (linear
          interpolation between samples);
        - ``prob_best``: posterior probability that the arm is the segment's best (the raw
          win frequency);
        - ``prob_best_mcse``: its Monte Carlo standard error;
        - ``prob_positive``: posterior probability that the contrast is > 0 (0 for control);
        - ``prob_positive_mcse``: its Monte Carlo standard error;
        - ``expected_loss``: posterior mean of the best arm's segment-mean metric minus this
          arm's: what serving this arm to the segment is expected to cost;
        - with a ``chain`` dim only: ``contrast_rhat`` and ``contrast_ess``, NaN for control
          (its contrast is 0 in every sample: nothing to diagnose).

        Every variable but ``members`` and ``share`` is NaN for a segment with no members or
        whose members have a non-finite draw.

    Raises
    ------
    TypeError
        When ``posterior`` is not one of the three result types, ``ci`` is not a number, or
        ``check`` is not a bool.
    ValueError
        When ``posterior.observed`` is None, ``ci`` is outside (0, 1), or the segments are
        empty or share an id.

    Warns
    -----
    ConvergenceWarning
        With ``check=True``, as :func:`check_convergence`.

    See Also
    --------
    check_convergence : The sampler check on a computed summary.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=2_000, n_draws=100, seed=1)
    >>> summary = pt.segment_summary(result, {0: "device == 'mobile'", 1: "everyone"})
    >>> summary["prob_best"].sizes
    Frozen({'segment': 2, 'arm': 3})
    >>> float(summary["prob_best_mcse"].max()) <= 0.5 / 100 ** 0.5
    True
    """
    ci = check_probability("ci", ci, low_open=True, high_open=True)
    if not isinstance(check, bool):
        raise TypeError(f"check must be True or False, got {check!r} ({type(check).__name__})")
    result, member = posterior_and_membership(posterior, segments)
    means, members, valid = segment_statistics(result, member)
    sample_dims = list(result.sample_dims)
    n_samples = result.n_samples
    n_visitors = result.dataset.sizes[VISITOR]

    contrast = means - means.isel({ARM: 0})
    # win_counts over no sample dim is the per-sample indicator "this arm won this sample".
    won = win_counts(means, [])
    wins = won.sum(sample_dims, dtype=np.int64)
    positive = contrast > 0
    # The same division as thompson_allocation's, so the two agree to the last digit.
    frequencies = {
        "prob_best": wins / n_samples,
        "prob_positive": positive.sum(sample_dims, dtype=np.int64) / n_samples,
    }
    ess = indicator_ess({"prob_best": won, "prob_positive": positive}, sample_dims)
    # Quantiles need every sample of a segment in one block; the array is small. Rechunk the
    # data only: DataArray.chunk would also chunk the 'rule' coordinate, and merging lazy
    # coordinates into one Dataset compares them, which computes.
    whole = whole_samples(contrast, sample_dims)
    bounds = whole.quantile(
        [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0], dim=sample_dims, skipna=False
    ).drop_vars("quantile")
    best_metric = means.max(ARM, skipna=False)
    variables = {
        "members": members,
        "share": members / n_visitors,
        "metric": means.mean(sample_dims, skipna=False),
        "contrast": contrast.mean(sample_dims, skipna=False),
        "contrast_lower": bounds.isel(quantile=0),
        "contrast_upper": bounds.isel(quantile=1),
    }
    for name in FREQUENCIES:
        # Each variable masks the unmasked frequency itself: a variable computed from another
        # output variable trips a graph optimisation of dask.distributed (2026.8) when
        # the whole Dataset is computed as one collection (``client.compute(summary)``).
        variables[name] = frequencies[name].where(valid)
        variables[f"{name}_mcse"] = xr.apply_ufunc(
            probability_mcse,
            frequencies[name],
            ess.sel(event=name, drop=True),
            dask="parallelized",
            output_dtypes=[np.float64],
        ).where(valid)
    variables["expected_loss"] = (best_metric - means).mean(sample_dims, skipna=False)
    n_chains = result.dataset.sizes[CHAIN] if CHAIN in sample_dims else 0
    if n_chains:
        for name, diagnostic in (
            ("contrast_rhat", rank_normalized_rhat),
            ("contrast_ess", bulk_effective_sample_size),
        ):
            variables[name] = xr.apply_ufunc(
                diagnostic,
                whole,
                input_core_dims=[[CHAIN, DRAW]],
                dask="parallelized",
                output_dtypes=[np.float64],
            )
    summary = xr.Dataset(
        variables,
        attrs={
            "ci": ci,
            "n_samples": n_samples,
            "n_chains": n_chains,
            "mcse_method": MCSE_METHOD,
        },
    ).transpose("segment", ARM)
    if check:
        summary = summary.compute()
        check_convergence(summary)
    return summary


def check_convergence(
    summary: xr.Dataset,
    max_rhat: float = MAX_RHAT,
    min_ess_per_chain: float = MIN_ESS_PER_CHAIN,
) -> list[str]:
    """Warn when a summary's chains have not mixed or its effective samples are too few.

    Reads ``contrast_rhat`` and ``contrast_ess`` of a :func:`segment_summary` (present when
    the posterior has a ``chain`` dim; without them there is nothing to check and nothing
    happens). Chains that have not mixed make every figure of the summary, its Monte Carlo
    errors included, untrustworthy: the errors assume the chains sample one distribution.
    Below about 100 effective draws per chain the R-hat and ESS estimates themselves, and so
    the errors, are unreliable (Vehtari et al. 2021). NaN diagnostics (control, segments
    without usable draws) are skipped.

    Parameters
    ----------
    summary : xarray.Dataset
        The output of :func:`segment_summary`. A lazy one is computed here, the two
        diagnostic variables only, which is a pass over the posterior of its own: to read
        the posterior once, compute the summary first (or pass ``check=True`` to
        :func:`segment_summary`).
    max_rhat : float, default 1.01
        Largest acceptable R-hat.
    min_ess_per_chain : float, default 100
        Smallest acceptable bulk effective sample size per chain (times the number of
        chains, the ``n_chains`` attribute).

    Returns
    -------
    list of str
        One line per problem found (empty when none): the worst (segment, arm) and how many
        pairs fail.

    Raises
    ------
    TypeError
        When ``summary`` is not an ``xarray.Dataset``, or a limit is not a real number.
    ValueError
        When ``max_rhat`` is below 1 or ``min_ess_per_chain`` below 0, or either is NaN.

    Warns
    -----
    ConvergenceWarning
        One warning listing every problem, when there is any.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=1_000, n_draws=300, n_chains=2, seed=1)
    >>> summary = pt.segment_summary(result, {0: "everyone"})
    >>> check_convergence(summary)
    []
    """
    if not isinstance(summary, xr.Dataset):
        raise TypeError(f"summary must be an xarray.Dataset, got {type(summary).__name__}")
    max_rhat = _check_limit("max_rhat", max_rhat, low=1.0)
    min_ess_per_chain = _check_limit("min_ess_per_chain", min_ess_per_chain, low=0.0)
    names = [n for n in ("contrast_rhat", "contrast_ess") if n in summary.data_vars]
    if not names:
        return []
    diagnostics = summary[names]
    if any(v.chunks is not None for v in diagnostics.data_vars.values()):
        diagnostics = diagnostics.compute()
    n_chains = int(summary.attrs.get("n_chains", 1)) or 1
    min_ess = min_ess_per_chain * n_chains
    problems = []
    if "contrast_rhat" in diagnostics:
        problems += _failures(
            diagnostics["contrast_rhat"],
            lambda v: v > max_rhat,
            "R-hat",
            f"> {max_rhat:g}",
            worst=np.nanargmax,
            spec=".3f",
        )
    if "contrast_ess" in diagnostics:
        problems += _failures(
            diagnostics["contrast_ess"],
            lambda v: v < min_ess,
            "bulk ESS",
            f"< {min_ess:g} ({min_ess_per_chain:g} per chain × {n_chains} chain(s))",
            worst=np.nanargmin,
            spec=".0f",
        )
    if problems:
        warnings.warn(
            "segment_summary: " + "; ".join(problems) + ". The chains have not mixed well "
            "enough to trust the summary or its Monte Carlo errors: run more or longer "
            "chains",
            ConvergenceWarning,
            stacklevel=2,
        )
    return problems


def _check_limit(name: str, value, low: float) -> float:
    """A real number >= ``low`` as a float: TypeError for another type, ValueError else."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not float(value) >= low:  # NaN fails too
        raise ValueError(f"{name} must be a number >= {low:g}, got {value!r}")
    return float(value)


def _failures(values: xr.DataArray, fails, label: str, limit: str, worst, spec: str) -> list[str]:
    """One line for the (segment, arm) pairs whose finite ``values`` fail, or none."""
    data = np.asarray(values.values, dtype=np.float64)
    finite = np.isfinite(data)
    failing = np.zeros_like(finite)
    failing[finite] = fails(data[finite])
    if not failing.any():
        return []
    masked = np.where(failing, data, np.nan)
    position = np.unravel_index(worst(masked), data.shape)
    where = ", ".join(
        f"{dim} {str(values[dim].values[i])!r}" if dim == ARM else f"{dim} {values[dim].values[i]}"
        for dim, i in zip(values.dims, position, strict=True)
    )
    value = format(float(data[position]), spec)
    return [
        f"{label} of the segment-mean contrast {limit} for {int(failing.sum())} of "
        f"{int(finite.sum())} (segment, arm) pair(s) (worst {value}: {where})"
    ]
