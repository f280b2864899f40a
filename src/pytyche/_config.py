"""pytyche's options: block and chunk sizes, thread counts and budgets, in one place.

Leaf module: imports nothing of pytyche. Every module reads its sizes from here at call time,
so ``pt.set_options`` (or a test) changes them everywhere at once.
"""

from __future__ import annotations

import os
from numbers import Integral
from typing import Any

__all__ = ["get_options", "set_options", "worker_threads"]

MIB = 2**20

# Name → (default, minimum, what it is). Every option is a positive integer or None.
_SPEC: dict[str, tuple[int | None, int, str]] = {
    "numpy_block_bytes": (
        32 * MIB,
        1,
        "bytes of posterior rows one kernel call streams at a time on numpy-backed posteriors",
    ),
    "atom_budget_bytes": (
        256 * MIB,
        0,
        "largest total size of the per-thread float64 atom accumulators of the numpy path",
    ),
    "chunk_bytes": (
        128 * MIB,
        1,
        "target size of a visitor chunk of the posterior variables (fits, reads, from_arrays)",
    ),
    "netcdf_chunk_bytes": (16 * MIB, 1, "target size of a netCDF/HDF5 chunk when writing"),
    "num_threads": (
        None,
        1,
        "threads of pytyche's own pools; None: dask's num_workers setting, else all cores",
    ),
    "exact_tree_budget": (
        300_000_000,
        0,
        "work (visitor × candidate-split operations) the exact depth-3 policy-tree search may "
        "spend before it falls back to a depth-2 look-ahead",
    ),
}

_OPTIONS: dict[str, Any] = {name: spec[0] for name, spec in _SPEC.items()}


def get_options() -> dict[str, Any]:
    """The current options, as a new dict.

    Returns
    -------
    dict
        ``{name: value}`` for every option :func:`set_options` accepts.

    Examples
    --------
    >>> import pytyche as pt
    >>> pt.get_options()["chunk_bytes"] == 128 * 2**20
    True
    """
    return dict(_OPTIONS)


class set_options:
    """Set pytyche's options, for good or inside a ``with`` block.

    Parameters
    ----------
    numpy_block_bytes : int, optional
        Bytes of posterior rows one kernel call streams at a time on numpy-backed posteriors
        (default 32 MiB).
    atom_budget_bytes : int, optional
        Largest total size of the per-thread float64 atom accumulators on the numpy path
        (default 256 MiB); beyond it each block adds its rows into segments itself (0: always).
    chunk_bytes : int, optional
        Target size of a visitor chunk of the posterior variables written by fits, read by
        :func:`pytyche.open_posterior` and built by :func:`pytyche.from_arrays` (default
        128 MiB).
    netcdf_chunk_bytes : int, optional
        Target size of a netCDF chunk when writing (default 16 MiB).
    num_threads : int or None, optional
        Threads of pytyche's own pools (allocation on numpy, atomic writes, policy-tree
        search). None (default): dask's ``num_workers`` setting, else every core this process
        may run on.
    exact_tree_budget : int, optional
        Work the exact depth-3 policy-tree search may spend before it falls back to a
        depth-2 look-ahead (default 3e8).

    Raises
    ------
    ValueError
        For an unknown option, or a value that is not a positive integer (``num_threads``
        may be None; ``atom_budget_bytes`` and ``exact_tree_budget`` may be 0).

    Examples
    --------
    >>> import pytyche as pt
    >>> with pt.set_options(chunk_bytes=64 * 2**20):
    ...     pt.get_options()["chunk_bytes"] == 64 * 2**20
    True
    >>> pt.get_options()["chunk_bytes"] == 128 * 2**20
    True
    """

    def __init__(self, **options: Any) -> None:
        for name, value in options.items():
            _check_option(name, value)
        self._previous = {name: _OPTIONS[name] for name in options}
        _OPTIONS.update(options)

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        _OPTIONS.update(self._previous)


def _check_option(name: str, value: Any) -> None:
    if name not in _SPEC:
        raise ValueError(f"unknown pytyche option {name!r}; options are {sorted(_SPEC)}")
    default, minimum, what = _SPEC[name]
    if value is None and default is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(
            f"option {name!r} ({what}) must be an integer >= {minimum}"
            f"{' or None' if default is None else ''}, got {value!r}"
        )


def worker_threads() -> int:
    """Threads for pytyche's own pools.

    The ``num_threads`` option, else dask's ``num_workers`` setting, else every core this
    process may run on.

    Returns
    -------
    int
    """
    if _OPTIONS["num_threads"] is not None:
        return int(_OPTIONS["num_threads"])
    import dask  # imported here: this module is otherwise free of third-party imports

    configured = dask.config.get("num_workers", None)
    if configured:
        return int(configured)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
