"""Binning: candidate thresholds, many-level categoricals, the choice and typing of covariates
(``pytyche.policy_tree.binning``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pytyche as pt
from policy_tree_helpers import (
    assert_optimal,
    candidate_thresholds,
    check_rules_match_assign,
    posterior_from_mean,
    random_problem,
)
from pytyche.policy_tree.binning import MAX_THRESHOLDS, bin_features, ordinal_feature


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
    bins = bin_features(
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
    bins = bin_features({"zip": zipcode, "x": x}, mean[:, 1:] - mean[:, :1])
    assert max(b.n_bins for b in bins) <= MAX_THRESHOLDS + 1
    tree = assert_optimal(result, ["zip", "x"], 2, 0.05)
    assert len(tree.segments) >= 3
    check_rules_match_assign(tree, result.observed)
    zip_clauses = [c for s in tree.segments for c in s.rule.clauses if c.covariate == "zip"]
    assert zip_clauses and all(c.op in ("==", "in") for c in zip_clauses)
    assert "T1" in {s.best_arm for s in tree.segments}  # served to a group of zips


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


# --------------------------------------------------------------------------- ordered text


def test_ordinal_feature_bins_ranges_of_the_order_and_keeps_absent_levels_between():
    order = ["z-low", "b-mid", "absent", "a-high", "never"]
    values = np.array(["a-high", "z-low", None, "b-mid", "a-high"], dtype=object)
    feature = ordinal_feature("tier", values, order)
    assert feature.levels == tuple(order)
    # "absent" joins the next level present; levels after the last present join the last.
    assert feature.level_bins.tolist() == [0, 1, 2, 2, 2]
    assert feature.codes.tolist() == [2, 0, 3, 1, 2]
    assert feature.subsets is None and feature.n_splits == 2


def test_many_level_ordinal_feature_is_cut_at_quantiles_of_its_order():
    order = [f"level {i:03d}" for i in range(150)][::-1]
    values = np.array(order * 3, dtype=object)
    feature = ordinal_feature("tier", values, order)
    assert feature.n_bins == MAX_THRESHOLDS + 1
    assert (np.diff(feature.level_bins) >= 0).all()


def test_ordinal_values_outside_the_order_or_not_text_raise():
    with pytest.raises(ValueError, match=r"'tier' holds value\(s\) \['odd'\] that are not"):
        ordinal_feature("tier", np.array(["low", "odd"], dtype=object), ["low", "high"])
    with pytest.raises(ValueError, match=r"'n' has ordered levels \['1'\] but holds number"):
        bin_features({"n": np.array([1.0])}, np.zeros((1, 1)), orders={"n": ["1"]})
