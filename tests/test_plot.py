"""pytyche.plot: every figure shows the numbers of the result it is given (Agg backend)."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt
from pytyche.policy_tree.result import split_clause
from pytyche.sequential import logged_observed, sequential_experiment, srm_test

from helpers import counting_scheduler

matplotlib.use("Agg")  # no display in tests

SEGMENTS = {0: "device == 'mobile'", 1: "everyone", 2: "age > 40"}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def posterior():
    return pt.example_posterior(n_visitors=600, n_draws=60, n_chains=2, seed=1)


@pytest.fixture(scope="module")
def summary(posterior):
    return pt.segment_summary(posterior, SEGMENTS).compute()


def texts_by_cell(ax, shape):
    return np.array([t.get_text() for t in ax.texts], dtype=object).reshape(shape)


def parse(text: str) -> tuple[float, float, int]:
    """``"0.62 ± 0.01"`` → (0.62, 0.01, decimals)."""
    value, error = text.split(" ± ")
    return float(value), float(error), len(value.split(".")[1])


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("epsilon", [0.0, 0.3])  # 0.3: a floor of 0.1 that lifts some arms
def test_allocation_cells_are_the_thompson_weights_and_their_mcse(posterior, summary, epsilon):
    weights = pt.thompson_allocation(posterior, SEGMENTS, epsilon=epsilon)
    ax = pt.plot.allocation(summary, epsilon=epsilon)
    arms = list(summary["arm"].values)
    cells = texts_by_cell(ax, (3, 3))
    for i, segment in enumerate(SEGMENTS):
        for j, arm in enumerate(arms):
            value, error, decimals = parse(cells[i, j])
            # Shown rounded to `decimals`: equal to within half a unit of the last digit.
            half = 0.5 * 10.0**-decimals + 1e-12
            assert abs(value - weights[segment][arm]) <= half, (segment, arm, cells[i, j])
            mcse = float(summary["prob_best_mcse"].sel(segment=segment, arm=arm))
            assert abs(error - mcse) <= half, (segment, arm, cells[i, j])
    shown = [[weights[segment][arm] for arm in arms] for segment in SEGMENTS]
    np.testing.assert_allclose(ax.images[0].get_array(), shown, rtol=0, atol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == arms
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "0: device == 'mobile'",
        "1: everyone",
        "2: age > 40",
    ]


def test_allocation_shows_the_error_to_one_significant_figure(summary):
    # Hand-set weights and errors: the decimals follow the error, two at least.
    table = summary.isel(segment=[0, 1]).copy(deep=True)
    table["prob_best"][:] = [[0.6234, 0.3, 0.0766], [np.nan, np.nan, np.nan]]
    table["prob_best_mcse"][:] = [[0.0123, 0.0043, 0.0], [np.nan, np.nan, np.nan]]
    ax = pt.plot.allocation(table)
    assert texts_by_cell(ax, (2, 3)).tolist() == [
        ["0.62 ± 0.01", "0.300 ± 0.004", "0.08 ± 0.00"],
        ["–", "–", "–"],  # a segment without members
    ]


def test_allocation_selects_segments_in_the_given_order(summary):
    ax = pt.plot.allocation(summary, segments=[2, 0])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["2: age > 40", "0: device == 'mobile'"]
    np.testing.assert_array_equal(
        ax.images[0].get_array(), summary["prob_best"].sel(segment=[2, 0]).values
    )
    one = pt.plot.allocation(summary, segments=1)
    assert len(one.texts) == summary.sizes["arm"]


def test_allocation_computes_a_lazy_summary_once(posterior):
    lazy = pt.segment_summary(posterior.dataset.chunk({"visitor": 200}).tyche.result, SEGMENTS)
    assert lazy["prob_best"].chunks is not None
    with counting_scheduler(computes=1):
        ax = pt.plot.allocation(lazy)
    assert len(ax.texts) == 9


def test_drawing_into_a_given_axes(summary):
    fig, (left, right) = plt.subplots(1, 2)
    assert pt.plot.allocation(summary, ax=left) is left
    assert pt.plot.contrasts(summary, ax=right) is right
    assert left.figure is fig and len(left.texts) == 9


# --------------------------------------------------------------------------- contrasts


def test_contrast_intervals_are_the_summary_intervals(summary):
    ax = pt.plot.contrasts(summary)
    intervals = [c for c in ax.collections if c.get_label() in ("A", "B")]
    assert [c.get_label() for c in intervals] == ["A", "B"]  # control is not drawn
    means = [c for c in ax.collections if c not in intervals]
    for arm, lines, dots in zip(["A", "B"], intervals, means, strict=True):
        ends = np.array([segment[:, 0] for segment in lines.get_segments()])  # (segment, 2)
        np.testing.assert_array_equal(ends[:, 0], summary["contrast_lower"].sel(arm=arm))
        np.testing.assert_array_equal(ends[:, 1], summary["contrast_upper"].sel(arm=arm))
        np.testing.assert_array_equal(dots.get_offsets()[:, 0], summary["contrast"].sel(arm=arm))
        # Interval and dot of a segment sit on one row.
        rows = np.array([segment[0, 1] for segment in lines.get_segments()])
        np.testing.assert_array_equal(dots.get_offsets()[:, 1], rows)
    assert "central 80% interval" in ax.get_xlabel()
    assert "against control" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "0: device == 'mobile'",
        "1: everyone",
        "2: age > 40",
    ]


def test_contrasts_need_a_treatment(summary):
    with pytest.raises(ValueError, match=r"arms \['control'\], no treatment"):
        pt.plot.contrasts(summary.isel(arm=[0]))


# --------------------------------------------------------------------------- bad input


def test_a_posterior_is_refused_with_the_fix(posterior):
    with pytest.raises(TypeError, match=r"got HurdleBCFResult: call pt\.segment_summary"):
        pt.plot.allocation(posterior)
    with pytest.raises(TypeError, match=r"got dict: call pt\.segment_summary"):
        pt.plot.contrasts(pt.thompson_allocation(posterior, SEGMENTS))


def test_a_dataset_that_is_not_a_summary_is_refused(summary):
    with pytest.raises(ValueError, match=r"lacks \['prob_best_mcse'\]"):
        pt.plot.allocation(summary.drop_vars("prob_best_mcse"))
    with pytest.raises(ValueError, match=r"lacks \['contrast_lower', 'contrast_upper'\]"):
        pt.plot.contrasts(summary[["contrast"]])


@pytest.mark.parametrize("function", [pt.plot.allocation, pt.plot.contrasts])
def test_an_unknown_segment_is_named(summary, function):
    with pytest.raises(ValueError, match=r"segments \[7\] are not in the summary, whose "):
        function(summary, segments=[0, 7])
    with pytest.raises(ValueError, match=r"no segment, whose segments are \[0, 1, 2\]"):
        function(summary, segments=[])


def test_ax_must_be_an_axes(summary):
    fig = plt.figure()
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes or None, got Figure"):
        pt.plot.allocation(summary, ax=fig)


def test_missing_matplotlib_names_the_extra(summary, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # the import raises
    with pytest.raises(
        ImportError, match=r'pytyche\.plot\.allocation needs matplotlib.*"pytyche\[plot\]"'
    ):
        pt.plot.allocation(summary)


def test_import_pytyche_does_not_import_matplotlib():
    code = "import sys, pytyche; pytyche.plot.allocation; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- policy tree


@pytest.fixture(scope="module")
def tree(posterior):
    return pt.fit_policy_tree(posterior, max_depth=2, min_segment_share=0.05, n_bootstrap=0)


def test_policy_tree_has_one_box_per_leaf_and_a_clause_per_edge(tree):
    ax = pt.plot.policy_tree(tree)
    texts = [t.get_text() for t in ax.texts]
    boxes = [t for t in texts if t.startswith("segment ")]
    assert len(boxes) == len(tree.segments) >= 3
    for segment in tree.segments:
        p = segment.arm_best_probabilities[segment.best_arm]
        box = (
            f"segment {segment.id}\n{segment.population_share:.1%} of visitors\n"
            f"best: {segment.best_arm} (P={p:.2f})"
        )
        assert texts.count(box) == 1
    nodes = tree.to_dict()["nodes"]
    splits = [n for n in nodes if n["split"] is not None]
    clauses = [str(split_clause(n["split"], side)) for n in splits for side in ("left", "right")]
    assert sorted(t for t in texts if t in clauses) == sorted(clauses)
    assert len(ax.lines) == len(nodes) - 1  # one per edge
    assert f"{nodes[0]['members']:,} visitors" in texts


def test_policy_tree_layout_leaves_left_to_right_edges_join_boxes(tree):
    ax = pt.plot.policy_tree(tree)
    nodes = tree.to_dict()["nodes"]
    depth_of_leaf = {n["segment"]: n["depth"] for n in nodes if n["split"] is None}
    at = {t.get_text(): t.get_position() for t in ax.texts}
    leaves = [at[next(k for k in at if k.startswith(f"segment {s.id}\n"))] for s in tree.segments]
    xs = [x for x, _ in leaves]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)  # segment ids run left to right
    assert [y for _, y in leaves] == [-depth_of_leaf[s.id] for s in tree.segments]
    # Node boxes: the leaves' and the inner nodes' ("1,234 visitors"), not the edge labels.
    boxes = {
        tuple(t.get_position())
        for t in ax.texts
        if t.get_text().startswith("segment ") or t.get_text().endswith(" visitors")
    }
    assert len(boxes) == len(nodes)
    for line in ax.lines:  # from a box one level down to a box
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        assert (x0, y0) in boxes and (x1, y1) in boxes and y1 == y0 - 1


def test_tree_plot_forwards_to_the_plot_module(tree):
    _, ax = plt.subplots()
    assert tree.plot(ax=ax) is ax
    same = pt.plot.policy_tree(tree)
    assert [t.get_text() for t in ax.texts] == [t.get_text() for t in same.texts]
    # A tree rebuilt without its posterior draws the same.
    rebuilt = pt.PolicyTreeResult.from_dict(tree.to_dict())
    assert [t.get_text() for t in rebuilt.plot().texts] == [t.get_text() for t in same.texts]


def test_policy_tree_refuses_other_objects(tree):
    with pytest.raises(TypeError, match=r"takes a PolicyTreeResult, got dict: fit one"):
        pt.plot.policy_tree(tree.to_dict())


# --------------------------------------------------------------------------- regret


def test_regret_lines_are_the_simulated_cumulative_regret():
    # One round: the real output's layout without a posterior fit (the fit starts at round 2).
    result = pt.simulate_sequential(rounds=1, schedule=300, seed=0)
    ax = pt.plot.regret(result)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["sequential", "thompson", "uniform"]
    for line, policy in zip(lines, ["sequential", "thompson", "uniform"], strict=True):
        np.testing.assert_array_equal(line.get_xdata(), [300])
        np.testing.assert_array_equal(
            line.get_ydata(), result["cumulative_regret"].sel(policy=policy).values
        )


def test_regret_x_is_the_cumulative_visitors():
    simulation = xr.Dataset(
        {
            "cumulative_regret": (("round", "policy"), [[1.0, 2.0], [3.0, 7.0], [4.0, 12.0]]),
            "visitors": ("round", [100, 200, 400]),
        },
        coords={"policy": ["sequential", "uniform"]},
    )
    ax = pt.plot.regret(simulation)
    uniform = ax.get_lines()[1]
    np.testing.assert_array_equal(uniform.get_xdata(), [100, 300, 700])
    np.testing.assert_array_equal(uniform.get_ydata(), [2.0, 7.0, 12.0])


def test_regret_refuses_other_results(summary):
    with pytest.raises(ValueError, match=r"lacks \['cumulative_regret', 'visitors'\]"):
        pt.plot.regret(summary)
    with pytest.raises(TypeError, match=r"simulate_sequential \(an xarray.Dataset\), got list"):
        pt.plot.regret([1, 2, 3])


# --------------------------------------------------------------------------- SRM


def srm_check():
    """Two rounds of (cell, arm) counts; the second sends explore traffic to control."""
    dims = ("round", "cell", "arm")
    coords = {"round": [0, 1], "cell": ["control", "explore"], "arm": ["control", "A", "B"]}
    expected = [[[50.0, 0.0, 0.0], [300.0, 300.0, 3.0]]] * 2
    observed = [[[52, 0, 0], [305, 294, 2]], [[50, 0, 0], [380, 220, 3]]]  # totals as planned
    return srm_test(
        xr.DataArray(observed, dims=dims, coords=coords),
        xr.DataArray(expected, dims=dims, coords=coords),
    )


def cell_texts(ax):
    table = ax.tables[0]
    n_rows = 1 + max(row for row, _ in table.get_celld())
    n_cols = 1 + max(col for _, col in table.get_celld())
    return [[table[r, c].get_text().get_text() for c in range(n_cols)] for r in range(n_rows)]


def test_srm_table_shows_counts_p_values_and_flags():
    check = srm_check()
    assert bool(check["flagged"].sel(round=1)) and not bool(check["flagged"].sel(round=0))
    ax = pt.plot.srm(check)
    p0, p1 = (float(p) for p in check["p_value"].values)
    pooled = float(check["pooled_p_value"])
    assert cell_texts(ax) == [
        ["round", "cell", "control", "A", "B", "p-value"],
        ["0", "control", "52 / 50.0", "–", "–", f"{p0:.3g}"],
        ["", "explore", "305 / 300.0", "294 / 300.0", "2 / 3.0", ""],
        ["1", "control", "50 / 50.0", "–", "–", f"{p1:.3g}  SRM"],
        ["", "explore", "380 / 300.0", "220 / 300.0", "3 / 3.0", ""],
        ["all", "pooled", "", "", "", f"{pooled:.3g}" + ("  SRM" if pooled < 0.001 else "")],
    ]
    table = ax.tables[0]
    flagged = matplotlib.colors.to_rgba(pt.plot.FLAGGED)
    assert table[3, 0].get_facecolor() == flagged and table[4, 3].get_facecolor() == flagged
    assert table[1, 0].get_facecolor() != flagged
    # Expected below 5 visitors: left out of the test, shown grey.
    grey = matplotlib.colors.to_rgba(pt.plot.SKIPPED)
    assert matplotlib.colors.to_rgba(table[2, 4].get_text().get_color()) == grey
    assert matplotlib.colors.to_rgba(table[2, 3].get_text().get_color()) != grey
    assert "p < 0.001" in ax.get_title()


def test_srm_of_an_experiment_is_its_srm_table():
    arms = ["control", "A", "B"]
    exp = sequential_experiment(arms, family="continuous", schedule=400, seed=4, name="plot")
    with pytest.raises(ValueError, match="nothing recorded yet"):
        pt.plot.srm(exp)
    rng = np.random.default_rng(0)
    visitors = {
        "visitor_id": [f"v{i}" for i in range(400)],
        "device": rng.choice(["mobile", "desktop"], 400),
    }
    served = exp.plan().assign(pd.DataFrame(visitors))
    served["outcome"] = 0.0
    exp.record(logged_observed(served))
    check = exp.srm()
    rows = cell_texts(pt.plot.srm(exp))
    for c, cell in enumerate(check["cell"].values):
        for a, arm in enumerate(arms):
            o = float(check["observed"].sel(round=0, cell=cell, arm=arm))
            e = float(check["expected"].sel(round=0, cell=cell, arm=arm))
            assert rows[1 + c][2 + a] == ("–" if o == e == 0 else f"{o:,.0f} / {e:,.1f}")


def test_srm_refuses_other_objects(summary):
    with pytest.raises(ValueError, match=r"lacks \['observed', 'expected', 'p_value'"):
        pt.plot.srm(summary)
    with pytest.raises(TypeError, match=r"takes a SequentialExperiment .*got int"):
        pt.plot.srm(3)
