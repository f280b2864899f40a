"""Pre-flight check of observed experiment data before a fit: is there enough to learn from.

:func:`check_setup` reads the visitor-level observed data (not a posterior) and reports
visitors and conversions per arm, missing values and uninformative covariates, problems that
would make a fit fail or be meaningless, and a rough sample-size check. :func:`pytyche.fit`
runs it and raises on problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtri

from . import _html
from ._validate import check_arm_names, check_choice, check_metric_amount
from .data import OUTCOME, VARIANT
from .results import RESULT_TYPES
from .segments import covariate_kind, covariate_names

__all__ = [
    "RELATIVE_PRACTICAL_EFFECT",
    "SetupReport",
    "check_setup",
    "converters_needed",
    "fixed_value",
    "practical_effect",
]

#: Fewer visitors than this in an arm is a problem: no fit can estimate that arm's effect.
MIN_VISITORS_PER_ARM = 10
#: A hurdle fit's value model needs at least this many converters (outcome > 0) in every arm.
MIN_CONVERTERS = 10
#: Where :meth:`SetupReport.raise_for_problems` says the full report is, by default.
FULL_REPORT = "pytyche.check_setup(observed) shows the full report"
#: A covariate missing for more than this share of visitors is warned about.
MISSING_WARN_SHARE = 0.5
#: A text or integer covariate with a distinct value for each of at least this many visitors
#: looks like an identifier.
MIN_ID_VISITORS = 20
#: The default minimum practical effect (``min_practical_effect=None``) is relative: this share
#: (2%) of the control arm's mean metric. An explicit ``min_practical_effect`` is absolute.
RELATIVE_PRACTICAL_EFFECT = 0.02
#: The sample-size check: two-sided test at this level, with this power.
ALPHA = 0.05
POWER = 0.80


@dataclass
class SetupReport:
    """What :func:`check_setup` found.

    Attributes
    ----------
    ok : bool
        True when there are no problems (warnings allowed).
    problems : list of str
        What makes a fit fail or meaningless; :func:`pytyche.fit` raises on any.
    warnings : list of str
        What deserves a look but does not stop a fit.
    notes : list of str
        What the fit will do differently because of the data, fine as it is (e.g. a
        hurdle outcome whose converters all have the same value: a fixed price).
    family : str or None
        The family checked for, or None (family-specific checks skipped).
    arms : list of str
        Arm names, control first.
    visitors : dict of str to int
        Visitors per arm.
    conversions : dict of str to int, or None
        Visitors with ``outcome > 0`` per arm (binary and hurdle families), else None.
    missing_share : dict of str to float
        Share of visitors with a missing value, per covariate.
    min_practical_effect : float or None
        The lift the sample-size check is for, in the outcome's units; None when the default
        could not be resolved (no check).
    min_practical_effect_basis : str
        How it was chosen: ``"given"``, or ``"2% of control's mean outcome (...)"`` for the
        default (:data:`RELATIVE_PRACTICAL_EFFECT`).
    visitors_needed_per_arm : int or None
        Visitors per arm needed to detect ``min_practical_effect`` with 80% power in a
        two-sided 5% test of treatment against control (normal approximation, the control
        arm's outcome variance); None when it cannot be computed (no usable outcome).
    """

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    family: str | None = None
    arms: list[str] = field(default_factory=list)
    visitors: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, int] | None = None
    missing_share: dict[str, float] = field(default_factory=dict)
    min_practical_effect: float | None = None
    min_practical_effect_basis: str = "given"
    visitors_needed_per_arm: int | None = None

    @property
    def ok(self) -> bool:
        """True when there are no problems."""
        return not self.problems

    def raise_for_problems(self, full_report: str = FULL_REPORT) -> None:
        """Raise ``ValueError`` listing every problem; do nothing when there are none.

        Parameters
        ----------
        full_report : str, optional
            Where the message says the full report is: default
            ``"pytyche.check_setup(observed) shows the full report"``; a caller whose user does
            not hold ``observed`` points at data the user has.

        Raises
        ------
        ValueError
            When :attr:`problems` is not empty.
        """
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise ValueError(
                f"the observed data is not ready for a fit ({len(self.problems)} problem(s); "
                f"{full_report}):\n{listed}"
            )

    def effect_text(self) -> str:
        """The minimum practical effect as reports show it, with its basis unless given."""
        effect = f"{self.min_practical_effect:g}"
        basis = self.min_practical_effect_basis
        return effect if basis == "given" else f"{effect} ({basis})"

    def __str__(self) -> str:
        lines = [
            f"Setup check ({self.family or 'family not given'}): "
            + ("ok" if self.ok else f"{len(self.problems)} problem(s)")
        ]
        for arm in self.arms:
            line = f"  {arm}: {self.visitors.get(arm, 0):,} visitors"
            if self.conversions is not None:
                line += f", {self.conversions.get(arm, 0):,} conversions"
            lines.append(line)
        if self.visitors_needed_per_arm is not None:
            lines.append(
                f"  visitors per arm needed to detect a lift of {self.effect_text()} "
                f"(80% power, two-sided 5%): about {self.visitors_needed_per_arm:,}"
            )
        missing = {k: v for k, v in self.missing_share.items() if v > 0}
        if missing:
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in missing.items())
            lines.append(f"  missing values: {shares}")
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return _report_html(self)


def _report_html(report: SetupReport) -> str:
    """The Jupyter view of a setup check: per-arm counts, sample size, missing values, findings."""
    header = ["arm", "visitors"] + (["conversions"] if report.conversions is not None else [])
    rows = [
        [arm, _html.integer(report.visitors.get(arm, 0))]
        + (
            [_html.integer(report.conversions.get(arm, 0))]
            if report.conversions is not None
            else []
        )
        for arm in report.arms
    ]
    needed = report.visitors_needed_per_arm
    sample_size = (
        ""
        if needed is None
        else _html.paragraph(
            f"Visitors per arm needed to detect a lift of {report.effect_text()} (80% "
            f"power, two-sided 5%): about {needed:,}"
        )
    )
    missing = [
        [name, _html.Cell(_html.percent(share), share)]
        for name, share in report.missing_share.items()
        if share > 0
    ]
    status = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    return _html.view(
        f"SetupReport ({report.family or 'family not given'}): {status}",
        _html.table(header, rows) if rows else "",
        sample_size,
        _html.table(["covariate", "missing"], missing) if missing else "",
        _html.paragraph("Problems (a fit refuses this data):") if report.problems else "",
        _html.bullets(report.problems),
        _html.paragraph("Warnings:") if report.warnings else "",
        _html.bullets(report.warnings),
        _html.paragraph("Notes:") if report.notes else "",
        _html.bullets(report.notes),
    )


def check_setup(
    observed: xr.Dataset,
    *,
    arms: Sequence[str] | None = None,
    min_practical_effect: float | None = None,
    family: str | None = None,
) -> SetupReport:
    """Check observed experiment data before fitting, and report what is wrong or thin.

    Problems (the fit would fail or mean nothing): no ``variant`` labels or no visitors;
    fewer than 2 arms; ``variant`` labels that are not arms; rows that are not variant-major;
    an arm with fewer than 10 visitors (:data:`MIN_VISITORS_PER_ARM`); a missing, non-numeric
    or non-finite outcome; a covariate of an unsupported kind; and for a family: binary — an
    outcome other than 0/1, or the same outcome for everyone; continuous — a constant
    outcome; hurdle — a negative outcome, every outcome positive, or an arm with fewer than
    10 converters (:data:`MIN_CONVERTERS`).

    Notes (fine, but the fit adapts): hurdle — every converter has the same outcome (a fixed
    price), so the value model is that constant (:func:`fixed_value`).

    Warnings: a binary arm with no conversions or only conversions; a covariate missing for
    more than half the visitors, or for all; a covariate with a single value (nothing to split
    on); a text or integer covariate with a different value for every visitor (an identifier:
    drop it); no covariates at all; an arm with fewer visitors than the sample-size check asks
    for.

    The sample-size check is the usual normal approximation for a difference of two means:
    ``n = 2 var (z(1 - alpha/2) + z(power))² / δ²`` visitors per arm, with ``δ`` =
    ``min_practical_effect`` (by default 2% of the control arm's mean outcome), alpha = 5%,
    power 80% and ``var`` the control arm's outcome variance (``p (1 - p)`` for a binary
    outcome; all visitors' variance when control's is 0).
    It is a floor for the whole experiment: each segment you want a decision in needs about
    that many visitors per arm of its own.

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data, as from :func:`pytyche.observed_data` or a result's ``.observed``.
    arms : sequence of str, optional
        Arm names, control first. Default: the ``pytyche_arms`` attribute when present, else
        the ``variant`` labels in row order.
    min_practical_effect : float, optional
        The smallest lift worth detecting, an absolute amount in the outcome's units (>= 0; 0
        skips the sample-size check). Default: :data:`RELATIVE_PRACTICAL_EFFECT` (2%) of the
        control arm's observed mean outcome, as :func:`pytyche.recommend` resolves it; when
        that mean is not > 0 the sample-size check is skipped with a warning asking for an
        explicit amount. The report records the amount and how it was chosen.
    family : {"binary", "continuous", "hurdle"}, optional
        The family you will fit; None skips the family's checks (conversions are then not
        counted).

    Returns
    -------
    SetupReport
        ``ok``, ``problems``, ``warnings``, and the counts behind them; ``print`` shows it.

    Raises
    ------
    TypeError
        When ``observed`` is not an xarray Dataset or ``min_practical_effect`` is not a
        number.
    ValueError
        For an unknown family, a negative or non-finite ``min_practical_effect``, or
        ``arms`` that are not at least 2 distinct non-empty names.

    Examples
    --------
    >>> import pytyche as pt
    >>> from pytyche.setup_check import check_setup
    >>> observed, _ = pt.simulate_experiment(600, family="binary", seed=0)
    >>> report = check_setup(observed, family="binary")
    >>> report.ok, report.visitors
    (True, {'control': 200, 'A': 200, 'B': 200})
    >>> report.visitors_needed_per_arm > 200
    True
    """
    if not isinstance(observed, xr.Dataset):
        raise TypeError(
            f"observed must be an xarray.Dataset (see pytyche.observed_data), got "
            f"{type(observed).__name__}"
        )
    effect = None
    if min_practical_effect is not None:
        effect = check_metric_amount("min_practical_effect", min_practical_effect)
    if arms is not None:
        arms = check_arm_names(arms)
    if family is not None:
        family = check_choice("family", family, RESULT_TYPES)
    report = SetupReport(family=family, min_practical_effect=effect)

    names = covariate_names(observed)
    if VARIANT not in names:
        report.problems.append(
            "no 'variant' coordinate along 'visitor' naming the arm that served each visitor; "
            "build the data with pytyche.observed_data"
        )
        return report
    labels = np.asarray(observed[VARIANT].values).astype(str)
    if labels.size == 0:
        report.problems.append("the observed data has no visitors")
        return report
    codes = _check_arms(report, labels, arms, observed.attrs.get("pytyche_arms"))
    outcome = _check_outcome(report, observed, names, codes)
    _check_covariates(report, observed, [n for n in names if n not in (VARIANT, OUTCOME)])
    if outcome is not None and codes is not None:
        _check_sample_size(report, outcome, codes)
    return report


def fixed_value(outcome: np.ndarray) -> float | None:
    """The one value every positive outcome has (a fixed price), or None.

    Parameters
    ----------
    outcome : numpy.ndarray
        The outcome of every visitor.

    Returns
    -------
    float or None
        The converters' common outcome when there is at least one converter (outcome > 0)
        and all of them have exactly that outcome; None otherwise.

    Examples
    --------
    >>> fixed_value(np.array([0.0, 9.99, 0.0, 9.99]))
    9.99
    >>> fixed_value(np.array([0.0, 9.99, 5.0])) is None
    True
    """
    positive = outcome[outcome > 0]
    if positive.size == 0 or positive.min() != positive.max():
        return None
    return float(positive[0])


def converters_needed(family: str | None) -> int:
    """Converters (outcome > 0) a fit of ``family`` needs in every arm.

    The one home of this rule: :func:`check_setup` reports an arm below it as a problem, and a
    sequential experiment stays in burn-in until every active arm reaches it.

    Parameters
    ----------
    family : str or None
        The family to fit.

    Returns
    -------
    int
        :data:`MIN_CONVERTERS` for ``"hurdle"`` (its value model trains on each arm's
        converters); 0 otherwise (a binary fit needs both outcomes overall, not per arm).

    Examples
    --------
    >>> converters_needed("hurdle"), converters_needed("binary")
    (10, 0)
    """
    return MIN_CONVERTERS if family == "hurdle" else 0


def practical_effect(
    min_practical_effect: float | None, control_mean: Callable[[], float], control: str
) -> tuple[float, str]:
    """The minimum practical effect in the metric's units, and how it was chosen.

    The one home of the default: :func:`pytyche.recommend` and :func:`check_setup` both
    resolve ``min_practical_effect`` here.

    Parameters
    ----------
    min_practical_effect : float or None
        An absolute amount in the metric's units (>= 0), or None for
        :data:`RELATIVE_PRACTICAL_EFFECT` (2%) of control's mean metric.
    control_mean : callable
        Returns control's mean metric; called only for the default.
    control : str
        What ``control_mean`` is, for the basis text and the error.

    Returns
    -------
    effect : float
        The amount, in the metric's units.
    basis : str
        How it was chosen: ``"given"``, or the share and the mean it is of.

    Raises
    ------
    TypeError, ValueError
        For an explicit amount that is not a finite number >= 0; for the default when control's
        mean is not a finite number > 0 (a relative effect of it means nothing).

    Examples
    --------
    >>> practical_effect(None, lambda: 40.0, "control's mean outcome")
    (0.8, "2% of control's mean outcome (40)")
    >>> practical_effect(0.5, lambda: -1.0, "control's mean outcome")
    (0.5, 'given')
    """
    if min_practical_effect is not None:
        return check_metric_amount("min_practical_effect", min_practical_effect), "given"
    mean = float(control_mean())
    if not (math.isfinite(mean) and mean > 0):
        raise ValueError(
            f"the default min_practical_effect is {RELATIVE_PRACTICAL_EFFECT:.0%} of {control}, "
            f"which is {mean:g}: a relative effect needs a mean > 0; pass "
            "min_practical_effect=<the smallest lift worth having, in the metric's units>"
        )
    effect = RELATIVE_PRACTICAL_EFFECT * mean
    return effect, f"{RELATIVE_PRACTICAL_EFFECT:.0%} of {control} ({mean:.4g})"


def _check_arms(report, labels, arms, attrs_arms):
    """Visitors per arm, unknown labels, row order; the arm code of every visitor (or None)."""
    _, first = np.unique(labels, return_index=True)
    seen = [str(labels[i]) for i in np.sort(first)]
    given = arms if arms is not None else attrs_arms
    report.arms = [str(a) for a in given] if given is not None else seen
    if len(report.arms) < 2:
        report.problems.append(
            f"an experiment needs at least 2 arms (control first); found {report.arms}"
        )
    unknown = sorted(set(seen) - set(report.arms))
    if unknown:
        report.problems.append(
            f"'variant' holds labels that are not arms: {unknown[:10]}; arms are {report.arms} "
            "(pass arms=... or fix the labels)"
        )
    counts = pd.Series(labels).value_counts()
    report.visitors = {arm: int(counts.get(arm, 0)) for arm in report.arms}
    for arm, n in report.visitors.items():
        if n < MIN_VISITORS_PER_ARM:
            report.problems.append(
                f"arm {arm!r} has {n} visitor(s); a fit needs at least {MIN_VISITORS_PER_ARM} "
                "per arm"
            )
    if unknown:
        return None
    codes = pd.Categorical(labels, categories=report.arms).codes.astype(np.int64)
    backwards = np.flatnonzero(np.diff(codes) < 0)
    if backwards.size:
        i = int(backwards[0]) + 1
        report.problems.append(
            f"rows are not variant-major (all of {report.arms[0]!r}'s visitors, then the next "
            f"arm's, ...): visitor row {i} is served {str(labels[i])!r} after "
            f"{str(labels[i - 1])!r}"
        )
    return codes


def _check_outcome(report, observed, names, codes):
    """The outcome as float64 when usable; outcome problems and conversion counts."""
    if OUTCOME not in names:
        report.problems.append(
            f"no {OUTCOME!r} along 'visitor': nothing to fit (build the data with "
            "pytyche.observed_data(frames, outcome=...))"
        )
        return None
    values = np.asarray(observed[OUTCOME].values)
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        report.problems.append(f"the outcome has dtype {values.dtype}; expected numbers")
        return None
    outcome = values.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(outcome)))
    if bad:
        report.problems.append(f"the outcome is NaN or infinite for {bad} visitor(s)")
        return None
    family = report.family
    constant = outcome.size > 0 and np.ptp(outcome) == 0
    if family == "binary":
        odd = outcome[~np.isin(outcome, (0.0, 1.0))]
        if odd.size:
            report.problems.append(
                f"a binary fit needs a 0/1 outcome; found {odd[0]:g} (fit the continuous or "
                "hurdle family instead)"
            )
        elif constant:
            report.problems.append(
                f"the outcome is {outcome[0]:g} for every visitor: a binary fit needs both "
                "0s and 1s"
            )
    elif family == "continuous" and constant:
        report.problems.append(f"the outcome is {outcome[0]:g} for every visitor: nothing to fit")
    elif family == "hurdle":
        if outcome.min() < 0:
            report.problems.append(
                f"a hurdle fit needs a non-negative outcome; found {outcome.min():g}"
            )
        if (outcome > 0).all():
            report.problems.append(
                "every visitor has a positive outcome: there is no hurdle to model; fit the "
                "continuous family"
            )
        fixed = fixed_value(outcome)
        if fixed is not None:
            report.notes.append(
                f"every converter's outcome is {fixed:g} (a fixed price): the hurdle fit's "
                f"value is that constant, so its metric is conversion × {fixed:g} and only "
                "conversion is modelled"
            )
    if family in ("binary", "hurdle") and codes is not None:
        converted = np.bincount(codes, weights=outcome > 0, minlength=len(report.arms))
        report.conversions = {arm: int(converted[k]) for k, arm in enumerate(report.arms)}
        needed = converters_needed(family)
        for arm, n in report.conversions.items():
            if n < needed:
                report.problems.append(
                    f"arm {arm!r} has {n} converter(s) (outcome > 0); a hurdle fit's value model "
                    f"needs at least {needed} in every arm"
                )
            elif family == "binary" and report.visitors[arm] and n in (0, report.visitors[arm]):
                report.warnings.append(
                    f"arm {arm!r}: {n} of {report.visitors[arm]} visitors converted; its "
                    "conversion rate is at an edge the probit fit can only extrapolate to"
                )
    return outcome


def _check_covariates(report, observed, names):
    """Missing shares, unsupported kinds, constant and identifier-like covariates."""
    if not names:
        report.warnings.append(
            "no covariates: the fit can only learn each arm's average effect, and segments "
            "have nothing to split on"
        )
    for name in names:
        values = np.asarray(observed[name].values)
        try:
            kind = covariate_kind(values, name)
        except TypeError as error:
            report.problems.append(str(error))
            continue
        missing = np.asarray(pd.isna(values), dtype=bool)
        share = float(missing.mean()) if missing.size else 0.0
        report.missing_share[name] = share
        present = values[~missing]
        if present.size == 0:
            report.warnings.append(f"covariate {name!r} is missing for every visitor: drop it")
            continue
        if share > MISSING_WARN_SHARE:
            report.warnings.append(
                f"covariate {name!r} is missing for {100 * share:.1f}% of visitors; rules on it "
                "match none of them"
            )
        n_distinct = pd.unique(present).size
        if n_distinct == 1:
            value = present[0].item() if isinstance(present[0], np.generic) else present[0]
            report.warnings.append(
                f"covariate {name!r} has the single value {value!r}: nothing to split on; drop it"
            )
        elif n_distinct == present.size >= MIN_ID_VISITORS and (
            kind == "text" or _integer_valued(present)
        ):
            report.warnings.append(
                f"covariate {name!r} has a different value for each of its {present.size} "
                "visitors: it looks like an identifier, which no segment rule generalizes "
                "from; drop it (or pass it as visitor_id)"
            )


def _integer_valued(values: np.ndarray) -> bool:
    """Integer dtype, or floats that are all whole numbers (ids stored as float)."""
    if np.issubdtype(values.dtype, np.integer):
        return True
    if np.issubdtype(values.dtype, np.floating):
        return bool(np.all(np.mod(values, 1) == 0))
    return False


def _resolve_effect(report, control):
    """Set the report's minimum practical effect and its basis; False (warned) when it has none."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(np.mean(control)) if control.size else math.nan
    try:
        effect, basis = practical_effect(
            report.min_practical_effect, lambda: mean, "control's mean outcome"
        )
    except ValueError as error:
        report.warnings.append(f"no sample-size check: {error}")
        return False
    report.min_practical_effect, report.min_practical_effect_basis = effect, basis
    return True


def _check_sample_size(report, outcome, codes):
    """Visitors per arm needed for the minimum practical effect, against those present."""
    if len(report.arms) < 2:
        return
    control = outcome[codes == 0]
    if not _resolve_effect(report, control):
        return
    effect = report.min_practical_effect
    if effect == 0:
        return
    # ddof=0: for a 0/1 outcome this is exactly p (1 - p). Outcomes near the float range
    # overflow the variance: that is a problem of the data, reported, not a warning raised.
    with np.errstate(over="ignore", invalid="ignore"):
        variance = float(np.var(control)) if control.size else 0.0
        if variance == 0:
            variance = float(np.var(outcome))
    if not math.isfinite(variance):
        report.problems.append(
            "the outcome's variance overflows a float64 (values near "
            f"{float(np.max(np.abs(outcome))):.3g}): rescale the outcome (e.g. to thousands)"
        )
        return
    if variance == 0:
        return
    z = float(ndtri(1 - ALPHA / 2) + ndtri(POWER))
    needed = math.ceil(2.0 * variance * z**2 / effect**2)
    report.visitors_needed_per_arm = needed
    short = {arm: n for arm, n in report.visitors.items() if n < needed}
    if short:
        listed = ", ".join(f"{arm!r} {n:,}" for arm, n in short.items())
        report.warnings.append(
            f"detecting a lift of {report.effect_text()} (80% power, two-sided 5%) needs about "
            f"{needed:,} "
            f"visitors per arm; {listed} have fewer: expect 'continue' decisions, or choose a "
            "larger min_practical_effect"
        )
