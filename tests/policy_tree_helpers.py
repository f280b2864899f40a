"""Shared helpers of the policy-tree tests: small posteriors, the documented candidate splits,
written naively, and a brute-force search over them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche.policy_tree import PolicyTreeResult
from pytyche.policy_tree.binning import MAX_THRESHOLDS

from reference import is_missing, reference_metric


def posterior_from_mean(mean: np.ndarray, covariates: dict, arms=None) -> pt.ContinuousBCFResult:
    """A continuous posterior of two draws whose per-visitor mean over draws is `mean`."""
    n_visitors, n_arms = mean.shape
    arms = arms or ["control", *(f"T{k}" for k in range(1, n_arms))]
    draws = mean[:, None, :] + np.array([-0.25, 0.25])[None, :, None]
    variant = np.repeat(np.array(arms, dtype=object), -(-n_visitors // n_arms))[:n_visitors]
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), draws)},
        coords={
            "arm": arms,
            "variant": ("visitor", variant),
            **{name: ("visitor", values) for name, values in covariates.items()},
        },
        attrs={"pytyche_family": "continuous", "pytyche_schema": 1},
    )
    return pt.ContinuousBCFResult(ds)


def random_problem(
    seed: int, n_visitors: int = 240, n_arms: int = 3, missing: bool = True, n_values: int = 20
):
    """Small random problems with a numeric, a text and a boolean covariate, some structure."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, n_values, size=n_visitors).astype(float)
    device = rng.choice(np.array(["mobile", "desktop", "tablet", "tv"], dtype=object), n_visitors)
    flag = rng.random(n_visitors) < 0.4
    if missing:
        x[rng.random(n_visitors) < 0.08] = np.nan
        device[rng.random(n_visitors) < 0.08] = None
    mean = rng.normal(1.0, 0.3, size=(n_visitors, n_arms))
    # Some structure, so that deep trees are not all noise.
    mean[:, 1] += np.where(np.nan_to_num(x, nan=0) > n_values / 2, 0.3, -0.2)
    if n_arms > 2:
        mean[:, 2] += np.where(device == "desktop", 0.3, -0.1)
    if n_arms > 3:
        mean[:, 3] += np.where(flag, 0.25, -0.15)
    return posterior_from_mean(mean, {"x": x, "device": device, "flag": flag})


def candidate_thresholds(values) -> list:
    """The documented numeric thresholds, naively: every distinct non-missing value but the
    largest when there are at most 64 of them, else the distinct values among the 64
    quantiles ``sorted[(i * n) // 65]`` below the largest; finite only."""
    ordered = sorted(v for v in values if not is_missing(v))
    distinct = sorted(set(ordered))
    if len(distinct) - 1 <= MAX_THRESHOLDS:
        candidates = distinct[:-1]
    else:
        n = len(ordered)
        positions = [(i * n) // (MAX_THRESHOLDS + 1) for i in range(1, MAX_THRESHOLDS + 1)]
        candidates = sorted({ordered[p] for p in positions if ordered[p] < distinct[-1]})
    return [t for t in candidates if math.isfinite(t)]


def level_order(values: list, contrast: np.ndarray) -> list:
    """The documented order of a many-level categorical's levels, naively: by the best arm of
    the level's mean contrast over all visitors (control first), then by that gain."""
    rows: dict = {}
    for i, v in enumerate(values):
        if not is_missing(v):
            rows.setdefault(v, []).append(i)

    def key(level):
        means = [
            contrast[rows[level], k].sum() / len(rows[level]) for k in range(contrast.shape[1])
        ]
        gain = max(means)
        return (means.index(gain) + 1 if gain > 0 else 0, gain)

    return sorted(sorted(rows), key=key)


def candidate_masks(observed, names, contrast) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every candidate split, as (left, right) masks; missing values are on neither side.

    Numeric: ``x <= t`` at the candidate thresholds. Text or boolean with <= 12 levels: every
    two-way partition. More levels: the levels ranked by `level_order`, then cut like a
    number at the candidate thresholds of the visitors' ranks.
    """
    masks = []
    for name in names:
        values = observed[name].values.tolist()
        present = np.array([not is_missing(v) for v in values])
        if observed[name].dtype.kind == "f":
            column = np.array([np.nan if is_missing(v) else v for v in values], dtype=float)
            for t in candidate_thresholds(values):
                masks.append((present & (column <= t), present & (column > t)))
            continue
        levels = sorted({v for v in values if not is_missing(v)})
        if len(levels) <= 12:
            for size in range(1, len(levels)):
                for left in itertools.combinations(levels, size):
                    if levels[-1] in left:  # each partition once
                        continue
                    in_left = np.array([v in left for v in values]) & present
                    masks.append((in_left, present & ~in_left))
            continue
        rank = {level: i for i, level in enumerate(level_order(values, contrast))}
        ranks = np.array([-1 if is_missing(v) else rank[v] for v in values])
        for t in candidate_thresholds([r for r in ranks.tolist() if r >= 0]):
            masks.append((present & (ranks <= t), present & (ranks > t)))
    return masks


def brute_force(result, names, depth: int, min_size: int, distinct_arms: bool = True) -> float:
    """Best objective over all trees of depth <= `depth` on the candidate splits, by
    exhaustive recursion on masks.

    Visitors with a missing value on a split covariate fall out of the tree and are served
    control. With ``distinct_arms`` (the search's constraint), two sibling leaves may not
    serve the same arm.
    """
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    contrast = metric[:, 1:] - metric[:, :1]
    masks = candidate_masks(result.observed, names, contrast)
    memo = {}

    def leaf(mask):
        sums = contrast[mask].sum(axis=0)
        best = sums.max()
        return (best, int(sums.argmax()) + 1) if best > 0 else (0.0, 0)

    def best(mask, d):
        """(leaf value, leaf arm, best value as a split)."""
        key = (mask.tobytes(), d)
        if key in memo:
            return memo[key]
        leaf_value, arm = leaf(mask)
        split_value = -math.inf
        if d > 0:
            for left_mask, right_mask in masks:
                left, right = mask & left_mask, mask & right_mask
                if left.sum() < min_size or right.sum() < min_size:
                    continue
                lv, la, ls = best(left, d - 1)
                rv, ra, rs = best(right, d - 1)
                options = [lv + rs, ls + rv, ls + rs]
                if not (distinct_arms and la == ra):
                    options.append(lv + rv)
                split_value = max(split_value, *options)
        memo[key] = (leaf_value, arm, split_value)
        return memo[key]

    leaf_value, _, split_value = best(np.ones(contrast.shape[0], bool), depth)
    return (metric[:, 0].sum() + max(leaf_value, split_value)) / contrast.shape[0]


def policy_value(tree: PolicyTreeResult, result) -> float:
    """Per-visitor posterior-mean metric of serving each leaf its best arm (others control)."""
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    labels = tree.assign().values
    arms = list(result.variants)
    served = np.zeros(labels.size, dtype=int)
    for segment in tree.segments:
        served[labels == segment.id] = arms.index(segment.best_arm)
    return float(metric[np.arange(labels.size), served].mean())


def check_rules_match_assign(tree: PolicyTreeResult, observed: xr.Dataset) -> None:
    labels = tree.assign(observed).values
    rows = pt.membership(tree.segments, observed).values
    for segment, row in zip(tree.segments, rows, strict=True):
        np.testing.assert_array_equal(row, labels == segment.id, err_msg=str(segment.rule))
    # Leaves partition the assigned visitors; no rule matches an unassigned one.
    np.testing.assert_array_equal(rows.sum(axis=0), (labels >= 0).astype(int))


def assert_optimal(result, names, depth, share, **kwargs) -> PolicyTreeResult:
    tree = pt.fit_policy_tree(
        result,
        max_depth=depth,
        min_segment_share=share,
        n_bootstrap=0,
        features=names,
        **kwargs,
    )
    expected = brute_force(result, names, depth, tree.min_segment_size)
    assert tree.objective == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert tree.objective == pytest.approx(policy_value(tree, result), rel=1e-9, abs=1e-12)
    counts = np.bincount(tree.assign().values + 1, minlength=len(tree.segments) + 1)[1:]
    assert len(tree.segments) == 1 or (counts >= tree.min_segment_size).all()
    return tree
