"""Persist and resume a sequential experiment, atomically, as a directory of Zarr groups."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .experiment import SequentialExperiment
from .plan import RoundPlan

__all__ = ["MARKER", "exchange", "open_experiment", "save_experiment"]

# The file that makes a directory an experiment store (its format and the JSON state).
MARKER = "pytyche_experiment.json"
STORE_FORMAT = 1


def save_experiment(experiment: SequentialExperiment, path) -> Path:
    """Write an experiment to a directory, atomically.

    The store is written to a temporary directory beside the target, then renamed into place
    (an existing store is swapped out atomically where Linux ``renameat2`` is available): a
    reader sees the old store or the new one, never a half-written one. The directory holds
    ``pytyche_experiment.json`` (settings, plans, audit records) and one Zarr group per
    table: the recorded visitors of each round and each plan's assignment log.

    Parameters
    ----------
    experiment : SequentialExperiment
        The experiment to save.
    path : str or os.PathLike
        Target directory. An existing experiment store there is replaced; anything else
        (a file, a directory that is not an experiment store) is refused.

    Returns
    -------
    pathlib.Path
        The target path.

    Raises
    ------
    FileExistsError
        When `path` exists and is not an experiment store.
    """
    target = Path(path)
    if target.exists() and not _is_store(target):
        raise FileExistsError(
            f"{str(target)!r} exists and is not a pytyche experiment store (no {MARKER}); "
            "refusing to replace it: choose another path or remove it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    state = experiment.state()
    try:
        scratch.mkdir()
        tables = {}
        for r, (plan, data) in enumerate(zip(state["plans"], state["data"], strict=True)):
            _write_table(scratch / f"assigned-{r}.zarr", plan.assigned)
            tables[f"assigned-{r}"] = True
            if data is not None:
                frame = data.reset_coords().to_dataframe().reset_index()
                _write_table(scratch / f"recorded-{r}.zarr", frame)
        meta = {
            "pytyche_experiment": STORE_FORMAT,
            "config": experiment.config,
            "plans": [plan.to_dict() for plan in state["plans"]],
            "rounds": state["rounds"],
            "recorded": [data is not None for data in state["data"]],
        }
        (scratch / MARKER).write_text(json.dumps(meta, allow_nan=True))
        if not target.exists():
            os.rename(scratch, target)
        elif exchange(scratch, target):
            shutil.rmtree(scratch, ignore_errors=True)  # now holds the old store
        else:
            # No atomic exchange here: for an instant the target is absent.
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            os.rename(target, trash)
            os.rename(scratch, target)
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def open_experiment(path) -> SequentialExperiment:
    """Resume an experiment saved by :meth:`SequentialExperiment.to_zarr`.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory.

    Returns
    -------
    SequentialExperiment
        With every plan, assignment log, recorded round and audit record; its next
        :meth:`~SequentialExperiment.advance` gives the same plan as the saved experiment's
        would. ``posterior`` is None until then.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    ValueError
        When `path` is not an experiment store of a known format.
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no experiment store at {str(source)!r}")
    if not _is_store(source):
        raise ValueError(f"{str(source)!r} is not a pytyche experiment store (no valid {MARKER})")
    meta = json.loads((source / MARKER).read_text())
    plans = []
    data: list[Any] = []
    for r, item in enumerate(meta["plans"]):
        plan = RoundPlan.from_dict(item)
        assigned = _read_table(source / f"assigned-{r}.zarr")
        plan.assigned = assigned.astype({"segment": np.int64, "propensity": np.float64})
        plans.append(plan)
        if meta["recorded"][r]:
            frame = _read_table(source / f"recorded-{r}.zarr").set_index("visitor")
            data.append(
                xr.Dataset(
                    coords={n: ("visitor", frame[n].to_numpy()) for n in frame}
                ).assign_coords(visitor=frame.index.to_numpy())
            )
        else:
            data.append(None)
    state = {"plans": plans, "rounds": meta["rounds"], "data": data}
    return SequentialExperiment(meta["config"], state)


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Parameters
    ----------
    a, b : pathlib.Path
        Existing paths on the same file system.

    Returns
    -------
    bool
        True when swapped; False where the call is unavailable (then nothing changed).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _is_store(path: Path) -> bool:
    marker = path / MARKER
    if not (path.is_dir() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("pytyche_experiment") == STORE_FORMAT
    except (ValueError, OSError):
        return False


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    """One Zarr group per table: text columns as integer codes with their levels in attrs."""
    variables = {}
    levels = {}
    kinds = {}
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
            kinds[name] = "text"
        else:
            variables[name] = ("row", values)
            kinds[name] = values.dtype.str
    ds = xr.Dataset(
        variables,
        attrs={"levels": json.dumps(levels), "columns": json.dumps(list(map(str, frame.columns)))},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr format notices, not problems of the data
        ds.to_zarr(path, mode="w-", consolidated=False)


def _read_table(path: Path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(path, consolidated=False).load()
    levels = json.loads(ds.attrs["levels"])
    columns = {}
    for name in json.loads(ds.attrs["columns"]):
        values = ds[name].values
        if name in levels:
            table = np.array([*levels[name], np.nan], dtype=object)
            # Text stays object dtype (pandas would otherwise infer its string dtype).
            values = pd.Series(table[np.where(values < 0, len(levels[name]), values)], dtype=object)
        columns[name] = values
    return pd.DataFrame(columns)
