"""One round's plan: its cells, its segments and per segment the probability of every arm.

Traffic is split into three cells whose weights never change during an experiment:

- **control** (``min_control_weight``): always served control, an untouched holdout;
- **explore** (``min_explore_weight``): uniform over the active arms;
- **optimized** (the rest): each segment's Thompson weights.

A visitor's *effective probability* of an arm is its probability summed over the cells; it is
the propensity logged with every assignment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import _html
from ..policy_tree import PolicyTreeResult
from ..segments import SegmentRule, membership
from .assign import (
    check_visitor_table,
    choose_interval,
    visitor_covariates,
    visitor_keys,
    visitor_uniforms,
)

__all__ = [
    "CELLS",
    "FINISHED",
    "NO_SEGMENT",
    "RoundPlan",
    "check_arms",
    "check_schedule",
    "check_weight",
    "exploration_floor",
    "round_size",
    "schedule_rounds",
]

CELLS = ("control", "explore", "optimized")
# Segment id of visitors no segment rule matches (a missing covariate): served pooled weights.
NO_SEGMENT = -1
DEFAULT_SCHEDULE = ("doubling", 1_000)
PLAN_FORMAT = 1
#: Status of the final plan after an explicit schedule's last round: it assigns nobody.
FINISHED = "finished"
MAX_SHOWN = 5


# --------------------------------------------------------------------------- validation


def check_weight(name: str, value: Any) -> float:
    """A weight in [0, 1], as float.

    Parameters
    ----------
    name : str
        The argument's name, for the error message.
    value : Any
        The value to check.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When `value` is not a real number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def check_arms(arms: Sequence[str]) -> tuple[str, ...]:
    """Arm names, control first: at least 2 distinct non-empty strings.

    Parameters
    ----------
    arms : sequence of str
        The arm names.

    Returns
    -------
    tuple of str

    Raises
    ------
    ValueError
        For a bare string, fewer than 2 arms, a name that is not a non-empty string, or a
        duplicate name.
    """
    if isinstance(arms, str) or not isinstance(arms, Sequence):
        raise ValueError(f"arms must be a sequence of arm names, control first; got {arms!r}")
    arms = tuple(arms)
    if len(arms) < 2:
        raise ValueError(f"arms must name at least 2 arms (control first), got {list(arms)}")
    for arm in arms:
        if not isinstance(arm, str) or not arm:
            raise ValueError(f"arm names must be non-empty strings, got {arm!r} in {list(arms)}")
    duplicates = sorted({a for a in arms if arms.count(a) > 1})
    if duplicates:
        raise ValueError(f"arms must be distinct; {duplicates} appear more than once in {arms}")
    return arms


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_schedule(schedule: Any) -> tuple:
    """Normalise a round-size schedule.

    Parameters
    ----------
    schedule : None, int, ("doubling", int), ("fixed", int) or list of int
        ``None``: doubling from 1,000 visitors; an int or ``("fixed", n)``: ``n`` every round;
        ``("doubling", n)``: ``n``, ``2n``, ``4n``, ...; a list: the explicit size of each
        round (no more rounds than listed).

    Returns
    -------
    tuple
        ``("doubling", n)``, ``("fixed", n)`` or ``("explicit", (n0, n1, ...))``.

    Raises
    ------
    ValueError
        For any other value, naming it.
    """
    if schedule is None:
        return DEFAULT_SCHEDULE
    if isinstance(schedule, Integral) and not isinstance(schedule, bool):
        return ("fixed", _positive_int("schedule", schedule))
    if isinstance(schedule, tuple) and len(schedule) == 2 and isinstance(schedule[0], str):
        kind, start = schedule
        if kind not in ("doubling", "fixed"):
            raise ValueError(
                f"schedule kind must be 'doubling' or 'fixed', got {kind!r} in {schedule!r}"
            )
        return (kind, _positive_int(f"the size in schedule {schedule!r}", start))
    if isinstance(schedule, Sequence) and not isinstance(schedule, str) and len(schedule) > 0:
        sizes = tuple(_positive_int(f"schedule[{i}]", n) for i, n in enumerate(schedule))
        return ("explicit", sizes)
    raise ValueError(
        "schedule must be None (doubling from 1,000), an int (fixed size), ('doubling', n), "
        f"('fixed', n) or a non-empty list of round sizes; got {schedule!r}"
    )


def round_size(schedule: tuple, round_index: int) -> int:
    """Planned visitors of a round under a normalised schedule.

    Parameters
    ----------
    schedule : tuple
        As returned by :func:`check_schedule`.
    round_index : int
        0 for the first round.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        When an explicit schedule has no entry for the round.

    Examples
    --------
    >>> [round_size(("doubling", 5_000), r) for r in range(4)]
    [5000, 10000, 20000, 40000]
    """
    kind, value = schedule
    if kind == "doubling":
        return int(value) * 2**round_index
    if kind == "fixed":
        return int(value)
    if round_index >= len(value):
        raise ValueError(
            f"the explicit schedule {list(value)} has {len(value)} round(s); round "
            f"{round_index} has no size: pass a longer schedule"
        )
    return int(value[round_index])


def schedule_rounds(schedule: tuple) -> int | None:
    """How many rounds a normalised schedule has: None for an open-ended one.

    Parameters
    ----------
    schedule : tuple
        As returned by :func:`check_schedule`.

    Returns
    -------
    int or None
        The length of an explicit schedule; None for ``doubling`` and ``fixed``.

    Examples
    --------
    >>> schedule_rounds(("explicit", (1000, 2000))), schedule_rounds(("fixed", 500))
    (2, None)
    """
    kind, value = schedule
    return len(value) if kind == "explicit" else None


def exploration_floor(weights: np.ndarray, epsilon: float) -> np.ndarray:
    """Raise weights below ``epsilon / K`` to it and rescale the rest, until stable.

    The same floor as :func:`pytyche.thompson_allocation` applies, here over the active arms
    only (``K`` = number of columns).

    Parameters
    ----------
    weights : numpy.ndarray
        (segment, arm) rows summing to 1.
    epsilon : float
        In [0, 1].

    Returns
    -------
    numpy.ndarray
        Rows summing to 1, each entry at least ``epsilon / K``.

    Examples
    --------
    >>> exploration_floor(np.array([[1.0, 0.0]]), 0.2).round(3).tolist()
    [[0.9, 0.1]]
    """
    weights = np.array(weights, dtype=np.float64)
    floor = epsilon / weights.shape[1]
    if floor == 0.0:
        return weights
    for row in weights:
        fixed = np.zeros(row.size, dtype=bool)
        while True:
            low = ~fixed & (row < floor)
            if not low.any():
                break
            fixed |= low
            free = ~fixed
            rest = row[free].sum()
            row[fixed] = floor
            if rest > 0:
                row[free] *= (1.0 - floor * fixed.sum()) / rest
    return weights


# --------------------------------------------------------------------------- the plan


class RoundPlan:
    """The plan of one round: cells, segments and the arm probabilities of every segment.

    Built by :class:`~pytyche.sequential.SequentialExperiment`; rebuilt from :meth:`to_dict`
    output with :meth:`from_dict`.

    Attributes
    ----------
    round : int
        Round index, 0 first.
    size : int
        Planned visitors, from the schedule.
    arms : tuple of str
        Every arm of the experiment, control first.
    active : tuple of str
        Arms that can be served this round (dropped arms removed; control always active).
    cells : dict of str to float
        ``{"control": c, "explore": e, "optimized": 1 - c - e}``.
    segments : dict of int to str
        Segment id → rule text; visitors matching none (a missing covariate) get id -1.
    optimized : dict of int to dict of str to float
        Optimized-cell weights per segment id, -1 (the pooled weights) included.
    status : str
        ``"initial"`` (no posterior yet), ``"burn-in"`` (optimized cell uniform until every
        active arm has enough recorded visitors, and for a hurdle fit enough converters) or
        ``"optimized"``; ``"finished"`` for the final plan after an explicit schedule's last
        round (size 0: it assigns nobody; its weights are the final recommendation).
    seed : int
        The experiment seed (the hash key of assignment).
    experiment_id : str or None
        The experiment id that salts the assignment hash (None: the unsalted hash of plans
        written before experiments had ids).
    dropped : tuple of str
        Arms no longer served (dropped in this or an earlier round).
    graduation : list of dict
        ``(segment, arm)`` pairs with posterior probability of being best >= the graduation
        threshold and expected loss below the tolerance: candidates to ship, never shipped
        automatically.
    prob_best, expected_loss : dict of int to dict of str to float
        Per segment (and -1 pooled) the posterior summaries the weights came from (empty
        before the first fit).
    prob_best_mcse : dict of int to dict of str to float
        The Monte Carlo standard error of each ``prob_best`` (as
        :func:`pytyche.segment_summary`'s ``prob_best_mcse``); empty before the first fit.
    notes : dict
        Anything else the plan reports: burn-in counts (``arm_counts``, and for a hurdle fit
        ``arm_converters``) and what burn-in still waits for (``waiting_for``, one line per
        arm short of visitors or converters), the previous round's SRM check, the
        share of fitted visitors in no segment, the tree text.
    assigned : pandas.DataFrame
        Every assignment this plan has made (``visitor_id`` as text, ``cell``, ``segment``,
        ``arm``, ``propensity``), first assignment of each visitor kept: one row per
        ``visitor_id`` (unique).
    """

    def __init__(
        self,
        *,
        round: int,
        size: int,
        arms: Sequence[str],
        active: Sequence[str],
        cells: Mapping[str, float],
        segments: Mapping[int, str],
        optimized: Mapping[int, Mapping[str, float]],
        status: str,
        seed: int,
        experiment_id: str | None = None,
        dropped: Sequence[str] = (),
        graduation: Sequence[Mapping[str, Any]] = (),
        prob_best: Mapping[int, Mapping[str, float]] | None = None,
        expected_loss: Mapping[int, Mapping[str, float]] | None = None,
        prob_best_mcse: Mapping[int, Mapping[str, float]] | None = None,
        tree: Mapping[str, Any] | None = None,
        notes: Mapping[str, Any] | None = None,
    ):
        self.round = int(round)
        self.size = int(size)
        self.arms = check_arms(list(arms))
        self.active = tuple(a for a in self.arms if a in set(active))
        self.cells = {cell: float(cells[cell]) for cell in CELLS}
        self.segments = {int(k): str(v) for k, v in segments.items()}
        self.optimized = {
            int(s): {a: float(w.get(a, 0.0)) for a in self.arms} for s, w in optimized.items()
        }
        missing = sorted((set(self.segments) | {NO_SEGMENT}) - set(self.optimized))
        if missing:
            raise ValueError(f"optimized weights are missing for segment id(s) {missing}")
        for s, weights in self.optimized.items():
            total = sum(weights.values())
            if not math.isclose(total, 1.0, abs_tol=1e-9):
                raise ValueError(f"optimized weights of segment {s} sum to {total}, not 1")
        self.status = str(status)
        self.seed = int(seed)
        self.experiment_id = None if experiment_id is None else str(experiment_id)
        self.dropped = tuple(dropped)
        self.graduation = [dict(g) for g in graduation]
        self.prob_best = {int(k): dict(v) for k, v in (prob_best or {}).items()}
        self.expected_loss = {int(k): dict(v) for k, v in (expected_loss or {}).items()}
        self.prob_best_mcse = {int(k): dict(v) for k, v in (prob_best_mcse or {}).items()}
        self.tree = None if tree is None else json.loads(json.dumps(tree))
        self.notes = json.loads(json.dumps(dict(notes or {})))
        self.assigned = pd.DataFrame(
            {
                "visitor_id": pd.Series(dtype=object),
                "cell": pd.Series(dtype=object),
                "segment": pd.Series(dtype=np.int64),
                "arm": pd.Series(dtype=object),
                "propensity": pd.Series(dtype=np.float64),
            }
        )

    # -- probabilities ----------------------------------------------------------------------

    @property
    def segment_ids(self) -> list[int]:
        """Segment ids in plan order, -1 (no segment, pooled weights) last."""
        return [*self.segments, NO_SEGMENT]

    def cell_probability(self, cell: str) -> xr.DataArray:
        """P(arm | segment, cell): the arm weights inside one cell.

        Parameters
        ----------
        cell : {"control", "explore", "optimized"}

        Returns
        -------
        xarray.DataArray
            (segment, arm), rows summing to 1.

        Raises
        ------
        ValueError
            For an unknown cell.
        """
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
        ids = self.segment_ids
        table = np.zeros((len(ids), len(self.arms)))
        if cell == "control":
            table[:, 0] = 1.0
        elif cell == "explore":
            active = np.isin(self.arms, self.active)
            table[:, active] = 1.0 / active.sum()
        else:
            table[:] = [[self.optimized[s][a] for a in self.arms] for s in ids]
        return self._table(table, f"P(arm | segment, {cell} cell)")

    @property
    def effective_probability(self) -> xr.DataArray:
        """P(arm | segment) over all cells: the propensity of every assignment.

        Returns
        -------
        xarray.DataArray
            (segment, arm), rows summing to 1; segment -1 is the visitors in no segment.
        """
        total = sum(self.cells[c] * self.cell_probability(c) for c in CELLS)
        assert isinstance(total, xr.DataArray)  # CELLS is not empty, so this is no bare 0
        total.name = "effective_probability"
        return total

    def _table(self, values: np.ndarray, name: str) -> xr.DataArray:
        rules = [self.segments.get(s, "no segment (missing covariate)") for s in self.segment_ids]
        return xr.DataArray(
            values,
            dims=("segment", "arm"),
            coords={
                "segment": np.array(self.segment_ids, dtype=np.int64),
                "arm": np.array(self.arms, dtype=object),
                "rule": ("segment", np.array(rules, dtype=object)),
            },
            name=name,
        )

    # -- assignment -------------------------------------------------------------------------

    def segment_of(self, visitors: pd.DataFrame) -> np.ndarray:
        """The segment id of every visitor: the first segment whose rule matches, else -1.

        Parameters
        ----------
        visitors : pandas.DataFrame
            The covariates the segment rules use, one row per visitor.

        Returns
        -------
        numpy.ndarray
            int64 (visitor,).
        """
        n = len(visitors)
        rules = {s: SegmentRule.parse(text) for s, text in self.segments.items()}
        names = sorted({name for rule in rules.values() for name in rule.covariates})
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        covariates = visitor_covariates(visitors, names)
        if not names:
            covariates = xr.Dataset(coords={"visitor": np.arange(n)})
        member = membership(rules, covariates).values  # (segment, visitor)
        ids = np.array(list(rules), dtype=np.int64)
        matched = member.any(axis=0)
        return np.where(matched, ids[np.argmax(member, axis=0)], NO_SEGMENT).astype(np.int64)

    def assign(self, visitors: pd.DataFrame) -> pd.DataFrame:
        """Assign visitors to a cell and an arm, deterministically and stickily.

        A keyed hash of (experiment seed, visitor id) gives every visitor two fixed uniforms:
        ``v`` picks the cell (intervals control ``[0, c)``, explore ``[c, c + e)``, optimized
        ``[c + e, 1)``), ``u`` the arm inside the cell (the cell's arm weights for the
        visitor's segment laid out as cumulative intervals in the experiment's arm order).
        The same visitor in the same plan always gets the same row, whatever the row order:
        a visitor this plan already assigned gets the logged row again (even when their
        covariates changed since: the log wins), and an id repeated in `visitors` gets the
        row of its first occurrence.
        Across rounds a returning visitor stays in their cell and keeps their arm unless
        ``u`` leaves that arm's interval: the arm's weight in their segment and cell shrank,
        or an arm before it in arm order changed weight, or the visitor's segment changed.

        Parameters
        ----------
        visitors : pandas.DataFrame
            A ``visitor_id`` column and the covariates the segments use. A visitor with a
            missing covariate that a rule needs matches no segment and gets the pooled
            weights (segment -1).

        Returns
        -------
        pandas.DataFrame
            The same rows (same index) plus ``round``, ``cell``, ``segment``, ``arm`` and
            ``propensity`` (the effective probability of the arm served, over all cells).

        Raises
        ------
        TypeError
            When `visitors` is not a DataFrame.
        ValueError
            When the ``visitor_id`` column or a covariate a segment uses is missing, an id is
            missing, a column to add already exists, or the plan is the ``"finished"`` final
            plan (it assigns nobody).

        Examples
        --------
        >>> import pandas as pd
        >>> from pytyche.sequential import sequential_experiment
        >>> plan = sequential_experiment(["control", "A"], seed=1).plan()
        >>> out = plan.assign(pd.DataFrame({"visitor_id": ["u1", "u2", "u3"]}))
        >>> list(out.columns)
        ['visitor_id', 'round', 'cell', 'segment', 'arm', 'propensity']
        """
        check_visitor_table(visitors, "assignment hashes it")
        clash = [c for c in ("round", "cell", "segment", "arm", "propensity") if c in visitors]
        if clash:
            raise ValueError(
                f"visitors already has the column(s) {clash} that assign adds; drop them first"
            )
        if self.status == FINISHED:
            raise ValueError(
                f"the experiment is finished: round {self.round} is its final plan (the "
                "explicit schedule has no more rounds), which assigns nobody; serve its "
                "recommendation or start a new experiment"
            )
        keys = visitor_keys(visitors["visitor_id"].to_numpy(dtype=object))
        segment = self.segment_of(visitors)
        position = _positions(self.segment_ids, segment)
        cell_index, arm_index = self._hash_choices(keys, position)
        effective = self.effective_probability.values
        batch = pd.DataFrame(
            {
                "visitor_id": keys,
                "cell": np.array(CELLS, dtype=object)[cell_index],
                "segment": segment,
                "arm": np.array(self.arms, dtype=object)[arm_index],
                "propensity": effective[position, arm_index],
            }
        )
        # The log wins: visitors assigned before (or earlier in this batch) keep that row.
        first = ~pd.Index(keys).duplicated(keep="first")
        known = pd.Index(self.assigned["visitor_id"])
        new = first & (known.get_indexer(keys) < 0) if len(known) else first
        if new.any():
            self.assigned = pd.concat([self.assigned, batch[new]], ignore_index=True)
        log = batch  # every row new (the common case): its own row is the logged one
        if not new.all():
            log = self.assigned.iloc[pd.Index(self.assigned["visitor_id"]).get_indexer(keys)]
        out = visitors.copy()
        out["round"] = self.round
        for name in ("cell", "segment", "arm", "propensity"):
            out[name] = log[name].to_numpy()
        return out

    def _hash_choices(self, keys: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, ...]:
        """Cell and arm index of every visitor (``position``: row of their segment)."""
        cell_u, arm_u = visitor_uniforms(self.seed, keys, self.experiment_id)
        # A cell of weight 0 has an empty interval and is never chosen.
        weights = np.array([self.cells[c] for c in CELLS])
        cell_index = choose_interval(np.broadcast_to(weights, (len(keys), 3)), cell_u)
        arm_index = np.zeros(len(keys), dtype=np.int64)
        for k, cell in enumerate(CELLS):
            here = cell_index == k
            if here.any():
                table = self.cell_probability(cell).values[position[here]]
                arm_index[here] = choose_interval(table, arm_u[here])
        return cell_index, arm_index

    def to_growthbook(self, feature_key: str, hash_attribute: str = "id") -> dict[str, Any]:
        """The plan as GrowthBook features JSON: :func:`pytyche.sequential.to_growthbook`."""
        from .growthbook import to_growthbook  # local: that module builds on this one

        return to_growthbook(self, feature_key, hash_attribute)

    @property
    def policy_tree(self):
        """The policy tree that found this plan's segments (None before the first fit).

        Returns
        -------
        PolicyTreeResult or None
            Rebuilt from the plan's description, without its posterior.
        """
        return None if self.tree is None else PolicyTreeResult.from_dict(self.tree)

    @property
    def n_unsegmented(self) -> int:
        """Visitors assigned so far by this plan who matched no segment (pooled weights)."""
        return int((self.assigned["segment"] == NO_SEGMENT).sum())

    # -- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description of the plan (assignments not included).

        Returns
        -------
        dict
            ``RoundPlan.from_dict(plan.to_dict())`` rebuilds an equal plan; floats round-trip
            exactly through ``json``.
        """
        return {
            "pytyche_round_plan": PLAN_FORMAT,
            "round": self.round,
            "size": self.size,
            "arms": list(self.arms),
            "active": list(self.active),
            "cells": dict(self.cells),
            "segments": {str(k): v for k, v in self.segments.items()},
            "optimized": {str(k): v for k, v in self.optimized.items()},
            "status": self.status,
            "seed": self.seed,
            "experiment_id": self.experiment_id,
            "dropped": list(self.dropped),
            "graduation": self.graduation,
            "prob_best": {str(k): v for k, v in self.prob_best.items()},
            "expected_loss": {str(k): v for k, v in self.expected_loss.items()},
            "prob_best_mcse": {str(k): v for k, v in self.prob_best_mcse.items()},
            "tree": self.tree,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundPlan:
        """Rebuild a plan from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            As returned by :meth:`to_dict` or read back from its JSON.

        Returns
        -------
        RoundPlan

        Raises
        ------
        ValueError
            When `data` is not a round plan description of a known version.
        """
        version = data.get("pytyche_round_plan") if isinstance(data, Mapping) else None
        if version != PLAN_FORMAT:
            raise ValueError(
                f"not a pytyche round plan description (version {PLAN_FORMAT}); got "
                f"pytyche_round_plan={version!r}"
            )
        return cls(
            round=data["round"],
            size=data["size"],
            arms=data["arms"],
            active=data["active"],
            cells=data["cells"],
            segments={int(k): v for k, v in data["segments"].items()},
            optimized={int(k): v for k, v in data["optimized"].items()},
            status=data["status"],
            seed=data["seed"],
            # Absent from descriptions written before experiments had ids: unsalted hash.
            experiment_id=data.get("experiment_id"),
            dropped=data["dropped"],
            graduation=data["graduation"],
            prob_best={int(k): v for k, v in data["prob_best"].items()},
            expected_loss={int(k): v for k, v in data["expected_loss"].items()},
            # Absent from descriptions written before the MCSE was reported.
            prob_best_mcse={int(k): v for k, v in data.get("prob_best_mcse", {}).items()},
            tree=data["tree"],
            notes=data["notes"],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoundPlan):
            return NotImplemented
        return json.dumps(self.to_dict(), sort_keys=True) == json.dumps(
            other.to_dict(), sort_keys=True
        )

    # Mutable (the assignment log grows). Typeshed marks list and dict unhashable the same way.
    __hash__ = None  # type: ignore[assignment]

    # -- display ----------------------------------------------------------------------------

    def __str__(self) -> str:
        c, e, o = (self.cells[cell] for cell in CELLS)
        lines = [
            f"Round {self.round} plan: {self.size:,} visitors, arms {', '.join(self.active)}"
            + (f" (dropped: {', '.join(self.dropped)})" if self.dropped else ""),
            f"cells: control {c:.1%} (always {self.arms[0]}), explore {e:.1%} (uniform), "
            f"optimized {o:.1%} ({self._status_text()})",
        ]
        effective = self.effective_probability
        for s in self.segment_ids:
            row = effective.sel(segment=s)
            split = ", ".join(f"{a} {float(row.sel(arm=a)):.1%}" for a in self.active)
            lines.append(f"  {self._label(s)}: {split}")
        unsegmented = self.notes.get("unsegmented_share")
        if unsegmented:
            lines.append(
                f"{unsegmented:.1%} of fitted visitors matched no segment (a missing covariate)"
            )
        if self.n_unsegmented:
            lines.append(f"{self.n_unsegmented:,} visitor(s) assigned so far matched no segment")
        newly = self.notes.get("newly_dropped") or []
        if newly:
            lines.append(
                f"dropped this round: {', '.join(newly)} (P(best) below "
                f"{self.notes.get('drop_threshold')} in every segment)"
            )
        for g in self.graduation:
            lines.append(
                f"graduation candidate: {g['arm']} in segment {g['segment']} "
                f"(P(best) {self._with_mcse(g)}, expected loss {g['expected_loss']:.4g})"
            )
        if self.prob_best:
            mcse_text = " ± Monte Carlo standard error" if self.prob_best_mcse else ""
            lines.append(f"P(best){mcse_text}:")
            for s, p in self.prob_best.items():
                mcse = self.prob_best_mcse.get(s, {})
                values = ", ".join(f"{a} {_plus_minus(v, mcse.get(a))}" for a, v in p.items())
                lines.append(f"  {self._label(s)}: {values}")
        srm = self.notes.get("srm")
        if srm:
            flag = "FLAGGED" if srm["flagged"] else "ok"
            lines.append(
                f"sample ratio check of round {srm['round']}: p = {srm['p_value']:.3g} ({flag})"
            )
        return "\n".join(lines)

    def _label(self, s: int) -> str:
        return f"segment {s} ({self.segments.get(s)})" if s != NO_SEGMENT else "no segment (pooled)"

    def _with_mcse(self, candidate: Mapping[str, Any]) -> str:
        """A graduation candidate's P(best), with its MCSE when the plan has it."""
        mcse = self.prob_best_mcse.get(int(candidate["segment"]), {}).get(candidate["arm"])
        return _plus_minus(candidate["prob_best"], mcse)

    def _status_text(self) -> str:
        if self.status == "initial":
            return "uniform: no posterior yet"
        if self.status == "burn-in":
            counts = self.notes.get("arm_counts", {})
            need = self.notes.get("min_visitors_per_arm")
            have = ", ".join(f"{a} {counts.get(a, 0)}" for a in self.active)
            text = f"uniform: burn-in until every arm has {need} visitors; so far {have}"
            converters = self.notes.get("min_converters_per_arm")
            if converters:
                converted = self.notes.get("arm_converters", {})
                have = ", ".join(f"{a} {converted.get(a, 0)}" for a in self.active)
                text += f"; and {converters} converters (outcome > 0), so far {have}"
            return text
        if self.status == FINISHED:
            return "finished: the final plan after the schedule's last round; assigns nobody"
        return "per-segment Thompson weights"

    def __repr__(self) -> str:
        return (
            f"<RoundPlan round={self.round} size={self.size} status={self.status!r} "
            f"segments={len(self.segments)} active={list(self.active)}>"
        )

    def _repr_html_(self) -> str:
        return _plan_html(self)


def _plan_html(plan: RoundPlan) -> str:
    """The Jupyter view of a plan: cells, per-segment weights, candidates and checks."""
    c, e, o = (plan.cells[cell] for cell in CELLS)
    arms = ", ".join(plan.active)
    if plan.dropped:
        arms += f" (dropped: {', '.join(plan.dropped)})"
    summary = _html.fields(
        [
            ("status", f"{plan.status} (optimized cell: {plan._status_text()})"),
            ("active arms", arms),
            ("planned visitors", _html.integer(plan.size)),
            ("seed", plan.seed),
            (
                "assigned so far",
                f"{len(plan.assigned):,} ({plan.n_unsegmented:,} in no segment)",
            ),
        ]
    )
    cells = _html.table(
        ["cell", "weight", "serves"],
        [
            ["control", _html.Cell(_html.percent(c), c), f"always {plan.arms[0]}"],
            ["explore", _html.Cell(_html.percent(e), e), "uniform over the active arms"],
            ["optimized", _html.Cell(_html.percent(o), o), "the segment's weights below"],
        ],
    )
    effective = plan.effective_probability.values

    def label(s: int) -> str:
        return plan.segments.get(s, "no segment (missing covariate): pooled weights")

    def weights(table: Mapping[int, Mapping[str, float]] | np.ndarray) -> str:
        rows = []
        for i, s in enumerate(plan.segment_ids):
            values = [
                float(effective[i, k] if isinstance(table, np.ndarray) else table[s][arm])
                for k, arm in enumerate(plan.arms)
            ]
            rows.append([s, label(s), *(_html.Cell(_html.percent(v), v) for v in values)])
        return _html.table(["segment", "rule", *plan.arms], rows)

    posterior = ""
    if plan.prob_best:
        rows = [
            [
                s,
                label(s),
                arm,
                _plus_minus(p.get(arm), plan.prob_best_mcse.get(s, {}).get(arm)),
                _html.number(plan.expected_loss.get(s, {}).get(arm)),
            ]
            for s, p in plan.prob_best.items()
            for arm in p
        ]
        table = _html.table(["segment", "rule", "arm", "P(best)", "expected loss"], rows)
        posterior = _html.details("posterior summaries the weights came from", table)
    notes = []
    unsegmented = plan.notes.get("unsegmented_share")
    if unsegmented:
        notes.append(f"{unsegmented:.1%} of fitted visitors matched no segment")
    newly = plan.notes.get("newly_dropped") or []
    if newly:
        notes.append(
            f"dropped this round: {', '.join(newly)} (P(best) below "
            f"{plan.notes.get('drop_threshold')} in every segment)"
        )
    notes += [
        f"graduation candidate: {g['arm']} in segment {g['segment']} (P(best) "
        f"{plan._with_mcse(g)}, expected loss {g['expected_loss']:.4g})"
        for g in plan.graduation
    ]
    srm = plan.notes.get("srm")
    if srm:
        flag = "FLAGGED" if srm["flagged"] else "ok"
        notes.append(
            f"sample ratio check of round {srm['round']}: p = {srm['p_value']:.3g} ({flag})"
        )
    tree = plan.policy_tree
    return _html.view(
        f"RoundPlan: round {plan.round}, {plan.size:,} visitors, {plan.status}",
        summary,
        cells,
        _html.paragraph("Optimized cell: P(arm | segment)"),
        weights(plan.optimized),
        _html.paragraph("Effective probability over all cells (the logged propensity)"),
        weights(effective),
        _html.bullets(notes),
        posterior,
        "" if tree is None else _html.details("policy tree", _html.preformatted(tree)),
    )


def _plus_minus(p: float | None, mcse: float | None) -> str:
    """``"0.620 ± 0.012"``: a P(best) and its Monte Carlo standard error (when known)."""
    text = _html.number(p, ".3f")
    return text if mcse is None else f"{text} ± {_html.number(mcse, '.3f')}"


def _positions(ids: Sequence[int], segment: np.ndarray) -> np.ndarray:
    """Row of each visitor's segment in a (segment, arm) table ordered like ``ids``."""
    position = pd.Index(np.asarray(ids, dtype=np.int64)).get_indexer(
        np.asarray(segment, dtype=np.int64)
    )
    if (position < 0).any():
        unknown = sorted(set(np.asarray(segment)[position < 0].tolist()))[:MAX_SHOWN]
        raise KeyError(f"segment id(s) {unknown} are not in this plan (ids {list(ids)})")
    return position.astype(np.int64)
