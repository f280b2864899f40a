"""Assignment: deterministic, order-independent, sticky, on plan, with the plan's propensities."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from pytyche.sequential import CELLS, RoundPlan, sequential_experiment
from pytyche.sequential.assign import choose_interval, visitor_uniforms

ARMS = ["control", "A", "B"]
SEGMENTS = {0: "device == 'mobile'", 1: "device != 'mobile' and age > 40"}
WEIGHTS = {
    0: {"control": 0.1, "A": 0.6, "B": 0.3},
    1: {"control": 0.25, "A": 0.25, "B": 0.5},
    -1: {"control": 0.5, "A": 0.2, "B": 0.3},
}
# Segment 0 (mobile) always gets A, segment 1 (desktop over 40) always B.
ONE_ARM_PER_SEGMENT = {
    0: {"control": 0.0, "A": 1.0, "B": 0.0},
    1: {"control": 0.0, "A": 0.0, "B": 1.0},
    -1: {"control": 1.0, "A": 0.0, "B": 0.0},
}


def make_plan(optimized=WEIGHTS, c=0.1, e=0.2, round=1, seed=11):
    return RoundPlan(
        round=round,
        size=1_000,
        arms=ARMS,
        active=ARMS,
        cells={"control": c, "explore": e, "optimized": 1 - c - e},
        segments=SEGMENTS,
        optimized=optimized,
        status="optimized",
        seed=seed,
    )


def visitors(n, seed=0, prefix="v"):
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "visitor_id": [f"{prefix}{i}" for i in range(n)],
            "device": rng.choice(["mobile", "desktop", "tablet"], n),
            "age": age,
        }
    )


def test_same_visitor_same_row_whatever_the_order():
    plan = make_plan()
    frame = visitors(2_000)
    first = plan.assign(frame).set_index("visitor_id")
    shuffled = plan.assign(frame.sample(frac=1.0, random_state=1)).set_index("visitor_id")
    pd.testing.assert_frame_equal(first, shuffled.loc[first.index])
    # A fresh plan object with the same contents assigns identically (no hidden state).
    again = make_plan().assign(frame).set_index("visitor_id")
    pd.testing.assert_frame_equal(first, again)


def test_no_global_random_state_is_touched():
    # The legacy global generators are exactly what assignment must leave alone.
    random.seed(5)
    before = (np.random.get_state()[1].copy(), random.getstate())  # noqa: NPY002
    make_plan().assign(visitors(500))
    after = np.random.get_state()[1]  # noqa: NPY002
    assert (after == before[0]).all() and random.getstate() == before[1]


def test_hash_depends_on_seed_and_id_text():
    a = visitor_uniforms(1, ["x", "y", 5])
    b = visitor_uniforms(2, ["x", "y", "5"])
    assert not np.array_equal(a[0], b[0])
    same = visitor_uniforms(1, ["x", "y", "5"])
    np.testing.assert_array_equal(a[1], same[1])  # 5 and "5" are one visitor


def test_counts_match_the_plan_on_100k_visitors():
    plan = make_plan()
    out = plan.assign(visitors(100_000, seed=3))
    # Expected count of each (cell, arm): Σ over visitors of cell weight × P(arm | segment, cell).
    position = {s: i for i, s in enumerate(plan.segment_ids)}
    rows = out["segment"].map(position).to_numpy()
    observed, expected = [], []
    for cell in CELLS:
        table = plan.cell_probability(cell).values[rows] * plan.cells[cell]
        for k, arm in enumerate(ARMS):
            if table[:, k].sum() > 0:
                observed.append(int(((out["cell"] == cell) & (out["arm"] == arm)).sum()))
                expected.append(table[:, k].sum())
            else:
                assert not ((out["cell"] == cell) & (out["arm"] == arm)).any()
    p = chisquare(observed, np.array(expected) * len(out) / sum(expected)).pvalue
    print(f"chi-square p = {p:.3f} over {len(observed)} (cell, arm) counts")
    assert p > 0.001


def test_propensity_is_the_effective_probability_of_the_arm_served():
    plan = make_plan()
    out = plan.assign(visitors(3_000))
    effective = plan.effective_probability
    pairs = zip(out["segment"], out["arm"], strict=True)
    expected = [float(effective.sel(segment=s, arm=a)) for s, a in pairs]
    np.testing.assert_allclose(out["propensity"], expected, rtol=0, atol=0)
    # Independent check of the segments from the rules, written out by hand.
    mobile = out["device"] == "mobile"
    older = (out["device"] != "mobile") & (out["age"] > 40)
    naive = np.where(mobile, 0, np.where(older, 1, -1))
    np.testing.assert_array_equal(out["segment"], naive)
    # Control cell always serves control.
    assert (out.loc[out["cell"] == "control", "arm"] == "control").all()


def test_missing_covariate_means_no_segment_and_pooled_weights():
    plan = make_plan()
    frame = pd.DataFrame(
        {
            "visitor_id": ["a", "b", "c"],
            "device": ["desktop", None, "mobile"],
            "age": [np.nan, 50, 30],
        }
    )
    out = plan.assign(frame)
    assert out["segment"].tolist() == [-1, -1, 0]
    assert plan.n_unsegmented == 2
    assert "2 visitor(s) assigned so far matched no segment" in str(plan)


def test_sticky_when_the_plan_keeps_the_arm():
    frame = visitors(20_000, seed=4)
    before = make_plan(round=1).assign(frame)
    # Next round moves optimized weight from B to A in every segment (control unchanged).
    moved = {
        s: {"control": w["control"], "A": w["A"] + w["B"] / 2, "B": w["B"] / 2}
        for s, w in WEIGHTS.items()
    }
    after = make_plan(moved, round=2).assign(frame)
    assert (before["cell"] == after["cell"]).all()  # cells never change
    kept = before["arm"].isin(["control", "A"])
    assert (before.loc[kept, "arm"] == after.loc[kept, "arm"]).all()
    switched = before["arm"] != after["arm"]
    assert (after.loc[switched, "arm"] == "A").all()  # B's visitors only move into A's growth
    # About half of the optimized cell's B visitors switch (their u left B's halved interval).
    opt_b = (before["cell"] == "optimized") & (before["arm"] == "B")
    share = switched[opt_b].mean()
    print(f"share of optimized-cell B visitors who switched: {share:.3f}")
    assert 0.45 < share < 0.55
    # An identical plan in a later round assigns every returning visitor identically.
    same = make_plan(round=3).assign(frame)
    assert (same["arm"] == before["arm"]).all()


def test_zero_weight_cells_and_arms_are_never_chosen():
    plan = make_plan(c=0.0, e=0.0)
    out = plan.assign(visitors(5_000))
    assert set(out["cell"]) == {"optimized"}
    choice = choose_interval(np.array([[0.5, 0.5, 0.0]] * 4), np.array([0.0, 0.49, 0.5, 1 - 1e-16]))
    assert choice.tolist() == [0, 0, 1, 1]


def test_assign_errors_name_the_problem():
    plan = make_plan()
    with pytest.raises(ValueError, match="'visitor_id' column"):
        plan.assign(pd.DataFrame({"device": ["mobile"]}))
    with pytest.raises(ValueError, match="covariate 'age'"):
        plan.assign(pd.DataFrame({"visitor_id": [1], "device": ["desktop"]}))
    with pytest.raises(ValueError, match=r"\['arm'\]"):
        plan.assign(visitors(3).assign(arm="A"))
    with pytest.raises(ValueError, match="visitor_id is missing"):
        plan.assign(visitors(3).assign(visitor_id=["a", None, "c"]))
    with pytest.raises(TypeError, match="DataFrame"):
        plan.assign({"visitor_id": [1]})


def test_unsalted_hash_of_older_experiments_is_unchanged():
    # Values of pytyche before experiment ids: plans without an id must assign as before.
    cell_u, arm_u = visitor_uniforms(12345, ["u0", "u1", 7])
    assert cell_u.tolist() == [0.85897568273358, 0.12891669214889756, 0.1971036752580282]
    assert arm_u.tolist() == [0.11311327329296683, 0.27731977551253784, 0.7879505393803646]
    old = make_plan().to_dict()
    del old["experiment_id"]  # a description written before experiments had ids
    plan = RoundPlan.from_dict(old)
    assert plan.experiment_id is None
    frame = visitors(300)
    pd.testing.assert_frame_equal(plan.assign(frame), make_plan().assign(frame))


def same_arm_share(a, b, n=10_000):
    frame = pd.DataFrame({"visitor_id": [f"id-{i}" for i in range(n)]})
    return float((a.plan().assign(frame)["arm"] == b.plan().assign(frame)["arm"]).mean())


def test_two_default_experiments_assign_nearly_independently():
    first, second = sequential_experiment(ARMS), sequential_experiment(ARMS)
    assert first.config["seed"] != second.config["seed"]
    assert first.config["experiment_id"] != second.config["experiment_id"]
    # Round 0 serves each arm about a third of the time: independent assignments agree on
    # about sum(p_a^2) = 0.34 of the visitors, identical ones on all.
    assert 0.30 < same_arm_share(first, second) < 0.38
    frame = pd.DataFrame({"visitor_id": [f"id-{i}" for i in range(10_000)]})
    u1 = visitor_uniforms(first.config["seed"], frame["visitor_id"], first.plan().experiment_id)
    u2 = visitor_uniforms(second.config["seed"], frame["visitor_id"], second.plan().experiment_id)
    assert abs(np.corrcoef(u1[1], u2[1])[0, 1]) < 0.05


def test_same_seed_different_experiment_ids_assign_differently():
    a = sequential_experiment(ARMS, seed=5, name="checkout-2026")
    b = sequential_experiment(ARMS, seed=5, name="search-2026")
    assert a.plan().experiment_id == "checkout-2026"
    assert 0.30 < same_arm_share(a, b) < 0.38
    again = sequential_experiment(ARMS, seed=5, name="checkout-2026")
    assert same_arm_share(a, again) == 1.0  # same seed and id: the same assignment


def test_reassigning_returns_the_logged_row_even_when_covariates_changed():
    plan = make_plan(optimized=ONE_ARM_PER_SEGMENT, c=0.0, e=0.0)
    first = plan.assign(pd.DataFrame({"visitor_id": ["v1"], "device": ["mobile"], "age": [30.0]}))
    assert first["arm"].tolist() == ["A"]
    moved = pd.DataFrame({"visitor_id": ["v1", "v2"], "device": ["desktop"] * 2, "age": [50.0] * 2})
    again = plan.assign(moved)
    # v1 keeps the arm, segment and propensity logged first; v2 is assigned by its covariates.
    assert again["arm"].tolist() == ["A", "B"] and again["segment"].tolist() == [0, 1]
    assert plan.assigned["visitor_id"].tolist() == ["v1", "v2"]


def test_an_id_repeated_in_one_batch_gets_the_row_of_its_first_occurrence():
    plan = make_plan(optimized=ONE_ARM_PER_SEGMENT, c=0.0, e=0.0)
    batch = pd.DataFrame(
        {"visitor_id": ["v1", "v1"], "device": ["mobile", "desktop"], "age": [30.0, 50.0]}
    )
    out = plan.assign(batch)
    assert out["arm"].tolist() == ["A", "A"] and out["segment"].tolist() == [0, 0]
    assert len(plan.assigned) == 1


def test_a_finished_plan_assigns_nobody():
    plan = RoundPlan.from_dict({**make_plan().to_dict(), "status": "finished", "size": 0})
    with pytest.raises(ValueError, match=r"finished.*assigns nobody"):
        plan.assign(visitors(3))
