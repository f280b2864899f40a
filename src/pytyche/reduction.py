"""The xarray layer of the visitor → segment reduction: lazy on dask, threaded on numpy.

On dask, :func:`pytyche._kernels.segment_sums_block` runs once per visitor chunk of the
visitor-major metric and the (segment, ...) float64 partial sums are tree-reduced, so memory
stays bounded by a few chunks whatever the posterior's size. On numpy, atoms are found once
for all visitors, threads each stream through their share of visitors in bounded blocks into
per-atom accumulators, and atoms are added into segments once at the end.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._kernels import atom_sums_block, atoms_to_segments, segment_sums_block, visitor_atoms
from .results import VISITOR, BCFResult

__all__ = ["segment_sums"]

# Numpy-backed posteriors are streamed in visitor blocks of about this many bytes (more when
# there are many atoms), so a posterior in another axis order is copied to visitor-major one
# small block at a time. Threads: dask's ``num_workers`` setting when set, else all cores.
NUMPY_BLOCK_BYTES = 32 * 2**20
# Largest total size of the per-thread float64 atom accumulators on the numpy path.
ATOM_BUDGET_BYTES = 256 * 2**20


def segment_sums(result: BCFResult, membership: xr.DataArray) -> xr.DataArray:
    """Sum the per-visitor metric over each segment's members.

    Parameters
    ----------
    result : BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult
        The posterior.
    membership : xarray.DataArray
        Boolean (segment, visitor) membership, as made by :func:`pytyche.membership`.

    Returns
    -------
    xarray.DataArray
        float64 (segment, sample dims..., arm): ``Σ_visitor membership · metric``. Lazy when
        the posterior or the membership is dask-backed. A segment whose members have a
        non-finite draw has a non-finite sum.
    """
    factors = result.metric_factors()
    template = factors[0]
    n_visitors = template.sizes[VISITOR]
    if membership.sizes[VISITOR] != n_visitors:
        raise ValueError(
            f"membership covers {membership.sizes[VISITOR]} visitors but the posterior has "
            f"{n_visitors}"
        )
    membership = membership.transpose("segment", VISITOR)
    if any(f.chunks is not None for f in factors) or membership.chunks is not None:
        sums = _dask_segment_sums([f.data for f in factors], membership.data)
    else:
        sums = _numpy_segment_sums([f.data for f in factors], membership.values)

    segment_coords = {
        name: coord.variable
        for name, coord in membership.coords.items()
        if coord.dims == ("segment",)
    }
    trailing = template.dims[1:]
    return xr.DataArray(
        sums,
        dims=("segment", *trailing),
        coords={
            **segment_coords,
            **{d: template.coords[d].variable for d in trailing if d in template.coords},
        },
        name="segment_sum",
    )


def _dask_segment_sums(factors, membership):
    """One blockwise task per visitor block, then a tree sum of the (segment, ...) partials."""
    first = next((f for f in factors if isinstance(f, da.Array)), None)
    if first is None:  # only the membership is lazy: follow its visitor chunks
        visitor_chunks = membership.chunks[1]
    else:
        visitor_chunks = first.chunks[0]
    factors = [
        f if isinstance(f, da.Array) else da.from_array(f, chunks=(visitor_chunks, *f.shape[1:]))
        for f in factors
    ]
    if not isinstance(membership, da.Array):
        membership = da.from_array(membership, chunks=(-1, visitor_chunks))
    membership = membership.rechunk({0: -1})

    trailing = tuple(f"t{i}" for i in range(factors[0].ndim - 1))
    factor_args = []
    for f in factors:
        factor_args += [f, ("v", *trailing)]
    partials = da.blockwise(
        _block_segment_sums,
        ("v", "s", *trailing),
        *factor_args,
        membership,
        ("s", "v"),
        adjust_chunks={"v": 1},
        dtype=np.float64,
        meta=np.empty((0,) * (len(trailing) + 2), dtype=np.float64),
    )
    return partials.sum(axis=0, dtype=np.float64)


def _block_segment_sums(*blocks):
    *factors, membership = blocks
    return segment_sums_block(tuple(factors), membership)[np.newaxis]


def _numpy_segment_sums(factors, membership):
    """Threads stream through visitor blocks, accumulating per atom (or per segment)."""
    n_visitors = factors[0].shape[0]
    trailing = factors[0].shape[1:]
    columns = math.prod(trailing)
    n_threads = max(1, min(worker_threads(), n_visitors))

    labels, atom_membership = visitor_atoms(membership)
    n_atoms = len(atom_membership)
    # Atoms are found once for all visitors and summed across blocks, then added into
    # segments once. Heavily overlapping segments can make atoms as many as visitors: then
    # each block finds its own atoms and adds them into segments itself, so memory stays
    # bounded by the block size.
    global_atoms = n_atoms * columns * 8 * n_threads <= ATOM_BUDGET_BYTES
    n_rows = n_atoms if global_atoms else membership.shape[0]
    row_bytes = max(1, sum(f.dtype.itemsize for f in factors) * columns)
    # Blocks of several visitors per atom keep the accumulator traffic below the data's.
    block = max(1, NUMPY_BLOCK_BYTES // row_bytes, 4 * n_atoms if global_atoms else 0)
    n_threads = max(1, min(n_threads, -(-n_visitors // block)))
    edges = np.linspace(0, n_visitors, n_threads + 1).astype(int)

    def stream(lo: int, hi: int) -> np.ndarray:
        sums = np.zeros((n_rows, columns), dtype=np.float64)
        for start in range(lo, hi, block):
            stop = min(start + block, hi)
            rows = tuple(f[start:stop] for f in factors)
            if global_atoms:
                atom_sums_block(rows, labels[start:stop], sums)
            else:
                sums += segment_sums_block(rows, membership[:, start:stop]).reshape(sums.shape)
        return sums

    if n_threads == 1:
        sums = stream(0, n_visitors)
    else:
        with ThreadPoolExecutor(n_threads, thread_name_prefix="pytyche") as pool:
            sums = sum(pool.map(stream, edges[:-1], edges[1:]))
    if global_atoms:
        sums = atoms_to_segments(sums, atom_membership)
    return sums.reshape(-1, *trailing)


def worker_threads() -> int:
    """Threads for pytyche's own pools: dask's ``num_workers`` setting, else all cores."""
    configured = dask.config.get("num_workers", None)
    return int(configured) if configured else _available_cores()


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
