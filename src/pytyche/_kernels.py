"""Numpy kernels: numpy in, numpy out, one visitor block at a time. No xarray, no dask.

The one heavy step of every allocation is the visitor → segment reduction

    sums[segment, :] = Σ_visitor membership[segment, visitor] · metric[visitor, :]

over a visitor-major block whose trailing axes (sample dims and arm) are flattened to one row
per visitor. A dense product costs segments × block; instead the block's member visitors are
grouped into *atoms* (visitors with the same membership pattern: for disjoint segments, one
atom per segment) and each visitor's row is added once, into its atom's float64 row. Atoms are
then added into segments (small: atom count × their segments × row). The heavy work is one
add per member visitor, whatever the number of segments.

A row of draws × arms is larger than L1 (32 KB of float64 at 1,000 draws × 4 arms), so loading
and storing a float64 accumulator row per member row would bound the pass by accumulator
traffic, not by memory. The scatter kernel therefore takes pairs sorted by target and adds a
run's member rows together in float64 registers, ``ROWS_PER_UPDATE`` at a time (then 4, 2, 1),
before each accumulator update: one pass runs faster per thread than numpy's own float32 sum.

When a block has few visitors per atom (many independent overlapping segments), each visitor's
row is instead added straight into each of its segments: a few cache-sized groups of visitors
at a time, pairs sorted by segment within a group, so a row is read from memory once and its
segments share accumulator updates.

Every kernel reads its inputs and writes only its output (or the accumulator it is given, by
adding into it); none keeps state between calls. The numba kernels release the GIL.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Below this many visitors per atom, a block adds rows into segments directly.
MIN_VISITORS_PER_ATOM = 4
# Up to this many distinct patterns, atoms are found with a small hash table, not a sort.
FEW_ATOMS = 1024

__all__ = [
    "apply_exploration_floor",
    "atom_sums_block",
    "atoms_to_segments",
    "kernel_dtype",
    "scatter_rows",
    "segment_sums_block",
    "visitor_atoms",
]


# Member rows of the same target are added together in float64 registers, this many at a
# time, before one update of the target's accumulator row: a row of draws × arms is larger than
# L1, so one load and store of it per member row would bound the pass, not the memory.
ROWS_PER_UPDATE = 8
# Visitors whose rows are added straight into their segments (too many atoms) are taken in
# groups of about this many bytes of rows, so each row is read from cache, not memory, by its
# second and later segments.
DIRECT_GROUP_BYTES = 512 * 2**10


@numba.njit(nogil=True, cache=True)
def _scatter_rows(rows, visitors, targets, out):
    # Reads rows[visitors] and targets; writes only out[targets] (adds into it). Pairs come
    # sorted by target (atoms: runs of the same target share each accumulator update), or by
    # segment within small groups of visitors (the direct path: shorter runs, rows read from
    # cache). Within a run, rows are summed pairwise in float64: 8, then 4, 2, 1.
    n_pairs = visitors.size
    n_columns = rows.shape[1]
    first = 0
    while first < n_pairs:
        target = targets[first]
        stop = first + 1
        while stop < n_pairs and targets[stop] == target:
            stop += 1
        acc = out[target]
        pair = first
        while stop - pair >= 8:
            r0, r1 = rows[visitors[pair]], rows[visitors[pair + 1]]
            r2, r3 = rows[visitors[pair + 2]], rows[visitors[pair + 3]]
            r4, r5 = rows[visitors[pair + 4]], rows[visitors[pair + 5]]
            r6, r7 = rows[visitors[pair + 6]], rows[visitors[pair + 7]]
            for c in range(n_columns):
                acc[c] += (
                    (np.float64(r0[c]) + np.float64(r1[c]))
                    + (np.float64(r2[c]) + np.float64(r3[c]))
                ) + (
                    (np.float64(r4[c]) + np.float64(r5[c]))
                    + (np.float64(r6[c]) + np.float64(r7[c]))
                )
            pair += 8
        if stop - pair >= 4:
            r0, r1 = rows[visitors[pair]], rows[visitors[pair + 1]]
            r2, r3 = rows[visitors[pair + 2]], rows[visitors[pair + 3]]
            for c in range(n_columns):
                acc[c] += (np.float64(r0[c]) + np.float64(r1[c])) + (
                    np.float64(r2[c]) + np.float64(r3[c])
                )
            pair += 4
        if stop - pair >= 2:
            r0, r1 = rows[visitors[pair]], rows[visitors[pair + 1]]
            for c in range(n_columns):
                acc[c] += np.float64(r0[c]) + np.float64(r1[c])
            pair += 2
        if stop - pair == 1:
            r0 = rows[visitors[pair]]
            for c in range(n_columns):
                acc[c] += np.float64(r0[c])
        first = stop


@numba.njit(nogil=True, cache=True)
def _scatter_row_products(rows, factor_rows, visitors, targets, out):
    # Hurdle metric: conversion × value, multiplied in float64 on the fly, never materialized.
    # Reads rows[visitors], factor_rows[visitors] and targets; writes only out[targets]. Runs
    # of the same target are summed in registers as in _scatter_rows.
    n_pairs = visitors.size
    n_columns = rows.shape[1]
    first = 0
    while first < n_pairs:
        target = targets[first]
        stop = first + 1
        while stop < n_pairs and targets[stop] == target:
            stop += 1
        acc = out[target]
        pair = first
        while stop - pair >= 8:
            v0, v1, v2, v3 = (
                visitors[pair],
                visitors[pair + 1],
                visitors[pair + 2],
                visitors[pair + 3],
            )
            v4, v5, v6, v7 = (
                visitors[pair + 4],
                visitors[pair + 5],
                visitors[pair + 6],
                visitors[pair + 7],
            )
            a0, a1, a2, a3 = rows[v0], rows[v1], rows[v2], rows[v3]
            a4, a5, a6, a7 = rows[v4], rows[v5], rows[v6], rows[v7]
            b0, b1, b2, b3 = factor_rows[v0], factor_rows[v1], factor_rows[v2], factor_rows[v3]
            b4, b5, b6, b7 = factor_rows[v4], factor_rows[v5], factor_rows[v6], factor_rows[v7]
            for c in range(n_columns):
                acc[c] += (
                    (np.float64(a0[c]) * np.float64(b0[c]) + np.float64(a1[c]) * np.float64(b1[c]))
                    + (
                        np.float64(a2[c]) * np.float64(b2[c])
                        + np.float64(a3[c]) * np.float64(b3[c])
                    )
                ) + (
                    (np.float64(a4[c]) * np.float64(b4[c]) + np.float64(a5[c]) * np.float64(b5[c]))
                    + (
                        np.float64(a6[c]) * np.float64(b6[c])
                        + np.float64(a7[c]) * np.float64(b7[c])
                    )
                )
            pair += 8
        if stop - pair >= 4:
            v0, v1, v2, v3 = (
                visitors[pair],
                visitors[pair + 1],
                visitors[pair + 2],
                visitors[pair + 3],
            )
            a0, a1, a2, a3 = rows[v0], rows[v1], rows[v2], rows[v3]
            b0, b1, b2, b3 = factor_rows[v0], factor_rows[v1], factor_rows[v2], factor_rows[v3]
            for c in range(n_columns):
                acc[c] += (
                    np.float64(a0[c]) * np.float64(b0[c]) + np.float64(a1[c]) * np.float64(b1[c])
                ) + (np.float64(a2[c]) * np.float64(b2[c]) + np.float64(a3[c]) * np.float64(b3[c]))
            pair += 4
        if stop - pair >= 2:
            v0, v1 = visitors[pair], visitors[pair + 1]
            a0, a1, b0, b1 = rows[v0], rows[v1], factor_rows[v0], factor_rows[v1]
            for c in range(n_columns):
                acc[c] += np.float64(a0[c]) * np.float64(b0[c]) + np.float64(a1[c]) * np.float64(
                    b1[c]
                )
            pair += 2
        if stop - pair == 1:
            v0 = visitors[pair]
            a0, b0 = rows[v0], factor_rows[v0]
            for c in range(n_columns):
                acc[c] += np.float64(a0[c]) * np.float64(b0[c])
        first = stop


def scatter_rows(factors: tuple[np.ndarray, ...], visitors, targets, out: np.ndarray) -> None:
    """``out[targets[i]] += metric[visitors[i]]`` for every pair i, in float64 (the heavy step).

    Correct for pairs in any order; fast when they come sorted by target, so that a run of
    same-target rows is summed in registers before each update of ``out[target]``. Reads
    ``factors`` (the rows of ``visitors``), ``visitors`` and ``targets``; writes only the rows
    ``targets`` of ``out``, by adding into them. Non-finite values propagate into their
    target's row (NaN, or inf + -inf = NaN).

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
    # The numba kernels do not check bounds: check the pairs once here.
    if visitors.size != targets.size:
        raise ValueError(f"{visitors.size} visitors but {targets.size} targets")
    if min(visitors.min(), targets.min()) < 0 or visitors.max() >= n_visitors:
        raise IndexError(f"visitors must lie in [0, {n_visitors}) and targets be >= 0")
    if targets.max() >= len(out):
        raise IndexError(f"targets must lie in [0, {len(out)}), got up to {targets.max()}")
    rows = [
        np.ascontiguousarray(f, dtype=kernel_dtype(f.dtype)).reshape(n_visitors, -1)
        for f in factors
    ]
    if len(rows) == 1:
        _scatter_rows(rows[0], visitors, targets, out)
    else:
        _scatter_row_products(rows[0], rows[1], visitors, targets, out)


def kernel_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels read ``dtype`` as: native float32/float64 as they are, else float64.

    The kernels are compiled for native float32/float64; anything else (big-endian data from
    netCDF or Zarr, float16, integers) is converted block by block. A C-contiguous block whose
    dtype is its own kernel dtype is read in place, without a copy.
    """
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return dtype.newbyteorder("=")
    return np.dtype(np.float64)


def visitor_atoms(membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label each visitor with its atom: the set of segments it belongs to.

    Pure: reads ``membership``, returns new arrays. Atoms come in the order of their
    patterns (as unsigned 64-bit words), so the result does not depend on visitor order.

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

    Examples
    --------
    >>> labels, atoms = visitor_atoms(np.array([[1, 0, 1, 1], [0, 0, 1, 1]], dtype=bool))
    >>> labels, atoms
    (array([ 0, -1,  1,  1]), array([[ True, False],
           [ True,  True]]))
    """
    n_segments, n_visitors = membership.shape
    # Each visitor's pattern as 64-bit words (segment s at bit 7 - s % 8 of byte s // 8, as
    # np.packbits lays them out), so that finding the distinct ones is a hash or a sort.
    n_words = max(1, -(-n_segments // 64))
    words = _pattern_words(np.ascontiguousarray(membership, dtype=bool), n_words)
    if words.shape[1] == 1:
        labels, distinct = _few_distinct(words[:, 0], FEW_ATOMS)
        if labels is not None:  # few atoms: order the distinct patterns, relabel
            order = np.argsort(distinct)
            rank = np.empty(len(order), dtype=np.intp)
            rank[order] = np.arange(len(order))
            labels, patterns = rank[labels], distinct[order][:, np.newaxis]
        else:
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


@numba.njit(nogil=True, cache=True)
def _pattern_words(membership, n_words):
    # Reads membership (segment, visitor); returns new (visitor, word) uint64 patterns.
    n_segments, n_visitors = membership.shape
    words = np.zeros((n_visitors, n_words), dtype=np.uint64)
    for segment in range(n_segments):
        word = segment // 64
        bit = np.uint64(8 * ((segment % 64) // 8) + 7 - segment % 8)
        flags = membership[segment]
        for visitor in range(n_visitors):
            words[visitor, word] |= np.uint64(flags[visitor]) << bit
    return words


@numba.njit(nogil=True, cache=True)
def _few_distinct(words, limit):
    # Reads words; returns (labels by first appearance, distinct words), or (None, None) when
    # there are more than `limit` distinct words. Open addressing in a table of 4 × limit.
    size = 1
    while size < 4 * limit:
        size *= 2
    keys = np.zeros(size, dtype=np.uint64)
    slots = np.full(size, -1, dtype=np.intp)
    distinct = np.empty(limit, dtype=np.uint64)
    labels = np.empty(words.size, dtype=np.intp)
    n_distinct = 0
    shift = np.uint64(64 - int(np.log2(size)))
    for visitor in range(words.size):
        word = words[visitor]
        slot = np.intp((word * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while slots[slot] >= 0 and keys[slot] != word:
            slot = (slot + 1) & (size - 1)
        if slots[slot] < 0:
            if n_distinct == limit:
                return None, None
            keys[slot] = word
            slots[slot] = n_distinct
            distinct[n_distinct] = word
            n_distinct += 1
        labels[visitor] = slots[slot]
    return labels, distinct[:n_distinct]


def atom_sums_block(factors: tuple[np.ndarray, ...], labels: np.ndarray, atom_sums: np.ndarray):
    """Add one visitor block's metric rows into their atoms' float64 sums.

    Reads ``factors`` (only the rows of visitors with an atom) and ``labels``; writes only
    ``atom_sums``, by adding into it.

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        One or two arrays of shape (visitor, ...) whose product is the metric.
    labels : numpy.ndarray
        intp (visitor,) atom of each visitor, -1 for none (never read).
    atom_sums : numpy.ndarray
        float64 (atom, prod(...)) accumulator, added into in place.
    """
    labels = np.asarray(labels, dtype=np.intp)
    if labels.size and (labels.min() < -1 or labels.max() >= len(atom_sums)):
        raise IndexError(
            f"atom labels must lie in [-1, {len(atom_sums)}), got {labels.min()} to {labels.max()}"
        )
    # Members grouped by atom (a counting sort, stable), so that each atom's rows come in one
    # run: summed in registers, they share its accumulator updates.
    members = _members_by_atom(labels, len(atom_sums))
    scatter_rows(factors, members, labels[members], atom_sums)


@numba.njit(nogil=True, cache=True)
def _members_by_atom(labels, n_atoms):
    # Reads labels; returns a new array: the visitors with an atom (label >= 0), grouped by
    # atom in increasing order, in visitor order within an atom.
    starts = np.zeros(n_atoms + 1, dtype=np.intp)
    for label in labels:
        starts[label + 1] += 1  # label -1 counts into starts[0], dropped below
    total = 0
    for atom in range(n_atoms):
        count = starts[atom + 1]
        starts[atom] = total
        total += count
    members = np.empty(total, dtype=np.intp)
    for visitor in range(labels.size):
        atom = labels[visitor]
        if atom >= 0:
            members[starts[atom]] = visitor
            starts[atom] += 1
    return members


def atoms_to_segments(atom_sums: np.ndarray, atom_membership: np.ndarray) -> np.ndarray:
    """Add (atom, column) sums into (segment, column) sums: small next to the pass.

    Pure: reads both arguments, returns a new array. Each atom's row is added into each of its
    segments by the scatter kernel (pairs sorted by segment, so a segment's atoms share its
    accumulator updates). Not a matrix product: that would turn 0 × NaN into NaN in segments
    without a non-finite atom, and a BLAS call per dask chunk cost far more than its
    arithmetic (and slowed the kernel beside it) on 2 cores.

    Parameters
    ----------
    atom_sums : numpy.ndarray
        float64 (atom, column) sums. Read only.
    atom_membership : numpy.ndarray
        Boolean (atom, segment): the segments each atom belongs to. Read only.

    Returns
    -------
    numpy.ndarray
        A new float64 (segment, column) array.
    """
    out = np.zeros((atom_membership.shape[1], atom_sums.shape[1]), dtype=np.float64)
    if (atom_membership.sum(axis=1) == 1).all():  # disjoint segments: one atom each, at most
        out[atom_membership.argmax(axis=1)] = atom_sums
        return out
    segments, atoms = np.nonzero(atom_membership.T)  # sorted by segment
    scatter_rows((atom_sums,), atoms, segments, out)
    return out


def segment_sums_block(factors: tuple[np.ndarray, ...], membership: np.ndarray) -> np.ndarray:
    """Sum one visitor block's metric over each segment's members, in float64.

    Pure: reads ``factors`` (only member visitors' rows) and ``membership``, returns a new
    array.

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
        # row straight into each of its segments instead, a few cache-sized groups of
        # visitors at a time, each group's pairs sorted by segment so that a segment's members
        # in the group share its accumulator updates while their rows stay in cache.
        row_bytes = max(1, sum(f.dtype.itemsize for f in factors) * columns)
        group_rows = max(ROWS_PER_UPDATE, DIRECT_GROUP_BYTES // row_bytes)
        visitors, segments = _pairs_by_group(np.ascontiguousarray(membership), group_rows)
        out = np.zeros((membership.shape[0], columns), dtype=np.float64)
        scatter_rows(factors, visitors, segments, out)
    elif (atom_membership.sum(axis=1) == 1).all():
        # Disjoint segments: each atom is one segment, so rows go straight into the output
        # (no second large array, whose fresh pages cost more than copying it).
        segment_of_atom = np.append(atom_membership.argmax(axis=1), -1)  # label -1: none
        out = np.zeros((membership.shape[0], columns), dtype=np.float64)
        atom_sums_block(factors, segment_of_atom[labels], out)
    else:
        atom_sums = np.zeros((len(atom_membership), columns), dtype=np.float64)
        atom_sums_block(factors, labels, atom_sums)
        out = atoms_to_segments(atom_sums, atom_membership)
    return out.reshape(-1, *trailing)


@numba.njit(nogil=True, cache=True)
def _pairs_by_group(membership, group_rows):
    # Reads membership (segment, visitor); returns new (visitor, segment) member pairs, by
    # group of `group_rows` visitors, then by segment, then by visitor: written in that
    # order, so no sort (an argsort of the pairs cost more than the adds at 2 draws).
    n_segments, n_visitors = membership.shape
    n_pairs = 0
    for segment in range(n_segments):
        for visitor in range(n_visitors):
            n_pairs += membership[segment, visitor]
    # Written unconditionally, kept by advancing: no branch to mispredict on random flags.
    visitors = np.empty(n_pairs + 1, dtype=np.intp)
    segments = np.empty(n_pairs + 1, dtype=np.intp)
    pair = 0
    for start in range(0, n_visitors, group_rows):
        stop = min(start + group_rows, n_visitors)
        for segment in range(n_segments):
            for visitor in range(start, stop):
                visitors[pair] = visitor
                segments[pair] = segment
                pair += membership[segment, visitor]
    return visitors[:n_pairs], segments[:n_pairs]


def apply_exploration_floor(frequencies: np.ndarray, epsilon: float) -> np.ndarray:
    """Raise arms below ``epsilon / K`` to exactly that floor and rescale the rest.

    Pure: reads ``frequencies``, returns a new array.

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
