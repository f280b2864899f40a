"""Persistence: posteriors to Zarr or netCDF, written atomically, and reopened lazily.

Writes go to a temporary path beside the target (same directory, so the same file system)
and are renamed into place only once complete. A netCDF file is replaced with one atomic
``os.replace``. A Zarr store is a directory, which cannot be swapped in one step: an existing
store is first renamed aside, the new one renamed into place, and only then is the old one
removed. A crash or kill at any moment leaves at the target path the old store, the new
complete store, or (between the two renames) nothing — never a half-written store. A killed
writer may leave its temporary (``.<name>.pytyche-*``) beside the target; it is never read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from .data import CHUNK_BYTES, visitor_chunk
from .reduction import _worker_threads
from .results import ARM, CHAIN, DRAW, RESULT_TYPES, VISITOR, _BCFResult, posterior

__all__ = ["PosteriorReadError", "open_posterior", "to_netcdf", "to_zarr"]

# netCDF (HDF5) chunks are kept smaller than dask chunks: HDF5 reads whole chunks, and a dask
# chunk then spans several of them.
NETCDF_CHUNK_BYTES = 16 * 2**20
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CDF_MAGIC = b"CDF"


class PosteriorReadError(ValueError):
    """A posterior store could not be read: not a pytyche posterior, or corrupt data."""


def to_zarr(result, path, *, overwrite: bool = False) -> Path:
    """Write a posterior to a Zarr (format 3) store, atomically.

    The big variables are stored visitor-major, in chunks of about 128 MB that split
    ``visitor`` only; text covariates are stored as variable-length UTF-8 strings (a missing
    text value is stored as the empty string and read back as missing).

    Parameters
    ----------
    result : BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult or xarray.Dataset
        The posterior (a Dataset is validated with :func:`pytyche.posterior` first).
    path : str or os.PathLike
        The store's directory.
    overwrite : bool, default False
        Replace an existing store at ``path``. The old store stays in place until the new
        one is complete.

    Returns
    -------
    pathlib.Path
        The store's path.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    TypeError, ValueError
        When ``result`` is not a posterior in the contract.
    """
    ds = _prepare(result, CHUNK_BYTES)
    target = Path(path)
    encoding = {
        name: {"chunks": ds[name].data.chunksize}
        for name in ds.data_vars
        if isinstance(ds[name].data, da.Array)
    }

    def write(tmp: Path) -> None:
        ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)

    _atomic_directory(target, write, overwrite)
    return target


def to_netcdf(result, path, *, overwrite: bool = False) -> Path:
    """Write a posterior to a netCDF-4 file, atomically.

    Parameters
    ----------
    result : BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult or xarray.Dataset
        The posterior.
    path : str or os.PathLike
        The file.
    overwrite : bool, default False
        Replace an existing file at ``path`` (in one atomic rename).

    Returns
    -------
    pathlib.Path
        The file's path.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    TypeError, ValueError
        When ``result`` is not a posterior in the contract.
    """
    ds = _prepare(result, CHUNK_BYTES)
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    encoding = {}
    for name in ds.data_vars:
        var = ds[name]
        per_visitor = int(np.prod(var.shape[1:])) * var.dtype.itemsize
        rows = min(var.shape[0], visitor_chunk(per_visitor, NETCDF_CHUNK_BYTES))
        encoding[name] = {"chunksizes": (max(rows, 1), *var.shape[1:])}
    tmp = target.parent / f".{target.name}.pytyche-{uuid.uuid4().hex}.tmp"
    try:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def open_posterior(path, chunks="auto") -> _BCFResult:
    """Open a posterior written by :func:`to_zarr` or :func:`to_netcdf`, lazily.

    Nothing but metadata and the small ``arm`` labels is read. The big variables come back as
    dask arrays in the visitor-major layout (visitor, [chain,] draw, arm); a store in another
    axis order is transposed lazily. A chunk that cannot be read (truncated or corrupt) raises
    :class:`PosteriorReadError` naming the variable, the visitors and the path when it is
    computed.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr store directory or a netCDF file.
    chunks : "auto" or int, default "auto"
        ``"auto"``: visitors per chunk such that a chunk is about 128 MB (rounded to a
        multiple of the store's own visitor chunk); an int: visitors per chunk. ``draw``,
        ``chain`` and ``arm`` are never split.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Raises
    ------
    FileNotFoundError
        When nothing is at ``path``.
    PosteriorReadError
        When the path is neither a Zarr store nor a netCDF file, or holds a Dataset that is
        not a pytyche posterior (the message says what is wrong).
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"no posterior at {target}")
    engine = _engine(target)
    kwargs = {"consolidated": False} if engine == "zarr" else {}
    try:
        raw = xr.open_dataset(target, engine=engine, chunks=None, **kwargs)
    except Exception as error:
        raise PosteriorReadError(
            f"{target} could not be opened as a {engine} posterior store: {error}"
        ) from error
    try:
        family = raw.attrs.get("pytyche_family")
        if family is None:
            raise PosteriorReadError(
                f"{target} is not a pytyche posterior: it has no 'pytyche_family' attribute "
                f"(attributes: {sorted(raw.attrs)}; variables: {list(raw.data_vars)})"
            )
        if family not in RESULT_TYPES:
            raise PosteriorReadError(
                f"{target}: unknown pytyche_family {family!r}; expected one of "
                f"{sorted(RESULT_TYPES)}"
            )
        names = RESULT_TYPES[family].metric_variables
        missing = [name for name in names if name not in raw.data_vars]
        if missing:
            raise PosteriorReadError(
                f"{target} is not a complete {family} posterior: it lacks the variable(s) "
                f"{missing} (found {list(raw.data_vars)})"
            )
        ds = _lazy(raw, names, target, engine, chunks)
        try:
            return posterior(ds)
        except (TypeError, ValueError) as error:
            raise PosteriorReadError(
                f"{target} is not a valid pytyche posterior: {error}"
            ) from error
    except BaseException:
        raw.close()
        raise


# --------------------------------------------------------------------------- writing


def _prepare(result, chunk_bytes: int) -> xr.Dataset:
    """The Dataset to write: visitor-major, visitor-only chunks, text coordinates encodable."""
    if isinstance(result, xr.Dataset):
        result = posterior(result)
    if not isinstance(result, _BCFResult):
        raise TypeError(
            "to_zarr/to_netcdf take a pytyche result (or a posterior Dataset), got "
            f"{type(result).__name__}"
        )
    ds = result.dataset
    order = (VISITOR, *result.sample_dims, ARM)
    data_vars = {}
    for name in result.metric_variables:
        var = ds[name].transpose(*order)
        per_visitor = int(np.prod(var.shape[1:])) * var.dtype.itemsize
        rows = min(var.shape[0], visitor_chunk(per_visitor, chunk_bytes))
        data = var.data
        if not isinstance(data, da.Array):
            data = da.from_array(data, chunks=(max(rows, 1), *var.shape[1:]))
        else:
            data = data.rechunk((max(rows, 1), *var.shape[1:]))
        data_vars[name] = (order, data, var.attrs)
    coords = {}
    for name, coord in ds.coords.items():
        variable = coord.variable
        if _is_text(variable.dtype):
            variable = variable.copy(data=_encode_text(variable.data))
            variable.encoding = {}
        coords[name] = variable
    return xr.Dataset(data_vars, coords=coords, attrs=dict(ds.attrs))


def _is_text(dtype) -> bool:
    return np.dtype(dtype).kind in "OUST"


def _encode_text(data):
    """Text as object arrays of str with '' for missing: one encoding both formats accept."""
    if isinstance(data, da.Array):
        return data.map_blocks(_encode_text_block, dtype=object)
    return _encode_text_block(np.asarray(data))


def _encode_text_block(block: np.ndarray) -> np.ndarray:
    out = np.asarray(block, dtype=object).copy()
    missing = np.asarray(pd.isna(out), dtype=bool)
    out[missing] = ""
    for i, value in enumerate(out.flat):
        if not isinstance(value, str):
            out.flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return out


def _atomic_directory(target: Path, write, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    token = uuid.uuid4().hex
    tmp = target.parent / f".{target.name}.pytyche-{token}.tmp"
    old = target.parent / f".{target.name}.pytyche-{token}.old"
    try:
        # A private pool, so that after a failed task every chunk write still running has
        # finished before the temporary is removed (else it could be recreated under us).
        with ThreadPoolExecutor(_worker_threads()) as pool, dask.config.set(pool=pool):
            write(tmp)
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        # Put the old store back if the new one never arrived.
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def _engine(target: Path) -> str:
    if target.is_dir():
        if (target / "zarr.json").exists() or (target / ".zgroup").exists():
            return "zarr"
        raise PosteriorReadError(f"{target} is a directory but not a Zarr store")
    with open(target, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_HDF5_MAGIC) or head.startswith(_CDF_MAGIC):
        return "netcdf4"
    raise PosteriorReadError(f"{target} is neither a Zarr store nor a netCDF file")


def _lazy(raw: xr.Dataset, names, target: Path, engine: str, chunks) -> xr.Dataset:
    """Wrap the store's lazily indexed variables in dask, visitor-major, errors made clear."""
    data_vars = {}
    for name in names:
        var = raw[name].variable
        if VISITOR not in var.dims:
            raise PosteriorReadError(
                f"{target}: variable {name!r} has dims {var.dims}; expected (visitor, "
                "[chain,] draw, arm)"
            )
        order = [VISITOR, *(d for d in (CHAIN, DRAW) if d in var.dims), ARM]
        order += [d for d in var.dims if d not in order]  # extra dims fail validation below
        order = [d for d in order if d in var.dims]
        var = var.transpose(*order)
        stored = var.encoding.get("chunks") or var.encoding.get("chunksizes")
        stored_rows = None
        if stored is not None:
            stored_rows = int(stored[list(raw[name].dims).index(VISITOR)])
        rows = _rows(chunks, var, stored_rows)
        reader = _GuardedReader(var, name, target)
        data = da.from_array(
            reader,
            chunks=(rows, *var.shape[1:]),
            asarray=False,
            fancy=False,
            lock=False,
            name=f"pytyche-open-{name}-{uuid.uuid4().hex}",
            meta=np.empty((0,) * var.ndim, dtype=var.dtype),
        )
        data_vars[name] = (var.dims, data, var.attrs)
    coords = {}
    for name, coord in raw.coords.items():
        variable = coord.variable
        if name in raw.indexes:
            variable = variable.load()
            if _is_text(variable.dtype):
                variable = variable.copy(data=_decode_text_block(variable.values))
        elif _is_text(variable.dtype):
            variable = variable.chunk()
            variable = variable.copy(
                data=variable.data.map_blocks(_decode_text_block, dtype=object)
            )
        else:
            variable = variable.chunk()
        coords[name] = variable
    return xr.Dataset(data_vars, coords=coords, attrs=dict(raw.attrs))


def _decode_text_block(block: np.ndarray) -> np.ndarray:
    out = np.asarray(block).astype(object)
    out[out == ""] = np.nan  # how xarray marks missing text in memory
    return out


def _rows(chunks, var: xr.Variable, stored_rows: int | None) -> int:
    n = var.shape[0]
    if chunks == "auto":
        per_visitor = int(np.prod(var.shape[1:])) * var.dtype.itemsize
        rows = visitor_chunk(per_visitor)
        if stored_rows:
            # Whole stored chunks per dask chunk: no stored chunk is read twice.
            rows = max(stored_rows, (rows // stored_rows) * stored_rows)
    elif isinstance(chunks, int | np.integer) and not isinstance(chunks, bool) and chunks > 0:
        rows = int(chunks)
    else:
        raise ValueError(f"chunks must be 'auto' or a positive int, got {chunks!r}")
    return max(1, min(rows, n))


class _GuardedReader:
    """Array-like over one stored variable; a failed read names the variable and visitors."""

    def __init__(self, variable: xr.Variable, name: str, path: Path):
        self.variable = variable
        self.name = name
        self.path = path
        self.shape = variable.shape
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def __getitem__(self, key):
        try:
            block = np.asarray(self.variable[key].values)
        except Exception as error:
            rows = key[0] if isinstance(key, tuple) else key
            where = f"visitors {rows.start}-{rows.stop}" if isinstance(rows, slice) else "data"
            raise PosteriorReadError(
                f"{self.path}: could not read {where} of {self.name!r} (truncated or corrupt "
                f"chunk?): {type(error).__name__}: {error}"
            ) from error
        expected = tuple(
            len(range(*k.indices(n))) if isinstance(k, slice) else None
            for k, n in zip(key if isinstance(key, tuple) else (key,), self.shape, strict=False)
        )
        if any(e is not None and e != s for e, s in zip(expected, block.shape, strict=False)):
            raise PosteriorReadError(
                f"{self.path}: {self.name!r} block has shape {block.shape}, expected {expected}"
            )
        return block
