"""``pytyche`` commands of the sequential experiment, on an experiment store.

``start`` creates a store; ``plan`` shows the current round's plan; ``assign`` assigns a table
of visitors (and logs the assignment in the store); ``record`` records a round's outcomes;
``remove`` removes recorded visits or a covariate (kept in the audit trail);
``advance`` refits and plans the next round; ``srm`` checks the sample ratios; ``evaluate``
estimates, off policy, what another plan would have earned on the visitors recorded.

Every write of the store goes through :func:`pytyche.sequential.save_experiment` (the new
rows as new parts, then the store's marker replaced atomically), under an exclusive lock on a
file beside the store, so a refused or failed command leaves the store as it was and two
commands never interleave their read-modify-write. The conventions are those of
:mod:`pytyche.cli`: bad input exits with status 2 and one line, a failure during the work with
status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..io import PosteriorReadError, open_posterior, to_zarr
from ..segments import DiscoveredSegment, as_segments
from ..sequential import (
    CELLS,
    NO_SEGMENT,
    RoundPlan,
    SampleRatioMismatchWarning,
    SequentialExperiment,
    evaluate_policy,
    exposures_from_growthbook,
    logged_observed,
    open_experiment,
    save_experiment,
    sequential_experiment,
)
from ..sequential.store import MARKER, DamagedStoreError
from ..sequential.store import locked as store_lock
from ..summary import ConvergenceWarning
from .common import (
    FAMILIES,
    MAX_CHAINS,
    MAX_DRAWS,
    PARQUET_SUFFIXES,
    BadInput,
    WorkFailed,
    bounded_int,
    check_output_file,
    check_store_target,
    one_line,
    open_interval,
    read_table,
    share_argument,
    write_atomically,
    write_json,
)

__all__ = [
    "EXAMPLES",
    "SRM_FLAGGED",
    "add_commands",
    "advance_command",
    "assign_command",
    "check_experiment_path",
    "evaluate_command",
    "locked",
    "parse_schedule",
    "plan_command",
    "read_experiment",
    "record_command",
    "record_growthbook",
    "remove_command",
    "srm_command",
    "srm_document",
    "start_command",
    "warnings_as_lines",
]

# Exit status of `pytyche srm` when a round (or the pooled table) is flagged: the check ran
# and found a mismatch; distinct from 1 (the check could not run) and 2 (bad input).
SRM_FLAGGED = 3
# The columns RoundPlan.assign adds; record needs the assignment's columns back.
ASSIGNED_COLUMNS = ("round", "cell", "segment", "arm", "propensity")
MAX_BOOTSTRAP = 100_000
# Seconds a command that changes the store waits for another one's lock, then exits 1.
LOCK_TIMEOUT = 30.0
MAX_SEED = 2**64 - 1

EXAMPLES = {
    "start": (
        "example:\n"
        "  pytyche start experiment.pytyche --arms control,A,B --schedule doubling:5000 \\\n"
        "      --control-share 0.05 --explore-share 0.05 --family hurdle --name checkout-2026\n\n"
        "Without --seed a random seed is drawn (printed and kept in the store); the assignment\n"
        "hash is keyed by the seed and salted by --name (default: a random experiment id)."
    ),
    "plan": (
        "examples:\n  pytyche plan experiment.pytyche --out plan.json\n"
        "  pytyche plan experiment.pytyche --format growthbook --feature checkout "
        "--out features.json"
    ),
    "assign": (
        "example (VISITORS: a visitor_id column and the covariates the segments use):\n"
        "  pytyche assign experiment.pytyche visitors.csv --out assigned.csv"
    ),
    "record": (
        "examples (OUTCOMES: assign's output with an outcome column added; or GrowthBook's\n"
        "exposures: experiment_key, variation_id, visitor_id, the outcome, the covariates):\n"
        "  pytyche record experiment.pytyche outcomes.csv --outcome revenue\n"
        "  pytyche record experiment.pytyche exposures.csv --format growthbook"
    ),
    "remove": (
        "examples (removals are kept in the store's audit trail):\n"
        "  pytyche remove experiment.pytyche --visitors bots.csv --reason 'bot traffic'\n"
        "  pytyche remove experiment.pytyche --visitors u17,u42 --round 1 --reason 'test orders'\n"
        "  pytyche remove experiment.pytyche --covariate session --reason 'a per-visitor id'"
    ),
    "advance": (
        "example:\n  pytyche advance experiment.pytyche --posterior-out posterior-round1.zarr"
    ),
    "srm": (
        "example (exit status 3 when a round is flagged):\n"
        "  pytyche srm experiment.pytyche --threshold 0.001 || echo 'check the logging'"
    ),
    "evaluate": (
        "examples:\n"
        "  pytyche plan experiment.pytyche --out plan.json\n"
        "  pytyche evaluate experiment.pytyche --plan plan.json \\\n"
        "      --posterior posterior-round1.zarr --estimator dr\n"
        "  pytyche evaluate experiment.pytyche --segments allocation.json --estimator snips\n"
        "  pytyche evaluate experiment.pytyche --weights control=0.5,A=0.5\n\n"
        "SEGMENTS.json: the output of `pytyche allocate`, or "
        '[{"id": 0, "rule": "device == \'mobile\'", "weights": {"control": 0.2, "A": 0.8}}, '
        '..., {"id": -1, "weights": {...}}] (id -1: visitors in no segment)'
    ),
}


# --------------------------------------------------------------------------- the store


def check_experiment_path(path: Path) -> Path:
    """Check, cheaply and before any lock or work, that ``path`` holds an experiment store.

    Parameters
    ----------
    path : pathlib.Path
        The STORE argument.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BadInput
        When nothing is there, or it is not a pytyche experiment store.
    """
    if not path.exists():
        raise BadInput(f"STORE: {path} does not exist (create one with `pytyche start`)")
    if not (path / MARKER).is_file():
        raise BadInput(f"STORE: {path} is not a pytyche experiment store (no {MARKER})")
    return path


def read_experiment(path: Path) -> SequentialExperiment:
    """Open the experiment store at ``path``.

    Parameters
    ----------
    path : pathlib.Path
        The STORE argument.

    Returns
    -------
    SequentialExperiment

    Raises
    ------
    BadInput
        When nothing is there, or it is not an experiment store of a known format.
    WorkFailed
        When the store is damaged (the message says what).
    """
    check_experiment_path(path)
    try:
        return open_experiment(path)
    except FileNotFoundError as error:
        raise BadInput(f"STORE: {error}") from None
    except DamagedStoreError as error:
        raise WorkFailed(f"STORE: {one_line(error)}") from None
    except ValueError as error:  # not an experiment store, or one of an unknown format
        raise BadInput(f"STORE: {one_line(error)}") from None
    except Exception as error:  # anything else unreadable: zarr's and pandas' errors
        raise WorkFailed(
            f"STORE: {path} is damaged: {type(error).__name__}: {one_line(error)}"
        ) from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the store's writers' lock for a read-modify-write of the store at ``path``.

    :func:`pytyche.sequential.store.locked`: ``fcntl.flock`` on ``.NAME.lock`` beside the
    store, re-entrant, so the save inside the block takes it again without waiting. Where
    ``fcntl`` is missing (Windows) nothing is locked.

    Parameters
    ----------
    path : pathlib.Path
        The store.

    Yields
    ------
    None

    Raises
    ------
    BadInput
        When the lock file cannot be created (a read-only directory).
    WorkFailed
        When another command holds the lock for longer than ``LOCK_TIMEOUT`` seconds (the
        message names the lock file and its holder).
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store_lock(path, timeout=LOCK_TIMEOUT))
        except TimeoutError as error:
            raise WorkFailed(f"STORE: {one_line(error)}") from None
        except OSError as error:
            raise BadInput(
                f"STORE: cannot lock {path}: {error.strerror} ({error.filename})"
            ) from None
        yield


@contextlib.contextmanager
def warnings_as_lines(*categories: type[Warning]) -> Iterator[None]:
    """Print warnings of ``categories`` raised in the block as ``pytyche: warning:`` lines.

    Other warnings are issued again after the block, as they would have been.

    Parameters
    ----------
    *categories : Warning subclasses
        The warnings to print.

    Yields
    ------
    None
    """
    with warnings.catch_warnings(record=True) as caught:
        for category in categories:
            warnings.simplefilter("always", category)
        yield
    for item in caught:
        if issubclass(item.category, categories):
            print(f"pytyche: warning: {one_line(item.message)}", file=sys.stderr)
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


# --------------------------------------------------------------------------- argument types


def parse_schedule(text: str) -> Any:
    """An argparse type: a round-size schedule.

    Parameters
    ----------
    text : str
        ``doubling:N`` (N, 2N, 4N, ...), ``fixed:N`` or ``N`` (N every round), or
        ``N0,N1,...`` (the size of each round; no more rounds than listed).

    Returns
    -------
    tuple or int or list of int
        As :func:`pytyche.sequential.sequential_experiment` takes it.
    """
    bad = argparse.ArgumentTypeError(
        f"expected doubling:N, fixed:N, N or a list N0,N1,... of positive sizes; got {text!r}"
    )
    kind, colon, size = text.partition(":")
    try:
        if colon:
            if kind not in ("doubling", "fixed"):
                raise bad
            value = int(size)
            if value < 1:
                raise bad
            return (kind, value)
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise bad from None
    if any(n < 1 for n in sizes):
        raise bad
    return sizes[0] if len(sizes) == 1 and "," not in text else sizes


def _arm_list(text: str) -> list[str]:
    arms = [arm.strip() for arm in text.split(",")]
    if len(arms) < 2 or not all(arms):
        raise argparse.ArgumentTypeError(
            f"expected at least 2 comma-separated arm names, control first; got {text!r}"
        )
    if len(set(arms)) < len(arms):
        raise argparse.ArgumentTypeError(f"arm names must be distinct, got {text!r}")
    return arms


def _weight(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1], got {text}")
        return value

    return parse


def _split(text: str) -> dict[str, float]:
    weights = {}
    for part in text.split(","):
        arm, equals, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not equals or not arm.strip() or not math.isfinite(number):
            raise argparse.ArgumentTypeError(
                f"expected ARM=WEIGHT,ARM=WEIGHT,... (such as control=0.5,A=0.5); got {text!r}"
            )
        if arm.strip() in weights:
            raise argparse.ArgumentTypeError(f"arm {arm.strip()!r} appears twice in {text!r}")
        weights[arm.strip()] = number
    return weights


# --------------------------------------------------------------------------- the commands


def start_command(args) -> None:
    """``pytyche start``: create an experiment store, its round 0 planned.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    path: Path = args.store
    if path.exists():
        if not (path / MARKER).is_file():
            raise BadInput(
                f"STORE: {path} exists and is not a pytyche experiment store; refusing to "
                "replace it: choose another path"
            )
        if not args.overwrite:
            raise BadInput(
                f"STORE: {path} already holds an experiment (pass --overwrite to replace it "
                "and everything recorded in it)"
            )
    parent = path.parent
    if not parent.is_dir():
        raise BadInput(f"STORE: cannot write {path}: {parent} is not an existing directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"STORE: cannot write {path}: the directory {parent} is not writable")
    fit_options = {
        key: value
        for key, value in (
            ("n_draws", args.draws),
            ("n_chains", args.chains),
            ("n_trees_mu", args.trees_mu),
            ("n_trees_tau", args.trees_tau),
            ("n_warmstart", args.warmstart),
            ("num_threads", args.threads),
        )
        if value is not None
    }
    try:
        experiment = sequential_experiment(
            args.arms,
            family=args.family,
            min_control_weight=args.control_share,
            min_explore_weight=args.explore_share,
            epsilon=args.epsilon,
            max_segment_depth=args.max_depth,
            min_segment_share=args.min_segment_share,
            min_visitors_per_arm=args.min_visitors_per_arm,
            schedule=args.schedule,
            fit_options=fit_options,
            seed=args.seed,
            name=args.name,
            drop_threshold=args.drop_threshold,
        )
    except ValueError as error:
        raise BadInput(str(error)) from None
    with locked(path):
        save_experiment(experiment, path, overwrite=args.overwrite)
    print(experiment.summary())
    config = experiment.config
    drawn = "drawn at random" if args.seed is None else "given"
    print(f"\nseed {config['seed']} ({drawn}); experiment id {config['experiment_id']}")
    print(f"wrote the experiment to {path}")


def plan_command(args) -> None:
    """``pytyche plan``: the current round's plan, as text and (``--out``) as JSON.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    check_experiment_path(args.store)
    if args.format == "growthbook" and args.out is None:
        raise BadInput("--format growthbook writes the features JSON: give it --out FILE.json")
    if args.out is not None:
        check_output_file(args.out)
    experiment = read_experiment(args.store)
    print(experiment.summary())
    if args.out is None:
        return
    plan = experiment.plan()
    if args.format == "growthbook":
        feature = args.feature or _feature_key(args.store)
        try:
            features = plan.to_growthbook(feature, hash_attribute=args.hash_attribute)
        except ValueError as error:
            raise BadInput(f"--format growthbook: {one_line(error)}") from None
        write_json(args.out, features)
        print(
            f"wrote the round {plan.round} plan as the GrowthBook feature {feature!r} to "
            f"{args.out}",
            file=sys.stderr,
        )
        return
    write_json(args.out, plan.to_dict())
    print(f"wrote the round {plan.round} plan to {args.out}", file=sys.stderr)


def _feature_key(store: Path) -> str:
    """The default GrowthBook feature key: the store's name without its suffix."""
    return store.resolve().name.split(".")[0] or "pytyche"


def _table_writer(path: Path) -> Callable[[pd.DataFrame], Path]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return lambda frame: write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    if suffix in PARQUET_SUFFIXES:
        if importlib.util.find_spec("pyarrow") is None:
            raise BadInput("--out: writing Parquet needs pyarrow (pip install pyarrow)")
        return lambda frame: write_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))
    raise BadInput(f"--out: {path} must be a .csv or .parquet file, got {suffix or 'no suffix'!r}")


def assign_command(args) -> None:
    """``pytyche assign``: assign visitors with the current plan; log it in the store.

    The store is saved (with the assignment log that ``record`` checks against) before the
    output is written: a rerun gives the same rows, so an interrupted command is repaired by
    running it again.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before the store is changed.
    """
    check_experiment_path(args.store)
    check_output_file(args.out)
    write = _table_writer(args.out)
    visitors = read_table(args.visitors, "VISITORS", text_columns=("visitor_id",))
    with locked(args.store):
        experiment = read_experiment(args.store)
        plan = experiment.plan()
        before = len(plan.assigned)
        try:
            assigned = plan.assign(visitors)
        except (TypeError, ValueError, KeyError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise BadInput(f"VISITORS: {args.visitors}: {one_line(message)}") from None
        save_experiment(experiment, args.store)
    write(assigned)
    new = len(plan.assigned) - before
    cells = assigned["cell"].value_counts()
    arms = assigned["arm"].value_counts()
    print(
        f"assigned {len(assigned):,} visitor(s) in round {plan.round} ({new:,} new; "
        f"{len(plan.assigned):,} of the {plan.size:,} planned so far): cells "
        + ", ".join(f"{c} {int(cells.get(c, 0)):,}" for c in CELLS)
        + "; arms "
        + ", ".join(f"{a} {int(arms.get(a, 0)):,}" for a in plan.active)
        + f"; wrote {args.out}"
    )
    if len(plan.assigned) > plan.size:
        print(
            f"pytyche: warning: round {plan.round} has assigned {len(plan.assigned):,} "
            f"visitors, more than the {plan.size:,} planned; record and advance",
            file=sys.stderr,
        )


def record_command(args) -> None:
    """``pytyche record``: record the outcomes of assigned visitors of the current round.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input; the store is then left as it was.
    """
    check_experiment_path(args.store)
    if getattr(args, "format", "pytyche") == "growthbook":
        return record_growthbook(args)
    table = read_table(args.outcomes, "OUTCOMES", text_columns=("visitor_id",))
    needed = ["visitor_id", *ASSIGNED_COLUMNS]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise BadInput(
            f"OUTCOMES: {args.outcomes} lacks the column(s) {missing} that `pytyche assign` "
            f"writes; record its output with an outcome column added"
        )
    if args.outcome not in table.columns:
        raise BadInput(
            f"--outcome: {args.outcomes} has no column {args.outcome!r}; columns: "
            f"{[str(c) for c in table.columns]}"
        )
    if args.outcome in needed:
        raise BadInput(f"--outcome: {args.outcome!r} is a column of the assignment, not outcome")
    if table.empty:
        raise BadInput(f"OUTCOMES: {args.outcomes} has no rows")
    try:
        observed = logged_observed(table, outcome=args.outcome)
    except (TypeError, ValueError) as error:
        raise BadInput(f"OUTCOMES: {args.outcomes}: {one_line(error)}") from None
    with locked(args.store):
        experiment = read_experiment(args.store)
        try:
            experiment.record(observed)
        except (TypeError, ValueError) as error:
            raise BadInput(f"OUTCOMES: {args.outcomes}: {one_line(error)}") from None
        save_experiment(experiment, args.store)
    plan = experiment.plan()
    recorded = int(experiment.history["recorded"].values[-1])
    print(
        f"recorded {observed.sizes['visitor']:,} visitor(s) in round {plan.round} "
        f"({recorded:,} of the {plan.size:,} planned so far); wrote {args.store}"
    )


def _visitor_ids(text: str) -> list[str]:
    """``--visitors``: a .csv/.parquet table with a visitor_id column, or comma-separated ids."""
    path = Path(text)
    if path.suffix.lower() in (".csv", *PARQUET_SUFFIXES):
        table = read_table(path, "--visitors", text_columns=("visitor_id",))
        if "visitor_id" not in table.columns:
            raise BadInput(
                f"--visitors: {path} has no visitor_id column; columns: "
                f"{[str(c) for c in table.columns]}"
            )
        ids = table["visitor_id"]
        if ids.isna().any():
            raise BadInput(f"--visitors: {path} has missing visitor ids")
        return [str(v) for v in ids]
    ids = [part.strip() for part in text.split(",")]
    if not all(ids):
        raise BadInput(
            f"--visitors: expected a .csv/.parquet file or comma-separated ids, got {text!r}"
        )
    return ids


def remove_command(args) -> None:
    """``pytyche remove``: remove recorded visits or a covariate; kept in the audit trail.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input (an id with no recorded visit, an unknown covariate, an empty reason);
        the store is then left as it was.
    """
    check_experiment_path(args.store)
    ids = None if args.visitors is None else _visitor_ids(args.visitors)
    if args.round is not None and ids is None:
        raise BadInput("--round: only with --visitors")
    with locked(args.store):
        experiment = read_experiment(args.store)
        try:
            if ids is not None:
                removed = experiment.remove_visitors(ids, reason=args.reason, round=args.round)
                what = f"removed {removed:,} recorded visit(s) of {len(set(ids)):,} visitor(s)"
            else:
                experiment.remove_covariate(args.covariate, reason=args.reason)
                what = f"removed the covariate {args.covariate!r} from every round"
        except ValueError as error:
            raise BadInput(one_line(error)) from None
        save_experiment(experiment, args.store)
    print(f"{what} (reason: {args.reason}); wrote {args.store}")


def record_growthbook(args) -> None:
    """``pytyche record --format growthbook``: record GrowthBook exposures joined with outcomes.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments: OUTCOMES holds ``experiment_key``, ``variation_id``,
        ``visitor_id``, the outcome and the covariates (see
        :func:`pytyche.sequential.exposures_from_growthbook`).

    Raises
    ------
    BadInput
        For bad input; the store is then left as it was.
    """
    table = read_table(args.outcomes, "OUTCOMES", text_columns=("visitor_id", "experiment_key"))
    if args.outcome not in table.columns:
        raise BadInput(
            f"--outcome: {args.outcomes} has no column {args.outcome!r}; columns: "
            f"{[str(c) for c in table.columns]}"
        )
    with locked(args.store):
        experiment = read_experiment(args.store)
        try:
            observed = exposures_from_growthbook(table, experiment.plan(), outcome=args.outcome)
            experiment.record(observed)
        except (TypeError, ValueError) as error:
            raise BadInput(f"OUTCOMES: {args.outcomes}: {one_line(error)}") from None
        save_experiment(experiment, args.store)
    plan = experiment.plan()
    print(
        f"recorded {observed.sizes['visitor']:,} GrowthBook exposure(s) in round {plan.round}; "
        f"wrote {args.store}"
    )


def advance_command(args) -> None:
    """``pytyche advance``: close the round, refit (past burn-in) and plan the next round.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input (a schedule with no next round, data that cannot be fitted); the store
        is then left as it was.
    """
    check_experiment_path(args.store)
    if args.posterior_out is not None:
        check_store_target(args.posterior_out, args.overwrite, option="--posterior-out")
    with locked(args.store):
        experiment = read_experiment(args.store)
        closing = experiment.round
        options = experiment.config["fit_options"]
        # The fit's progress lines go to stderr when it is a terminal; the setting is a
        # call-time one, restored before the store is saved (the round's audit record keeps
        # the options the fit ran with).
        progress = "progress" not in options and sys.stderr.isatty()
        if progress:
            options["progress"] = True
        start = time.perf_counter()
        try:
            with warnings_as_lines(SampleRatioMismatchWarning, ConvergenceWarning):
                plan = experiment.advance()
        except ValueError as error:
            raise BadInput(f"STORE: cannot advance round {closing}: {one_line(error)}") from None
        finally:
            if progress:
                del options["progress"]
        seconds = time.perf_counter() - start
        save_experiment(experiment, args.store)
    fitted = int(experiment.history["fitted_visitors"].values[-1])
    how = f"a fit on {fitted:,} visitors" if fitted else "no fit"
    print(
        f"closed round {closing}; planned round {plan.round} ({plan.status}, {how}, "
        f"{seconds:.1f} s)"
    )
    print(plan)
    print(f"\nwrote {args.store}")
    if args.posterior_out is not None:
        if experiment.posterior is None:
            print(
                f"pytyche: warning: --posterior-out: round {plan.round} was planned without a "
                f"fit ({plan.status}); nothing written to {args.posterior_out}",
                file=sys.stderr,
            )
        else:
            to_zarr(experiment.posterior, args.posterior_out, overwrite=args.overwrite)
            print(f"wrote the posterior to {args.posterior_out}")


def srm_document(check) -> dict[str, Any]:
    """The SRM check as JSON-ready data (NaN as null).

    Parameters
    ----------
    check : xarray.Dataset
        As :meth:`pytyche.sequential.SequentialExperiment.srm` returns.

    Returns
    -------
    dict
        ``threshold``, ``min_expected``, ``flagged`` (any round or the pooled table),
        ``rounds`` and ``pooled``. Per round: ``round``; the test per (segment, cell, arm)
        that flags it, ``statistic``, ``dof``, ``p_value``, ``flagged``; ``cell_arm``, the
        same four for the segments pooled into one (cell, arm) table (reported, never
        flagging); ``counts``: ``{cell: {arm: {"observed": n, "expected": x}}}`` summed over
        segments, and ``counts_by_segment``: ``{segment id: counts}`` when the check has
        segments (only the segments the round recorded visitors in).
    """

    def number(value) -> float | None:
        value = float(value)
        return None if math.isnan(value) else value

    def counts(observed: Any, expected: Any) -> dict:
        return {
            str(cell): {
                str(arm): {
                    "observed": int(observed.sel(cell=cell, arm=arm)),
                    "expected": float(expected.sel(cell=cell, arm=arm)),
                }
                for arm in check["arm"].values
            }
            for cell in check["cell"].values
        }

    def test(row: Any, prefix: str = "") -> dict[str, Any]:
        return {
            "statistic": number(row[f"{prefix}statistic"]),
            "dof": int(row[f"{prefix}dof"]),
            "p_value": number(row[f"{prefix}p_value"]),
            "flagged": bool(row[f"{prefix}flagged"]),
        }

    rounds = []
    for r in check["round"].values:
        row = check.sel(round=r)
        entry = {"round": int(r), **test(row)}
        if "cell_arm_p_value" in check:
            entry["cell_arm"] = test(row, "cell_arm_")
        entry["counts"] = counts(row["observed"], row["expected"])
        if "observed_by_segment" in check:
            entry["counts_by_segment"] = {
                str(s): counts(
                    row["observed_by_segment"].sel(segment=s),
                    row["expected_by_segment"].sel(segment=s),
                )
                for s in check["segment"].values
                if row["observed_by_segment"].sel(segment=s).sum() > 0
            }
        rounds.append(entry)
    pooled = {
        "statistic": number(check["pooled_statistic"]),
        "dof": int(check["pooled_dof"]),
        "p_value": number(check["pooled_p_value"]),
        "flagged": bool(check["pooled_flagged"]),
    }
    return {
        "threshold": float(check.attrs["threshold"]),
        "min_expected": float(check.attrs["min_expected"]),
        "flagged": pooled["flagged"] or any(r["flagged"] for r in rounds),
        "rounds": rounds,
        "pooled": pooled,
    }


def srm_command(args) -> int:
    """``pytyche srm``: recorded against planned counts per (round, segment, cell, arm).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Returns
    -------
    int
        0, or :data:`SRM_FLAGGED` (3) when a round or the pooled table is flagged.

    Raises
    ------
    BadInput
        For bad input, or when nothing has been recorded.
    """
    check_experiment_path(args.store)
    if args.out is not None:
        check_output_file(args.out)
    experiment = read_experiment(args.store)
    try:
        check = experiment.srm(threshold=args.threshold)
    except ValueError as error:
        raise BadInput(f"STORE: {one_line(error)}") from None
    document = srm_document(check)
    rows = []
    for r in document["rounds"]:
        by_segment = r.get("counts_by_segment", {"all": r["counts"]})
        for segment, table in by_segment.items():
            for cell, arms in table.items():
                for arm, count in arms.items():
                    if count["observed"] or count["expected"]:
                        rows.append(
                            {
                                "round": r["round"],
                                "segment": segment,
                                "cell": cell,
                                "arm": arm,
                                "recorded": count["observed"],
                                "expected": f"{count['expected']:.1f}",
                            }
                        )
    print(
        f"Sample ratio check (chi-square of recorded against planned counts; flagged below "
        f"p = {document['threshold']:g}; cells expected below {document['min_expected']:g} "
        "visitors left out)"
    )
    print(pd.DataFrame(rows).to_string(index=False))
    print()
    for r in document["rounds"]:
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        flag = "FLAGGED" if r["flagged"] else "ok"
        print(
            f"round {r['round']}: chi-square {r['statistic']:.2f} on {r['dof']} dof per "
            f"(segment, cell, arm), p = {p} ({flag})"
        )
        pooled_cells = r.get("cell_arm")
        if pooled_cells is not None:
            p = "-" if pooled_cells["p_value"] is None else f"{pooled_cells['p_value']:.3g}"
            print(
                f"  segments pooled per (cell, arm): chi-square {pooled_cells['statistic']:.2f} "
                f"on {pooled_cells['dof']} dof, p = {p} (reported only: conservative when "
                "segments have different weights)"
            )
    pooled = document["pooled"]
    p = "-" if pooled["p_value"] is None else f"{pooled['p_value']:.3g}"
    print(
        f"all rounds pooled: chi-square {pooled['statistic']:.2f} on {pooled['dof']} dof, p = {p} "
        f"({'FLAGGED' if pooled['flagged'] else 'ok'})"
    )
    if args.out is not None:
        write_json(args.out, document)
        print(f"wrote the check to {args.out}", file=sys.stderr)
    if document["flagged"]:
        which = [str(r["round"]) for r in document["rounds"] if r["flagged"]]
        where = f"round(s) {', '.join(which)}" if which else "the pooled table"
        print(
            f"pytyche: sample ratio mismatch in {where} (p < {document['threshold']:g}): check "
            "the assignment and logging before trusting the data",
            file=sys.stderr,
        )
        return SRM_FLAGGED
    return 0


def _read_json(path: Path, option: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{option}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{option}: cannot read {path}: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{option}: {path} is not JSON: {error}") from None


def _read_plan(path: Path) -> RoundPlan:
    data = _read_json(path, "--plan")
    try:
        return RoundPlan.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BadInput(
            f"--plan: {path} is not a round plan (`pytyche plan --out` writes one): "
            f"{type(error).__name__}: {one_line(error)}"
        ) from None


def _read_segment_weights(path: Path) -> tuple[dict[int, dict], list[DiscoveredSegment]]:
    data = _read_json(path, "--segments")
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        data = data["segments"]  # pytyche allocate's output
    if not isinstance(data, list) or not data:
        raise BadInput(
            f"--segments: {path} must hold `pytyche allocate` output or a non-empty list of "
            '{"id": <int>, "rule": "<rule>", "weights": {"<arm>": <weight>, ...}} objects'
        )
    allocation: dict[int, dict] = {}
    segments = []
    for position, item in enumerate(data):
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("id"), int)
            and not isinstance(item.get("id"), bool)
            and isinstance(item.get("weights"), dict)
            and all(
                isinstance(w, int | float) and not isinstance(w, bool)
                for w in item["weights"].values()
            )
            and (item["id"] == NO_SEGMENT or isinstance(item.get("rule"), str))
        )
        if not ok:
            raise BadInput(
                f"--segments: {path}: item {position} must be "
                '{"id": <int>, "rule": "<rule>", "weights": {"<arm>": <number>, ...}} '
                f"(id -1, the visitors in no segment, needs no rule); got {json.dumps(item)[:80]}"
            )
        if item["id"] in allocation:
            raise BadInput(f"--segments: {path}: two segments have the id {item['id']}")
        allocation[item["id"]] = dict(item["weights"])
        if item["id"] != NO_SEGMENT:
            try:
                segments.append(DiscoveredSegment(item["id"], item["rule"]))
            except (TypeError, ValueError) as error:
                raise BadInput(f"--segments: segment {item['id']}: {one_line(error)}") from None
    if not segments:
        raise BadInput(f"--segments: {path} has no segment with a rule")
    try:
        return allocation, list(as_segments(segments))
    except (TypeError, ValueError) as error:
        raise BadInput(f"--segments: {path}: {one_line(error)}") from None


def evaluate_command(args) -> None:
    """``pytyche evaluate``: the off-policy value of a plan on the visitors recorded.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input: a policy file or weights that cannot be read, a rule on an unknown
        covariate, weights that do not sum to 1, an arm the experiment lacks, a policy
        without support in the recorded visitors, too few bootstrap resamples.
    """
    check_experiment_path(args.store)
    if args.out is not None:
        check_output_file(args.out)
    option, policy, described = _policy(args)
    posterior = None
    if args.posterior is not None:
        try:
            posterior = open_posterior(args.posterior)
        except (PosteriorReadError, OSError) as error:
            raise BadInput(f"--posterior: {one_line(error)}") from None
    estimator = args.estimator or ("dr" if posterior is not None else "snips")
    if estimator == "dr" and posterior is None:
        raise BadInput(
            "--estimator: dr needs --posterior (the outcome model: `pytyche advance "
            "--posterior-out` writes one); or choose ipw or snips"
        )
    experiment = read_experiment(args.store)
    logged = experiment.recorded()
    if logged is None:
        raise BadInput(f"STORE: {args.store}: nothing recorded yet; record a round first")
    logged.attrs["pytyche_arms"] = list(experiment.arms)
    if isinstance(policy, dict | str):
        unknown = sorted({policy} if isinstance(policy, str) else set(policy))
        unknown = [a for a in unknown if a not in experiment.arms]
        if unknown:
            raise BadInput(
                f"{option}: unknown arm(s) {unknown}; the experiment's arms are "
                f"{list(experiment.arms)}"
            )
    try:
        result = evaluate_policy(
            logged,
            policy,
            estimator=estimator,
            posterior=posterior,
            ci=args.ci,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except PosteriorReadError:  # a corrupt chunk: a failure of the work
        raise
    except KeyError as error:  # a rule on a covariate the visitors lack
        raise BadInput(f"{option}: {one_line(error.args[0] if error.args else error)}") from None
    except (TypeError, ValueError) as error:
        raise BadInput(f"{option}: {one_line(error)}") from None
    document = {
        "policy": described,
        "estimator": estimator,
        **{name: float(result[name]) for name in result.data_vars},
        "ci": float(result.attrs["ci"]),
        "interval": str(result.attrs["interval"]),
        "n_bootstrap": int(result.attrs["n_bootstrap"]),
        "n_visitors": int(result.attrs["n_visitors"]),
    }
    interval = document["interval"]
    print(
        f"Off-policy value of {described} on {document['n_visitors']:,} recorded visitors "
        f"({estimator}): {document['estimate']:.4g} per visitor, {document['ci']:.0%} "
        f"{interval} interval [{document['lower']:.4g}, {document['upper']:.4g}], standard "
        f"error {document['standard_error']:.3g}; effective sample size "
        f"{document['effective_sample_size']:,.0f}, largest importance weight "
        f"{document['max_weight']:.3g}"
    )
    thin = float(result["unsupported_share"])
    if thin > 0:
        print(
            f"pytyche: warning: {thin:.1%} of the policy's mass is on "
            "(segment, arm) pairs no recorded visitor of that segment was served; the estimate "
            "leans on the propensities there",
            file=sys.stderr,
        )
    if args.out is not None:
        write_json(args.out, {k: _finite(v) for k, v in document.items()})
        print(f"wrote the estimate to {args.out}", file=sys.stderr)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _policy(args) -> tuple[str, Any, str]:
    """The policy option given: (option, policy for evaluate_policy, description)."""
    if args.plan is not None:
        plan = _read_plan(args.plan)
        return "--plan", plan, f"the round {plan.round} plan in {args.plan}"
    if args.segments is not None:
        allocation, segments = _read_segment_weights(args.segments)
        return "--segments", (allocation, segments), f"the segment weights in {args.segments}"
    if args.arm is not None:
        return "--arm", args.arm, f"always {args.arm}"
    weights = args.weights
    return "--weights", weights, "the split " + ", ".join(f"{a} {w:g}" for a, w in weights.items())


# --------------------------------------------------------------------------- the parser


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the sequential experiment's commands to the ``pytyche`` parser.

    Parameters
    ----------
    command : callable
        ``command(name, help, epilog)`` adds a sub-command and returns its parser (as
        :func:`pytyche.cli.build_parser` defines it).
    """
    for add in (
        _add_start,
        _add_plan,
        _add_assign,
        _add_record,
        _add_remove,
        _add_advance,
        _add_srm,
        _add_evaluate,
    ):
        add(command)


# The --seed option of `start` and `evaluate`.
SEED_ARGUMENT = {"type": bounded_int(0, MAX_SEED), "default": 0, "help": "seed (0 to 2**64 - 1)"}


def _store_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("store", type=Path, metavar="STORE", help=what)


def _add_start(command: Callable[..., argparse.ArgumentParser]) -> None:
    start = command(
        "start",
        "create an experiment store: arms, cells, schedule and fit settings; round 0 planned",
        EXAMPLES["start"],
    )
    _store_argument(start, "the experiment store (a directory) to create")
    start.add_argument(
        "--arms",
        type=_arm_list,
        required=True,
        metavar="CONTROL,ARM,...",
        help="arm names, comma-separated, control first",
    )
    start.add_argument(
        "--family",
        choices=("auto", *FAMILIES),
        default="hurdle",
        help="posterior family of the fits (default hurdle: revenue per visitor)",
    )
    start.add_argument(
        "--schedule",
        type=parse_schedule,
        default=None,
        metavar="SCHEDULE",
        help="round sizes: doubling:N (N, 2N, 4N, ...), fixed:N, or N0,N1,... (default "
        "doubling:1000)",
    )
    start.add_argument(
        "--control-share",
        type=_weight("--control-share"),
        default=0.05,
        metavar="SHARE",
        help="traffic always served control, a holdout (default 0.05)",
    )
    start.add_argument(
        "--explore-share",
        type=_weight("--explore-share"),
        default=0.05,
        metavar="SHARE",
        help="traffic served uniformly over the active arms (default 0.05)",
    )
    start.add_argument(
        "--epsilon",
        type=_weight("--epsilon"),
        default=0.02,
        help="exploration floor inside the optimized cell, epsilon / K per arm (default 0.02)",
    )
    start.add_argument(
        "--max-depth",
        type=bounded_int(0, 6),
        default=2,
        help="depth of the policy tree that finds the segments (0 to 6; default 2)",
    )
    start.add_argument(
        "--min-segment-share",
        type=share_argument,
        default=0.1,
        help="smallest segment, as a share of the fitted visitors, in (0, 0.5]",
    )
    start.add_argument(
        "--min-visitors-per-arm",
        type=bounded_int(0, 10**9),
        default=100,
        metavar="N",
        help="burn-in: no fit until every active arm has N recorded visitors (default 100)",
    )
    start.add_argument(
        "--drop-threshold",
        type=_weight("--drop-threshold"),
        default=0.01,
        help="drop an arm whose P(best) is below this in every segment (default 0.01)",
    )
    start.add_argument(
        "--draws", type=bounded_int(1, MAX_DRAWS), default=None, help="posterior draws per chain"
    )
    start.add_argument(
        "--chains", type=bounded_int(1, MAX_CHAINS), default=None, help="MCMC chains of a fit"
    )
    start.add_argument(
        "--trees-mu", type=bounded_int(1, 10_000), default=None, help="prognostic forest trees"
    )
    start.add_argument(
        "--trees-tau",
        type=bounded_int(1, 10_000),
        default=None,
        help="treatment-effect forest trees",
    )
    start.add_argument(
        "--warmstart", type=bounded_int(0, 10_000), default=None, help="warm-start iterations"
    )
    start.add_argument(
        "--threads",
        type=bounded_int(1, 4_096),
        default=None,
        help="threads of a fit (default: all; 1 makes resumed fits bit-identical)",
    )
    start.add_argument(
        "--seed",
        **{
            **SEED_ARGUMENT,
            "default": None,
            "help": "assignment hash key and base of the fit seeds (default: drawn at random, "
            "printed and kept)",
        },
    )
    start.add_argument(
        "--name",
        default=None,
        metavar="ID",
        help="experiment id, salts the assignment hash (default: a random id)",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing experiment store at STORE (never anything else)",
    )
    start.set_defaults(handler=start_command)


def _add_plan(command: Callable[..., argparse.ArgumentParser]) -> None:
    plan = command("plan", "show the current round's plan; write it as JSON", EXAMPLES["plan"])
    _store_argument(plan, "the experiment store")
    plan.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PLAN.json",
        help="also write the plan (RoundPlan.to_dict()) here, atomically",
    )
    plan.add_argument(
        "--format",
        choices=("pytyche", "growthbook"),
        default="pytyche",
        help="--out as pytyche's plan JSON (default) or GrowthBook features JSON",
    )
    plan.add_argument(
        "--feature",
        default=None,
        metavar="KEY",
        help="GrowthBook feature key (default: the store's name without its suffix)",
    )
    plan.add_argument(
        "--hash-attribute",
        default="id",
        metavar="NAME",
        help="the GrowthBook attribute holding the visitor id (default id)",
    )
    plan.set_defaults(handler=plan_command)


def _add_assign(command: Callable[..., argparse.ArgumentParser]) -> None:
    assign = command(
        "assign",
        "assign visitors to a cell and an arm with the current plan (sticky, logged)",
        EXAMPLES["assign"],
    )
    _store_argument(assign, "the experiment store (its assignment log is updated)")
    assign.add_argument(
        "visitors",
        type=Path,
        metavar="VISITORS",
        help="a .csv or .parquet table: visitor_id and the covariates",
    )
    assign.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="ASSIGNED.csv",
        help="the visitors plus round, cell, segment, arm and propensity (.csv or .parquet)",
    )
    assign.set_defaults(handler=assign_command)


def _add_record(command: Callable[..., argparse.ArgumentParser]) -> None:
    record = command(
        "record", "record outcomes of the current round's assigned visitors", EXAMPLES["record"]
    )
    _store_argument(record, "the experiment store")
    record.add_argument(
        "outcomes",
        type=Path,
        metavar="OUTCOMES",
        help="assign's output (.csv or .parquet) with an outcome column added",
    )
    record.add_argument(
        "--outcome", default="outcome", metavar="COL", help="the outcome column (default outcome)"
    )
    record.add_argument(
        "--format",
        choices=("pytyche", "growthbook"),
        default="pytyche",
        help="OUTCOMES is assign's output (default) or GrowthBook exposures: experiment_key, "
        "variation_id, visitor_id, the outcome and the covariates",
    )
    record.set_defaults(handler=record_command)


def _add_remove(command: Callable[..., argparse.ArgumentParser]) -> None:
    remove = command(
        "remove",
        "remove recorded visits (--visitors) or a covariate (--covariate); kept in the audit trail",
        EXAMPLES["remove"],
    )
    _store_argument(remove, "the experiment store")
    what = remove.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--visitors",
        default=None,
        metavar="FILE_OR_IDS",
        help="a .csv/.parquet table with a visitor_id column, or comma-separated ids",
    )
    what.add_argument(
        "--covariate", default=None, metavar="NAME", help="a covariate to drop from every round"
    )
    remove.add_argument(
        "--round",
        type=bounded_int(0, 10**9),
        default=None,
        help="with --visitors: remove only that round's visits (default: every round's)",
    )
    remove.add_argument(
        "--reason", required=True, metavar="TEXT", help="why (kept in the audit trail)"
    )
    remove.set_defaults(handler=remove_command)


def _add_advance(command: Callable[..., argparse.ArgumentParser]) -> None:
    advance = command(
        "advance",
        "close the round: SRM check, refit the posterior and the tree, plan the next round",
        EXAMPLES["advance"],
    )
    _store_argument(advance, "the experiment store")
    advance.add_argument(
        "--posterior-out",
        type=Path,
        default=None,
        metavar="POSTERIOR.zarr",
        help="also write the round's fitted posterior (the outcome model of evaluate --posterior)",
    )
    advance.add_argument(
        "--overwrite", action="store_true", help="replace a posterior store at --posterior-out"
    )
    advance.set_defaults(handler=advance_command)


def _add_srm(command: Callable[..., argparse.ArgumentParser]) -> None:
    srm = command(
        "srm",
        "sample ratio check of every recorded round; exit status 3 when one is flagged",
        EXAMPLES["srm"],
    )
    _store_argument(srm, "the experiment store")
    srm.add_argument(
        "--threshold",
        type=open_interval("threshold"),
        default=0.001,
        help="flag p-values below this, in (0, 1) (default 0.001)",
    )
    srm.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="also write the check as JSON"
    )
    srm.set_defaults(handler=srm_command)


def _add_evaluate(command: Callable[..., argparse.ArgumentParser]) -> None:
    evaluate = command(
        "evaluate",
        "off-policy value of a plan (or weights) on the visitors recorded so far",
        EXAMPLES["evaluate"],
    )
    _store_argument(evaluate, "the experiment store")
    policy = evaluate.add_mutually_exclusive_group(required=True)
    policy.add_argument(
        "--plan", type=Path, default=None, metavar="PLAN.json", help="a plan: pytyche plan --out"
    )
    policy.add_argument(
        "--segments",
        type=Path,
        default=None,
        metavar="SEGMENTS.json",
        help="per-segment weights: pytyche allocate's output, or {id, rule, weights} objects",
    )
    policy.add_argument("--arm", default=None, metavar="ARM", help="always serve this arm")
    policy.add_argument(
        "--weights",
        type=_split,
        default=None,
        metavar="ARM=W,...",
        help="one split for every visitor, such as control=0.5,A=0.5",
    )
    evaluate.add_argument(
        "--estimator",
        choices=("dr", "ipw", "snips"),
        default=None,
        help="dr (doubly robust; needs --posterior), ipw or snips (default: dr with "
        "--posterior, else snips)",
    )
    evaluate.add_argument(
        "--posterior",
        type=Path,
        default=None,
        metavar="POSTERIOR",
        help="the outcome model of dr: a posterior fitted on the recorded visitors",
    )
    evaluate.add_argument(
        "--ci", type=open_interval("ci"), default=0.9, help="mass of the interval (default 0.9)"
    )
    evaluate.add_argument(
        "--bootstrap",
        type=bounded_int(0, MAX_BOOTSTRAP),
        default=None,
        help="bootstrap resamples of the visitors, at least 10 / (1 - ci) (default: none, a "
        "deterministic skewness-corrected interval; 0: a normal interval)",
    )
    evaluate.add_argument("--seed", **{**SEED_ARGUMENT, "help": "seed of the bootstrap"})
    evaluate.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="also write the estimate as JSON"
    )
    evaluate.set_defaults(handler=evaluate_command)
