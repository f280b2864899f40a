"""Decisions per segment and treatment: ship, continue or stop, with the evidence behind each.

:func:`recommend` reduces the posterior once to segment means per sample (the reduction
:func:`pytyche.thompson_allocation` uses), takes each treatment's lift over control per
sample, and summarizes it: lift and relative lift with intervals, the probabilities and
expected losses the decision rule reads, the value of one more round, Monte Carlo standard
errors, and for hurdle posteriors the conversion and value channels of the lift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtr

from . import _html
from ._mcse import probability_mcse
from ._validate import check_metric_amount, check_probability
from .results import ARM, BCFResult, BinaryBCFResult, HurdleBCFResult
from .setup_check import practical_effect
from .statistics import (
    MCSE_METHOD,
    Segments,
    indicator_ess,
    posterior_and_membership,
    segment_statistics,
    whole_samples,
)

__all__ = [
    "DECISIONS",
    "DecisionThresholds",
    "Recommendation",
    "recommend",
]

#: The three decisions, and the label of a segment without usable draws.
DECISIONS = ("ship", "continue", "stop")
NO_DATA = "n/a"
TREATMENT = "treatment"
EVERYONE = {0: "everyone"}

# Why each decision was taken: the branch of the rule that fired.
REASONS = {
    "win": "expected loss of shipping below tolerance, P(lift > 0) and P(lift > effect) high",
    "harm": "P(lift < -effect) above the harm threshold",
    "futility": "P(lift > effect) below the futility threshold",
    "undecided": "no threshold crossed yet",
    "outranked": "meets the ship rule, but another treatment in the segment ships (lower "
    "expected loss of shipping)",
    NO_DATA: "the segment has no members, or a member's draws are not finite",
}
RELATIVE_LIFT_NOTE = "relative lift undefined: control's segment mean is <= 0 in some samples"
PROBABILITIES = ("prob_positive", "prob_better", "prob_harm")
# What the default minimum practical effect is a share of.
CONTROL_MEAN = "control's posterior mean metric over all visitors"


@dataclass(frozen=True)
class DecisionThresholds:
    """The thresholds of the ship / continue / stop rule (pytyche 0.2.1's, unchanged).

    For each segment and treatment, with ``L`` the per-sample lift of the treatment's segment
    mean over control's and ``effect`` the minimum practical effect:

    1. **ship** when ``E[max(-L, 0)] < expected_loss_tolerance`` and
       ``P(L > 0) > p_positive`` and ``P(L > effect) > p_better``;
    2. else **stop** when ``P(L < -effect) > harm``;
    3. else **stop** when ``P(L > effect) < futility``;
    4. else **continue**.

    Every comparison is strict: a value exactly on a threshold does not cross it. One ship
    per segment: when several treatments of a segment meet rule 1, only the one with the
    smallest expected loss of shipping ships (on a tie, the earlier arm); the others
    **continue**, reason ``"outranked"``, and ``note`` says which treatment ships.

    Parameters
    ----------
    expected_loss_tolerance : float, default 0.01
        Largest expected loss of shipping (metric units) that still allows shipping; > 0.
    p_positive : float, default 0.95
        P(lift > 0) must exceed this to ship; in (0, 1).
    p_better : float, default 0.80
        P(lift > min_practical_effect) must exceed this to ship; in (0, 1).
    futility : float, default 0.05
        Stop when P(lift > min_practical_effect) falls below this; in (0, 1).
    harm : float, default 0.90
        Stop when P(lift < -min_practical_effect) exceeds this; in (0, 1).

    Raises
    ------
    TypeError
        When a threshold is not a real number.
    ValueError
        When a probability is outside (0, 1), or the tolerance is not a finite number > 0;
        the message names the threshold.

    Examples
    --------
    >>> DecisionThresholds(p_positive=0.9).p_positive
    0.9
    >>> DecisionThresholds(harm=1.0)
    Traceback (most recent call last):
    ...
    ValueError: harm must be in (0, 1), got 1.0
    """

    expected_loss_tolerance: float = 0.01
    p_positive: float = 0.95
    p_better: float = 0.80
    futility: float = 0.05
    harm: float = 0.90

    def __post_init__(self):
        tolerance = check_metric_amount(
            "expected_loss_tolerance", self.expected_loss_tolerance, positive=True
        )
        object.__setattr__(self, "expected_loss_tolerance", tolerance)
        for name in ("p_positive", "p_better", "futility", "harm"):
            value = check_probability(name, getattr(self, name), low_open=True, high_open=True)
            object.__setattr__(self, name, value)

    def as_dict(self) -> dict[str, float]:
        """The thresholds by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Recommendation(xr.Dataset):
    """The Dataset :func:`recommend` returns: an ``xarray.Dataset`` that prints as a table.

    ``print(result)`` (``str``) shows one row per (segment, treatment) a product manager can
    read, computing first if the Dataset is lazy; ``repr`` stays xarray's. In Jupyter the same
    table shows above xarray's view; a lazy result shows xarray's view alone (a view never
    computes). Every Dataset method works; ``result.to_dataframe()`` is xarray's (computing a
    lazy result once, not once per variable), indexed by (segment, treatment), one column per
    variable; :meth:`table` is the rounded, readable one that ``print`` shows.
    """

    __slots__ = ()

    def table(self) -> pd.DataFrame:
        """One readable row per (segment, treatment), computed.

        Returns
        -------
        pandas.DataFrame
            Columns ``segment``, ``rule``, ``treatment``, ``decision`` (a stop says why:
            ``stop (harm)`` or ``stop (futility)``; ``continue (outranked)``: another
            treatment of the segment ships), ``lift``
            (mean and interval, metric units), ``relative lift``, the three probabilities,
            both expected losses and ``value of next round``; for hurdle posteriors also the
            ``conversion lift`` and ``value lift`` channels.
        """
        ds = _computed(self)
        # A selection of one segment or treatment (``.sel(segment=1)``) is still a table.
        ds = ds.expand_dims([d for d in ("segment", TREATMENT) if d not in ds.dims])
        percent = f"{100 * ds.attrs.get('ci', 0.8):g}%"
        rows = []
        for segment in range(ds.sizes["segment"]):
            for treatment in range(ds.sizes[TREATMENT]):
                cell = ds.isel(segment=segment, treatment=treatment)
                row = {
                    "segment": int(cell["segment"]),
                    "rule": str(cell["rule"].values) if "rule" in cell.coords else "",
                    "treatment": str(cell[TREATMENT].values),
                    "decision": _decision_text(cell),
                    f"lift [{percent}]": _with_interval(cell, "lift"),
                    "relative lift": _with_interval(cell, "relative_lift", percent=True),
                    "P(>0)": _number(cell["prob_positive"], ".3f"),
                    "P(>effect)": _number(cell["prob_better"], ".3f"),
                    "P(<-effect)": _number(cell["prob_harm"], ".3f"),
                    "loss if ship": _number(cell["expected_loss_ship"]),
                    "loss if keep": _number(cell["expected_loss_keep"]),
                    "value of next round": _number(cell["value_of_next_round"]),
                }
                if "conversion_lift" in ds:
                    row["conversion lift"] = _with_interval(cell, "conversion_lift")
                    row["value lift"] = _with_interval(cell, "value_lift")
                rows.append(row)
        return pd.DataFrame(rows)

    def to_dataframe(self, *args, **kwargs) -> pd.DataFrame:
        """One row per (segment, treatment): ``Dataset.to_dataframe``, computing once first.

        Parameters
        ----------
        *args, **kwargs
            As :meth:`xarray.Dataset.to_dataframe`.

        Returns
        -------
        pandas.DataFrame
            One row per (segment, treatment), one column per variable (and ``rule``).
        """
        return xr.Dataset.to_dataframe(_computed(self), *args, **kwargs)

    def __str__(self) -> str:
        with pd.option_context("display.width", 250, "display.max_columns", None):
            return self._header() + "\n" + self.table().to_string(index=False)

    def _header(self) -> str:
        t = self.attrs
        effect = f"{t.get('min_practical_effect', float('nan')):g}"
        basis = t.get("min_practical_effect_basis", "given")
        if basis != "given":
            effect += f", {basis}"
        return (
            f"Decisions per segment and treatment (vs {t.get('control', 'control')}; "
            f"{t.get('n_samples', '?')} posterior samples; min practical effect {effect})\n"
            f"  ship: loss if ship < {t.get('expected_loss_tolerance', float('nan')):g}, "
            f"P(>0) > {t.get('p_positive', float('nan')):g}, "
            f"P(>effect) > {t.get('p_better', float('nan')):g}; "
            f"stop: P(<-effect) > {t.get('harm', float('nan')):g} or "
            f"P(>effect) < {t.get('futility', float('nan')):g}; else continue"
        )

    def _repr_html_(self) -> str:
        dataset_view = xr.Dataset._repr_html_(self)
        if any(v.chunks is not None for v in self.variables.values()):
            note = "Lazy: print(result) or result.compute() shows the decision table."
            return _html.paragraph(note) + dataset_view
        try:
            table = self.table()
        except KeyError:  # a selection of some variables (``result[["lift"]]``) is no table
            return dataset_view
        return _html.view(
            "Recommendation",
            *(_html.paragraph(line.strip()) for line in self._header().split("\n")),
            _html.table(list(table.columns), table.itertuples(index=False)),
            _html.details("the Dataset", dataset_view),
        )


def _computed(dataset: xr.Dataset) -> xr.Dataset:
    """The Dataset itself when in memory, else computed once (not once per variable)."""
    lazy = any(v.chunks is not None for v in dataset.variables.values())
    return dataset.compute() if lazy else dataset


def _decision_text(cell: xr.Dataset) -> str:
    decision, reason = str(cell["decision"].values), str(cell["reason"].values)
    shown = ("harm", "futility", "outranked")
    return f"{decision} ({reason})" if reason in shown else decision


def _number(value: xr.DataArray, spec: str = ".4g") -> str:
    number = float(value)
    return "n/a" if math.isnan(number) else format(number, spec)


def _with_interval(cell: xr.Dataset, name: str, percent: bool = False) -> str:
    values = [float(cell[n]) for n in (name, f"{name}_lower", f"{name}_upper")]
    if any(math.isnan(v) for v in values):
        return "n/a"
    if percent:
        mean, lower, upper = (f"{100 * v:+.1f}%" for v in values)
    else:
        mean, lower, upper = (f"{v:+.4g}" for v in values)
    return f"{mean} [{lower}, {upper}]"


def recommend(
    posterior: BCFResult,
    segments: Segments | None = None,
    *,
    thresholds: DecisionThresholds | None = None,
    min_practical_effect: float | None = None,
    ci: float = 0.8,
) -> Recommendation:
    """Per segment and treatment: ship, continue or stop, with the evidence for it.

    Each posterior sample (every (chain, draw) pair) gives every segment a segment-mean
    metric per arm, the mean over the segment's members of the per-visitor metric; the
    treatment's **lift** ``L`` in that sample is its segment mean minus control's, in the
    metric's units (conversion probability, outcome, or conversion × value). The result
    summarizes ``L`` over the samples and applies the rule of :class:`DecisionThresholds`.

    The segment means come from the reduction :func:`pytyche.thompson_allocation` uses: one
    streaming pass over the posterior for binary and continuous posteriors; for hurdle
    posteriors two reductions, of ``conversion * value`` and of ``conversion``, in the same
    graph (on dask each chunk of the posterior is read once and feeds both; on numpy the
    ``conversion`` array is streamed twice). Everything after is on (segment, sample,
    treatment) arrays, which are small.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        A posterior carrying observed data.
    segments : Sequence[DiscoveredSegment] or mapping of id to rule, optional
        Segments to decide in (overlapping allowed; only ``id`` and ``rule`` are used).
        Default: one segment, id 0, rule ``everyone``.
    thresholds : DecisionThresholds, optional
        The rule's thresholds; default ``DecisionThresholds()``.
    min_practical_effect : float, optional
        The smallest lift worth having: an absolute amount in the metric's units (>= 0).
        Default: relative, :data:`pytyche.setup_check.RELATIVE_PRACTICAL_EFFECT` (2%) of
        control's posterior mean metric over all the posterior's visitors (the mean over
        samples of control's mean per-visitor metric), so it follows the metric's scale. The
        default is computed from the same pass over the posterior as the segment means; on a
        dask-backed posterior that pass runs at once (pass an explicit amount to keep the
        result lazy). ``attrs`` record the amount and how it was chosen.
    ci : float, default 0.8
        Probability mass of the central intervals, in (0, 1).

    Returns
    -------
    Recommendation
        An ``xarray.Dataset`` with dims (segment, treatment) (every arm but control),
        coordinates ``segment`` (the ids), ``rule`` and ``treatment``; lazy, one dask graph
        computed by one ``.compute()``, on a dask-backed posterior with an explicit
        ``min_practical_effect``. ``print`` shows it as a
        table. Variables (``L`` the per-sample lift, ``effect`` = ``min_practical_effect``):

        - ``members`` (segment): visitors the rule matches;
        - ``decision``: ``"ship"``, ``"continue"`` or ``"stop"`` (``"n/a"`` for a segment
          without members or with non-finite draws); ``reason``: the branch of the rule
          that fired (``"win"``, ``"harm"``, ``"futility"``, ``"undecided"``, ``"n/a"``, or
          ``"outranked"``: the treatment meets the ship rule but another treatment of the
          segment ships, see :class:`DecisionThresholds`);
        - ``control_mean``, ``treatment_mean``: posterior means of the segment means;
        - ``lift``, ``lift_lower``, ``lift_upper``: posterior mean of ``L`` and its central
          ``ci`` interval (linear interpolation between samples);
        - ``relative_lift`` (and ``_lower``, ``_upper``): per sample, treatment mean /
          control mean - 1; NaN, with ``note`` saying why, unless control's segment mean is
          > 0 in every sample;
        - ``prob_positive`` = P(L > 0), ``prob_better`` = P(L > effect), ``prob_harm`` =
          P(L < -effect), each the fraction of samples;
        - ``prob_positive_mcse``, ``prob_better_mcse``, ``prob_harm_mcse``: their Monte Carlo
          standard errors ``sqrt(p (1 - p) / ESS)``, with ESS the number of samples without a
          ``chain`` dim, else the autocorrelation-based effective sample size of the event's
          indicator across chains (Stan's and ArviZ's "basic" ESS, chains not split);
        - ``expected_loss_ship`` = E[max(-L, 0)] (what shipping costs if the treatment is
          worse), ``expected_loss_keep`` = E[max(L, 0)] (what keeping control costs if it is
          better);
        - ``value_of_next_round``: expected value of sample information of one more round of
          the same size (Raiffa–Schlaifer, two actions, a normal approximation of L with mean
          ``mu`` and ``sd`` its sample standard deviation, ddof=1): with ``s = sd / √2`` and
          ``z = |mu| / s``, ``s (φ(z) - z Φ(-z))``; 0 when ``sd`` is 0 (or with a single
          sample);
        - hurdle posteriors only: ``conversion_lift`` (segment-mean conversion probability,
          treatment - control) and ``value_lift`` (segment mean value among converters,
          ``E[conversion * value] / E[conversion]`` over members, treatment - control), each
          with ``_lower`` and ``_upper``: whether a revenue lift comes from more buyers or
          bigger baskets;
        - ``note``: empty, or why a value is NaN, and, where several treatments of a segment
          meet the ship rule, which one ships and why (``"ship: lower expected loss of
          shipping than B"``, ``"continue: A ships in this segment (lower expected loss of
          shipping)"``), joined by ``"; "``.

        Attributes: ``ci``, ``min_practical_effect`` (the amount, in the metric's units),
        ``min_practical_effect_basis`` (``"given"``, or the share and control's mean it is
        of), ``n_samples``, ``family``, ``control``, ``mcse_method`` and every threshold by
        name.

    Raises
    ------
    TypeError
        When ``posterior`` is not one of the three result types, ``thresholds`` is not a
        :class:`DecisionThresholds`, or ``ci`` / ``min_practical_effect`` is not a number.
    ValueError
        When ``posterior.observed`` is None, ``ci`` is outside (0, 1),
        ``min_practical_effect`` is negative or not finite, the default
        ``min_practical_effect`` meets a control mean that is not > 0 (pass an explicit
        amount), or the segments are empty or share an id.

    Examples
    --------
    >>> import pytyche as pt
    >>> from pytyche.decisions import recommend
    >>> result = pt.example_posterior(n_visitors=3_000, n_draws=200, seed=1)
    >>> decisions = recommend(result, {0: "device == 'mobile'", 1: "device == 'tablet'"})
    >>> decisions["decision"].sizes
    Frozen({'segment': 2, 'treatment': 2})
    >>> decisions["decision"].sel(treatment="A").values.tolist()
    ['ship', 'stop']
    """
    ci = check_probability("ci", ci, low_open=True, high_open=True)
    if min_practical_effect is not None:
        min_practical_effect = check_metric_amount("min_practical_effect", min_practical_effect)
    if thresholds is None:
        thresholds = DecisionThresholds()
    elif not isinstance(thresholds, DecisionThresholds):
        raise TypeError(
            f"thresholds must be a pytyche.DecisionThresholds, got {type(thresholds).__name__} "
            "(build one: pt.DecisionThresholds(p_positive=0.9, ...))"
        )
    result, member = posterior_and_membership(posterior, EVERYONE if segments is None else segments)
    means, members, valid, overall = _statistics_and_overall(
        result, member, overall=min_practical_effect is None
    )
    effect, basis = practical_effect(min_practical_effect, overall, CONTROL_MEAN)
    sample_dims = list(result.sample_dims)
    n_samples = result.n_samples

    control = means.isel({ARM: 0}, drop=True)
    treated = treatments(means)
    lift = treated - control
    per_sample = {
        "lift": lift,
        # NaN in every sample where control's mean is not > 0: NaN summaries, no warnings.
        "relative_lift": lift / control.where(control > 0),
    }
    if isinstance(result, HurdleBCFResult):
        conversion, _, conversion_valid = segment_statistics(conversion_view(result), member)
        valid = valid & conversion_valid
        value = means / conversion.where(conversion > 0)  # mean value among converters
        per_sample["conversion_lift"] = treatments(conversion) - conversion.isel(
            {ARM: 0}, drop=True
        )
        per_sample["value_lift"] = treatments(value) - value.isel({ARM: 0}, drop=True)

    variables: dict[str, xr.DataArray] = {"members": members}
    variables["control_mean"] = control.mean(sample_dims, skipna=False)
    variables["treatment_mean"] = treated.mean(sample_dims, skipna=False)
    variables.update(_means_and_intervals(per_sample, sample_dims, ci))

    events = {
        "prob_positive": lift > 0,
        "prob_better": lift > effect,
        "prob_harm": lift < -effect,
    }
    for name, event in events.items():
        variables[name] = (event.sum(sample_dims, dtype=np.int64) / n_samples).where(valid)
    ess = indicator_ess(events, sample_dims)
    for name in events:
        variables[f"{name}_mcse"] = xr.apply_ufunc(
            probability_mcse,
            variables[name],
            ess.sel(event=name, drop=True),
            dask="parallelized",
            output_dtypes=[np.float64],
        )
    variables["expected_loss_ship"] = (-lift).clip(min=0).mean(sample_dims, skipna=False)
    variables["expected_loss_keep"] = lift.clip(min=0).mean(sample_dims, skipna=False)
    if n_samples > 1:
        sigma = lift.std(sample_dims, ddof=1, skipna=False)
    else:
        sigma = xr.zeros_like(variables["lift"])
    variables["value_of_next_round"] = value_of_next_round(variables["lift"], sigma)

    decision, reason, ship_note = _decide(variables, thresholds, valid)
    variables["decision"] = decision
    variables["reason"] = reason
    defined = (control > 0).all(sample_dims) & valid
    note = xr.where(valid, xr.where(defined, "", RELATIVE_LIFT_NOTE), REASONS[NO_DATA])
    variables["note"] = _joined(note.broadcast_like(variables["lift"]).astype(object), ship_note)

    attrs = {
        "ci": ci,
        "min_practical_effect": effect,
        "min_practical_effect_basis": basis,
        "n_samples": n_samples,
        "family": result.family,
        "control": result.control,
        "mcse_method": MCSE_METHOD,
        **thresholds.as_dict(),
    }
    first = ["members", "decision", "reason"]
    order = first + [name for name in variables if name not in first]
    dataset = xr.Dataset({name: _drop_stray(variables[name]) for name in order})
    dataset = dataset.transpose("segment", TREATMENT)
    return Recommendation(dataset.data_vars, coords=dataset.coords, attrs=attrs)


def treatments(means: xr.DataArray) -> xr.DataArray:
    """The treatment arms (every arm but control) of an ``arm`` array, along ``treatment``.

    Parameters
    ----------
    means : xarray.DataArray
        An array with an ``arm`` dim, control first.

    Returns
    -------
    xarray.DataArray
        ``means`` without control, its ``arm`` dim renamed ``treatment``.

    Raises
    ------
    ValueError
        When there is no treatment arm.
    """
    if means.sizes[ARM] < 2:
        raise ValueError(
            f"a decision needs a control and at least one treatment; arms: {means[ARM].values}"
        )
    return means.isel({ARM: slice(1, None)}).rename({ARM: TREATMENT})


def conversion_view(result: HurdleBCFResult) -> BinaryBCFResult:
    """The ``conversion`` part of a hurdle posterior as a binary posterior (same Dataset).

    Parameters
    ----------
    result : HurdleBCFResult
        A hurdle posterior.

    Returns
    -------
    BinaryBCFResult
        A view of ``result``'s ``conversion`` variable and coordinates; nothing is copied or
        computed.
    """
    dataset = result.dataset[["conversion"]].assign_attrs(pytyche_family=BinaryBCFResult.family)
    return BinaryBCFResult(dataset)


def value_of_next_round(mean: xr.DataArray, sd: xr.DataArray) -> xr.DataArray:
    """Expected value of sample information of one more equal round (two actions, normal).

    Raiffa–Schlaifer's linear-loss form: with the lift ``L ~ Normal(mean, sd)`` now, one more
    round of the same size halves the posterior variance, so the preposterior sd of the
    lift's mean is ``s = sd / √2``; with ``z = |mean| / s`` the value is
    ``s (φ(z) - z Φ(-z))`` (``s`` times the unit normal loss integral), and 0 when ``sd`` is 0.

    Parameters
    ----------
    mean, sd : xarray.DataArray
        Posterior mean and standard deviation of the lift, in the metric's units.

    Returns
    -------
    xarray.DataArray
        float64, in the metric's units; NaN where ``mean`` or ``sd`` is. Lazy on dask input.

    Examples
    --------
    >>> import xarray as xr
    >>> round(float(value_of_next_round(xr.DataArray(0.0), xr.DataArray(2 ** 0.5))), 6)
    0.398942
    >>> float(value_of_next_round(xr.DataArray(0.3), xr.DataArray(0.0)))
    0.0
    """
    s = sd / math.sqrt(2.0)
    # Beyond z = 40 both terms are 0 in float64; capping keeps z**2 from overflowing.
    z = np.minimum(abs(mean) / s.where(s > 0), 40.0)
    tail = xr.apply_ufunc(ndtr, -z, dask="parallelized", output_dtypes=[np.float64])
    density = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    value = (s * (density - z * tail)).clip(min=0.0)  # rounding can dip below 0 at large z
    # sd == 0: no uncertainty, nothing to learn. NaN mean or sd stays NaN.
    return xr.where(s == 0, 0.0, value).where(mean.notnull() & sd.notnull())


def _statistics_and_overall(result, member, overall: bool):
    """Segment statistics and, with ``overall``, control's mean over all visitors: one pass.

    The last value is a callable returning control's posterior mean metric over every visitor
    (computing it, on dask), from an extra all-visitors row of the same reduction; it returns
    NaN without ``overall``.
    """
    if not overall:
        return (*segment_statistics(result, member), lambda: math.nan)
    ids = member["segment"].values
    everyone = xr.ones_like(member.isel(segment=[0]), dtype=bool).assign_coords(
        segment=[int(ids.max()) + 1], rule=("segment", ["everyone"])
    )
    means, members, valid = segment_statistics(result, xr.concat([member, everyone], "segment"))
    head = {"segment": slice(0, -1)}
    control = means.isel(segment=-1).isel({ARM: 0})
    return means.isel(head), members.isel(head), valid.isel(head), lambda: float(control.mean())


def _means_and_intervals(per_sample, sample_dims, ci):
    """Posterior mean and central interval of each per-sample array, in one quantile call."""
    names = list(per_sample)
    stacked = xr.concat(
        [per_sample[n] for n in names], dim=pd.Index(names, name="quantity"), coords="minimal"
    )
    # Quantiles need every sample in one block.
    bounds = whole_samples(stacked, sample_dims).quantile(
        [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0], dim=sample_dims, skipna=False
    ).drop_vars("quantile")
    mean = stacked.mean(sample_dims, skipna=False)
    out = {}
    for name in names:
        out[name] = mean.sel(quantity=name, drop=True)
        out[f"{name}_lower"] = bounds.isel(quantile=0).sel(quantity=name, drop=True)
        out[f"{name}_upper"] = bounds.isel(quantile=1).sel(quantity=name, drop=True)
    return out


def _decide(variables, thresholds: DecisionThresholds, valid):
    """The rule of pytyche 0.2.1, branch by branch, then one ship per segment.

    Returns the decision, the reason and the note of the one-ship step, on (segment,
    treatment) arrays.
    """
    meets = (
        (variables["expected_loss_ship"] < thresholds.expected_loss_tolerance)
        & (variables["prob_positive"] > thresholds.p_positive)
        & (variables["prob_better"] > thresholds.p_better)
    )
    usable = valid.broadcast_like(meets)
    outranked, ship_note = xr.apply_ufunc(
        one_ship,
        meets & usable,
        variables["expected_loss_ship"],
        kwargs={"names": [str(t) for t in meets[TREATMENT].values]},
        input_core_dims=[[TREATMENT], [TREATMENT]],
        output_core_dims=[[TREATMENT], [TREATMENT]],
        dask="parallelized",
        output_dtypes=[bool, object],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    ship = meets & ~outranked
    harm = variables["prob_harm"] > thresholds.harm
    futile = variables["prob_better"] < thresholds.futility
    decision = xr.where(
        usable,
        xr.where(ship, "ship", xr.where(outranked | ~(harm | futile), "continue", "stop")),
        NO_DATA,
    )
    branch = xr.where(harm, "harm", xr.where(futile, "futility", "undecided"))
    reason = xr.where(
        usable, xr.where(ship, "win", xr.where(outranked, "outranked", branch)), NO_DATA
    )
    return decision.astype(object), reason.astype(object), ship_note


def one_ship(meets: np.ndarray, loss: np.ndarray, names: list[str]):
    """Of the treatments that meet the ship rule in a segment, only one ships.

    The one with the smallest expected loss of shipping ships (on a tie, the earlier arm);
    the others are outranked and continue.

    Parameters
    ----------
    meets : numpy.ndarray
        bool (..., treatment): the treatment meets the ship rule.
    loss : numpy.ndarray
        (..., treatment) expected loss of shipping.
    names : list of str
        The treatments.

    Returns
    -------
    outranked : numpy.ndarray
        bool (..., treatment): meets the rule, but another treatment of the segment ships.
    note : numpy.ndarray
        object (..., treatment): why, for every treatment of a segment where more than one
        meets the rule; else ``""``.

    Examples
    --------
    >>> outranked, note = one_ship(
    ...     np.array([True, True, False]), np.array([0.002, 0.001, 0.0]), ["A", "B", "C"]
    ... )
    >>> outranked.tolist()
    [True, False, False]
    >>> note[1]
    'ship: lower expected loss of shipping than A'
    """
    meets = np.asarray(meets, dtype=bool)
    best = np.argmin(np.where(meets, loss, np.inf), axis=-1)  # the first of equal losses
    outranked = meets & (np.arange(meets.shape[-1]) != best[..., None])
    note = np.full(meets.shape, "", dtype=object)
    for segment in np.ndindex(meets.shape[:-1]):
        if not outranked[segment].any():
            continue
        winner = names[best[segment]]
        others = [names[k] for k in np.flatnonzero(outranked[segment])]
        note[segment][outranked[segment]] = (
            f"continue: {winner} ships in this segment (lower expected loss of shipping)"
        )
        note[segment][best[segment]] = (
            f"ship: lower expected loss of shipping than {', '.join(others)}"
        )
    return outranked, note


def _joined(first: xr.DataArray, second: xr.DataArray) -> xr.DataArray:
    """Two text arrays joined element by element with "; ", empty parts left out."""
    join = np.frompyfunc(lambda a, b: "; ".join(part for part in (a, b) if part), 2, 1)
    return xr.apply_ufunc(join, first, second, dask="parallelized", output_dtypes=[object])


def _drop_stray(array: xr.DataArray) -> xr.DataArray:
    """Keep only the (segment, treatment) coordinates: the ids, the rules, the treatments."""
    keep = {"segment", "rule", TREATMENT}
    return array.reset_coords([c for c in array.coords if c not in keep], drop=True)
