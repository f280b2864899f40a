"""Observed experiment data and posteriors built from arrays produced elsewhere.

Three entry points:

- :func:`observed_data` turns per-arm visitor tables into the visitor-level Dataset of the
  posterior contract (rows variant-major, ``variant``, covariates and ``outcome`` as
  coordinates along ``visitor``).
- :func:`from_arrays` wraps draws computed by another tool, in (visitor, [chain,] draw, arm)
  order, into the typed result of their family.
- :func:`from_inference_data` does the same for an ArviZ-style ``posterior`` group, whose
  variables carry ``chain`` and ``draw`` first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ._config import get_options
from ._validate import check_arm_names, check_variable_name
from .results import (
    ARM,
    CHAIN,
    DRAW,
    OUTCOME_MODEL,
    RESULT_TYPES,
    VISITOR,
    BCFResult,
    posterior_dataset,
    result_type,
)
from .segments import ORDERED_LEVELS_ATTR, covariate_kind, covariate_names

__all__ = ["from_arrays", "from_inference_data", "observed_data"]

VISITOR_ID = "visitor_id"
OUTCOME = "outcome"
VARIANT = "variant"
# Names a posterior uses itself (its variables and dims): no observed variable may take them.
POSTERIOR_NAMES = frozenset(
    {
        ARM,
        DRAW,
        CHAIN,
        OUTCOME_MODEL,
        *(name for cls in RESULT_TYPES.values() for name in cls.metric_variables),
    }
)
# Names the observed Dataset uses itself, too; a covariate may not take them.
RESERVED = frozenset({VISITOR, VARIANT, OUTCOME, *POSTERIOR_NAMES})


# --------------------------------------------------------------------------- observed data


def observed_data(
    frames: Mapping[str, pd.DataFrame] | Iterable[tuple[str, pd.DataFrame]],
    outcome: str,
    covariates: Sequence[str] | None = None,
) -> xr.Dataset:
    """Stack per-arm visitor tables into the visitor-level observed data of the contract.

    Rows are variant-major: all of the first (control) arm's visitors, then the next arm's,
    in each table's row order. Every column becomes a coordinate along ``visitor``:
    ``variant`` (the arm that served the visitor), one coordinate per covariate, and
    ``outcome``. Text and pandas categorical covariates stay text (object arrays of ``str``,
    missing values as NaN, as pandas and xarray mark them); numeric covariates stay numeric
    (nullable integers with missing values become float with NaN); booleans stay boolean.
    An ordered categorical (``pd.Categorical(..., ordered=True)``, the same categories in
    every arm) keeps its order: the covariate's ``pytyche_ordered_levels`` attribute lists its
    categories (as text), lowest first; it is stored with the posterior (Zarr and netCDF),
    and :func:`pytyche.fit_policy_tree` splits such a covariate only into ranges of that
    order.

    Parameters
    ----------
    frames : mapping of str to pandas.DataFrame, or iterable of (str, DataFrame) pairs
        One table per arm, one row per visitor, control first.
    outcome : str
        Name of the outcome column (numeric or boolean, no missing values).
    covariates : sequence of str, optional
        Covariate columns to keep. Default: every column but the outcome and ``visitor_id``.
        A ``visitor_id`` column, when present, becomes the ``visitor`` index. A covariate's
        name must suit every store: non-empty text without a slash, a backslash or control
        characters, not starting with ``.``, not ``zarr.json``, not ending with
        ``__pytyche_missing``, and none of the names the posterior uses itself
        (``conversion``, ``value``, ``expected``, ``variant``, ``outcome``, ``visitor``,
        ``arm``, ``draw``, ``chain``).

    Returns
    -------
    xarray.Dataset
        Coordinates only, all along ``visitor``; attrs ``pytyche_outcome`` (the outcome
        column's name) and ``pytyche_arms`` (arm names, control first).

    Raises
    ------
    TypeError
        When a table is not a pandas DataFrame, or ``covariates`` is a single string.
    ValueError
        For fewer than 2 arms, duplicate arm names, an arm with no rows, a missing or
        non-numeric outcome column, missing outcome values, covariate columns that differ
        between arms or change kind between arms, an ordered categorical covariate that is
        unordered or has other categories in another arm, unsupported covariate dtypes, a
        covariate name that breaks the rule above, or duplicate visitor ids. The message names the
        offending arm and column.

    Examples
    --------
    >>> import pandas as pd
    >>> frames = {
    ...     "control": pd.DataFrame({"device": ["mobile", "desktop"], "spend": [0.0, 12.5]}),
    ...     "A": pd.DataFrame({"device": ["tablet"], "spend": [3.0]}),
    ... }
    >>> obs = observed_data(frames, outcome="spend")
    >>> obs["variant"].values.tolist(), obs["device"].values.tolist()
    (['control', 'control', 'A'], ['mobile', 'desktop', 'tablet'])
    """
    pairs = _arm_frames(frames)
    outcome = str(outcome)
    arms = [arm for arm, _ in pairs]
    first_arm, first = pairs[0]
    has_ids = VISITOR_ID in first.columns
    inferred = covariates is None
    if covariates is None:
        covariates = [str(c) for c in first.columns if c not in (outcome, VISITOR_ID)]
    else:
        if isinstance(covariates, str | bytes):
            raise TypeError(
                f"covariates must be a list of column names, got the single string "
                f"{covariates!r}; pass [{covariates!r}]"
            )
        covariates = [str(c) for c in covariates]
        dupes = sorted({c for c in covariates if covariates.count(c) > 1})
        if dupes:
            raise ValueError(f"covariates listed twice: {dupes}")
        if outcome in covariates:
            raise ValueError(f"the outcome column {outcome!r} cannot also be a covariate")
    for name in covariates:
        check_variable_name(name, what="covariate", reserved=RESERVED | {VISITOR_ID})

    for arm, frame in pairs:
        columns = {str(c) for c in frame.columns}
        if outcome not in columns:
            raise ValueError(f"arm {arm!r} has no outcome column {outcome!r}")
        missing = [c for c in covariates if c not in columns]
        if missing:
            raise ValueError(
                f"arm {arm!r} lacks the covariate column(s) {missing}"
                + (f" that arm {first_arm!r} has" if inferred else "")
                + "; every arm's table needs the same covariate columns"
            )
        extra = sorted(columns - {*covariates, outcome, VISITOR_ID})
        if inferred and extra:
            raise ValueError(
                f"arm {arm!r} has column(s) {extra} that arm {first_arm!r} lacks; every "
                "arm's table needs the same covariate columns (or pass covariates=...)"
            )
        if (VISITOR_ID in columns) != has_ids:
            raise ValueError(
                f"arm {arm!r} has a {VISITOR_ID!r} column but arm {first_arm!r} does not"
                if not has_ids
                else f"arm {arm!r} lacks the {VISITOR_ID!r} column that arm {first_arm!r} has"
            )

    coords: dict[str, tuple] = {}
    counts = [len(frame) for _, frame in pairs]
    coords[VARIANT] = (VISITOR, np.repeat(np.array(arms, dtype=object), counts))
    for name in covariates:
        order = _category_order(name, pairs)
        attrs = {} if order is None else {ORDERED_LEVELS_ATTR: order}
        coords[name] = (VISITOR, _stack_covariate(name, pairs), attrs)
    coords[OUTCOME] = (VISITOR, _stack_outcome(outcome, pairs))
    if has_ids:
        coords[VISITOR] = (VISITOR, _stack_ids(pairs))
    return xr.Dataset(
        coords=coords,
        attrs={"pytyche_outcome": str(outcome), "pytyche_arms": list(arms)},
    )


def _arm_frames(frames) -> list[tuple[str, pd.DataFrame]]:
    """Validate the arm → table input; return (arm name, DataFrame) pairs in order."""
    if isinstance(frames, pd.DataFrame):
        raise TypeError(
            "frames must map arm name → DataFrame (control first), got a single DataFrame"
        )
    pairs = list(frames.items()) if isinstance(frames, Mapping) else list(frames)
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"frames must hold (arm name, DataFrame) pairs, got {item!r}")
    check_arm_names([name for name, _ in pairs])
    out = []
    for name, frame in pairs:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                f"arm {name!r}: expected a pandas DataFrame, got {type(frame).__name__}"
            )
        if len(frame) == 0:
            raise ValueError(f"arm {name!r} has no rows: every arm needs at least one visitor")
        # Column labels are used as text (coordinate names); 0 and "0" would collide.
        labels = [str(c) for c in frame.columns]
        dup_cols = sorted({c for c in labels if labels.count(c) > 1})
        if dup_cols:
            raise ValueError(
                f"arm {name!r} has duplicate column names {dup_cols} (compared as text)"
            )
        out.append((str(name), frame.set_axis(labels, axis=1)))
    return out


def _column_kind(arm: str, name: str, column: pd.Series) -> str:
    # Categories are labels whatever their dtype: a categorical column is text.
    if isinstance(column.dtype, pd.CategoricalDtype):
        return "text"
    try:
        return covariate_kind(column, name)
    except TypeError as error:
        raise TypeError(f"arm {arm!r}: {error}") from None


def _stack_covariate(name: str, pairs) -> np.ndarray:
    kinds = {arm: _column_kind(arm, name, frame[name]) for arm, frame in pairs}
    first_arm = pairs[0][0]
    for arm, kind in kinds.items():
        if kind != kinds[first_arm]:
            raise ValueError(
                f"covariate {name!r} is {kinds[first_arm]} in arm {first_arm!r} but {kind} in "
                f"arm {arm!r}; a covariate must have one kind across arms"
            )
    kind = kinds[first_arm]
    if kind == "text":
        values = np.concatenate([_text_values(frame[name]) for _, frame in pairs])
        # One missing marker (NaN, as xarray stores it), whatever pandas used (pd.NA, None).
        values[np.asarray(pd.isna(values), dtype=bool)] = np.nan
        return values
    if kind == "bool":
        for arm, frame in pairs:
            if frame[name].isna().any():
                raise ValueError(
                    f"arm {arm!r}, boolean covariate {name!r} has missing values; fill them, "
                    "or cast the column to text or float"
                )
        return np.concatenate([frame[name].to_numpy(dtype=bool) for _, frame in pairs])
    parts = []
    for _, frame in pairs:
        column = frame[name]
        if column.isna().any() or not _is_plain_numeric(column):
            parts.append(column.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            parts.append(column.to_numpy())
    return np.concatenate(parts)


def _category_order(name: str, pairs) -> list[str] | None:
    """The categories (as text) of a covariate ordered in every arm; None if ordered in none."""
    orders = {}
    for arm, frame in pairs:
        dtype = frame[name].dtype
        if isinstance(dtype, pd.CategoricalDtype) and dtype.ordered:
            orders[arm] = [str(c) for c in dtype.categories]
    if not orders:
        return None
    first_arm, order = next(iter(orders.items()))
    for arm, _ in pairs:
        if arm not in orders:
            raise ValueError(
                f"covariate {name!r} is an ordered categorical in arm {first_arm!r} but not in "
                f"arm {arm!r}; give it the same ordered categories in every arm (or none)"
            )
        if orders[arm] != order:
            raise ValueError(
                f"covariate {name!r} has ordered categories {orders[arm]} in arm {arm!r} but "
                f"{order} in arm {first_arm!r}; give every arm the same ordered categories"
            )
    if len(set(order)) < len(order):
        raise ValueError(
            f"covariate {name!r}: ordered categories {order} repeat a level once written as "
            "text; give the categories distinct text"
        )
    return order


def _text_values(column: pd.Series) -> np.ndarray:
    """Object array of str (missing as pandas marks it); categories that are numbers → text."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories
        if not all(isinstance(c, str) for c in categories):
            text = np.array([str(c) for c in categories] + [np.nan], dtype=object)
            return text[column.cat.codes.to_numpy()]  # code -1 (missing) picks the NaN
    return column.astype(object).to_numpy(dtype=object)


def _is_plain_numeric(column: pd.Series) -> bool:
    return isinstance(column.dtype, np.dtype) and column.dtype.kind in "iuf"


def _stack_outcome(outcome: str, pairs) -> np.ndarray:
    parts = []
    for arm, frame in pairs:
        column = frame[outcome]
        if isinstance(column, pd.DataFrame):
            raise ValueError(f"arm {arm!r} has more than one outcome column {outcome!r}")
        if not (
            pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)
        ) or isinstance(column.dtype, pd.CategoricalDtype):
            raise ValueError(
                f"arm {arm!r}: outcome column {outcome!r} has dtype {column.dtype}; the outcome "
                "must be numeric (or boolean)"
            )
        missing = int(column.isna().sum())
        if missing:
            raise ValueError(
                f"arm {arm!r}: outcome column {outcome!r} has {missing} missing value(s); drop "
                "those visitors or fill the outcome"
            )
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"arm {arm!r}: outcome column {outcome!r} holds infinite values")
        parts.append(values)
    return np.concatenate(parts)


def _stack_ids(pairs) -> np.ndarray:
    owners: dict[object, str] = {}
    parts = []
    for arm, frame in pairs:
        ids = frame[VISITOR_ID]
        if ids.isna().any():
            raise ValueError(f"arm {arm!r}: column {VISITOR_ID!r} has missing ids")
        text = _column_kind(arm, VISITOR_ID, ids) == "text"
        values = ids.to_numpy(dtype=object if text else None)
        for value in values:
            key = value.item() if isinstance(value, np.generic) else value
            if key in owners:
                where = (
                    f"arm {arm!r}" if owners[key] == arm else f"arms {owners[key]!r} and {arm!r}"
                )
                raise ValueError(f"duplicate visitor id {key!r} in {where}")
            owners[key] = arm
        parts.append(values)
    return np.concatenate(parts)


# --------------------------------------------------------------------------- observed helpers


def observed_variables(observed: xr.Dataset) -> dict[str, xr.Variable]:
    """Every 1-D variable along ``visitor`` of ``observed`` (coordinates or data), but the index.

    Accepts both the coordinates-only Dataset of :func:`observed_data` and the data-variable
    Dataset a result's ``.observed`` returns.
    """
    return {name: observed.variables[name] for name in covariate_names(observed)}


def check_observed(observed: xr.Dataset, arms: Sequence[str] | None = None) -> list[str]:
    """Check observed data against the contract; return its arm names in row order.

    The ``variant`` labels must be arm names and the rows variant-major (control's rows first);
    no variable may take a name the posterior uses itself or that a store cannot hold (see
    :func:`observed_data`).
    """
    if not isinstance(observed, xr.Dataset):
        raise TypeError(
            f"observed must be an xarray.Dataset (see pytyche.observed_data), got "
            f"{type(observed).__name__}"
        )
    variables = observed_variables(observed)
    for name in variables:
        check_variable_name(name, what="observed variable", reserved=POSTERIOR_NAMES)
    if VARIANT not in variables:
        raise ValueError(
            "observed data needs a 'variant' coordinate along 'visitor' naming the arm that "
            f"served each visitor; found {sorted(variables)}"
        )
    variant = _labels(variables[VARIANT].values)
    if variant.size == 0:
        raise ValueError("observed data has no visitors")
    # Arm order: first appearance (rows are variant-major, so this is control first).
    _, first = np.unique(variant, return_index=True)
    seen = [str(variant[i]) for i in np.sort(first)]
    if arms is None:
        arms = seen
    arms = [str(a) for a in arms]
    unknown = sorted(set(seen) - set(arms))
    if unknown:
        raise ValueError(f"'variant' holds values that are not arm names: {unknown}; arms {arms}")
    codes = _label_codes(variant, arms)
    backwards = np.flatnonzero(np.diff(codes) < 0)
    if backwards.size:
        i = int(backwards[0]) + 1
        raise ValueError(
            f"observed rows must be variant-major (all of {arms[0]!r}'s visitors, then the next "
            f"arm's, ...): visitor row {i} is served {str(variant[i])!r} after "
            f"{str(variant[i - 1])!r}"
        )
    return arms


def _labels(values) -> np.ndarray:
    """Labels as fixed-width text, from any text dtype (numpy's StringDType included)."""
    return np.asarray(values).astype(object).astype(str)


def _label_codes(labels: np.ndarray, arms: Sequence[str]) -> np.ndarray:
    """Index of each label in ``arms`` (labels are known to be arm names)."""
    arms_array = np.array(arms, dtype=object).astype(str)
    sorter = np.argsort(arms_array)
    return sorter[np.searchsorted(arms_array, labels, sorter=sorter)]


def arm_codes(observed: xr.Dataset, arms: Sequence[str]) -> np.ndarray:
    """Integer arm index (0 = control) of every visitor."""
    variant = _labels(observed_variables(observed)[VARIANT].values)
    return _label_codes(variant, [str(a) for a in arms])


def attach_observed(dataset: xr.Dataset, observed: xr.Dataset) -> xr.Dataset:
    """Add the observed data's visitor variables (and index) to ``dataset`` as coordinates."""
    coords = {name: var for name, var in observed_variables(observed).items()}
    if VISITOR in observed.indexes:
        coords[VISITOR] = observed.variables[VISITOR]
    return dataset.assign_coords(coords)


def visitor_chunk(shape: Sequence[int], itemsize: int, target_bytes: int | None = None) -> int:
    """Visitors per chunk so that one chunk of an array is about ``target_bytes``.

    Parameters
    ----------
    shape : sequence of int
        The array's shape, visitor first.
    itemsize : int
        Bytes per element.
    target_bytes : int, optional
        Target chunk size; default: the ``chunk_bytes`` option (128 MiB, see
        :func:`pytyche.set_options`).

    Returns
    -------
    int
        Between 1 and the number of visitors (1 for an array without visitors).
    """
    if target_bytes is None:
        target_bytes = get_options()["chunk_bytes"]
    shape = tuple(int(n) for n in shape)
    per_visitor = int(np.prod(shape[1:], dtype=np.int64)) * int(itemsize)
    rows = int(target_bytes // max(1, per_visitor))
    return max(1, min(rows, shape[0] if shape else 1))


# --------------------------------------------------------------------------- from arrays


def from_arrays(
    family: str,
    arms: Sequence[str],
    observed: xr.Dataset | None = None,
    *,
    chunks: int | str | None = "auto",
    dtype=np.float32,
    **variables,
) -> BCFResult:
    """Build a typed posterior from numpy or dask arrays computed elsewhere.

    Parameters
    ----------
    family : {"binary", "continuous", "hurdle"}
        The posterior family; it fixes which variables are needed: ``conversion``
        (binary), ``expected`` (continuous), ``conversion`` and ``value`` (hurdle).
    arms : sequence of str
        Arm names, control first.
    observed : xarray.Dataset, optional
        Visitor-level observed data (from :func:`observed_data`, or a result's
        ``.observed``), rows in the same order as the arrays' visitor axis.
    chunks : "auto", int or None, default "auto"
        ``"auto"``: a dask array is rechunked (lazily) so that chunks split ``visitor`` only,
        about 128 MB each; a numpy array stays in memory. An int: visitors per chunk, numpy
        arrays included. None: arrays are used as given.
    dtype : numpy float dtype or None, default float32
        Cast the draws (lazily on dask) to this floating-point dtype; None keeps the arrays'
        dtype. In-memory values are range-checked after the cast, so a value beyond the
        dtype's range is an error, not infinity.
    **variables : array-like
        The family's variables, each (visitor, draw, arm) or (visitor, chain, draw, arm). A
        DataArray whose dims are named ``visitor``, ``draw``, ``arm`` (and ``chain``) is
        transposed to that order by name, lazily; its ``arm`` labels, if any, must match
        ``arms``.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Raises
    ------
    TypeError
        When ``dtype`` is not a numpy dtype.
    ValueError
        For an unknown family, missing or unexpected variables, a DataArray with dims other
        than the posterior's, arrays of the wrong rank or of different shapes, an arm axis
        that does not match ``arms``, a visitor axis that does not match ``observed``,
        non-real dtypes, a ``dtype`` that is not floating-point, observed variables named
        like the posterior's own (``conversion``, ``arm``, ...) or as no store can hold, or
        in-memory values out of range after the cast (``conversion`` outside [0, 1],
        negative ``value``, NaN or infinity, beyond the dtype's range).
    """
    cls = result_type(family)
    arms = check_arm_names(arms)
    dtype = _draws_dtype(dtype)
    wanted = cls.metric_variables
    missing = [name for name in wanted if name not in variables]
    extra = sorted(set(variables) - set(wanted))
    if missing or extra:
        raise ValueError(
            f"a {family} posterior takes the variable(s) {list(wanted)}; "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"unexpected {extra}" if extra else "")
        )
    arrays = {name: _as_array(name, variables[name], arms) for name in wanted}
    shape = arrays[wanted[0]].shape
    for name, array in arrays.items():
        if array.ndim not in (3, 4):
            raise ValueError(
                f"variable {name!r} has {array.ndim} dims (shape {array.shape}); expected "
                "(visitor, draw, arm) or (visitor, chain, draw, arm)"
            )
        if array.shape != shape:
            raise ValueError(
                f"variables {wanted[0]!r} and {name!r} have different shapes: {shape} and "
                f"{array.shape}"
            )
        if array.shape[-1] != len(arms):
            raise ValueError(
                f"variable {name!r} has {array.shape[-1]} entries on its last (arm) axis but "
                f"{len(arms)} arms were named: {arms}"
            )
    dims = (VISITOR, DRAW, ARM) if len(shape) == 3 else (VISITOR, CHAIN, DRAW, ARM)
    return _build_result(cls, arms, dims, arrays, observed, chunks, dtype)


def from_inference_data(
    inference_data,
    family: str,
    arms: Sequence[str] | None = None,
    observed: xr.Dataset | None = None,
    *,
    variables: Mapping[str, str] | None = None,
    visitor_dim: str = VISITOR,
    arm_dim: str = ARM,
    chunks: int | str | None = "auto",
    dtype=np.float32,
) -> BCFResult:
    """Build a typed posterior from an ArviZ-style ``posterior`` group with (chain, draw) dims.

    ArviZ stores each variable as (chain, draw, event dims...); pytyche wants visitor-major
    (visitor, chain, draw, arm). The variables are transposed and rechunked once, lazily, so
    that chunks split ``visitor`` only (about 128 MB each, with ``chunks="auto"``). Both
    ``chain`` and ``draw`` are kept: every (chain, draw) pair casts one vote.

    Parameters
    ----------
    inference_data : arviz.InferenceData, xarray.DataTree or xarray.Dataset
        Anything with a ``posterior`` group (attribute or child node), or that group itself.
    family : {"binary", "continuous", "hurdle"}
        The posterior family.
    arms : sequence of str, optional
        Arm names, control first. Default: the values of the group's arm coordinate. When
        that coordinate holds ArviZ's default labels ``0, 1, ..., K-1`` (a dim ArviZ named
        itself, such as ``p_arm_dim_1``), ``arms`` gives the names, in that order; other
        labels must equal ``arms``.
    observed : xarray.Dataset, optional
        Visitor-level observed data, rows in the group's visitor order.
    variables : mapping of str to str, optional
        Contract name → name in the group, e.g. ``{"conversion": "p_convert"}``. Default: the
        contract names themselves.
    visitor_dim, arm_dim : str
        Names of the group's visitor and arm dims (renamed to ``visitor`` and ``arm``), e.g.
        ``visitor_dim="p_arm_dim_0", arm_dim="p_arm_dim_1"`` for a NumPyro site ``p_arm`` of
        shape (visitor, arm) without named dims.
    chunks : "auto", int or None, default "auto"
        As in :func:`from_arrays`.
    dtype : numpy float dtype or None, default float32
        As in :func:`from_arrays`.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Raises
    ------
    ValueError
        When the group lacks a variable, a variable lacks ``chain``, ``draw``, the visitor or
        the arm dim, or any check of :func:`from_arrays` fails.
    TypeError
        When no ``posterior`` group can be found.
    """
    cls = result_type(family)
    group = _posterior_group(inference_data)
    names = dict(variables or {})
    unknown = sorted(set(names) - set(cls.metric_variables))
    if unknown:
        raise ValueError(
            f"variables maps unknown contract name(s) {unknown}; a {family} posterior has "
            f"{list(cls.metric_variables)}"
        )
    arrays = {}
    source_arms = None
    for name in cls.metric_variables:
        source = names.get(name, name)
        if source not in group.data_vars:
            raise ValueError(
                f"the posterior group has no variable {source!r} (for {name!r}); it has "
                f"{list(group.data_vars)}"
            )
        var = group[source]
        needed = [CHAIN, DRAW, visitor_dim, arm_dim]
        lacking = [d for d in needed if d not in var.dims]
        if lacking:
            raise ValueError(
                f"variable {source!r} has dims {var.dims}; it lacks {lacking} (expected "
                f"{CHAIN!r}, {DRAW!r}, visitor dim {visitor_dim!r} and arm dim {arm_dim!r})"
            )
        if len(var.dims) != 4:
            raise ValueError(
                f"variable {source!r} has extra dims "
                f"{[d for d in var.dims if d not in needed]}; expected exactly {needed}"
            )
        # One lazy transpose to visitor-major; the rechunk in _build_result follows it.
        arrays[name] = var.transpose(visitor_dim, CHAIN, DRAW, arm_dim).data
        if arm_dim in var.coords and source_arms is None:
            labels = var.coords[arm_dim].values
            # ArviZ labels an unnamed dim 0, 1, 2, ...: those are positions, not arm names.
            default = labels.dtype.kind in "iu" and np.array_equal(labels, np.arange(labels.size))
            if not default:
                source_arms = [str(a) for a in labels]
    if arms is None:
        if source_arms is None:
            raise ValueError(
                f"the posterior group has no {arm_dim!r} coordinate naming the arms (or only "
                "ArviZ's default labels 0, 1, ...); pass arms=[control, ...]"
            )
        arms = source_arms
    elif source_arms is not None and [str(a) for a in arms] != source_arms:
        raise ValueError(
            f"arms {list(arms)} do not match the group's {arm_dim!r} coordinate {source_arms}"
        )
    return from_arrays(family, arms, observed, chunks=chunks, dtype=dtype, **arrays)


def _posterior_group(inference_data) -> xr.Dataset:
    if isinstance(inference_data, xr.Dataset):
        return inference_data
    if isinstance(inference_data, xr.DataTree):
        if "posterior" in inference_data.children:
            return inference_data["posterior"].to_dataset()
        return inference_data.to_dataset()
    group = getattr(inference_data, "posterior", None)
    if isinstance(group, xr.Dataset):
        return group
    if isinstance(group, xr.DataTree):
        return group.to_dataset()
    kind = type(inference_data).__name__
    raise TypeError(
        "from_inference_data needs an arviz.InferenceData, an xarray.DataTree with a "
        f"'posterior' group, or that group as an xarray.Dataset; got {kind}"
    )


def _as_array(name: str, value, arms: list[str]):
    if isinstance(value, xr.DataArray):
        value = _contract_order(name, value, arms)
    if not isinstance(value, da.Array):
        value = np.asarray(value)
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise ValueError(f"variable {name!r} has dtype {value.dtype}; expected real numbers")
    return value


def _contract_order(name: str, array: xr.DataArray, arms: list[str]):
    """A DataArray's data in (visitor, [chain,] draw, arm) order, transposed by dim name."""
    contract = (VISITOR, CHAIN, DRAW, ARM)
    unknown = [d for d in array.dims if d not in contract]
    if unknown:
        raise ValueError(
            f"variable {name!r} is a DataArray with dims {array.dims}; {unknown} are not "
            f"posterior dims {list(contract)}. Rename them (DataArray.rename), or pass the "
            "array's .data to use its axes in (visitor, [chain,] draw, arm) order"
        )
    if ARM in array.coords and [str(a) for a in array[ARM].values] != arms:
        raise ValueError(
            f"variable {name!r} has arm labels {[str(a) for a in array[ARM].values]} but the "
            f"arms are {arms}"
        )
    return array.transpose(*(d for d in contract if d in array.dims)).data


def _draws_dtype(dtype):
    """The dtype draws are cast to: a floating-point numpy dtype, or None to keep theirs."""
    if dtype is None:
        return None
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be a numpy floating-point dtype (np.float32, np.float64) or None, got "
            f"{dtype!r}"
        ) from None
    if resolved.kind != "f":
        raise ValueError(
            f"dtype must be a floating-point dtype (np.float32, np.float64) or None, got "
            f"{resolved}: casting draws (probabilities, expected values) to it would truncate "
            "them"
        )
    return resolved


def _check_cast(name: str, given: np.ndarray, cast: np.ndarray) -> None:
    """Finite draws must stay finite (within the dtype's range) after the cast."""
    overflow = ~np.isfinite(cast)
    if overflow.any():
        index = tuple(int(i) for i in np.argwhere(overflow)[0])
        raise ValueError(
            f"variable {name!r} holds {given[index].item()!r} at index {index}, beyond the "
            f"range of {cast.dtype} (largest {np.finfo(cast.dtype).max:g}); pass "
            "dtype=np.float64 or rescale the draws"
        )


def _check_values(name: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"variable {name!r} holds NaN or infinity, first at index {tuple(bad)}")
    if name == "conversion" and values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"variable 'conversion' must be probabilities in [0, 1]; found values in "
            f"[{values.min()}, {values.max()}]"
        )
    if name == "value" and values.size and values.min() < 0:
        raise ValueError(
            f"variable 'value' (spend given conversion) must be >= 0; found {values.min()}"
        )


def _build_result(cls, arms, dims, arrays, observed, chunks, dtype) -> BCFResult:
    shape = next(iter(arrays.values())).shape
    n_visitors = shape[0]
    if observed is not None:
        check_observed(observed, arms)
        size = observed.sizes.get(VISITOR)
        if size != n_visitors:
            raise ValueError(
                f"observed data has {size} visitors but the arrays' visitor axis has {n_visitors}"
            )
    data_vars = {}
    for name, array in arrays.items():
        if dtype is not None and array.dtype != dtype:
            given = array
            with np.errstate(over="ignore", invalid="ignore"):
                array = array.astype(dtype)
            if isinstance(array, np.ndarray) and np.isfinite(given).all():
                _check_cast(name, given, array)
        if isinstance(array, np.ndarray):
            _check_values(name, array)  # after the cast: the values that will be used
        array = _chunk(array, chunks)
        data_vars[name] = (dims, array)
    ds = posterior_dataset(cls.family, arms, data_vars)
    if observed is not None:
        ds = attach_observed(ds, observed)
    return cls(ds)


def _chunk(array, chunks):
    if chunks is None:
        return array
    if chunks == "auto":
        if not isinstance(array, da.Array):
            return array
        size = visitor_chunk(array.shape, array.dtype.itemsize)
    elif isinstance(chunks, int | np.integer) and not isinstance(chunks, bool) and chunks > 0:
        size = min(int(chunks), max(1, array.shape[0]))
    else:
        raise ValueError(f"chunks must be 'auto', a positive int or None, got {chunks!r}")
    target = (size, *array.shape[1:])
    if isinstance(array, da.Array):
        return array.rechunk(target)
    return da.from_array(array, chunks=target)
