"""Off-policy evaluation: what another plan would have earned on the visitors already logged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import norm

from ..results import OUTCOME_MODEL, BCFResult
from ..segments import membership
from .plan import NO_SEGMENT, RoundPlan

__all__ = ["ESTIMATORS", "evaluate_policy", "policy_probabilities"]

ESTIMATORS = ("ipw", "snips", "dr")
# Visitor coordinates of logged data that are not covariates.
NOT_COVARIATES = ("variant", "outcome", "propensity", "cell", "round", "segment")


def _covariate_frame(logged: xr.Dataset) -> pd.DataFrame:
    return pd.DataFrame(
        {
            str(n): np.asarray(v.values)
            for n, v in logged.variables.items()
            if v.dims == ("visitor",) and n != "visitor" and n not in NOT_COVARIATES
        },
        index=pd.RangeIndex(logged.sizes["visitor"]),
    )


def policy_probabilities(policy, logged: xr.Dataset, arms: Sequence[str]) -> np.ndarray:
    """The probability that `policy` serves each logged visitor each arm.

    Parameters
    ----------
    policy : RoundPlan, str, mapping of arm to weight, or (allocation, segments)
        A plan (its effective probabilities over all cells, visitors routed by its segment
        rules); a fixed arm; one split for everyone ``{arm: weight}``; or a pair of a
        ``{segment id: {arm: weight}}`` allocation and its segments (anything
        :func:`pytyche.membership` accepts): a visitor gets the weights of the first segment
        whose rule matches, else those of id -1 (required when some visitor matches none).
    logged : xarray.Dataset
        Logged visitors with their covariates along ``visitor``.
    arms : sequence of str
        Arm order of the columns, control first.

    Returns
    -------
    numpy.ndarray
        (visitor, arm) rows summing to 1.

    Raises
    ------
    ValueError
        For an unknown arm, weights that do not sum to 1, visitors in no segment without
        weights for id -1, or a policy of another kind.
    """
    arms = list(arms)
    n = logged.sizes["visitor"]

    def row(weights: Mapping[str, float], what: str) -> np.ndarray:
        unknown = sorted(set(map(str, weights)) - set(arms))
        if unknown:
            raise ValueError(f"{what} names unknown arm(s) {unknown}; arms are {arms}")
        values = np.array([float(weights.get(a, 0.0)) for a in arms])
        if (values < 0).any() or not np.isclose(values.sum(), 1.0, atol=1e-9):
            raise ValueError(f"{what} must be non-negative weights summing to 1, got {weights}")
        return values

    if isinstance(policy, RoundPlan):
        full = policy.effective_probability.reindex(arm=arms, fill_value=0.0)
        segment = policy.segment_of(_covariate_frame(logged))
        return full.sel(segment=segment).values
    if isinstance(policy, str):
        return np.broadcast_to(row({policy: 1.0}, f"the fixed arm {policy!r}"), (n, len(arms)))
    if isinstance(policy, Mapping):
        return np.broadcast_to(row(policy, "the policy"), (n, len(arms))).copy()
    if isinstance(policy, tuple) and len(policy) == 2:
        allocation, segments = policy
        member = membership(segments, logged)
        ids = member["segment"].values
        hit = member.values
        matched = hit.any(axis=0)
        first = ids[np.argmax(hit, axis=0)]
        rows = {int(s): row(allocation[int(s)], f"the allocation of segment {s}") for s in ids}
        out = np.empty((n, len(arms)))
        if not matched.all():
            if NO_SEGMENT not in allocation:
                raise ValueError(
                    f"{int((~matched).sum())} logged visitor(s) match no segment; give the "
                    "allocation weights for segment -1 (visitors in no segment)"
                )
            out[~matched] = row(allocation[NO_SEGMENT], "the allocation of segment -1")
        for s in ids:
            out[matched & (first == s)] = rows[int(s)]
        return out
    raise ValueError(
        "policy must be a RoundPlan, an arm name, {arm: weight}, or (allocation, segments); "
        f"got {type(policy).__name__}"
    )


def _outcome_model(posterior, logged: xr.Dataset, arms: Sequence[str]) -> np.ndarray:
    """Posterior-mean metric (visitor, arm) of the logged visitors."""
    if isinstance(posterior, xr.DataArray):
        mean = posterior
    elif isinstance(posterior, BCFResult) and OUTCOME_MODEL in posterior.dataset.coords:
        # A doubly robust posterior's served arm holds the visitor's own outcome: use the
        # forests' prediction before the correction, or the estimator would see Y twice.
        mean = posterior.dataset[OUTCOME_MODEL].compute()
    elif isinstance(posterior, BCFResult):
        metric = posterior.metric()
        mean = metric.mean([d for d in metric.dims if d not in ("visitor", "arm")]).compute()
    else:
        raise TypeError(
            "posterior must be a BCF result (pytyche.fit output) or a (visitor, arm) DataArray "
            f"of expected outcomes, got {type(posterior).__name__}"
        )
    if set(mean.dims) != {"visitor", "arm"}:
        raise ValueError(f"the outcome model must have dims (visitor, arm), got {mean.dims}")
    missing = [a for a in arms if a not in set(map(str, mean["arm"].values))]
    if missing:
        raise ValueError(f"the outcome model has no arm(s) {missing}")
    mean = mean.sel(arm=list(arms)).transpose("visitor", "arm")
    if "visitor" in logged.indexes and "visitor" in mean.indexes:
        want = logged.indexes["visitor"].astype(str)
        have = pd.Index(mean.indexes["visitor"].astype(str))
        position = have.get_indexer(want)
        if (position < 0).any():
            raise ValueError(
                f"the outcome model lacks {int((position < 0).sum())} logged visitor(s), e.g. "
                f"{want[np.flatnonzero(position < 0)[0]]!r}"
            )
        return np.asarray(mean.values, dtype=np.float64)[position]
    if mean.sizes["visitor"] != logged.sizes["visitor"]:
        raise ValueError(
            f"the outcome model has {mean.sizes['visitor']} visitors, the log "
            f"{logged.sizes['visitor']}; without visitor ids on both they must match row by row"
        )
    return np.asarray(mean.values, dtype=np.float64)


def evaluate_policy(
    logged: xr.Dataset,
    policy,
    *,
    estimator: str = "dr",
    posterior=None,
    ci: float = 0.9,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> xr.Dataset:
    """Estimate the expected metric per visitor that `policy` would have earned on logged data.

    With ``w_i = π(a_i | x_i) / p_i`` the importance weight of visitor ``i`` (``a_i`` the arm
    served, ``p_i`` its logged propensity, ``π`` the policy's probability), and ``m(x, k)``
    the posterior-mean metric:

    - ``"ipw"``: mean of ``w_i y_i`` (unbiased; high variance when weights are large);
    - ``"snips"``: ``Σ w_i y_i / Σ w_i`` (self-normalised; small bias, less variance);
    - ``"dr"``: mean of ``Σ_k π(k | x_i) m(x_i, k) + w_i (y_i - m(x_i, a_i))`` (doubly
      robust: unbiased when the propensities are right, whatever the outcome model).

    The interval is the percentile interval of `n_bootstrap` resamples of the visitors
    (``n_bootstrap=0``: a normal interval from the estimator's influence function).

    Parameters
    ----------
    logged : xarray.Dataset
        Logged visitors: coordinates ``variant`` (arm served), ``outcome``, ``propensity``
        and the covariates the policy's segments use (e.g.
        :meth:`SequentialExperiment.recorded`).
    policy : RoundPlan, str, mapping or (allocation, segments)
        See :func:`policy_probabilities`.
    estimator : {"dr", "ipw", "snips"}, default "dr"
    posterior : BCFResult or xarray.DataArray, optional
        Outcome model for ``"dr"`` (required there): a posterior whose visitors are the
        logged ones (matched by visitor id when both have ids, else row by row), or a
        (visitor, arm) DataArray of expected outcomes.
    ci : float, default 0.9
        Mass of the interval, in (0, 1).
    n_bootstrap : int, default 200
        Bootstrap resamples; 0 for the normal interval.
    seed : int, default 0
        Seed of the bootstrap.

    Returns
    -------
    xarray.Dataset
        Scalars ``estimate``, ``lower``, ``upper``, ``standard_error``,
        ``effective_sample_size`` (``(Σw)² / Σw²``) and ``max_weight``; attrs ``estimator``,
        ``ci``, ``n_bootstrap``, ``n_visitors``.

    Raises
    ------
    ValueError
        For an unknown estimator, a missing ``propensity``, ``variant`` or ``outcome``,
        propensities missing or outside (0, 1], a served arm the policy does not know,
        ``"dr"`` without `posterior`, or `ci` / `n_bootstrap` out of range.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> logged = xr.Dataset(coords={
    ...     "variant": ("visitor", np.array(["control", "A"] * 50, dtype=object)),
    ...     "outcome": ("visitor", np.tile([1.0, 3.0], 50)),
    ...     "propensity": ("visitor", np.full(100, 0.5))})
    >>> float(evaluate_policy(logged, "A", estimator="ipw", n_bootstrap=0)["estimate"])
    3.0
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if isinstance(ci, bool) or not isinstance(ci, Real) or not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, Integral) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if estimator == "dr" and posterior is None:
        raise ValueError(
            "estimator='dr' needs posterior= (the outcome model); pass one, or use 'ipw' or 'snips'"
        )
    for name in ("variant", "outcome", "propensity"):
        if name not in logged.variables or logged.variables[name].dims != ("visitor",):
            raise ValueError(
                f"logged needs a {name!r} coordinate along 'visitor'; found "
                f"{sorted(map(str, logged.variables))}"
            )
    p = np.asarray(logged["propensity"].values, dtype=np.float64)
    bad = ~np.isfinite(p) | (p <= 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"propensities must lie in (0, 1] and not be missing: {int(bad.sum())} are not "
            f"(first at visitor row {i}: {p[i]!r}); importance weights need the probability "
            "with which each served arm was chosen"
        )
    served = np.asarray(logged["variant"].values).astype(str)
    y = np.asarray(logged["outcome"].values, dtype=np.float64)
    if isinstance(policy, RoundPlan):
        arms = list(policy.arms)
    elif posterior is not None and isinstance(posterior, xr.DataArray):
        arms = [str(a) for a in posterior["arm"].values]
    elif posterior is not None:
        arms = list(posterior.variants)
    else:
        arms = list(logged.attrs.get("pytyche_arms") or pd.unique(served))
    unknown = sorted(set(served) - set(arms))
    if unknown:
        raise ValueError(f"logged arms {unknown} are not among the policy's arms {arms}")
    code = np.array([arms.index(a) for a in served], dtype=np.int64)
    pi = policy_probabilities(policy, logged, arms)
    n = y.size
    rows = np.arange(n)
    w = pi[rows, code] / p
    if estimator == "dr":
        m = _outcome_model(posterior, logged, arms)
        score = (pi * m).sum(axis=1) + w * (y - m[rows, code])
    else:
        score = w * y

    def estimate(counts: np.ndarray | None) -> float:
        c = np.ones(n) if counts is None else counts
        if estimator == "snips":
            return float((c * w * y).sum() / (c * w).sum())
        return float((c * score).sum() / c.sum())

    value = estimate(None)
    alpha = (1.0 - float(ci)) / 2.0
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.array(
            [estimate(np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(n_bootstrap)]
        )
        lower, upper = np.quantile(draws, [alpha, 1.0 - alpha])
        se = float(draws.std(ddof=1)) if n_bootstrap > 1 else np.nan
    else:
        influence = w * (y - value) / w.mean() if estimator == "snips" else score
        se = float(influence.std(ddof=1) / np.sqrt(n))
        z = norm.ppf(1.0 - alpha)
        lower, upper = value - z * se, value + z * se
    return xr.Dataset(
        {
            "estimate": value,
            "lower": float(lower),
            "upper": float(upper),
            "standard_error": se,
            "effective_sample_size": float(w.sum() ** 2 / (w**2).sum()) if w.any() else 0.0,
            "max_weight": float(w.max()),
        },
        attrs={
            "estimator": estimator,
            "ci": float(ci),
            "n_bootstrap": int(n_bootstrap),
            "n_visitors": int(n),
        },
    )
