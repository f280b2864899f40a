"""The xarray layer of the visitor → segment reduction: lazy on dask, threaded on numpy.

On dask with the membership in memory (covariates loaded, not dask-backed),
atoms (visitors with the same membership pattern) are found once; each visitor chunk's task
only adds its rows into per-atom float64 partials, the partials are tree-reduced and atoms are
added into segments once, in a last small task. With a lazy membership, or more atoms than a
chunk can fill, :func:`pytyche._kernels.segment_sums_block` runs once per visitor chunk and the
(segment, ...) partials are tree-reduced. Either way memory stays bounded by a few chunks
whatever the posterior's size. On numpy, atoms are found once for all visitors, threads each
stream through their share of visitors in bounded blocks into per-atom accumulators, and atoms
are added into segments once at the end.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import xarray as xr

from ._config import get_options, worker_threads
from ._kernels import (
    MIN_VISITORS_PER_ATOM,
    ROWS_PER_UPDATE,
    atom_sums_block,
    atoms_to_segments,
    kernel_dtype,
    segment_sums_block,
    visitor_atoms,
)
from .results import VISITOR, BCFResult

__all__ = ["segment_sums"]

# Sizes (pt.set_options): numpy-backed posteriors are streamed in visitor blocks of about
# ``numpy_block_bytes`` (more when there are many atoms), so a posterior in another axis order
# is copied to visitor-major one small block at a time; the per-thread float64 atom
# accumulators of the numpy path take at most ``atom_budget_bytes`` in all.


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
    """One blockwise task per visitor block, then a tree sum of the partials.

    With the membership in memory and few atoms (visitors with the same membership pattern),
    the atoms are found once, each chunk's task only adds its rows into per-atom float64
    partials (its labels are a small int array), and atoms are added into segments once,
    after the tree sum. Otherwise (lazy membership, or too many atoms) each chunk finds its
    own atoms and returns (segment, ...) partials.
    """
    first = next((f for f in factors if isinstance(f, da.Array)), None)
    if first is None:  # only the membership is lazy: follow its visitor chunks
        visitor_chunks = membership.chunks[1]
    else:
        visitor_chunks = first.chunks[0]
    factors = [
        f if isinstance(f, da.Array) else da.from_array(f, chunks=(visitor_chunks, *f.shape[1:]))
        for f in factors
    ]
    trailing = tuple(f"t{i}" for i in range(factors[0].ndim - 1))
    factor_args = []
    for f in factors:
        factor_args += [f, ("v", *trailing)]
    meta = np.empty((0,) * (len(trailing) + 2), dtype=np.float64)

    if not isinstance(membership, da.Array):
        labels, atom_membership = visitor_atoms(membership)
        n_atoms = len(atom_membership)
        columns = math.prod(factors[0].shape[1:])
        chunk_bytes = max(visitor_chunks) * columns * factors[0].dtype.itemsize
        if (
            0 < MIN_VISITORS_PER_ATOM * n_atoms <= max(visitor_chunks)
            and n_atoms * columns * 8 <= chunk_bytes
        ):
            partials = da.blockwise(
                _block_atom_sums,
                ("v", "a", *trailing),
                *factor_args,
                da.from_array(labels, chunks=(visitor_chunks,)),
                ("v",),
                new_axes={"a": n_atoms},
                adjust_chunks={"v": 1},
                dtype=np.float64,
                meta=meta,
                n_atoms=n_atoms,
            )
            atom_totals = _tree_sum(partials)
            n_segments = atom_membership.shape[1]
            return atom_totals.map_blocks(
                _block_atoms_to_segments,
                atom_membership,
                chunks=((n_segments,), *atom_totals.chunks[1:]),
                dtype=np.float64,
                meta=np.empty((0,) * (len(trailing) + 1), dtype=np.float64),
            )
        membership = da.from_array(membership, chunks=(-1, visitor_chunks))
    membership = membership.rechunk({0: -1})
    partials = da.blockwise(
        _block_segment_sums,
        ("v", "s", *trailing),
        *factor_args,
        membership,
        ("s", "v"),
        adjust_chunks={"v": 1},
        dtype=np.float64,
        meta=meta,
    )
    return _tree_sum(partials)


def _tree_sum(partials: da.Array) -> da.Array:
    """Sum float64 partials (one per visitor chunk, along axis 0) in a tree, in place.

    ``partials.sum(axis=0)`` concatenates each group of partials before adding them, a copy
    of every partial (megabytes each, at many segments and draws) on the serial path of
    every allocation; here each group's sum is one new array the others are added into.
    """
    return da.reduction(
        partials,
        chunk=_keep_block,
        combine=_add_blocks,
        aggregate=_add_blocks,
        axis=0,
        dtype=np.float64,
        concatenate=False,
        meta=np.empty((0,) * (partials.ndim - 1), dtype=np.float64),
    )


def _keep_block(block, axis, keepdims):
    return block


def _add_blocks(blocks, axis, keepdims):
    # The blocks of one group, in chunk order: added left to right, as numpy's sum would.
    total = np.add(blocks[0], blocks[1]) if len(blocks) > 1 else blocks[0].copy()
    for block in blocks[2:]:
        total += block
    return total if keepdims else total[0]


def _block_segment_sums(*blocks):
    *factors, membership = blocks
    return segment_sums_block(tuple(factors), membership)[np.newaxis]


def _block_atom_sums(*blocks, n_atoms):
    *factors, labels = blocks
    sums = np.zeros((n_atoms, math.prod(factors[0].shape[1:])), dtype=np.float64)
    atom_sums_block(tuple(factors), labels, sums)
    return sums.reshape(1, n_atoms, *factors[0].shape[1:])


def _block_atoms_to_segments(atom_totals, atom_membership):
    sums = atoms_to_segments(atom_totals.reshape(len(atom_totals), -1), atom_membership)
    return sums.reshape(-1, *atom_totals.shape[1:])


def _numpy_segment_sums(factors, membership):
    """Threads stream through visitor blocks, accumulating per atom (or per segment)."""
    n_visitors = factors[0].shape[0]
    trailing = factors[0].shape[1:]
    columns = math.prod(trailing)
    n_threads = max(1, min(worker_threads(), n_visitors))
    options = get_options()

    labels, atom_membership = visitor_atoms(membership)
    n_atoms = len(atom_membership)
    # Atoms are found once for all visitors and summed across blocks, then added into
    # segments once. Heavily overlapping segments can make atoms as many as visitors: then
    # each block finds its own atoms and adds them into segments itself, so memory stays
    # bounded by the block size.
    global_atoms = n_atoms * columns * 8 * n_threads <= options["atom_budget_bytes"]
    n_rows = n_atoms if global_atoms else membership.shape[0]
    row_bytes = max(1, sum(f.dtype.itemsize for f in factors) * columns)
    # Blocks of several visitors per atom keep the accumulator traffic below the data's: the
    # kernel adds a block's same-atom rows together before each accumulator update.
    atom_rows = MIN_VISITORS_PER_ATOM * n_atoms if global_atoms else 0
    block = max(1, options["numpy_block_bytes"] // row_bytes, atom_rows)
    n_threads = max(1, min(n_threads, -(-n_visitors // block)))
    in_place = all(
        isinstance(f, np.ndarray) and f.flags.c_contiguous and kernel_dtype(f.dtype) == f.dtype
        for f in factors
    )
    if global_atoms and in_place:
        # Blocks that are views (native floats, visitor-major) cost no memory: let them hold
        # two register groups of rows per atom, within each thread's share of visitors.
        block = max(block, min(2 * ROWS_PER_UPDATE * n_atoms, -(-n_visitors // n_threads)))
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
