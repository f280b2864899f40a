"""Deterministic, sticky assignment: a visitor's hash picks a cell and an arm from a plan.

Every visitor gets two uniform numbers in [0, 1) from a keyed BLAKE2b hash of the experiment
seed and the visitor id's text, salted with the experiment id (so two experiments never share
an assignment, even with the same seed): ``v`` picks the cell, ``u`` the arm inside the cell.
Both are fixed for the life of the experiment, so a returning visitor stays in the same cell (the
cell weights never change) and keeps their arm for as long as ``u`` stays inside that arm's
interval of the cell's cumulative weights (arms laid out in the experiment's fixed arm order).
No global random state is used or touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "choose_interval",
    "experiment_salt",
    "visitor_covariates",
    "visitor_keys",
    "visitor_uniforms",
]

# 53 random bits make a double in [0, 1) exactly representable.
_UNIT = 2.0**-53
MAX_SEED = 2**64 - 1


def visitor_keys(ids: Iterable) -> np.ndarray:
    """The text form of visitor ids that hashing and matching use (object array of str).

    Parameters
    ----------
    ids : iterable
        Visitor ids (numbers or text). ``5`` and ``"5"`` are the same visitor; ``5.0`` is not.

    Returns
    -------
    numpy.ndarray
        Object array of ``str``.

    Raises
    ------
    ValueError
        When an id is missing (None or NaN).
    """
    values = np.asarray(list(ids) if not isinstance(ids, np.ndarray | pd.Index) else ids)
    if values.dtype.kind in "iuU":  # integers and fixed-width text: numpy's text is str()'s
        return values.astype(str).astype(object)
    values = np.asarray(values, dtype=object)
    missing = np.asarray(pd.isna(values), dtype=bool)
    if missing.any():
        raise ValueError(
            f"visitor_id is missing for {int(missing.sum())} visitor(s) (first at row "
            f"{int(np.flatnonzero(missing)[0])}); every visitor needs an id"
        )
    if pd.api.types.infer_dtype(values, skipna=False) == "string":  # already text (fast)
        return values.copy()
    return (
        np.array([v.item() if isinstance(v, np.generic) else v for v in values], dtype=object)
        .astype(str)
        .astype(object)
    )


def experiment_salt(experiment_id: str | None) -> bytes:
    """The BLAKE2b salt of an experiment's assignment hash (empty for None: unsalted).

    Parameters
    ----------
    experiment_id : str or None
        The experiment id (``config["experiment_id"]``); None for experiments started before
        experiments had ids, which keep their unsalted hash.

    Returns
    -------
    bytes
        16 bytes (a BLAKE2b digest of the id's UTF-8 text), or ``b""``.
    """
    if experiment_id is None:
        return b""
    return hashlib.blake2b(str(experiment_id).encode("utf-8"), digest_size=16).digest()


def visitor_uniforms(
    seed: int, ids: Iterable, experiment_id: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms in [0, 1) per visitor, from a keyed hash of (seed, id).

    Parameters
    ----------
    seed : int
        The experiment seed, 0 to 2**64 - 1 (the hash key).
    ids : iterable
        Visitor ids; hashed through their text form (see :func:`visitor_keys`).
    experiment_id : str, optional
        Salts the hash (see :func:`experiment_salt`): two experiments with the same seed and
        different ids assign independently. None: the unsalted hash of older experiments.

    Returns
    -------
    cell_u, arm_u : numpy.ndarray
        float64 arrays, one value per id: ``cell_u`` picks the cell, ``arm_u`` the arm.

    Examples
    --------
    >>> cell_u, arm_u = visitor_uniforms(7, ["a", "b"])
    >>> bool(((0 <= arm_u) & (arm_u < 1)).all())
    True
    >>> bool((visitor_uniforms(7, ["a"], "exp-1")[1] != visitor_uniforms(7, ["a"])[1]).all())
    True
    """
    key = int(seed).to_bytes(8, "little")
    keys = visitor_keys(ids)
    # One keyed state, copied per id: half the cost of keying a new hash each time.
    base = hashlib.blake2b(digest_size=16, key=key, salt=experiment_salt(experiment_id))

    def digest(text: str) -> bytes:
        state = base.copy()
        state.update(text.encode("utf-8"))
        return state.digest()

    words = np.frombuffer(b"".join(map(digest, keys)), dtype="<u8").reshape(-1, 2)
    uniforms = (words >> np.uint64(11)).astype(np.float64) * _UNIT
    return uniforms[:, 0].copy(), uniforms[:, 1].copy()


def choose_interval(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The index whose cumulative-weight interval holds each ``u``.

    Parameters
    ----------
    weights : numpy.ndarray
        (visitor, option) non-negative weights, each row summing to 1.
    u : numpy.ndarray
        (visitor,) uniforms in [0, 1).

    Returns
    -------
    numpy.ndarray
        int64 (visitor,): option ``k`` such that ``sum(w[:k]) <= u < sum(w[:k + 1])``. A ``u``
        above the rounded total goes to the last option with positive weight, so an option of
        weight 0 is never chosen.

    Examples
    --------
    >>> choose_interval(np.array([[0.2, 0.0, 0.8]] * 3), np.array([0.1, 0.2, 0.99])).tolist()
    [0, 2, 2]
    """
    weights = np.asarray(weights, dtype=np.float64)
    cumulative = np.cumsum(weights, axis=1)
    chosen = (u[:, None] >= cumulative).sum(axis=1)
    positive = weights > 0
    last_positive = weights.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
    return np.minimum(chosen, last_positive).astype(np.int64)


def check_visitor_table(visitors: object, why: str) -> pd.DataFrame:
    """A visitor table: a DataFrame with a ``visitor_id`` column, or a clear error.

    Parameters
    ----------
    visitors : object
        What the caller was given.
    why : str
        What the ids are for, for the message (e.g. "assignment hashes it").

    Returns
    -------
    pandas.DataFrame
        `visitors`.

    Raises
    ------
    TypeError
        When `visitors` is not a DataFrame.
    ValueError
        When it has no ``visitor_id`` column, listing the columns it has.
    """
    if not isinstance(visitors, pd.DataFrame):
        raise TypeError(f"visitors must be a pandas DataFrame, got {type(visitors).__name__}")
    if "visitor_id" not in visitors.columns:
        raise ValueError(
            f"visitors needs a 'visitor_id' column ({why}); its columns are "
            f"{[str(c) for c in visitors.columns]}"
        )
    return visitors


def visitor_covariates(visitors: pd.DataFrame, names: Iterable[str]) -> xr.Dataset:
    """The named columns of a visitor table as covariates along ``visitor``.

    Text and categorical columns become object arrays of ``str`` with NaN for missing values,
    nullable numbers become float with NaN, booleans stay boolean, as
    :func:`pytyche.observed_data` stores them.

    Parameters
    ----------
    visitors : pandas.DataFrame
        One row per visitor.
    names : iterable of str
        Columns to convert.

    Returns
    -------
    xarray.Dataset
        Coordinates only, along ``visitor``.

    Raises
    ------
    ValueError
        When a column is missing from `visitors`, listing the columns it has.
    """
    coords = {}
    for name in names:
        if name not in visitors.columns:
            raise ValueError(
                f"the plan's segments use the covariate {name!r}, which the visitor table lacks; "
                f"its columns are {[str(c) for c in visitors.columns]}"
            )
        column = visitors[name]
        dtype = column.dtype
        if pd.api.types.is_bool_dtype(dtype) and not column.isna().any():
            values = column.to_numpy(dtype=bool)
        elif pd.api.types.is_numeric_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = column.astype(object).to_numpy(dtype=object)
            missing = np.asarray(pd.isna(values), dtype=bool)
            values = np.where(missing, np.nan, values.astype(str).astype(object))
            values = np.asarray(values, dtype=object)
        coords[str(name)] = ("visitor", values)
    return xr.Dataset(coords=coords)
