"""The search: optimality over the candidate splits against brute force, the look-ahead, the
same-arm sibling rule (``pytyche.policy_tree.search``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pytyche as pt
from policy_tree_helpers import (
    assert_optimal,
    brute_force,
    check_rules_match_assign,
    policy_value,
    posterior_from_mean,
    random_problem,
)
from pytyche.policy_tree.fit import search_tree
from pytyche.policy_tree.search import Node, merge_same_arm_leaves

from reference import reference_metric

# "Exact" means optimal over the candidate splits (numeric: <= 64 quantile thresholds; text:
# every partition up to 12 levels, else prefixes of the best-arm-gain order cut like a
# number), among trees whose sibling leaves serve different arms. The brute force in
# policy_tree_helpers enumerates exactly those trees.


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


def test_objective_is_the_policy_value_of_the_leaves():
    result = random_problem(2)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=0)
    assert tree.objective == pytest.approx(policy_value(tree, result), rel=1e-12)
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    assert tree.control_objective == pytest.approx(metric[:, 0].mean(), rel=1e-12)
    labels = tree.assign().values
    assert tree.unassigned_share == pytest.approx((labels < 0).mean())


@pytest.mark.parametrize(("depth", "search"), [(1, "auto"), (2, "auto"), (3, "lookahead")])
def test_the_search_routing_on_bin_codes_equals_assign(depth, search):
    # The search places visitors by their bin codes; assign() walks the written splits on the
    # raw values. The two must agree visitor by visitor (missing values: -1 in both).
    result = random_problem(12, n_visitors=400, n_arms=4)
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    names = ["x", "device", "flag"]
    columns = {name: result.observed[name].values for name in names}
    labels = search_tree(
        metric, columns, max_depth=depth, min_size=20, n_bootstrap=0, seed=0, search=search
    ).labels
    tree = pt.fit_policy_tree(
        result, max_depth=depth, min_segment_share=20, n_bootstrap=0, search=search
    )
    assert (labels < 0).any() and labels.max() >= 1
    np.testing.assert_array_equal(labels, tree.assign().values)


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
        return Node(np.arange(1), np.array(total, dtype=float))

    def split(left, right):
        return Node(np.arange(1), left.total + right.total, 0, np.array([True]), left, right)

    # Columns: contrasts of T1 and T2, then the count.
    kept = split(split(leaf(1, 0, 5), leaf(0, 2, 5)), leaf(-1, -1, 5))
    merge_same_arm_leaves(kept, 2)
    assert not kept.left.is_leaf  # T1 | T2 under T1+T2, then control: nothing to merge
    inner = split(leaf(1, 0, 5), leaf(2, 1, 5))  # both T1: one leaf
    partial = split(inner, leaf(0, 3, 5))
    merge_same_arm_leaves(partial, 2)
    assert partial.left.is_leaf and partial.left.feature == -1 and not partial.is_leaf
    cascade = split(split(leaf(1, 0, 5), leaf(2, 1, 5)), leaf(3, 0, 5))  # all T1
    merge_same_arm_leaves(cascade, 2)
    assert cascade.is_leaf and cascade.left_bins is None


@pytest.mark.parametrize("n_columns", [1, 2, 3, 4, 5, 8, 9])
def test_node_histograms_add_each_bin_in_visitor_order(n_columns):
    """The blocked one-pass kernel equals a plain in-order loop, bit for bit, for any columns."""
    from pytyche.policy_tree._kernels import HISTOGRAM_BLOCK, node_histograms

    rng = np.random.default_rng(n_columns)
    n_visitors, rows = 3 * HISTOGRAM_BLOCK + 17, 7  # blocks and a partial last block
    codes = rng.integers(0, rows, size=(4, n_visitors)).astype(np.int32)
    codes[1] %= 2  # a covariate with few bins
    scales = 10.0 ** rng.integers(-8, 8, n_visitors)[:, None]  # sums that depend on order
    values = rng.normal(size=(n_visitors, n_columns)) * scales
    index = np.sort(rng.choice(n_visitors, size=n_visitors // 2, replace=False))
    pairs = np.array([[f, g, p] for p, (f, g) in enumerate(itertools.combinations(range(4), 2))])

    expected_hists = np.zeros((4, rows, n_columns))
    expected_joint = np.zeros((len(pairs), rows, rows, n_columns))
    for visitor in index:  # the reference: one visitor at a time, in index order
        for f in range(4):
            expected_hists[f, codes[f, visitor]] += values[visitor]
        for f, g, p in pairs:
            expected_joint[p, codes[f, visitor], codes[g, visitor]] += values[visitor]

    hists, joint = np.zeros_like(expected_hists), np.zeros_like(expected_joint)
    node_histograms(codes, index, values, np.arange(4), pairs, hists, joint)
    np.testing.assert_array_equal(hists, expected_hists)
    np.testing.assert_array_equal(joint, expected_joint)

    # Split between calls (as between threads), each histogram still gets the same sums.
    hists, joint = np.zeros_like(expected_hists), np.zeros_like(expected_joint)
    for part in range(3):
        node_histograms(codes, index, values, np.arange(4)[part::3], pairs[part::3], hists, joint)
    np.testing.assert_array_equal(hists, expected_hists)
    np.testing.assert_array_equal(joint, expected_joint)


def test_node_histograms_refuse_arrays_they_cannot_write_in_place():
    from pytyche.policy_tree._kernels import node_histograms

    codes = np.zeros((1, 3), dtype=np.int32)
    values = np.ones((3, 2))
    hists = np.zeros((1, 4, 2))
    no_pairs = np.zeros((0, 3), dtype=np.int64)
    strided = np.zeros((1, 4, 4))[:, :, ::2]  # (1, 4, 2), not contiguous: writes would be lost
    with pytest.raises(ValueError, match="C-contiguous"):
        node_histograms(
            codes, np.arange(3), values, np.array([0]), no_pairs, strided, np.zeros((0, 4, 4, 2))
        )
    with pytest.raises(ValueError, match="4 × 4 codes"):
        node_histograms(
            codes, np.arange(3), values, np.array([0]), no_pairs, hists, np.zeros((1, 3, 3, 2))
        )
