"""Numpy kernels: numpy in, numpy out, one visitor block at a time. No xarray, no dask.

The one heavy step of every allocation is the visitor → segment reduction

    sums[segment, :] = Σ_visitor membership[segment, visitor] · metric[visitor, :]

over a visitor-major block whose trailing axes (sample dims and arm) are flattened to one row
per visitor. A dense product costs segments × block; instead the block's member visitors are
grouped into *atoms* (visitors with the same membership pattern: for disjoint segments, one
atom per segment) and each visitor's row is added once, into its atom's float64 row. Atoms are
then added into segments: a scatter when segments are disjoint, else one small matrix product
(atom count × segments × row). The heavy work is one add per member visitor, whatever the
number of segments, so the pass runs at memory speed. When a block has few visitors per atom
(many independent overlapping segments), each visitor's row is instead added straight into
each of its segments, while the row is in cache.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Below this many visitors per atom, a block adds rows into segments directly.
MIN_VISITORS_PER_ATOM = 4

__all__ = [
    "apply_exploration_floor",
    "atom_sums_block",
    "atoms_to_segments",
    "scatter_rows",
    "segment_sums_block",
    "visitor_atoms",
]


@numba.njit(nogil=True, cache=True)
def _scatter_rows(rows, visitors, targets, out):
    # Pairs come sorted by target (atoms: the accumulator row stays in cache) or by visitor
    # (the data row stays in cache while it is added into each of its segments).
    for pair in range(visitors.size):
        visitor, target = visitors[pair], targets[pair]
        for column in range(rows.shape[1]):
            out[target, column] += rows[visitor, column]


@numba.njit(nogil=True, cache=True)
def _scatter_row_products(rows, factor_rows, visitors, targets, out):
    # Hurdle metric: conversion × value, multiplied in float64 on the fly, never materialized.
    for pair in range(visitors.size):
        visitor, target = visitors[pair], targets[pair]
        for column in range(rows.shape[1]):
            out[target, column] += np.float64(rows[visitor, column]) * np.float64(
                factor_rows[visitor, column]
            )


def scatter_rows(factors: tuple[np.ndarray, ...], visitors, targets, out: np.ndarray) -> None:
    """``out[targets[i]] += metric[visitors[i]]`` for every pair i, in float64 (the heavy step).

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        One or two arrays of shape (visitor, ...): the metric is their product (the hurdle
        metric is conversion × value). Converted block-wise to C-contiguous native floats.
    visitors, targets : numpy.ndarray
        intp pairs: which visitor's row to add into which row of ``out``.
    out : numpy.ndarray
        float64 (target, prod(...)) accumulator, added into in place.
    """
    n_visitors = factors[0].shape[0]
    if n_visitors == 0 or visitors.size == 0:
        return
    rows = [
        np.ascontiguousarray(f, dtype=_kernel_dtype(f.dtype)).reshape(n_visitors, -1)
        for f in factors
    ]
    if len(rows) == 1:
        _scatter_rows(rows[0], visitors, targets, out)
    else:
        _scatter_row_products(rows[0], rows[1], visitors, targets, out)


def _kernel_dtype(dtype: np.dtype) -> np.dtype:
    # The kernels are compiled for native float32/float64; anything else (big-endian data
    # from netCDF or Zarr, float16, integers) is converted block by block.
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return dtype.newbyteorder("=")
    return np.dtype(np.float64)


def visitor_atoms(membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label each visitor with its atom: the set of segments it belongs to.

    Parameters
    ----------
    membership : numpy.ndarray
        Boolean (segment, visitor) membership.

    Returns
    -------
    labels : numpy.ndarray
        intp (visitor,) atom of each visitor; -1 for visitors in no segment.
    atom_membership : numpy.ndarray
        Boolean (atom, segment): the segments each atom belongs to.
    """
    n_segments, n_visitors = membership.shape
    # Each visitor's pattern as 64-bit words, so that finding the distinct ones is a sort.
    n_bytes, n_words = -(-n_segments // 8), -(-n_segments // 64)
    bits = np.zeros((8 * n_bytes, n_visitors), dtype=np.uint8)
    bits[:n_segments] = membership
    # np.packbits(axis=0) does this, but strided and ten times slower.
    byte_weights = (1 << np.arange(7, -1, -1)).astype(np.uint8)
    packed = np.zeros((n_visitors, 8 * n_words), dtype=np.uint8)
    packed[:, :n_bytes] = np.einsum("gbv,b->vg", bits.reshape(n_bytes, 8, n_visitors), byte_weights)
    words = packed.view(np.uint64)
    if n_words == 1:
        patterns, labels = np.unique(words[:, 0], return_inverse=True)
        patterns = patterns[:, np.newaxis]
    else:  # lexicographic sort of the word rows; the all-zero pattern still comes first
        order = np.lexsort(words.T[::-1])
        ordered = words[order]
        starts = np.ones(n_visitors, dtype=bool)
        starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
        patterns = ordered[starts]
        labels = np.empty(n_visitors, dtype=np.intp)
        labels[order] = np.cumsum(starts) - 1
    labels = labels.reshape(-1).astype(np.intp)
    if len(patterns) and not patterns[0].any():  # the all-zero pattern sorts first
        patterns = patterns[1:]
        labels -= 1
    atom_membership = np.unpackbits(patterns.view(np.uint8), axis=1, count=n_segments)
    return labels, atom_membership.astype(bool)


def atom_sums_block(factors: tuple[np.ndarray, ...], labels: np.ndarray, atom_sums: np.ndarray):
    """Add one visitor block's metric rows into their atoms' float64 sums.

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        One or two arrays of shape (visitor, ...) whose product is the metric.
    labels : numpy.ndarray
        intp (visitor,) atom of each visitor, -1 for none (never read).
    atom_sums : numpy.ndarray
        float64 (atom, prod(...)) accumulator, added into in place.
    """
    # Visitors grouped by atom, so each atom's float64 row stays in cache while it fills.
    order = np.argsort(labels, kind="stable")
    order = order[np.searchsorted(labels[order], 0) :]
    scatter_rows(factors, order, labels[order], atom_sums)


def atoms_to_segments(atom_sums: np.ndarray, atom_membership: np.ndarray) -> np.ndarray:
    """Add (atom, column) sums into (segment, column) sums: small next to the pass."""
    if (atom_membership.sum(axis=1) == 1).all():  # disjoint segments: one atom each, at most
        out = np.zeros((atom_membership.shape[1], atom_sums.shape[1]), dtype=np.float64)
        out[atom_membership.argmax(axis=1)] = atom_sums
        return out
    # A product would turn 0 × NaN into NaN in segments without that atom: non-finite atoms
    # (rare: a member's draws are broken) are left out of it and added to their own segments.
    finite = np.isfinite(atom_sums).all(axis=1)
    if finite.all():
        return atom_membership.T.astype(np.float64) @ atom_sums
    out = atom_membership[finite].T.astype(np.float64) @ atom_sums[finite]
    for atom in np.flatnonzero(~finite):
        out[atom_membership[atom]] += atom_sums[atom]
    return out


def segment_sums_block(factors: tuple[np.ndarray, ...], membership: np.ndarray) -> np.ndarray:
    """Sum one visitor block's metric over each segment's members, in float64.

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        One or two arrays of shape (visitor, ...) whose product is the metric.
    membership : numpy.ndarray
        Boolean (segment, visitor) membership of the same visitors.

    Returns
    -------
    numpy.ndarray
        float64 (segment, ...) per-segment sums. Non-finite member values propagate into
        their segments' sums, so one ``isfinite`` on the result checks every member's draws.
    """
    membership = np.asarray(membership, dtype=bool)
    trailing = factors[0].shape[1:]
    columns = math.prod(trailing)
    labels, atom_membership = visitor_atoms(membership)
    if MIN_VISITORS_PER_ATOM * len(atom_membership) > membership.shape[1]:
        # Too many atoms to pay off (independent overlapping segments): add each visitor's
        # row straight into each of its segments instead.
        visitors, segments = np.nonzero(membership.T)
        out = np.zeros((membership.shape[0], columns), dtype=np.float64)
        scatter_rows(factors, visitors, segments, out)
    else:
        atom_sums = np.zeros((len(atom_membership), columns), dtype=np.float64)
        atom_sums_block(factors, labels, atom_sums)
        out = atoms_to_segments(atom_sums, atom_membership)
    return out.reshape(-1, *trailing)


def apply_exploration_floor(frequencies: np.ndarray, epsilon: float) -> np.ndarray:
    """Raise arms below ``epsilon / K`` to exactly that floor and rescale the rest.

    Parameters
    ----------
    frequencies : numpy.ndarray
        (segment, arm) win frequencies, each row summing to 1.
    epsilon : float
        Total exploration mass in [0, 1]; each of the K arms gets at least ``epsilon / K``.

    Returns
    -------
    numpy.ndarray
        float64 (segment, arm) weights, each row summing to 1. Rows already at or above the
        floor everywhere, and every row when ``epsilon == 0``, are returned verbatim.
    """
    weights = np.array(frequencies, dtype=np.float64, copy=True)
    n_arms = weights.shape[-1]
    floor = epsilon / n_arms
    if floor == 0.0:
        return weights
    for row in weights.reshape(-1, n_arms):
        floored = np.zeros(n_arms, dtype=bool)
        # Each round floors at least one more arm, so this ends within K rounds.
        while True:
            below = (row < floor) & ~floored
            if not below.any():
                break
            floored |= below
            row[floored] = floor
            free = ~floored
            if free.any():
                row[free] *= (1.0 - floor * floored.sum()) / row[free].sum()
    return weights
