"""PolicyTreeResult: rules == assign, laziness, nodes, segments, serialisation, text and plot
(``pytyche.policy_tree.result``)."""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib
import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from policy_tree_helpers import (
    check_rules_match_assign,
    random_problem,
)
from pytyche.policy_tree import PolicyTreeResult

from helpers import counting_scheduler

matplotlib.use("Agg")


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
    with counting_scheduler(computes=0):
        labels = tree.assign(observed.chunk({"visitor": 70}))
    assert labels.chunks is not None
    np.testing.assert_array_equal(labels.values, tree.assign(observed).values)
    assert labels.dims == ("visitor",)


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
