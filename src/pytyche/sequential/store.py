"""Persist and resume a sequential experiment: a directory of immutable Zarr parts.

Layout (store format 2). The directory holds ``pytyche_experiment.json`` (the marker: format,
``version``, settings, plans, round records, the experiment's other JSON state, and the
manifest of table parts per round) and the parts it lists: each an immutable Zarr group with a
unique name (``assigned-3-<hex>.zarr``, ``recorded-3-<hex>.zarr``) holding some rows of one
round's assignment log or recorded visitors. A save writes only the rows added since the store
was read, as new parts, then replaces the marker atomically; a reader reads the marker once,
then only parts, so it sees one version or the next, never a mix. Parts a save no longer lists
are deleted by the save after it (a reader still on the old marker keeps its parts for one
more save, and re-reads the marker once if one vanished).

Writers take an exclusive lock (``fcntl.flock`` on ``.NAME.lock`` beside the store) and refuse
to write over a newer version than the one the experiment was read at
(:class:`StaleExperimentError`). Format 1 (one Zarr group per table, the whole store swapped in
on each save) is still read; the first save converts it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .config import check_config
from .experiment import SequentialExperiment
from .plan import CELLS, RoundPlan

__all__ = [
    "LOCK_TIMEOUT",
    "MARKER",
    "STORE_FORMAT",
    "DamagedStoreError",
    "StaleExperimentError",
    "locked",
    "open_experiment",
    "save_experiment",
]

# The file that makes a directory an experiment store (its format and the JSON state).
MARKER = "pytyche_experiment.json"
STORE_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Seconds a save waits for another writer's lock before giving up.
LOCK_TIMEOUT = 30.0
# Rows per Zarr chunk of a table part: a later lazy read (xr.open_zarr) is chunked by these.
ROWS_PER_CHUNK = 65_536
# Inside a store: what a save is still writing (or a killed save left).
TEMP_PREFIX = ".tmp-"
# Table parts (format 2, with a unique suffix) and format 1 tables (without one).
PART_NAME = re.compile(r"(assigned|recorded)-\d+(-[0-9a-f]{32})?\.zarr")
TABLES = ("assigned", "recorded")
# What the marker of each format holds.
MARKER_KEYS = {
    1: ("config", "plans", "rounds", "recorded"),
    2: ("version", "config", "plans", "rounds", "state", "tables"),
}
# state() keys stored as tables, not JSON.
TABLE_STATE = ("plans", "data")


class StaleExperimentError(ValueError):
    """The store holds a newer version than the one the experiment was read at."""


class DamagedStoreError(ValueError):
    """An experiment store is damaged (marker or parts inconsistent): it is not opened."""


class _PartUnreadable(Exception):
    """A listed part could not be read: re-read the marker once, then call it damaged."""

    def __init__(self, name: str, error: BaseException):
        super().__init__(name)
        self.name = name
        self.error = error


# --------------------------------------------------------------------------- saving


def save_experiment(
    experiment: SequentialExperiment,
    path,
    *,
    overwrite: bool = False,
    lock_timeout: float | None = LOCK_TIMEOUT,
) -> Path:
    """Write an experiment to its store, appending only what changed since it was read.

    The save runs under an exclusive lock on ``.NAME.lock`` beside the store (see
    :func:`locked`). It writes the rows added since the experiment was opened from (or last
    saved to) this store as new immutable parts, then replaces ``pytyche_experiment.json``
    atomically: a reader sees the old version or the new one, never a mix, and a save killed
    at any point leaves the old version intact (its leftovers are removed by the next save). A
    round whose table shrank or whose recorded rows were removed (its ``generation`` changed)
    is rewritten as one part. A symbolic link is followed: the store it points at is updated
    and the link stays.

    Parameters
    ----------
    experiment : SequentialExperiment
        The experiment to save. Afterwards ``experiment.store_version`` names the store and
        its new version.
    path : str or os.PathLike
        The store directory. A new path gets a new store; an existing store is updated.
        Anything else (a file, a directory that is not an experiment store) is refused.
    overwrite : bool, default False
        Replace an existing store that holds another experiment, or a newer version of this
        one, with this experiment (what the store held is then lost).
    lock_timeout : float or None, default 30
        Seconds to wait for another writer's lock; None waits as long as it takes.

    Returns
    -------
    pathlib.Path
        `path`, as given.

    Raises
    ------
    FileExistsError
        When `path` exists and is not an experiment store, or (without `overwrite`) holds
        another experiment.
    StaleExperimentError
        When (without `overwrite`) the store holds a newer version than the one the
        experiment was read at: another writer saved in between.
    DamagedStoreError
        When (without `overwrite`) the store at `path` is damaged.
    TimeoutError
        When another writer holds the lock for longer than `lock_timeout`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from pytyche.sequential import open_experiment, sequential_experiment
    >>> exp = sequential_experiment(["control", "A"], schedule=50)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "exp"
    ...     _ = exp.to_zarr(path)
    ...     print(exp.store_version[1], open_experiment(path).round)
    1 0
    """
    given = Path(path)
    target = given.resolve()
    _refuse_non_store(target)
    snapshot = _snapshot(experiment)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target, lock_timeout):
        _remove_leftovers_beside(target)
        if target.exists():
            _refuse_non_store(target)
            version = _update_store(experiment, snapshot, target, overwrite)
        else:
            version = _create_store(experiment, snapshot, target)
    experiment.store_version = (target, version)
    return given


def _refuse_non_store(target: Path) -> None:
    if target.exists() and not (target.is_dir() and (target / MARKER).is_file()):
        raise FileExistsError(
            f"{str(target)!r} exists and is not a pytyche experiment store (no {MARKER}); "
            "refusing to replace it: choose another path or remove it"
        )


def _snapshot(experiment: SequentialExperiment) -> dict[str, Any]:
    """The experiment's state, its JSON part checked before anything is written."""
    state = experiment.state()
    extra = {k: v for k, v in state.items() if k not in (*TABLE_STATE, "rounds")}
    try:
        json_state = json.loads(json.dumps(extra, allow_nan=True))
        rounds = json.loads(json.dumps(state["rounds"], allow_nan=True))
    except TypeError as error:
        raise TypeError(f"the experiment's state cannot be saved as JSON: {error}") from None
    return {
        "plans": list(state["plans"]),
        "data": list(state["data"]),
        "rounds": rounds,
        "state": json_state,
    }


def _create_store(experiment: SequentialExperiment, snapshot: dict, target: Path) -> int:
    """A new store: written beside the target, then renamed into place."""
    scratch = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    scratch.mkdir()
    try:
        tables = [_fresh_tables(scratch, r, plan, data) for r, (plan, data) in _rounds(snapshot)]
        _replace_marker(scratch, _marker(experiment, snapshot, tables, version=1))
        os.rename(scratch, target)
        _fsync_directory(target.parent)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return 1


def _update_store(
    experiment: SequentialExperiment, snapshot: dict, target: Path, overwrite: bool
) -> int:
    """Append the new rows to an existing store (under the lock); the new version."""
    current, old_tables = _current(target, overwrite)
    mine = experiment.store_version
    my_version = mine[1] if mine is not None and Path(mine[0]) == target else 0
    if current is not None and not overwrite:
        _check_replaceable(experiment, target, current)
    store_version = 0 if current is None else int(current.get("version", 0))
    # Rows on disk are a prefix of the rows in memory only for the version read.
    incremental = (
        current is not None
        and not overwrite
        and current["pytyche_experiment"] == STORE_FORMAT
        and my_version == store_version
    )
    persisted = current["state"].get("generation", []) if incremental and current else []
    generation = snapshot["state"].get("generation", [])
    written: list[str] = []
    try:
        tables = []
        for r, (plan, data) in _rounds(snapshot):
            old = old_tables[r] if incremental and r < len(old_tables) else {}
            if _at(generation, r) != _at(persisted, r):  # recorded rows were removed
                old = {**old, "recorded": None}
            assigned = _append(target, "assigned", r, plan.assigned, old.get("assigned"), written)
            recorded = _append(target, "recorded", r, data, old.get("recorded"), written)
            tables.append({"assigned": assigned, "recorded": recorded})
        version = max(store_version, my_version) + 1
        _replace_marker(target, _marker(experiment, snapshot, tables, version))
    except BaseException:
        for name in written:  # this save's parts, never listed: the old version stays whole
            shutil.rmtree(target / name, ignore_errors=True)
        raise
    # Parts the previous marker listed stay one more save, for readers still on it.
    _remove_leftovers_inside(target, _part_names(tables) | _part_names(old_tables))
    return version


def _current(target: Path, overwrite: bool) -> tuple[dict | None, list[dict]]:
    """The store's marker and its parts; (None, []) for a damaged store being overwritten."""
    try:
        current = _read_marker(target)
        try:
            tables = _manifest(current)
            names = _part_names(tables)
            _checked_plans(target, _checked_settings(target, current["config"]), current["plans"])
        except (KeyError, TypeError, AttributeError) as error:
            raise _damaged(target, f"{MARKER} has no valid manifest of parts ({error})") from None
        missing = sorted(name for name in names if not (target / name).is_dir())
        if missing:
            raise _damaged(target, f"the part(s) {missing[:5]} listed in {MARKER} are missing")
        return current, tables
    except DamagedStoreError:
        if not overwrite:
            raise
        return None, []


def _check_replaceable(experiment: SequentialExperiment, target: Path, current: dict) -> None:
    """Refuse another experiment, or an older version of this one, over the store."""
    theirs = current.get("config", {})
    my_id, their_id = experiment.config.get("experiment_id"), theirs.get("experiment_id")
    if my_id is not None and their_id is not None:
        same = my_id == their_id
    else:  # stores written before experiments had an id: the settings and the first plan
        plans = current.get("plans") or [None]
        same = _canonical(experiment.config) == _canonical(theirs) and _canonical(
            experiment.plans[0].to_dict()
        ) == _canonical(plans[0])
    if not same:
        raise FileExistsError(
            f"{str(target)!r} holds another experiment (experiment_id {their_id!r}; this one "
            f"is {my_id!r}); refusing to replace it: save to another path, or pass "
            "overwrite=True to replace it and everything recorded in it"
        )
    mine = experiment.store_version
    store_version = int(current.get("version", 0))
    my_version = 0 if mine is None else mine[1]
    if store_version > my_version:
        read_at = (
            "was never read from or saved to a store"
            if mine is None
            else f"was read at version {my_version} of {str(mine[0])!r}"
        )
        raise StaleExperimentError(
            f"{str(target)!r} is at version {store_version}, newer than this experiment's: it "
            f"{read_at}, and another writer (a pytyche command, another notebook) saved since; "
            "saving would lose that change. Open the store again with open_experiment and "
            "redo the change (overwrite=True would replace the newer version with this one)"
        )


def _append(
    store: Path,
    kind: str,
    r: int,
    table: pd.DataFrame | xr.Dataset | None,
    old: dict | None,
    written: list[str],
) -> dict | None:
    """A table's manifest entry: the old parts and one of the rows added, or one fresh part."""
    if table is None:
        return None
    rows = _rows(table)
    if old is not None:
        stored = sum(int(p["rows"]) for p in old["parts"])
        if rows == stored:
            return old
        if rows > stored:
            added = _frame(table, start=stored)
            if _column_kinds(added) == old["kinds"]:
                part = _write_part(store, kind, r, added)
                written.append(part["name"])
                return {"parts": [*old["parts"], part], "kinds": old["kinds"]}
    # New, shrunk, rows removed or a column's kind changed: the whole table as one part.
    if isinstance(table, xr.Dataset):
        # Into memory, in place: the experiment's own data stops reading the parts this save
        # retires (they are removed at a later save).
        table.load()
    frame = _frame(table, start=0)
    part = _write_part(store, kind, r, frame)
    written.append(part["name"])
    return {"parts": [part], "kinds": _column_kinds(frame)}


def _fresh_tables(store: Path, r: int, plan: RoundPlan, data: xr.Dataset | None) -> dict:
    written: list[str] = []
    return {
        "assigned": _append(store, "assigned", r, plan.assigned, None, written),
        "recorded": _append(store, "recorded", r, data, None, written),
    }


def _marker(experiment: SequentialExperiment, snapshot: dict, tables: list, version: int) -> dict:
    return {
        "pytyche_experiment": STORE_FORMAT,
        "version": version,
        "config": experiment.config,
        "plans": [plan.to_dict() for plan in snapshot["plans"]],
        "rounds": snapshot["rounds"],
        "state": snapshot["state"],
        "tables": tables,
    }


def _rounds(snapshot: dict) -> Iterator[tuple[int, tuple[RoundPlan, xr.Dataset | None]]]:
    return enumerate(zip(snapshot["plans"], snapshot["data"], strict=True))


def _at(values: list, r: int) -> int:
    return int(values[r]) if r < len(values) else 0


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _rows(table: pd.DataFrame | xr.Dataset) -> int:
    return len(table) if isinstance(table, pd.DataFrame) else int(table.sizes["visitor"])


def _frame(table: pd.DataFrame | xr.Dataset, start: int) -> pd.DataFrame:
    """Rows ``start:`` of an assignment log or a round's recorded visitors, as a table."""
    if isinstance(table, pd.DataFrame):
        return table.iloc[start:].reset_index(drop=True)
    rows = table.isel(visitor=slice(start, None))
    return rows.reset_coords().to_dataframe().reset_index()


def _column_kinds(frame: pd.DataFrame) -> dict[str, str]:
    """Each column's kind on disk: "text" (codes and levels) or the numpy dtype."""
    kinds = {}
    for name in frame.columns:
        dtype = frame[name].to_numpy().dtype
        kinds[str(name)] = "text" if dtype.kind in "OUT" else dtype.str
    return kinds


def _write_part(store: Path, kind: str, r: int, frame: pd.DataFrame) -> dict:
    """Write rows as a new immutable part (written under a temporary name, then renamed)."""
    name = f"{kind}-{r}-{uuid.uuid4().hex}.zarr"
    scratch = store / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    _write_table(scratch, frame)
    _fsync_tree(scratch)
    os.rename(scratch, store / name)
    return {"name": name, "rows": len(frame)}


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    """One Zarr group per table: text columns as integer codes with their levels in attrs."""
    variables = {}
    levels = {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind in "OUT":
            values = values.astype(object)
            missing = np.asarray(pd.isna(values), dtype=bool)
            text = values[~missing].astype(str)
            unique, codes = np.unique(text, return_inverse=True)
            full = np.full(values.size, -1, dtype=np.int64)
            full[~missing] = codes
            variables[name] = ("row", full)
            levels[name] = unique.tolist()
        else:
            variables[name] = ("row", values)
    ds = xr.Dataset(
        variables,
        attrs={"levels": json.dumps(levels), "columns": json.dumps(list(map(str, frame.columns)))},
    )
    # Chunked rows: xr.open_zarr reads a part lazily, chunk by chunk.
    encoding = {name: {"chunks": (ROWS_PER_CHUNK,)} for name in ds.data_vars}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr format notices, not problems of the data
        # Every chunk written, even one of zeros: a reader can tell a missing chunk.
        ds.to_zarr(path, mode="w-", consolidated=False, encoding=encoding, write_empty_chunks=True)


def _replace_marker(store: Path, meta: dict) -> None:
    """Write the marker beside the old one, flush it to disk, then swap it in atomically."""
    scratch = store / f"{TEMP_PREFIX}{uuid.uuid4().hex}.json"
    with open(scratch, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(meta, allow_nan=True))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, store / MARKER)
    _fsync_directory(store)


def _fsync_tree(path: Path) -> None:
    """Flush a part's files and directories to disk before a marker lists it."""
    for directory, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(Path(directory))


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # a platform where directories cannot be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _part_names(tables: list) -> set[str]:
    return {
        part["name"]
        for entry in tables
        for kind in TABLES
        if entry[kind] is not None
        for part in entry[kind]["parts"]
    }


def _remove_leftovers_inside(store: Path, kept: set[str]) -> None:
    """Temporaries of killed saves, and parts neither the new nor the previous marker lists."""
    for entry in store.iterdir():
        name = entry.name
        if name.startswith(TEMP_PREFIX):
            _remove(entry)
        elif PART_NAME.fullmatch(name) and name not in kept:
            # Renamed away first (atomic), so a reader checking that its parts are still
            # there after reading them (see _experiment_from) never misses a half-deleted one.
            doomed = store / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
            with contextlib.suppress(OSError):
                os.rename(entry, doomed)
                _remove(doomed)


def _remove_leftovers_beside(target: Path) -> None:
    """What a killed save of store format 1 (or a killed first save) left beside the store."""
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            if entry.name.startswith(prefixes):
                _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()


# --------------------------------------------------------------------------- locking


class _HeldLock:
    """One lock file's state in this process: threads take turns; the flock is taken once."""

    def __init__(self) -> None:
        self.turn = threading.RLock()
        self.depth = 0
        self.handle: Any = None


_HELD: dict[str, _HeldLock] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(path, timeout: float | None = LOCK_TIMEOUT) -> Iterator[Path]:
    """Hold the exclusive writer's lock of the experiment store at `path`.

    The lock is ``fcntl.flock`` on ``.NAME.lock`` beside the store (symbolic links
    resolved, so every path to one store takes one lock). It is re-entrant within a thread
    (a read-modify-write may hold it around :func:`save_experiment`, which takes it again)
    and excludes other threads and processes. Where ``fcntl`` is missing (Windows) nothing is
    locked. The lock file stays beside the store; remove it never by hand while pytyche
    may be running.

    Parameters
    ----------
    path : str or os.PathLike
        The store (it need not exist yet).
    timeout : float or None, default 30
        Seconds to wait for another holder; None waits as long as it takes.

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    TimeoutError
        When another process (or thread) holds the lock for longer than `timeout`; the
        message names the lock file and the holder.
    OSError
        When the lock file cannot be created (a read-only directory).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "exp"
    ...     with locked(path) as lock_file, locked(path):  # re-entrant
    ...         print(lock_file.name)
    .exp.lock
    """
    store = Path(path).resolve()
    lock_file = store.parent / f".{store.name}.lock"
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield lock_file
        return
    with _HELD_GUARD:
        held = _HELD.setdefault(str(lock_file), _HeldLock())
    start = time.monotonic()
    if not held.turn.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
        raise TimeoutError(_lock_message(lock_file, timeout, "another thread of this process"))
    try:
        if held.depth == 0:
            remaining = None if timeout is None else timeout - (time.monotonic() - start)
            held.handle = _take_flock(fcntl, lock_file, remaining, timeout)
        held.depth += 1
        try:
            yield lock_file
        finally:
            held.depth -= 1
            if held.depth == 0:
                held.handle.close()  # releases the flock
                held.handle = None
    finally:
        held.turn.release()


def _take_flock(fcntl: Any, lock_file: Path, remaining: float | None, timeout: float | None):
    """Open the lock file and flock it, polling until `remaining` seconds have passed."""
    handle = open(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666), "r+", encoding="utf-8")
    deadline = None if remaining is None else time.monotonic() + remaining
    pause = 0.005
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                holder = handle.read().strip() or "another process"
                handle.close()
                raise TimeoutError(_lock_message(lock_file, timeout, holder)) from None
            time.sleep(
                pause if deadline is None else min(pause, max(deadline - time.monotonic(), 0))
            )
            pause = min(pause * 2, 0.1)
    # Who holds it, for the message of anyone who times out waiting.
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        handle.write(f"process {os.getpid()} ({command[:200]})\n")
        handle.flush()
    return handle


def _lock_message(lock_file: Path, timeout: float | None, holder: str) -> str:
    return (
        f"could not lock the experiment store: waited {timeout:g} s for {str(lock_file)!r}, "
        f"held by {holder}: another pytyche command (or save) on this store is still running. "
        "Try again when it has finished; remove nothing by hand (the lock is released when "
        "its holder ends)"
    )


# --------------------------------------------------------------------------- opening


def open_experiment(path) -> SequentialExperiment:
    """Resume an experiment saved by :meth:`SequentialExperiment.to_zarr`.

    Reads the marker once, then only the immutable parts it lists, so a save running at the
    same time never makes it fail: it gets the version before that save or the one after.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory (store format 1 or 2; a symbolic link is followed).

    Returns
    -------
    SequentialExperiment
        With every plan, assignment log, recorded round and audit record; its next
        :meth:`~SequentialExperiment.advance` gives the same plan as the saved experiment's
        would. ``posterior`` is None until then. ``store_version`` names the store and the
        version read, which :func:`save_experiment` checks.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    ValueError
        When `path` is not an experiment store of a known format.
    DamagedStoreError
        When the store is damaged (the message names what): weights that are not a split,
        arms that differ from the settings, a key missing from the marker, a part listed
        but missing or unreadable, a part with other rows than listed.
    """
    source = Path(path).resolve()
    if not source.exists():
        raise FileNotFoundError(f"no experiment store at {str(source)!r}")
    meta = _read_marker(source)
    try:
        return _experiment_from(source, meta)
    except _PartUnreadable:
        # A save after ours may have removed the part: read the newest version, once.
        newer = _read_marker(source)
        if newer.get("version") == meta.get("version"):
            newer = meta
        try:
            return _experiment_from(source, newer)
        except _PartUnreadable as failed:
            what = "is missing" if not (source / failed.name).exists() else "cannot be read"
            raise _damaged(
                source,
                f"the part {failed.name} is listed in {MARKER} but {what} "
                f"({type(failed.error).__name__}: {failed.error})",
            ) from None


def _damaged(source: Path, what: str) -> DamagedStoreError:
    return DamagedStoreError(
        f"experiment store {str(source)!r} is damaged: {what}; it was not opened (restore it "
        "from a copy, or start a new experiment)"
    )


def _read_marker(source: Path) -> dict[str, Any]:
    """The marker, its format checked (the rest is checked by :func:`_experiment_from`)."""
    marker = source / MARKER
    if not (source.is_dir() and marker.is_file()):
        raise ValueError(f"{str(source)!r} is not a pytyche experiment store (no {MARKER})")
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise _damaged(source, f"{MARKER} is not JSON ({error})") from None
    if not isinstance(meta, dict):
        raise _damaged(source, f"{MARKER} holds a {type(meta).__name__}, not an object")
    if "pytyche_experiment" not in meta:
        raise _damaged(source, f"{MARKER} lacks the key 'pytyche_experiment'")
    found = meta["pytyche_experiment"]
    if found not in READABLE_FORMATS:
        raise ValueError(
            f"{str(source)!r} is an experiment store of format {found!r}; this pytyche reads "
            f"formats {list(READABLE_FORMATS)}: upgrade pytyche to open it"
        )
    missing = [key for key in MARKER_KEYS[found] if key not in meta]
    if missing:
        raise _damaged(source, f"{MARKER} lacks the key(s) {missing}")
    return meta


def _manifest(meta: dict) -> list[dict]:
    """The parts of every round; format 1 tables as single parts of unknown length."""
    if meta["pytyche_experiment"] == STORE_FORMAT:
        return list(meta["tables"])
    return [
        {
            "assigned": {"parts": [{"name": f"assigned-{r}.zarr", "rows": None}], "kinds": {}},
            "recorded": (
                {"parts": [{"name": f"recorded-{r}.zarr", "rows": None}], "kinds": {}}
                if recorded
                else None
            ),
        }
        for r, recorded in enumerate(meta["recorded"])
    ]


def _experiment_from(source: Path, meta: dict) -> SequentialExperiment:
    try:
        config = _checked_settings(source, meta["config"])
        plans = _checked_plans(source, config, meta["plans"])
        rounds = meta["rounds"]
        tables = _manifest(meta)
        extra = dict(meta["state"]) if meta["pytyche_experiment"] == STORE_FORMAT else {}
        version = int(meta["version"]) if meta["pytyche_experiment"] == STORE_FORMAT else 0
    except KeyError as error:
        raise _damaged(source, f"{MARKER} lacks the key {error.args[0]!r}") from None
    except (TypeError, AttributeError) as error:
        raise _damaged(source, f"{MARKER} is malformed ({error})") from None
    if not (len(plans) == len(rounds) == len(tables)):
        raise _damaged(
            source,
            f"{MARKER} lists {len(plans)} plan(s), {len(rounds)} round record(s) and "
            f"{len(tables)} round(s) of tables; they must be as many",
        )
    data: list[xr.Dataset | None] = []
    for r, (plan, entry) in enumerate(zip(plans, tables, strict=True)):
        try:
            assigned, recorded = entry["assigned"], entry["recorded"]
        except (KeyError, TypeError):
            raise _damaged(
                source, f"{MARKER} lists no assigned/recorded tables of round {r}"
            ) from None
        plan.assigned = _read_parts(source, assigned["parts"]).astype(
            {"segment": np.int64, "propensity": np.float64}
        )
        if recorded is None:
            data.append(None)
            continue
        ids = plan.assigned["visitor_id"].to_numpy(dtype=object)
        data.append(_load_recorded(source, recorded["parts"], ids))
    # Read completely, before a later save could remove (rename away) any part read.
    for name in sorted(_part_names(tables)):
        if not (source / name).is_dir():
            raise _PartUnreadable(name, FileNotFoundError(f"{name} was removed while read"))
    state = {"plans": plans, "rounds": rounds, "data": data, **extra}
    try:
        experiment = SequentialExperiment(config, state)
    except (KeyError, TypeError, ValueError) as error:
        raise _damaged(source, f"its state is refused ({type(error).__name__}: {error})") from None
    experiment.store_version = (source, version)
    return experiment


def _checked_settings(source: Path, config: Any) -> dict[str, Any]:
    """The settings, refused as damage where sequential_experiment would refuse them."""
    try:
        return check_config(config)
    except ValueError as error:
        raise _damaged(source, f"its settings are refused: {error}") from None


def _checked_plans(source: Path, config: Mapping[str, Any], described: list) -> list[RoundPlan]:
    """Rebuild each round's plan; refuse one that contradicts the settings."""
    arms = list(config["arms"])
    plans = []
    for r, item in enumerate(described):
        try:
            plan = RoundPlan.from_dict(item)
        except KeyError as error:
            raise _damaged(source, f"round {r}'s plan lacks the key {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise _damaged(source, f"round {r}'s plan: {error}") from None
        if list(plan.arms) != arms:
            raise _damaged(
                source,
                f"round {r}'s plan lists the arms {list(plan.arms)}, the settings {arms} (arms "
                "must keep their order)",
            )
        total = math.fsum(plan.cells.values())
        bad = [c for c in CELLS if not 0.0 <= plan.cells[c] <= 1.0]
        if bad or not math.isclose(total, 1.0, abs_tol=1e-9):
            raise _damaged(
                source,
                f"round {r}'s cell weights {plan.cells} sum to {total:g}, not 1 (each in [0, 1])",
            )
        if plan.round != r:
            raise _damaged(source, f"the plan listed as round {r} says round {plan.round}")
        plans.append(plan)
    return plans


def _load_recorded(source: Path, parts: list[dict], logged_ids: np.ndarray) -> xr.Dataset:
    """One round's recorded visits: the ids in memory (the index), every other column lazily.

    The columns stay dask arrays over the parts' chunks of ``ROWS_PER_CHUNK`` rows (text
    decoded from its codes chunk by chunk), so opening a store of millions of visits reads
    only their ids; each id is the assignment log's own string object (`logged_ids`), held
    once in memory.
    """
    columns: dict[str, list] = {}
    for part in parts:
        name = _part_name(source, part)
        try:
            if part["rows"] is not None:  # format 2 writes every chunk
                _check_chunks(source / name)
            table = _open_table(source / name)
        except Exception as error:  # missing (a later save removed it) or corrupt
            raise _PartUnreadable(name, error) from None
        if part["rows"] is not None and table.sizes["row"] != int(part["rows"]):
            raise _damaged(
                source,
                f"the part {name} holds {table.sizes['row']:,} rows, {MARKER} lists {part['rows']}",
            )
        levels = json.loads(table.attrs["levels"])
        for column in json.loads(table.attrs["columns"]):
            values = table[column].data
            labels = _labels(levels[column]) if column in levels else None
            dtype = object if labels is not None else values.dtype
            values = values.map_blocks(_read_block, str(source / name), labels, dtype=dtype)
            columns.setdefault(column, []).append(values)
    ids = np.concatenate([np.asarray(v.compute(), dtype=object) for v in columns.pop("visitor")])
    position = pd.Index(logged_ids).get_indexer(ids)
    if (position < 0).any():
        raise _damaged(source, "recorded visitors are missing from their round's assignment log")
    coords = {n: ("visitor", da.concatenate(v)) for n, v in columns.items()}
    return xr.Dataset(coords=coords).assign_coords(visitor=logged_ids[position])


def _read_block(values: np.ndarray, part: str, labels: np.ndarray | None) -> np.ndarray:
    """A block as read from its part: refused if the part was removed, text decoded.

    Zarr reads a chunk whose file is gone as its fill value; a part is renamed away before it
    is deleted, so a part still in place after the read means the read was whole.
    """
    if not os.path.isdir(part):
        raise FileNotFoundError(
            f"the store part {part} was removed by a later save (another writer rewrote this "
            "round): open the experiment store again"
        )
    return values if labels is None else _decoded(values, labels)


def _labels(levels: list) -> np.ndarray:
    """A text column's levels, then NaN: the label of code -1 (a missing value)."""
    return np.array([*levels, np.nan], dtype=object)


def _decoded(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Text from its codes (pure): -1 reads the last label, NaN."""
    return labels[np.where(codes < 0, len(labels) - 1, codes)]


def _part_name(source: Path, part: dict) -> str:
    name = str(part["name"])
    if not PART_NAME.fullmatch(name):
        raise _damaged(source, f"{MARKER} lists {name!r}, which is not a table part's name")
    return name


def _read_parts(source: Path, parts: list[dict]) -> pd.DataFrame:
    if not parts:
        raise _damaged(source, f"{MARKER} lists a table without parts")
    frames = []
    for part in parts:
        name = _part_name(source, part)
        try:
            if part["rows"] is not None:  # format 2 writes every chunk
                _check_chunks(source / name)
            frame = _decode_table(_open_table(source / name))
        except Exception as error:  # missing (a later save removed it) or corrupt
            raise _PartUnreadable(name, error) from None
        if part["rows"] is not None and len(frame) != int(part["rows"]):
            raise _damaged(
                source, f"the part {name} holds {len(frame):,} rows, {MARKER} lists {part['rows']}"
            )
        frames.append(frame)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def _check_chunks(path: Path) -> None:
    """Refuse a part missing a chunk (zarr would read it as zeros)."""
    import zarr  # as pytyche.io does: imported when a store is read

    group = zarr.open_group(path, mode="r")
    for name, array in group.arrays():
        if array.nchunks_initialized != array.nchunks:
            raise ValueError(
                f"column {name!r} has {array.nchunks_initialized} of its {array.nchunks} chunks"
            )


def _open_table(path: Path) -> xr.Dataset:
    """A part, lazily (dask-chunked as written)."""
    if not path.is_dir():
        raise FileNotFoundError(f"no directory {path.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path, consolidated=False)


def _decode_table(ds: xr.Dataset) -> pd.DataFrame:
    """A part's rows in memory, text columns decoded from their codes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ds.load()
    levels = json.loads(ds.attrs["levels"])
    columns = {}
    for name in json.loads(ds.attrs["columns"]):
        values = ds[name].values
        if name in levels:
            # Text stays object dtype (pandas would otherwise infer its string dtype).
            values = pd.Series(_decoded(values, _labels(levels[name])), dtype=object)
        columns[name] = values
    return pd.DataFrame(columns)
