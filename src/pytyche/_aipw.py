"""Numpy kernels of the doubly robust correction: numpy in, numpy out, one visitor block at a time.

Per visitor ``i`` served arm ``A_i`` with outcome ``Y_i`` and known propensity ``e_i`` (the
probability of the arm it was served), and per posterior sample ``s``, the served arm's
per-visitor metric ``m`` becomes the augmented inverse-propensity-weighted (AIPW) pseudo-outcome
with a Bayesian-bootstrap weight ``ω_is`` ~ Exp(1) on its residual term::

    m'  =  m + ω_is (Y_i - m) / e_i

The other arms' values are kept. ``ω`` comes from a counter-based hash of (key, visitor row,
sample), so a block's weights do not depend on how the posterior is chunked.

For a hurdle posterior (``metric = conversion × value``) both parts are corrected so that their
product is the metric's pseudo-outcome: ``conversion' = c + ω (1{Y>0} - c) / e`` (the
conversion's own pseudo-outcome) and ``value' = ψ / conversion'`` with ``ψ = c v + ω (Y - c v)
/ e``. ``conversion'`` is positive for a converter (at least ``min(c, 1)``), and a
non-converter's ``ψ`` is ``conversion' × v``, so ``value'`` keeps ``v`` there.

Every kernel reads its inputs and returns a new array; none keeps state between calls. The numba
kernels release the GIL.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["bootstrap_weights", "corrected_block", "stream_key"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_UNIT = 2.0**-53

# Which variable a kernel call returns.
ADDITIVE, HURDLE_CONVERSION, HURDLE_VALUE = 0, 1, 2


def stream_key(seed: int) -> int:
    """The 64-bit key of the bootstrap weights drawn from ``seed`` (pure).

    Parameters
    ----------
    seed : int
        A non-negative seed.

    Returns
    -------
    int
        In [0, 2**64).
    """
    return int(np.random.SeedSequence([seed, 0xA1B2]).generate_state(1, dtype=np.uint64)[0])


@numba.njit(nogil=True, cache=True)
def _mix(z):
    """splitmix64's finalizer: a bijection of uint64 with good avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


@numba.njit(nogil=True, cache=True)
def _weight(key, visitor, sample):
    """An Exp(1) draw for (key, visitor row, sample), from a hash: the same for any chunking."""
    h = _mix(_mix(key + np.uint64(visitor) * _GOLDEN) + np.uint64(sample) * _GOLDEN)
    u = (np.float64(h >> np.uint64(11)) + 0.5) * _UNIT  # in (0, 1), never 0
    return -np.log(u)


@numba.njit(nogil=True, cache=True)
def _bootstrap_weights(key, first_row, n_rows, n_samples):
    out = np.empty((n_rows, n_samples))
    for v in range(n_rows):
        for s in range(n_samples):
            out[v, s] = _weight(key, first_row + v, s)
    return out


def bootstrap_weights(key: int, first_row: int, n_rows: int, n_samples: int) -> np.ndarray:
    """The Exp(1) Bayesian-bootstrap weights of visitor rows ``first_row...`` (pure).

    Parameters
    ----------
    key : int
        The stream, in [0, 2**64).
    first_row : int
        The posterior row of the first visitor.
    n_rows, n_samples : int
        How many visitor rows and posterior samples.

    Returns
    -------
    numpy.ndarray
        float64 (n_rows, n_samples), each entry an independent Exp(1) draw: mean 1, variance 1.
    """
    return _bootstrap_weights(np.uint64(key), first_row, n_rows, n_samples)


@numba.njit(nogil=True, cache=True)
def _corrected(first, second, served, outcome, inverse_propensity, key, first_row, which, out):
    n_rows, n_samples, _ = out.shape
    for v in range(n_rows):
        k = served[v]
        y = outcome[v]
        converted = 1.0 if y > 0.0 else 0.0
        for s in range(n_samples):
            w = _weight(key, first_row + v, s) * inverse_propensity[v]
            m = np.float64(first[v, s, k])
            if which == ADDITIVE:
                out[v, s, k] = m + w * (y - m)
                continue
            value = np.float64(second[v, s, k])
            conversion = m + w * (converted - m)
            if which == HURDLE_CONVERSION:
                out[v, s, k] = conversion
            elif converted > 0.0:
                out[v, s, k] = (m * value + w * (y - m * value)) / conversion


def corrected_block(
    factors: tuple[np.ndarray, ...],
    served: np.ndarray,
    outcome: np.ndarray,
    propensity: np.ndarray,
    *,
    key: int,
    first_row: int,
    which: int,
) -> np.ndarray:
    """One visitor block of a corrected posterior variable (pure: returns a new array).

    Parameters
    ----------
    factors : tuple of numpy.ndarray
        The block's metric factors, each (visitor, sample dims..., arm), the sample dims whole:
        ``(metric,)`` for an additive family, ``(conversion, value)`` for a hurdle.
    served : numpy.ndarray
        (visitor,) int: the arm code each visitor was served.
    outcome : numpy.ndarray
        (visitor,) float64 observed outcomes.
    propensity : numpy.ndarray
        (visitor,) float64 probability of the served arm, in (0, 1].
    key : int
        The bootstrap weights' stream.
    first_row : int
        The posterior row of the block's first visitor.
    which : {ADDITIVE, HURDLE_CONVERSION, HURDLE_VALUE}
        The variable to return.

    Returns
    -------
    numpy.ndarray
        The corrected variable, same shape, float32 (float64 when the factor is float64).
    """
    shape = factors[0].shape
    # (visitor, sample dims..., arm) -> (visitor, sample, arm): samples counted in C order.
    flat = [f.reshape(shape[0], -1, shape[-1]) for f in factors]
    first = flat[0]
    source = flat[1] if which == HURDLE_VALUE else first
    dtype = np.result_type(source.dtype, np.float32)
    out = np.array(source, dtype=dtype, copy=True)
    second = flat[1] if which != ADDITIVE else first
    _corrected(
        first,
        second,
        np.ascontiguousarray(served, dtype=np.int64),
        np.ascontiguousarray(outcome, dtype=np.float64),
        1.0 / np.ascontiguousarray(propensity, dtype=np.float64),
        np.uint64(key),
        first_row,
        which,
        out,
    )
    return out.reshape(shape)
