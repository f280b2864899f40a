"""A randomized experiment with known truth: visitor covariates, outcomes, and the true metric.

The simulator is how pytyche checks that a fit recovers what it should: it returns the observed
data (exactly what :func:`pytyche.observed_data` would build from real tables) together with
the true expected metric of every visitor under every arm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy.special import ndtr

from ._validate import check_arm_names, check_choice
from .data import OUTCOME, VARIANT, VISITOR
from .results import ARM, result_type
from .segments import DiscoveredSegment

__all__ = ["SCENARIOS", "planted_segments", "simulate_experiment"]

SCENARIOS = ("null", "uniform", "segmented", "email")
DEVICES = np.array(["mobile", "desktop", "tablet"], dtype=object)
DEVICE_SHARES = (0.5, 0.35, 0.15)
# The segments of the "segmented" scenario; within each, one arm is best for every visitor.
PLANTED_RULES = (
    "device == 'mobile'",
    "device == 'desktop' and age > 40",
    "device == 'desktop' and age <= 40",
    "device == 'tablet'",
)
# Size of one unit of lift on each family's scale: probit units for conversion, outcome units
# for the continuous family, log-spend units for the hurdle's value part.
EFFECT = {"binary": 0.4, "continuous": 1.0, "hurdle": 0.4}
VALUE_EFFECT = 0.1
NOISE_SD = 3.0  # continuous outcome noise
LOG_SPEND_SD = 0.6  # hurdle: sd of log spend among converters
# The "email" scenario: a randomized e-mail test shaped like real traffic. Conversion under 1%
# (probability points, not probit units), treatments that lift it by 0.3-0.7 points with the
# best arm changing with the binary covariate `returning`, and heavy-tailed spend among buyers
# (log-normal, sd of spend per visitor about 15x its mean).
EMAIL_RULES = ("returning == True", "returning == False")
EMAIL_BASE_CONVERSION = 0.005
EMAIL_RETURNING_CONVERSION = 0.003
EMAIL_LIFT = {True: (0.007, 0.003), False: (0.003, 0.006)}  # returning: (A, B) in points
EMAIL_LOG_SPEND, EMAIL_LOG_SPEND_SD = 4.2, 0.75


def simulate_experiment(
    n_visitors: int,
    arms: Sequence[str] = ("control", "A", "B"),
    family: str = "hurdle",
    scenario: str = "segmented",
    seed: int = 0,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Simulate a randomized experiment whose true per-visitor effects are known.

    Visitors get four covariates of mixed kinds: ``device`` (text: mobile 50%, desktop 35%,
    tablet 15%), ``age`` (numeric, 18-79, about 2% missing), ``returning`` (boolean, 30%) and
    ``visits`` (integer count with no effect, a distractor). Visitors are split evenly between
    the arms (the first arms get one more when the split is uneven); rows are variant-major.

    Scenarios, on the family's scale (probit for conversion, outcome units otherwise):

    - ``"null"``: no arm differs from control for anyone.
    - ``"uniform"``: the first treatment is better than control for everyone, by the same
      amount; the other treatments equal control.
    - ``"segmented"``: the best arm differs by segment (see :func:`planted_segments`): the
      first treatment wins on mobile (more so for older visitors) and on desktop visitors of
      40 or younger, the second treatment (when there is one) wins on desktop visitors over
      40, and control wins on tablets, where every treatment hurts. Further treatments are
      close contenders that never win.
    - ``"email"`` (hurdle only): a randomized e-mail test shaped like real traffic: control
      converts 0.5% of new and 0.8% of returning visitors, spend among buyers is log-normal
      with a heavy tail (sd of spend per visitor about 15 times its mean), and the first
      treatment lifts conversion by 0.7 points for returning visitors and 0.3 for new ones,
      the second (and any further) by 0.3 and 0.6: the best arm depends on ``returning``
      (see ``planted_segments("email")``).

    Parameters
    ----------
    n_visitors : int
        Number of visitors; at least one per arm.
    arms : sequence of str, default ("control", "A", "B")
        Arm names, control first; at least 2.
    family : {"hurdle", "binary", "continuous"}, default "hurdle"
        Outcome family: a 0/1 conversion, a continuous outcome, or spend that is zero unless
        the visitor converts (log-normal given conversion).
    scenario : {"null", "uniform", "segmented", "email"}, default "segmented"
        The truth to plant.
    seed : int, default 0
        The same seed gives the same experiment.

    Returns
    -------
    observed : xarray.Dataset
        Observed data as :func:`pytyche.observed_data` returns it: coordinates ``variant``,
        ``device``, ``age``, ``returning``, ``visits`` and ``outcome`` along ``visitor``.
    truth : xarray.Dataset
        ``metric`` (visitor, arm): the true expected outcome of each visitor under each arm;
        for the hurdle family also ``conversion`` and ``value`` (metric = conversion ×
        value), for the binary family ``conversion`` (= metric), for the continuous family
        ``expected`` (= metric). Same visitor coordinates as ``observed``; attrs ``family``
        and ``scenario``.

    Raises
    ------
    ValueError
        For an unknown family or scenario, arm names that are not non-empty strings, fewer
        than 2 or duplicate arms, or fewer visitors than arms.

    Examples
    --------
    >>> observed, truth = simulate_experiment(3_000, family="binary", seed=1)
    >>> observed.sizes["visitor"], list(truth["arm"].values)
    (3000, ['control', 'A', 'B'])
    """
    result_type(family)
    check_choice("scenario", scenario, SCENARIOS)
    arms = check_arm_names(arms)
    n_visitors = int(n_visitors)
    if n_visitors < len(arms):
        raise ValueError(f"need at least one visitor per arm: {n_visitors} visitors, {arms}")

    rng = np.random.default_rng(seed)
    n_arms = len(arms)
    device = DEVICES[rng.choice(len(DEVICES), size=n_visitors, p=DEVICE_SHARES)]
    age = rng.integers(18, 80, size=n_visitors).astype(np.float64)
    age[rng.random(n_visitors) < 0.02] = np.nan
    returning = rng.random(n_visitors) < 0.3
    visits = rng.poisson(3.0, size=n_visitors).astype(np.int64)
    counts = np.full(n_arms, n_visitors // n_arms)
    counts[: n_visitors % n_arms] += 1
    served = np.repeat(np.arange(n_arms), counts)
    variant = np.array(arms, dtype=object)[served]

    lift = _lift(scenario, device, age, n_arms)  # (visitor, arm), in effect units
    known_age = np.where(np.isnan(age), 48.0, age)
    rows = np.arange(n_visitors)
    truth_vars: dict[str, np.ndarray] = {}
    if scenario == "email":
        if family != "hurdle":
            raise ValueError(
                f"the 'email' scenario simulates spend: family='hurdle', not {family!r}"
            )
        conversion, value, outcome = _email(returning, served, rng)
        truth_vars |= {"conversion": conversion, "value": value}
        metric = conversion * value
    elif family == "continuous":
        base = 10.0 + 1.5 * returning + 0.05 * (known_age - 48.0) + 0.5 * (device == "desktop")
        metric = base[:, None] + EFFECT[family] * lift
        outcome = metric[rows, served] + NOISE_SD * rng.standard_normal(n_visitors)
        truth_vars["expected"] = metric
    else:
        latent = (
            -0.9
            - (0.1 if family == "hurdle" else 0.0)
            + 0.35 * returning
            + 0.004 * (known_age - 48.0)
            + 0.1 * (device == "desktop")
        )
        conversion = ndtr(latent[:, None] + EFFECT[family] * lift)
        converted = rng.random(n_visitors) < conversion[rows, served]
        truth_vars["conversion"] = conversion
        metric, outcome = conversion, converted.astype(np.float64)
    if family == "hurdle" and scenario != "email":
        log_spend = 3.5 + 0.2 * (device == "desktop") + 0.01 * (known_age - 48.0)
        log_spend = log_spend[:, None] + VALUE_EFFECT * _value_lift(scenario, device, age, n_arms)
        value = np.exp(log_spend + LOG_SPEND_SD**2 / 2)
        spend = np.exp(log_spend[rows, served] + LOG_SPEND_SD * rng.standard_normal(n_visitors))
        outcome = np.where(outcome > 0, spend, 0.0)
        metric = conversion * value
        truth_vars["value"] = value

    coords = {
        VARIANT: (VISITOR, variant),
        "device": (VISITOR, device),
        "age": (VISITOR, age),
        "returning": (VISITOR, returning),
        "visits": (VISITOR, visits),
    }
    observed = xr.Dataset(
        coords={**coords, OUTCOME: (VISITOR, outcome)},
        attrs={"pytyche_outcome": OUTCOME, "pytyche_arms": list(arms)},
    )
    truth = xr.Dataset(
        {
            "metric": ((VISITOR, ARM), metric),
            **{name: ((VISITOR, ARM), values) for name, values in truth_vars.items()},
        },
        coords={**coords, ARM: np.array(arms, dtype=object)},
        attrs={"family": family, "scenario": scenario},
    )
    return observed, truth


def planted_segments(scenario: str = "segmented") -> list[DiscoveredSegment]:
    """The planted segments of a scenario: ids 0-3 of ``"segmented"``, 0-1 of ``"email"``.

    Within each, one arm is the true best for every member (``"segmented"``: control on
    tablets; ``"email"``: A for returning visitors, B for new ones).

    Parameters
    ----------
    scenario : {"segmented", "email"}, default "segmented"
        The scenario.

    Returns
    -------
    list of DiscoveredSegment
    """
    rules = {"segmented": PLANTED_RULES, "email": EMAIL_RULES}
    check_choice("scenario", scenario, rules)
    return [DiscoveredSegment(i, rule) for i, rule in enumerate(rules[scenario])]


def _email(returning: np.ndarray, served: np.ndarray, rng: np.random.Generator):
    """True conversion and value (visitor, arm) and the observed spend of the "email" scenario."""
    n_visitors, n_arms = returning.size, int(served.max()) + 1
    base = EMAIL_BASE_CONVERSION + EMAIL_RETURNING_CONVERSION * returning
    lift = np.zeros((n_visitors, n_arms))
    for k in range(1, n_arms):
        by_group = {key: lifts[min(k, 2) - 1] for key, lifts in EMAIL_LIFT.items()}
        lift[:, k] = np.where(returning, by_group[True], by_group[False])
    conversion = base[:, None] + lift
    value = np.full((n_visitors, n_arms), np.exp(EMAIL_LOG_SPEND + EMAIL_LOG_SPEND_SD**2 / 2))
    rows = np.arange(n_visitors)
    converted = rng.random(n_visitors) < conversion[rows, served]
    spend = np.exp(EMAIL_LOG_SPEND + EMAIL_LOG_SPEND_SD * rng.standard_normal(n_visitors))
    return conversion, value, np.where(converted, spend, 0.0)


def _lift(scenario: str, device: np.ndarray, age: np.ndarray, n_arms: int) -> np.ndarray:
    """True lift of each arm over control, in effect units; column 0 (control) is zero."""
    lift = np.zeros((device.size, n_arms))
    if scenario == "null":
        return lift
    if scenario == "uniform":
        lift[:, 1] = 1.0
        return lift
    mobile, desktop, tablet = (device == d for d in DEVICES)
    with np.errstate(invalid="ignore"):
        older = desktop & (age > 40)  # a desktop visitor of unknown age counts as younger
    younger = desktop & ~older
    # First treatment: wins on mobile (by 0.5-1.5 units, growing with age) and young desktop.
    age_slope = np.clip((np.where(np.isnan(age), 48.0, age) - 48.0) / 30.0, -0.5, 0.5)
    lift[:, 1] = np.select(
        [mobile, older, younger, tablet], [1.0 + age_slope, -0.3, 0.8, -0.8], 0.0
    )
    if n_arms > 2:  # second treatment: wins on desktop visitors over 40
        lift[:, 2] = np.select([mobile, older, younger, tablet], [-0.3, 1.0, -0.5, -0.8], 0.0)
    for k in range(3, n_arms):  # close contenders that never win
        lift[:, k] = np.select([mobile, older, younger, tablet], [0.4, 0.4, 0.2, -0.6], 0.0)
    return lift


def _value_lift(scenario: str, device: np.ndarray, age: np.ndarray, n_arms: int) -> np.ndarray:
    """True effect on log spend given conversion (hurdle only): small, never decisive alone."""
    lift = np.zeros((device.size, n_arms))
    if scenario == "segmented":
        lift[:, 1:] = -0.5
        if n_arms > 2:
            with np.errstate(invalid="ignore"):
                older_desktop = (device == "desktop") & (age > 40)
            lift[:, 2] = np.where(older_desktop, 1.0, -0.5)
    return lift
