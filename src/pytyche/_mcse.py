"""Effective sample size and Monte Carlo standard error of posterior frequencies (numpy only).

Leaf kernel module: numpy in, numpy out, no xarray, no dask, nothing of pytyche.

The estimator is the standard autocorrelation-based ("basic", not rank-normalized) effective
sample size of Stan and ArviZ (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, eqs. 10-11;
Geyer 1992 for the truncation): per-chain autocovariances by FFT, combined across chains
through the between/within variance estimate, summed over Geyer's initial positive sequence
made monotone. Chains are not split.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["effective_sample_size", "probability_mcse"]

# With fewer draws per chain than this, autocorrelations mean nothing: the nominal size is used.
MIN_DRAWS = 4


def effective_sample_size(samples: np.ndarray) -> np.ndarray:
    """Effective sample size of each series of MCMC samples, over its last two axes.

    Parameters
    ----------
    samples : numpy.ndarray
        Real or boolean, shape (..., chain, draw). Booleans (indicators of an event) are
        treated as 0/1.

    Returns
    -------
    numpy.ndarray
        float64, shape (...): the effective sample size of each series, between
        ``chain * draw / log10(chain * draw)``-ish and ``chain * draw * log10(chain * draw)``
        (the truncation of Stan and ArviZ). A constant series, or one with fewer than 4 draws
        per chain, gets the nominal size ``chain * draw``; a series holding NaN gets NaN.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> independent = rng.normal(size=(4, 1000))
    >>> 3000 < float(effective_sample_size(independent)) < 5000
    True
    >>> sticky = np.repeat(rng.normal(size=(4, 100)), 10, axis=1)   # each value 10 times
    >>> float(effective_sample_size(sticky)) < 800
    True
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"samples must have (..., chain, draw) axes, got shape {x.shape}")
    leading = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.array([_series_ess(series) for series in flat], dtype=np.float64)
    return out.reshape(leading)


def probability_mcse(probability: np.ndarray, ess: np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of a posterior frequency: ``sqrt(p (1 - p) / ess)``.

    Parameters
    ----------
    probability : numpy.ndarray
        Frequencies of an event over the samples, in [0, 1].
    ess : numpy.ndarray
        Effective sample sizes of the event's indicator (the number of samples when they are
        independent), broadcastable against ``probability``.

    Returns
    -------
    numpy.ndarray
        float64; NaN where ``probability`` or ``ess`` is NaN.

    Examples
    --------
    >>> float(probability_mcse(np.array(0.5), np.array(100.0)))
    0.05
    """
    p = np.asarray(probability, dtype=np.float64)
    return np.sqrt(p * (1.0 - p) / np.asarray(ess, dtype=np.float64))


def _series_ess(chains: np.ndarray) -> float:
    """ESS of one (chain, draw) series."""
    n_chains, n_draws = chains.shape
    nominal = float(n_chains * n_draws)
    if not np.isfinite(chains).all():
        return math.nan
    if n_draws < MIN_DRAWS:
        return nominal
    acov = _autocovariance(chains)  # (chain, lag), biased (divided by n_draws)
    chain_mean = chains.mean(axis=1)
    within = float(np.mean(acov[:, 0] * n_draws / (n_draws - 1.0)))
    var_plus = within * (n_draws - 1.0) / n_draws
    if n_chains > 1:
        var_plus += float(np.var(chain_mean, ddof=1))
    if var_plus <= 0.0:  # every draw of every chain is the same value
        return nominal
    mean_acov = acov.mean(axis=0)

    def rho(lag: int) -> float:
        return 1.0 - (within - float(mean_acov[lag])) / var_plus

    rho_hat = np.zeros(n_draws)
    rho_hat[0] = 1.0
    rho_even, rho_odd = 1.0, rho(1)
    rho_hat[1] = rho_odd
    lag = 0
    # Geyer's initial positive sequence: sums of adjacent pairs while they stay positive.
    while lag < n_draws - 4 and rho_even + rho_odd > 0.0:
        lag += 2
        rho_even, rho_odd = rho(lag), rho(lag + 1)
        if rho_even + rho_odd >= 0.0:
            rho_hat[lag], rho_hat[lag + 1] = rho_even, rho_odd
    max_lag = lag
    if rho_even > 0.0:
        rho_hat[max_lag] = rho_even
    # Geyer's initial monotone sequence: pair sums may not increase.
    lag = 1
    while lag <= max_lag - 2:
        if rho_hat[lag + 1] + rho_hat[lag + 2] > rho_hat[lag - 1] + rho_hat[lag]:
            rho_hat[lag + 1] = rho_hat[lag + 2] = (rho_hat[lag - 1] + rho_hat[lag]) / 2.0
        lag += 2
    tau = -1.0 + 2.0 * float(rho_hat[:max_lag].sum()) + float(rho_hat[max_lag])
    tau = max(tau, 1.0 / math.log10(nominal))
    return nominal / tau


def _autocovariance(chains: np.ndarray) -> np.ndarray:
    """Biased autocovariance of each chain at every lag, by FFT."""
    n_draws = chains.shape[1]
    centered = chains - chains.mean(axis=1, keepdims=True)
    size = 1 << (2 * n_draws - 1).bit_length()
    spectrum = np.fft.rfft(centered, n=size, axis=1)
    return np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=1)[:, :n_draws] / n_draws
