"""fit_policy_tree: optimality against brute force, planted-split recovery, rules == assign."""

from __future__ import annotations

import itertools
import json
import math

import matplotlib
import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche.policy_tree import PolicyTreeResult

from conftest import random_dataset
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
    """Small random problems with numeric, categorical and boolean covariates."""
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
    return posterior_from_mean(mean, {"x": x, "device": device, "flag": flag})


def candidate_masks(observed: xr.Dataset, names) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every split of the brute force: all thresholds, all two-way partitions of the levels."""
    masks = []
    for name in names:
        values = observed[name].values
        if values.dtype.kind == "f":
            present = ~np.isnan(values)
            for t in np.unique(values[present])[:-1]:
                masks.append((present & (values <= t), present & (values > t)))
        else:
            present = np.array([not is_missing(v) for v in values.tolist()])
            levels = sorted({v for v in values[present].tolist()})
            for size in range(1, len(levels)):
                for left in itertools.combinations(levels, size):
                    if levels[-1] in left:  # each partition once
                        continue
                    in_left = np.array([v in left for v in values.tolist()]) & present
                    masks.append((in_left, present & ~in_left))
    return masks


def brute_force(result, names, depth: int, min_size: int, distinct_arms: bool) -> float:
    """Best objective over all trees of depth <= `depth`, by exhaustive recursion on masks.

    Visitors with a missing value on a split covariate fall out of the tree and are served
    control. With ``distinct_arms``, two sibling leaves may not serve the same arm.
    """
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    contrast = metric[:, 1:] - metric[:, :1]
    masks = candidate_masks(result.observed, names)

    def leaf(mask):
        sums = contrast[mask].sum(axis=0)
        best = sums.max()
        return (best, int(sums.argmax()) + 1) if best > 0 else (0.0, 0)

    def best(mask, d):
        """(leaf value, leaf arm, best value as a split)."""
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
        return leaf_value, arm, split_value

    leaf_value, _, split_value = best(np.ones(contrast.shape[0], bool), depth)
    return (metric[:, 0].sum() + max(leaf_value, split_value)) / contrast.shape[0]


def check_rules_match_assign(tree: PolicyTreeResult, observed: xr.Dataset) -> None:
    labels = tree.assign(observed).values
    rows = pt.membership(tree.segments, observed).values
    for segment, row in zip(tree.segments, rows, strict=True):
        np.testing.assert_array_equal(row, labels == segment.id, err_msg=str(segment.rule))
    # Leaves partition the assigned visitors; no rule matches an unassigned one.
    np.testing.assert_array_equal(rows.sum(axis=0), (labels >= 0).astype(int))


# --------------------------------------------------------------------------- optimality


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("depth", [1, 2])
def test_depth_1_and_2_reach_the_brute_force_optimum(seed, depth):
    result = random_problem(seed, missing=False)
    names = ["x", "device", "flag"]
    tree = pt.fit_policy_tree(
        result, max_depth=depth, min_segment_share=0.1, n_bootstrap=0, features=names
    )
    expected = brute_force(result, names, depth, tree.min_segment_size, distinct_arms=False)
    assert tree.objective == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert tree.objective > tree.control_objective
    assert len(tree.segments) >= 2
    assert tree.search == "exact"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("depth", [1, 2])
def test_optimum_with_missing_values_and_three_way_constraint(seed, depth):
    # Missing values fall out of the tree (served control); sibling leaves never share an arm.
    result = random_problem(seed + 10, missing=True)
    names = ["x", "device", "flag"]
    tree = pt.fit_policy_tree(
        result, max_depth=depth, min_segment_share=0.08, n_bootstrap=0, features=names
    )
    expected = brute_force(result, names, depth, tree.min_segment_size, distinct_arms=True)
    assert tree.objective == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_exact_depth_3_reaches_the_brute_force_optimum():
    result = random_problem(7, n_visitors=120, n_values=8, missing=True)
    names = ["x", "device"]
    tree = pt.fit_policy_tree(
        result,
        max_depth=3,
        min_segment_share=0.08,
        n_bootstrap=0,
        features=names,
        search="exact",
    )
    assert tree.search == "exact"
    expected = brute_force(result, names, 3, tree.min_segment_size, distinct_arms=True)
    assert tree.objective == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # On a problem this small "auto" picks the exhaustive search.
    auto = pt.fit_policy_tree(
        result, max_depth=3, min_segment_share=0.08, n_bootstrap=0, features=names
    )
    assert auto.search == "exact"
    assert auto.to_dict() == tree.to_dict()


def test_lookahead_is_no_worse_than_the_exact_shallower_tree():
    result = random_problem(3, n_visitors=300, missing=True)
    objectives = [
        pt.fit_policy_tree(
            result, max_depth=depth, min_segment_share=0.05, n_bootstrap=0, search="lookahead"
        ).objective
        for depth in range(5)
    ]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(objectives)), objectives
    deep = pt.fit_policy_tree(
        result, max_depth=4, min_segment_share=0.05, n_bootstrap=0, search="lookahead"
    )
    assert deep.search == "lookahead"
    assert deep.depth <= 4
    check_rules_match_assign(deep, result.observed)


def test_many_level_categorical_finds_the_best_partition_with_two_arms():
    # With two arms, levels ordered by mean contrast give the optimal two-way partition.
    rng = np.random.default_rng(5)
    n_visitors = 400
    levels = np.array([f"city{i:02d}" for i in range(14)], dtype=object)
    city = rng.choice(levels, n_visitors)
    effect = dict(zip(levels, rng.normal(0, 0.3, size=levels.size), strict=True))
    mean = np.ones((n_visitors, 2))
    mean[:, 1] += np.array([effect[c] for c in city]) + rng.normal(0, 0.1, n_visitors)
    result = posterior_from_mean(mean, {"city": city})
    tree = pt.fit_policy_tree(result, max_depth=1, min_segment_share=0.05, n_bootstrap=0)
    expected = brute_force(result, ["city"], 1, tree.min_segment_size, distinct_arms=True)
    assert tree.objective == pytest.approx(expected, rel=1e-9)
    assert len(tree.segments) == 2
    check_rules_match_assign(tree, result.observed)


def test_objective_is_the_policy_value_of_the_leaves():
    result = random_problem(2)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=0)
    metric = reference_metric(result.dataset).mean(axis=(1, 2))
    labels = tree.assign().values
    arms = list(result.variants)
    served = np.zeros(labels.size, dtype=int)  # unassigned visitors: control
    for segment in tree.segments:
        served[labels == segment.id] = arms.index(segment.best_arm)
    value = metric[np.arange(labels.size), served].mean()
    assert tree.objective == pytest.approx(value, rel=1e-12)
    assert tree.control_objective == pytest.approx(metric[:, 0].mean(), rel=1e-12)
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


def test_stability_scores_planted_segments_highly():
    result = pt.example_posterior(n_visitors=3000, n_draws=40, seed=4)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=8, seed=1)
    for segment in tree.segments:
        assert 0.0 <= segment.stability_score <= 1.0
        assert segment.stability_score >= 0.75
    unstable = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    assert all(math.isnan(s.stability_score) for s in unstable.segments)


def test_stability_is_low_for_splits_of_pure_noise():
    # No structure: the bootstrap refits put their cuts elsewhere.
    rng = np.random.default_rng(0)
    n_visitors = 600
    mean = np.ones((n_visitors, 3)) + rng.normal(0, 1.0, (n_visitors, 3))
    result = posterior_from_mean(
        mean, {"x": rng.normal(size=n_visitors), "z": rng.normal(size=n_visitors)}
    )
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=10)
    assert len(tree.segments) > 1
    assert min(s.stability_score for s in tree.segments) < 0.75


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


def test_assign_is_lazy_on_dask_covariates_and_agrees():
    result = random_problem(1, n_visitors=300)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=0)
    observed = result.observed
    lazy = observed.chunk({"visitor": 70})
    labels = tree.assign(lazy)
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
    for share in (0.05, 0.2, 45):
        tree = pt.fit_policy_tree(result, max_depth=3, min_segment_share=share, n_bootstrap=0)
        expected = share if isinstance(share, int) else math.ceil(share * 300)
        assert tree.min_segment_size == expected
        counts = np.bincount(tree.assign().values + 1)[1:]
        assert (counts >= expected).all()
    assert len(pt.fit_policy_tree(result, min_segment_share=151, n_bootstrap=0).segments) == 1


# --------------------------------------------------------------------------- inputs


def test_families_chains_and_dask_give_the_same_tree():
    ds = random_dataset("hurdle", n_visitors=200, n_draws=12, n_chains=2, seed=3)
    result = pt.posterior(ds)
    eager = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=3)
    lazy = pt.fit_policy_tree(
        pt.posterior(ds.chunk({"visitor": 45})),
        max_depth=2,
        min_segment_share=0.1,
        n_bootstrap=3,
    )
    a, b = eager.to_dict(), lazy.to_dict()
    assert a["nodes"] == b["nodes"]
    for x, y in zip(a["segments"], b["segments"], strict=True):
        assert x["rule"] == y["rule"] and x["best_arm"] == y["best_arm"]
        assert x["arm_best_probabilities"] == y["arm_best_probabilities"]
        assert x["gate_estimate"] == pytest.approx(y["gate_estimate"], rel=1e-9, abs=1e-12)
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
        ({"max_depth": -1}, ValueError, "max_depth"),
        ({"max_depth": 7}, ValueError, "max_depth"),
        ({"max_depth": 2.0}, TypeError, "max_depth"),
        ({"min_segment_share": 0.0}, ValueError, "min_segment_share"),
        ({"min_segment_share": 0.6}, ValueError, "min_segment_share"),
        ({"min_segment_share": -0.1}, ValueError, "min_segment_share"),
        ({"min_segment_share": 0}, ValueError, "min_segment_share"),
        ({"min_segment_share": True}, TypeError, "min_segment_share"),
        ({"features": ["height"]}, ValueError, "unknown feature 'height'"),
        ({"features": ["variant"]}, ValueError, "not a covariate"),
        ({"features": ["x", "x"]}, ValueError, "more than once"),
        ({"n_bootstrap": -1}, ValueError, "n_bootstrap"),
        ({"search": "greedy"}, ValueError, "search"),
    ],
)
def test_invalid_arguments_raise(kwargs, error, match):
    result = random_problem(0, n_visitors=60)
    with pytest.raises(error, match=match):
        pt.fit_policy_tree(result, **kwargs)


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
    for a, b in zip(back.segments, tree.segments, strict=True):
        assert (a.id, a.rule, a.best_arm, a.population_share) == (
            b.id,
            b.rule,
            b.best_arm,
            b.population_share,
        )
        assert a.arm_best_probabilities == b.arm_best_probabilities
        assert a.gate_interval == b.gate_interval
        if n_bootstrap:
            assert a == b
        else:
            assert math.isnan(a.stability_score)
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
