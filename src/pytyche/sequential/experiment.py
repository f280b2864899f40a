"""The sequential experiment: plan a round, record its outcomes, advance to the next plan."""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import secrets
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import _html
from .._mcse import effective_sample_size, probability_mcse
from .._version import __version__
from ..analysis import segment_means
from ..correction import MAX_ABS_OUTCOME
from ..data import observed_data
from ..fitting import MAX_TEXT_LEVELS, fit, infer_family
from ..policy_tree import fit_policy_tree
from ..results import CHAIN, DRAW
from ..segments import covariate_kind
from ..setup_check import MIN_ID_VISITORS, check_setup, converters_needed
from .assign import visitor_keys
from .config import check_config
from .plan import (
    CELLS,
    FINISHED,
    NO_SEGMENT,
    RoundPlan,
    check_schedule,
    exploration_floor,
    round_size,
    schedule_rounds,
)
from .srm import SampleRatioMismatchWarning, assignment_counts, srm_test

__all__ = [
    "LOG_COORDS",
    "SequentialExperiment",
    "data_hash",
    "logged_observed",
    "sequential_experiment",
    "visit_keys",
]

# Visitor coordinates the experiment logs beside the covariates; never covariates of a fit.
LOG_COORDS = ("propensity", "cell", "round", "segment")
# The logged propensity enters the fit as a covariate, which must lie strictly inside (0, 1):
# probabilities of arms a round could not serve (dropped) are raised to this.
FIT_PROPENSITY_FLOOR = 1e-6
MAX_SHOWN = 5


def sequential_experiment(
    arms: Sequence[str],
    *,
    family: str = "hurdle",
    min_control_weight: float = 0.05,
    min_explore_weight: float = 0.05,
    epsilon: float = 0.02,
    max_segment_depth: int = 2,
    min_segment_share: float = 0.1,
    min_visitors_per_arm: int = 100,
    schedule=None,
    fit_options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    name: str | None = None,
    drop_threshold: float = 0.01,
    graduation_threshold: float = 0.95,
    graduation_loss: float = 0.01,
) -> SequentialExperiment:
    """Start a sequential experiment: rounds of Control + Explore + Optimized cells.

    Round 0 has no posterior: control keeps its cell, everything else is uniform over the
    arms. After each round, :meth:`SequentialExperiment.advance` refits the posterior on all
    rounds, refits the policy tree and plans the next round.

    Parameters
    ----------
    arms : sequence of str
        Arm names, control first; at least 2, distinct.
    family : {"hurdle", "binary", "continuous", "auto"}, default "hurdle"
        Posterior family of the fits (see :func:`pytyche.fit`).
    min_control_weight : float, default 0.05
        Share of traffic in the control cell (always served control): a holdout for lift.
    min_explore_weight : float, default 0.05
        Share of traffic in the explore cell (uniform over the active arms). With
        `min_control_weight`, at most 1; the rest is the optimized cell.
    epsilon : float, default 0.02
        Exploration floor inside the optimized cell (as :func:`pytyche.thompson_allocation`).
    max_segment_depth : int, default 2
        Depth of the policy tree that finds the segments (0: one segment, no splits).
    min_segment_share : float, default 0.1
        Smallest segment, as a share of the fitted visitors, in (0, 0.5].
    min_visitors_per_arm : int, default 100
        Burn-in: the optimized cell stays uniform (and no fit is made) until every active arm
        has this many recorded visitors, and, for a hurdle fit, at least
        :data:`pytyche.setup_check.MIN_CONVERTERS` converters (outcome > 0); the plan's notes
        say what is still missing.
    schedule : None, int, ("doubling", n), ("fixed", n) or list of int
        Round sizes: None doubles from 1,000; see :func:`~pytyche.sequential.check_schedule`.
    fit_options : mapping, optional
        Options of :func:`pytyche.fit` (``n_draws``, ``n_trees_mu``, ...), checked now (names
        and value types; see :func:`~pytyche.sequential.config.check_config`). Its ``seed``
        (default: `seed`) plus the round index, modulo 2**31, seeds each round's fit.
        ``propensity`` and ``family`` are set by the experiment.
    seed : int, optional
        Key of the assignment hash and base of the fit seeds; 0 to 2**64 - 1. Default: a fresh
        random 64-bit seed (``secrets.randbits(64)``), kept in ``config["seed"]``.
    name : str, optional
        The experiment id (``config["experiment_id"]``), which salts the assignment hash:
        two experiments with different ids assign independently, even with the same seed.
        Default: a fresh random id (``uuid.uuid4().hex``).
    drop_threshold : float, default 0.01
        An arm (never control) whose posterior probability of being best is below this in
        every segment is dropped from the next round on.
    graduation_threshold : float, default 0.95
        A (segment, arm) pair whose probability of being best is at least this ...
    graduation_loss : float, default 0.01
        ... and whose expected loss is at most this fraction of the segment's best posterior
        mean metric is reported as a graduation candidate (never shipped automatically); a
        finite non-negative number.

    Returns
    -------
    SequentialExperiment

    Raises
    ------
    ValueError
        For weights outside [0, 1], ``min_control_weight + min_explore_weight > 1``, fewer
        than 2 arms, duplicate arm names, a bad schedule, depth, share, count, seed, name or
        graduation loss, an unknown fit option or one of the wrong type; the message names
        the argument and its value (and, for a fit option, lists the valid ones).

    Examples
    --------
    >>> from pytyche.sequential import sequential_experiment
    >>> exp = sequential_experiment(["control", "A", "B"], schedule=("fixed", 2_000), seed=1)
    >>> plan = exp.plan()
    >>> plan.round, plan.size, plan.status
    (0, 2000, 'initial')
    """
    if seed is None:
        seed = secrets.randbits(64)  # a fresh key: no two experiments share an assignment
    config = {
        "arms": arms,
        "family": family,
        "min_control_weight": min_control_weight,
        "min_explore_weight": min_explore_weight,
        "epsilon": epsilon,
        "max_segment_depth": max_segment_depth,
        "min_segment_share": min_segment_share,
        "min_visitors_per_arm": min_visitors_per_arm,
        "schedule": _schedule_json(check_schedule(schedule)),
        "fit_options": {} if fit_options is None else fit_options,
        "seed": seed,
        "drop_threshold": drop_threshold,
        "graduation_threshold": graduation_threshold,
        "graduation_loss": graduation_loss,
        "experiment_id": uuid.uuid4().hex if name is None else name,
    }
    return SequentialExperiment(check_config(config))


def _schedule_json(schedule: tuple) -> list:
    kind, value = schedule
    return [kind, list(value) if kind == "explicit" else value]


def _schedule_tuple(schedule: list) -> tuple:
    kind, value = schedule
    return (kind, tuple(value) if kind == "explicit" else value)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


class SequentialExperiment:
    """A round-by-round adaptive experiment; build it with :func:`sequential_experiment`.

    Parameters
    ----------
    config : dict
        The validated settings (as :func:`sequential_experiment` builds them).
    state : dict, optional
        Plans, round records, recorded data: used by
        :func:`~pytyche.sequential.open_experiment` to resume.

    Attributes
    ----------
    config : dict
        The experiment's settings.
    posterior : BCFResult or None
        The latest fit (None before the first fit and after resuming from disk).
    store_version : tuple of (pathlib.Path, int) or None
        The store (resolved path) and its version this experiment was opened from or last
        saved to; None before either. A save refuses a store that has moved past it.
    """

    def __init__(self, config: Mapping[str, Any], state: Mapping[str, Any] | None = None):
        self.config = json.loads(json.dumps(dict(config)))
        self.arms = tuple(self.config["arms"])
        self.posterior = None
        self.store_version: tuple[Any, int] | None = None
        if state is None:
            first = RoundPlan(
                round=0,
                size=round_size(self._schedule, 0),
                arms=self.arms,
                active=self.arms,
                cells=self._cells,
                segments={0: "everyone"},
                optimized=self._uniform_weights(self.arms, [0]),
                status="initial",
                seed=self.config["seed"],
                experiment_id=self.config.get("experiment_id"),
            )
            self._plans = [first]
            self._rounds = [self._round_record(first, None)]
            self._data: list[xr.Dataset | None] = [None]
        else:
            self._plans = list(state["plans"])
            self._rounds = [dict(r) for r in state["rounds"]]
            self._data = list(state["data"])
        state = state or {}
        # The audit trail of removals, and per round how often its recorded rows changed.
        self._events: list[dict] = copy.deepcopy(list(state.get("events", [])))
        self._generation = [int(g) for g in state.get("generation", [0] * len(self._plans))]
        # Per round, what record's covariate checks need of its data (kinds, text levels),
        # keyed by (generation, rows): a batch reads only itself, never the rounds before.
        self._summaries: dict[int, tuple[tuple[int, int], dict[str, _ColumnSummary]]] = {}

    # -- settings ---------------------------------------------------------------------------

    @property
    def _schedule(self) -> tuple:
        return _schedule_tuple(self.config["schedule"])

    @property
    def _cells(self) -> dict[str, float]:
        c = self.config["min_control_weight"]
        e = self.config["min_explore_weight"]
        return {"control": c, "explore": e, "optimized": max(0.0, 1.0 - c - e)}

    @staticmethod
    def _uniform_weights(active: Sequence[str], ids: Sequence[int]) -> dict:
        weights = {a: 1.0 / len(active) for a in active}
        return {int(s): dict(weights) for s in [*ids, NO_SEGMENT]}

    def _round_record(self, plan: RoundPlan, fit: Mapping[str, Any] | None) -> dict:
        return {
            "round": plan.round,
            "plan": json.dumps(plan.to_dict(), sort_keys=True),
            "seed": self.config["seed"],
            "fit_options": json.dumps((fit or {}).get("options", {}), sort_keys=True),
            "data_hash": (fit or {}).get("data_hash", ""),
            "fitted_visitors": int((fit or {}).get("visitors", 0)),
            "package_version": __version__,
            "planned_at": _now(),
            "closed_at": "",
        }

    # -- public -----------------------------------------------------------------------------

    @property
    def round(self) -> int:
        """Index of the current round (the one :meth:`plan` returns)."""
        return self._plans[-1].round

    def plan(self) -> RoundPlan:
        """The current round's plan.

        Returns
        -------
        RoundPlan
            The same object until :meth:`advance`; its :meth:`RoundPlan.assign` logs every
            assignment, which :meth:`record` checks against.
        """
        return self._plans[-1]

    @property
    def plans(self) -> tuple[RoundPlan, ...]:
        """Every round's plan, round 0 first."""
        return tuple(self._plans)

    @property
    def finished(self) -> bool:
        """Whether the explicit schedule is done: the current plan is the final one."""
        return self.plan().status == FINISHED

    def recorded(self) -> xr.Dataset | None:
        """All recorded visits of all rounds, or None before the first :meth:`record`.

        A returning visitor (the same id recorded in several rounds) has one row per visit:
        the ``visitor`` index is the visit key ``"{visitor id}@{round}"`` (unique, see
        :func:`visit_keys`), and the coordinate ``visitor_id`` holds the id itself.

        Returns
        -------
        xarray.Dataset or None
            Observed data (visitor coordinates ``variant``, ``outcome``, ``propensity``,
            ``cell``, ``round``, ``segment``, the covariates and ``visitor_id``), rows in
            recording order.
        """
        rounds = [r for r, d in enumerate(self._data) if d is not None]
        if not rounds:
            return None
        parts = [d for d in self._data if d is not None]
        data = _concat_visits(parts)
        ids = np.asarray(data.indexes["visitor"], dtype=object)
        # A part holds one round's visits: keyed round by round, without reading `round`.
        keys = np.concatenate(
            [visit_keys(p.indexes["visitor"], r) for r, p in zip(rounds, parts, strict=True)]
        )
        return data.assign_coords(visitor_id=("visitor", ids), visitor=keys)

    def record(self, observed: xr.Dataset) -> None:
        """Add outcomes of the current round.

        Everything :meth:`advance` will need is checked here, and a batch with any problem is
        refused whole (nothing recorded): so no recorded data can make a later fit fail.

        Parameters
        ----------
        observed : xarray.Dataset
            Observed data as :func:`pytyche.observed_data` builds it (e.g. from
            :func:`logged_observed`): the ``visitor`` index holds the visitor ids; coordinates
            ``variant`` (the arm served), ``outcome``, ``propensity`` and the covariates;
            ``cell``, ``round`` and ``segment``, when present, are checked too. May be called
            several times per round with different visitors; a visitor of an earlier round
            recorded again is a returning visitor (a new visit, see :meth:`recorded`).
            Covariates removed with :meth:`remove_covariate` are left out.

        Raises
        ------
        TypeError
            When `observed` is not a Dataset.
        ValueError
            Naming the column and up to 5 visitor ids: when a coordinate is missing; a visitor
            was never assigned by the current plan, is listed twice or is already recorded
            this round; a visitor's arm, propensity, cell, round or segment differs from its
            assignment; an outcome is not a finite number within ±1e30, or for the family is
            negative (hurdle) or not 0/1 (binary); a covariate is infinite, of an unsupported
            kind, of another kind (text, numbers, booleans) than in earlier batches, a
            boolean with missing values, or per-visitor text (a session id, an e-mail: more
            distinct values over all recorded visits than a fit takes, or a different value
            for every one of at least 20 visits); the
            covariates differ from earlier rounds'; or the experiment is finished.
        """
        if not isinstance(observed, xr.Dataset):
            raise TypeError(f"observed must be an xarray.Dataset, got {type(observed).__name__}")
        plan = self.plan()
        if plan.status == FINISHED:
            raise ValueError(
                f"the experiment is finished: round {plan.round} is its final plan, which "
                "assigns nobody; nothing can be recorded"
            )
        keys = _observed_keys(observed)
        logged = self._logged_rows(plan, keys)
        arm = _text(observed["variant"].values)
        want_arm = _text(logged["arm"].to_numpy())
        _refuse(arm != want_arm, keys, "were served another arm", got=arm, want=want_arm)
        propensity = np.asarray(observed["propensity"].values, dtype=np.float64)
        want = logged["propensity"].to_numpy(dtype=np.float64)
        _refuse(
            ~np.isclose(propensity, want, rtol=1e-9, atol=0.0),
            keys,
            "have a propensity that differs from the assignment",
            got=propensity,
            want=want,
        )
        checks = {
            "cell": _text(logged["cell"].to_numpy()),
            "segment": logged["segment"].to_numpy(),
            "round": np.full(keys.size, plan.round),
        }
        for name, expected in checks.items():
            if name in observed.variables:
                values = np.asarray(observed[name].values)
                values = _text(values) if name == "cell" else values.astype(np.int64)
                _refuse(
                    values != expected,
                    keys,
                    f"have a {name} that differs from the plan",
                    got=values,
                    want=expected,
                )
        coords = {
            # The log's own id objects: one string per visitor in memory, not two.
            "visitor": ("visitor", logged["visitor_id"].to_numpy(dtype=object)),
            "variant": ("visitor", _shared_text(arm)),
            "outcome": ("visitor", self._checked_outcome(observed, keys)),
            "propensity": ("visitor", want),
            "cell": ("visitor", _shared_text(checks["cell"])),
            "round": ("visitor", checks["round"].astype(np.int64)),
            "segment": ("visitor", checks["segment"].astype(np.int64)),
        }
        for name, (dim, values) in self._checked_covariates(observed, keys).items():
            coords[name] = (dim, _shared_text(values) if values.dtype == object else values)
        part = xr.Dataset(coords=coords)
        current = self._data[-1]
        before = {} if current is None else self._round_summary(len(self._data) - 1)
        combined = part if current is None else _concat_visits([current, part])
        self._data[-1] = combined
        # The round's summary grows by the batch's: the round is never read again for it.
        batch = {n: _ColumnSummary.of(n, part[n].values) for n in self._covariate_names() or []}
        merged = {n: before[n].merged(s) if n in before else s for n, s in batch.items()}
        token = (self._generation[-1], combined.sizes["visitor"])
        self._summaries[len(self._data) - 1] = (token, merged)

    def _logged_rows(self, plan: RoundPlan, keys: np.ndarray) -> pd.DataFrame:
        """The assignment-log rows of ``keys``: each listed once, assigned, not yet recorded."""
        _refuse(pd.Index(keys).duplicated(), keys, "are listed more than once in observed")
        log = plan.assigned
        where = pd.Index(log["visitor_id"]).get_indexer(keys)  # the log is unique by id
        _refuse(where < 0, keys, f"were never assigned by the round {plan.round} plan")
        current = self._data[-1]
        if current is not None:
            _refuse(
                current.indexes["visitor"].get_indexer(keys) >= 0,
                keys,
                f"are already recorded in round {plan.round}",
            )
        return log.iloc[where]

    def _checked_outcome(self, observed: xr.Dataset, keys: np.ndarray) -> np.ndarray:
        """The outcome as float64, once every value is one the configured family can fit."""
        values = np.asarray(observed["outcome"].values)
        if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise ValueError(
                f"column 'outcome' has dtype {values.dtype}; expected numbers (the metric of "
                "each visitor)"
            )
        outcome = values.astype(np.float64)
        _refuse_values(
            ~np.isfinite(outcome),
            keys,
            "outcome",
            "is NaN or infinite",
            outcome,
            "record a number for every visitor (0 when nothing happened)",
        )
        with np.errstate(invalid="ignore"):
            huge = np.abs(outcome) > MAX_ABS_OUTCOME
        _refuse_values(
            huge,
            keys,
            "outcome",
            f"is beyond ±{MAX_ABS_OUTCOME:g}",
            outcome,
            "rescale the outcome, e.g. to thousands of its unit",
        )
        family = self.config["family"]
        if family == "hurdle":
            _refuse_values(
                outcome < 0,
                keys,
                "outcome",
                "is negative",
                outcome,
                "a hurdle fit needs outcomes >= 0 (record a refund as 0, or start the "
                "experiment with family='continuous')",
            )
        elif family == "binary":
            _refuse_values(
                ~np.isin(outcome, (0.0, 1.0)),
                keys,
                "outcome",
                "is not 0 or 1",
                outcome,
                "a binary fit needs a 0/1 outcome (or start with family='continuous')",
            )
        return outcome

    def _checked_covariates(self, observed: xr.Dataset, keys: np.ndarray) -> dict:
        """The batch's covariates, once each is one every later fit can take."""
        removed = self.removed_covariates
        names = sorted(
            str(n)
            for n, v in observed.variables.items()
            if v.dims == ("visitor",)
            and n not in ("visitor", "variant", "outcome", *LOG_COORDS)
            and n not in removed
        )
        if "visitor_id" in names:
            raise ValueError(
                "observed has a covariate 'visitor_id'; that name is reserved for the ids of "
                "recorded visits: rename it, or make it the 'visitor' index"
            )
        known = self._covariate_names()
        if known is not None and names != known:
            raise ValueError(
                f"observed has covariates {names} but earlier rounds had {known}; every "
                "round needs the same covariates (exp.remove_covariate(name, reason=...) "
                "drops one from every round)"
            )
        earlier = [self._round_summary(r) for r, d in enumerate(self._data) if d is not None]
        return {
            name: (
                "visitor",
                _checked_covariate(
                    name, observed[name].values, keys, [e[name] for e in earlier if name in e]
                ),
            )
            for name in names
        }

    def _round_summary(self, r: int) -> dict[str, _ColumnSummary]:
        """Kinds and text levels of round ``r``'s covariates, read once per change of it."""
        data = self._data[r]
        assert data is not None  # only rounds with recorded visits are summarised
        token = (self._generation[r], data.sizes["visitor"])
        cached = self._summaries.get(r)
        if cached is None or cached[0] != token:
            names = [n for n in self._covariate_names() or [] if n in data.coords]
            cached = (token, {n: _ColumnSummary.of(n, data[n].values) for n in names})
            self._summaries[r] = cached
        return cached[1]

    def _covariate_names(self) -> list[str] | None:
        for d in self._data:
            if d is not None:
                return sorted(
                    str(n)
                    for n in d.coords
                    if n not in ("visitor", "variant", "outcome", *LOG_COORDS)
                )
        return None

    # -- removing recorded data -------------------------------------------------------------

    @property
    def events(self) -> list[dict]:
        """The audit trail of changes to recorded data, oldest first.

        Returns
        -------
        list of dict
            JSON-able ``{"time": UTC ISO timestamp, "action": "remove_visitors" or
            "remove_covariate", "details": {...}, "reason": text}`` (a copy).
        """
        return copy.deepcopy(self._events)

    @property
    def removed_covariates(self) -> tuple[str, ...]:
        """Covariates removed with :meth:`remove_covariate`; :meth:`record` leaves them out."""
        return tuple(
            e["details"]["covariate"] for e in self._events if e["action"] == "remove_covariate"
        )

    def remove_visitors(self, ids, *, reason: str, round: int | None = None) -> int:
        """Remove recorded visits (bots, test traffic, a logging error), kept in the audit trail.

        The rounds' assignment logs are kept (the visitors were assigned); the next
        :meth:`advance` fits without the removed rows. Each round that loses rows gets its
        ``generation`` (in :meth:`state`) bumped.

        Parameters
        ----------
        ids : str or iterable
            Visitor ids (their text form, as :func:`~pytyche.sequential.visitor_uniforms`
            reads them).
        reason : str
            Why: kept in :attr:`events`.
        round : int, optional
            Remove only that round's visits; default every round's.

        Returns
        -------
        int
            Visits removed.

        Raises
        ------
        ValueError
            For an empty reason, a round that does not exist, or an id with no recorded visit
            (in `round`, when given), naming up to 5; nothing is removed then.
        """
        reason = _check_reason(reason)
        keys = pd.Index(visitor_keys([ids] if isinstance(ids, str) else ids)).unique()
        rounds = range(len(self._data)) if round is None else [self._check_round(round)]
        data, generation = list(self._data), list(self._generation)
        found = np.zeros(len(keys), dtype=bool)
        removed: dict[str, int] = {}
        for r in rounds:
            part = data[r]
            if part is None:
                continue
            drop = keys.get_indexer(part.indexes["visitor"]) >= 0
            found |= part.indexes["visitor"].get_indexer(keys) >= 0
            if drop.any():
                data[r] = None if drop.all() else part.isel(visitor=np.flatnonzero(~drop))
                generation[r] += 1
                removed[str(r)] = int(drop.sum())
        where = "" if round is None else f" in round {round}"
        _refuse(~found, keys.to_numpy(), f"have no recorded visit{where}")
        self._data, self._generation = data, generation
        details = {"visitors": [str(k) for k in keys], "removed_per_round": removed}
        self._events.append(_event("remove_visitors", details, reason))
        return sum(removed.values())

    def remove_covariate(self, name: str, *, reason: str) -> None:
        """Drop a covariate from every recorded round, and from every later batch.

        The way out for a covariate no fit can take (a per-visitor text column recorded in
        an earlier batch) or that should not be used. Kept in the audit trail; every round
        with data gets its ``generation`` bumped.

        Parameters
        ----------
        name : str
            A covariate of the recorded data.
        reason : str
            Why: kept in :attr:`events`.

        Raises
        ------
        ValueError
            For an empty reason, or a name that is not a recorded covariate (listing them).
        """
        reason = _check_reason(reason)
        known = self._covariate_names() or []
        if name not in known:
            raise ValueError(f"{name!r} is not a recorded covariate; the covariates are {known}")
        self._data = [None if d is None else d.drop_vars(name) for d in self._data]
        self._generation = [
            g + (d is not None) for g, d in zip(self._generation, self._data, strict=True)
        ]
        self._events.append(_event("remove_covariate", {"covariate": name}, reason))

    def _check_round(self, round: Any) -> int:
        if isinstance(round, bool) or not isinstance(round, Integral):
            raise ValueError(f"round must be an integer, got {round!r}")
        if not 0 <= int(round) < len(self._data):
            raise ValueError(f"round must be 0..{len(self._data) - 1}, got {round!r}")
        return int(round)

    # -- SRM --------------------------------------------------------------------------------

    def srm(self, threshold: float = 0.001) -> xr.Dataset:
        """Sample ratio mismatch: recorded vs planned counts per (round, segment, cell, arm).

        A round's expected count of (segment, cell, arm) is the segment's recorded visitors
        times the cell's weight times the arm's probability in that cell for that segment;
        a round is flagged by one chi-square over all its (segment, cell, arm) counts. The
        segments pooled into one (cell, arm) table are tested beside it (``cell_arm_*``).

        Parameters
        ----------
        threshold : float, default 0.001
            p-values below it are flagged.

        Returns
        -------
        xarray.Dataset
            As :func:`~pytyche.sequential.srm_test` with counts by segment, over the rounds
            with recorded visitors; ``segment`` holds every round's segment ids (a round's
            ids are its plan's; -1 is "no segment").

        Raises
        ------
        ValueError
            When nothing has been recorded, or `threshold` is not in (0, 1).
        """
        rounds = [r for r, d in enumerate(self._data) if d is not None]
        if not rounds:
            raise ValueError("nothing recorded yet: record a round before checking its counts")
        observed, expected = self._srm_tables(rounds)
        return srm_test(observed, expected, threshold)

    def _srm_tables(self, rounds: Sequence[int]) -> tuple[xr.DataArray, xr.DataArray]:
        """Recorded and expected visitors per (round, segment, cell, arm)."""
        segments = sorted({s for r in rounds for s in self._plans[r].segment_ids})
        shape = (len(rounds), len(segments), len(CELLS), len(self.arms))
        observed = np.zeros(shape, dtype=np.int64)
        expected = np.zeros(shape)
        for i, r in enumerate(rounds):
            data, plan = self._data[r], self._plans[r]
            assert data is not None  # srm passes only the rounds with recorded visitors
            ids = plan.segment_ids
            counts = assignment_counts(
                data["segment"].data, data["cell"].data, data["variant"].data,
                ids, CELLS, self.arms,
            )  # fmt: skip
            visitors = counts.sum(axis=(1, 2))  # per segment, fixed by the data
            rows = [segments.index(s) for s in ids]
            observed[i, rows] = counts
            for k, name in enumerate(CELLS):
                table = plan.cell_probability(name).sel(segment=ids).values  # (segment, arm)
                expected[i, rows, k] = plan.cells[name] * visitors[:, None] * table
        coords = {
            "round": list(rounds),
            "segment": segments,
            "cell": list(CELLS),
            "arm": list(self.arms),
        }
        dims = ("round", "segment", "cell", "arm")
        return (
            xr.DataArray(observed, dims=dims, coords=coords, name="observed"),
            xr.DataArray(expected, dims=dims, coords=coords, name="expected"),
        )

    # -- advance ----------------------------------------------------------------------------

    def advance(self) -> RoundPlan:
        """Close the current round and plan the next one.

        Checks the round's sample ratio (warns on a flagged round), then, past burn-in (every
        active arm with ``min_visitors_per_arm`` visitors and the converters a hurdle fit
        needs), checks the data as :func:`pytyche.check_setup` does, refits the posterior on
        every recorded visitor (the logged propensities are the fit's ``propensity``, a
        covariate of its forests), refits the policy tree, drops arms and finds graduation
        candidates, and builds the next plan. After an explicit schedule's last round the
        data is still fitted and planned from: the new plan is the ``"finished"`` final plan
        (size 0, its weights the final recommendation; it assigns and records nobody) and
        :attr:`finished` is True. Every step runs on copies: if any raises, the experiment is
        exactly as before.

        Returns
        -------
        RoundPlan
            The new current plan.

        Raises
        ------
        ValueError
            When the experiment is finished; when the data is not ready for a fit (every
            problem listed; ``pytyche.check_setup(exp.fit_data()[0], family=...)`` shows the
            report); and as :func:`pytyche.fit` and :func:`pytyche.fit_policy_tree` raise.

        Warns
        -----
        SampleRatioMismatchWarning
            When the closing round's counts fail the sample ratio check.
        """
        plan = self.plan()
        if plan.status == FINISHED:
            raise ValueError(
                f"the experiment is finished: round {plan.round} is its final plan (the "
                "explicit schedule has no more rounds); start a new experiment to go on"
            )
        next_round = plan.round + 1
        rounds_planned = schedule_rounds(self._schedule)
        # Past an explicit schedule's last round: fit and plan once more, a final plan.
        final = rounds_planned is not None and next_round >= rounds_planned
        size = 0 if final else round_size(self._schedule, next_round)
        notes: dict[str, Any] = {}
        if self._data[-1] is not None:
            check = self.srm()
            p = float(check["p_value"].sel(round=plan.round))
            flagged = bool(check["flagged"].sel(round=plan.round))
            notes["srm"] = {"round": plan.round, "p_value": p, "flagged": flagged}
            if flagged:
                warnings.warn(
                    f"sample ratio mismatch in round {plan.round}: p = {p:.3g} (threshold "
                    "0.001); recorded counts per (segment, cell, arm) differ from the plan's; "
                    "check the assignment and logging before trusting this round",
                    SampleRatioMismatchWarning,
                    stacklevel=2,
                )
        active = list(plan.active)
        waiting = self._burn_in_counts(active)
        burn_in = bool(waiting["waiting_for"])
        fit_record = None
        posterior = None
        if burn_in:
            notes.update(waiting)
            new_plan = RoundPlan(
                round=next_round,
                size=size,
                arms=self.arms,
                active=active,
                cells=self._cells,
                segments={0: "everyone"},
                optimized=self._uniform_weights(active, [0]),
                status=FINISHED if final else "burn-in",
                seed=self.config["seed"],
                experiment_id=self.config.get("experiment_id"),
                dropped=plan.dropped,
                notes=notes,
            )
        else:
            posterior, fit_record = self._fit(self.recorded(), next_round)
            status = FINISHED if final else "optimized"
            new_plan = self._optimized_plan(
                posterior, plan, next_round, size, active, notes, status
            )
        # Commit: nothing above touched the experiment's state.
        rounds = copy.deepcopy(self._rounds)
        rounds[-1]["closed_at"] = _now()
        rounds.append(self._round_record(new_plan, fit_record))
        self._plans = [*self._plans, new_plan]
        self._rounds = rounds
        self._data = [*self._data, None]
        self._generation = [*self._generation, 0]
        if posterior is not None:
            self.posterior = posterior
        return new_plan

    def _burn_in_counts(self, active: list[str]) -> dict:
        """Visitors (and converters, when the fit needs them) per arm, and what is missing.

        Counted round by round, so that no concatenated copy of every visit is made.
        """
        visits = np.zeros(len(self.arms), dtype=np.int64)
        bought = np.zeros(len(self.arms), dtype=np.int64)
        outcomes = [np.zeros(0)]
        for data in self._data:
            if data is None:
                continue
            code = pd.Categorical(data["variant"].values, categories=self.arms).codes
            outcome = np.asarray(data["outcome"].values, dtype=np.float64)
            visits += np.bincount(code, minlength=len(self.arms))
            bought += np.bincount(code[outcome > 0], minlength=len(self.arms))
            outcomes.append(outcome)
        need = max(1, self.config["min_visitors_per_arm"])
        counts = {a: int(n) for a, n in zip(self.arms, visits, strict=True)}
        counts_notes: dict[str, Any] = {"arm_counts": counts, "min_visitors_per_arm": need}
        waiting = [f"{a}: {counts[a]} of {need} visitors" for a in active if counts[a] < need]
        converters = converters_needed(self._family(np.concatenate(outcomes)))
        if converters:
            converted = {a: int(n) for a, n in zip(self.arms, bought, strict=True)}
            counts_notes.update(arm_converters=converted, min_converters_per_arm=converters)
            waiting += [
                f"{a}: {converted[a]} of {converters} converters (outcome > 0)"
                for a in active
                if converted[a] < converters
            ]
        return {**counts_notes, "waiting_for": waiting}

    def _family(self, outcome: np.ndarray) -> str:
        """The family a fit of ``outcome`` gets: the configured one, or what "auto" picks."""
        family = self.config["family"]
        if family == "auto":
            return infer_family(outcome) if len(outcome) else "continuous"
        return str(family)

    def fit_data(self, cumulative: xr.Dataset | None = None) -> tuple[xr.Dataset, np.ndarray]:
        """The observed data and (visitor, arm) propensities that :meth:`advance` fits.

        Parameters
        ----------
        cumulative : xarray.Dataset, optional
            Recorded data; default every recorded visitor.

        Returns
        -------
        observed : xarray.Dataset
            Variant-major rows (stable within an arm), the logging coordinates removed, attrs
            ``pytyche_arms`` the arms with visitors.
        propensity : numpy.ndarray
            (visitor, arm) each visitor's planned probabilities of every arm with visitors,
            raised to at least 1e-6 and renormalised (a fit covariate must be inside (0, 1)).
        """
        cumulative = self.recorded() if cumulative is None else cumulative
        if cumulative is None:
            raise ValueError("nothing recorded yet")
        variant = cumulative["variant"].values.astype(str)
        present = [a for a in self.arms if a in set(variant)]
        code = np.array([present.index(v) for v in variant])
        order = np.argsort(code, kind="stable")
        data = cumulative.isel(visitor=order)
        rows = np.zeros((data.sizes["visitor"], len(self.arms)))
        rounds = data["round"].values
        segments = data["segment"].values
        for r in np.unique(rounds):
            table = self._plans[int(r)].effective_probability
            here = rounds == r
            rows[here] = table.sel(segment=segments[here]).values
        keep = [self.arms.index(a) for a in present]
        rows = np.maximum(rows[:, keep], FIT_PROPENSITY_FLOOR)
        rows /= rows.sum(axis=1, keepdims=True)
        # Canonical coordinate order: the fit's design matrix follows it, and a resumed
        # experiment must fit exactly the same matrix.
        covariates = self._covariate_names()
        if covariates is None:  # `cumulative` was passed in, but nothing was recorded here
            raise ValueError("nothing recorded yet")
        names = ["variant", *covariates, "outcome"]
        observed = xr.Dataset(
            coords={
                "visitor": data["visitor"].values,
                **{n: ("visitor", data[n].values) for n in names},
            },
            attrs={"pytyche_outcome": "outcome", "pytyche_arms": present},
        )
        return observed, rows

    def _fit(self, cumulative: xr.Dataset | None, next_round: int):
        observed, propensity = self.fit_data(cumulative)
        options = dict(self.config["fit_options"])
        # Each round's fit gets its own seed; kept below 2**31 for the sampler.
        options["seed"] = (int(options.get("seed", self.config["seed"])) + next_round) % 2**31
        options.setdefault("progress", False)
        family = self._family(observed["outcome"].values)
        check_setup(observed, family=family).raise_for_problems(
            f"pytyche.check_setup(exp.fit_data()[0], family={family!r}) shows the full report "
            "on the data this experiment fits"
        )
        posterior = fit(observed, family=family, propensity=propensity, **options)
        record = {
            "options": options,
            "data_hash": data_hash(observed, propensity),
            "visitors": observed.sizes["visitor"],
        }
        return posterior, record

    def _optimized_plan(
        self, posterior, plan, next_round, size, active, notes, status="optimized"
    ) -> RoundPlan:
        config = self.config
        tree = fit_policy_tree(
            posterior,
            max_depth=config["max_segment_depth"],
            min_segment_share=config["min_segment_share"],
            n_bootstrap=0,
            seed=config["seed"],
        )
        segments = {int(s.id): str(s.rule) for s in tree.segments}
        pooled = max(segments) + 1
        means = segment_means(posterior, {**segments, pooled: "everyone"})
        means = means.sel(segment=[*segments, pooled]).compute()  # rows in the order of `ids`
        arms_fitted = [str(a) for a in means["arm"].values]
        active = [a for a in active if a in arms_fitted]
        chained = CHAIN in means.dims
        sample_dims = [CHAIN, DRAW] if chained else [DRAW]
        # Explicitly (segment, chain, draw, arm): the chain/draw split of the MCSE needs it.
        values = means.sel(arm=active).transpose("segment", *sample_dims, "arm").values
        chain_draw = values.shape[1:-1]
        values = values.reshape(values.shape[0], -1, len(active))  # (segment, sample, arm)
        # The allocation's vote over the active arms: control (first) wins unless beaten.
        winner = np.argmax(values, axis=2)
        prob_best = np.stack([(winner == k).mean(axis=1) for k in range(len(active))], axis=1)
        # Its Monte Carlo standard error, as pt.segment_summary's prob_best_mcse: the win
        # indicator's ESS from its autocorrelation (one chain without a chain dim).
        won = winner[..., None] == np.arange(len(active))  # (segment, sample, arm)
        chains = chain_draw if chained else (1, *chain_draw)
        won = won.reshape(len(winner), *chains, len(active)).transpose(0, 3, 1, 2)
        ess = effective_sample_size(won)  # (segment, arm)
        prob_best_mcse = probability_mcse(prob_best, ess)
        loss = (values.max(axis=2, keepdims=True) - values).mean(axis=1)
        best_mean = values.mean(axis=1).max(axis=1)
        ids = [*segments, NO_SEGMENT]
        tree_rows = slice(0, len(segments))
        threshold = config["drop_threshold"]
        low = (prob_best[tree_rows] < threshold).all(axis=0)
        low[0] = False  # control is the holdout's arm: never dropped
        keep_order = np.argsort(-prob_best[tree_rows].max(axis=0), kind="stable")
        while (~low).sum() < 2:  # keep at least two arms: undo the drops of the best ones
            low[next(k for k in keep_order if low[k])] = False
        newly = [a for a, d in zip(active, low, strict=True) if d]
        survivors = [a for a in active if a not in newly]
        kept = [active.index(a) for a in survivors]
        raw = prob_best[:, kept]
        totals = raw.sum(axis=1, keepdims=True)
        raw = np.where(totals > 0, raw / np.where(totals > 0, totals, 1.0), 1.0 / len(kept))
        weights = exploration_floor(raw, config["epsilon"])
        optimized = {
            s: dict(zip(survivors, row.tolist(), strict=True))
            for s, row in zip(ids, weights, strict=True)
        }
        graduation = []
        for i, s in enumerate(ids[:-1]):
            for k, arm in enumerate(active):
                tolerance = config["graduation_loss"] * abs(best_mean[i])
                if prob_best[i, k] >= config["graduation_threshold"] and loss[i, k] <= tolerance:
                    graduation.append(
                        {
                            "segment": s,
                            "arm": arm,
                            "prob_best": float(prob_best[i, k]),
                            "expected_loss": float(loss[i, k]),
                        }
                    )
        notes.update(
            newly_dropped=newly,
            drop_threshold=threshold,
            unsegmented_share=float(tree.unassigned_share),
            tree_text=str(tree),
        )
        return RoundPlan(
            round=next_round,
            size=size,
            arms=self.arms,
            active=survivors,
            cells=self._cells,
            segments=segments,
            optimized=optimized,
            status=status,
            seed=config["seed"],
            experiment_id=config.get("experiment_id"),
            dropped=(*plan.dropped, *newly),
            graduation=graduation,
            prob_best={
                s: dict(zip(active, r.tolist(), strict=True))
                for s, r in zip(ids, prob_best, strict=True)
            },
            expected_loss={
                s: dict(zip(active, r.tolist(), strict=True))
                for s, r in zip(ids, loss, strict=True)
            },
            prob_best_mcse={
                s: dict(zip(active, r.tolist(), strict=True))
                for s, r in zip(ids, prob_best_mcse, strict=True)
            },
            tree=tree.to_dict(),
            notes=notes,
        )

    # -- audit trail ------------------------------------------------------------------------

    @property
    def history(self) -> xr.Dataset:
        """The audit trail: one entry per round planned so far.

        Returns
        -------
        xarray.Dataset
            Indexed by ``round``: ``plan`` (the plan as JSON: cells, weights, segment rules,
            tree), ``status``, ``size``, ``recorded`` (visitors recorded), ``seed``,
            ``fit_options`` (JSON; empty without a fit), ``data_hash`` (SHA-256 of the data
            and propensities the plan's posterior was fitted on; empty without a fit),
            ``fitted_visitors``, ``package_version``, ``planned_at`` and ``closed_at`` (UTC
            ISO timestamps; ``closed_at`` empty for the current round), ``cell_weight``
            (round, cell) and ``srm_p_value`` (NaN where not checked).
        """
        rounds = self._rounds
        text = ("plan", "fit_options", "data_hash", "package_version", "planned_at", "closed_at")
        data: dict[str, tuple[str | tuple[str, ...], np.ndarray]] = {
            name: ("round", np.array([r[name] for r in rounds], dtype=object)) for name in text
        }
        data["seed"] = ("round", np.array([r["seed"] for r in rounds], dtype=np.uint64))
        data["fitted_visitors"] = ("round", np.array([r["fitted_visitors"] for r in rounds]))
        data["status"] = ("round", np.array([p.status for p in self._plans], dtype=object))
        data["size"] = ("round", np.array([p.size for p in self._plans]))
        data["recorded"] = (
            "round",
            np.array([0 if d is None else d.sizes["visitor"] for d in self._data]),
        )
        data["cell_weight"] = (
            ("round", "cell"),
            np.array([[p.cells[c] for c in CELLS] for p in self._plans]),
        )
        srm = [p.notes.get("srm") for p in self._plans[1:]] + [None]
        data["srm_p_value"] = (
            "round",
            np.array([np.nan if s is None else s["p_value"] for s in srm], dtype=float),
        )
        return xr.Dataset(
            data,
            coords={"round": [r["round"] for r in rounds], "cell": list(CELLS)},
            attrs={"config": json.dumps(self.config, sort_keys=True)},
        )

    def summary(self) -> str:
        """A short text report: every round's status, size, SRM check and the current plan.

        Returns
        -------
        str
        """
        lines = [f"Sequential experiment, arms {', '.join(self.arms)}; round {self.round} now"]
        for plan, data in zip(self._plans, self._data, strict=True):
            recorded = 0 if data is None else data.sizes["visitor"]
            lines.append(
                f"  round {plan.round}: {plan.status}, planned {plan.size:,}, recorded "
                f"{recorded:,}, {len(plan.segments)} segment(s), arms {', '.join(plan.active)}"
            )
        lines.append(str(self.plan()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<SequentialExperiment arms={list(self.arms)} round={self.round}>"

    def _repr_html_(self) -> str:
        return _experiment_html(self)

    def to_zarr(self, path, *, overwrite: bool = False, lock_timeout: float | None = 30.0) -> Any:
        """Save the experiment to its store; see :func:`~pytyche.sequential.save_experiment`.

        Parameters
        ----------
        path : str or os.PathLike
            The store directory: a new one, or this experiment's store (only the rows added
            since it was read are written). Anything else is refused.
        overwrite : bool, default False
            Replace a store holding another experiment, or a newer version of this one.
        lock_timeout : float or None, default 30
            Seconds to wait for another writer's lock.

        Returns
        -------
        pathlib.Path
        """
        from .store import save_experiment

        return save_experiment(self, path, overwrite=overwrite, lock_timeout=lock_timeout)

    def state(self) -> dict[str, Any]:
        """Plans, round records and recorded data (for :mod:`pytyche.sequential.store`).

        Returns
        -------
        dict
            ``plans`` (list of RoundPlan), ``rounds`` (list of dict), ``data`` (list of
            Dataset or None, one per round), ``events`` (list of dict, see :attr:`events`),
            ``generation`` (list of int, one per round: bumped each time rows of the round's
            recorded data are removed, so a store knows to rewrite that round's table).
        """
        return {
            "plans": list(self._plans),
            "rounds": copy.deepcopy(self._rounds),
            "data": list(self._data),
            "events": copy.deepcopy(self._events),
            "generation": list(self._generation),
        }


def _experiment_html(experiment: SequentialExperiment) -> str:
    """The Jupyter view of an experiment: one row per round, then the current plan."""
    plans = experiment.plans
    rows = []
    for i, (plan, data) in enumerate(zip(plans, experiment._data, strict=True)):
        srm = plans[i + 1].notes.get("srm") if i + 1 < len(plans) else None
        rows.append(
            [
                plan.round,
                plan.status,
                _html.integer(plan.size),
                _html.integer(0 if data is None else data.sizes["visitor"]),
                len(plan.segments),
                ", ".join(plan.active),
                "not checked"
                if srm is None
                else f"p = {srm['p_value']:.3g}" + (" (FLAGGED)" if srm["flagged"] else ""),
            ]
        )
    header = ["round", "status", "planned", "recorded", "segments", "arms", "sample ratio"]
    return _html.view(
        f"SequentialExperiment: arms {', '.join(experiment.arms)}; round {experiment.round} now",
        _html.table(header, rows),
        _html.details(
            f"current plan (round {experiment.round})", experiment.plan()._repr_html_(), open=True
        ),
    )


def visit_keys(ids, rounds) -> np.ndarray:
    """The key of each recorded visit: ``"{visitor id}@{round}"``.

    Unique over an experiment's recorded data (a visitor is recorded at most once per round),
    and read back unambiguously: the round is the text after the last ``@``.

    Parameters
    ----------
    ids : array-like
        Visitor ids (their text form is used).
    rounds : int or array-like of int
        The round of each visit, or one round for all.

    Returns
    -------
    numpy.ndarray
        Object array of str.

    Examples
    --------
    >>> visit_keys(["u1", "u1"], [0, 1]).tolist()
    ['u1@0', 'u1@1']
    >>> visit_keys(["u1", "u2"], 3).tolist()
    ['u1@3', 'u2@3']
    """
    text = pd.Series(visitor_keys(ids), dtype=object)
    rounds = np.broadcast_to(np.asarray(rounds, dtype=np.int64), (len(text),))
    keys = np.empty(len(text), dtype=object)
    for r in np.unique(rounds):  # one suffix per round: no text made per visit but the key
        here = rounds == r
        keys[here] = (text[here] + f"@{int(r)}").to_numpy(dtype=object)
    return keys


def _observed_keys(observed: xr.Dataset) -> np.ndarray:
    """The visitor ids of observed data, once it has the coordinates a record needs."""
    if "visitor" not in observed.indexes:
        raise ValueError(
            "observed needs visitor ids as its 'visitor' index (a 'visitor_id' column in "
            "the tables given to pytyche.observed_data)"
        )
    for name in ("variant", "outcome", "propensity"):
        if name not in observed.variables or observed.variables[name].dims != ("visitor",):
            raise ValueError(
                f"observed needs a {name!r} coordinate along 'visitor'; found "
                f"{sorted(map(str, observed.variables))}"
            )
    return visitor_keys(observed.indexes["visitor"])


@dataclass(frozen=True)
class _ColumnSummary:
    """What record's checks need of a recorded covariate: its kind, its text levels, count."""

    kind: str | None  # None: every value missing
    levels: frozenset  # distinct text values (text only)
    count: int  # values present

    @classmethod
    def of(cls, name: str, values: np.ndarray) -> _ColumnSummary:
        """Summarise one column (one pass)."""
        values = np.asarray(values)
        missing = np.asarray(pd.isna(values), dtype=bool)
        if missing.all():
            return cls(None, frozenset(), 0)
        kind = covariate_kind(values, name)
        levels = frozenset(pd.unique(_text(values[~missing]))) if kind == "text" else frozenset()
        return cls(kind, levels, int((~missing).sum()))

    def merged(self, other: _ColumnSummary) -> _ColumnSummary:
        """The summary of both columns one after the other."""
        return _ColumnSummary(
            self.kind or other.kind, self.levels | other.levels, self.count + other.count
        )


def _checked_covariate(
    name: str, values: np.ndarray, keys: np.ndarray, before: Sequence[_ColumnSummary]
) -> np.ndarray:
    """One covariate of a batch, refused unless every later fit can take it with the rest."""
    values = np.asarray(values)
    try:
        kind = covariate_kind(values, name)
    except TypeError as error:
        raise ValueError(f"{error} (drop or convert the column before recording)") from None
    missing = np.asarray(pd.isna(values), dtype=bool)
    kinds = [b.kind for b in before if b.kind is not None]
    if kinds and missing.all():  # nothing to compare: store it as the earlier batches
        kind = kinds[0]
        return np.full(values.size, np.nan, dtype=np.float64 if kind == "number" else object)
    if kinds and kind != kinds[0]:
        raise ValueError(
            f"covariate {name!r} holds {kind} values in this batch but {kinds[0]} values in "
            "the data recorded before; a covariate keeps one kind: convert the column"
        )
    if kind == "number":
        with np.errstate(invalid="ignore"):
            infinite = np.isinf(values.astype(np.float64))
        _refuse_values(
            infinite,
            keys,
            name,
            "is infinite",
            values,
            "record a finite number, or leave it missing (NaN)",
        )
    elif kind == "bool":
        _refuse_values(
            missing,
            keys,
            name,
            "is missing",
            values,
            "a boolean covariate needs a value for every visitor",
        )
    else:
        text = pd.Series(np.where(missing, "", _text(values)), dtype=object)
        _refuse_values(
            text.str.contains("\x00", regex=False).to_numpy(dtype=bool),
            keys,
            name,
            "holds a NUL character",
            values,
            "remove it: a segment rule cannot match such text exactly",
        )
        _check_text_levels(name, values, missing, keys, before)
        if missing.any():
            values = np.where(missing, np.nan, _text(values)).astype(object)
        else:
            values = _text(values)
    return values


def _check_text_levels(name, values, missing, keys, before) -> None:
    """Refuse a per-visitor text covariate (a session id, an e-mail).

    That is: more distinct values over all visits than a fit takes, or a different value for
    every one of at least ``MIN_ID_VISITORS`` visits (what :func:`pytyche.check_setup` calls
    an identifier).
    """
    present = pd.unique(_text(values[~missing]))
    seen = frozenset().union(*(b.levels for b in before))
    visits = int((~missing).sum()) + sum(b.count for b in before)
    levels = len(seen.union(present))
    if levels > MAX_TEXT_LEVELS:
        why = f"more than the {MAX_TEXT_LEVELS} a fit takes"
    elif levels == visits >= MIN_ID_VISITORS:
        why = "a different value for every visit: an identifier"
    else:
        return
    shown = ", ".join(
        f"{str(keys[i])!r} ({values[i]!r})" for i in np.flatnonzero(~missing)[:MAX_SHOWN]
    )
    raise ValueError(
        f"covariate {name!r} has {levels:,} distinct text values over the {visits:,} "
        f"visits recorded with this batch ({why}), e.g. visitors {shown}: a per-visitor value "
        "(a session id, an e-mail) is no covariate; drop the column (or bucket it) before "
        "recording; exp.remove_covariate(name, reason=...) removes it from what is already "
        "recorded"
    )


def _refuse_values(bad, keys, column, problem, values, fix) -> None:
    """Refuse a batch where ``column`` has a bad value, naming up to 5 visitors and values."""
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    where = np.flatnonzero(bad)[:MAX_SHOWN]
    shown = ", ".join(f"{str(keys[i])!r} ({_plain(values[i])!r})" for i in where)
    raise ValueError(
        f"column {column!r} {problem} for {int(bad.sum())} visitor(s): {shown}"
        + (" ..." if bad.sum() > MAX_SHOWN else "")
        + f"; {fix}. Nothing was recorded"
    )


def _text(values: Any) -> np.ndarray:
    """Labels as an object array of str (no copy when they already are: the common case)."""
    values = np.asarray(values)
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return values
    return values.astype(str).astype(object)


def _concat_visits(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Recorded visits one after another; lazy when any part is (read from a store).

    A part in memory joins lazy ones as one chunk: xarray would otherwise ask dask to pick
    chunks for its text columns, which it cannot size.
    """
    lazy = [any(v.chunks is not None for v in p.coords.values()) for p in parts]
    if any(lazy) and not all(lazy):
        parts = [
            p if is_lazy else p.chunk({"visitor": -1})
            for p, is_lazy in zip(parts, lazy, strict=True)
        ]
    return xr.concat(parts, dim="visitor")


def _shared_text(values: np.ndarray) -> np.ndarray:
    """Labels whose equal values are one ``str`` object, NaN kept for missing ones.

    A million visits of ``"mobile"`` then hold one string and a million pointers, not a
    million strings: what keeps a round of a million visitors small in memory.
    """
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    table = np.empty(len(uniques) + 1, dtype=object)
    table[:-1] = uniques
    table[-1] = np.nan  # code -1: a missing value
    return table[codes]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(
            f"reason must be non-empty text (it is kept in the audit trail), got {reason!r}"
        )
    return reason


def _event(action: str, details: Mapping[str, Any], reason: str) -> dict:
    """An audit-trail entry (JSON-able)."""
    return json.loads(
        json.dumps({"time": _now(), "action": action, "details": dict(details), "reason": reason})
    )


def _refuse(bad: np.ndarray, keys: np.ndarray, what: str, got=None, want=None) -> None:
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    where = np.flatnonzero(bad)[:MAX_SHOWN]
    if got is None:
        shown = ", ".join(repr(str(keys[i])) for i in where)
    else:
        shown = ", ".join(f"{str(keys[i])!r} ({got[i]!r}, assigned {want[i]!r})" for i in where)
    raise ValueError(
        f"{int(bad.sum())} visitor(s) {what}: {shown}"
        + (" ..." if bad.sum() > MAX_SHOWN else "")
        + "; record only the visitors the current plan assigned, as assigned"
    )


def data_hash(observed: xr.Dataset, propensity: np.ndarray | None = None) -> str:
    """SHA-256 of a Dataset's visitor variables (names, dtypes, values) and propensities.

    Parameters
    ----------
    observed : xarray.Dataset
        The data.
    propensity : numpy.ndarray, optional
        Extra array hashed after the variables.

    Returns
    -------
    str
        Hex digest; equal data gives an equal hash, whatever the variables' order.
    """
    digest = hashlib.sha256()
    for name in sorted(map(str, observed.variables)):
        values = np.asarray(observed.variables[name].values)
        digest.update(name.encode())
        if values.dtype.kind == "O" or values.dtype.kind in "UT":
            items = [None if pd.isna(v) else str(v) for v in values.ravel()]
            digest.update(b"text" + json.dumps(items).encode())
        else:
            digest.update(values.dtype.str.encode() + np.ascontiguousarray(values).tobytes())
    if propensity is not None:
        digest.update(b"propensity" + np.ascontiguousarray(propensity, dtype="<f8").tobytes())
    return digest.hexdigest()


def logged_observed(assigned: pd.DataFrame, outcome: str = "outcome") -> xr.Dataset:
    """Observed data for :meth:`SequentialExperiment.record` from an assigned table.

    Parameters
    ----------
    assigned : pandas.DataFrame
        :meth:`RoundPlan.assign` output with an outcome column added.
    outcome : str, default "outcome"
        The outcome column.

    Returns
    -------
    xarray.Dataset
        :func:`pytyche.observed_data` of the table split by ``arm`` (arms in order of first
        appearance), with ``visitor_id`` as the index and ``propensity``, ``cell``,
        ``round``, ``segment`` kept as coordinates. A table whose visitors were all served
        one arm (a single visitor, the control holdout) gives data of that one arm.

    Raises
    ------
    ValueError
        As :func:`pytyche.observed_data`, or when the ``arm`` column is missing.
    """
    if "arm" not in assigned.columns:
        raise ValueError("assigned needs the 'arm' column that RoundPlan.assign adds")
    arms = list(pd.unique(assigned["arm"]))
    frames = [(str(a), assigned[assigned["arm"] == a].drop(columns="arm")) for a in arms]
    if len(frames) != 1:
        return observed_data(frames, outcome=outcome)
    # A batch served one arm (one visitor, the control holdout): observed_data wants two
    # arms, so a stand-in row under another name is stacked after it and cut off again.
    (arm, frame), n = frames[0], len(frames[0][1])
    stand_in = frame.iloc[:1].copy()
    if "visitor_id" in frame.columns:
        stand_in["visitor_id"] = _unused_id(frame["visitor_id"])
    observed = observed_data([(arm, frame), (f"{arm} (stand-in)", stand_in)], outcome=outcome)
    observed = observed.isel(visitor=slice(0, n))
    observed.attrs["pytyche_arms"] = [arm]
    return observed


def _unused_id(ids: pd.Series) -> Any:
    """An id of the same kind as ``ids`` (number or text) that none of them has."""
    if pd.api.types.is_numeric_dtype(ids) and not pd.api.types.is_bool_dtype(ids):
        return ids.max() + 1
    taken = set(ids.astype(str))
    candidate = "pytyche-stand-in"
    while candidate in taken:
        candidate += "_"
    return candidate
