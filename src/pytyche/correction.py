"""Doubly robust (AIPW) posteriors: segment effects unbiased like a randomized difference in means.

A BCF posterior regularizes treatment effects toward zero, and its intervals do not count that
bias. In an experiment the propensities are known (a randomized test, or the sequential loop's
log), so the forests' bias can be removed: per posterior sample, the served arm's per-visitor
metric becomes the augmented inverse-propensity-weighted pseudo-outcome

    m_k(x_i) + 1{A_i = k} ω_is (Y_i - m_k(x_i)) / e_k(x_i)

with ``ω_is`` ~ Exp(1) Bayesian-bootstrap weights, so the residual term's sampling noise enters
the draws. Any segment's mean of it is unbiased for the segment's mean of arm k, whatever the
forests' bias, as long as the propensities are right; the forests only make it sharper (as a
regression adjustment does). The result is a posterior in schema 1 of the same family, lazy on
dask, that every consumer reads unchanged. See ``docs/trust.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ._aipw import ADDITIVE, HURDLE_CONVERSION, HURDLE_VALUE, corrected_block, stream_key
from ._validate import check_count
from .data import OUTCOME, VARIANT, arm_codes, observed_variables
from .results import ARM, OUTCOME_MODEL, VISITOR, BCFResult, HurdleBCFResult, check_posterior

__all__ = [
    "CORRECTION_ATTR",
    "MAX_ABS_OUTCOME",
    "METHOD",
    "check_outcome_scale",
    "doubly_robust",
    "observed_outcome",
    "propensity_table",
]

CORRECTION_ATTR = "pytyche_correction"
METHOD = "doubly_robust"
# The posterior is stored as float32: outcomes this large (in absolute value) would overflow it
# (float32 ends at 3.4e38) and the forests' float64 variance long before 1e300.
MAX_ABS_OUTCOME = 1e30


def doubly_robust(posterior: BCFResult, *, propensity=None, seed: int = 0) -> BCFResult:
    """The doubly robust (AIPW) posterior of an experiment's BCF posterior.

    Per posterior sample ``s`` and visitor ``i`` served arm ``A_i`` with outcome ``Y_i``, the
    served arm's metric ``m`` becomes ``m + ω_is (Y_i - m) / e_i``, with ``e_i`` the probability
    that visitor ``i`` was served ``A_i`` and ``ω_is`` ~ Exp(1) a Bayesian-bootstrap weight;
    the other arms keep the forests' values. A segment's mean of arm k is then, per sample, the
    forests' segment mean plus the inverse-propensity-weighted mean residual of its arm-k
    members: unbiased for any forests, and as sharp as the forests are good. A hurdle posterior
    gets ``conversion`` corrected by its own pseudo-outcome (``1{Y > 0}``) and ``value`` such
    that ``conversion * value`` is the metric's pseudo-outcome.

    **Assumption**: the propensities are the true assignment probabilities, each above 0 for
    the arm served (a randomized experiment, or a log of the probabilities used). For
    observational data, where nobody knows them, this correction does not apply: do not call
    it, and read the forests' effects as regularized (biased toward 0) estimates.

    Parameters
    ----------
    posterior : BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult
        A posterior with observed data (``variant`` and ``outcome``), not corrected before.
    propensity : sequence of float, mapping of arm to float, or array (visitor, arm), optional
        The assignment probabilities: one share per arm (control first), or one row per
        visitor (as the sequential loop logs them). Default: the observed arm shares, which
        assumes a randomized experiment with fixed shares (the estimator is then the
        regression-adjusted difference in means of a randomized test).
    seed : int, default 0
        The bootstrap weights' stream: the same seed and posterior give the same draws, for any
        chunking.

    Returns
    -------
    BCFResult
        Same family, dims and coordinates; the metric variables replaced (float32, lazy on a
        dask-backed posterior: one task per visitor chunk), visitor-major. Only the
        ``variant`` and ``outcome`` columns are read now (one compute when they are lazy).
        The coordinate ``outcome_model`` (visitor, arm) keeps the forests' posterior-mean
        metric before the correction: the outcome model :func:`pytyche.evaluate_policy` needs.
        The attribute ``pytyche_correction`` (JSON) records the method, the propensity source
        and the seed.

    Raises
    ------
    ValueError
        Without observed outcomes, for an outcome that is not finite (or negative for a
        hurdle, or not 0/1 for a binary family), for invalid propensities, or when the
        posterior was corrected already.

    Examples
    --------
    >>> import pytyche as pt
    >>> observed, _ = pt.simulate_experiment(600, family="continuous", seed=1)
    >>> raw = pt.fit(observed, n_draws=20, n_trees_mu=10, n_trees_tau=5, progress=False,
    ...              correction=None)
    >>> corrected = pt.doubly_robust(raw, seed=1)
    >>> corrected.correction["propensity"]
    'observed arm shares (randomized experiment assumed)'
    """
    posterior = check_posterior(posterior)
    if posterior.correction is not None:
        raise ValueError(
            "this posterior is corrected already (attribute pytyche_correction: "
            f"{posterior.dataset.attrs[CORRECTION_ATTR]}); correcting it twice would count "
            "each residual twice"
        )
    seed = check_count("seed", seed)
    observed = posterior.observed
    assert observed is not None  # check_posterior refuses a posterior without observed data
    # The two columns the correction reads, in one compute when they are lazy.
    observed = observed[[n for n in (VARIANT, OUTCOME) if n in observed]].compute()
    arms = list(posterior.variants)
    served = arm_codes(observed, arms)
    outcome = observed_outcome(observed)
    _check_family_outcome(type(posterior).family, outcome)
    table = propensity_table(propensity, arms, served)
    chosen = table[np.arange(served.size), served]
    info = {
        "method": METHOD,
        "weights": "Bayesian bootstrap, Exp(1) per visitor and sample, on the residual term",
        "propensity": _propensity_source(propensity),
        "seed": seed,
    }
    return _corrected_result(posterior, served, outcome, chosen, seed, info)


def _corrected_result(posterior, served, outcome, chosen, seed, info) -> BCFResult:
    factors = posterior.metric_factors()  # visitor-major views
    hurdle = isinstance(posterior, HurdleBCFResult)
    outputs = (HURDLE_CONVERSION, HURDLE_VALUE) if hurdle else (ADDITIVE,)
    key = stream_key(seed)
    dataset = posterior.dataset
    data = [f.data for f in factors]
    lazy = any(isinstance(d, da.Array) for d in data)
    variables = {}
    for name, which in zip(posterior.metric_variables, outputs, strict=True):
        values: np.ndarray | da.Array
        if lazy:
            values = _lazy(data, served, outcome, chosen, key, which)
        else:
            arrays = tuple(np.asarray(d) for d in data)
            values = corrected_block(
                arrays, served, outcome, chosen, key=key, first_row=0, which=which
            )
        variables[name] = xr.Variable(factors[0].dims, values, dataset[name].attrs)
    attrs = {**dataset.attrs, CORRECTION_ATTR: json.dumps(info)}
    model = posterior.metric().mean(posterior.sample_dims, skipna=False).astype(np.float32)
    corrected = dataset.drop_vars(list(posterior.metric_variables)).assign(variables)
    corrected = corrected.assign_coords({OUTCOME_MODEL: model.variable.transpose(VISITOR, ARM)})
    return type(posterior)(corrected.assign_attrs(attrs))


def _lazy(data, served, outcome, chosen, key, which) -> da.Array:
    """One task per visitor chunk; the sample and arm axes whole in each chunk.

    The visitor columns travel as dask arrays chunked like the draws, so a task carries its
    own rows, not every visitor's (a closure over them would ship all of them to every task).
    """
    first = data[0] if isinstance(data[0], da.Array) else da.from_array(data[0])
    first = first.rechunk({axis: -1 for axis in range(1, first.ndim)})
    arrays = [first]
    if len(data) == 2:
        arrays.append(da.asarray(data[1]).rechunk(first.chunks))
    ones = (1,) * (first.ndim - 1)
    columns = [
        da.from_array(column.reshape(-1, *ones), chunks=(first.chunks[0], *ones))
        for column in (served, outcome, chosen)
    ]
    dtype = np.result_type(arrays[-1 if which == HURDLE_VALUE else 0].dtype, np.float32)
    return da.map_blocks(_corrected_chunk, *arrays, *columns, key=key, which=which, dtype=dtype)


def _corrected_chunk(*blocks, key: int, which: int, block_info=None) -> np.ndarray:
    """``corrected_block`` of one visitor chunk: the factors, then served, outcome, propensity."""
    *factors, served, outcome, chosen = blocks
    return corrected_block(
        tuple(factors),
        served.ravel(),
        outcome.ravel(),
        chosen.ravel(),
        key=key,
        first_row=block_info[0]["array-location"][0][0],
        which=which,
    )


def _check_family_outcome(family: str, outcome: np.ndarray) -> None:
    if family == "binary":
        bad = ~np.isin(outcome, (0.0, 1.0))
        expected = "0 or 1 (a conversion)"
    elif family == "hurdle":
        bad = outcome < 0
        expected = ">= 0 (zero for a visitor who did not convert)"
    else:
        return
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"a {family} posterior needs outcomes {expected}; visitor row {i} has "
            f"{outcome[i]:g} ({int(bad.sum())} such rows)"
        )


def _propensity_source(propensity) -> str:
    if propensity is None:
        return "observed arm shares (randomized experiment assumed)"
    shape = np.shape(propensity) if not isinstance(propensity, Mapping) else ()
    return "given per visitor" if len(shape) == 2 else "given per arm"


def observed_outcome(observed: xr.Dataset) -> np.ndarray:
    """The float64 outcome column of observed data, checked finite and within float32's range.

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data with an ``outcome`` along ``visitor``.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ValueError
        When there is no outcome, it is not numeric, or it holds NaN, infinity or a value
        beyond ±1e30.
    """
    variables = observed_variables(observed)
    if OUTCOME not in variables:
        raise ValueError(
            f"the observed data has no {OUTCOME!r} along 'visitor' (found {sorted(variables)}); "
            "build it with pytyche.observed_data(frames, outcome=...)"
        )
    values = np.asarray(variables[OUTCOME].values)
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise ValueError(f"the outcome has dtype {values.dtype}; expected numbers")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"the outcome holds NaN or infinite values (visitor row {i}: {values[i]})")
    check_outcome_scale(values)
    return values


def check_outcome_scale(values: np.ndarray) -> None:
    """Refuse outcomes beyond ±1e30: the posterior is float32 and the forests' variance float64.

    Parameters
    ----------
    values : numpy.ndarray
        float64 outcomes (NaN allowed: it is not compared).

    Raises
    ------
    ValueError
        Naming the first visitor row out of range.
    """
    with np.errstate(invalid="ignore"):
        too_big = np.abs(values) > MAX_ABS_OUTCOME
    if too_big.any():
        i = int(np.flatnonzero(too_big)[0])
        raise ValueError(
            f"the outcome of visitor row {i} is {values[i]:g}; outcomes must be within "
            f"±{MAX_ABS_OUTCOME:g} (the posterior is stored as float32): rescale the outcome, "
            "e.g. to thousands or millions of its unit"
        )


def propensity_table(propensity: Any, arms: list[str], codes: np.ndarray) -> np.ndarray:
    """(visitor, arm) assignment probabilities, validated; the observed arm shares by default.

    Parameters
    ----------
    propensity : None, sequence of float, mapping of arm to float, or array (visitor, arm)
        One share per arm (control first), or one row per visitor.
    arms : list of str
        The arm names, control first.
    codes : numpy.ndarray
        (visitor,) the arm code each visitor was served.

    Returns
    -------
    numpy.ndarray
        float64 (visitor, arm), each row summing to 1, every entry strictly inside (0, 1).

    Raises
    ------
    ValueError
        For a share outside (0, 1), rows that do not sum to 1, or a shape or arm set that does
        not match.
    """
    n, k = codes.size, len(arms)
    if propensity is None:
        counts = np.bincount(codes, minlength=k)
        return np.broadcast_to(counts / counts.sum(), (n, k)).copy()
    if isinstance(propensity, Mapping):
        unknown = sorted(set(map(str, propensity)) - set(arms))
        missing = [a for a in arms if a not in propensity]
        if unknown or missing:
            raise ValueError(
                f"propensity must give one share per arm {arms}; "
                + (f"unknown {unknown} " if unknown else "")
                + (f"missing {missing}" if missing else "")
            )
        propensity = [propensity[a] for a in arms]
    p = np.asarray(propensity, dtype=np.float64)
    if p.ndim == 1:
        if p.size != k:
            raise ValueError(f"propensity has {p.size} shares but there are {k} arms {arms}")
        p = np.broadcast_to(p, (n, k)).copy()
    elif p.shape != (n, k):
        raise ValueError(
            f"propensity must be one share per arm ({k},) or one row per visitor ({n}, {k}); "
            f"got shape {p.shape}"
        )
    for j, arm in enumerate(arms):
        column = p[:, j]
        if not np.isfinite(column).all() or (column <= 0).any() or (column >= 1).any():
            raise ValueError(
                f"arm {arm!r}: propensity must lie strictly between 0 and 1, got values in "
                f"[{np.nanmin(column):g}, {np.nanmax(column):g}]"
            )
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        i = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"propensities must sum to 1 over arms; visitor row {i} sums to {sums[i]}")
    return p

