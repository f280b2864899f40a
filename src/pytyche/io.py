"""Persistence: posteriors to Zarr or netCDF, written atomically, and reopened lazily.

Writes go to a temporary path beside the target (same directory, so the same file system)
and are moved into place only once complete. A netCDF file replaces an old one with one
atomic ``os.replace``. A Zarr store is a directory: on Linux it is swapped with an existing
store in one atomic ``renameat2(RENAME_EXCHANGE)``, so the target always holds a complete
store; where that call is unavailable (another OS, or a file system that refuses it) the old
store is renamed aside, the new one renamed into place, and only then is the old one removed
— a kill between those two renames leaves nothing at the target, and :func:`open_posterior`
then names the sibling the interrupted write left. A killed writer may leave its temporary
(``.<name>.pytyche-*``) beside the target; it is never read. The final move of a write to a
new path never replaces anything (Linux ``renameat2(RENAME_NOREPLACE)``, elsewhere an atomic
claim of the name): of two writers racing for one new path, exactly one wins and the other gets
``FileExistsError``. ``overwrite=True`` replaces only a pytyche posterior (a store or file whose
metadata says so) or an empty directory.

What a lazily opened posterior reads: its chunks are read from its path when computed. If the
path is replaced after :func:`open_posterior` (a new store written over it), reading raises
:class:`PosteriorReadError` instead of mixing in the replacement's numbers: reopen it.

Zarr stores carry consolidated metadata, so ``xarray.open_zarr`` opens them quietly, and any
reader (``xarray.open_zarr``, ``xarray.open_dataset``, :func:`open_posterior`) gives a Dataset
that means the same once it becomes a posterior (:func:`pytyche.posterior`, ``ds.tyche``).

Integrity: every Zarr variable carries a CRC32C checksum per chunk and netCDF's numeric
variables a Fletcher-32 checksum per HDF5 chunk, so flipped bytes raise on read; every chunk
of every variable and coordinate is written (none is left implicit as the fill value), and
:func:`open_posterior` checks that each one is present.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import itertools
import json
import os
import shutil
import stat
import sys
import tempfile
import uuid
import warnings
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.base
import dask.threaded
import numpy as np
import pandas as pd
import xarray as xr

from ._config import get_options, worker_threads
from ._validate import check_variable_name
from .data import visitor_chunk
from .results import (
    ARM,
    CHAIN,
    DRAW,
    MISSING_OF,
    MISSING_SUFFIX,
    RESULT_TYPES,
    VISITOR,
    BCFResult,
    posterior,
)
from .segments import covariate_kind

__all__ = [
    "PosteriorReadError",
    "check_write_target",
    "is_posterior_store",
    "open_posterior",
    "to_netcdf",
    "to_zarr",
]
# xarray stores a coordinate whose name has a space as a data variable, and says so; a
# posterior reads every variable along visitor but the draws as a coordinate, so nothing is lost.
_SPACE_IN_NAME = r"coordinate .* has a space in its name"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CDF_MAGIC = b"CDF"


class PosteriorReadError(ValueError):
    """A posterior store could not be read: not a pytyche posterior, or corrupt data."""


def to_zarr(result, path, *, overwrite: bool = False) -> Path:
    """Write a posterior to a Zarr (format 3) store, atomically.

    The big variables are stored visitor-major, in chunks of about 128 MB that split
    ``visitor`` only, every chunk written and checksummed (CRC32C), with consolidated metadata.
    Text is stored as variable-length UTF-8 strings; missing text values are recorded in a
    boolean companion variable, so a genuine empty string reads back as ``""`` and a missing
    value as missing, whichever reader opens the store. An object column of numbers or
    booleans is stored as numbers or booleans, not as text.

    Parameters
    ----------
    result : BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult or xarray.Dataset
        The posterior (a Dataset is validated with :func:`pytyche.posterior` first).
    path : str or os.PathLike
        The store's directory.
    overwrite : bool, default False
        Replace what is at ``path``, if it is a pytyche posterior (a store or netCDF file
        written by pytyche) or an empty directory; anything else is refused. The old store
        stays in place until the new one is complete.

    Returns
    -------
    pathlib.Path
        The store's path.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False, or another writer created ``path``
        while this one was writing (the other write is kept).
    ValueError
        When ``overwrite`` is True but ``path`` holds something that is not a pytyche
        posterior, or ``path`` names no entry (``"."``), or a variable cannot be stored
        exactly (a name Zarr cannot hold, text that is not valid Unicode, an object column
        mixing kinds of values).
    TypeError
        When ``result`` is not a posterior in the contract.
    """
    from zarr.codecs import Crc32cCodec, ZstdCodec

    target = check_write_target(path, overwrite=overwrite)
    ds = _prepare(result, get_options()["chunk_bytes"], fmt="Zarr")
    encoding: dict[Hashable, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        # Zarr's default compressor, then a checksum of the compressed bytes.
        encoding[name] = {"compressors": [ZstdCodec(level=0), Crc32cCodec()]}
        if name in ds.data_vars:
            encoding[name]["chunks"] = var.data.chunksize

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # Zarr 3 calls consolidated metadata an extension; xarray reads it quietly.
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not")
            warnings.filterwarnings("ignore", message=_SPACE_IN_NAME)
            ds.to_zarr(
                tmp,
                mode="w-",
                zarr_format=3,
                consolidated=True,
                encoding=encoding,
                write_empty_chunks=True,
            )

    return _atomic_write(target, write, overwrite)


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
        Replace an existing pytyche posterior file at ``path`` (in one atomic rename);
        anything else is refused.

    Returns
    -------
    pathlib.Path
        The file's path.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False, or another writer created ``path``
        while this one was writing (the other write is kept).
    IsADirectoryError
        When ``path`` is a directory (a Zarr store, say): it is never replaced by a file.
    ValueError
        When ``overwrite`` is True but ``path`` is not a pytyche posterior file, or a
        variable cannot be stored exactly: besides the cases of :func:`to_zarr`, text holding
        a NUL character (netCDF would cut it there).
    TypeError
        When ``result`` is not a posterior in the contract.
    """
    target = check_write_target(path, overwrite=overwrite, directory=False)
    ds = _prepare(result, get_options()["chunk_bytes"], fmt="netCDF")
    encoding: dict[Hashable, dict[str, Any]] = {}
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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SPACE_IN_NAME)
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)

    return _atomic_write(target, write, overwrite)


def open_posterior(path, chunks="auto") -> BCFResult:
    """Open a posterior written by :func:`to_zarr` or :func:`to_netcdf`, lazily.

    Nothing but metadata and the index coordinates (``arm``, and ``visitor`` when it has
    labels) is read; a Zarr store's chunk listing is checked so that a missing chunk of any
    variable or coordinate is an error here. The big variables come back as dask arrays in the
    visitor-major layout (visitor, [chain,] draw, arm), in chunks that split ``visitor``
    only. A store in another axis order, or chunked along ``draw``, ``chain`` or ``arm``, is
    converted lazily, block by block as it is read, with one warning that says what that
    costs on every pass and how to avoid it. A chunk that cannot be read (truncated, or
    failing its checksum) raises :class:`PosteriorReadError` naming the variable, the
    visitors and the path when it is computed.

    Parameters
    ----------
    path : str or os.PathLike
        A Zarr store directory or a netCDF file.
    chunks : "auto" or int, default "auto"
        ``"auto"``: visitors per chunk such that a chunk is about 128 MB (the ``chunk_bytes``
        option; rounded down to a whole number of the store's own visitor chunks, at least
        one, unless the store splits ``draw``, ``chain`` or ``arm`` and its visitor chunks
        are larger than that); an int: visitors per chunk. ``draw``, ``chain`` and ``arm``
        are never split.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Warns
    -----
    dask.array.PerformanceWarning
        Once per call, when a posterior variable is stored in another axis order than
        visitor-major or in chunks that split ``draw``, ``chain`` or ``arm``. The message
        names the variables and their stored chunks, says how many times every pass reads
        each stored chunk, and gives the fix: rewrite the store once with
        :func:`to_zarr`, which writes visitor-major.

    Raises
    ------
    FileNotFoundError
        When nothing is at ``path`` (the message names any ``.<name>.pytyche-*`` sibling an
        interrupted write left).
    PosteriorReadError
        When the path is neither a Zarr store nor a netCDF file (a named pipe or a device
        is refused without being opened), holds a Dataset that is not a pytyche posterior,
        or a Zarr store lacks a chunk of any variable or coordinate (the message says what
        is wrong). Computing a chunk raises it too once the path has been replaced by
        another store after opening: reopen the path to read the new posterior.
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(_not_found(target))
    engine = _engine(target)
    identity = _identity(target)
    kwargs: dict[str, Any] = {"consolidated": False} if engine == "zarr" else {}
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
        if not isinstance(family, str) or family not in RESULT_TYPES:
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
            _check_zarr_chunks(target)
        ds = _lazy(raw, names, target, chunks, identity)
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


def check_write_target(path, *, overwrite: bool = False, directory: bool = True) -> Path:
    """Check, before any work, that a posterior may be written at ``path``.

    :func:`to_zarr` and :func:`to_netcdf` call it first; the ``pytyche demo`` command calls it
    before fitting.

    Parameters
    ----------
    path : str or os.PathLike
        Where the posterior is to go.
    overwrite : bool, default False
        Whether an existing posterior at ``path`` may be replaced.
    directory : bool, default True
        True for a Zarr store (a directory), False for a netCDF file.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        When ``path`` names no entry of a directory (``"."``, ``".."``, ``"/"``), or
        ``overwrite`` is True and what is at ``path`` is neither a pytyche posterior (a Zarr
        store or netCDF file whose metadata has ``pytyche_family``) nor an empty directory.
    FileExistsError
        When something is at ``path`` and ``overwrite`` is False.
    IsADirectoryError
        When ``directory`` is False and ``path`` is a directory.
    FileNotFoundError, NotADirectoryError, PermissionError
        When the parent directory does not exist, is not a directory, or is not writable.
    """
    given = Path(path)
    if given.name in ("", ".", "..") or str(path).rstrip("/\\").endswith(("/.", "/..")):
        raise ValueError(
            f"path {str(path)!r} names no entry of a directory; give the posterior its own "
            "name, such as 'posterior.zarr'"
        )
    target = given
    parent = target.parent
    if not parent.exists():
        raise FileNotFoundError(f"cannot write {target}: its directory {parent} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {target}: {parent} is not a directory")
    try:  # a real probe: permission bits say nothing to root, or on a read-only mount
        handle, probe = tempfile.mkstemp(prefix=".pytyche-probe-", dir=parent)
    except OSError as error:
        raise PermissionError(
            f"cannot write {target}: the directory {parent} is not writable ({error.strerror})"
        ) from None
    os.close(handle)
    os.unlink(probe)
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    if target.is_dir() and not directory:
        raise IsADirectoryError(
            f"{target} is a directory; to_netcdf writes a single file and does not replace a "
            "directory (remove it, or write the netCDF file elsewhere)"
        )
    if target.is_dir() and not any(target.iterdir()):
        return target
    if not is_posterior_store(target):
        kind = "directory" if target.is_dir() else "file"
        raise ValueError(
            f"{target} is a {kind} that is not a pytyche posterior; overwrite=True replaces "
            "only a posterior pytyche wrote (or an empty directory). Remove it yourself if it "
            "may go, or write elsewhere"
        )
    return target


def is_posterior_store(path) -> bool:
    """Whether ``path`` is a Zarr store or netCDF file whose metadata names a pytyche family.

    Reads metadata only (the root attributes), never data.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    bool
    """
    path = Path(path)
    try:
        if path.is_dir():
            for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
                meta = path / name
                if meta.is_file():
                    attrs = json.loads(meta.read_text(encoding="utf-8"))
                    attrs = attrs.get(key, {}) if key else attrs
                    return isinstance(attrs, dict) and "pytyche_family" in attrs
            return False
        if not path.is_file():
            return False
        with open(path, "rb") as handle:
            head = handle.read(8)
        if not (head.startswith(_HDF5_MAGIC) or head.startswith(_CDF_MAGIC)):
            return False
        import netCDF4

        with netCDF4.Dataset(path, "r") as nc:
            return "pytyche_family" in nc.ncattrs()
    except (OSError, ValueError):
        return False


def _prepare(result, chunk_bytes: int, fmt: str) -> xr.Dataset:
    """The Dataset to write: visitor-major, visitor-only chunks, every variable exact.

    Text gets a missing-value companion; object columns of numbers or booleans become numbers
    or booleans; names and text that the format cannot keep exactly raise ValueError.
    """
    if isinstance(result, xr.Dataset):
        result = posterior(result)
    if not isinstance(result, BCFResult):
        raise TypeError(
            "to_zarr/to_netcdf take a pytyche result (or a posterior Dataset), got "
            f"{type(result).__name__}"
        )
    ds = result.dataset
    for name in ds.variables:
        check_variable_name(name)
    order = (VISITOR, *result.sample_dims, ARM)
    data_vars = {}
    for name in result.metric_variables:
        var = ds[name].transpose(*order)
        rows = visitor_chunk(var.shape, var.dtype.itemsize, chunk_bytes)
        data = da.asarray(var.data).rechunk((rows, *var.shape[1:]))
        data_vars[name] = (order, data, var.attrs)
    coords: dict[Hashable, xr.Variable] = {}
    for name, coord in ds.coords.items():
        # Encoding from the store a result was read from does not carry over.
        variable = xr.Variable(coord.dims, coord.variable.data, coord.attrs)
        missing = None
        if variable.dtype.kind == "O" and not isinstance(variable.data, da.Array):
            variable = _typed_object(variable, str(name))
        if _is_text(variable.dtype):
            text, missing = _encode_text(variable.data, str(name), fmt)
            variable = xr.Variable(variable.dims, text, variable.attrs)
        if missing is not None:
            coords[f"{name}{MISSING_SUFFIX}"] = xr.Variable(
                variable.dims, missing, {MISSING_OF: str(name)}
            )
        coords[name] = variable
    return xr.Dataset(data_vars, coords=coords, attrs=dict(ds.attrs))


def _typed_object(variable: xr.Variable, name: str) -> xr.Variable:
    """An in-memory object variable as the kind its values are: numbers, booleans or text."""
    values = np.asarray(variable.values)
    try:
        kind = covariate_kind(values, name)
    except TypeError as error:
        raise ValueError(
            f"cannot store {name!r} exactly: {error}. A store keeps one kind per variable "
            "(1 and '1' would read back as the same text); convert it to one kind first"
        ) from None
    if kind == "text":
        return variable
    missing = np.asarray(pd.isna(values), dtype=bool)
    if kind == "bool":
        if missing.any():
            raise ValueError(
                f"cannot store {name!r} exactly: it holds booleans with missing values, which "
                "a store cannot keep as booleans; fill them, or convert the column to text or "
                "float"
            )
        return variable.copy(data=values.astype(bool))
    if not missing.any() and all(isinstance(v, int | np.integer) for v in values.flat):
        try:
            return variable.copy(data=values.astype(np.int64))
        except OverflowError:
            pass
    return variable.copy(data=np.where(missing, np.nan, values).astype(np.float64))


def _is_text(dtype) -> bool:
    return np.dtype(dtype).kind in "OUST"


def _encode_text(data, name: str, fmt: str):
    """(text as object array of str with "" where missing, boolean missing mask or None).

    The mask is None for in-memory text without missing values; lazy text always gets one.
    """
    if isinstance(data, da.Array):
        # da.map_blocks, not the method: typeshed's functools.wraps hides the method's signature.
        text = da.map_blocks(lambda b: _encode_text_block(b, name, fmt)[0], data, dtype=object)
        missing = da.map_blocks(lambda b: _encode_text_block(b, name, fmt)[1], data, dtype=bool)
        return text, missing
    text, missing = _encode_text_block(np.asarray(data), name, fmt)
    return text, (missing if missing.any() else None)


def _encode_text_block(block: np.ndarray, name: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    out = np.asarray(block, dtype=object).copy()
    missing = np.asarray(pd.isna(out), dtype=bool)
    out[missing] = ""
    for i, value in enumerate(out.flat):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"text variable {name!r} holds bytes {_excerpt(value)} that are not valid "
                    f"UTF-8 ({error.reason} at byte {error.start}); decode them yourself"
                ) from None
        elif not isinstance(value, str):
            raise ValueError(
                f"text variable {name!r} holds {value!r} ({type(value).__name__}) among its "
                "text; a store keeps one kind per variable: convert the column to one kind"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"text variable {name!r} holds {_excerpt(value)}, which is not valid Unicode "
                f"({error.reason}, character {error.start}); fix or drop that value"
            ) from None
        if fmt == "netCDF" and "\x00" in value:
            raise ValueError(
                f"text variable {name!r} holds {_excerpt(value)} with a NUL character "
                "('\\x00'), which netCDF cuts the text at; remove it, or write to Zarr "
                "(pytyche.to_zarr keeps it)"
            )
        out.flat[i] = value
    return out, missing


def _excerpt(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _private_pool():
    """A thread pool of our own as dask's pool, joined on exit, when the threaded scheduler runs.

    Only the threaded scheduler reads the ``pool`` option. Under another (a distributed
    client), the pool would only sit in the global dask config, which a nanny pickles to
    restart a lost worker: a thread pool cannot be pickled, so the worker would never return.
    """
    if dask.base.get_scheduler() not in (None, dask.threaded.get):
        yield
        return
    with ThreadPoolExecutor(worker_threads()) as pool, dask.config.set(pool=pool):
        yield


def _atomic_write(target: Path, write, overwrite: bool) -> Path:
    """Run ``write(tmp)`` on a temporary beside ``target``, then move it into place.

    A new path is claimed without replacing anything (another writer's store is kept); an
    existing one (``overwrite=True``, already checked) is swapped. On dask's threaded
    scheduler the write runs in a private thread pool, so that after a failed task every
    chunk write still running has finished before the temporary is removed (else it could be
    recreated under us).
    """
    token = uuid.uuid4().hex
    tmp = target.parent / f".{target.name}.pytyche-{token}.tmp"
    old = target.parent / f".{target.name}.pytyche-{token}.old"
    try:
        with _private_pool():
            write(tmp)
        moved = False
        if not overwrite or not (target.exists() or target.is_symlink()):
            try:
                _rename_noreplace(tmp, target)
                moved = True
            except FileExistsError:
                if not overwrite:
                    raise FileExistsError(
                        f"{target} was created by another writer while this one was writing; "
                        "its posterior is kept and this one discarded (write elsewhere, or "
                        "pass overwrite=True to replace it)"
                    ) from None
                # overwrite=True: another writer's posterior appeared meanwhile; replace it.
        if moved:
            pass
        elif tmp.is_file() and not target.is_dir():
            os.replace(tmp, target)  # a file over a file: one atomic step
        elif _exchange(tmp, target):
            _remove(tmp)  # it now holds the old store
        else:
            os.rename(target, old)
            os.rename(tmp, target)
            _remove(old)
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
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_UNSUPPORTED = (_errno.EINVAL, _errno.ENOSYS, _errno.EOPNOTSUPP, _errno.ENOTSUP)


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically, raising FileExistsError if ``dst`` exists.

    Linux ``renameat2(RENAME_NOREPLACE)``; where that is unavailable, the name is claimed
    first by an atomic exclusive create (``mkdir`` for a directory, ``O_EXCL`` for a file),
    which fails for every writer but one, and the claim is then replaced.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        flags = _RENAME_NOREPLACE
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
            return
        errno = ctypes.get_errno()
        if errno == _errno.EEXIST:
            raise FileExistsError(errno, os.strerror(errno), str(dst))
        if errno not in _UNSUPPORTED:
            raise OSError(errno, os.strerror(errno), str(src), None, str(dst))
    if src.is_dir():
        os.mkdir(dst)  # FileExistsError for all but one writer
    else:
        os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.replace(src, dst)  # replaces only our own empty claim


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
    if errno in _UNSUPPORTED:
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
    mode = target.stat().st_mode
    if not stat.S_ISREG(mode):
        raise PosteriorReadError(
            f"{target} is neither a regular file nor a directory (it is a "
            f"{_file_kind(mode)}); a posterior is a Zarr store directory or a netCDF file"
        )
    with open(target, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_HDF5_MAGIC) or head.startswith(_CDF_MAGIC):
        return "netcdf4"
    raise PosteriorReadError(f"{target} is neither a Zarr store nor a netCDF file")


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "named pipe",
        stat.S_ISSOCK: "socket",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "special file")


def _identity(target: Path) -> tuple[int, int]:
    """What a replacement of ``target`` changes: its device and inode numbers."""
    info = target.stat()
    return info.st_dev, info.st_ino


def _check_zarr_chunks(target: Path) -> None:
    """Every chunk (or shard) of every array exists: one directory listing each.

    A missing chunk would otherwise read back as the fill value (``""`` for text, NaN for
    floats), without an error.
    """
    import zarr

    group = zarr.open_group(target, mode="r", use_consolidated=False)
    for name, array in sorted(group.arrays()):
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
                where = ""
                if index:
                    dims = getattr(array.metadata, "dimension_names", None) or ("rows",)
                    label = "visitors" if dims[0] == VISITOR else f"{dims[0]} entries"
                    stop = min(array.shape[0], (index[0] + 1) * grid[0])
                    where = f", {label} {index[0] * grid[0]}-{stop}"
                raise PosteriorReadError(
                    f"{target}: variable {name!r} is missing its chunk {key!r} (chunk index "
                    f"{index}{where}): the store is incomplete or damaged"
                )


def _lazy(raw: xr.Dataset, names, target: Path, chunks, identity) -> xr.Dataset:
    """Wrap the store's lazily indexed variables in dask, visitor-major, errors made clear.

    Missing-text companions stay as they are stored: :func:`pytyche.posterior` decodes them,
    as it does for any reader's Dataset.
    """
    data_vars = {}
    conversions = []
    for name in names:
        var = raw[name].variable
        if VISITOR not in var.dims:
            raise PosteriorReadError(
                f"{target}: variable {name!r} has dims {var.dims}; expected (visitor, "
                "[chain,] draw, arm)"
            )
        stored = var.encoding.get("chunks") or var.encoding.get("chunksizes")
        stored_rows = None if stored is None else int(stored[var.dims.index(VISITOR)])
        stored_dims = var.dims
        split = [
            dim
            for dim, size, chunk in zip(var.dims, var.shape, stored or var.shape, strict=True)
            if dim != VISITOR and int(chunk) < size
        ]
        # Contract order; any other dim goes last (and fails validation).
        var = var.transpose(VISITOR, *(d for d in (CHAIN, DRAW, ARM) if d in var.dims), ...)
        rows = _rows(chunks, var, stored_rows, whole_stored_chunks=not split)
        if split or var.dims != stored_dims:
            reads = _reads_per_stored_chunk(var.shape[0], stored_rows, rows)
            conversions.append((name, stored_dims, stored, split, rows, reads))
        data_vars[name] = (var.dims, _guarded(var, name, target, rows, identity), var.attrs)
    if conversions:
        warnings.warn(_conversion_message(target, conversions), da.PerformanceWarning, 3)
    coords = {}
    # A data variable along visitor alone is a coordinate too: a store keeps a name with a
    # space as a data variable (it cannot be listed in the 'coordinates' attribute).
    for name, variable in raw.variables.items():
        if name in names or (name in raw.data_vars and variable.dims != (VISITOR,)):
            continue
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
            data = _guarded(variable, name, target, rows, identity)
            if _is_text(variable.dtype):
                data = da.map_blocks(_as_object, data, dtype=object)  # as in _encode_text
            variable = xr.Variable(variable.dims, data, variable.attrs)
        coords[name] = variable
    return xr.Dataset(data_vars, coords=coords, attrs=dict(raw.attrs))


def _as_object(block: np.ndarray) -> np.ndarray:
    return np.asarray(block).astype(object)


def _rows(
    chunks, var: xr.Variable, stored_rows: int | None, whole_stored_chunks: bool = True
) -> int:
    """Visitors per dask chunk when opening ``var`` (visitor first).

    A stored chunk that holds every draw and arm of its visitors is never split between dask
    chunks. One that holds only some draws or arms (a draw-split store) is, when it spans more
    visitors than a chunk of the target size: else a dask chunk would be all its visitors'
    draws, up to the whole posterior.
    """
    if chunks == "auto":
        rows = visitor_chunk(var.shape, var.dtype.itemsize)
        if stored_rows and (whole_stored_chunks or stored_rows <= rows):
            # Whole stored chunks per dask chunk: no stored chunk is read twice.
            rows = max(stored_rows, (rows // stored_rows) * stored_rows)
    elif isinstance(chunks, int | np.integer) and not isinstance(chunks, bool) and chunks > 0:
        rows = int(chunks)
    else:
        raise ValueError(f"chunks must be 'auto' or a positive int, got {chunks!r}")
    return max(1, min(rows, var.shape[0]))


def _reads_per_stored_chunk(n_visitors: int, stored_rows: int | None, rows: int) -> int:
    """How many dask chunks of ``rows`` visitors overlap the most-shared stored chunk."""
    if not stored_rows:
        return 1
    starts = np.arange(0, n_visitors, stored_rows)
    stops = np.minimum(starts + stored_rows, n_visitors)
    return int(((stops - 1) // rows - starts // rows + 1).max())


def _conversion_message(target: Path, conversions) -> str:
    """The warning for a store that is not visitor-major: what it costs, how to avoid it."""
    layouts = []
    for name, dims, stored, split, _, _ in conversions:
        layout = f"{name!r} is stored with dims {dims}"
        if stored is not None:
            layout += f" in chunks of {tuple(int(c) for c in stored)}"
        if split:
            layout += f" that split {' and '.join(repr(d) for d in split)}"
        layouts.append(layout)
    rows = min(c[4] for c in conversions)
    reads = max(c[5] for c in conversions)
    if reads > 1:
        cost = (
            f"every pass over it reads each stored chunk {reads} times, once per visitor "
            f"chunk that overlaps it ({reads}× the reading and decompressing of a "
            "visitor-major store), holds whole stored chunks in memory while it reads, and "
            "copies every block into visitor-major order"
        )
    elif any(c[3] for c in conversions):
        cost = (
            "every pass over it assembles each visitor chunk from several stored chunks and "
            "copies it into visitor-major order (one extra copy of the posterior per pass)"
        )
    else:
        cost = (
            "every pass over it copies each block into visitor-major order (a transpose: one "
            "extra copy of the posterior per pass)"
        )
    copy = target.with_name(f"{target.stem}-visitor-major.zarr")
    return (
        f"{target}: {'; '.join(layouts)}: not visitor-major (visitor, [chain,] draw, arm) in "
        f"chunks that split 'visitor' only. open_posterior converts it lazily into "
        f"visitor-major chunks of {rows:,} visitors, and {cost}. The fix: rewrite it once "
        f"(which pays this cost once) and open the copy, e.g. "
        f"pt.to_zarr(pt.open_posterior({str(target)!r}), {str(copy)!r})"
    )


def _guarded(var: xr.Variable, name: Hashable, target: Path, rows: int, identity) -> da.Array:
    """A dask array over a stored variable, split along its first axis only."""
    return da.from_array(
        _GuardedReader(var, name, target, identity),
        chunks=(rows, *var.shape[1:]),
        asarray=False,
        fancy=False,
        lock=False,
        name=f"pytyche-open-{name}-{uuid.uuid4().hex}",
        meta=np.empty((0,) * var.ndim, dtype=var.dtype),
    )


class _GuardedReader:
    """Array-like over one stored variable; a failed read names the variable and visitors.

    A read that finds the path replaced since opening (another inode) raises: its bytes may
    come from the replacement.
    """

    def __init__(self, variable: xr.Variable, name: Hashable, path: Path, identity):
        self.variable = variable
        self.name = name
        self.path = path
        self.identity = identity
        self.shape = variable.shape
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def __getitem__(self, key):
        try:
            # Contiguous in visitor-major order: a store in another order is copied here.
            block = np.ascontiguousarray(self.variable[key].values)
        except Exception as error:
            rows = key[0] if isinstance(key, tuple) else key
            where = f"visitors {rows.start}-{rows.stop}" if isinstance(rows, slice) else "data"
            raise PosteriorReadError(
                f"{self.path}: could not read {where} of {self.name!r} (truncated or corrupt "
                f"chunk?): {type(error).__name__}: {error}"
            ) from error
        try:
            now = _identity(self.path)
        except OSError:
            now = None
        if now != self.identity:
            raise PosteriorReadError(
                f"{self.path} was replaced or removed after it was opened, so {self.name!r} "
                "can no longer be read as the posterior that was opened; reopen it with "
                "pytyche.open_posterior"
            )
        expected = tuple(
            len(range(*k.indices(n))) if isinstance(k, slice) else None
            for k, n in zip(key if isinstance(key, tuple) else (key,), self.shape, strict=False)
        )
        if any(e is not None and e != s for e, s in zip(expected, block.shape, strict=False)):
            raise PosteriorReadError(
                f"{self.path}: {self.name!r} block has shape {block.shape}, expected {expected}"
            )
        return block
