"""Persistence: posteriors to Zarr or netCDF, written atomically, and reopened lazily.

Writes go to a temporary path beside the target (same directory, so the same file system)
and are moved into place only once complete. A netCDF file replaces an old one with one
atomic ``os.replace``. A Zarr store is a directory: on Linux it is swapped with an existing
store in one atomic ``renameat2(RENAME_EXCHANGE)``, so the target always holds a complete
store; where that call is unavailable (another OS, or a file system that refuses it) the old
store is renamed aside, the new one renamed into place, and only then is the old one removed
— a kill between those two renames leaves nothing at the target, and :func:`open_posterior`
then names the sibling the interrupted write left. A killed writer may leave its temporary
(``.<name>.pytyche-*``) beside the target; it is never read.

Integrity: every Zarr variable carries a CRC32C checksum per chunk and netCDF's numeric
variables a Fletcher-32 checksum per HDF5 chunk, so flipped bytes raise on read; every chunk
of the posterior variables is written (none is left implicit as the fill value), and
:func:`open_posterior` checks that each one is present.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import itertools
import os
import shutil
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from ._config import get_options, worker_threads
from .data import visitor_chunk
from .results import ARM, CHAIN, DRAW, RESULT_TYPES, VISITOR, BCFResult, posterior

__all__ = ["PosteriorReadError", "open_posterior", "to_netcdf", "to_zarr"]

# A text variable with missing values is stored with "" in their place plus a boolean
# companion variable (this suffix, attribute MISSING_OF naming the text variable) that is True
# where the value is missing; a genuine "" stays a value.
MISSING_SUFFIX = "__pytyche_missing"
MISSING_OF = "pytyche_missing_of"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CDF_MAGIC = b"CDF"


class PosteriorReadError(ValueError):
    """A posterior store could not be read: not a pytyche posterior, or corrupt data."""


def to_zarr(result, path, *, overwrite: bool = False) -> Path:
    """Write a posterior to a Zarr (format 3) store, atomically.

    The big variables are stored visitor-major, in chunks of about 128 MB that split
    ``visitor`` only, every chunk written and checksummed (CRC32C). Text covariates are stored
    as variable-length UTF-8 strings; missing text values are recorded in a boolean companion
    variable, so a genuine empty string reads back as ``""`` and a missing value as missing.

    Parameters
    ----------
    result : BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult or xarray.Dataset
        The posterior (a Dataset is validated with :func:`pytyche.posterior` first).
    path : str or os.PathLike
        The store's directory.
    overwrite : bool, default False
        Replace an existing store (or file) at ``path``. The old store stays in place until
        the new one is complete.

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
    from zarr.codecs import Crc32cCodec, ZstdCodec

    ds = _prepare(result, get_options()["chunk_bytes"])
    encoding = {}
    for name, var in ds.variables.items():
        # Zarr's default compressor, then a checksum of the compressed bytes.
        encoding[name] = {"compressors": [ZstdCodec(level=0), Crc32cCodec()]}
        if name in ds.data_vars:
            encoding[name]["chunks"] = var.data.chunksize

    def write(tmp: Path) -> None:
        ds.to_zarr(
            tmp,
            mode="w-",
            zarr_format=3,
            consolidated=False,
            encoding=encoding,
            write_empty_chunks=True,
        )

    return _atomic_write(Path(path), write, overwrite)


def to_netcdf(result, path, *, overwrite: bool = False) -> Path:
    """Write a posterior to a netCDF-4 file, atomically.

    The big variables are stored visitor-major in HDF5 chunks of about 16 MB; numeric
    variables carry a Fletcher-32 checksum per chunk. Text is stored as in :func:`to_zarr`.

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
    IsADirectoryError
        When ``path`` is a directory (a Zarr store, say): it is never replaced by a file.
    TypeError, ValueError
        When ``result`` is not a posterior in the contract.
    """
    ds = _prepare(result, get_options()["chunk_bytes"])
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"{target} is a directory; to_netcdf writes a single file and does not replace a "
            "directory (remove it, or write the netCDF file elsewhere)"
        )
    encoding = {}
    for name, var in ds.variables.items():
        if _is_text(var.dtype) or var.ndim == 0:
            continue  # HDF5 applies no checksum filter to variable-length strings
        encoding[name] = {"fletcher32": True}
        if name in ds.data_vars:
            # Smaller than dask chunks: HDF5 reads whole chunks, and a dask chunk then spans
            # several of them.
            rows = visitor_chunk(var.shape, var.dtype.itemsize, get_options()["netcdf_chunk_bytes"])
            encoding[name]["chunksizes"] = (rows, *var.shape[1:])

    def write(tmp: Path) -> None:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)

    return _atomic_write(target, write, overwrite)


def open_posterior(path, chunks="auto") -> BCFResult:
    """Open a posterior written by :func:`to_zarr` or :func:`to_netcdf`, lazily.

    Nothing but metadata and the index coordinates (``arm``, and ``visitor`` when it has
    labels) is read; a Zarr store's chunk listing is checked so that a missing chunk of a
    posterior variable is an error here. The big variables come back as dask arrays in the
    visitor-major layout (visitor, [chain,] draw, arm); a store in another axis order is
    transposed lazily. A chunk that cannot be read (truncated, or failing its checksum)
    raises :class:`PosteriorReadError` naming the variable, the visitors and the path when
    it is computed.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr store directory or a netCDF file.
    chunks : "auto" or int, default "auto"
        ``"auto"``: visitors per chunk such that a chunk is about 128 MB (rounded down to a
        whole number of the store's own visitor chunks, at least one); an int: visitors per
        chunk. ``draw``, ``chain`` and ``arm`` are never split.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Raises
    ------
    FileNotFoundError
        When nothing is at ``path`` (the message names any ``.<name>.pytyche-*`` sibling an
        interrupted write left).
    PosteriorReadError
        When the path is neither a Zarr store nor a netCDF file, holds a Dataset that is not
        a pytyche posterior, or a Zarr store lacks chunks of a posterior variable (the
        message says what is wrong).
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(_not_found(target))
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
        if engine == "zarr":
            _check_zarr_chunks(target, names)
        ds = _lazy(raw, names, target, chunks)
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
    """The Dataset to write: visitor-major, visitor-only chunks, text with a missing mask."""
    if isinstance(result, xr.Dataset):
        result = posterior(result)
    if not isinstance(result, BCFResult):
        raise TypeError(
            "to_zarr/to_netcdf take a pytyche result (or a posterior Dataset), got "
            f"{type(result).__name__}"
        )
    ds = result.dataset
    order = (VISITOR, *result.sample_dims, ARM)
    data_vars = {}
    for name in result.metric_variables:
        var = ds[name].transpose(*order)
        rows = visitor_chunk(var.shape, var.dtype.itemsize, chunk_bytes)
        data = da.asarray(var.data).rechunk((rows, *var.shape[1:]))
        data_vars[name] = (order, data, var.attrs)
    coords = {}
    for name, coord in ds.coords.items():
        # Encoding from the store a result was read from does not carry over.
        variable = xr.Variable(coord.dims, coord.variable.data, coord.attrs)
        if _is_text(variable.dtype):
            text, missing = _encode_text(variable.data)
            variable = xr.Variable(variable.dims, text, variable.attrs)
            if missing is not None:
                mask = f"{name}{MISSING_SUFFIX}"
                if mask in ds.variables:
                    raise ValueError(f"a variable may not be named {mask!r}: pytyche uses it")
                coords[mask] = xr.Variable(variable.dims, missing, {MISSING_OF: str(name)})
        coords[name] = variable
    return xr.Dataset(data_vars, coords=coords, attrs=dict(ds.attrs))


def _is_text(dtype) -> bool:
    return np.dtype(dtype).kind in "OUST"


def _encode_text(data):
    """(text as object array of str with "" where missing, boolean missing mask or None).

    The mask is None for in-memory text without missing values; lazy text always gets one.
    """
    if isinstance(data, da.Array):
        text = data.map_blocks(lambda b: _encode_text_block(b)[0], dtype=object)
        missing = data.map_blocks(lambda b: _encode_text_block(b)[1], dtype=bool)
        return text, missing
    text, missing = _encode_text_block(np.asarray(data))
    return text, (missing if missing.any() else None)


def _encode_text_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.asarray(block, dtype=object).copy()
    missing = np.asarray(pd.isna(out), dtype=bool)
    out[missing] = ""
    for i, value in enumerate(out.flat):
        if not isinstance(value, str):
            out.flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return out, missing


def _atomic_write(target: Path, write, overwrite: bool) -> Path:
    """Run ``write(tmp)`` on a temporary beside ``target``, then move it into place.

    The write runs in a private thread pool set as dask's pool, so that after a failed task
    every chunk write still running has finished before the temporary is removed (else it
    could be recreated under us).
    """
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    token = uuid.uuid4().hex
    tmp = target.parent / f".{target.name}.pytyche-{token}.tmp"
    old = target.parent / f".{target.name}.pytyche-{token}.old"
    try:
        with ThreadPoolExecutor(worker_threads()) as pool, dask.config.set(pool=pool):
            write(tmp)
        if tmp.is_file() and not target.is_dir():
            os.replace(tmp, target)  # a file over a file (or nothing): one atomic step
        elif target.exists() or target.is_symlink():
            if _exchange(tmp, target):
                _remove(tmp)  # it now holds the old store
            else:
                os.rename(target, old)
                os.rename(tmp, target)
                _remove(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        _remove(tmp)
        # Put the old store back if the new one never arrived.
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the call is unavailable or the file system
    refuses it; raises OSError for other failures.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (_errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.ENOTSUP):
        return False
    raise OSError(errno, os.strerror(errno), str(a), None, str(b))


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


# --------------------------------------------------------------------------- reading


def _not_found(target: Path) -> str:
    prefix = f".{target.name}.pytyche-"
    parent = target.parent
    left = []
    if parent.is_dir():
        left = sorted(p.name for p in parent.iterdir() if p.name.startswith(prefix))
    message = f"no posterior at {target}"
    if left:
        message += (
            f"; an interrupted write left {left} beside it in {target.parent} (a '.old' is "
            "the previous store, complete; a '.tmp' is a new one, complete only if the write "
            "got as far as replacing the store): rename the one you want to "
            f"{target.name!r}"
        )
    return message


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


def _check_zarr_chunks(target: Path, names) -> None:
    """Every chunk (or shard) of the posterior variables exists: one directory listing each.

    A missing chunk would otherwise read back as the fill value, without an error.
    """
    import zarr

    group = zarr.open_group(target, mode="r")
    for name in names:
        array = group[name]
        grid = array.shards or array.chunks
        counts = [-(-size // chunk) for size, chunk in zip(array.shape, grid, strict=True)]
        root = target / name
        present = {
            str(Path(folder, file).relative_to(root).as_posix())
            for folder, _, files in os.walk(root)
            for file in files
        }
        for index in itertools.product(*(range(count) for count in counts)):
            key = array.metadata.encode_chunk_key(index)
            if key not in present:
                raise PosteriorReadError(
                    f"{target}: variable {name!r} is missing its chunk {key!r} (chunk index "
                    f"{index}, visitors {index[0] * grid[0]}-"
                    f"{min(array.shape[0], (index[0] + 1) * grid[0])}): the store is "
                    "incomplete or damaged"
                )


def _lazy(raw: xr.Dataset, names, target: Path, chunks) -> xr.Dataset:
    """Wrap the store's lazily indexed variables in dask, visitor-major, errors made clear."""
    data_vars = {}
    for name in names:
        var = raw[name].variable
        if VISITOR not in var.dims:
            raise PosteriorReadError(
                f"{target}: variable {name!r} has dims {var.dims}; expected (visitor, "
                "[chain,] draw, arm)"
            )
        stored = var.encoding.get("chunks") or var.encoding.get("chunksizes")
        stored_rows = None if stored is None else int(stored[var.dims.index(VISITOR)])
        # Contract order; any other dim goes last (and fails validation).
        var = var.transpose(VISITOR, *(d for d in (CHAIN, DRAW, ARM) if d in var.dims), ...)
        rows = _rows(chunks, var, stored_rows)
        data_vars[name] = (var.dims, _guarded(var, name, target, rows), var.attrs)
    masks = {
        var.attrs[MISSING_OF]: name
        for name, var in raw.variables.items()
        if MISSING_OF in var.attrs
    }
    coords = {}
    for name, coord in raw.coords.items():
        if name in masks.values():
            continue
        variable = coord.variable
        if name in raw.indexes or variable.ndim == 0:
            try:
                variable = variable.load()
            except Exception as error:
                raise PosteriorReadError(
                    f"{target}: could not read the {name!r} coordinate: "
                    f"{type(error).__name__}: {error}"
                ) from error
            if _is_text(variable.dtype):
                variable = variable.copy(data=variable.values.astype(object))
        else:
            rows = visitor_chunk(variable.shape, variable.dtype.itemsize)
            data = _guarded(variable, name, target, rows)
            if _is_text(variable.dtype):
                mask = masks.get(name)
                if mask is None:
                    data = data.map_blocks(_as_object, dtype=object)
                else:
                    missing = _guarded(raw.variables[mask], mask, target, rows)
                    data = da.map_blocks(_decode_text_block, data, missing, dtype=object)
            variable = xr.Variable(variable.dims, data, variable.attrs)
        coords[name] = variable
    return xr.Dataset(data_vars, coords=coords, attrs=dict(raw.attrs))


def _as_object(block: np.ndarray) -> np.ndarray:
    return np.asarray(block).astype(object)


def _decode_text_block(block: np.ndarray, missing: np.ndarray) -> np.ndarray:
    out = _as_object(block)
    out[np.asarray(missing, dtype=bool)] = np.nan  # how xarray marks missing text in memory
    return out


def _rows(chunks, var: xr.Variable, stored_rows: int | None) -> int:
    """Visitors per dask chunk when opening ``var`` (visitor first)."""
    if chunks == "auto":
        rows = visitor_chunk(var.shape, var.dtype.itemsize)
        if stored_rows:
            # Whole stored chunks per dask chunk: no stored chunk is read twice.
            rows = max(stored_rows, (rows // stored_rows) * stored_rows)
    elif isinstance(chunks, int | np.integer) and not isinstance(chunks, bool) and chunks > 0:
        rows = int(chunks)
    else:
        raise ValueError(f"chunks must be 'auto' or a positive int, got {chunks!r}")
    return max(1, min(rows, var.shape[0]))


def _guarded(var: xr.Variable, name: str, target: Path, rows: int) -> da.Array:
    """A dask array over a stored variable, split along its first axis only."""
    return da.from_array(
        _GuardedReader(var, name, target),
        chunks=(rows, *var.shape[1:]),
        asarray=False,
        fancy=False,
        lock=False,
        name=f"pytyche-open-{name}-{uuid.uuid4().hex}",
        meta=np.empty((0,) * var.ndim, dtype=var.dtype),
    )


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
