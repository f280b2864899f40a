"""Serve a round plan with GrowthBook's SDKs, and record the exposures they track.

:func:`to_growthbook` writes a round plan as a GrowthBook feature: for every segment (in plan
order, the visitors in no segment last) and every cell of positive weight, one experiment
rule. The rule's ``condition`` is the segment's rule in GrowthBook's condition syntax; a
``filters`` entry on a *cell hash* (seed ``pytyche:<seed>:cell``) keeps the visitors whose
cell it is; its ``ranges`` lay the cell's arm weights for the segment on an *arm hash* (seed
``pytyche:<seed>:arm``) as cumulative intervals in the experiment's arm order. Both seeds
depend on the experiment seed only, so, as with :meth:`RoundPlan.assign`, a visitor keeps
their cell for the whole experiment and their arm for as long as the arm hash stays inside
that arm's interval. The hashes are GrowthBook's (FNV-1a, ``hashVersion: 2``), not
:func:`visitor_uniforms`: the SDK serves a visitor another arm than ``plan.assign`` would,
with the same probabilities.

:func:`exposures_from_growthbook` turns the exposures the SDK tracks (experiment key,
variation id, hash value) joined with outcomes into the observed data
:meth:`SequentialExperiment.record` takes, logs them in the plan's assignment log and takes
every propensity from the plan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..segments import Clause, SegmentRule
from .assign import check_visitor_table, visitor_keys
from .experiment import logged_observed
from .plan import CELLS, NO_SEGMENT, RoundPlan

__all__ = [
    "EXPOSURE_COLUMNS",
    "exposures_from_growthbook",
    "growthbook_attributes",
    "growthbook_condition",
    "to_growthbook",
]

# GrowthBook hashes a visitor to one of 10,000 buckets (hashVersion 2): ranges are laid on
# that grid, so the SDK serves each arm within 1/10,000 of the plan's weight.
HASH_VERSION = 2
RANGE_DECIMALS = 4
# Integers beyond 2**53 are not exact in a JavaScript number.
MAX_EXACT_INTEGER = 2**53
# The columns of a tracked exposure that are not covariates.
EXPOSURE_COLUMNS = ("experiment_key", "variation_id", "visitor_id")
MAX_SHOWN = 5
_KEY = re.compile(
    r"(?P<feature>.+)/round=(?P<round>-?[0-9]+)/segment=(?P<segment>-?[0-9]+)"
    r"/cell=(?P<cell>control|explore|optimized)"
)
_GUARD = {"text": "string", "bool": "boolean"}


# --------------------------------------------------------------------------- conditions


def growthbook_condition(rule: SegmentRule | str) -> dict[str, Any]:
    """A segment rule in GrowthBook's condition syntax, exactly.

    The condition matches the visitors :func:`pytyche.membership` puts in the segment,
    missing values included: a visitor whose attribute is absent, ``null`` or NaN matches no
    clause on it, negated ones (``!=``, ``not in``) included. So every clause but ``==`` and
    ``in`` also asks the attribute's ``$type`` (``$exists`` would let a NaN through, and
    JavaScript orders ``null`` as 0), and ``!=``/``not in`` on numbers are written as
    below-or-above pairs, which a NaN never is.

    Parameters
    ----------
    rule : SegmentRule or str
        The rule, or its text.

    Returns
    -------
    dict
        ``{}`` for ``everyone``; one clause's condition; or ``{"$and": [...]}`` for several.

    Raises
    ------
    ValueError
        When a clause cannot be translated exactly, naming it: a covariate name with a dot
        (GrowthBook reads ``a.b`` as a nested attribute) or starting with ``$`` (an
        operator), or an integer literal beyond 2**53 (not exact in JavaScript).

    Examples
    --------
    >>> growthbook_condition("device == 'mobile' and age > 40")
    {'$and': [{'device': {'$eq': 'mobile'}}, {'age': {'$type': 'number', '$gt': 40}}]}
    >>> growthbook_condition("plan != 'pro'")
    {'plan': {'$type': 'string', '$ne': 'pro'}}
    """
    if isinstance(rule, str):
        rule = SegmentRule.parse(rule)
    if not isinstance(rule, SegmentRule):
        raise TypeError(f"rule must be a SegmentRule or rule text, got {rule!r}")
    parts = [_clause_condition(clause) for clause in rule.clauses]
    if not parts:
        return {}
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _clause_condition(clause: Clause) -> dict[str, Any]:
    """One clause as a GrowthBook condition (see :func:`growthbook_condition`)."""
    _check_translatable(clause)
    name, literals = clause.covariate, list(clause.literals)
    kind = _kind(literals[0])
    if clause.op == "==":
        return {name: {"$eq": literals[0]}}
    if clause.op == "in":
        return {name: {"$in": literals}}
    # JavaScript orders null as 0 (null < 1 holds): ordered operators first ask for a number.
    number = {"$type": "number"}
    if clause.op in ("<", "<=", ">", ">="):
        operator = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}[clause.op]
        return {name: {**number, operator: literals[0]}}
    if kind != "number":  # != and not in on text or booleans: present and of that type
        negated = {"$ne": literals[0]} if clause.op == "!=" else {"$nin": literals}
        return {name: {"$type": _GUARD[kind], **negated}}
    if clause.op == "!=":  # below or above: a NaN is neither
        below, above = {**number, "$lt": literals[0]}, {**number, "$gt": literals[0]}
        return {"$or": [{name: below}, {name: above}]}
    # not in on numbers: a number <= 0 or > 0 (a NaN is neither) outside the set.
    low, high = {**number, "$lte": 0, "$nin": literals}, {**number, "$gt": 0, "$nin": literals}
    return {"$or": [{name: low}, {name: high}]}


def _kind(literal: Any) -> str:
    if isinstance(literal, bool):
        return "bool"
    return "text" if isinstance(literal, str) else "number"


def _check_translatable(clause: Clause) -> None:
    name = clause.covariate
    problem = None
    if "." in name:
        problem = f"its covariate name {name!r} has a dot, which GrowthBook reads as a nested path"
    elif name.startswith("$"):
        problem = (
            f"its covariate name {name!r} starts with '$', which GrowthBook reads as an operator"
        )
    else:
        big = [
            v
            for v in clause.literals
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_EXACT_INTEGER
        ]
        if big:
            problem = f"the integer {big[0]} is beyond 2**53, not exact in a JavaScript number"
    if problem:
        raise ValueError(
            f"the clause {str(clause)!r} cannot be translated to a GrowthBook condition exactly: "
            f"{problem}; rename the covariate or rewrite the rule"
        )


# --------------------------------------------------------------------------- the feature


def to_growthbook(plan: RoundPlan, feature_key: str, hash_attribute: str = "id") -> dict[str, Any]:
    """The plan as a GrowthBook feature: the features JSON an SDK loads.

    One experiment rule per (segment, cell of positive weight), segments in plan order and
    the visitors in no segment (pooled weights) last, so the first rule whose condition
    matches is the visitor's segment, as in :meth:`RoundPlan.segment_of`. The rule's filter
    on the cell hash keeps the cell's share of visitors (control ``[0, c)``, explore
    ``[c, c + e)``, optimized ``[c + e, 1)``); its ranges lay the cell's arm weights on the
    arm hash in arm order. Both hashes are seeded by the experiment seed only: a visitor
    keeps their cell for the whole experiment, and their arm while the arm hash stays in
    that arm's range (see the module notes). Boundaries are rounded to GrowthBook's 10,000
    hash buckets, so the SDK serves each arm within about 1/10,000 of the plan's probability;
    exposures are recorded with the plan's.

    Parameters
    ----------
    plan : RoundPlan
        The round's plan.
    feature_key : str
        The feature's key; its value is the arm's name (the control arm by default).
    hash_attribute : str, default "id"
        The attribute holding the visitor id. A visitor without it gets the control arm and
        no exposure is tracked.

    Returns
    -------
    dict
        ``{"features": {feature_key: {"defaultValue": control, "rules": [...]}}}``. Each
        rule's ``key`` is ``"<feature_key>/round=<r>/segment=<s>/cell=<cell>"`` (the
        experiment key of its exposures) and its ``meta`` the arm names.

    Raises
    ------
    TypeError
        When `plan` is not a RoundPlan.
    ValueError
        When `feature_key` or `hash_attribute` is not a non-empty string, or a segment's rule
        cannot be translated exactly (the segment and clause named).

    Examples
    --------
    >>> from pytyche.sequential import sequential_experiment
    >>> plan = sequential_experiment(["control", "A"], seed=1).plan()
    >>> feature = to_growthbook(plan, "checkout")["features"]["checkout"]
    >>> feature["defaultValue"], feature["rules"][0]["key"]
    ('control', 'checkout/round=0/segment=0/cell=control')
    """
    if not isinstance(plan, RoundPlan):
        raise TypeError(f"plan must be a RoundPlan, got {type(plan).__name__}")
    for name, value in (("feature_key", feature_key), ("hash_attribute", hash_attribute)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    rules: list[dict[str, Any]] = []
    for segment in plan.segment_ids:
        condition = _segment_condition(plan, segment)
        rules += _segment_rules(plan, feature_key, hash_attribute, segment, condition)
        if segment != NO_SEGMENT and not condition:
            break  # an everyone segment: no visitor reaches the rules after it
    feature = {"defaultValue": plan.arms[0], "rules": rules}
    return {"features": {feature_key: feature}}


def _segment_condition(plan: RoundPlan, segment: int) -> dict[str, Any]:
    if segment == NO_SEGMENT:
        return {}
    try:
        return growthbook_condition(plan.segments[segment])
    except ValueError as error:
        raise ValueError(f"segment {segment}: {error}") from None


def _boundaries(weights: Iterable[float]) -> list[float]:
    """Cumulative weights on GrowthBook's bucket grid, 0 first and exactly 1 last."""
    ends = [round(float(e), RANGE_DECIMALS) for e in np.cumsum(list(weights))]
    ends[-1] = 1.0
    return [0.0, *ends]


def _segment_rules(
    plan: RoundPlan, feature_key: str, hash_attribute: str, segment: int, condition: dict
) -> list[dict[str, Any]]:
    cells = _boundaries(plan.cells[c] for c in CELLS)
    position = plan.segment_ids.index(segment)
    label = plan.segments.get(segment, "no segment (pooled weights)")
    rules = []
    for k, cell in enumerate(CELLS):
        if plan.cells[cell] <= 0:
            continue
        arms = _boundaries(plan.cell_probability(cell).values[position])
        rule: dict[str, Any] = {
            "key": experiment_key(feature_key, plan.round, segment, cell),
            "name": f"{feature_key}: round {plan.round}, segment {segment} ({label}), {cell} cell",
            "phase": str(plan.round),
            "hashAttribute": hash_attribute,
            "hashVersion": HASH_VERSION,
            "seed": f"pytyche:{plan.seed}:arm",
            "filters": [
                {
                    "seed": f"pytyche:{plan.seed}:cell",
                    "attribute": hash_attribute,
                    "hashVersion": HASH_VERSION,
                    "ranges": [[cells[k], cells[k + 1]]],
                }
            ],
            "variations": list(plan.arms),
            "ranges": [[arms[i], arms[i + 1]] for i in range(len(plan.arms))],
            "meta": [{"key": arm, "name": arm} for arm in plan.arms],
        }
        if condition:
            rule["condition"] = condition
        rules.append(rule)
    return rules


def experiment_key(feature_key: str, round: int, segment: int, cell: str) -> str:
    """The experiment key of one (round, segment, cell) rule, as its exposures carry it.

    Parameters
    ----------
    feature_key : str
    round, segment : int
    cell : str

    Returns
    -------
    str

    Examples
    --------
    >>> experiment_key("checkout", 2, -1, "explore")
    'checkout/round=2/segment=-1/cell=explore'
    """
    return f"{feature_key}/round={round}/segment={segment}/cell={cell}"


# --------------------------------------------------------------------------- attributes


def growthbook_attributes(
    visitors: pd.DataFrame, hash_attribute: str = "id"
) -> list[dict[str, Any]]:
    """Each visitor's GrowthBook attributes: the id as text and the present covariates.

    Missing values (None, NaN, ``pd.NA``) are left out, as an SDK expects of an attribute it
    does not have; numpy scalars become plain Python values.

    Parameters
    ----------
    visitors : pandas.DataFrame
        A ``visitor_id`` column and the covariates, one row per visitor.
    hash_attribute : str, default "id"
        The attribute to hold the visitor id (as :func:`to_growthbook`'s).

    Returns
    -------
    list of dict
        One attribute dict per row, in row order.

    Raises
    ------
    TypeError
        When `visitors` is not a DataFrame.
    ValueError
        When ``visitor_id`` is missing (the column or a value), or a covariate is named like
        the hash attribute.

    Examples
    --------
    >>> growthbook_attributes(pd.DataFrame({"visitor_id": [7], "age": [float("nan")]}))
    [{'id': '7'}]
    """
    check_visitor_table(visitors, "the hash attribute's value")
    if hash_attribute in visitors.columns:
        raise ValueError(
            f"visitors has a column {hash_attribute!r}, the hash attribute's name: rename it "
            "or pass another hash_attribute"
        )
    ids = visitor_keys(visitors["visitor_id"].to_numpy(dtype=object))
    names = [str(c) for c in visitors.columns if c != "visitor_id"]
    columns = [visitors[c].astype(object).to_numpy() for c in visitors.columns if c != "visitor_id"]
    out = []
    for i, visitor in enumerate(ids):
        attributes: dict[str, Any] = {hash_attribute: visitor}
        for name, column in zip(names, columns, strict=True):
            value = _plain(column[i])
            if value is not None:
                attributes[name] = value
        out.append(attributes)
    return out


def _plain(value: Any) -> Any:
    """A JSON-like Python value, or None when missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------- exposures


def exposures_from_growthbook(
    events: pd.DataFrame | Iterable[Mapping[str, Any]],
    plan: RoundPlan,
    outcome: str = "outcome",
) -> xr.Dataset:
    """Observed data for :meth:`SequentialExperiment.record` from GrowthBook's exposures.

    Each event is one visitor's tracked exposure joined with their outcome: the experiment
    key (``experiment.key`` in the SDK's tracking callback), the variation id
    (``result.variationId``), the visitor id (``result.hashValue``), the outcome, and the
    visitor's covariates (every other column, as the SDK's attributes). The key names the
    round, segment and cell; the variation the arm; the propensity is the plan's effective
    probability of that arm in that segment. The visitors are logged in
    ``plan.assigned``, so ``record`` accepts them as it accepts ``plan.assign``'s output.

    Parameters
    ----------
    events : pandas.DataFrame or iterable of dict
        Columns ``experiment_key``, ``variation_id``, ``visitor_id``, the outcome and the
        covariates the plan's segments use (missing values allowed). The same exposure
        tracked twice (same visitor, key and variation) counts once.
    plan : RoundPlan
        The plan whose :func:`to_growthbook` features served the events: the experiment's
        current plan.
    outcome : str, default "outcome"
        The outcome column.

    Returns
    -------
    xarray.Dataset
        As :func:`logged_observed` builds it: visitor index, ``variant``, ``outcome``,
        ``propensity``, ``cell``, ``round``, ``segment`` and the covariates.

    Raises
    ------
    TypeError
        When `plan` is not a RoundPlan or `events` not a table.
    ValueError
        When a column is missing; an experiment key is not one of this plan's rules (another
        round, segment or malformed); a variation id is not an arm the plan serves in that
        segment and cell; a visitor's covariates put them in another segment than the key
        (the SDK saw other attributes); a visitor has two different exposures or differs from
        an earlier assignment. Up to 5 rows are shown; ``plan.assigned`` is then unchanged.
    """
    if not isinstance(plan, RoundPlan):
        raise TypeError(f"plan must be a RoundPlan, got {type(plan).__name__}")
    table = _event_table(events, outcome)
    keys = visitor_keys(table["visitor_id"].to_numpy(dtype=object))
    round_, segment, cell = _parse_keys(table["experiment_key"].to_numpy(dtype=object), plan)
    arm_index = _arm_indices(table["variation_id"].to_numpy(dtype=object), plan)
    _check_served(plan, keys, segment, cell, arm_index)
    covariates = table.drop(columns=[*EXPOSURE_COLUMNS, outcome])
    _check_segments(plan, keys, covariates, segment)
    positions = np.array([plan.segment_ids.index(int(s)) for s in segment], dtype=np.int64)
    propensity = plan.effective_probability.values[positions, arm_index]
    assigned = pd.DataFrame(
        {
            "visitor_id": keys,
            "cell": cell,
            "segment": segment,
            "arm": np.array(plan.arms, dtype=object)[arm_index],
            "propensity": propensity,
        }
    )
    assigned = _unique_visitors(assigned)
    new = _check_log(plan, assigned)
    first = ~pd.Index(keys).duplicated()
    served = covariates[first].reset_index(drop=True)
    served.insert(0, "visitor_id", assigned["visitor_id"].to_numpy())
    for name in ("round", "cell", "segment", "arm", "propensity"):
        served[name] = round_ if name == "round" else assigned[name].to_numpy()
    served[outcome] = table[outcome].to_numpy()[first]
    observed = logged_observed(served, outcome=outcome)  # raises before the log changes
    plan.assigned = pd.concat([plan.assigned, assigned[new]], ignore_index=True)
    return observed


def _event_table(events: Any, outcome: str) -> pd.DataFrame:
    if isinstance(events, pd.DataFrame):
        table = events.reset_index(drop=True)
    elif isinstance(events, Iterable) and not isinstance(events, str | bytes | Mapping):
        table = pd.DataFrame.from_records(list(events))
    else:
        raise TypeError(
            f"events must be a pandas DataFrame or a list of dicts, got {type(events).__name__}"
        )
    needed = [*EXPOSURE_COLUMNS, outcome]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"events lack the column(s) {missing}; expected {needed} and the covariates, got "
            f"{[str(c) for c in table.columns]}"
        )
    if table.empty:
        raise ValueError("events has no rows")
    return table


def _shown(rows: np.ndarray, values: Any) -> str:
    where = np.flatnonzero(rows)
    text = ", ".join(f"row {i} ({values[i]!r})" for i in where[:MAX_SHOWN])
    return text + (" ..." if where.size > MAX_SHOWN else "")


def _parse_keys(keys: np.ndarray, plan: RoundPlan) -> tuple[int, np.ndarray, np.ndarray]:
    """Round, segment and cell of each experiment key; refuse keys of no rule of `plan`."""
    matches = [_KEY.fullmatch(k) if isinstance(k, str) else None for k in keys]
    bad = np.array([m is None for m in matches])
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} experiment key(s) are not pytyche's "
            f"'<feature>/round=<r>/segment=<s>/cell=<cell>': {_shown(bad, keys)}; pass only "
            "the exposures of the feature to_growthbook wrote"
        )
    parsed = [m for m in matches if m is not None]
    round_ = np.array([int(m["round"]) for m in parsed])
    segment = np.array([int(m["segment"]) for m in parsed], dtype=np.int64)
    cell = np.array([m["cell"] for m in parsed], dtype=object)
    other = round_ != plan.round
    if other.any():
        raise ValueError(
            f"{int(other.sum())} exposure(s) were served by another round's features than "
            f"round {plan.round}'s: {_shown(other, keys)}; record each round's exposures with "
            "its own plan, before advancing"
        )
    unknown = ~np.isin(segment, plan.segment_ids)
    if unknown.any():
        raise ValueError(
            f"{int(unknown.sum())} exposure(s) name a segment the round {plan.round} plan does "
            f"not have (its ids: {plan.segment_ids}): {_shown(unknown, keys)}"
        )
    return plan.round, segment, cell


def _arm_indices(variations: np.ndarray, plan: RoundPlan) -> np.ndarray:
    def index(value: Any) -> int:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return -1
        return value if 0 <= value < len(plan.arms) else -1

    indices = np.array([index(v) for v in variations], dtype=np.int64)
    bad = indices < 0
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} variation id(s) are not an arm's index 0 to "
            f"{len(plan.arms) - 1} (arms {list(plan.arms)}): {_shown(bad, variations)}"
        )
    return indices


def _check_served(
    plan: RoundPlan, keys: np.ndarray, segment: np.ndarray, cell: np.ndarray, arm: np.ndarray
) -> None:
    """Refuse an arm the plan gives no weight in the exposure's segment and cell."""
    positions = np.array([plan.segment_ids.index(int(s)) for s in segment], dtype=np.int64)
    weight = np.zeros(keys.size)
    for name in CELLS:
        here = cell == name
        table = plan.cell_probability(name).values
        weight[here] = table[positions[here], arm[here]]
    bad = weight <= 0
    if bad.any():
        served = [f"{keys[i]}: {plan.arms[arm[i]]} in {cell[i]}" for i in range(keys.size)]
        raise ValueError(
            f"{int(bad.sum())} exposure(s) got an arm the round {plan.round} plan never serves "
            f"in their segment and cell: {_shown(bad, served)}; were they served by these "
            "features?"
        )


def _check_segments(
    plan: RoundPlan, keys: np.ndarray, covariates: pd.DataFrame, segment: np.ndarray
) -> None:
    """Refuse visitors whose logged covariates put them in another segment than the SDK did."""
    try:
        expected = plan.segment_of(covariates)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"events: {error}") from None
    bad = expected != segment
    if bad.any():
        shown = [f"{keys[i]}: key {segment[i]}, covariates {expected[i]}" for i in range(keys.size)]
        raise ValueError(
            f"{int(bad.sum())} visitor(s) were served as one segment but their covariates put "
            f"them in another: {_shown(bad, shown)}; log the attributes the SDK evaluated"
        )


def _unique_visitors(assigned: pd.DataFrame) -> pd.DataFrame:
    """One row per visitor; refuse a visitor exposed with two different assignments."""
    unique = assigned.drop_duplicates()
    twice = unique["visitor_id"].duplicated(keep=False).to_numpy()
    if twice.any():
        shown = unique["visitor_id"].to_numpy()
        raise ValueError(
            f"{int(twice.sum())} exposure(s) give a visitor two different cells, segments or "
            f"arms: {_shown(twice, shown)}; a visitor's exposures in one round must agree"
        )
    return unique.reset_index(drop=True)


def _check_log(plan: RoundPlan, assigned: pd.DataFrame) -> np.ndarray:
    """Which visitors are new to the plan's log; refuse those logged otherwise before."""
    log = plan.assigned.drop_duplicates("visitor_id").set_index("visitor_id")
    known = assigned["visitor_id"].isin(log.index).to_numpy()
    if known.any():
        earlier = log.loc[assigned["visitor_id"][known]]
        same = (
            (earlier["cell"].to_numpy() == assigned["cell"][known].to_numpy())
            & (earlier["segment"].to_numpy() == assigned["segment"][known].to_numpy())
            & (earlier["arm"].to_numpy() == assigned["arm"][known].to_numpy())
        )
        if not same.all():
            ids = assigned["visitor_id"][known].to_numpy()
            raise ValueError(
                f"{int((~same).sum())} visitor(s) were assigned otherwise before in round "
                f"{plan.round}: {_shown(~same, ids)}; serve a visitor with one of plan.assign "
                "or the GrowthBook features, not both"
            )
    return ~known
