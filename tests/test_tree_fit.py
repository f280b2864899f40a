"""fit_policy_tree: planted-split recovery, stability, leaf summaries, dask posteriors in two
computes, validation and determinism (``pytyche.policy_tree.fit``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import pytyche as pt
from policy_tree_helpers import (
    check_rules_match_assign,
    posterior_from_mean,
    random_problem,
)
from pytyche.policy_tree import PolicyTreeResult
from pytyche.policy_tree.fit import tree_stability

from helpers import counting_scheduler, random_dataset
from reference import reference_members, reference_metric


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
        min_stability=0.0,  # keep the noise tree, to read its leaves' scores
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
        result,
        max_depth=2,
        min_segment_share=0.1,
        n_bootstrap=n_bootstrap,
        seed=7,
        min_stability=0.0,  # the depth-2 tree, whatever its stability
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
        ({"min_stability": 1.5}, ValueError, r"min_stability must be in \[0, 1\], got 1\.5"),
        ({"min_stability": float("nan")}, ValueError, "min_stability .*got nan"),
        ({"min_stability": "high"}, TypeError, "min_stability must be a real number .*'high'"),
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


def test_deterministic_given_the_seed():
    result = random_problem(8, n_visitors=300)
    fits = [
        pt.fit_policy_tree(result, max_depth=3, min_segment_share=0.05, n_bootstrap=6, seed=s)
        for s in (1, 1, 2)
    ]
    assert fits[0].to_dict() == fits[1].to_dict()
    assert fits[0].segments == fits[1].segments
    assert fits[0].to_dict()["nodes"] == fits[2].to_dict()["nodes"]  # the tree needs no seed


def test_stability_does_not_depend_on_the_threads():
    # Refits run in parallel; the resamples are drawn in order, so the scores are the same.
    result = random_problem(11, n_visitors=300)
    scores = []
    for threads in (1, 3):
        with pt.set_options(num_threads=threads):
            tree = pt.fit_policy_tree(
                result, max_depth=3, min_segment_share=0.05, n_bootstrap=7, seed=3
            )
        scores.append([s.stability_score for s in tree.segments])
    assert scores[0] == scores[1]
    assert any(0 < s < 1 for s in scores[0]) or len(scores[0]) > 1


# --------------------------------------------------------------------------- ordered text

# Levels whose text sorts differently from their order, as on the e-mail experiment.
ORDERED = ["low", "medium", "high", "very high", "extreme", "absurd"]


def ordered_posterior(gain_by_rank, ordered: bool = True, seed: int = 0):
    """A two-arm posterior from observed_data: one text covariate ``tier`` (ordered or not),
    the treatment's per-visitor gain ``gain_by_rank[rank of tier] + noise``."""
    rng = np.random.default_rng(seed)
    n_visitors = 1200
    ranks = rng.integers(0, len(ORDERED), size=n_visitors)
    tier = np.array(ORDERED, dtype=object)[ranks]
    gain = np.asarray(gain_by_rank, dtype=float)[ranks] + rng.normal(0, 0.5, n_visitors)
    half = n_visitors // 2
    frames = {}
    for arm, rows in (("control", slice(0, half)), ("A", slice(half, None))):
        values = pd.Categorical(tier[rows], categories=ORDERED, ordered=ordered)
        frames[arm] = pd.DataFrame({"tier": values, "y": np.zeros(len(values))})
    observed = pt.observed_data(frames, outcome="y")
    mean = np.column_stack([np.zeros(n_visitors), gain])
    draws = mean[:, None, :] + np.array([-0.25, 0.25])[None, :, None]
    return pt.from_arrays("continuous", ["control", "A"], observed, expected=draws)


def leaf_levels(tree) -> list[tuple]:
    return [s.rule.clauses[0].literals for s in tree.segments]


def test_ordered_text_splits_at_a_threshold_of_its_order():
    # A is best from "very high" up: the rule names that contiguous range, in order.
    result = ordered_posterior([-1, -1, -1, 1, 1, 1])
    tree = pt.fit_policy_tree(result, max_depth=2, n_bootstrap=0)
    assert [str(s.rule) for s in tree.segments] == [
        "tier in ('low', 'medium', 'high')",
        "tier in ('very high', 'extreme', 'absurd')",
    ]
    check_rules_match_assign(tree, result.observed)
    for segment in tree.segments:
        parsed = pt.SegmentRule.parse(str(segment.rule))
        np.testing.assert_array_equal(
            parsed.evaluate(result.observed).values, segment.rule.evaluate(result.observed).values
        )


@pytest.mark.parametrize("max_depth", [1, 2, 3])
def test_ordered_text_leaves_are_contiguous_ranges_where_unordered_text_groups_freely(max_depth):
    # A pays at both ends of the order: as text, one split groups the two ends together
    # (a non-contiguous set); ordered, every leaf is a range of the order.
    gains = [1, 1, -1, -1, 1, 1]
    ordered = pt.fit_policy_tree(ordered_posterior(gains), max_depth=max_depth, n_bootstrap=0)
    for levels in leaf_levels(ordered):
        ranks = [ORDERED.index(level) for level in levels]
        assert ranks == list(range(ranks[0], ranks[0] + len(ranks))), levels
    text = pt.fit_policy_tree(ordered_posterior(gains, ordered=False), max_depth=1, n_bootstrap=0)
    assert sorted(map(sorted, leaf_levels(text))) == [
        ["absurd", "extreme", "low", "medium"],
        ["high", "very high"],
    ]


# --------------------------------------------------------------------------- 0/1 flags


@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_zero_one_covariates_print_as_equalities_with_the_same_members(dtype):
    # mens (0/1) decides the best arm; the same column as 0/2 is cut at a threshold. The
    # trees put the same visitors in the same leaves; only the rule text differs.
    rng = np.random.default_rng(5)
    n_visitors = 600
    mens = rng.integers(0, 2, size=n_visitors).astype(dtype)
    newbie = rng.integers(0, 2, size=n_visitors).astype(dtype)
    if dtype == np.float64:
        newbie[::17] = np.nan
    gain = np.where(mens == 1, 1.0, -1.0) + np.where(newbie == 1, 0.4, 0.0)
    mean = np.column_stack([np.zeros(n_visitors), gain + rng.normal(0, 0.3, n_visitors)])
    flags = posterior_from_mean(mean, {"mens": mens, "newbie": newbie})
    scaled = posterior_from_mean(mean, {"mens": 2 * mens, "newbie": 2 * newbie})
    trees = [
        pt.fit_policy_tree(r, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
        for r in (flags, scaled)
    ]
    rules = [str(s.rule) for s in trees[0].segments]
    assert "mens == 0" in rules[0] and "mens == 1" in rules[-1]
    assert not any(op in rule for rule in rules for op in ("<=", ">"))
    assert {c.value for s in trees[0].segments for c in s.rule.clauses} <= {0, 1}
    assert all(type(c.value) is int for s in trees[0].segments for c in s.rule.clauses)
    assert str(trees[1].segments[0].rule).startswith("mens <= 0")
    np.testing.assert_array_equal(trees[0].assign().values, trees[1].assign().values)
    assert trees[0].objective == trees[1].objective
    check_rules_match_assign(trees[0], flags.observed)


# --------------------------------------------------------------------------- min_stability


def noise_posterior(n_visitors: int = 600, seed: int = 0):
    """No segment effect at all: every visitor's arms differ by noise only."""
    rng = np.random.default_rng(seed)
    mean = np.ones((n_visitors, 3)) + rng.normal(0, 1.0, (n_visitors, 3))
    covariates = {"x": rng.normal(size=n_visitors), "z": rng.normal(size=n_visitors)}
    return posterior_from_mean(mean, covariates)


def test_an_unstable_tree_gives_way_to_a_simpler_one_and_says_so():
    result = noise_posterior()
    settings = {"max_depth": 2, "min_segment_share": 0.1, "n_bootstrap": 10, "seed": 1}
    kept = pt.fit_policy_tree(result, **settings)
    fitted = pt.fit_policy_tree(result, **settings, min_stability=0.0)
    assert fitted.depth == 2 and fitted.stability < 0.7 and not fitted.rejected_trees
    assert fitted.stability_note is None
    # The depth-2 tree of noise is set aside; what is kept reaches 0.7, or is the root.
    assert kept.rejected_trees[0] == {"depth": 2, "stability": fitted.stability}
    assert kept.depth < 2
    assert kept.depth == 0 or kept.stability >= 0.7
    assert all(tree["stability"] < 0.7 for tree in kept.rejected_trees)
    assert kept.min_stability == 0.7
    note = kept.stability_note
    assert note is not None
    assert f"depth 2 (stability {fitted.stability:.2f})" in note
    assert "below min_stability 0.7" in note
    if kept.depth == 0:
        assert [str(s.rule) for s in kept.segments] == ["everyone"]
        assert "kept the root alone (one segment, everyone)" in note
    assert note in str(kept)
    assert f"kept for stability (depth 2: {fitted.stability:.2f} < 0.7)" in repr(kept)
    assert "set aside" in kept._repr_html_()
    again = PolicyTreeResult.from_dict(json.loads(json.dumps(kept.to_dict())))
    assert again.stability_note == note
    assert again.rejected_trees == kept.rejected_trees
    assert again.stability == kept.stability


def test_the_stability_of_a_tree_is_that_of_its_weakest_leaf():
    assert tree_stability(np.array([1.0, 0.4, 0.9])) == 0.4
    assert math.isnan(tree_stability(np.array([np.nan, np.nan])))
    # The root alone: every refit's root is the whole sample.
    result = noise_posterior()
    root = pt.fit_policy_tree(result, max_depth=0, n_bootstrap=3)
    assert root.stability == 1.0 and root.stability_note is None


def test_a_strongly_segmented_tree_keeps_its_depth_and_result():
    result = pt.example_posterior(n_visitors=3000, n_draws=40, seed=4)
    settings = {"max_depth": 2, "min_segment_share": 0.05, "n_bootstrap": 10, "seed": 1}
    kept = pt.fit_policy_tree(result, **settings)
    unchecked = pt.fit_policy_tree(result, **settings, min_stability=0.0)
    assert kept.depth == 2 and kept.stability >= 0.9
    assert kept.rejected_trees == () and kept.stability_note is None
    assert "stability" not in repr(kept)
    a, b = kept.to_dict(), unchecked.to_dict()
    assert a.pop("min_stability") == 0.7 and b.pop("min_stability") == 0.0
    assert a == b


def test_a_tree_written_before_min_stability_reads_back_without_a_note():
    result = noise_posterior(200)
    data = pt.fit_policy_tree(result, max_depth=1, n_bootstrap=0).to_dict()
    for key in ("stability", "min_stability", "rejected_trees"):
        del data[key]
    old = PolicyTreeResult.from_dict(data)
    assert math.isnan(old.stability) and old.min_stability == 0.0
    assert old.rejected_trees == () and old.stability_note is None
