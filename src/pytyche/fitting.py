"""Bayesian causal forest fits (stochtree) from observed experiment data to a typed posterior.

All three families fit K >= 2 arms with **one multivariate-treatment BCF**: the treatment is
the one-hot vector of the visitor's treatment arm (all zeros for control), so one prognostic
forest μ(x) is shared by every arm and a vector-leaf effect forest gives τ_k(x) for each
treatment. Per draw, arm k's linear predictor is μ(x) + τ_k(x) (control: μ(x)), which keeps
the arms' draws jointly coherent — every contrast is measured against the same control draw.
On the simulator its recovery of the true contrasts was no worse on average than one fit per
treatment against control (per-treatment fits won some arms), and only the multivariate fit
gives coherent per-draw comparisons against one shared control draw (see
``docs/fitting.md`` and ``benchmarks/bench_fit.py``).

- binary: probit BCF, ``conversion[k] = Φ(μ + τ_k)`` per draw.
- continuous: Gaussian BCF, ``expected[k] = μ + τ_k`` per draw.
- hurdle: a probit BCF of ``outcome > 0`` on every visitor gives ``conversion``; a Gaussian
  BCF of ``log(outcome)`` on the converters gives ``value[k] = exp(m_k + σ²/2)``, σ² that
  draw's residual variance. The two parts have separate parameters and likelihoods, so their
  posteriors are independent and draw d of one is paired with draw d of the other.

Randomization propensities are the observed arm shares unless given; they are never estimated
by a model.

With ``max_train_visitors=N`` the forests train on a sample of at most N visitors stratified by
arm (and by conversion, for the binary and hurdle families) and are serialized (stochtree's
``to_json``); the posterior of every visitor is a lazy dask array: one task per visitor chunk
loads the forests (once per process) and predicts that chunk, so the posterior is never whole
in memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import ndtr

from ._config import get_options
from ._validate import check_count
from .correction import (
    METHOD,
    check_outcome_scale,
    doubly_robust,
    observed_outcome,
    propensity_table,
)
from .data import (
    OUTCOME,
    VARIANT,
    arm_codes,
    attach_observed,
    check_observed,
    observed_variables,
    visitor_chunk,
)
from .results import (
    ARM,
    CHAIN,
    DRAW,
    VISITOR,
    BCFResult,
    BinaryBCFResult,
    ContinuousBCFResult,
    HurdleBCFResult,
    posterior_dataset,
)
from .setup_check import MIN_CONVERTERS, MIN_VISITORS_PER_ARM, check_setup, fixed_value

__all__ = ["fit", "fit_binary_bcf", "fit_continuous_bcf", "fit_hurdle_bcf"]

# Progress lines start once a model has been fitting for this long, then repeat.
PROGRESS_AFTER_S = 3.0
PROGRESS_EVERY_S = 15.0
# A text covariate with more distinct values than this is refused (one column per value).
MAX_TEXT_LEVELS = 256
# family="auto": a non-negative outcome with at least this share of exact zeros is a hurdle.
HURDLE_ZERO_SHARE = 0.10
# The random stream of the training sample (the models use streams 1 and 2, see _stage_seed).
SAMPLE_STREAM = 0
# stochtree general parameters that pytyche sets itself (the posterior's shape depends on them),
# with the argument to use instead.
OWNED_GENERAL_PARAMS = {
    "num_chains": "pass n_chains=",
    "random_seed": "pass seed=",
    "num_threads": "pass num_threads=",
    "keep_every": "the posterior keeps every one of n_draws draws",
    "keep_burnin": "burn-in draws are never kept; raise n_draws",
    "keep_gfr": "warm-start draws are never kept; raise n_draws",
}


def fit(observed: xr.Dataset, family: str = "auto", **options) -> BCFResult:
    """Fit a BCF posterior of the family that suits the outcome.

    With ``family="auto"``: an outcome of only 0 and 1 → binary; a non-negative outcome with
    at least 10% exact zeros and some positive values → hurdle; anything else → continuous.

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data, as from :func:`pytyche.observed_data` (or a result's ``.observed``).
    family : {"auto", "binary", "continuous", "hurdle"}, default "auto"
        The family, or "auto" to choose from the outcome.
    **options
        Passed to :func:`fit_binary_bcf`, :func:`fit_continuous_bcf` or
        :func:`fit_hurdle_bcf`; for example ``max_train_visitors=50_000`` to train on a
        stratified sample and predict every visitor's posterior lazily.

    Returns
    -------
    BinaryBCFResult or ContinuousBCFResult or HurdleBCFResult

    Raises
    ------
    ValueError
        For an unknown family, for the problems :func:`pytyche.check_setup` finds (all
        listed), and as the chosen fit function raises.
    """
    fits = {
        "binary": fit_binary_bcf,
        "continuous": fit_continuous_bcf,
        "hurdle": fit_hurdle_bcf,
    }
    if family == "auto":
        check_observed(observed)
        family = infer_family(observed_outcome(observed))
    if family not in fits:
        raise ValueError(f"family must be 'auto' or one of {sorted(fits)}, got {family!r}")
    variables = observed_variables(observed) if isinstance(observed, xr.Dataset) else {}
    if OUTCOME in variables and variables[OUTCOME].dtype.kind in "iuf":
        check_outcome_scale(np.asarray(variables[OUTCOME].values, dtype=np.float64))
    check_setup(observed, family=family).raise_for_problems()
    return fits[family](observed, **options)


def infer_family(outcome: np.ndarray) -> str:
    """The family ``fit(family="auto")`` picks for an outcome array.

    Parameters
    ----------
    outcome : numpy.ndarray
        The visitors' outcomes.

    Returns
    -------
    str
        ``"binary"``, ``"hurdle"`` or ``"continuous"``.
    """
    outcome = np.asarray(outcome, dtype=np.float64)
    if np.isin(outcome, (0.0, 1.0)).all():
        return "binary"
    if outcome.min() >= 0 and np.mean(outcome == 0) >= HURDLE_ZERO_SHARE:
        return "hurdle"
    return "continuous"


def fit_binary_bcf(
    observed: xr.Dataset,
    *,
    propensity=None,
    n_draws: int = 200,
    n_chains: int = 1,
    n_warmstart: int = 10,
    n_burnin: int = 0,
    n_trees_mu: int = 200,
    n_trees_tau: int = 50,
    seed: int = 0,
    num_threads: int = -1,
    progress: bool = True,
    stochtree_options: Mapping | None = None,
    chunk_bytes: int | None = None,
    max_train_visitors: int | None = None,
    correction: str | None = "doubly_robust",
) -> BinaryBCFResult:
    """Fit a probit BCF to a 0/1 outcome: ``conversion[k] = Φ(μ(x) + τ_k(x))`` per draw.

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data, as from :func:`pytyche.observed_data`, with a 0/1 ``outcome``.
    propensity : sequence of float, mapping of arm to float, or array (visitor, arm), optional
        Randomization probabilities of the arms: one share per arm (control first), or one row
        per visitor. Default: the observed arm shares. Never estimated by a model.
    n_draws : int, default 200
        Posterior draws kept per chain.
    n_chains : int, default 1
        Independent MCMC chains, each started from its own warm-start forest; more than 1 adds
        a ``chain`` dim beside ``draw``.
    n_warmstart : int, default 10
        Grow-from-root (XBART) sweeps that initialize the chains (raised to ``n_chains`` if
        lower); 0 starts MCMC from root.
    n_burnin : int, default 0
        MCMC iterations discarded after the warm start.
    n_trees_mu : int, default 200
        Trees in the prognostic forest μ(x).
    n_trees_tau : int, default 50
        Trees in the treatment-effect forest τ(x).
    seed : int, default 0
        Random seed: the same seed and data give an identical posterior.
    num_threads : int, default -1
        Sampler threads; -1 uses all cores.
    progress : bool, default True
        Print progress lines to stderr for model fits that take more than a few seconds.
    stochtree_options : mapping, optional
        Extra stochtree settings, merged over pytyche's: keys ``general_params``,
        ``prognostic_forest_params``, ``treatment_effect_forest_params``.
    chunk_bytes : int, optional
        Target size of one dask chunk of each posterior variable (split along visitor);
        default: the ``chunk_bytes`` option (128 MiB, see :func:`pytyche.set_options`).
    max_train_visitors : int, optional
        Train the forests on at most this many visitors (at least 20): a sample stratified
        by arm and outcome (each stratum's share as in the data, and at least 10 of its
        visitors), drawn from ``seed``. The posterior of **every** visitor is then predicted
        lazily from the serialized forests, one dask task per visitor chunk, so
        ``result.to_zarr(path)`` streams it to disk without holding it whole. With no more
        visitors than this, the forests train on all of them, and the prediction is still
        lazy. Default None: train on every visitor and hold the posterior in memory.

    correction : {"doubly_robust", None}, default "doubly_robust"
        ``"doubly_robust"`` returns :func:`pytyche.doubly_robust` of the fit, with the same
        ``propensity`` (default: the observed arm shares, i.e. a randomized experiment) and
        bootstrap weights drawn from ``seed``: segment effects unbiased like a difference in
        means, with intervals that count the outcome noise. None returns the forests' own
        posterior, whose effects are shrunk toward 0: use it only for observational data,
        where no propensity is known.

    Returns
    -------
    BinaryBCFResult
        ``conversion`` float32 (visitor, [chain,] draw, arm), dask-chunked along visitor;
        the observed data attached as visitor coordinates.
        The ``pytyche_fit`` attribute (JSON) records every option and ``train_visitors``,
        the number of visitors the forests were trained on.

    Raises
    ------
    TypeError
        When a count (``n_draws``, ``max_train_visitors``, ...) is not an integer.
    ValueError
        When the outcome holds a value other than 0 and 1 (naming the arm), is constant, or
        the observed data or options are invalid (``max_train_visitors`` below 20, with a
        single draw, or below 10 visitors per arm and outcome).
    """
    setup = _Setup(observed, propensity, _options(locals()))
    outcome = setup.outcome
    for arm, values in setup.by_arm(outcome):
        bad = values[~np.isin(values, (0.0, 1.0))]
        if bad.size:
            raise ValueError(
                f"arm {arm!r}: a binary fit needs a 0/1 outcome, found {float(bad[0])!r} (use "
                "fit_continuous_bcf or fit_hurdle_bcf for other outcomes)"
            )
    if np.unique(outcome).size < 2:
        raise ValueError(
            f"the outcome is {outcome[0]:g} for every visitor: a probit fit needs both 0s and 1s"
        )
    label = "conversion model (probit BCF)"
    # Stratified by arm and outcome: every arm's conversion rate is the same in the sample.
    strata = setup.codes * 2 + (outcome > 0)
    rows = setup.training_rows(strata, floor=MIN_VISITORS_PER_ARM, name="arm × outcome")
    conversion: np.ndarray | da.Array  # eager draws, or predicted lazily per visitor chunk
    if rows is None:
        mu, tau, _ = setup.sample(label, outcome, stage=1, probit=True)
        conversion = _per_arm(mu, tau, ndtr)
        trained = setup.codes.size
    else:
        forests = setup.forests(label, outcome[rows], rows, stage=1, probit=True)
        conversion = setup.lazy_posterior(forests, ndtr)
        trained = rows.size
    return setup.result(BinaryBCFResult, {"conversion": conversion}, {"train_visitors": trained})


def fit_continuous_bcf(
    observed: xr.Dataset,
    *,
    propensity=None,
    n_draws: int = 200,
    n_chains: int = 1,
    n_warmstart: int = 10,
    n_burnin: int = 0,
    n_trees_mu: int = 200,
    n_trees_tau: int = 50,
    seed: int = 0,
    num_threads: int = -1,
    progress: bool = True,
    stochtree_options: Mapping | None = None,
    chunk_bytes: int | None = None,
    max_train_visitors: int | None = None,
    correction: str | None = "doubly_robust",
) -> ContinuousBCFResult:
    """Fit a Gaussian BCF to a continuous outcome: ``expected[k] = μ(x) + τ_k(x)`` per draw.

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data, as from :func:`pytyche.observed_data`.
    propensity : sequence of float, mapping of arm to float, or array (visitor, arm), optional
        Randomization probabilities of the arms: one share per arm (control first), or one row
        per visitor. Default: the observed arm shares. Never estimated by a model.
    n_draws : int, default 200
        Posterior draws kept per chain.
    n_chains : int, default 1
        Independent MCMC chains, each started from its own warm-start forest; more than 1 adds
        a ``chain`` dim beside ``draw``.
    n_warmstart : int, default 10
        Grow-from-root (XBART) sweeps that initialize the chains (raised to ``n_chains`` if
        lower); 0 starts MCMC from root.
    n_burnin : int, default 0
        MCMC iterations discarded after the warm start.
    n_trees_mu : int, default 200
        Trees in the prognostic forest μ(x).
    n_trees_tau : int, default 50
        Trees in the treatment-effect forest τ(x).
    seed : int, default 0
        Random seed: the same seed and data give an identical posterior.
    num_threads : int, default -1
        Sampler threads; -1 uses all cores.
    progress : bool, default True
        Print progress lines to stderr for model fits that take more than a few seconds.
    stochtree_options : mapping, optional
        Extra stochtree settings, merged over pytyche's: keys ``general_params``,
        ``prognostic_forest_params``, ``treatment_effect_forest_params``.
    chunk_bytes : int, optional
        Target size of one dask chunk of each posterior variable (split along visitor);
        default: the ``chunk_bytes`` option (128 MiB, see :func:`pytyche.set_options`).
    max_train_visitors : int, optional
        Train the forests on at most this many visitors (at least 20): a sample stratified
        by arm (each arm's share as in the data, and at least 10 of its visitors), drawn
        from ``seed``. The posterior of **every** visitor is then predicted lazily from the
        serialized forests, one dask task per visitor chunk, so ``result.to_zarr(path)``
        streams it to disk without holding it whole. With no more visitors than this, the
        forests train on all of them, and the prediction is still lazy. Default None: train
        on every visitor and hold the posterior in memory.

    correction : {"doubly_robust", None}, default "doubly_robust"
        ``"doubly_robust"`` returns :func:`pytyche.doubly_robust` of the fit, with the same
        ``propensity`` (default: the observed arm shares, i.e. a randomized experiment) and
        bootstrap weights drawn from ``seed``: segment effects unbiased like a difference in
        means, with intervals that count the outcome noise. None returns the forests' own
        posterior, whose effects are shrunk toward 0: use it only for observational data,
        where no propensity is known.

    Returns
    -------
    ContinuousBCFResult
        ``expected`` float32 (visitor, [chain,] draw, arm), dask-chunked along visitor; the
        observed data attached as visitor coordinates.
        The ``pytyche_fit`` attribute (JSON) records every option and ``train_visitors``,
        the number of visitors the forests were trained on.

    Raises
    ------
    TypeError
        When a count (``n_draws``, ``max_train_visitors``, ...) is not an integer.
    ValueError
        When the outcome is constant, or the observed data or options are invalid
        (``max_train_visitors`` below 20, with a single draw, or below 10 visitors per arm).
    """
    setup = _Setup(observed, propensity, _options(locals()))
    if np.ptp(setup.outcome) == 0:
        raise ValueError(f"the outcome is {setup.outcome[0]:g} for every visitor: nothing to fit")
    label = "outcome model (Gaussian BCF)"
    rows = setup.training_rows(setup.codes, floor=MIN_VISITORS_PER_ARM, name="arms")
    if rows is None:
        mu, tau, _ = setup.sample(label, setup.outcome, stage=1)
        expected: np.ndarray | da.Array = _per_arm(mu, tau, None)
        trained = setup.codes.size
    else:
        forests = setup.forests(label, setup.outcome[rows], rows, stage=1)
        expected = setup.lazy_posterior(forests, None)
        trained = rows.size
    return setup.result(ContinuousBCFResult, {"expected": expected}, {"train_visitors": trained})


def fit_hurdle_bcf(
    observed: xr.Dataset,
    *,
    propensity=None,
    n_draws: int = 200,
    n_chains: int = 1,
    n_warmstart: int = 10,
    n_burnin: int = 0,
    n_trees_mu: int = 200,
    n_trees_tau: int = 50,
    seed: int = 0,
    num_threads: int = -1,
    progress: bool = True,
    stochtree_options: Mapping | None = None,
    chunk_bytes: int | None = None,
    max_train_visitors: int | None = None,
    correction: str | None = "doubly_robust",
) -> HurdleBCFResult:
    """Fit a hurdle posterior to a non-negative outcome with many zeros (e.g. revenue).

    ``conversion`` comes from a probit BCF of ``outcome > 0`` on every visitor; ``value``
    from a Gaussian BCF of ``log(outcome)`` on the converters, ``value[k] = exp(m_k(x) +
    σ²/2)`` per draw, with σ² that draw's residual variance (the log-normal mean). The value
    part compares converters, who differ between arms when conversion does, so it is not a
    causal effect on its own: only ``conversion * value`` is used for decisions. When every
    converter has the same outcome (a fixed price), no value model is fitted: ``value`` is
    that constant for every visitor, draw and arm (``pytyche.check_setup`` notes it).

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data, as from :func:`pytyche.observed_data`, with an outcome >= 0.
    propensity : sequence of float, mapping of arm to float, or array (visitor, arm), optional
        Randomization probabilities of the arms: one share per arm (control first), or one row
        per visitor. Default: the observed arm shares. Never estimated by a model.
    n_draws : int, default 200
        Posterior draws kept per chain.
    n_chains : int, default 1
        Independent MCMC chains, each started from its own warm-start forest; more than 1 adds
        a ``chain`` dim beside ``draw``.
    n_warmstart : int, default 10
        Grow-from-root (XBART) sweeps that initialize the chains (raised to ``n_chains`` if
        lower); 0 starts MCMC from root.
    n_burnin : int, default 0
        MCMC iterations discarded after the warm start.
    n_trees_mu : int, default 200
        Trees in the prognostic forest μ(x).
    n_trees_tau : int, default 50
        Trees in the treatment-effect forest τ(x).
    seed : int, default 0
        Random seed: the same seed and data give an identical posterior.
    num_threads : int, default -1
        Sampler threads; -1 uses all cores.
    progress : bool, default True
        Print progress lines to stderr for model fits that take more than a few seconds.
    stochtree_options : mapping, optional
        Extra stochtree settings, merged over pytyche's: keys ``general_params``,
        ``prognostic_forest_params``, ``treatment_effect_forest_params``.
    chunk_bytes : int, optional
        Target size of one dask chunk of each posterior variable (split along visitor);
        default: the ``chunk_bytes`` option (128 MiB, see :func:`pytyche.set_options`).
    max_train_visitors : int, optional
        Train on at most this many visitors (at least 20): a sample stratified by arm and
        by conversion (outcome > 0), each (arm, converted or not) stratum's share as in
        the data and at least 10 of its visitors, drawn from ``seed``. The conversion model
        trains on the sample, the value model on its converters. The posterior of **every**
        visitor is then predicted lazily from the serialized forests, one dask task per
        visitor chunk, so ``result.to_zarr(path)`` streams it to disk without holding it
        whole. With no more visitors than this, the forests train on all of them, and the
        prediction is still lazy. Default None: train on every visitor and hold the
        posterior in memory.

    correction : {"doubly_robust", None}, default "doubly_robust"
        ``"doubly_robust"`` returns :func:`pytyche.doubly_robust` of the fit, with the same
        ``propensity`` (default: the observed arm shares, i.e. a randomized experiment) and
        bootstrap weights drawn from ``seed``: segment effects unbiased like a difference in
        means, with intervals that count the outcome noise. None returns the forests' own
        posterior, whose effects are shrunk toward 0: use it only for observational data,
        where no propensity is known.

    Returns
    -------
    HurdleBCFResult
        ``conversion`` and ``value``, float32 (visitor, [chain,] draw, arm), dask-chunked
        along visitor; the observed data attached as visitor coordinates. The
        ``pytyche_fit`` attribute (JSON) records every option, ``train_visitors`` (the
        conversion model's training visitors) and ``train_converters`` (the value model's;
        0 with a fixed price, recorded as ``constant_value``).

    Raises
    ------
    TypeError
        When a count (``n_draws``, ``max_train_visitors``, ...) is not an integer.
    ValueError
        When an arm has a negative outcome or fewer than 10 converters (naming the arm), or
        the observed data or options are invalid (``max_train_visitors`` below 20, with a
        single draw, or below 10 visitors per stratum).
    """
    setup = _Setup(observed, propensity, _options(locals()))
    outcome = setup.outcome
    for arm, values in setup.by_arm(outcome):
        if values.min() < 0:
            raise ValueError(
                f"arm {arm!r}: a hurdle fit needs a non-negative outcome, found {values.min():g}"
            )
        converters = int(np.count_nonzero(values > 0))
        if converters < MIN_CONVERTERS:
            raise ValueError(
                f"arm {arm!r} has {converters} converter(s) (outcome > 0); the value model needs "
                f"at least {MIN_CONVERTERS} in every arm"
            )
    converted = outcome > 0
    if converted.all():
        raise ValueError(
            "every visitor has a positive outcome: there is no hurdle to model; use "
            "fit_continuous_bcf"
        )
    conversion_label = "conversion model (probit BCF)"
    value_label = "value model (Gaussian BCF on log outcome of converters)"
    # Stratified by arm and by conversion, so every arm's conversion rate (and so the value
    # model's share of each arm's converters) is the same in the sample as in the data.
    rows = setup.training_rows(
        setup.codes * 2 + converted, floor=MIN_CONVERTERS, name="arm × converted or not"
    )
    conversion: np.ndarray | da.Array  # eager draws, or predicted lazily per visitor chunk
    value: np.ndarray | da.Array
    price = fixed_value(outcome)
    if price is not None:
        # Every converter paid the same: log(outcome) is constant, which no forest can fit
        # (stochtree fails on a zero-variance outcome); the value model is that constant.
        conversion, trained = _conversion_only(setup, converted, rows, conversion_label)
        value = setup.constant_posterior(price)
        trained |= {"train_converters": 0, "constant_value": price}
    elif rows is None:
        mu, tau, _ = setup.sample(
            conversion_label, converted.astype(np.float64), stage=1, probit=True
        )
        conversion = _per_arm(mu, tau, ndtr)
        del mu, tau
        m, m_tau, sigma2 = setup.sample(
            value_label, np.log(outcome[converted]), stage=2, subset=converted
        )
        half_variance = (sigma2 / 2.0).reshape((1, *sigma2.shape, 1))
        value = _per_arm(m, m_tau, np.exp, shift=half_variance)
        trained = {"train_visitors": outcome.size, "train_converters": int(converted.sum())}
    else:
        forests = setup.forests(
            conversion_label, converted[rows].astype(np.float64), rows, stage=1, probit=True
        )
        conversion = setup.lazy_posterior(forests, ndtr)
        value_rows = rows[converted[rows]]
        forests = setup.forests(value_label, np.log(outcome[value_rows]), value_rows, stage=2)
        value = setup.lazy_posterior(forests, np.exp, half_variance=True)
        trained = {"train_visitors": rows.size, "train_converters": value_rows.size}
    return setup.result(HurdleBCFResult, {"conversion": conversion, "value": value}, trained)


def _conversion_only(setup, converted, rows, label) -> tuple[np.ndarray | da.Array, dict]:
    """The conversion model of a hurdle fit, alone: eager on every visitor or lazy."""
    if rows is None:
        mu, tau, _ = setup.sample(label, converted.astype(np.float64), stage=1, probit=True)
        return _per_arm(mu, tau, ndtr), {"train_visitors": converted.size}
    y = converted[rows].astype(np.float64)
    forests = setup.forests(label, y, rows, stage=1, probit=True)
    return setup.lazy_posterior(forests, ndtr), {"train_visitors": rows.size}


# --------------------------------------------------------------------------- implementation

_OPTION_NAMES = (
    "n_draws",
    "n_chains",
    "n_warmstart",
    "n_burnin",
    "n_trees_mu",
    "n_trees_tau",
    "seed",
    "num_threads",
    "progress",
    "stochtree_options",
    "chunk_bytes",
    "max_train_visitors",
    "correction",
)


def _options(arguments: dict) -> dict:
    options = {name: arguments[name] for name in _OPTION_NAMES}
    if options["chunk_bytes"] is None:
        options["chunk_bytes"] = get_options()["chunk_bytes"]
    for name in ("n_draws", "n_chains", "n_trees_mu", "n_trees_tau", "chunk_bytes"):
        options[name] = check_count(name, options[name], minimum=1)
    for name in ("n_warmstart", "n_burnin", "seed"):
        options[name] = check_count(name, options[name], minimum=0)
    options["num_threads"] = check_count("num_threads", options["num_threads"], minimum=-1)
    if options["max_train_visitors"] is not None:
        # The fewest visitors any fit can train on: two arms of MIN_VISITORS_PER_ARM.
        options["max_train_visitors"] = check_count(
            "max_train_visitors", options["max_train_visitors"], minimum=2 * MIN_VISITORS_PER_ARM
        )
        if options["n_chains"] * options["n_draws"] < 2:
            # stochtree's to_json squeezes a one-draw parameter vector to a scalar and fails.
            raise ValueError(
                "max_train_visitors predicts from serialized forests, which stochtree cannot "
                "write for a single draw: pass n_draws >= 2 (or n_chains >= 2)"
            )
    if options["correction"] not in (METHOD, None):
        raise ValueError(f"correction must be {METHOD!r} or None, got {options['correction']!r}")
    if options["num_threads"] == 0:
        raise ValueError(
            f"num_threads must be -1 (all cores) or >= 1, got {options['num_threads']}"
        )
    extra = options["stochtree_options"] or {}
    if not isinstance(extra, Mapping):
        raise TypeError(
            "stochtree_options must be a mapping {'general_params': {...}, ...}, got "
            f"{type(extra).__name__}"
        )
    allowed = {"general_params", "prognostic_forest_params", "treatment_effect_forest_params"}
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise ValueError(f"stochtree_options takes the keys {sorted(allowed)}; got {unknown}")
    for key, params in extra.items():
        if not isinstance(params, Mapping):
            raise TypeError(
                f"stochtree_options[{key!r}] must be a mapping of stochtree parameters, got "
                f"{type(params).__name__}"
            )
    owned = sorted(set(extra.get("general_params", {})) & set(OWNED_GENERAL_PARAMS))
    if owned:
        hints = "; ".join(f"{key}: {OWNED_GENERAL_PARAMS[key]}" for key in owned)
        raise ValueError(
            f"stochtree_options['general_params'] may not set {owned}: pytyche sets them to "
            f"shape the posterior ({hints})"
        )
    return options


class _Setup:
    """Everything a fit derives from the observed data once: arms, design matrix, propensity."""

    def __init__(self, observed: xr.Dataset, propensity, options: dict):
        self.observed = observed
        self.options = options
        attrs_arms = (
            observed.attrs.get("pytyche_arms") if isinstance(observed, xr.Dataset) else None
        )
        arms = check_observed(observed, None if attrs_arms is None else list(attrs_arms))
        self.arms = [str(a) for a in arms]
        if len(self.arms) < 2:
            raise ValueError(f"the observed data has a single arm {self.arms}; need at least 2")
        self.codes = arm_codes(observed, self.arms)
        counts = np.bincount(self.codes, minlength=len(self.arms))
        for arm, count in zip(self.arms, counts, strict=True):
            if count < MIN_VISITORS_PER_ARM:
                raise ValueError(
                    f"arm {arm!r} has {count} visitor(s) in the observed data; a fit needs at "
                    f"least {MIN_VISITORS_PER_ARM} in every arm (the forests cannot grow or "
                    "prune a tree on fewer)"
                )
        self.counts = counts
        self.outcome = observed_outcome(observed)
        self.covariates, self.X = design_matrix(observed)
        self.propensity = propensity_table(propensity, self.arms, self.codes)
        self.propensity_given = propensity is not None
        n_treat = len(self.arms) - 1
        self.Z = np.zeros((self.codes.size, n_treat))
        treated = self.codes > 0
        self.Z[np.flatnonzero(treated), self.codes[treated] - 1] = 1.0

    def by_arm(self, values: np.ndarray):
        for k, arm in enumerate(self.arms):
            yield arm, values[self.codes == k]

    def training_rows(self, strata: np.ndarray, *, floor: int, name: str) -> np.ndarray | None:
        """The visitor rows the forests train on; None: every visitor, predicted eagerly."""
        size = self.options["max_train_visitors"]
        if size is None:
            return None
        seed = self.options["seed"]
        return stratified_sample(strata, size, seed=seed, floor=floor, strata_name=name)

    def _model(self, label, y, *, stage, probit, rows=None, test=None):
        """A sampled stochtree BCFModel, trained on ``rows`` (a mask or indices; None: all)."""
        from stochtree import BCFModel, OutcomeModel

        o = self.options
        n_chains = o["n_chains"]
        general = {
            "random_seed": _stage_seed(o["seed"], stage),
            "num_threads": o["num_threads"],
            "num_chains": n_chains,
            # A constant propensity cannot split a tree: keep it out of the forests.
            "propensity_covariate": "none" if self.propensity_is_constant else "prognostic",
            "adaptive_coding": False,
        }
        if probit:
            general["outcome_model"] = OutcomeModel(outcome="binary", link="probit")
            general["sample_sigma2_global"] = False  # fixed at 1 under a probit link
        extra = o["stochtree_options"] or {}
        general |= dict(extra.get("general_params", {}))
        mu_params = {"num_trees": o["n_trees_mu"]} | dict(extra.get("prognostic_forest_params", {}))
        tau_params = {"num_trees": o["n_trees_tau"]} | dict(
            extra.get("treatment_effect_forest_params", {})
        )
        X, Z, p = self.X, self.Z, self.propensity[:, 1:]
        if rows is not None:
            X, Z, p = X[rows], Z[rows], p[rows]
        model = BCFModel()
        n_rows = y.size
        sampled = "" if rows is None else f" (of {self.codes.size:,})"
        description = (
            f"{label}: {n_rows:,} visitors{sampled}, {len(self.arms)} arms, {n_chains} chain(s) × "
            f"({max(o['n_warmstart'], n_chains)} warm-start + {o['n_burnin']} burn-in + "
            f"{o['n_draws']} kept) iterations"
        )
        with _Progress(description, enabled=o["progress"]):
            model.sample(
                X,
                Z,
                y,
                propensity_train=p,
                num_gfr=max(o["n_warmstart"], n_chains) if o["n_warmstart"] else 0,
                num_burnin=o["n_burnin"],
                num_mcmc=o["n_draws"],
                general_params=general,
                prognostic_forest_params=mu_params,
                treatment_effect_forest_params=tau_params,
                **(test or {}),
            )
        return model

    def sample(self, label: str, y: np.ndarray, *, stage: int, probit: bool = False, subset=None):
        """Run one multivariate BCF.

        Returns μ (visitor, sample), τ (visitor, sample, K-1) and σ² (sample,) for every
        visitor (the fit may use a subset of them).
        """
        test = None
        if subset is not None:
            test = {"X_test": self.X, "Z_test": self.Z, "propensity_test": self.propensity[:, 1:]}
        model = self._model(label, y, stage=stage, probit=probit, rows=subset, test=test)
        if subset is None:
            mu, tau = model.mu_hat_train, model.tau_hat_train
        else:
            mu, tau = model.mu_hat_test, model.tau_hat_test
        n = self.codes.size
        mu = np.asarray(mu, dtype=np.float64).reshape(n, -1)
        tau = np.asarray(tau, dtype=np.float64).reshape(n, mu.shape[1], len(self.arms) - 1)
        return mu, tau, _variance_draws(model, probit, mu.shape[1])

    def forests(
        self, label: str, y: np.ndarray, rows: np.ndarray, *, stage: int, probit: bool = False
    ) -> Forests:
        """Train one multivariate BCF on ``rows`` and keep its serialized forests."""
        model = self._model(label, y, stage=stage, probit=probit, rows=rows)
        n_samples = self.options["n_chains"] * self.options["n_draws"]
        sigma2 = _variance_draws(model, probit, n_samples)
        text = model.to_json()
        del model
        release_freed_memory()
        token = hashlib.sha256(text.encode()).hexdigest()
        return Forests(text, token, sigma2)

    def lazy_posterior(self, forests: Forests, link, *, half_variance: bool = False) -> da.Array:
        """(visitor, [chain,] draw, arm) float32 dask array: link(μ + τ_k [+ σ²/2]) per draw.

        One task per visitor chunk predicts that chunk from the serialized forests (shared by
        every task as one graph key), so the posterior is never whole in memory.
        """
        _, shape = self.layout()
        n, k = shape[0], shape[-1]
        n_samples = self.options["n_chains"] * self.options["n_draws"]
        chunk = visitor_chunk(shape, np.dtype(np.float32).itemsize, self.options["chunk_bytes"])
        # Rows per stochtree predict call: float64 temporaries of about numpy_block_bytes.
        block = max(1, get_options()["numpy_block_bytes"] // (8 * n_samples * k))
        shift = None
        if half_variance:
            shift = (forests.sigma2 / 2.0).reshape((1, n_samples, 1))
        model = dask.delayed(forests.json, name=f"pytyche-forests-{forests.token}")
        p = self.propensity[:, 1:]
        meta = np.empty((0,) * len(shape), dtype=np.float32)
        pieces = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            task = dask.delayed(predict_chunk, pure=True)(
                model, forests.token, self.X[lo:hi], p[lo:hi], link, shift, block, shape[1:]
            )
            pieces.append(da.from_delayed(task, (hi - lo, *shape[1:]), dtype=np.float32, meta=meta))
        return da.concatenate(pieces, axis=0)

    def constant_posterior(self, value: float) -> da.Array:
        """(visitor, [chain,] draw, arm) float32 dask array holding ``value`` everywhere."""
        _, shape = self.layout()
        chunk = visitor_chunk(shape, np.dtype(np.float32).itemsize, self.options["chunk_bytes"])
        return da.full(shape, value, dtype=np.float32, chunks=(chunk, *shape[1:]))

    @property
    def propensity_is_constant(self) -> bool:
        return bool((self.propensity == self.propensity[:1]).all())

    def layout(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The dims and shape of each posterior variable."""
        o = self.options
        n_chains, n_draws = o["n_chains"], o["n_draws"]
        n, k = self.codes.size, len(self.arms)
        if n_chains > 1:
            return (VISITOR, CHAIN, DRAW, ARM), (n, n_chains, n_draws, k)
        return (VISITOR, DRAW, ARM), (n, n_draws, k)

    def result(self, cls, variables: dict, trained: dict[str, float]):
        o = self.options
        dims, shape = self.layout()
        chunk = visitor_chunk(shape, np.dtype(np.float32).itemsize, o["chunk_bytes"])
        data_vars = {}
        for name, values in variables.items():
            if not isinstance(values, da.Array):
                # stochtree stores chains one after another along its sample axis.
                values = da.from_array(values.reshape(shape), chunks=(chunk, *shape[1:]))
            data_vars[name] = (dims, values)
        fit_info = {
            "backend": "stochtree",
            "backend_version": _stochtree_version(),
            "model": "multivariate-treatment BCF",
            "propensity": "given" if self.propensity_given else "observed arm shares",
            "covariates": self.covariates,
            **{name: o[name] for name in _OPTION_NAMES if name not in ("progress",)},
            **trained,
            "prediction": "eager" if o["max_train_visitors"] is None else "lazy",
        }
        fit_info["stochtree_options"] = repr(fit_info["stochtree_options"])
        ds = posterior_dataset(
            cls.family, self.arms, data_vars, attrs={"pytyche_fit": json.dumps(fit_info)}
        )
        result = cls(attach_observed(ds, self.observed))
        if o["correction"] is None:
            return result
        propensity = self.propensity if self.propensity_given else None
        return doubly_robust(result, propensity=propensity, seed=_stage_seed(o["seed"], 3))


@dataclass(frozen=True)
class Forests:
    """A trained BCF, serialized: what every prediction task needs.

    Attributes
    ----------
    json : str
        stochtree's ``BCFModel.to_json()``.
    token : str
        SHA-256 of ``json``: the key under which a process keeps the loaded model.
    sigma2 : numpy.ndarray
        (sample,) float64 residual variance per draw (1 for a probit model).
    """

    json: str
    token: str
    sigma2: np.ndarray


def _variance_draws(model, probit: bool, n_samples: int) -> np.ndarray:
    """(sample,) σ² per draw of a sampled model: 1 under a probit link."""
    if probit:
        return np.ones(n_samples)
    sigma2 = np.asarray(model.global_var_samples, dtype=np.float64).reshape(-1)
    if sigma2.size != n_samples:
        raise RuntimeError(f"stochtree returned {n_samples} draws but {sigma2.size} variance draws")
    return sigma2


def stratified_sample(
    strata: np.ndarray, size: int, *, seed: int, floor: int, strata_name: str = "strata"
) -> np.ndarray:
    """Sorted rows of a sample of ``size`` rows, stratified by ``strata``, from ``seed``.

    Each stratum gets its share of ``size`` in proportion to its rows (largest remainders),
    raised to ``min(its rows, floor)`` where that share is smaller; the rows are drawn
    without replacement within each stratum.

    Parameters
    ----------
    strata : numpy.ndarray
        (row,) integer stratum label of each row.
    size : int
        Rows wanted; with ``size >= len(strata)`` every row is returned.
    seed : int
        Random seed: the same seed and strata give the same rows.
    floor : int
        Rows every stratum keeps at least (all of its rows, if it has fewer).
    strata_name : str, default "strata"
        What the strata are, for the error message.

    Returns
    -------
    numpy.ndarray
        int64 row indices, sorted.

    Raises
    ------
    ValueError
        When the floors alone need more than ``size`` rows.
    """
    n = strata.size
    if size >= n:
        return np.arange(n)
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    floors = np.minimum(counts, floor)
    if floors.sum() > size:
        raise ValueError(
            f"max_train_visitors={size} is too small for this data: the training sample keeps "
            f"at least {floor} visitors (all, if fewer) of each of its {counts.size} strata "
            f"({strata_name}), {int(floors.sum())} in all; pass max_train_visitors >= "
            f"{int(floors.sum())}"
        )
    take = _allocate(counts, floors, size)
    rng = np.random.default_rng([seed, SAMPLE_STREAM])
    rows = [
        rng.choice(np.flatnonzero(inverse == j), size=int(t), replace=False)
        for j, t in enumerate(take)
    ]
    return np.sort(np.concatenate(rows))


def _allocate(counts: np.ndarray, floors: np.ndarray, size: int) -> np.ndarray:
    """Rows per stratum: proportional to ``counts``, at least ``floors``, ``size`` in all."""
    fixed = np.zeros(counts.size, dtype=bool)
    while True:
        # Strata whose proportional share is below their floor get the floor; share the rest.
        rest = size - int(floors[fixed].sum())
        quota = np.where(fixed, 0.0, rest * counts / counts[~fixed].sum())
        below = ~fixed & (quota < floors)
        if not below.any():
            break
        fixed |= below
    take = np.where(fixed, floors, np.minimum(np.floor(quota), counts)).astype(np.int64)
    short = size - int(take.sum())
    order = np.argsort(-np.where(fixed, -1.0, quota - np.floor(quota)), kind="stable")
    for j in order:  # one more row each, largest remainders first
        if short and take[j] < counts[j]:
            take[j] += 1
            short -= 1
    for j in order:  # only where a share was cut to its stratum's rows
        extra = min(int(counts[j] - take[j]), short)
        take[j] += extra
        short -= extra
    return take


def predict_chunk(
    model_json: str,
    token: str,
    X: np.ndarray,
    propensity: np.ndarray,
    link,
    shift: np.ndarray | None,
    block: int,
    sample_shape: tuple[int, ...],
) -> np.ndarray:
    """One visitor chunk of a lazily predicted posterior variable (a dask task).

    Parameters
    ----------
    model_json : str
        The serialized forests (``BCFModel.to_json()``).
    token : str
        The forests' key in this process's cache of loaded models.
    X : numpy.ndarray
        (visitor, column) the chunk's rows of the design matrix.
    propensity : numpy.ndarray
        (visitor, arm - 1) the chunk's treatment propensities.
    link : callable or None
        Applied to μ + τ_k (+ ``shift``): ``ndtr``, ``np.exp`` or None (identity).
    shift : numpy.ndarray or None
        (1, sample, 1) added to the linear predictor before ``link``.
    block : int
        Visitors per stochtree predict call.
    sample_shape : tuple of int
        ``([chain,] draw, arm)``.

    Returns
    -------
    numpy.ndarray
        (visitor, [chain,] draw, arm) float32.
    """
    model = _loaded_model(token, model_json)
    n, n_treat = X.shape[0], propensity.shape[1]
    n_samples = int(np.prod(sample_shape[:-1]))
    out = np.empty((n, n_samples, n_treat + 1), dtype=np.float32)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        # μ and τ do not depend on the treatment indicators: any Z of the right width will do.
        predicted = model.predict(
            X[lo:hi],
            np.zeros((hi - lo, n_treat)),
            propensity=propensity[lo:hi],
            terms=["mu", "tau"],
        )
        mu = np.asarray(predicted["mu_hat"], dtype=np.float64).reshape(hi - lo, n_samples)
        tau = np.asarray(predicted["tau_hat"], dtype=np.float64).reshape(
            hi - lo, n_samples, n_treat
        )
        out[lo:hi] = _per_arm(mu, tau, link, shift)
    return out.reshape(n, *sample_shape)


# Loaded models by token, most recently used last: deserializing is slow, so each process
# keeps the last few it used (a hurdle fit predicts from two).
_MODELS: OrderedDict[str, object] = OrderedDict()
_MODELS_LOCK = threading.Lock()
MODELS_KEPT = 4


def release_freed_memory() -> None:
    """Hand memory that C and C++ code freed back to the operating system, where glibc can.

    Training and ``from_json`` free many small allocations (the parsed JSON of every tree:
    about 0.25 GB for 100 draws of the default forests, measured), which glibc keeps for
    reuse; the prediction's large arrays cannot reuse them, so without this they add to the
    process's peak memory. A no-op where ``malloc_trim`` is not available.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        pass


def _loaded_model(token: str, model_json: str):
    from stochtree import BCFModel

    with _MODELS_LOCK:
        model = _MODELS.get(token)
        if model is None:
            model = BCFModel()
            model.from_json(model_json)
            release_freed_memory()
            _MODELS[token] = model
            while len(_MODELS) > MODELS_KEPT:
                _MODELS.popitem(last=False)
        else:
            _MODELS.move_to_end(token)
        return model


def _per_arm(mu, tau, link, shift=None) -> np.ndarray:
    """(visitor, sample, arm) float32 of link(μ + τ_k [+ shift]), control's τ being 0.

    Built in visitor blocks so that the float64 temporaries stay small.
    """
    n, s = mu.shape
    k = tau.shape[2] + 1
    out = np.empty((n, s, k), dtype=np.float32)
    block = max(1, get_options()["numpy_block_bytes"] // (8 * s * k))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        linear = np.empty((hi - lo, s, k))
        linear[..., 0] = mu[lo:hi]
        linear[..., 1:] = mu[lo:hi, :, None] + tau[lo:hi]
        if shift is not None:
            linear += shift
        out[lo:hi] = linear if link is None else link(linear)
    return out


def design_matrix(observed: xr.Dataset) -> tuple[list[str], np.ndarray]:
    """The float64 covariate matrix the forests split on, and the covariates it came from.

    Numbers pass through, with a missing value set below the column's minimum plus a
    missing-indicator column (so one split separates the missing); booleans become 0/1; text
    becomes one indicator column per value (missing text is its own value).

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data.

    Returns
    -------
    covariates : list of str
        The covariates used, in column order of first appearance.
    X : numpy.ndarray
        (visitor, column) float64.

    Raises
    ------
    ValueError
        For a covariate of an unsupported dtype or a text covariate with too many values.
    """
    variables = observed_variables(observed)
    n = observed.sizes[VISITOR]
    names = [name for name in variables if name not in (VARIANT, OUTCOME)]
    columns: list[np.ndarray] = []
    for name in names:
        values = np.asarray(variables[name].values)
        kind = values.dtype.kind
        if kind == "b":
            columns.append(values.astype(np.float64))
        elif kind in "iuf":
            values = values.astype(np.float64)
            missing = np.isnan(values)
            if missing.any():
                present = values[~missing]
                lo, hi = (present.min(), present.max()) if present.size else (0.0, 0.0)
                filled = np.where(missing, lo - max(1.0, 0.1 * (hi - lo)), values)
                columns += [filled, missing.astype(np.float64)]
            else:
                columns.append(values)
        elif kind in "USOT":
            if kind == "O":
                present = values[~pd.isna(values)]
                odd = [v for v in present[:1000] if not isinstance(v, str)]
                if odd:
                    raise ValueError(
                        f"covariate {name!r} is an object array holding "
                        f"{type(odd[0]).__name__} values; expected text, numbers or booleans"
                    )
            missing = np.asarray(pd.isna(values), dtype=bool)
            text = np.where(missing, "", values.astype(object)).astype(str)
            levels = np.unique(text[~missing])
            if levels.size > MAX_TEXT_LEVELS:
                raise ValueError(
                    f"text covariate {name!r} has {levels.size} distinct values (more than "
                    f"{MAX_TEXT_LEVELS}); bucket it or drop it from the covariates"
                )
            columns += [(text == level) & ~missing for level in levels]
            if missing.any():
                columns.append(missing)
        else:
            raise ValueError(
                f"covariate {name!r} has dtype {values.dtype}; covariates must be numbers, "
                "booleans or text"
            )
    if not columns:
        # No covariates: the forests can only learn the average effect of each arm.
        return names, np.zeros((n, 1))
    return names, np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])


def _stage_seed(seed: int, stage: int) -> int:
    """An independent, reproducible stochtree seed for each model of a fit."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0] & 0x7FFFFFFF)


def _stochtree_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stochtree")
    except PackageNotFoundError:  # pragma: no cover - stochtree is a dependency
        return "unknown"


class _Progress:
    """Progress lines on stderr while a model fits, once it has run ``PROGRESS_AFTER_S``.

    stochtree offers no per-iteration callback, so the lines report elapsed time from a
    background thread; a fit that ends quickly prints nothing.
    """

    def __init__(self, description: str, enabled: bool):
        self.description = description
        self.enabled = enabled
        self._done = threading.Event()
        self._printed = False
        self._thread: threading.Thread | None = None

    def __enter__(self):
        self._started = time.perf_counter()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        wait = PROGRESS_AFTER_S
        while not self._done.wait(wait):
            elapsed = time.perf_counter() - self._started
            prefix = "" if self._printed else f"pytyche: fitting {self.description}\n"
            sys.stderr.write(f"{prefix}pytyche:   ... {elapsed:,.0f} s elapsed\n")
            sys.stderr.flush()
            self._printed = True
            wait = PROGRESS_EVERY_S

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._printed:
            elapsed = time.perf_counter() - self._started
            status = "failed" if exc[0] is not None else "done"
            sys.stderr.write(f"pytyche:   {status} in {elapsed:,.1f} s\n")
            sys.stderr.flush()
        return False
