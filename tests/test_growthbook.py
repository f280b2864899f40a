"""Serving a round plan with the real GrowthBook SDK and recording its exposures."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from growthbook import GrowthBook
from hypothesis import given, settings
from hypothesis import strategies as st

import pytyche as pt
from pytyche.sequential import (
    RoundPlan,
    evaluate_policy,
    exposures_from_growthbook,
    growthbook_attributes,
    growthbook_condition,
    sequential_experiment,
    srm_test,
    to_growthbook,
)
from pytyche.sequential.plan import CELLS

from helpers import run_cli
from strategies import RULE_COVARIATES, covariate_values, typed_rules

try:
    from growthbook.core import evalCondition
except ImportError:  # growthbook before 1.1 is a single module
    from growthbook import evalCondition  # type: ignore[attr-defined,no-redef]

ARMS = ["control", "A", "B"]
FEATURE = "checkout"
# The pure-Python SDK serves 200,000 visitors in 20 to 35 s on 2 shared cores (measured).
N_SHARES = 200_000


def demo_plan(seed=42, optimized=None, round=1):
    return RoundPlan(
        round=round,
        size=1_000,
        arms=ARMS,
        active=ARMS,
        cells={"control": 0.1, "explore": 0.2, "optimized": 0.7},
        segments={0: "device == 'mobile' and age > 40", 1: "device != 'mobile'"},
        optimized=optimized
        or {
            0: {"control": 0.2, "A": 0.5, "B": 0.3},
            1: {"control": 0.6, "A": 0.1, "B": 0.3},
            -1: {"control": 0.3, "A": 0.3, "B": 0.4},
        },
        status="optimized",
        seed=seed,
    )


def synthetic_visitors(n, seed=0, prefix="v"):
    """Visitors with a device (10% missing) and an age (10% missing)."""
    rng = np.random.default_rng(seed)
    device = rng.choice(["mobile", "desktop", "tablet"], n).astype(object)
    device[rng.random(n) < 0.1] = None
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {"visitor_id": [f"{prefix}{i}" for i in range(n)], "device": device, "age": age}
    )


def serve(features, visitors, outcome=None):
    """Serve every visitor with the SDK; the exposures it tracks, joined with an outcome."""
    tracked = []

    def on_viewed(experiment, result, user_context=None):
        tracked.append(
            {
                "experiment_key": experiment.key,
                "variation_id": result.variationId,
                "visitor_id": result.hashValue,
            }
        )

    gb = GrowthBook(features=features["features"], on_experiment_viewed=on_viewed)
    served = []
    for attributes in growthbook_attributes(visitors):
        gb.set_attributes(attributes)
        served.append(gb.get_feature_value(FEATURE, None))
    events = pd.DataFrame(tracked)
    events = events.merge(visitors, on="visitor_id", how="left")
    events["outcome"] = 0.0 if outcome is None else outcome(events)
    return events, served


# --------------------------------------------------------------------------- the feature


def test_the_feature_has_one_rule_per_segment_and_cell_with_fixed_hashes():
    plan = demo_plan()
    features = to_growthbook(plan, FEATURE, hash_attribute="uid")
    assert json.loads(json.dumps(features)) == features  # JSON as it is
    feature = features["features"][FEATURE]
    assert feature["defaultValue"] == "control"
    rules = feature["rules"]
    assert [r["key"] for r in rules] == [
        f"{FEATURE}/round=1/segment={s}/cell={c}" for s in (0, 1, -1) for c in CELLS
    ]
    explore = rules[1]
    assert explore["hashVersion"] == 2 and explore["hashAttribute"] == "uid"
    assert (
        explore["seed"] == "pytyche:42:arm" and explore["filters"][0]["seed"] == "pytyche:42:cell"
    )
    assert explore["filters"][0]["ranges"] == [[0.1, 0.3]]
    assert explore["ranges"] == [[0.0, 0.3333], [0.3333, 0.6667], [0.6667, 1.0]]
    assert rules[2]["ranges"] == [[0.0, 0.2], [0.2, 0.7], [0.7, 1.0]]  # segment 0 optimized
    assert rules[0]["ranges"] == [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]  # control: control
    assert [m["key"] for m in explore["meta"]] == ARMS
    assert explore["condition"] == growthbook_condition(plan.segments[0])
    assert "condition" not in rules[-1]  # no segment: everyone left
    assert plan.to_growthbook(FEATURE, "uid") == features
    # The next round's plan keeps both seeds: the cell and the arm hash lines stay.
    later = to_growthbook(demo_plan(round=2), FEATURE)["features"][FEATURE]["rules"][1]
    assert later["seed"] == explore["seed"] and later["filters"][0]["seed"] == "pytyche:42:cell"


def test_rules_after_an_everyone_segment_and_empty_cells_are_left_out():
    exp = sequential_experiment(ARMS, seed=3, name="shares", min_control_weight=0.0)
    rules = exp.plan().to_growthbook(FEATURE)["features"][FEATURE]["rules"]
    assert [r["key"].rsplit("/", 2)[1:] for r in rules] == [
        ["segment=0", "cell=explore"],
        ["segment=0", "cell=optimized"],
    ]


@pytest.mark.parametrize(
    ("rule", "pattern"),
    [
        ("`user.age` > 3", r"'`user\.age` > 3'.*has a dot"),
        ("`$or` == 'x'", r"\"`\$or` == 'x'\".*starts with '\$'"),
        ("age == 9007199254740993", r"'age == 9007199254740993'.*beyond 2\*\*53"),
        ("age in (1, -9007199254740993)", r"beyond 2\*\*53"),
    ],
)
def test_rules_that_cannot_be_translated_exactly_are_refused_naming_the_clause(rule, pattern):
    with pytest.raises(ValueError, match=pattern):
        growthbook_condition(rule)
    plan = demo_plan()
    plan.segments[1] = rule
    with pytest.raises(ValueError, match="segment 1: the clause"):
        to_growthbook(plan, FEATURE)


@pytest.mark.parametrize(("key", "attribute"), [("", "id"), (FEATURE, ""), (3, "id")])
def test_the_feature_key_and_hash_attribute_are_checked(key, attribute):
    with pytest.raises(ValueError, match="must be a non-empty string"):
        to_growthbook(demo_plan(), key, attribute)
    with pytest.raises(TypeError, match="plan must be a RoundPlan"):
        to_growthbook({"round": 0}, FEATURE)


# --------------------------------------------------------------------------- conditions


def _frame(rows):
    """Covariates as pytyche stores them: float with NaN, text and booleans as objects."""
    columns = {}
    for name, kind in RULE_COVARIATES.items():
        values = [row[name] for row in rows]
        if kind == "number":
            columns[name] = ("visitor", np.array([np.nan if v is None else v for v in values]))
        else:
            columns[name] = ("visitor", np.array(values, dtype=object))
    return xr.Dataset(coords=columns)


PRESENT = {"age": 30.0, "device": "mobile", "returning": True}
visitor_rows = st.lists(
    st.fixed_dictionaries({n: covariate_values[k] for n, k in RULE_COVARIATES.items()}),
    min_size=1,
    max_size=12,
)


@settings(max_examples=2_000, deadline=None)
@given(rule=typed_rules, rows=visitor_rows)
def test_the_sdk_evaluates_a_translated_rule_as_membership_does(rule, rows):
    rows = [PRESENT, *rows]  # every column has a value, so its kind is known
    expected = pt.membership({0: rule}, _frame(rows)).values[0]
    condition = growthbook_condition(rule)
    assert json.loads(json.dumps(condition)) == condition
    # Missing as the attributes helper leaves it (absent) and as a caller may pass it.
    cleaned = growthbook_attributes(
        pd.DataFrame([{"visitor_id": i, **r} for i, r in enumerate(rows)])
    )
    for i, row in enumerate(rows):
        assert evalCondition(cleaned[i], condition) == expected[i], (row, condition)
        assert evalCondition(row, condition) == expected[i], (row, condition)


def test_missing_values_match_no_clause_negated_ones_included():
    for text in [
        "device != 'mobile'",
        "device not in ('a',)",
        "age != 3",
        "age not in (1, 2)",
        "returning != True",
        "age < 5",
    ]:
        condition = growthbook_condition(text)
        for missing in (
            {},
            {"device": None, "age": None, "returning": None},
            {"age": math.nan, "device": math.nan, "returning": math.nan},
        ):
            assert not evalCondition(missing, condition), (text, missing)


def test_growthbook_attributes_leave_missing_values_out():
    visitors = pd.DataFrame(
        {
            "visitor_id": [1, 2],
            "age": pd.array([3, None], dtype="Int64"),
            "device": ["mobile", None],
            "returning": np.array([True, False]),
        }
    )
    assert growthbook_attributes(visitors, "uid") == [
        {"uid": "1", "age": 3, "device": "mobile", "returning": True},
        {"uid": "2", "returning": False},
    ]
    with pytest.raises(ValueError, match="has a column 'age', the hash attribute"):
        growthbook_attributes(visitors, "age")
    with pytest.raises(ValueError, match="needs a 'visitor_id' column"):
        growthbook_attributes(visitors.drop(columns="visitor_id"))


# --------------------------------------------------------------------------- serving


def _share_table(events, plan):
    """Served share per (segment, arm) next to the plan's effective probability."""
    rows = []
    for s in plan.segment_ids:
        here = events[events["segment"] == s]
        for arm in plan.arms:
            p = float(plan.effective_probability.sel(segment=s, arm=arm))
            share = float((here["arm"] == arm).mean())
            se = math.sqrt(p * (1 - p) / len(here))
            rows.append(
                {"segment": s, "arm": arm, "n": len(here), "plan": p, "sdk": share, "se": se}
            )
    return pd.DataFrame(rows)


def test_the_sdk_serves_the_plan_probabilities_cells_and_propensities():
    plan = demo_plan()
    visitors = synthetic_visitors(N_SHARES)
    events, served = serve(to_growthbook(plan, FEATURE), visitors)
    assert len(events) == N_SHARES  # every visitor with an id is exposed once
    observed = exposures_from_growthbook(events, plan)
    logged = observed.to_dataframe().reset_index()
    logged["arm"] = logged["variant"]
    # The SDK's segment is pytyche's: the condition translation on real covariates.
    order = pd.Series(np.arange(N_SHARES), index=visitors["visitor_id"])
    expected_segment = plan.segment_of(visitors)[order[logged["visitor"]].to_numpy()]
    np.testing.assert_array_equal(logged["segment"].to_numpy(), expected_segment)
    assert sorted(served) == sorted(logged["arm"])
    table = _share_table(logged, plan)
    assert ((table["sdk"] - table["plan"]).abs() < 4 * table["se"]).all(), table
    cells = logged["cell"].value_counts(normalize=True)
    for cell in CELLS:
        w = plan.cells[cell]
        assert abs(cells[cell] - w) < 4 * math.sqrt(w * (1 - w) / N_SHARES), cells
    # The logged propensity is the plan's effective probability of the arm served.
    effective = plan.effective_probability.to_pandas()
    want = effective.to_numpy()[
        effective.index.get_indexer(logged["segment"]), effective.columns.get_indexer(logged["arm"])
    ]
    np.testing.assert_array_equal(logged["propensity"].to_numpy(), want)
    assert (logged[logged["cell"] == "control"]["arm"] == "control").all()


def _changed_share(before, after):
    """Share of visitors whose arm changed, over visitors served by both."""
    both = before.merge(after, on="visitor_id", suffixes=("_before", "_after"))
    return float((both["arm_before"] != both["arm_after"]).mean()), len(both)


def _expected_change(before: RoundPlan, after: RoundPlan, segment_share):
    """Share whose hash leaves their arm's interval: 1 - overlap of the intervals, per cell."""
    total = 0.0
    for s, share in segment_share.items():
        i = before.segment_ids.index(s)
        for cell in CELLS:
            a = np.cumsum(np.r_[0, before.cell_probability(cell).values[i]])
            b = np.cumsum(np.r_[0, after.cell_probability(cell).values[i]])
            overlap = np.clip(np.minimum(a[1:], b[1:]) - np.maximum(a[:-1], b[:-1]), 0, None)
            total += share * before.cells[cell] * (1 - overlap.sum())
    return total


def test_a_visitor_keeps_cell_and_arm_as_the_weights_allow_as_with_assign():
    first = demo_plan(round=1)
    second = demo_plan(
        round=2,
        optimized={
            0: {"control": 0.1, "A": 0.3, "B": 0.6},
            1: {"control": 0.5, "A": 0.3, "B": 0.2},
            -1: {"control": 0.3, "A": 0.3, "B": 0.4},
        },
    )
    visitors = synthetic_visitors(20_000, seed=5)
    sdk = []
    for plan in (first, second):
        events, _ = serve(to_growthbook(plan, FEATURE), visitors)
        table = logged_observed_table(exposures_from_growthbook(events, plan))
        sdk.append(table)
    np.testing.assert_array_equal(
        sdk[0].sort_values("visitor_id")["cell"], sdk[1].sort_values("visitor_id")["cell"]
    )
    assigned = [plan.assign(visitors) for plan in (first, second)]
    sdk_share, n = _changed_share(*sdk)
    assign_share, _ = _changed_share(*assigned)
    segments = pd.Series(first.segment_of(visitors)).value_counts(normalize=True)
    expected = _expected_change(first, second, segments.to_dict())
    se = math.sqrt(expected * (1 - expected) / n)
    assert expected > 0.1
    assert abs(sdk_share - expected) < 4 * se and abs(assign_share - expected) < 4 * se
    # Arms keep the visitors whose arm hash stays in their interval: explore never changes.
    both = sdk[0].merge(sdk[1], on="visitor_id")
    explore = both[both["cell_x"] == "explore"]
    assert (explore["arm_x"] == explore["arm_y"]).all()


def logged_observed_table(observed):
    frame = observed.to_dataframe().reset_index()
    return frame.rename(columns={"visitor": "visitor_id", "variant": "arm"})


# --------------------------------------------------------------------------- exposures


def test_recorded_exposures_pass_record_srm_and_evaluate_policy():
    exp = sequential_experiment(ARMS, seed=11, name="stickiness", schedule=3_000)
    plan = exp.plan()
    visitors = synthetic_visitors(3_000, seed=2)
    events, _ = serve(plan.to_growthbook(FEATURE), visitors)
    before = len(plan.assigned)
    observed = exposures_from_growthbook(events, plan)
    assert len(plan.assigned) == before + 3_000
    exp.record(observed)
    assert exp.recorded().sizes["visitor"] == 3_000
    assert float(exp.srm()["p_value"].sel(round=0)) > 0.001
    estimate = evaluate_policy(exp.recorded(), "control", estimator="ipw", n_bootstrap=0)
    assert np.isfinite(float(estimate["estimate"]))


def test_a_repeated_exposure_counts_once_and_a_conflicting_one_is_refused():
    plan = demo_plan()
    events, _ = serve(plan.to_growthbook(FEATURE), synthetic_visitors(50))
    twice = pd.concat([events, events.iloc[:3]], ignore_index=True)
    assert exposures_from_growthbook(twice, copy.deepcopy(plan)).sizes["visitor"] == 50
    conflict = twice.copy()
    conflict.loc[len(events), "variation_id"] = (conflict.loc[0, "variation_id"] + 1) % 3
    conflict.loc[len(events), "experiment_key"] = conflict.loc[0, "experiment_key"].replace(
        "cell=control", "cell=optimized"
    )
    with pytest.raises(ValueError, match="give a visitor two different"):
        exposures_from_growthbook(conflict, plan)
    assert plan.assigned.empty  # a refusal leaves the log as it was


def _events(plan, n=40):
    events, _ = serve(plan.to_growthbook(FEATURE), synthetic_visitors(n))
    return events


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda e: e.drop(columns="variation_id"), r"lack the column\(s\) \['variation_id'\]"),
        (lambda e: e.assign(experiment_key="other"), r"not pytyche's.*row 0 \('other'\)"),
        (
            lambda e: e.assign(
                experiment_key=e["experiment_key"].str.replace("round=1", "round=0")
            ),
            "served by another round's features than round 1's",
        ),
        (
            lambda e: e.assign(
                experiment_key=e["experiment_key"].str.replace(
                    r"segment=-?\d", "segment=7", regex=True
                )
            ),
            r"segment the round 1 plan does not have",
        ),
        (lambda e: e.assign(variation_id=5), r"not an arm's index 0 to 2"),
        (lambda e: e.assign(variation_id="A"), r"not an arm's index"),
        (lambda e: e.assign(device="tablet", age=50.0), "covariates put them in another"),
        (lambda e: e.drop(columns="age"), "the covariate 'age'"),
    ],
)
def test_exposures_that_the_plan_did_not_serve_are_refused(change, pattern):
    plan = demo_plan()
    events = _events(plan)
    with pytest.raises(ValueError, match=pattern):
        exposures_from_growthbook(change(events), plan)
    assert plan.assigned.empty


def test_an_arm_the_cell_never_serves_is_refused():
    plan = demo_plan()
    events = _events(plan)
    control = events["experiment_key"].str.endswith("cell=control")
    events.loc[control, "variation_id"] = 1
    with pytest.raises(
        ValueError,
        match=r"never serves in their segment and cell: row \d+ \('v\d+: A in control'\)",
    ):
        exposures_from_growthbook(events, plan)


def test_a_visitor_assigned_before_by_assign_must_agree():
    plan = demo_plan()
    visitors = synthetic_visitors(200)
    plan.assign(visitors)
    events, _ = serve(plan.to_growthbook(FEATURE), visitors)
    with pytest.raises(ValueError, match="were assigned otherwise before in round 1"):
        exposures_from_growthbook(events, plan)
    assert len(plan.assigned) == 200


def test_events_must_be_a_table():
    with pytest.raises(TypeError, match="events must be a pandas DataFrame or a list of dicts"):
        exposures_from_growthbook("events.csv", demo_plan())
    with pytest.raises(TypeError, match="plan must be a RoundPlan"):
        exposures_from_growthbook([], {"round": 1})
    records = _events(demo_plan()).to_dict("records")
    assert exposures_from_growthbook(records, demo_plan()).sizes["visitor"] == 40


# --------------------------------------------------------------------------- the loop

FIT = {"n_draws": 10, "n_trees_mu": 10, "n_trees_tau": 5, "n_warmstart": 2, "num_threads": 1}


def _outcome(events):
    """Small effects: the plans stay near uniform, so every arm keeps being served."""
    rng = np.random.default_rng(len(events))
    arm = events["variation_id"].to_numpy()
    mobile = (events["device"] == "mobile").to_numpy()
    return rng.normal(0.05 * (arm == 1) + 0.05 * mobile * (arm == 2), 1.0)


def test_three_rounds_served_by_the_sdk_recorded_and_advanced():
    exp = sequential_experiment(
        ARMS,
        seed=9,
        name="loop",
        schedule=[1_500, 1_500, 3_000],
        min_visitors_per_arm=50,
        family="continuous",
        fit_options=FIT,
    )
    for round_index in range(3):
        plan = exp.plan()
        visitors = synthetic_visitors(plan.size, seed=round_index, prefix=f"r{round_index}-")
        events, _ = serve(plan.to_growthbook(FEATURE), visitors, _outcome)
        exp.record(exposures_from_growthbook(events, plan))
        assert float(exp.srm()["p_value"].sel(round=round_index)) > 0.001
        if round_index < 2:
            assert exp.advance().round == round_index + 1
    assert exp.plans[2].status == "optimized" and exp.plans[2].active == tuple(ARMS)
    assert exp.recorded().sizes["visitor"] == 6_000


def _srm(observed, plan):
    """SRM of one round's exposures, counted as SequentialExperiment.srm counts them."""
    counts = np.zeros((1, len(CELLS), len(plan.arms)))
    expected = np.zeros_like(counts)
    cell = pd.Categorical(observed["cell"].values.astype(str), categories=CELLS).codes
    arm = pd.Categorical(observed["variant"].values.astype(str), categories=plan.arms).codes
    np.add.at(counts[0], (cell, arm), 1.0)
    ids, n = np.unique(observed["segment"].values, return_counts=True)
    for k, name in enumerate(CELLS):
        table = plan.cell_probability(name).sel(segment=ids).values
        expected[0, k] = plan.cells[name] * (n[:, None] * table).sum(axis=0)
    dims = ("round", "cell", "arm")
    return srm_test(xr.DataArray(counts, dims=dims), xr.DataArray(expected, dims=dims))


def test_srm_is_clean_on_the_sdk_exposures_and_flags_5_percent_of_an_arm_dropped():
    # 60,000 visitors: enough to flag 5% of one arm's exposures lost at p < 0.001.
    # (SequentialExperiment.record takes minutes on that many; the counts are the same.)
    plan = demo_plan(seed=13)
    events, _ = serve(plan.to_growthbook(FEATURE), synthetic_visitors(60_000, seed=3))
    full = _srm(exposures_from_growthbook(events, copy.deepcopy(plan)), plan)
    assert float(full["p_value"][0]) > 0.001
    is_a = np.flatnonzero((events["variation_id"] == 1).to_numpy())
    lost = np.random.default_rng(0).choice(is_a, is_a.size // 20, replace=False)
    dropped = _srm(exposures_from_growthbook(events.drop(index=lost), plan), plan)
    assert bool(dropped["flagged"][0]), float(dropped["p_value"][0])


# --------------------------------------------------------------------------- the CLI


def test_the_cli_writes_the_features_and_records_the_exposures(tmp_path, capsys):
    store = tmp_path / "checkout.pytyche"
    code, _, err = run_cli(["start", store, "--arms", "control,A,B", "--seed", "5"], capsys)
    assert code == 0, err
    features_path = tmp_path / "features.json"
    code, _, err = run_cli(
        ["plan", store, "--format", "growthbook", "--out", features_path], capsys
    )
    assert code == 0 and "as the GrowthBook feature 'checkout'" in err
    features = json.loads(features_path.read_text())
    experiment = pt.open_experiment(store)
    assert features == experiment.plan().to_growthbook("checkout")
    code, _, err = run_cli(["plan", store, "--format", "growthbook"], capsys)
    assert code == 2 and "give it --out FILE.json" in err
    events, _ = serve(features, synthetic_visitors(300))
    events.to_csv(tmp_path / "exposures.csv", index=False)
    bad = events.assign(experiment_key="nonsense")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run_cli(
        ["record", store, tmp_path / "bad.csv", "--format", "growthbook"], capsys
    )
    assert code == 2 and "are not pytyche's" in err and err.count("\n") == 1
    assert pt.open_experiment(store).recorded() is None  # the store is as it was
    argv = ["record", store, tmp_path / "exposures.csv", "--format", "growthbook"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "recorded 300 GrowthBook exposure(s) in round 0" in out
    recorded = pt.open_experiment(store).recorded()
    assert recorded.sizes["visitor"] == 300
    assert set(recorded["visitor_id"].values) == set(events["visitor_id"])
