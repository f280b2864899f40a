"""Numpy kernels: numpy in, numpy out, one visitor block at a time. No xarray, no dask.

The one heavy step of every allocation is the visitor → segment reduction

    sums[segment, :] = Σ_visitor membership[segment, visitor] · metric[visitor, :]

over a visitor-major block whose trailing axes (sample dims and arm) are flattened to one row
per visitor. A dense product costs segments × block; instead the block's member visitors are
grouped into *atoms* (visitors with the same membership pattern: for disjoint segments, one
atom per segment) and each visitor's row is added once, into its atom's float64 row. Atoms are
then added into segments: a scatter when segments are disjoint, else one small matrix product
(atom count × segments × row). The heavy work is one add per member visitor, whatever the
number of segments, so the pass runs at memory speed.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "apply_exploration_floor",
    "atom_sums_block",
    "atoms_to_segments",
    "segment_sums_block",
    "visitor_atoms",
]


@numba.njit(nogil=True, cache=True)
def _sum_atoms(rows, order, atom_start, atom_sums):
    for atom in range(atom_start.size - 1):
        for position in range(atom_start[atom], atom_start[atom + 1]):
            visitor = order[position]
            for column in range(rows.shape[1]):
                atom_sums[atom, column] += rows[visitor, column]


@numba.njit(nogil=True, cache=True)
def _sum_atom_products(rows, factor_rows, order, atom_start, atom_sums):
    # Hurdle metric: conversion × value, multiplied in float64 on the fly, never materialized.
    for atom in range(atom_start.size - 1):
        for position in range(atom_start[atom], atom_start[atom + 1]):
            visitor = order[position]
            for column in range(rows.shape[1]):
                atom_sums[atom, column] += np.float64(rows[visitor, column]) * np.float64(
                    factor_rows[visitor, column]
                )


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
    # Patterns as rows of 64-bit words, so that finding the distinct ones is a fast sort.
    n_words = -(-n_segments // 64)
    packed = np.zeros((n_visitors, 8 * n_words), dtype=np.uint8)
    packed[:, : -(-n_segments // 8)] = np.packbits(membership, axis=0).T
    words = packed.view(np.uint64)
    if n_words == 1:
        patterns, labels = np.unique(words[:, 0], return_inverse=True)
        patterns = patterns[:, np.newaxis]
    else:
        patterns, labels = np.unique(words, axis=0, return_inverse=True)
    labels = labels.reshape(-1).astype(np.intp)
    if len(patterns) and not patterns[0].any():  # the all-zero pattern sorts first
        patterns = patterns[1:]
        labels -= 1
    atom_membership = np.unpackbits(patterns.view(np.uint8), axis=1, count=n_segments)
    return labels, atom_membership.astype(bool)


def atom_sums_block(factors: tuple[np.ndarray, ...], labels: np.ndarray, atom_sums: np.ndarray):
    """Add one visitor block's metric rows into their atoms' float64 sums (the heavy step).

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        One or two arrays of shape (visitor, ...): the metric is their product (the hurdle
        metric is conversion × value). Made C-contiguous if they are not.
    labels : numpy.ndarray
        intp (visitor,) atom of each visitor, -1 for none (never read).
    atom_sums : numpy.ndarray
        float64 (atom, prod(...)) accumulator, added into in place.
    """
    n_visitors = factors[0].shape[0]
    if n_visitors == 0:
        return
    rows = [np.ascontiguousarray(f).reshape(n_visitors, atom_sums.shape[1]) for f in factors]
    # Visitors grouped by atom, so each atom's float64 row stays in cache while it fills.
    order = np.argsort(labels, kind="stable")
    atom_start = np.searchsorted(labels[order], np.arange(len(atom_sums) + 1))
    if len(rows) == 1:
        _sum_atoms(rows[0], order, atom_start, atom_sums)
    else:
        _sum_atom_products(rows[0], rows[1], order, atom_start, atom_sums)


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
    labels, atom_membership = visitor_atoms(np.asarray(membership, dtype=bool))
    trailing = factors[0].shape[1:]
    atom_sums = np.zeros((len(atom_membership), math.prod(trailing)), dtype=np.float64)
    atom_sums_block(factors, labels, atom_sums)
    return atoms_to_segments(atom_sums, atom_membership).reshape(-1, *trailing)


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
