"""Numpy/numba kernels of the policy-tree search: numpy in, numpy out. No xarray, no dask.

The search never touches visitors once their covariates are binned: every decision is made on
histograms — per covariate bin (or pair of bins), the sums of the visitors' posterior-mean
contrasts and their count. Building those histograms is the only step that reads every
visitor, so it is compiled; everything after it works on arrays of at most a few thousand bins.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["histogram", "pair_histogram", "posterior_mean_block"]


@numba.njit(nogil=True, cache=True)
def _histogram(codes, index, values, out):
    for position in range(index.size):
        visitor = index[position]
        row = codes[visitor]
        for column in range(values.shape[1]):
            out[row, column] += values[visitor, column]


@numba.njit(nogil=True, cache=True)
def _pair_histogram(codes_a, codes_b, index, values, out):
    for position in range(index.size):
        visitor = index[position]
        a = codes_a[visitor]
        b = codes_b[visitor]
        for column in range(values.shape[1]):
            out[a, b, column] += values[visitor, column]


def histogram(codes: np.ndarray, n_codes: int, index: np.ndarray, values: np.ndarray):
    """Sum the rows of `values` of the visitors in `index` by their code.

    Parameters
    ----------
    codes : numpy.ndarray
        int32 (visitor,) bin code of every visitor, in ``[0, n_codes)``.
    n_codes : int
        Number of codes.
    index : numpy.ndarray
        int64 positions of the visitors to include.
    values : numpy.ndarray
        float64 (visitor, column), C-contiguous.

    Returns
    -------
    numpy.ndarray
        float64 (n_codes, column).
    """
    out = np.zeros((n_codes, values.shape[1]), dtype=np.float64)
    _histogram(codes, index, values, out)
    return out


def pair_histogram(
    codes_a: np.ndarray,
    n_a: int,
    codes_b: np.ndarray,
    n_b: int,
    index: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """Sum the rows of `values` of the visitors in `index` by their pair of codes.

    Returns
    -------
    numpy.ndarray
        float64 (n_a, n_b, column).
    """
    out = np.zeros((n_a, n_b, values.shape[1]), dtype=np.float64)
    _pair_histogram(codes_a, codes_b, index, values, out)
    return out


@numba.njit(nogil=True, cache=True)
def _mean_rows(rows, out):
    n_samples = rows.shape[1]
    for visitor in range(rows.shape[0]):
        for arm in range(rows.shape[2]):
            total = 0.0
            for sample in range(n_samples):
                total += np.float64(rows[visitor, sample, arm])
            out[visitor, arm] = total / n_samples


@numba.njit(nogil=True, cache=True)
def _mean_products(rows, factor_rows, out):
    # Hurdle metric: conversion × value in float64, never materialized.
    n_samples = rows.shape[1]
    for visitor in range(rows.shape[0]):
        for arm in range(rows.shape[2]):
            total = 0.0
            for sample in range(n_samples):
                total += np.float64(rows[visitor, sample, arm]) * np.float64(
                    factor_rows[visitor, sample, arm]
                )
            out[visitor, arm] = total / n_samples


def posterior_mean_block(*factors: np.ndarray) -> np.ndarray:
    """Posterior-mean metric of one visitor block: the mean over samples of the factors' product.

    Parameters
    ----------
    *factors : numpy.ndarray
        One or two arrays of shape (visitor, sample dims..., arm) whose product is the metric.

    Returns
    -------
    numpy.ndarray
        float64 (visitor, arm). Non-finite draws propagate.
    """
    shape = factors[0].shape
    n_visitors, n_arms = shape[0], shape[-1]
    n_samples = math.prod(shape[1:-1])
    rows = [np.ascontiguousarray(f).reshape(n_visitors, n_samples, n_arms) for f in factors]
    out = np.empty((n_visitors, n_arms), dtype=np.float64)
    if n_visitors == 0:
        return out
    if len(rows) == 1:
        _mean_rows(rows[0], out)
    else:
        _mean_products(rows[0], rows[1], out)
    return out
