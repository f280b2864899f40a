"""Rich Jupyter views (``_repr_html_``): what each shows, cell by cell; escaping; no computes.

The views are parsed back with the standard library's HTML parser, so the tests read the
cells an analyst sees (text unescaped, hover titles), not substrings of markup.
"""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt
from pytyche import _html
from pytyche.policy_tree import PolicyTreeResult
from pytyche.segments import Clause
from pytyche.sequential import RoundPlan, logged_observed, sequential_experiment
from pytyche.sequential import experiment as experiment_module
from pytyche.setup_check import SetupReport

from helpers import counting_scheduler

HOSTILE = "<script>alert(1)</script>"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def no_ids(markup: str) -> str:
    """xarray's view with its random element ids (one per call) blanked out."""
    return UUID.sub("", markup)


class View(HTMLParser):
    """A parsed view: its title, tables (rows of (text, title) cells), paragraphs, items."""

    def __init__(self, markup: str):
        super().__init__()
        self.tables: list[list[list[tuple[str, str | None]]]] = []
        self.paragraphs: list[str] = []
        self.items: list[str] = []
        self.summaries: list[str] = []
        self.pre: list[str] = []
        self.title = ""
        self._open: list[str] = []
        self._text: list[str] = []
        self._cell_title: str | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell_title = dict(attrs).get("title")
        if tag in ("td", "th", "p", "li", "summary", "pre", "strong"):
            if tag != "strong":
                self._text = []
            self._open.append(tag)

    def handle_endtag(self, tag):
        if not self._open or self._open[-1] != tag:
            return
        self._open.pop()
        text = "".join(self._text)
        if tag in ("td", "th"):
            self.tables[-1][-1].append((text, self._cell_title))
        elif tag == "p":
            self.paragraphs.append(text)
        elif tag == "li":
            self.items.append(text)
        elif tag == "summary":
            self.summaries.append(text)
        elif tag == "pre":
            self.pre.append(text)
        elif tag == "strong" and not self.title and "p" in self._open:
            self.title = text

    def handle_data(self, data):
        self._text.append(data)

    def table(self, index: int) -> list[list[str]]:
        """Texts of one table's cells, row by row (the header row first)."""
        return [[text for text, _ in row] for row in self.tables[index]]

    def titles(self, index: int) -> list[list[str | None]]:
        return [[title for _, title in row] for row in self.tables[index]]

    def fields(self, index: int = 0) -> dict[str, str]:
        return {row[0]: row[1] for row in self.table(index)}


# --------------------------------------------------------------------------- building blocks


def test_building_blocks_escape_every_text():
    assert _html.escape(HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    markup = _html.view(
        HOSTILE,
        _html.fields([(HOSTILE, _html.Cell(HOSTILE, HOSTILE, strong=True))]),
        _html.table([HOSTILE], [[HOSTILE]]),
        _html.paragraph(HOSTILE),
        _html.bullets([HOSTILE]),
        _html.details(HOSTILE, _html.preformatted(HOSTILE)),
    )
    assert "<script>" not in markup and '"' + HOSTILE not in markup
    view = View(markup)
    assert view.title == HOSTILE
    assert view.fields() == {HOSTILE: HOSTILE} and view.titles(0) == [[None, HOSTILE]]
    assert view.table(1) == [[HOSTILE], [HOSTILE]]
    assert view.paragraphs[-1] == HOSTILE and view.items == [HOSTILE]
    assert view.summaries == [HOSTILE] and view.pre == [HOSTILE]
    # A quote in a hover title cannot close the attribute.
    assert View(_html.table(["x"], [[_html.Cell("v", '" onmouseover="x')]])).titles(0) == [
        [None],
        ['" onmouseover="x'],
    ]


def test_number_formats():
    assert _html.chunk_text((1000, 1000, 1000, 500)) == "3 × 1,000 + 500"
    assert _html.chunk_text((200,)) == "200 (one chunk)"
    assert _html.chunk_text(None) == "in memory"
    assert _html.chunk_text((1, 2, 3, 4, 5, 6)) == "1 + 2 + 3 + 4 + … (6 chunks)"
    assert _html.byte_size(100) == "100 B" and _html.byte_size(1536) == "1.5 KiB"
    assert _html.byte_size(36 * 2**30) == "36.0 GiB"
    assert _html.percent(0.1234) == "12.3%" and _html.percent(math.nan) == "n/a"
    assert _html.number(None) == "n/a" and _html.number(0.5, "+.2f") == "+0.50"
    assert _html.integer(1234567) == "1,234,567"


# --------------------------------------------------------------------------- posteriors


@pytest.mark.parametrize(
    ("family", "n_chains", "names"),
    [
        ("hurdle", None, ["conversion", "value"]),
        ("binary", 2, ["conversion"]),
        ("continuous", None, ["expected"]),
    ],
)
def test_posterior_view_shows_family_arms_sizes_and_covariates(family, n_chains, names):
    result = pt.example_posterior(
        n_visitors=120, n_draws=10, arms=("ctl", "A", "B"), family=family, n_chains=n_chains
    )
    assert isinstance(result, pt.BCFResult)
    view = View(result._repr_html_())
    samples = 10 * (n_chains or 1)
    assert view.title == (
        f"{type(result).__name__}: {family}, 120 visitors × {samples} samples × 3 arms"
    )
    fields = view.fields(0)
    assert fields["family"] == f"{family}: metric = {' × '.join(names)}"
    assert fields["arms"] == "ctl (control), A, B"
    assert fields["samples"] == (f"{samples} (chain × draw)" if n_chains else "10 (draw)")
    assert fields["visitors"] == "120"
    nbytes = sum(result.dataset[n].nbytes for n in names)
    assert (
        fields["bytes"]
        == f"{_html.byte_size(nbytes)} (" + ", ".join(f"{n} float32" for n in names) + ")"
    )
    assert fields["storage"] == "numpy, in memory"
    dims = view.table(1)
    assert dims[0] == ["dim", "size", "what", *(f"chunks of {n}" for n in names)]
    in_memory = ["in memory"] * len(names)
    expected = [["visitor", "120", "visitors", *in_memory]]
    if n_chains:
        expected.append(["chain", "2", "chains", *in_memory])
    expected += [
        ["draw", "10", "draws per chain" if n_chains else "draws", *in_memory],
        ["arm", "3", "arms", *in_memory],
    ]
    assert dims[1:] == expected
    assert view.table(2) == [
        ["observed", "role", "kind", "dtype", "storage"],
        ["variant", "arm served", "text", "object", "in memory"],
        ["device", "covariate", "text", "object", "in memory"],
        ["age", "covariate", "number", "float64", "in memory"],
        ["returning", "covariate", "bool", "bool", "in memory"],
    ]


def test_lazy_posterior_view_computes_nothing_and_shows_the_chunks():
    # Draws and covariates all lazy: a text covariate of dtype object cannot be classified
    # without reading it, so the view says so instead of computing.
    result = pt.example_posterior(n_visitors=1_000, n_draws=8, n_chains=2, chunks=300)
    lazy = pt.posterior(result.dataset.chunk({"visitor": 300}))
    with counting_scheduler(0):
        view = View(lazy._repr_html_())
    assert view.fields(0)["storage"] == "dask, lazy (this view reads nothing)"
    assert view.table(1)[1:] == [
        ["visitor", "1,000", "visitors", "3 × 300 + 100", "3 × 300 + 100"],
        ["chain", "2", "chains", "2 (one chunk)", "2 (one chunk)"],
        ["draw", "8", "draws per chain", "8 (one chunk)", "8 (one chunk)"],
        ["arm", "3", "arms", "3 (one chunk)", "3 (one chunk)"],
    ]
    rows = {row[0]: row[1:] for row in view.table(2)[1:]}
    assert rows["device"] == ["covariate", "not read (lazy object column)", "object", "lazy"]
    assert rows["age"] == ["covariate", "number", "float64", "lazy"]
    assert rows["returning"] == ["covariate", "bool", "bool", "lazy"]


def test_view_of_a_posterior_opened_from_a_store_computes_nothing(tmp_path):
    result = pt.example_posterior(n_visitors=200, n_draws=6, family="binary")
    pt.to_zarr(result, tmp_path / "p.zarr")
    opened = pt.open_posterior(tmp_path / "p.zarr")
    with counting_scheduler(0):
        view = View(opened._repr_html_())
    assert view.fields(0)["storage"] == "dask, lazy (this view reads nothing)"
    assert view.table(1)[1][:3] == ["visitor", "200", "visitors"]
    assert sorted(row[0] for row in view.table(2)[1:]) == ["age", "device", "returning", "variant"]


def test_posterior_view_escapes_arm_and_covariate_names():
    result = pt.example_posterior(n_visitors=60, n_draws=4, arms=("control", HOSTILE))
    dataset = result.dataset.assign_coords({HOSTILE: ("visitor", np.arange(60.0))})
    markup = pt.posterior(dataset)._repr_html_()
    assert "<script>" not in markup
    view = View(markup)
    assert view.fields(0)["arms"] == f"control (control), {HOSTILE}"
    assert view.table(2)[-1] == [HOSTILE, "covariate", "number", "float64", "in memory"]


# --------------------------------------------------------------------------- policy tree


def test_tree_view_shows_the_leaf_table_and_the_tree():
    result = pt.example_posterior(n_visitors=600, n_draws=30)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.1, n_bootstrap=0)
    view = View(tree._repr_html_())
    assert view.title == (
        f"PolicyTreeResult: {len(tree.segments)} segment(s) over 600 visitors, arms control, A, B"
    )
    fields = view.fields(0)
    assert fields["depth"] == f"{tree.depth} (max_depth 2, {tree.search} search)"
    assert fields["metric per visitor"] == f"{tree.objective:.4g}"
    leaves = view.table(1)
    assert leaves[0] == [
        "segment",
        "rule",
        "share",
        "best arm",
        "P(best) control",
        "P(best) A",
        "P(best) B",
        "gain vs control",
        "interval",
        "stability",
    ]
    titles = view.titles(1)
    described = tree.to_dict()["segments"]
    assert len(leaves) == 1 + len(described)
    for row, hover, leaf in zip(leaves[1:], titles[1:], described, strict=True):
        lo, hi = leaf["gate_interval"]
        assert row == [
            str(leaf["id"]),
            leaf["rule"],
            f"{leaf['population_share']:.1%}",
            leaf["best_arm"],
            *(f"{leaf['arm_best_probabilities'][arm]:.3f}" for arm in tree.arms),
            f"{leaf['gate_estimate']:+.4g}",
            f"[{lo:+.4g}, {hi:+.4g}]",
            "n/a",  # no bootstrap refits
        ]
        assert hover[2] == str(leaf["population_share"])
        assert hover[4:7] == [str(leaf["arm_best_probabilities"][a]) for a in tree.arms]
    # The planted truth: mobile visitors are served A.
    mobile = next(row for row in leaves[1:] if row[1] == "device == 'mobile'")
    assert mobile[3] == "A"
    text = str(tree)
    assert view.summaries == ["tree"]
    assert view.pre == [text[text.index("\neveryone") + 1 :]]  # the tree, below the header


def test_tree_view_escapes_rules_arms_and_levels():
    split = {"covariate": "<x>", "type": "categorical", "left": [HOSTILE], "right": ["safe"]}
    segment = {
        "population_share": 0.5,
        "arm_best_probabilities": {"control": 0.2, HOSTILE: 0.8},
        "gate_estimate": 0.1,
        "gate_interval": [0.0, 0.2],
        "stability_score": 0.75,
        "best_arm": HOSTILE,
    }
    data = {
        "pytyche_policy_tree": 1,
        "arms": ["control", HOSTILE],
        "features": ["<x>"],
        "n_visitors": 100,
        "max_depth": 1,
        "min_segment_share": 0.1,
        "min_segment_size": 10,
        "n_bootstrap": 5,
        "seed": 0,
        "search": "exact",
        "objective": 1.0,
        "control_objective": 0.9,
        "unassigned_share": 0.0,
        "nodes": [
            {"id": 0, "depth": 0, "members": 100, "split": split, "left": 1, "right": 2},
            {"id": 1, "depth": 1, "members": 50, "split": None, "segment": 0},
            {"id": 2, "depth": 1, "members": 50, "split": None, "segment": 1},
        ],
        "segments": [
            {"id": 0, "rule": str(Clause("<x>", "==", HOSTILE)), **segment},
            {"id": 1, "rule": str(Clause("<x>", "==", "safe")), **segment},
        ],
    }
    tree = PolicyTreeResult.from_dict(data)
    markup = tree._repr_html_()
    assert "<script>" not in markup and "<x>" not in markup
    view = View(markup)
    assert view.table(1)[1] == [
        "0",
        f"`<x>` == '{HOSTILE}'",
        "50.0%",
        HOSTILE,
        "0.200",
        "0.800",
        "+0.1",
        "[+0, +0.2]",
        "0.75",
    ]
    assert f"`<x>` == '{HOSTILE}'" in view.pre[0]


# --------------------------------------------------------------------------- plans


ARMS = ["control", "A", "B"]


def _plan(**kwargs) -> RoundPlan:
    options = {
        "round": 1,
        "size": 1_000,
        "arms": ARMS,
        "active": ARMS,
        "cells": {"control": 0.1, "explore": 0.15, "optimized": 0.75},
        "segments": {0: "device == 'mobile'", 1: "device != 'mobile'"},
        "optimized": {
            0: {"A": 1.0},
            1: {"control": 0.2, "A": 0.3, "B": 0.5},
            -1: {"control": 1 / 3, "A": 1 / 3, "B": 1 / 3},
        },
        "status": "optimized",
        "seed": 3,
    }
    return RoundPlan(**{**options, **kwargs})


def test_plan_view_shows_the_weights_of_to_dict():
    plan = _plan(
        graduation=[{"arm": "A", "segment": 0, "prob_best": 0.99, "expected_loss": 1e-4}],
        prob_best={0: {"control": 0.01, "A": 0.99}},
        expected_loss={0: {"control": 0.5, "A": 1e-4}},
        prob_best_mcse={0: {"control": 0.0021, "A": 0.0034}},
    )
    description = plan.to_dict()
    view = View(plan._repr_html_())
    assert view.title == "RoundPlan: round 1, 1,000 visitors, optimized"
    fields = view.fields(0)
    assert fields["status"] == "optimized (optimized cell: per-segment Thompson weights)"
    assert fields["planned visitors"] == "1,000" and fields["seed"] == "3"
    assert view.table(1)[1:] == [
        ["control", "10.0%", "always control"],
        ["explore", "15.0%", "uniform over the active arms"],
        ["optimized", "75.0%", "the segment's weights below"],
    ]
    assert [row[1] for row in view.titles(1)[1:]] == [
        str(description["cells"][c]) for c in ("control", "explore", "optimized")
    ]
    optimized, hover = view.table(2), view.titles(2)
    assert optimized[0] == ["segment", "rule", *ARMS]
    rules = {**description["segments"], "-1": "no segment (missing covariate): pooled weights"}
    for row, titles, (key, weights) in zip(
        optimized[1:], hover[1:], description["optimized"].items(), strict=True
    ):
        assert row == [key, rules[key], *(f"{weights[a]:.1%}" for a in ARMS)]
        assert titles[2:] == [str(weights[a]) for a in ARMS]
    effective = plan.effective_probability
    for row, titles in zip(view.table(3)[1:], view.titles(3)[1:], strict=True):
        values = effective.sel(segment=int(row[0])).values
        assert row[2:] == [f"{v:.1%}" for v in values]
        assert titles[2:] == [str(float(v)) for v in values]
    assert view.items == [
        "graduation candidate: A in segment 0 (P(best) 0.990 ± 0.003, expected loss 0.0001)"
    ]
    assert view.summaries == ["posterior summaries the weights came from"]
    assert view.table(4)[1:] == [
        ["0", "device == 'mobile'", "control", "0.010 ± 0.002", "0.5"],
        ["0", "device == 'mobile'", "A", "0.990 ± 0.003", "0.0001"],
    ]
    # A plan stored before the MCSE was reported shows P(best) alone.
    old = RoundPlan.from_dict({k: v for k, v in description.items() if k != "prob_best_mcse"})
    assert View(old._repr_html_()).table(4)[1:] == [
        ["0", "device == 'mobile'", "control", "0.010", "0.5"],
        ["0", "device == 'mobile'", "A", "0.990", "0.0001"],
    ]


def test_plan_view_escapes_rules_and_arms():
    arms = ["control", HOSTILE]
    plan = _plan(
        arms=arms,
        active=arms,
        segments={0: str(Clause("device", "==", HOSTILE))},
        optimized={0: {HOSTILE: 1.0}, -1: {"control": 1.0}},
        dropped=[],
    )
    markup = plan._repr_html_()
    assert "<script>" not in markup
    view = View(markup)
    assert view.table(2)[0] == ["segment", "rule", "control", HOSTILE]
    assert view.table(2)[1] == ["0", f"device == '{HOSTILE}'", "0.0%", "100.0%"]


def _visitors(n, round_index):
    rng = np.random.default_rng(round_index)
    return pd.DataFrame(
        {
            "visitor_id": [f"r{round_index}-{i}" for i in range(n)],
            "device": rng.choice(["mobile", "desktop"], n),
        }
    )


def test_experiment_view_lists_rounds_and_shows_the_current_plan(monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("burn-in does not fit")

    monkeypatch.setattr(experiment_module, "fit", no_fit)
    exp = sequential_experiment(
        ARMS, schedule=300, min_visitors_per_arm=1_000, seed=4, name="html", family="continuous"
    )
    served = exp.plan().assign(_visitors(300, 0))
    served["outcome"] = np.random.default_rng(0).normal(size=len(served))
    exp.record(logged_observed(served))
    exp.advance()  # burn-in: too few visitors per arm to fit
    view = View(exp._repr_html_())
    assert view.title == "SequentialExperiment: arms control, A, B; round 1 now"
    srm = exp.plans[1].notes.get("srm")
    checked = "not checked" if srm is None else f"p = {srm['p_value']:.3g}"
    if srm is not None and srm["flagged"]:
        checked += " (FLAGGED)"
    assert view.table(0) == [
        ["round", "status", "planned", "recorded", "segments", "arms", "sample ratio"],
        ["0", "initial", "300", "300", "1", "control, A, B", checked],
        ["1", "burn-in", "300", "0", "1", "control, A, B", "not checked"],
    ]
    assert view.summaries[0] == "current plan (round 1)"
    # The current plan's own view follows, in full.
    plan_view = View(exp.plan()._repr_html_())
    assert view.tables[1:] == plan_view.tables
    assert "uniform: burn-in until every arm has 1000 visitors" in view.fields(1)["status"]


# --------------------------------------------------------------------------- reports


def test_setup_report_view_shows_counts_sample_size_and_findings():
    report = SetupReport(
        problems=[f"problem {HOSTILE}"],
        warnings=["a warning"],
        family="binary",
        arms=["control", HOSTILE],
        visitors={"control": 1200, HOSTILE: 1100},
        conversions={"control": 30, HOSTILE: 40},
        missing_share={"age": 0.25, "device": 0.0},
        min_practical_effect=0.05,
        visitors_needed_per_arm=4321,
    )
    markup = report._repr_html_()
    assert "<script>" not in markup
    view = View(markup)
    assert view.title == "SetupReport (binary): 1 problem(s)"
    assert view.table(0) == [
        ["arm", "visitors", "conversions"],
        ["control", "1,200", "30"],
        [HOSTILE, "1,100", "40"],
    ]
    assert view.table(1) == [["covariate", "missing"], ["age", "25.0%"]]
    assert (
        "Visitors per arm needed to detect a lift of 0.05 (80% power, two-sided 5%): about 4,321"
        in view.paragraphs
    )
    assert view.items == [f"problem {HOSTILE}", "a warning"]


def test_setup_report_view_of_a_real_check():
    result = pt.example_posterior(n_visitors=300, n_draws=4, family="continuous")
    observed = result.observed.assign_coords(outcome=("visitor", np.linspace(0, 1, 300)))
    report = pt.check_setup(observed, family="continuous")
    view = View(report._repr_html_())
    assert view.title == "SetupReport (continuous): ok"
    assert view.table(0)[1:] == [[arm, f"{report.visitors[arm]:,}"] for arm in report.arms]


def test_recommendation_view_is_the_decision_table():
    result = pt.example_posterior(n_visitors=300, n_draws=20)
    decisions = pt.recommend(result, {0: "everyone", 1: f"device == '{HOSTILE}'"})
    markup = decisions._repr_html_()
    assert "<script>" not in markup.split("<details>")[0]
    view = View(markup)
    table = decisions.table()
    assert view.table(0) == [list(table.columns), *(list(map(str, r)) for r in table.values)]
    assert view.paragraphs[1:3] == [line.strip() for line in str(decisions).split("\n")[:2]]
    assert view.summaries == ["the Dataset"]
    # A selection of some variables is no decision table: xarray's view, unchanged.
    lift = decisions[["lift"]]
    assert no_ids(lift._repr_html_()) == no_ids(xr.Dataset._repr_html_(lift))


def test_lazy_recommendation_view_computes_nothing():
    result = pt.example_posterior(n_visitors=300, n_draws=10, chunks=100)
    decisions = pt.recommend(result, {0: "everyone"})
    with counting_scheduler(0):
        markup = decisions._repr_html_()
    assert View(markup).paragraphs[0].startswith("Lazy: print(result)")
    assert no_ids(markup).endswith(no_ids(xr.Dataset._repr_html_(decisions)))
