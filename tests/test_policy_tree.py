"""fit_policy_tree: optimality over the candidate splits against brute force, planted-split
recovery, rules == assign, laziness, validation and serialisation."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import matplotlib
import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche.policy_tree import (
    MAX_THRESHOLDS,
    PolicyTreeResult,
    _bin_features,
    _merge_same_arm_leaves,
    _Node,
    _search_tree,
)

from conftest import counting_scheduler, random_dataset
from reference import is_missing, reference_members, reference_metric

matplotlib.use("Agg")


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- optimality
#
# "Exact" means optimal over the candidate splits (numeric: <= 64 quantile thresholds; text:
# every partition up to 12 levels, else prefixes of the best-arm-gain order cut like a
# number), among trees whose sibling leaves serve different arms. The brute force below
# enumerates exactly those trees.


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("share", [0.05, 0.5, 1, 6])  # shares (0.5 is the edge) and counts
@pytest.mark.parametrize("n_arms", [2, 3, 4])
def test_depth_1_and_2_are_optimal_over_the_candidate_splits(n_arms, share, missing):
    seed = 100 * n_arms + 10 * int(missing) + [0.05, 0.5, 1, 6].index(share)
    n_visitors = int(np.random.default_rng(seed).integers(30, 110))
    result = random_problem(seed, n_visitors, n_arms, missing=missing, n_values=15)
    names = ["x", "device", "flag"]
    for depth in (1, 2):
        tree = assert_optimal(result, names, depth, share)
        assert tree.search == "exact"
        check_rules_match_assign(tree, result.observed)


@pytest.mark.parametrize(
    ("n_visitors", "share"),
    [(n, share) for n in (1, 2, 3, 4, 7) for share in (0.5, 0.01, 1, 3) if 2 * share <= n],
)
def test_tiny_problems_are_optimal(n_visitors, share):
    rng = np.random.default_rng(n_visitors)
    mean = rng.normal(1.0, 1.0, (n_visitors, 3))
    covariates = {
        "x": np.arange(n_visitors, dtype=float),
        "device": np.array(list("abcdefg"[:n_visitors]), dtype=object),
        "flag": np.arange(n_visitors) % 2 == 0,
    }
    result = posterior_from_mean(mean, covariates)
    for depth in (1, 2, 3):
        tree = assert_optimal(result, list(covariates), depth, share, search="exact")
        check_rules_match_assign(tree, result.observed)


@pytest.mark.parametrize("n_arms", [2, 3])
def test_quantile_thresholds_and_many_level_text_are_optimal_over_their_candidates(n_arms):
    # A continuous covariate (more than 65 distinct values: 64 quantile thresholds), a text
    # covariate of 20 levels (one bin per level, in best-arm-gain order) and one of 90
    # levels (binned at quantiles of that order), with missing values.
    rng = np.random.default_rng(40 + n_arms)
    n_visitors = 260
    z = rng.normal(size=n_visitors)
    z[rng.random(n_visitors) < 0.05] = np.nan
    city = rng.choice(np.array([f"c{i:02d}" for i in range(20)], dtype=object), n_visitors)
    town = rng.choice(np.array([f"t{i:02d}" for i in range(90)], dtype=object), n_visitors)
    town[rng.random(n_visitors) < 0.05] = None
    mean = rng.normal(1.0, 0.3, (n_visitors, n_arms))
    mean[:, 1] += 0.3 * np.nan_to_num(z)
    mean[:, -1] += np.where(np.isin(city, ["c03", "c07", "c11"]), 0.4, -0.1)
    result = posterior_from_mean(mean, {"z": z, "city": city, "town": town})
    bins = _bin_features(
        {name: result.observed[name].values for name in ("z", "city", "town")},
        mean[:, 1:] - mean[:, :1],
    )
    assert [b.n_bins for b in bins[:2]] == [MAX_THRESHOLDS + 1, 20]
    assert 20 < bins[2].n_bins <= MAX_THRESHOLDS + 1
    np.testing.assert_array_equal(bins[0].thresholds, candidate_thresholds(z.tolist()))
    for names in (["z"], ["city", "town"]):
        for depth in (1, 2):
            tree = assert_optimal(result, names, depth, 0.05)
            check_rules_match_assign(tree, result.observed)
    # Text covariates split on set membership, never on thresholds.
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    for clause in (c for s in tree.segments for c in s.rule.clauses):
        assert clause.op in (("<=", ">") if clause.covariate == "z" else ("==", "in"))


@pytest.mark.parametrize("n_arms", [2, 4])
def test_exact_depth_3_is_optimal_over_the_candidate_splits(n_arms):
    result = random_problem(7, n_visitors=100, n_arms=n_arms, n_values=8, missing=True)
    names = ["x", "device"]
    tree = assert_optimal(result, names, 3, 0.08, search="exact")
    assert tree.search == "exact"
    # On a problem this small "auto" picks the exhaustive search.
    auto = pt.fit_policy_tree(
        result, max_depth=3, min_segment_share=0.08, n_bootstrap=0, features=names
    )
    assert auto.search == "exact"
    assert auto.to_dict() == tree.to_dict()


def test_the_search_forbids_same_arm_siblings_even_when_shedding_missing_values_pays():
    # Visitors of unknown x lose under T1; everyone else gains a little. Any split on x sheds
    # the unknown ones to control, but both sides then prefer T1: two same-arm sibling leaves,
    # which the search does not build. The better tree exists; the search, by its
    # constraint, returns the root. Without missing values the two optima coincide.
    n_visitors = 100
    x = np.arange(n_visitors, dtype=float)
    x[:20] = np.nan
    mean = np.ones((n_visitors, 2))
    mean[20:, 1] += 0.1
    mean[:20, 1] -= 1.0
    result = posterior_from_mean(mean, {"x": x})
    tree = assert_optimal(result, ["x"], 2, 0.1)
    assert len(tree.segments) == 1 and tree.segments[0].best_arm == "control"
    unconstrained = brute_force(result, ["x"], 2, tree.min_segment_size, distinct_arms=False)
    assert unconstrained == pytest.approx(tree.objective + 80 * 0.1 / n_visitors)
    # Without the missing values, the constraint costs nothing.
    complete = posterior_from_mean(mean, {"x": np.arange(n_visitors, dtype=float)})
    for depth in (1, 2):
        constrained = brute_force(complete, ["x"], depth, 10)
        assert brute_force(complete, ["x"], depth, 10, distinct_arms=False) == pytest.approx(
            constrained
        )


def test_lookahead_is_at_most_the_exact_tree_and_equal_on_a_planted_tree():
    # Random problem: the look-ahead cannot beat the exhaustive search.
    result = random_problem(3, n_visitors=150, n_values=8, missing=True)
    names = ["x", "device"]
    fits = {
        search: pt.fit_policy_tree(
            result,
            max_depth=3,
            min_segment_share=0.05,
            n_bootstrap=0,
            features=names,
            search=search,
        )
        for search in ("exact", "lookahead")
    }
    assert fits["lookahead"].search == "lookahead" and fits["exact"].search == "exact"
    assert fits["lookahead"].objective <= fits["exact"].objective + 1e-12
    assert fits["exact"].objective == pytest.approx(brute_force(result, names, 3, 8), rel=1e-9)
    # A planted depth-3 tree with strong effects: the look-ahead finds the optimum too.
    rng = np.random.default_rng(11)
    n_visitors = 400
    a, b, c = (rng.integers(0, 4, n_visitors).astype(float) for _ in range(3))
    mean = np.ones((n_visitors, 4)) + 0.05 * rng.normal(size=(n_visitors, 4))
    arm = np.where(a <= 1, np.where(b <= 1, np.where(c <= 1, 1, 2), 3), np.where(c <= 1, 0, 2))
    mean[np.arange(n_visitors), arm] += 1.0
    planted = posterior_from_mean(mean, {"a": a, "b": b, "c": c})
    trees = [
        pt.fit_policy_tree(
            planted, max_depth=3, min_segment_share=0.05, n_bootstrap=0, search=search
        )
        for search in ("exact", "lookahead")
    ]
    assert trees[1].objective == pytest.approx(trees[0].objective, rel=1e-12)
    assert len(trees[1].segments) == 5
    served = {s.best_arm for s in trees[1].segments}
    assert served == {"control", "T1", "T2", "T3"}
    # Deeper look-ahead trees never lose value.
    objectives = [
        pt.fit_policy_tree(
            result, max_depth=depth, min_segment_share=0.05, n_bootstrap=0, search="lookahead"
        ).objective
        for depth in range(5)
    ]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(objectives)), objectives


def test_many_level_categorical_finds_the_best_partition_with_two_arms():
    # With two arms, levels ordered by mean contrast give the optimal two-way partition (the
    # 5% leaf size does not bind here): the tree matches a brute force over all 2**13 - 1
    # partitions of the 14 levels.
    rng = np.random.default_rng(5)
    n_visitors = 400
    levels = np.array([f"city{i:02d}" for i in range(14)], dtype=object)
    city = rng.choice(levels, n_visitors)
    effect = dict(zip(levels, rng.normal(0, 0.3, size=levels.size), strict=True))
    mean = np.ones((n_visitors, 2))
    mean[:, 1] += np.array([effect[c] for c in city]) + rng.normal(0, 0.1, n_visitors)
    result = posterior_from_mean(mean, {"city": city})
    tree = pt.fit_policy_tree(result, max_depth=1, min_segment_share=0.05, n_bootstrap=0)
    contrast = mean[:, 1] - mean[:, 0]
    best = 0.0
    for size in range(1, 14):
        for left in itertools.combinations(levels[:-1], size):
            in_left = np.isin(city, left)
            if min(in_left.sum(), (~in_left).sum()) < tree.min_segment_size:
                continue
            sides = [contrast[in_left].sum(), contrast[~in_left].sum()]
            if (sides[0] > 0) != (sides[1] > 0):
                best = max(best, max(sides[0], 0) + max(sides[1], 0))
    assert tree.objective == pytest.approx((mean[:, 0].sum() + best) / n_visitors, rel=1e-9)
    assert len(tree.segments) == 2
    check_rules_match_assign(tree, result.observed)


def test_thousands_of_levels_stay_within_65_bins_and_rules_stay_set_membership():
    rng = np.random.default_rng(8)
    n_visitors = 3000
    zips = np.array([f"z{i:04d}" for i in range(800)], dtype=object)
    zipcode = rng.choice(zips, n_visitors)
    good = set(zips[rng.random(zips.size) < 0.3].tolist())  # T1 is better there
    mean = np.ones((n_visitors, 3)) + 0.2 * rng.normal(size=(n_visitors, 3))
    mean[:, 1] += np.array([0.5 if z in good else -0.2 for z in zipcode])
    x = rng.normal(size=n_visitors)
    mean[:, 2] += 0.4 * x
    result = posterior_from_mean(mean, {"zip": zipcode, "x": x})
    bins = _bin_features({"zip": zipcode, "x": x}, mean[:, 1:] - mean[:, :1])
    assert max(b.n_bins for b in bins) <= MAX_THRESHOLDS + 1
    tree = assert_optimal(result, ["zip", "x"], 2, 0.05)
    assert len(tree.segments) >= 3
    check_rules_match_assign(tree, result.observed)
    zip_clauses = [c for s in tree.segments for c in s.rule.clauses if c.covariate == "zip"]
    assert zip_clauses and all(c.op in ("==", "in") for c in zip_clauses)
    assert "T1" in {s.best_arm for s in tree.segments}  # served to a group of zips


def test_objective_is_the_policy_value_of_the_leaves():
    result = random_problem(2)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=0)
    assert tree.objective == pytest.approx(policy_value(tree, result), rel=1e-12)
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    assert tree.control_objective == pytest.approx(metric[:, 0].mean(), rel=1e-12)
    labels = tree.assign().values
    assert tree.unassigned_share == pytest.approx((labels < 0).mean())


# --------------------------------------------------------------------------- planted splits


@pytest.mark.parametrize("max_depth", [2, 3])
def test_recovers_the_planted_segments_of_the_example_posterior(max_depth):
    result = pt.example_posterior(n_visitors=4000, n_draws=60, seed=3)
    tree = pt.fit_policy_tree(result, max_depth=max_depth, min_segment_share=0.05, n_bootstrap=0)
    used = {clause.covariate for s in tree.segments for clause in s.rule.clauses}
    assert used == {"device", "age"}
    observed = result.observed
    device, age = observed["device"].values, observed["age"].values
    labels = tree.assign().values
    by_id = {s.id: s for s in tree.segments}
    with np.errstate(invalid="ignore"):
        planted = {
            "A": device == "mobile",
            "B": (device == "desktop") & (age > 40),
            "control": (device == "tablet") | ((device == "desktop") & (age <= 40)),
        }
    for arm, members in planted.items():
        ids = set(labels[members].tolist())
        assert -1 not in ids
        assert {by_id[i].best_arm for i in ids} == {arm}
    # Desktop visitors of unknown age cannot be placed by the age split.
    unknown = (device == "desktop") & np.isnan(age)
    assert (labels[unknown] == -1).all()
    assert tree.unassigned_share == pytest.approx(unknown.mean())
    assert any(
        clause.covariate == "age" and clause.value == 40.0
        for s in tree.segments
        for clause in s.rule.clauses
    )


def test_stability_separates_planted_leaves_from_leaves_of_noise():
    planted = pt.fit_policy_tree(
        pt.example_posterior(n_visitors=3000, n_draws=40, seed=4),
        max_depth=2,
        min_segment_share=0.05,
        n_bootstrap=10,
        seed=1,
    )
    assert len(planted.segments) >= 3
    assert all(s.stability_score >= 0.9 for s in planted.segments)
    # No structure at all: the same search on noise finds leaves, but refits cut elsewhere.
    rng = np.random.default_rng(0)
    n_visitors = 600
    mean = np.ones((n_visitors, 3)) + rng.normal(0, 1.0, (n_visitors, 3))
    noise = pt.fit_policy_tree(
        posterior_from_mean(
            mean, {"x": rng.normal(size=n_visitors), "z": rng.normal(size=n_visitors)}
        ),
        max_depth=2,
        min_segment_share=0.1,
        n_bootstrap=10,
        seed=1,
    )
    assert len(noise.segments) > 1
    scores = [s.stability_score for s in noise.segments]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert np.mean(scores) <= 0.6, scores
    unstable = pt.fit_policy_tree(
        pt.example_posterior(n_visitors=1000, n_draws=20, seed=4), max_depth=1, n_bootstrap=0
    )
    assert all(math.isnan(s.stability_score) for s in unstable.segments)


def test_stability_counts_refits_on_resampled_visitors():
    # An independent recount: refit on each bootstrap resample (the same generator draws)
    # through the public function, and compare leaf memberships by Jaccard overlap.
    rng = np.random.default_rng(5)
    n_visitors = 300
    x = rng.integers(0, 8, n_visitors).astype(float)
    device = rng.choice(np.array(["a", "b", "c"], dtype=object), n_visitors)
    mean = rng.normal(1, 0.5, (n_visitors, 3))
    mean[:, 1] += 0.15 * (x > 3)
    mean[:, 2] += 0.15 * (device == "b")
    result = posterior_from_mean(mean, {"x": x, "device": device})
    n_bootstrap = 6
    tree = pt.fit_policy_tree(
        result, max_depth=2, min_segment_share=0.1, n_bootstrap=n_bootstrap, seed=7
    )
    labels = tree.assign().values
    draws = np.random.default_rng(7)
    reproduced = np.zeros(len(tree.segments))
    for _ in range(n_bootstrap):
        rows = draws.integers(0, n_visitors, size=n_visitors)
        refit = pt.fit_policy_tree(
            posterior_from_mean(mean[rows], {"x": x[rows], "device": device[rows]}),
            max_depth=2,
            min_segment_share=tree.min_segment_size,
            n_bootstrap=0,
        )
        # Note: the refit bins the resample afresh (thresholds, level order); the fit reuses
        # the original bins, so the two agree here because x has 8 values and device 3.
        refit_labels = refit.assign(result.observed).values
        for segment in tree.segments:
            mine = labels == segment.id
            overlaps = [
                (mine & (refit_labels == j)).sum() / (mine | (refit_labels == j)).sum()
                for j in range(len(refit.segments))
            ]
            reproduced[segment.id] += max(overlaps) >= 0.5
    assert [s.stability_score for s in tree.segments] == pytest.approx(reproduced / n_bootstrap)


# --------------------------------------------------------------------------- rules and assign


@pytest.mark.parametrize("seed", range(3))
def test_rule_membership_equals_assign_for_every_leaf(seed):
    result = random_problem(seed + 20, n_visitors=300)
    tree = pt.fit_policy_tree(result, max_depth=3, min_segment_share=0.05, n_bootstrap=0)
    assert len(tree.segments) >= 3
    check_rules_match_assign(tree, result.observed)
    # The same on new visitors, with missing values, unseen levels and out-of-range numbers.
    rng = np.random.default_rng(seed)
    n_new = 500
    x = rng.integers(-5, 30, n_new).astype(float)
    x[rng.random(n_new) < 0.1] = np.nan
    device = rng.choice(
        np.array(["mobile", "desktop", "tablet", "tv", "watch", None], dtype=object), n_new
    )
    new = xr.Dataset(
        coords={
            "x": ("visitor", x),
            "device": ("visitor", device),
            "flag": ("visitor", rng.random(n_new) < 0.5),
        }
    )
    check_rules_match_assign(tree, new)
    # A level the fit never saw goes down no branch that splits on it.
    labels = tree.assign(new).values
    by_id = {s.id: s for s in tree.segments}
    placed = labels[(device == "watch") & (labels >= 0)]
    assert all("device" not in by_id[i].rule.covariates for i in placed.tolist())
    assert (labels[device == "watch"] == -1).any()


@pytest.mark.parametrize(("depth", "search"), [(1, "auto"), (2, "auto"), (3, "lookahead")])
def test_the_search_routing_on_bin_codes_equals_assign(depth, search):
    # The search places visitors by their bin codes; assign() walks the written splits on the
    # raw values. The two must agree visitor by visitor (missing values: -1 in both).
    result = random_problem(12, n_visitors=400, n_arms=4)
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    names = ["x", "device", "flag"]
    columns = {name: result.observed[name].values for name in names}
    _, _, labels, _, _ = _search_tree(
        metric, columns, max_depth=depth, min_size=20, n_bootstrap=0, seed=0, search=search
    )
    tree = pt.fit_policy_tree(
        result, max_depth=depth, min_segment_share=20, n_bootstrap=0, search=search
    )
    assert (labels < 0).any() and labels.max() >= 1
    np.testing.assert_array_equal(labels, tree.assign().values)


def test_assign_is_lazy_on_dask_covariates_and_agrees():
    result = random_problem(1, n_visitors=300)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=0)
    observed = result.observed
    with counting_scheduler(computes=0):
        labels = tree.assign(observed.chunk({"visitor": 70}))
    assert labels.chunks is not None
    np.testing.assert_array_equal(labels.values, tree.assign(observed).values)
    assert labels.dims == ("visitor",)


def test_sibling_leaves_never_serve_the_same_arm():
    for seed in range(4):
        result = random_problem(seed + 30, n_visitors=300)
        tree = pt.fit_policy_tree(result, max_depth=3, min_segment_share=0.05, n_bootstrap=0)
        nodes = tree.to_dict()["nodes"]
        for node in nodes:
            if node["split"] is None:
                continue
            left, right = nodes[node["left"]], nodes[node["right"]]
            if left["split"] is None and right["split"] is None:
                arms = {tree.segments[c["segment"]].best_arm for c in (left, right)}
                assert len(arms) == 2


def test_same_arm_leaves_left_by_rounding_are_merged_bottom_up():
    # The search never picks such a pair on its own sums; the final merge guards the
    # guarantee against a best arm flipping when a node's total is summed in another order.
    def leaf(*total):
        return _Node(np.arange(1), np.array(total, dtype=float))

    def split(left, right):
        return _Node(np.arange(1), left.total + right.total, 0, np.array([True]), left, right)

    # Columns: contrasts of T1 and T2, then the count.
    kept = split(split(leaf(1, 0, 5), leaf(0, 2, 5)), leaf(-1, -1, 5))
    _merge_same_arm_leaves(kept, 2)
    assert not kept.left.is_leaf  # T1 | T2 under T1+T2, then control: nothing to merge
    inner = split(leaf(1, 0, 5), leaf(2, 1, 5))  # both T1: one leaf
    partial = split(inner, leaf(0, 3, 5))
    _merge_same_arm_leaves(partial, 2)
    assert partial.left.is_leaf and partial.left.feature == -1 and not partial.is_leaf
    cascade = split(split(leaf(1, 0, 5), leaf(2, 1, 5)), leaf(3, 0, 5))  # all T1
    _merge_same_arm_leaves(cascade, 2)
    assert cascade.is_leaf and cascade.left_bins is None


def test_segment_ids_are_leaves_left_to_right_and_nodes_level_order():
    result = random_problem(4, n_visitors=300)
    tree = pt.fit_policy_tree(result, max_depth=3, min_segment_share=0.05, n_bootstrap=0)
    nodes = tree.to_dict()["nodes"]
    assert [n["id"] for n in nodes] == list(range(len(nodes)))
    assert [n["depth"] for n in nodes] == sorted(n["depth"] for n in nodes)
    order = []

    def walk(i):
        node = nodes[i]
        if node["split"] is None:
            order.append(node["segment"])
        else:
            walk(node["left"])
            walk(node["right"])

    walk(0)
    assert order == list(range(len(tree.segments)))
    assert [s.id for s in tree.segments] == order


# --------------------------------------------------------------------------- leaf summaries


def test_leaf_descriptions_come_from_the_allocation():
    result = pt.example_posterior(n_visitors=3000, n_draws=80, seed=2)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    allocation = pt.thompson_allocation(result, tree.segments, epsilon=0.0)
    assert tree.allocation(epsilon=0.0) == allocation
    assert tree.allocation() == pt.thompson_allocation(result, tree.segments)
    summary = pt.segment_summary(result, tree.segments, ci=0.8)
    observed = result.observed
    for i, segment in enumerate(tree.segments):
        # Equal to the last digit: the same code path.
        assert segment.arm_best_probabilities == allocation[segment.id]
        assert list(segment.arm_best_probabilities) == list(result.variants)
        members = reference_members(segment.rule, observed)
        assert segment.population_share == len(members) / observed.sizes["visitor"]
        row = summary.isel(segment=i, arm=list(result.variants).index(segment.best_arm))
        assert segment.gate_estimate == float(row["contrast"])
        assert segment.gate_interval == (float(row["contrast_lower"]), float(row["contrast_upper"]))
        assert segment.gate_interval[0] <= segment.gate_estimate <= segment.gate_interval[1]
        # The best arm maximises the posterior mean segment metric.
        metrics = summary["metric"].isel(segment=i).values
        assert segment.best_arm == result.variants[int(np.argmax(metrics))]
    assert sum(s.population_share for s in tree.segments) == pytest.approx(
        1 - tree.unassigned_share
    )


def test_root_only_tree_when_control_is_best_everywhere():
    rng = np.random.default_rng(0)
    n_visitors = 200
    mean = np.ones((n_visitors, 3))
    mean[:, 1:] -= rng.uniform(0.1, 0.5, size=(n_visitors, 2))
    x = rng.normal(size=n_visitors)
    x[:10] = np.nan
    result = posterior_from_mean(mean, {"x": x})
    tree = pt.fit_policy_tree(result, max_depth=3, n_bootstrap=3)
    assert len(tree.segments) == 1
    (segment,) = tree.segments
    assert segment.rule == pt.SegmentRule.everyone()
    assert segment.best_arm == "control"
    assert segment.population_share == 1.0
    assert segment.gate_estimate == 0.0 and segment.gate_interval == (0.0, 0.0)
    assert segment.stability_score == 1.0
    np.testing.assert_array_equal(tree.assign().values, 0)  # missing values included
    assert tree.depth == 0
    assert tree.objective == pytest.approx(tree.control_objective)
    assert "everyone" in str(tree)


def test_max_depth_zero_serves_everyone_the_best_single_arm():
    result = pt.example_posterior(n_visitors=1000, n_draws=30, seed=0)
    tree = pt.fit_policy_tree(result, max_depth=0, n_bootstrap=0)
    assert [str(s.rule) for s in tree.segments] == ["everyone"]
    metric = reference_metric(result.dataset).mean(axis=(0, 1, 2))
    assert tree.segments[0].best_arm == result.variants[int(np.argmax(metric))]


def test_min_segment_share_bounds_every_leaf():
    result = random_problem(6, n_visitors=300)
    for share in (0.05, 0.2, 45, 150):
        tree = pt.fit_policy_tree(result, max_depth=3, min_segment_share=share, n_bootstrap=0)
        expected = share if isinstance(share, int) else math.ceil(share * 300)
        assert tree.min_segment_size == expected
        counts = np.bincount(tree.assign().values + 1)[1:]
        assert len(counts) == 1 or (counts >= expected).all()


# --------------------------------------------------------------------------- inputs, laziness


def test_dask_posterior_gives_the_same_tree_in_two_computes():
    ds = random_dataset("hurdle", n_visitors=200, n_draws=12, n_chains=2, seed=3)
    result = pt.posterior(ds)
    eager = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=3)
    lazy_result = pt.posterior(ds.chunk({"visitor": 45}))
    # Pass 1: Γ̄ and the covariates; pass 2: the leaf summaries.
    with counting_scheduler(computes=2):
        lazy = pt.fit_policy_tree(lazy_result, max_depth=2, min_segment_share=0.1, n_bootstrap=3)
    with counting_scheduler(computes=0):
        labels = lazy.assign()
    assert labels.chunks is not None
    np.testing.assert_array_equal(labels.values, eager.assign().values)
    a, b = eager.to_dict(), lazy.to_dict()
    assert a["nodes"] == b["nodes"]
    assert eager.segments == lazy.segments
    for x, y in zip(eager.segments, lazy.segments, strict=True):
        assert x.best_arm == y.best_arm
        assert x.population_share == y.population_share
        assert x.arm_best_probabilities == y.arm_best_probabilities
        assert x.stability_score == y.stability_score
        assert x.gate_estimate == pytest.approx(y.gate_estimate, rel=1e-9, abs=1e-12)
        assert x.gate_interval == pytest.approx(y.gate_interval, rel=1e-9, abs=1e-12)
    assert a["objective"] == pytest.approx(b["objective"], rel=1e-12)
    check_rules_match_assign(eager, result.observed)


def test_features_select_the_covariates():
    result = random_problem(0)
    tree = pt.fit_policy_tree(
        result, max_depth=2, features=["flag"], n_bootstrap=0, min_segment_share=0.05
    )
    assert tree.features == ("flag",)
    assert {c for s in tree.segments for c in s.rule.covariates} <= {"flag"}
    default = pt.fit_policy_tree(result, max_depth=1, n_bootstrap=0)
    assert set(default.features) == {"x", "device", "flag"}  # not 'variant'


def test_integer_and_boolean_covariates_write_typed_rules():
    rng = np.random.default_rng(1)
    n_visitors = 300
    visits = rng.integers(0, 10, n_visitors)
    member = rng.random(n_visitors) < 0.5
    mean = np.ones((n_visitors, 3))
    mean[:, 1] += np.where(visits > 4, 0.5, -0.5)
    mean[:, 2] += np.where(member & (visits <= 4), 0.8, -0.5)
    result = posterior_from_mean(mean, {"visits": visits, "member": member})
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    clauses = [c for s in tree.segments for c in s.rule.clauses]
    assert any(c.covariate == "visits" and c.value == 4 and type(c.value) is int for c in clauses)
    assert any(c.covariate == "member" and c.value is True for c in clauses)
    assert {s.best_arm for s in tree.segments} == {"T1", "T2", "control"}
    check_rules_match_assign(tree, result.observed)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_depth": -1}, ValueError, "max_depth .*got -1"),
        ({"max_depth": 7}, ValueError, "max_depth .*got 7"),
        ({"max_depth": 2.0}, TypeError, "max_depth .*2.0"),
        ({"min_segment_share": 0.0}, ValueError, r"min_segment_share .*got 0\.0"),
        ({"min_segment_share": 0.6}, ValueError, r"min_segment_share .*got 0\.6"),
        ({"min_segment_share": -0.1}, ValueError, r"min_segment_share .*got -0\.1"),
        ({"min_segment_share": float("nan")}, ValueError, "min_segment_share .*got nan"),
        ({"min_segment_share": 0}, ValueError, "min_segment_share .*got 0"),
        ({"min_segment_share": 31}, ValueError, "min_segment_share=31 .*half of the 60"),
        ({"min_segment_share": np.int64(31)}, ValueError, "min_segment_share=31 "),
        ({"min_segment_share": True}, TypeError, "min_segment_share .*True"),
        ({"features": ["height"]}, ValueError, "unknown feature 'height'"),
        ({"features": ["variant"]}, ValueError, "'variant' is observed data, not a covariate"),
        ({"features": ["x", "x"]}, ValueError, r"more than once: \['x'\]"),
        ({"features": []}, ValueError, r"features is empty \(got \[\]\)"),
        ({"n_bootstrap": -1}, ValueError, "n_bootstrap .*got -1"),
        ({"search": "greedy"}, ValueError, "search .*'greedy'"),
    ],
)
def test_invalid_arguments_raise(kwargs, error, match):
    result = random_problem(0, n_visitors=60)
    with pytest.raises(error, match=match):
        pt.fit_policy_tree(result, **kwargs)


def test_half_of_the_visitors_is_the_largest_count():
    result = random_problem(0, n_visitors=60)
    tree = pt.fit_policy_tree(result, min_segment_share=30, n_bootstrap=0)
    assert tree.min_segment_size == 30
    assert pt.fit_policy_tree(result, min_segment_share=0.5, n_bootstrap=0).min_segment_size == 30


def test_posterior_without_observed_data_or_wrong_type_raises():
    bare = pt.posterior(random_dataset("binary", observed=False))
    with pytest.raises(ValueError, match="no observed data"):
        pt.fit_policy_tree(bare)
    with pytest.raises(TypeError, match="posterior must be"):
        pt.fit_policy_tree(random_dataset("binary"))


def test_non_finite_posterior_mean_raises():
    ds = random_dataset("continuous", n_visitors=50)
    ds["expected"][3, 0, 1] = np.nan
    with pytest.raises(ValueError, match="1 visitor"):
        pt.fit_policy_tree(pt.posterior(ds), n_bootstrap=0)


def test_object_columns_are_typed_by_their_values():
    rng = np.random.default_rng(2)
    n_visitors = 300
    score = rng.integers(0, 10, n_visitors)
    as_objects = np.array(
        [None if i % 17 == 0 else int(v) for i, v in enumerate(score)], dtype=object
    )
    mixed = np.array(["a", 1, True] * (n_visitors // 3), dtype=object)
    mean = np.ones((n_visitors, 2))
    mean[:, 1] += np.where(score > 4, 0.5, -0.5)
    result = posterior_from_mean(mean, {"score": as_objects, "mixed": mixed})
    tree = pt.fit_policy_tree(result, max_depth=1, min_segment_share=0.1, n_bootstrap=0)
    assert tree.features == ("score",)  # the mixed column is skipped by default
    assert [str(s.rule) for s in tree.segments] == ["score <= 4.0", "score > 4.0"]
    check_rules_match_assign(tree, result.observed)
    with pytest.raises(ValueError, match=r"'mixed'.*mixes kinds"):
        pt.fit_policy_tree(result, features=["mixed"], n_bootstrap=0)


# --------------------------------------------------------------------------- segments


def test_segments_are_equal_and_hash_by_id_and_rule_only():
    result = pt.example_posterior(n_visitors=1000, n_draws=20, seed=1)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    first = tree.segments[0]
    bare = pt.DiscoveredSegment(first.id, first.rule)
    assert first == bare and hash(first) == hash(bare)
    assert len({first, bare, dataclasses.replace(first, best_arm="other")}) == 1
    assert first != pt.DiscoveredSegment(first.id + 1, first.rule)
    assert first != pt.DiscoveredSegment(first.id, "everyone")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gate_interval": (1.0, -1.0)}, r"lower <= upper, got \(1\.0, -1\.0\)"),
        ({"stability_score": 7.0}, r"stability_score .*got 7\.0"),
        ({"stability_score": -0.1}, r"stability_score .*got -0\.1"),
        ({"arm_best_probabilities": {"a": 0.5, "b": 3.0}}, r"\['b'\] .*got 3\.0"),
        ({"arm_best_probabilities": {"a": -0.2}}, r"\['a'\] .*got -0\.2"),
        ({"population_share": 1.5}, r"population_share .*got 1\.5"),
    ],
)
def test_discovered_segment_rejects_descriptions_out_of_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.DiscoveredSegment(0, "everyone", **kwargs)


def test_discovered_segment_accepts_nan_stability_and_boundary_values():
    segment = pt.DiscoveredSegment(
        0,
        "everyone",
        stability_score=math.nan,
        gate_interval=(0.5, 0.5),
        arm_best_probabilities={"a": 0.0, "b": 1.0},
        population_share=0.0,
    )
    assert math.isnan(segment.stability_score)
    assert pt.DiscoveredSegment(0, "everyone", stability_score=1.0).stability_score == 1.0


# --------------------------------------------------------------------------- determinism, I/O


def test_deterministic_given_the_seed():
    result = random_problem(8, n_visitors=300)
    fits = [
        pt.fit_policy_tree(result, max_depth=3, min_segment_share=0.05, n_bootstrap=6, seed=s)
        for s in (1, 1, 2)
    ]
    assert fits[0].to_dict() == fits[1].to_dict()
    assert fits[0].segments == fits[1].segments
    assert fits[0].to_dict()["nodes"] == fits[2].to_dict()["nodes"]  # the tree needs no seed


DESCRIPTIVE = [
    f.name for f in dataclasses.fields(pt.DiscoveredSegment) if f.name not in ("id", "rule")
]


def same_value(a, b) -> bool:
    """Equality that treats NaN as equal to NaN, through tuples and dicts."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("n_bootstrap", [0, 4])
def test_to_dict_from_dict_round_trip_through_json(n_bootstrap):
    result = random_problem(9, n_visitors=300)
    tree = pt.fit_policy_tree(result, max_depth=3, min_segment_share=0.05, n_bootstrap=n_bootstrap)
    data = tree.to_dict()
    text = json.dumps(data, allow_nan=False)
    back = PolicyTreeResult.from_dict(json.loads(text), posterior=result)
    assert back.to_dict() == data
    assert str(back) == str(tree)
    np.testing.assert_array_equal(back.assign().values, tree.assign().values)
    assert back.allocation(0.1) == tree.allocation(0.1)
    assert back.segments == tree.segments
    for a, b in zip(back.segments, tree.segments, strict=True):
        for name in DESCRIPTIVE:
            assert same_value(getattr(a, name), getattr(b, name)), name
        assert math.isnan(a.stability_score) == (n_bootstrap == 0)
    detached = PolicyTreeResult.from_dict(data)
    with pytest.raises(ValueError, match="no posterior"):
        detached.allocation()
    with pytest.raises(ValueError, match="no posterior"):
        detached.assign()
    np.testing.assert_array_equal(detached.assign(result.observed).values, tree.assign().values)
    with pytest.raises(ValueError, match="policy tree"):
        PolicyTreeResult.from_dict({"nodes": []})


def test_text_form_shows_splits_and_leaves(capsys):
    result = pt.example_posterior(n_visitors=2000, n_draws=40, seed=5)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=2)
    print(tree)
    text = capsys.readouterr().out
    assert "age <= 40.0" in text and "age > 40.0" in text
    assert "device == 'desktop'" in text
    for segment in tree.segments:
        assert f"segment {segment.id}: {segment.population_share:.1%}" in text
        assert f"best arm {segment.best_arm}" in text
    assert "P(best) control" in text
    assert "stability" in text
    assert "PolicyTreeResult" in repr(tree)


def test_plot_draws_every_node():
    import matplotlib.pyplot as plt

    result = pt.example_posterior(n_visitors=2000, n_draws=40, seed=5)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    ax = tree.plot()
    try:
        texts = [t.get_text() for t in ax.texts]
        n_nodes = len(tree.to_dict()["nodes"])
        n_edges = n_nodes - 1
        assert len(texts) == n_nodes + n_edges
        assert sum(t.startswith("segment ") for t in texts) == len(tree.segments)
        assert any("age <= 40.0" == t for t in texts)
        assert len(ax.lines) == n_edges
    finally:
        plt.close(ax.figure)
    fig, ax = plt.subplots()
    try:
        assert tree.plot(ax=ax) is ax
    finally:
        plt.close(fig)
