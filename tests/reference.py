"""A deliberately naive reference of the allocation: Python loops, float64, no pytyche kernels.

Membership re-implements the rule semantics row by row from the clauses' fields, so a bug in
pytyche's vectorised rule evaluation cannot hide here.
"""

from __future__ import annotations

import math
import operator

import numpy as np

COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda x, values: x in values,
    "not in": lambda x, values: x not in values,
}


def is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def reference_members(rule, observed) -> list[int]:
    columns = {name: observed[name].values.tolist() for name in rule.covariates}
    n_visitors = observed.sizes["visitor"]
    members = []
    for visitor in range(n_visitors):
        matched = True
        for clause in rule.clauses:
            x = columns[clause.covariate][visitor]
            if is_missing(x) or not COMPARE[clause.op](x, clause.value):
                matched = False
                break
        if matched:
            members.append(visitor)
    return members


def reference_metric(dataset) -> np.ndarray:
    """(visitor, chain, draw, arm) float64 metric; a chain of length 1 when there is none."""
    order = [d for d in ("visitor", "chain", "draw", "arm") if d in dataset.dims]
    family = dataset.attrs["pytyche_family"]
    if family == "hurdle":
        arrays = [dataset[v].transpose(*order).values for v in ("conversion", "value")]
        metric = arrays[0].astype(np.float64) * arrays[1].astype(np.float64)
    else:
        name = "conversion" if family == "binary" else "expected"
        metric = dataset[name].transpose(*order).values.astype(np.float64)
    if "chain" not in order:
        metric = metric[:, np.newaxis]
    return metric


def reference_floor(frequencies: list[float], epsilon: float) -> list[float]:
    """Find the floored arms by growing the set; every other arm keeps its share, rescaled."""
    n_arms = len(frequencies)
    floor = epsilon / n_arms
    floored: set[int] = set()
    while True:
        free = [k for k in range(n_arms) if k not in floored]
        free_mass = 1.0 - floor * len(floored)
        free_total = sum(frequencies[k] for k in free)
        scaled = {k: frequencies[k] * free_mass / free_total for k in free} if free else {}
        newly = {k for k in free if scaled[k] < floor}
        if not newly:
            break
        floored |= newly
    return [floor if k in floored else scaled[k] for k in range(n_arms)]


def reference_allocation(dataset, segments, epsilon: float) -> dict[int, dict[str, float]]:
    metric = reference_metric(dataset)
    arms = [str(a) for a in dataset["arm"].values]
    observed = dataset.coords.to_dataset()
    _n_visitors, n_chains, n_draws, n_arms = metric.shape
    allocation = {}
    for segment in segments:
        members = reference_members(segment.rule, observed)
        wins = [0] * n_arms
        for chain in range(n_chains):
            for draw in range(n_draws):
                best_arm, best_contrast = 0, 0.0
                for arm in range(1, n_arms):
                    contrast = sum(
                        metric[v, chain, draw, arm] - metric[v, chain, draw, 0] for v in members
                    ) / len(members)
                    if contrast > best_contrast:
                        best_arm, best_contrast = arm, contrast
                wins[best_arm] += 1
        frequencies = [w / (n_chains * n_draws) for w in wins]
        if epsilon > 0:
            frequencies = reference_floor(frequencies, epsilon)
        allocation[segment.id] = dict(zip(arms, frequencies, strict=True))
    return allocation


# --------------------------------------------------------------------------- doubly robust

MASK64 = 2**64 - 1


def reference_mix(z: int) -> int:
    """splitmix64's finalizer on Python integers."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_weight(key: int, visitor: int, sample: int) -> float:
    """The Exp(1) bootstrap weight of (key, visitor row, sample), from the hash."""
    golden = 0x9E3779B97F4A7C15
    h = reference_mix((reference_mix((key + visitor * golden) & MASK64) + sample * golden) & MASK64)
    return -math.log(((h >> 11) + 0.5) * 2.0**-53)


def reference_doubly_robust(factors, served, outcome, propensity, key):
    """The corrected factors, one visitor, sample and arm at a time (float64).

    ``factors``: (metric,) or (conversion, value), each (visitor, sample, arm).
    """
    out = [np.array(f, dtype=np.float64, copy=True) for f in factors]
    n_visitors, n_samples, _ = factors[0].shape
    for v in range(n_visitors):
        k, y = int(served[v]), float(outcome[v])
        for s in range(n_samples):
            w = reference_weight(key, v, s) / propensity[v]
            m = float(factors[0][v, s, k])
            if len(factors) == 1:
                out[0][v, s, k] = m + w * (y - m)
                continue
            value = float(factors[1][v, s, k])
            converted = 1.0 if y > 0 else 0.0
            conversion = m + w * (converted - m)
            psi = m * value + w * (y - m * value)
            out[0][v, s, k] = conversion
            if converted:
                out[1][v, s, k] = psi / conversion
    return out
