"""Off-policy evaluation: what another plan would have earned on the visitors already logged.

The log is read in blocks of :data:`BLOCK` visitors (a dask-backed log, such as one opened
with ``xr.open_zarr``, is computed one block at a time), and every estimate is a combination
of per-block sums: memory stays bounded by the block, whatever the number of visitors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm, poisson

from ..results import OUTCOME_MODEL, BCFResult
from ..segments import membership
from .plan import NO_SEGMENT, RoundPlan

__all__ = ["ESTIMATORS", "evaluate_policy", "policy_probabilities"]

ESTIMATORS = ("ipw", "snips", "dr")
# Visitor coordinates of logged data that are not covariates.
NOT_COVARIATES = ("variant", "outcome", "propensity", "cell", "round", "segment")
# Visitors read at a time; a multiple of BOOTSTRAP_ROWS so that the resamples do not depend
# on the log's chunks.
BLOCK = 1 << 20
# Visitors per batch of Poisson resample counts (a BOOTSTRAP_ROWS x n_bootstrap matrix).
BOOTSTRAP_ROWS = 2048
# Poisson(1) resample counts by inverse CDF from 16 random bits (counts past the 1 - 2⁻¹⁶
# quantile, 8 and up, are cut: P = 1e-5): a table lookup is far cheaper than rng.poisson.
POISSON_TABLE = np.searchsorted(
    poisson.cdf(np.arange(32), 1.0), (np.arange(1 << 16) + 0.5) / (1 << 16)
).astype(np.float64)
# Each tail of a percentile interval must rest on at least this many resamples.
MIN_TAIL_RESAMPLES = 5
# Tolerance of weights and propensities summing to 1 (as RoundPlan checks its weights).
SUM_TOLERANCE = 1e-9
SHOWN = 5


def _covariate_frame(logged: xr.Dataset) -> pd.DataFrame:
    return pd.DataFrame(
        {
            str(n): np.asarray(v.values)
            for n, v in logged.variables.items()
            if v.dims == ("visitor",) and n != "visitor" and n not in NOT_COVARIATES
        },
        index=pd.RangeIndex(logged.sizes["visitor"]),
    )


def _weight_row(weights, arms: list[str], what: str) -> np.ndarray:
    """``{arm: weight}`` as a row over `arms`, checked: arm names, non-negative, sum 1."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"{what} must be a mapping {{arm: weight}}, got {type(weights).__name__}")
    not_names = [k for k in weights if not isinstance(k, str)]
    if not_names:
        raise TypeError(
            f"{what} is keyed by {not_names[:SHOWN]!r} ({type(not_names[0]).__name__}); arm "
            f"weights are keyed by arm name, one of {arms}"
        )
    unknown = sorted(set(weights) - set(arms))
    if unknown:
        raise ValueError(f"{what} names unknown arm(s) {unknown}; arms are {arms}")
    bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, Real)}
    if bad:
        raise TypeError(f"{what} has weights that are not numbers: {bad}")
    values = np.array([float(weights.get(a, 0.0)) for a in arms])
    total = values.sum()
    if not np.isfinite(values).all() or (values < 0).any() or abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(
            f"{what} must be non-negative weights summing to 1 (within {SUM_TOLERANCE:g}), "
            f"got {dict(weights)} (sum {total!r})"
        )
    return values


def _allocation_rows(allocation, ids: list[int], arms: list[str]) -> np.ndarray:
    """The weights of each segment id in `ids`, checked against the allocation's keys."""
    if not isinstance(allocation, Mapping):
        raise TypeError(
            f"the allocation must be a mapping {{segment id: {{arm: weight}}}}, got "
            f"{type(allocation).__name__}"
        )
    not_ids = [k for k in allocation if isinstance(k, bool) or not isinstance(k, Integral)]
    if not_ids:
        raise TypeError(
            f"the allocation is keyed by {not_ids[:SHOWN]!r} ({type(not_ids[0]).__name__}); "
            f"segment ids are integers, such as {ids[:SHOWN]}: key it by int (0, not '0')"
        )
    keys = {int(k) for k in allocation}
    missing = [s for s in ids if s not in keys and s != NO_SEGMENT]
    extra = sorted(keys - set(ids) - {NO_SEGMENT})
    if missing or extra:
        raise ValueError(
            f"the allocation's segment ids {sorted(keys)} do not match the segments' {ids}: "
            f"missing {missing}, not a segment {extra}"
        )
    by_id = {int(k): v for k, v in allocation.items()}
    return np.array(
        [
            _weight_row(by_id[s], arms, f"the allocation of segment {s}")
            if s in by_id
            else np.zeros(len(arms))  # id -1 unused: checked by the caller
            for s in ids
        ]
    ).reshape(len(ids), len(arms))


@dataclass
class _PolicyTable:
    """A policy as distinct rows: visitor ``i`` gets ``rows[group[i]]``."""

    rows: np.ndarray  # (group, arm)
    group: np.ndarray  # (visitor,) int64
    labels: list[str | None]  # per group: "segment 3", or None for a policy without segments


def _policy_table(policy, logged: xr.Dataset, arms: list[str]) -> _PolicyTable:
    n = logged.sizes["visitor"]
    if isinstance(policy, RoundPlan):
        full = policy.effective_probability.reindex(arm=arms, fill_value=0.0)
        ids = [int(s) for s in full["segment"].values]
        segment = policy.segment_of(_covariate_frame(logged))
        group = pd.Index(ids).get_indexer(segment).astype(np.int64)
        assert (group >= 0).all()  # segment_of returns the plan's ids or -1, all in the table
        return _PolicyTable(full.values, group, [f"segment {s}" for s in ids])
    if isinstance(policy, str):
        row = _weight_row({policy: 1.0}, arms, f"the fixed arm {policy!r}")
        return _PolicyTable(row[None, :], np.zeros(n, np.int64), [None])
    if isinstance(policy, Mapping):
        row = _weight_row(policy, arms, "the policy")
        return _PolicyTable(row[None, :], np.zeros(n, np.int64), [None])
    if isinstance(policy, tuple) and len(policy) == 2:
        allocation, segments = policy
        member = membership(segments, logged)
        ids = [int(s) for s in member["segment"].values]
        hit = np.asarray(member.values)
        matched = hit.any(axis=0)
        group = np.where(matched, np.argmax(hit, axis=0), len(ids)).astype(np.int64)
        rows = _allocation_rows(allocation, [*ids, NO_SEGMENT], arms)
        if not matched.all() and NO_SEGMENT not in {int(k) for k in allocation}:
            raise ValueError(
                f"{int((~matched).sum())} logged visitor(s) match no segment; give the "
                "allocation weights for segment -1 (visitors in no segment)"
            )
        return _PolicyTable(rows, group, [f"segment {s}" for s in [*ids, NO_SEGMENT]])
    raise ValueError(
        "policy must be a RoundPlan, an arm name, {arm: weight}, or (allocation, segments); "
        f"got {type(policy).__name__}"
    )


def policy_probabilities(policy, logged: xr.Dataset, arms: Sequence[str]) -> np.ndarray:
    """The probability that `policy` serves each logged visitor each arm.

    Parameters
    ----------
    policy : RoundPlan, str, mapping of arm to weight, or (allocation, segments)
        A plan (its effective probabilities over all cells, visitors routed by its segment
        rules); a fixed arm; one split for everyone ``{arm: weight}`` (keyed by arm name);
        or a pair of a ``{segment id: {arm: weight}}`` allocation (keyed by int segment
        id) and its segments (anything :func:`pytyche.membership` accepts): a visitor gets
        the weights of the first segment whose rule matches, else those of id -1 (required
        when some visitor matches none).
    logged : xarray.Dataset
        Logged visitors with their covariates along ``visitor``.
    arms : sequence of str
        Arm order of the columns, control first.

    Returns
    -------
    numpy.ndarray
        (visitor, arm) rows summing to 1.

    Raises
    ------
    TypeError
        For arm weights keyed by something other than arm names (``{1: 0.5}``), or an
        allocation keyed by something other than int segment ids (``{"0": ...}``).
    ValueError
        For an unknown arm, weights that do not sum to 1 within 1e-9, allocation ids that
        are not the segments' ids, visitors in no segment without weights for id -1, or a
        policy of another kind.

    Examples
    --------
    >>> import xarray as xr
    >>> logged = xr.Dataset(coords={"device": ("visitor", ["mobile", "desktop"])})
    >>> policy = ({0: {"A": 1.0}, -1: {"control": 0.5, "A": 0.5}}, {0: "device == 'mobile'"})
    >>> policy_probabilities(policy, logged, ["control", "A"])
    array([[0. , 1. ],
           [0.5, 0.5]])
    """
    table = _policy_table(policy, logged, list(arms))
    return table.rows[table.group]


def _outcome_mean(posterior, arms: Sequence[str]) -> xr.DataArray:
    """Posterior-mean metric (visitor, arm), possibly dask-backed."""
    if isinstance(posterior, xr.DataArray):
        mean = posterior
    elif isinstance(posterior, BCFResult) and OUTCOME_MODEL in posterior.dataset.coords:
        # A doubly robust posterior's served arm holds the visitor's own outcome: use the
        # forests' prediction before the correction, or the estimator would see Y twice.
        mean = posterior.dataset[OUTCOME_MODEL]
    elif isinstance(posterior, BCFResult):
        metric = posterior.metric()
        mean = metric.mean([d for d in metric.dims if d not in ("visitor", "arm")]).compute()
    else:
        raise TypeError(
            "posterior must be a BCF result (pytyche.fit output) or a (visitor, arm) DataArray "
            f"of expected outcomes, got {type(posterior).__name__}"
        )
    if set(mean.dims) != {"visitor", "arm"}:
        raise ValueError(f"the outcome model must have dims (visitor, arm), got {mean.dims}")
    missing = [a for a in arms if a not in set(map(str, mean["arm"].values))]
    if missing:
        raise ValueError(f"the outcome model has no arm(s) {missing}")
    return mean.sel(arm=list(arms)).transpose("visitor", "arm")


def _repeated(ids: pd.Index) -> str:
    counts = ids.value_counts()
    repeated = counts[counts > 1]
    shown = ", ".join(f"{k!r} x{v}" for k, v in repeated.head(SHOWN).items())
    return f"{len(repeated)} id(s) repeat ({shown})"


def _outcome_model(
    posterior, logged: xr.Dataset, arms: Sequence[str]
) -> Callable[[int, int], np.ndarray]:
    """``model(start, stop)``: the posterior-mean metric (visitor, arm) of those log rows."""
    mean = _outcome_mean(posterior, arms)

    def rows(position) -> np.ndarray:
        return np.asarray(mean.isel(visitor=position).values, dtype=np.float64)

    if "visitor" in logged.indexes and "visitor" in mean.indexes:
        want = pd.Index(logged.indexes["visitor"].astype(str))
        have = pd.Index(mean.indexes["visitor"].astype(str))
        if len(want) == len(have) and (want == have).all():
            return lambda start, stop: rows(slice(start, stop))  # the same rows, in order
        for ids, whose in ((have, "the outcome model's"), (want, "the log's")):
            if not ids.is_unique:
                raise ValueError(
                    f"visitor ids repeat in {whose} visitors: {_repeated(ids)}, and the log and "
                    "the outcome model do not list the same ids in the same order; match by "
                    "row (drop the visitor index of both: the same number of rows, in the same "
                    "order) or make the ids unique (such as f'{id}@{round}' per visit)"
                )
        position = have.get_indexer(want)
        if (position < 0).any():
            raise ValueError(
                f"the outcome model lacks {int((position < 0).sum())} logged visitor(s), e.g. "
                f"{want[np.flatnonzero(position < 0)[0]]!r}"
            )
        return lambda start, stop: rows(position[start:stop])
    if mean.sizes["visitor"] != logged.sizes["visitor"]:
        raise ValueError(
            f"the outcome model has {mean.sizes['visitor']} visitors, the log "
            f"{logged.sizes['visitor']}; without visitor ids on both they must match row by row"
        )
    return lambda start, stop: rows(slice(start, stop))


@dataclass
class _Sums:
    """Per-block sums of one estimator, combined over the blocks of the log.

    Every estimator is a ratio ``Σ u_i / Σ v_i`` (``u = w y``, ``v = w`` for SNIPS; ``u`` the
    score, ``v = 1`` otherwise). Power sums of ``d = u - c v`` (``c`` a pilot estimate from
    the first block, so that the centring at the end cancels little) give the influence
    values' second and third moments exactly, whatever the blocks.
    """

    n_bootstrap: int
    seed: int
    pilot: float | None = None
    n: int = 0
    powers: np.ndarray = field(default_factory=lambda: np.zeros(9))
    resampled: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def add(self, start: int, u: np.ndarray, v: np.ndarray) -> None:
        if self.pilot is None:
            self.pilot = float(u.sum() / v.sum()) if v.sum() > 0 else 0.0
        d = u - self.pilot * v
        d2, v2 = d * d, v * v
        self.n += u.size
        self.powers += [
            v.sum(),
            d.sum(),
            d2.sum(),
            (d * v).sum(),
            v2.sum(),
            (d2 * d).sum(),
            (d2 * v).sum(),
            (d * v2).sum(),
            (v2 * v).sum(),
        ]
        if self.n_bootstrap:
            self._resample(start, np.column_stack([u, v]))

    def _resample(self, start: int, uv: np.ndarray) -> None:
        """Poisson(1) counts per resample and visitor, applied with a matrix product."""
        if not self.resampled.size:
            self.resampled = np.zeros((self.n_bootstrap, 2))
        for offset in range(0, len(uv), BOOTSTRAP_ROWS):
            # Seeded by the batch's place in the log, not by the log's chunks.
            batch = (start + offset) // BOOTSTRAP_ROWS
            rng = np.random.default_rng([self.seed, batch])
            rows = uv[offset : offset + BOOTSTRAP_ROWS]
            bits = rng.integers(0, 1 << 16, (self.n_bootstrap, len(rows)), dtype=np.uint16)
            counts = POISSON_TABLE[bits]
            self.resampled += counts @ rows

    def moments(self) -> tuple[float, float, float]:
        """(estimate, standard error, skewness of the influence values)."""
        sum_v, sum_d, d2, dv, v2, d3, d2v, dv2, v3 = self.powers
        assert self.pilot is not None  # add() was called
        shift = sum_d / sum_v
        mean_v = sum_v / self.n
        squares = (d2 - 2 * shift * dv + shift**2 * v2) / mean_v**2
        cubes = (d3 - 3 * shift * d2v + 3 * shift**2 * dv2 - shift**3 * v3) / mean_v**3
        squares = max(squares, 0.0)  # rounding
        se = math.sqrt(squares / (self.n - 1) / self.n)
        skew = (cubes / self.n) / (squares / self.n) ** 1.5 if squares > 0 else 0.0
        return self.pilot + shift, se, skew

    def bootstrap(self) -> np.ndarray:
        """The resamples' estimates; refused when a resample has nothing to divide by."""
        numerator, denominator = self.resampled.T
        empty = int((denominator == 0).sum())
        if empty:
            raise ValueError(
                f"{empty} of {self.n_bootstrap} bootstrap resamples hold no visitor the policy "
                "would have served as logged (a zero sum of importance weights): the estimate "
                "rests on a handful of visitors; more data is needed before this policy can be "
                "evaluated"
            )
        return numerator / denominator


def _skew_corrected_interval(
    estimate: float, se: float, skew: float, n: int, ci: float
) -> tuple[float, float]:
    """Hall's (1992) skewness-corrected interval for a mean of `n` influence values.

    The studentised mean ``T`` is mapped by ``g(T) = T + a T² + a² T³ / 3 + b``
    (``a = skew / (3√n)``, ``b = skew / (6√n)``), which is close to normal and monotone,
    so the interval inverts ``g`` in closed form. With ``skew = 0`` it is the
    normal interval.
    """
    z = float(norm.ppf(0.5 + ci / 2.0))
    a, b = skew / (3.0 * math.sqrt(n)), skew / (6.0 * math.sqrt(n))

    def inverse(x: float) -> float:
        if abs(a) < 1e-12:
            return x - b
        return float((np.cbrt(1.0 + 3.0 * a * (x - b)) - 1.0) / a)

    return estimate - se * inverse(z), estimate - se * inverse(-z)


@dataclass
class _Support:
    """Visitors per (policy group, arm served), and the outcome's range, over the blocks."""

    rows: np.ndarray
    labels: list[str | None]
    served: np.ndarray = field(init=False)
    lowest: float = math.inf
    binary: bool = True

    def __post_init__(self) -> None:
        self.served = np.zeros(self.rows.shape, dtype=np.int64)

    def add(self, group: np.ndarray, code: np.ndarray, y: np.ndarray) -> None:
        groups, arms = self.rows.shape
        self.served += np.bincount(group * arms + code, minlength=groups * arms).reshape(
            groups, arms
        )
        self.lowest = min(self.lowest, float(y.min()))
        self.binary = self.binary and bool(((y == 0) | (y == 1)).all())

    def check(self, arms: list[str], group_sizes: np.ndarray) -> float:
        """Refuse a policy that serves an arm the log never served; return the thin share.

        An arm served somewhere in the log had a positive logged propensity, so a segment
        whose visitors happen never to have drawn it is sampling, not missing support: its
        share of the policy's mass is returned (``unsupported_share``), not refused.
        """
        never = (self.rows * group_sizes[:, None]).sum(axis=0) > 0
        never &= self.served.sum(axis=0) == 0
        total = group_sizes.sum()
        if never.any():
            mass = (self.rows[:, never] * group_sizes[:, None]).sum() / total
            raise ValueError(
                f"no support: {mass:.1%} of the policy's mass goes to arm(s) "
                f"{[arms[k] for k in np.flatnonzero(never)]} that the log never served; the "
                "log says nothing about them: evaluate a policy that serves only arms the log "
                "has served, or log those arms first"
            )
        thin = (self.rows > 0) & (self.served == 0) & (group_sizes[:, None] > 0)
        return float((self.rows * group_sizes[:, None])[thin].sum() / total)

    def bounds(self) -> tuple[float, float]:
        """The metric's range as the outcomes show it: [0, 1], [0, ∞) or unbounded."""
        if self.binary:
            return 0.0, 1.0
        return (0.0 if self.lowest >= 0 else -math.inf), math.inf


def _propensities(argument, logged: xr.Dataset, code: np.ndarray, arms: list[str]) -> np.ndarray:
    """The logged propensities of a block: the coordinate, the argument, or both agreeing."""
    given = None
    if isinstance(argument, Mapping):
        given = _weight_row(argument, arms, "propensity")[code]
    elif argument is not None:
        given = np.full(code.size, float(argument))
    if "propensity" not in logged.variables:
        assert given is not None  # checked by _check_log
        return given
    p = np.asarray(logged["propensity"].values, dtype=np.float64)
    if given is not None:
        differ = ~np.isclose(p, given, rtol=0.0, atol=SUM_TOLERANCE)
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            raise ValueError(
                f"propensity={argument!r} disagrees with the log's propensity coordinate at "
                f"{int(differ.sum())} visitor(s) (first: {p[i]!r} vs {given[i]!r}); give one "
                "of them"
            )
    return p


def _distinct(values: np.ndarray) -> list[str]:
    """The distinct values, in order of appearance: one vectorised pass per value found."""
    found: list[str] = []
    while values.size and len(found) < 64:
        found.append(str(values[0]))
        values = values[values != values[0]]
    return found + [str(a) for a in pd.unique(values) if str(a) not in found]


def _arm_codes(served: np.ndarray, arms: list[str]) -> np.ndarray:
    """The column of `arms` of each served arm, -1 for another (a compare per arm: a few arms)."""
    code = np.full(served.size, -1, dtype=np.int64)
    for k, arm in enumerate(arms):
        code[served == arm] = k
    return code


def _read_block(
    logged: xr.Dataset, start: int, arms: list[str], propensity
) -> tuple[np.ndarray, ...]:
    """(arm served as a column of `arms`, outcome, propensity) of the block from row `start`."""
    served = np.asarray(logged["variant"].values)
    if served.dtype.kind not in "OU":
        served = served.astype(str)
    code = _arm_codes(served, arms)
    if (code < 0).any():
        unknown = sorted(map(str, pd.unique(served[code < 0])))
        raise ValueError(f"logged arms {unknown[:SHOWN]} are not among the policy's arms {arms}")
    y = np.asarray(logged["outcome"].values, dtype=np.float64)
    p = _propensities(propensity, logged, code, arms)
    why = "importance weights need the probability with which each served arm was chosen"
    for values, what, bad in (
        (p, f"propensities must lie in (0, 1] and not be missing ({why})", ~((p > 0) & (p <= 1))),
        (y, "outcomes must be finite numbers", ~np.isfinite(y)),
    ):
        if bad.any():
            rows = np.flatnonzero(bad)[:SHOWN]
            raise ValueError(
                f"{what}: {int(bad.sum())} in visitor rows {start}-{start + len(y) - 1} are "
                f"not, e.g. rows {(rows + start).tolist()}: {values[rows].tolist()}"
            )
    return code, y, p


def _check_arguments(estimator, ci, n_bootstrap, posterior, propensity) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if isinstance(ci, bool) or not isinstance(ci, Real) or not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if n_bootstrap is not None and (
        isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, Integral) or n_bootstrap < 0
    ):
        raise ValueError(f"n_bootstrap must be None or a non-negative integer, got {n_bootstrap!r}")
    if n_bootstrap:
        least = math.ceil(MIN_TAIL_RESAMPLES / ((1.0 - float(ci)) / 2.0) - 1e-9)
        if n_bootstrap < least:
            raise ValueError(
                f"n_bootstrap={n_bootstrap} is too few for a {float(ci):.0%} percentile "
                f"interval: each tail would rest on fewer than {MIN_TAIL_RESAMPLES} resamples; "
                f"use at least {least}, or None (the default interval) or 0 (a normal interval)"
            )
    if estimator == "dr" and posterior is None:
        raise ValueError(
            "estimator='dr' needs posterior= (the outcome model); pass one, or use 'ipw' or 'snips'"
        )
    if propensity is not None and not isinstance(propensity, Mapping):
        if isinstance(propensity, bool) or not isinstance(propensity, Real):
            raise TypeError(
                f"propensity must be a number in (0, 1] or {{arm: probability}}, got "
                f"{type(propensity).__name__}"
            )
        if not 0.0 < float(propensity) <= 1.0:
            raise ValueError(f"propensity must lie in (0, 1], got {propensity!r}")


def _check_scalar_propensity(propensity, arms_served: int) -> None:
    """One propensity for every arm served: together they cannot exceed 1."""
    if isinstance(propensity, Real) and arms_served * float(propensity) > 1.0 + SUM_TOLERANCE:
        raise ValueError(
            f"propensity={propensity!r} for each of the {arms_served} arms served sums to "
            f"{arms_served * float(propensity):g} > 1; give the probability of each "
            f"assignment (1/{arms_served} for a uniform test) or {{arm: probability}}"
        )


def _as_log(logged, propensity) -> xr.Dataset:
    """A Dataset along ``visitor`` (a DataFrame's columns become its coordinates), checked."""
    if isinstance(logged, pd.DataFrame):
        logged = xr.Dataset(
            coords={str(c): ("visitor", logged[c].to_numpy()) for c in logged.columns}
        )
    if not isinstance(logged, xr.Dataset):
        raise TypeError(
            f"logged must be an xarray Dataset or a pandas DataFrame, got {type(logged).__name__}"
        )
    needed = (
        ("variant", "outcome") if propensity is not None else ("variant", "outcome", "propensity")
    )
    for name in needed:
        if name not in logged.variables or logged.variables[name].dims != ("visitor",):
            hint = " (or give propensity=)" if name == "propensity" else ""
            raise ValueError(
                f"logged needs a {name!r} coordinate along 'visitor'{hint}; found "
                f"{sorted(map(str, logged.variables))}"
            )
    if logged.sizes["visitor"] < 2:
        raise ValueError(f"logged has {logged.sizes['visitor']} visitor(s); at least 2 are needed")
    return logged


def _policy_arms(policy, posterior, logged: xr.Dataset) -> list[str]:
    if isinstance(policy, RoundPlan):
        return list(policy.arms)
    if isinstance(posterior, xr.DataArray):
        return [str(a) for a in posterior["arm"].values]
    if posterior is not None:
        return list(posterior.variants)
    if logged.attrs.get("pytyche_arms"):
        return list(logged.attrs["pytyche_arms"])
    # The arms served, plus those the policy names (an arm the log never served is then
    # reported as unsupported rather than unknown).
    n = logged.sizes["visitor"]
    served: list[str] = []
    for start in range(0, n, BLOCK):
        block = np.asarray(logged["variant"][start : start + BLOCK].values)
        served += [a for a in _distinct(block.astype(str)) if a not in served]
    named: list = []
    if isinstance(policy, str):
        named = [policy]
    elif isinstance(policy, Mapping):
        named = [a for a in policy if isinstance(a, str)]
    elif isinstance(policy, tuple) and len(policy) == 2 and isinstance(policy[0], Mapping):
        named = [a for w in policy[0].values() if isinstance(w, Mapping) for a in w]
        named = [a for a in named if isinstance(a, str)]
    return list(dict.fromkeys(str(a) for a in [*served, *named]))


def evaluate_policy(
    logged: xr.Dataset | pd.DataFrame,
    policy,
    *,
    estimator: str = "dr",
    posterior=None,
    ci: float = 0.9,
    n_bootstrap: int | None = None,
    seed: int = 0,
    propensity: float | Mapping[str, float] | None = None,
) -> xr.Dataset:
    """Estimate the expected metric per visitor that `policy` would have earned on logged data.

    With ``w_i = π(a_i | x_i) / p_i`` the importance weight of visitor ``i`` (``a_i`` the arm
    served, ``p_i`` its logged propensity, ``π`` the policy's probability), and ``m(x, k)``
    the posterior-mean metric:

    - ``"ipw"``: mean of ``w_i y_i`` (unbiased; high variance when weights are large);
    - ``"snips"``: ``Σ w_i y_i / Σ w_i`` (self-normalised; small bias, less variance);
    - ``"dr"``: mean of ``Σ_k π(k | x_i) m(x_i, k) + w_i (y_i - m(x_i, a_i))`` (doubly
      robust: unbiased when the propensities are right, whatever the outcome model).

    The default interval (``n_bootstrap=None``) is deterministic: Hall's skewness-corrected
    interval of the estimator's influence values (its first three moments), which follows
    the long right tail of heavy importance weights without resampling noise.
    ``n_bootstrap=0`` gives the plain normal interval; ``n_bootstrap=B`` a percentile
    interval of ``B`` Poisson bootstrap resamples (at least ``10 / (1 - ci)``, so that
    each tail rests on 5 resamples or more). When every outcome is 0 or 1 the interval is
    clipped to [0, 1], and when none is negative to [0, ∞) (the estimate itself is not
    clipped: IPW's can leave the range).

    A policy that gives probability to an arm the log never served has no support: the data
    cannot say what it would earn, and this function refuses it. A segment of the policy
    whose logged visitors happen never to have been served one of its arms (that arm was
    served elsewhere, so its logged propensity was positive) is sampling noise, not missing
    support: its share of the policy's mass is reported as ``unsupported_share``.

    Parameters
    ----------
    logged : xarray.Dataset or pandas.DataFrame
        Logged visitors: coordinates (or columns) ``variant`` (arm served), ``outcome``,
        ``propensity`` (or the argument `propensity`) and the covariates the policy's
        segments use (e.g. :meth:`SequentialExperiment.recorded`). A dask-backed Dataset
        (``xr.open_zarr``) is read :data:`BLOCK` visitors at a time.
    policy : RoundPlan, str, mapping or (allocation, segments)
        See :func:`policy_probabilities`.
    estimator : {"dr", "ipw", "snips"}, default "dr"
    posterior : BCFResult or xarray.DataArray, optional
        Outcome model for ``"dr"`` (required there): a posterior whose visitors are the
        logged ones (matched by visitor id when both have ids, else row by row), or a
        (visitor, arm) DataArray of expected outcomes.
    ci : float, default 0.9
        Mass of the interval, in (0, 1).
    n_bootstrap : int, optional
        None: the skewness-corrected interval; 0: the normal interval; else the number of
        bootstrap resamples.
    seed : int, default 0
        Seed of the bootstrap.
    propensity : float or mapping of arm to probability, optional
        For a plain A/B table without a ``propensity`` column: the probability of every
        assignment (``1/3`` for a uniform 3-arm test) or ``{arm: probability}`` summing to
        1. Given beside the column, the two must agree.

    Returns
    -------
    xarray.Dataset
        Scalars ``estimate``, ``lower``, ``upper``, ``standard_error``,
        ``effective_sample_size`` (``(Σw)² / Σw²``), ``max_weight`` and
        ``unsupported_share``; attrs ``estimator``, ``ci``, ``interval`` ("skew-corrected",
        "normal" or "bootstrap"), ``n_bootstrap``, ``n_visitors``, ``bounds`` (the range
        the interval was clipped to).

    Raises
    ------
    ValueError
        For no support, an unknown estimator, a missing ``propensity``, ``variant`` or
        ``outcome``, propensities missing or outside (0, 1], missing outcomes, a served arm
        the policy does not know, ``"dr"`` without `posterior`, visitor ids that repeat,
        `ci` out of range, too few bootstrap resamples, or a SNIPS resample without any
        weight.
    TypeError
        For arm weights or allocations keyed by the wrong type (see
        :func:`policy_probabilities`).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> table = pd.DataFrame({"variant": ["control", "A"] * 50, "outcome": [1.0, 3.0] * 50})
    >>> result = evaluate_policy(table, "A", estimator="ipw", propensity=0.5)
    >>> float(result["estimate"])
    3.0
    """
    _check_arguments(estimator, ci, n_bootstrap, posterior, propensity)
    logged = _as_log(logged, propensity)
    arms = _policy_arms(policy, posterior, logged)
    model = _outcome_model(posterior, logged, arms) if estimator == "dr" else None
    n = logged.sizes["visitor"]
    sums = _Sums(n_bootstrap or 0, seed)
    support: _Support | None = None
    weights = np.zeros(3)  # Σw, Σw², max w
    group_sizes = np.zeros(0, dtype=np.int64)
    for start in range(0, n, BLOCK):
        block = logged.isel(visitor=slice(start, start + BLOCK)).compute()
        code, y, p = _read_block(block, start, arms, propensity)
        table = _policy_table(policy, block, arms)
        if support is None:
            support = _Support(table.rows, table.labels)
            group_sizes = np.zeros(len(table.rows), dtype=np.int64)
        support.add(table.group, code, y)
        group_sizes += np.bincount(table.group, minlength=len(table.rows))
        w = table.rows[table.group, code] / p
        weights += [w.sum(), (w * w).sum(), 0.0]
        weights[2] = max(weights[2], float(w.max()))
        if estimator == "snips":
            sums.add(start, w * y, w)
            continue
        score = w * y
        if model is not None:
            m = model(start, start + len(code))
            rows = np.arange(len(code))
            score = (table.rows[table.group] * m).sum(axis=1) + w * (y - m[rows, code])
        sums.add(start, score, np.ones_like(score))
    assert support is not None  # the log has visitors (_as_log)
    thin = support.check(arms, group_sizes)
    _check_scalar_propensity(propensity, int((support.served.sum(axis=0) > 0).sum()))
    result = _result(sums, support.bounds(), weights, estimator, float(ci), n_bootstrap)
    return result.assign(unsupported_share=thin)


def _result(sums: _Sums, bounds, weights, estimator: str, ci: float, n_bootstrap) -> xr.Dataset:
    value, se, skew = sums.moments()
    if n_bootstrap:
        draws = sums.bootstrap()
        alpha = (1.0 - ci) / 2.0
        lower, upper = np.quantile(draws, [alpha, 1.0 - alpha])
        se, interval = float(draws.std(ddof=1)), "bootstrap"
    elif n_bootstrap == 0:
        z = float(norm.ppf(0.5 + ci / 2.0))
        lower, upper, interval = value - z * se, value + z * se, "normal"
    else:
        lower, upper = _skew_corrected_interval(value, se, skew, sums.n, ci)
        interval = "skew-corrected"
    lower, upper = np.clip([lower, upper], *bounds)
    total, squares, largest = weights
    return xr.Dataset(
        {
            "estimate": value,
            "lower": float(lower),
            "upper": float(upper),
            "standard_error": se,
            "effective_sample_size": float(total**2 / squares) if squares > 0 else 0.0,
            "max_weight": float(largest),
        },
        attrs={
            "estimator": estimator,
            "ci": ci,
            "interval": interval,
            "n_bootstrap": int(n_bootstrap or 0),
            "n_visitors": int(sums.n),
            "bounds": [float(b) for b in bounds],
        },
    )
