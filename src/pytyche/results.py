"""The posterior contract (schema 1) and the three typed result views over it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from . import _html
from ._validate import check_arm_names, check_choice
from .segments import covariate_kind, covariate_names, dtype_kind

__all__ = [
    "MISSING_OF",
    "MISSING_SUFFIX",
    "OUTCOME_MODEL",
    "SCHEMA_VERSION",
    "BCFResult",
    "BinaryBCFResult",
    "ContinuousBCFResult",
    "HurdleBCFResult",
    "check_posterior",
    "decode_missing_text",
    "posterior",
    "posterior_dataset",
    "result_type",
]

SCHEMA_VERSION = 1
VISITOR, DRAW, CHAIN, ARM = "visitor", "draw", "chain", "arm"
# A doubly robust posterior's (visitor, arm) coordinate: the forests' posterior-mean metric
# before the correction, the outcome model of off-policy evaluation (which must not see a
# visitor's own outcome through its prediction).
OUTCOME_MODEL = "outcome_model"
# A text variable with missing values is stored with "" in their place plus a boolean
# companion variable named ``<name>__pytyche_missing`` (attribute MISSING_OF naming the text
# variable) that is True where the value is missing; a genuine "" stays a value. Every
# Dataset that becomes a posterior is decoded (see decode_missing_text), whichever reader
# opened the store.
MISSING_SUFFIX = "__pytyche_missing"
MISSING_OF = "pytyche_missing_of"


class BCFResult:
    """A validated, read-only view of a posterior Dataset in the pytyche contract (schema 1).

    The base class of :class:`BinaryBCFResult`, :class:`ContinuousBCFResult` and
    :class:`HurdleBCFResult`, and the declared type of every ``posterior`` argument. Subclasses
    name their family and the variables whose product is the per-visitor expected
    metric. Construction checks dims, coordinates and attributes only; it never loads the
    posterior's draws. A Dataset as a store holds it is read as the contract says: data
    variables along ``visitor`` alone are observed data (coordinates), and missing-text
    companions are applied (:func:`decode_missing_text`), whichever reader opened the store.
    """

    family: ClassVar[str]
    metric_variables: ClassVar[tuple[str, ...]]

    def __init__(self, dataset: xr.Dataset):
        if not isinstance(dataset, xr.Dataset):
            raise TypeError(
                f"{type(self).__name__} wraps an xarray.Dataset, got {type(dataset).__name__}"
            )
        # What a store keeps as a data variable along visitor (a name with a space cannot be
        # marked as a coordinate on disk) is observed data, as the contract says.
        visitor_vars = [
            name
            for name, var in dataset.data_vars.items()
            if var.dims == (VISITOR,) and name not in self.metric_variables
        ]
        if visitor_vars:
            dataset = dataset.set_coords(visitor_vars)
        dataset = decode_missing_text(dataset)
        _check_contract(dataset, self.family, self.metric_variables)
        self._dataset = dataset

    @property
    def dataset(self) -> xr.Dataset:
        """The posterior Dataset this result views."""
        return self._dataset

    @property
    def variants(self) -> tuple[str, ...]:
        """Arm names in order, control first."""
        return tuple(str(arm) for arm in self._dataset[ARM].values)

    @property
    def control(self) -> str:
        """The control arm's name (the first arm)."""
        return self.variants[0]

    @property
    def sample_dims(self) -> tuple[str, ...]:
        """The dims over which draws vote: ``("chain", "draw")`` or ``("draw",)``."""
        dims = self._dataset[self.metric_variables[0]].dims
        return (CHAIN, DRAW) if CHAIN in dims else (DRAW,)

    @property
    def n_samples(self) -> int:
        """Number of posterior samples: every (chain, draw) pair counts once."""
        return int(np.prod([self._dataset.sizes[d] for d in self.sample_dims]))

    @property
    def observed(self) -> xr.Dataset | None:
        """The visitor-level observed data (coordinates along ``visitor``), or None.

        A posterior without a ``variant`` coordinate carries no observed data.
        """
        if "variant" not in self._dataset.coords:
            return None
        # Variables, not DataArrays: a DataArray per coordinate costs milliseconds at dozens
        # of covariates, on every call that reads the covariates.
        observed = xr.Dataset(
            {
                name: variable
                for name, variable in self._dataset.coords.variables.items()
                if variable.dims == (VISITOR,) and name != VISITOR
            }
        )
        if VISITOR in self._dataset.indexes:
            observed = observed.assign_coords({VISITOR: self._dataset.indexes[VISITOR]})
        return observed

    @property
    def correction(self) -> dict | None:
        """How the effects were corrected (see :func:`pytyche.doubly_robust`), or None.

        None means the draws are the forests' own: regularized toward no effect, with
        intervals that do not count that bias.
        """
        text = self._dataset.attrs.get("pytyche_correction")
        return None if text is None else dict(json.loads(text))

    def metric_factors(self) -> tuple[xr.DataArray, ...]:
        """The variables whose product is the metric, each (visitor, sample dims..., arm).

        Transposed lazily to the visitor-major layout the reductions stream over.
        """
        order = (VISITOR, *self.sample_dims, ARM)
        variables = self._dataset.variables
        # Only the dimension coordinates: not a DataArray with every covariate, then dropped.
        coords = {dim: variables[dim] for dim in order if dim in self._dataset.indexes}
        return tuple(
            xr.DataArray(variables[name].transpose(*order), coords=coords, name=name)
            for name in self.metric_variables
        )

    def metric(self) -> xr.DataArray:
        """Per-visitor expected metric for every draw and arm, (visitor, sample dims..., arm).

        Lazy on a dask-backed posterior.
        """
        factors = self.metric_factors()
        # At least float32, so integer-coded draws cannot wrap around in products and contrasts.
        dtype = np.result_type(*(f.dtype for f in factors), np.float32)
        metric = factors[0].astype(dtype)
        if len(factors) == 2:
            metric = metric * factors[1].astype(dtype)
        return metric.rename("metric")

    def contrast(self) -> xr.DataArray:
        """Per-visitor contrast of each arm against control: ``metric - metric[control]``.

        The control column is zero. Lazy on a dask-backed posterior.
        """
        metric = self.metric()
        return (metric - metric.isel({ARM: 0})).rename("contrast")

    def to_zarr(self, path, *, overwrite: bool = False):
        """Write this posterior to a Zarr store: :func:`pytyche.to_zarr` (atomic)."""
        from .io import to_zarr  # io builds on this module

        return to_zarr(self, path, overwrite=overwrite)

    def to_netcdf(self, path, *, overwrite: bool = False):
        """Write this posterior to a netCDF file: :func:`pytyche.to_netcdf` (atomic)."""
        from .io import to_netcdf

        return to_netcdf(self, path, overwrite=overwrite)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}: {n}" for d, n in self._dataset.sizes.items())
        return f"<{type(self).__name__} ({sizes}) arms={list(self.variants)}>"

    def _repr_html_(self) -> str:
        return _view_html(self)


class BinaryBCFResult(BCFResult):
    """Posterior of a binary outcome: ``conversion`` = P(convert | visitor, arm)."""

    family = "binary"
    metric_variables = ("conversion",)


class ContinuousBCFResult(BCFResult):
    """Posterior of a continuous outcome: ``expected`` = E[outcome | visitor, arm]."""

    family = "continuous"
    metric_variables = ("expected",)


class HurdleBCFResult(BCFResult):
    """Posterior of a hurdle outcome (e.g. revenue per visitor).

    ``conversion`` = P(convert | visitor, arm) and ``value`` = E[outcome | converted, visitor,
    arm]; the metric is their product.
    """

    family = "hurdle"
    metric_variables = ("conversion", "value")


_DIM_MEANINGS = {VISITOR: "visitors", CHAIN: "chains", DRAW: "draws", ARM: "arms"}
_OBSERVED_ROLES = {"variant": "arm served", "outcome": "outcome"}


def _view_html(result: BCFResult) -> str:
    """The Jupyter view of a result, from metadata alone: nothing dask-backed is computed."""
    ds = result.dataset
    names = result.metric_variables
    metric = [ds[name].variable for name in names]
    lazy = any(var.chunks is not None for var in metric)
    dim_rows = []
    for dim in metric[0].dims:
        chunks = [None if v.chunks is None else v.chunks[v.dims.index(dim)] for v in metric]
        meaning = _DIM_MEANINGS.get(str(dim), "")
        if dim == DRAW and CHAIN in metric[0].dims:
            meaning = "draws per chain"
        row = [dim, _html.integer(ds.sizes[dim]), meaning]
        dim_rows.append(row + [_html.chunk_text(c) for c in chunks])
    stored = ", ".join(f"{name} {var.dtype}" for name, var in zip(names, metric, strict=True))
    total = sum(int(var.nbytes) for var in metric)
    summary = _html.fields(
        [
            ("family", f"{result.family}: metric = {' × '.join(names)}"),
            ("arms", ", ".join([f"{result.control} (control)", *result.variants[1:]])),
            ("samples", f"{result.n_samples:,} ({' × '.join(result.sample_dims)})"),
            ("visitors", _html.integer(ds.sizes[VISITOR])),
            ("bytes", f"{_html.byte_size(total)} ({stored})"),
            ("storage", "dask, lazy (this view reads nothing)" if lazy else "numpy, in memory"),
        ]
    )
    sizes = _html.table(["dim", "size", "what", *(f"chunks of {n}" for n in names)], dim_rows)
    observed_rows = []
    for name in covariate_names(ds):
        var = ds.variables[name]
        kind = dtype_kind(var.dtype)
        if kind == "object" and var.chunks is not None:
            kind = "not read (lazy object column)"
        elif kind == "object":
            try:
                kind = covariate_kind(var.values, name)
            except TypeError:
                kind = "mixed kinds (not usable in rules)"
        where = "lazy" if var.chunks is not None else "in memory"
        observed_rows.append([name, _OBSERVED_ROLES.get(name, "covariate"), kind, var.dtype, where])
    observed = (
        _html.table(["observed", "role", "kind", "dtype", "storage"], observed_rows)
        if observed_rows
        else _html.paragraph("no observed data along visitor")
    )
    title = (
        f"{type(result).__name__}: {result.family}, {ds.sizes[VISITOR]:,} visitors × "
        f"{result.n_samples:,} samples × {len(result.variants)} arms"
    )
    return _html.view(title, summary, sizes, observed)


RESULT_TYPES: dict[str, type[BCFResult]] = {
    cls.family: cls for cls in (BinaryBCFResult, ContinuousBCFResult, HurdleBCFResult)
}


def posterior(dataset: xr.Dataset) -> BCFResult:
    """Wrap a posterior Dataset in the result type of its family.

    The family is the ``pytyche_family`` attribute when present, else inferred from the
    variables: ``conversion`` and ``value`` → hurdle, ``conversion`` → binary, ``expected`` →
    continuous.

    Parameters
    ----------
    dataset : xarray.Dataset
        A posterior in the pytyche contract.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Raises
    ------
    TypeError
        When ``dataset`` is not an xarray Dataset.
    ValueError
        When the family cannot be determined or the Dataset breaks the contract.
    """
    if not isinstance(dataset, xr.Dataset):
        raise TypeError(f"posterior() takes an xarray.Dataset, got {type(dataset).__name__}")
    family = dataset.attrs.get("pytyche_family")
    if family is None:
        if "conversion" in dataset and "value" in dataset:
            family = "hurdle"
        elif "conversion" in dataset:
            family = "binary"
        elif "expected" in dataset:
            family = "continuous"
        else:
            raise ValueError(
                "cannot tell the posterior's family: no pytyche_family attribute and none of "
                f"the family variables 'conversion', 'expected'; variables: {list(dataset)}"
            )
    return result_type(family, name="pytyche_family")(dataset)


def result_type(family: Any, *, name: str = "family") -> type[BCFResult]:
    """The result class of a family name.

    Parameters
    ----------
    family : {"binary", "continuous", "hurdle"}
        The family.
    name : str, default "family"
        The argument's name, for the message.

    Returns
    -------
    type
        :class:`BinaryBCFResult`, :class:`ContinuousBCFResult` or :class:`HurdleBCFResult`.

    Raises
    ------
    ValueError
        For any other value.
    """
    return RESULT_TYPES[check_choice(name, family, RESULT_TYPES)]


def posterior_dataset(
    family: str,
    arms: Sequence[str],
    variables: Mapping[str, tuple[Sequence[str], Any]],
    *,
    attrs: Mapping[str, Any] | None = None,
    coords: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build a contract Dataset: the one builder every producer (fits, arrays, examples) uses.

    Parameters
    ----------
    family : {"binary", "continuous", "hurdle"}
        The family; it fixes the variables needed.
    arms : sequence of str
        Arm names, control first.
    variables : mapping of str to (dims, array)
        The family's variables, each with its dims (visitor, [chain,] draw, arm).
    attrs : mapping, optional
        More attributes (``pytyche_family`` and ``pytyche_schema`` are set here).
    coords : mapping, optional
        More coordinates (covariates along ``visitor``, ``variant``, ...).

    Returns
    -------
    xarray.Dataset
        Validated against the contract.

    Raises
    ------
    ValueError
        When the variables do not make a posterior of ``family``.
    """
    cls = result_type(family)
    dataset = xr.Dataset(
        {name: (tuple(dims), data) for name, (dims, data) in variables.items()},
        coords={ARM: np.array(check_arm_names(arms), dtype=object), **(coords or {})},
        attrs={**(attrs or {}), "pytyche_family": cls.family, "pytyche_schema": SCHEMA_VERSION},
    )
    _check_contract(dataset, cls.family, cls.metric_variables)
    return dataset


def check_posterior(posterior: Any) -> BCFResult:
    """A typed result that carries observed data, or a clear error.

    Parameters
    ----------
    posterior : object
        What a caller passed as ``posterior``.

    Returns
    -------
    BCFResult
        ``posterior`` itself.

    Raises
    ------
    TypeError
        When ``posterior`` is not one of the three result types (a bare Dataset included:
        the message says how to wrap it).
    ValueError
        When it carries no observed data (no ``variant`` coordinate along ``visitor``).
    """
    if not isinstance(posterior, BCFResult):
        hint = (
            " (for a Dataset, call ds.tyche.thompson_allocation or wrap it with "
            "pytyche.posterior(ds))"
            if isinstance(posterior, xr.Dataset)
            else ""
        )
        names = ", ".join(cls.__name__ for cls in RESULT_TYPES.values())
        raise TypeError(f"posterior must be one of {names}; got {type(posterior).__name__}{hint}")
    if "variant" not in posterior.dataset.coords:  # no observed data (without building it)
        raise ValueError(
            "the posterior carries no observed data (no 'variant' coordinate along visitor), "
            "so segment rules have no covariates to match"
        )
    return posterior


def decode_missing_text(dataset: xr.Dataset) -> xr.Dataset:
    """Apply the missing-text companions of a stored posterior: missing values become NaN.

    A text variable written with missing values has ``""`` in their place and a boolean
    companion ``<name>__pytyche_missing`` (attribute ``pytyche_missing_of``) that is True where
    the value is missing. Plain readers (``xr.open_dataset``, ``xr.open_zarr``) return both as
    stored; this turns them back into one text variable (an object array of ``str``, missing
    values as NaN, as xarray marks them in memory) and drops the companion. Lazy (dask-backed)
    variables stay lazy.

    Parameters
    ----------
    dataset : xarray.Dataset
        A Dataset as read from a store (or any Dataset; one without companions is returned
        unchanged).

    Returns
    -------
    xarray.Dataset

    Raises
    ------
    ValueError
        When a companion does not have the dims of the text variable it marks.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"device": ("visitor", ["a", ""]),
    ...                         "device__pytyche_missing": ("visitor", [False, True],
    ...                                                     {"pytyche_missing_of": "device"})})
    >>> decode_missing_text(ds)["device"].values.tolist()
    ['a', nan]
    """
    companions = {
        name: str(var.attrs[MISSING_OF])
        for name, var in dataset.variables.items()
        if MISSING_OF in var.attrs
    }
    if not companions:
        return dataset
    decoded = dataset.drop_vars(list(companions))
    for mask_name, name in companions.items():
        if name not in dataset.variables:
            continue
        text, mask = dataset.variables[name], dataset.variables[mask_name]
        if text.dims != mask.dims:
            raise ValueError(
                f"the missing-value companion {mask_name!r} of {name!r} has dims {mask.dims}; "
                f"expected those of {name!r}, {text.dims}"
            )
        if isinstance(text.data, da.Array) or isinstance(mask.data, da.Array):
            data = da.map_blocks(
                _decode_text_block, da.asarray(text.data), da.asarray(mask.data), dtype=object
            )
        else:
            data = _decode_text_block(text.values, mask.values)
        variable = xr.Variable(text.dims, data, text.attrs)
        if name in dataset.coords:
            decoded = decoded.assign_coords({name: variable})
        else:
            decoded = decoded.assign({name: variable})
    return decoded


def _decode_text_block(text: np.ndarray, missing: np.ndarray) -> np.ndarray:
    out = np.asarray(text).astype(object)
    out[np.asarray(missing, dtype=bool)] = np.nan  # how xarray marks missing text in memory
    return out


def _check_contract(ds: xr.Dataset, family: str, variables: tuple[str, ...]) -> None:
    """Check the contract from metadata alone (and the small ``variant`` labels in memory)."""
    declared = ds.attrs.get("pytyche_family", family)
    if declared != family:
        raise ValueError(
            f"pytyche_family is {declared!r} but this is a {family} result; use "
            "pytyche.posterior(ds) to pick the result type from the Dataset"
        )
    schema = ds.attrs.get("pytyche_schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ValueError(f"pytyche_schema is {schema!r}; this pytyche reads schema 1")
    for name in variables:
        if name not in ds.data_vars:
            raise ValueError(
                f"a {family} posterior needs the variable {name!r}; found {list(ds.data_vars)}"
            )
    dims = set(ds[variables[0]].dims)
    for name in variables:
        var = ds[name]
        missing = {VISITOR, DRAW, ARM} - set(var.dims)
        if missing:
            raise ValueError(
                f"variable {name!r} lacks the dim(s) {sorted(missing)}; it has {var.dims}, "
                "expected (visitor, draw, arm) with an optional chain"
            )
        extra = set(var.dims) - {VISITOR, DRAW, ARM, CHAIN}
        if extra:
            raise ValueError(
                f"variable {name!r} has unexpected dim(s) {sorted(extra, key=str)}; expected "
                "(visitor, draw, arm) with an optional chain"
            )
        if set(var.dims) != dims:
            raise ValueError(
                f"variables {variables[0]!r} and {name!r} have different dims: "
                f"{ds[variables[0]].dims} and {var.dims}"
            )
        if not (np.issubdtype(var.dtype, np.floating) or np.issubdtype(var.dtype, np.integer)):
            raise ValueError(f"variable {name!r} has dtype {var.dtype}; expected a real number")
    empty = {d: ds.sizes[d] for d in (DRAW, CHAIN) if d in dims and ds.sizes[d] == 0}
    if empty:
        raise ValueError(f"the posterior has no samples: {empty}; expected at least one draw")
    if ARM not in ds.coords:
        raise ValueError("the posterior has no 'arm' coordinate naming its variants")
    labels = ds[ARM].values.tolist()
    if any(not isinstance(label, str) for label in labels):
        raise ValueError(
            f"the 'arm' coordinate must hold the arm names as text (str), got {labels!r} "
            f"(dtype {ds[ARM].dtype}); relabel it with text, e.g. "
            "ds.assign_coords(arm=['control', 'A', ...]) (bytes: decode them as UTF-8)"
        )
    arms = check_arm_names(labels)
    if "variant" in ds.coords:
        variant = ds.coords["variant"]
        if variant.dims != (VISITOR,):
            raise ValueError(f"coordinate 'variant' has dims {variant.dims}; expected (visitor,)")
        # Labels of a lazily opened store stay unread: checking them needs a compute.
        # Lazily opened labels are checked when thompson_allocation computes, not here.
        if variant.chunks is None:
            check_variant_labels(pd.unique(variant.values.ravel()), arms)


def check_variant_labels(labels, arms: list[str]) -> None:
    """Raise ValueError naming the ``variant`` labels that are not arm names."""
    unknown = sorted({str(v) for v in labels} - set(arms))
    if unknown:
        raise ValueError(
            f"'variant' holds values that are not arm names: {unknown[:10]}; arms are {arms}"
        )


# Kept while reduction.py is being reworked; removed once nothing imports it.
_BCFResult = BCFResult
