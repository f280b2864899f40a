"""Effective sample size, Monte Carlo standard error and R-hat of posterior samples (numpy).

Leaf kernel module: numpy in, numpy out, no xarray, no dask, nothing of pytyche.

The estimator is the standard autocorrelation-based ("basic", not rank-normalized) effective
sample size of Stan and ArviZ (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, eqs. 10-11;
Geyer 1992 for the truncation): per-chain autocovariances by FFT, combined across chains
through the between/within variance estimate, summed over Geyer's initial positive sequence
made monotone. Chains are not split.

The sampler diagnostics are the rank-normalized ones of the same paper, as Stan and ArviZ
compute them: :func:`rank_normalized_rhat` (split R-hat of rank normal scores, bulk and
folded) and :func:`bulk_effective_sample_size` (the estimator above on split chains of rank
normal scores). They equal ``arviz.rhat(x, method="rank")`` and ``arviz.ess(x,
method="bulk")`` (the tests check it); they are written here, in numpy, so that pytyche
does not depend on ArviZ.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

__all__ = [
    "bulk_effective_sample_size",
    "effective_sample_size",
    "probability_mcse",
    "rank_normalized_rhat",
]

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


def _series_ess(chains: np.ndarray, min_draws: int = MIN_DRAWS) -> float:
    """ESS of one (chain, draw) series; the nominal size below ``min_draws`` per chain."""
    n_chains, n_draws = chains.shape
    nominal = float(n_chains * n_draws)
    if not np.isfinite(chains).all():
        return math.nan
    if n_draws < min_draws:
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


def rank_normalized_rhat(samples: np.ndarray) -> np.ndarray:
    """Rank-normalized split R-hat of each series of MCMC samples, over its last two axes.

    The convergence diagnostic of Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021),
    as Stan and ArviZ (``arviz.rhat(..., method="rank")``) compute it: every chain is split
    into its first and second half (the middle draw of an odd-length chain is dropped), the
    draws of all halves are replaced by normal scores of their ranks
    (``Φ⁻¹((rank - 3/8) / (n + 1/4))``, ties averaged), and the classic potential scale
    reduction ``sqrt(((n - 1) / n · W + B / n) / W)`` of the halves is taken; the same is
    done on the *folded* halves ``|x - median(x)|``, which detects chains that agree on the
    centre but not on the spread, and the larger of the two is returned.

    Parameters
    ----------
    samples : numpy.ndarray
        Real, shape (..., chain, draw).

    Returns
    -------
    numpy.ndarray
        float64, shape (...): 1 for chains that sample the same distribution, larger when
        they disagree (1.01 is the usual limit). NaN for a series with fewer than 2 chains
        or 4 draws per chain, holding NaN or infinity, or constant (e.g. control's contrast,
        which is 0 in every sample): there is nothing to diagnose.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> mixing = rng.normal(size=(4, 500))
    >>> float(rank_normalized_rhat(mixing)) < 1.01
    True
    >>> stuck = mixing + np.arange(4)[:, None]   # each chain around its own level
    >>> float(rank_normalized_rhat(stuck)) > 1.5
    True
    """
    x = _series_axes(samples)
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.array([_series_rhat(series) for series in flat], dtype=np.float64)
    return out.reshape(x.shape[:-2])


def bulk_effective_sample_size(samples: np.ndarray) -> np.ndarray:
    """Bulk effective sample size of each series, over its last two axes (rank-normalized, split).

    As ``arviz.ess(..., method="bulk")`` and Stan: the chains are split in halves and the
    draws replaced by the normal scores of their ranks (see :func:`rank_normalized_rhat`),
    then :func:`effective_sample_size` is taken of the halves. It measures how well the bulk
    of the distribution is explored, whatever its tails, and pairs with the R-hat.

    Parameters
    ----------
    samples : numpy.ndarray
        Real, shape (..., chain, draw).

    Returns
    -------
    numpy.ndarray
        float64, shape (...). NaN for a series with fewer than 4 draws per chain, holding
        NaN or infinity, or constant.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> 1500 < float(bulk_effective_sample_size(rng.normal(size=(4, 500)))) < 2500
    True
    """
    x = _series_axes(samples)
    flat = x.reshape(-1, *x.shape[-2:])
    out = np.array([_series_bulk_ess(series) for series in flat], dtype=np.float64)
    return out.reshape(x.shape[:-2])


def _series_axes(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"samples must have (..., chain, draw) axes, got shape {x.shape}")
    return x


def _diagnosable(chains: np.ndarray, min_chains: int) -> bool:
    """Enough chains and draws, all finite, not constant."""
    n_chains, n_draws = chains.shape
    if n_chains < min_chains or n_draws < MIN_DRAWS or not np.isfinite(chains).all():
        return False
    return bool(np.ptp(chains) > 0.0)


def _split_chains(chains: np.ndarray) -> np.ndarray:
    """Each chain's first and second half as two chains (an odd middle draw dropped)."""
    half = chains.shape[1] // 2
    return np.concatenate([chains[:, :half], chains[:, chains.shape[1] - half :]], axis=0)


def _normal_scores(chains: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks over all chains together (ties get their average rank)."""
    ranks = rankdata(chains, method="average", axis=None).reshape(chains.shape)
    return ndtri((ranks - 0.375) / (chains.size + 0.25))


def _potential_scale_reduction(chains: np.ndarray) -> float:
    """Classic R-hat of (chain, draw) draws; NaN when the within-chain variance is 0."""
    n_draws = chains.shape[1]
    within = float(np.mean(np.var(chains, axis=1, ddof=1)))
    if within <= 0.0:
        return math.nan
    between = n_draws * float(np.var(chains.mean(axis=1), ddof=1))
    return math.sqrt((between / within + n_draws - 1.0) / n_draws)


def _series_rhat(chains: np.ndarray) -> float:
    if not _diagnosable(chains, min_chains=2):
        return math.nan
    halves = _split_chains(chains)
    bulk = _potential_scale_reduction(_normal_scores(halves))
    tail = _potential_scale_reduction(_normal_scores(np.abs(halves - np.median(halves))))
    return max(bulk, tail)  # NaN only if both are


def _series_bulk_ess(chains: np.ndarray) -> float:
    if not _diagnosable(chains, min_chains=1):
        return math.nan
    # The halves of a 4-draw chain have 2 draws: ArviZ estimates from them all the same.
    return _series_ess(_normal_scores(_split_chains(chains)), min_draws=2)
