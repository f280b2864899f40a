"""The sequential experiment's commands: start, plan, assign, record, advance, srm, evaluate.

The CLI runs in-process (``cli.main(argv)``) with the BCF fit replaced by a synthetic
posterior (as in ``test_sequential_experiment.py``); each result is compared with the Python
API's on the same inputs. One subprocess runs the installed entry point.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt
from pytyche.sequential import evaluate_policy, logged_observed, sequential_experiment
from pytyche.sequential import experiment as experiment_module

from helpers import run_cli

cli = importlib.import_module("pytyche.cli")

ARMS = ["control", "A", "B"]
COMMANDS = ("start", "plan", "assign", "record", "remove", "advance", "srm", "evaluate")
# The experiment of the loop, as the CLI and as the API create it.
START = ["--arms", "control,A,B", "--schedule", "400", "--min-visitors-per-arm", "20"]
START += ["--family", "continuous", "--seed", "4", "--name", "loop", "--draws", "7"]
SETTINGS = {
    "schedule": 400,
    "min_visitors_per_arm": 20,
    "family": "continuous",
    "seed": 4,
    "name": "loop",
    "fit_options": {"n_draws": 7},
}
TIMESTAMPS = ["planned_at", "closed_at"]


class FakeFit:
    """Stands in for pt.fit: a continuous posterior, A best on mobile, B elsewhere."""

    def __call__(self, observed, family, propensity, **options):
        arms = list(observed.attrs["pytyche_arms"])
        index = [ARMS.index(a) for a in arms]
        mobile = observed["device"].values == "mobile"
        lift = np.where(mobile[:, None], [0.0, 1.0, -1.0], [0.0, -1.0, 1.0])[:, index]
        rng = np.random.default_rng(0)
        draws = lift[:, None, :] + 0.05 * rng.standard_normal((lift.shape[0], 40, len(arms)))
        return pt.from_arrays("continuous", arms, observed, expected=draws)


@pytest.fixture
def fake_fit(monkeypatch):
    monkeypatch.setattr(experiment_module, "fit", FakeFit())


def visitors(n, round_index):
    rng = np.random.default_rng(round_index)
    return pd.DataFrame(
        {
            "visitor_id": [f"r{round_index}-{i:03d}" for i in range(n)],
            "device": rng.choice(["mobile", "desktop"], n),
            "age": rng.integers(18, 80, n).astype(float),
        }
    )


def with_outcome(assigned, round_index):
    out = assigned.copy()
    # Non-negative: the default (hurdle) family refuses a negative outcome.
    out["outcome"] = np.abs(np.random.default_rng(100 + round_index).normal(size=len(out)))
    return out


call = run_cli


def one_line_error(code, err, expected_code=2):
    assert code == expected_code, err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("pytyche")
    return err


def tree_digest(path: Path) -> dict[str, str]:
    """Every file of a directory tree and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def read_assigned(path):
    return pd.read_csv(path, dtype={"visitor_id": object})


def same_frame(got, want):
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True).astype(object),
        want.reset_index(drop=True).astype(object),
    )


def test_a_whole_loop_through_the_cli_equals_the_api(tmp_path, capsys, fake_fit):
    store = tmp_path / "exp"
    api = sequential_experiment(ARMS, **SETTINGS)

    # start
    code, out, _ = call(["start", store, *START], capsys)
    assert code == 0 and "Round 0 plan: 400 visitors" in out
    assert pt.open_experiment(store).config == api.config

    # plan
    code, out, err = call(["plan", store, "--out", tmp_path / "plan0.json"], capsys)
    assert code == 0 and str(api.plan()) in out and "wrote the round 0 plan" in err
    assert json.loads((tmp_path / "plan0.json").read_text()) == api.plan().to_dict()

    # assign: the same rows, and the store logs the assignment
    frame = visitors(400, 0)
    frame.to_csv(tmp_path / "visitors0.csv", index=False)
    assigned = tmp_path / "assigned0.csv"
    code, out, _ = call(["assign", store, tmp_path / "visitors0.csv", "--out", assigned], capsys)
    assert code == 0 and "assigned 400 visitor(s) in round 0" in out
    expected = api.plan().assign(frame)
    same_frame(read_assigned(assigned), expected)
    pd.testing.assert_frame_equal(pt.open_experiment(store).plan().assigned, api.plan().assigned)

    # record: a refused file leaves the store byte for byte as it was
    outcomes = with_outcome(read_assigned(assigned), 0)
    ghost = outcomes.iloc[:1].assign(visitor_id="ghost")
    pd.concat([outcomes, ghost]).to_csv(tmp_path / "bad.csv", index=False)
    before = tree_digest(store)
    err = one_line_error(*call(["record", store, tmp_path / "bad.csv"], capsys)[::2])
    assert "were never assigned by the round 0 plan: 'ghost'" in err
    assert tree_digest(store) == before

    outcomes.to_csv(tmp_path / "outcomes0.csv", index=False)
    code, out, _ = call(["record", store, tmp_path / "outcomes0.csv"], capsys)
    assert code == 0 and "recorded 400 visitor(s) in round 0" in out
    api.record(logged_observed(with_outcome(expected, 0)))
    xr.testing.assert_equal(pt.open_experiment(store).recorded(), api.recorded())

    # srm
    code, out, _ = call(["srm", store, "--out", tmp_path / "srm.json"], capsys)
    assert code == 0 and "round 0: chi-square" in out
    check, document = api.srm(), json.loads((tmp_path / "srm.json").read_text())
    assert document["rounds"][0]["p_value"] == float(check["p_value"].sel(round=0))
    assert not document["flagged"]
    assert [
        [document["rounds"][0]["counts"][c][a]["observed"] for a in ARMS]
        for c in ("control", "explore", "optimized")
    ] == check["observed"].sel(round=0).values.astype(int).tolist()

    # advance: the same next plan and audit trail; the posterior written beside
    posterior = tmp_path / "posterior1.zarr"
    code, out, _ = call(["advance", store, "--posterior-out", posterior], capsys)
    assert code == 0 and "planned round 1 (optimized, a fit on 400 visitors" in out
    plan = api.advance()
    resumed = pt.open_experiment(store)
    assert resumed.plan() == plan and plan.status == "optimized" and len(plan.segments) == 2
    xr.testing.assert_identical(
        resumed.history.drop_vars(TIMESTAMPS), api.history.drop_vars(TIMESTAMPS)
    )

    # evaluate: a plan (doubly robust, with the written posterior), segment weights, a split
    call(["plan", store, "--out", tmp_path / "plan1.json"], capsys)
    argv = ["evaluate", store, "--plan", tmp_path / "plan1.json", "--posterior", posterior]
    code, out, _ = call([*argv, "--bootstrap", "200", "--out", tmp_path / "dr.json"], capsys)
    assert code == 0 and "(dr)" in out
    want = evaluate_policy(api.recorded(), plan, posterior=api.posterior, n_bootstrap=200)
    got = json.loads((tmp_path / "dr.json").read_text())
    for name in ("estimate", "lower", "upper", "effective_sample_size", "max_weight"):
        assert got[name] == pytest.approx(float(want[name]), rel=1e-9), name

    weights = [
        {"id": s, "rule": rule, "weights": plan.optimized[s]} for s, rule in plan.segments.items()
    ]
    weights.append({"id": -1, "weights": plan.optimized[-1]})
    (tmp_path / "weights.json").write_text(json.dumps(weights))
    argv = ["evaluate", store, "--segments", tmp_path / "weights.json", "--bootstrap", "0"]
    code, out, _ = call([*argv, "--out", tmp_path / "snips.json"], capsys)
    assert code == 0 and "(snips)" in out
    allocation = {w["id"]: w["weights"] for w in weights}
    want = evaluate_policy(
        api.recorded(), (allocation, plan.segments), estimator="snips", n_bootstrap=0
    )
    got = json.loads((tmp_path / "snips.json").read_text())
    assert got["estimate"] == pytest.approx(float(want["estimate"]), rel=1e-12)
    # The same weights in the shape `pytyche allocate` writes (extra keys are ignored).
    shaped = {"allocation": {}, "segments": [{**w, "members": 1} for w in weights]}
    (tmp_path / "allocation.json").write_text(json.dumps(shaped))
    argv = ["evaluate", store, "--segments", tmp_path / "allocation.json", "--bootstrap", "0"]
    code, out, _ = call([*argv, "--out", tmp_path / "again.json"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "again.json").read_text())["estimate"] == got["estimate"]

    argv = ["evaluate", store, "--weights", "control=0.2,A=0.8", "--estimator", "ipw"]
    code, out, _ = call([*argv, "--bootstrap", "0", "--out", tmp_path / "ipw.json"], capsys)
    assert code == 0
    want = evaluate_policy(
        api.recorded(), {"control": 0.2, "A": 0.8}, estimator="ipw", n_bootstrap=0
    )
    got = json.loads((tmp_path / "ipw.json").read_text())
    assert got["estimate"] == pytest.approx(float(want["estimate"]), rel=1e-12)

    # Round 1's segments use `device`: a table without it, or a rule on a covariate the
    # visitors lack, is bad input.
    visitors(10, 1).drop(columns="device").to_csv(tmp_path / "no-device.csv", index=False)
    argv = ["assign", store, tmp_path / "no-device.csv", "--out", tmp_path / "x.csv"]
    err = one_line_error(*call(argv, capsys)[::2])
    assert "use the covariate 'device', which the visitor table lacks" in err
    (tmp_path / "country.json").write_text(
        json.dumps([{"id": 0, "rule": "country == 'fr'", "weights": {"A": 1.0}}])
    )
    argv = ["evaluate", store, "--segments", tmp_path / "country.json"]
    assert "country" in one_line_error(*call(argv, capsys)[::2])


@pytest.fixture
def stores(tmp_path):
    """Paths the bad-input cases name: a fresh store, one with round 0 recorded, files."""
    fresh = sequential_experiment(ARMS, schedule=200, seed=1, name="fresh")
    fresh.to_zarr(tmp_path / "fresh")
    recorded = sequential_experiment(ARMS, schedule=200, seed=1, name="recorded")
    assigned = recorded.plan().assign(visitors(200, 0))
    recorded.record(logged_observed(with_outcome(assigned, 0)))
    recorded.to_zarr(tmp_path / "recorded")
    visitors(5, 0).to_csv(tmp_path / "visitors.csv", index=False)
    visitors(5, 0).drop(columns="visitor_id").to_csv(tmp_path / "no-id.csv", index=False)
    (tmp_path / "not-a-store").mkdir()
    (tmp_path / "not-json.json").write_text("{plan")
    (tmp_path / "bad-rule.json").write_text(
        json.dumps([{"id": 0, "rule": "age >>> 3", "weights": {"A": 1.0}}])
    )
    return tmp_path


BAD_INPUT = [
    (["start", "{tmp}/new", "--arms", "control"], "--arms: expected at least 2"),
    (["start", "{tmp}/new", "--arms", "control,A", "--schedule", "weekly:3"], "--schedule"),
    (
        [
            "start",
            "{tmp}/new",
            "--arms",
            "control,A",
            "--control-share",
            "0.7",
            "--explore-share",
            "0.5",
        ],
        "must be at most 1",
    ),
    (["start", "{tmp}/fresh", "--arms", "control,A"], "pass --overwrite"),
    (["start", "{tmp}/not-a-store", "--arms", "control,A"], "is not a pytyche experiment store"),
    (["plan", "{tmp}/missing"], "STORE: {tmp}/missing does not exist"),
    (["plan", "{tmp}/not-a-store"], "is not a pytyche experiment store"),
    (
        ["assign", "{tmp}/fresh", "{tmp}/none.csv", "--out", "{tmp}/a.csv"],
        "VISITORS: {tmp}/none.csv does not exist",
    ),
    (
        ["assign", "{tmp}/fresh", "{tmp}/no-id.csv", "--out", "{tmp}/a.csv"],
        "needs a 'visitor_id' column",
    ),
    (
        ["assign", "{tmp}/fresh", "{tmp}/visitors.csv", "--out", "{tmp}/a.txt"],
        "must be a .csv or .parquet",
    ),
    (["record", "{tmp}/fresh", "{tmp}/visitors.csv"], "lacks the column(s) ['round', 'cell'"),
    (["record", "{tmp}/missing", "{tmp}/visitors.csv"], "does not exist"),
    (["advance", "{tmp}/not-a-store"], "is not a pytyche experiment store"),
    (["srm", "{tmp}/fresh"], "nothing recorded yet"),
    (["srm", "{tmp}/recorded", "--threshold", "2"], "--threshold: threshold must be in (0, 1)"),
    (["evaluate", "{tmp}/recorded"], "one of the arguments --plan --segments --arm --weights"),
    (["evaluate", "{tmp}/recorded", "--weights", "control"], "--weights: expected ARM=WEIGHT"),
    (["evaluate", "{tmp}/recorded", "--weights", "control=0.3,A=0.3"], "summing to 1"),
    (["evaluate", "{tmp}/recorded", "--weights", "control=0.5,Z=0.5"], "unknown arm(s) ['Z']"),
    (["evaluate", "{tmp}/recorded", "--segments", "{tmp}/bad-rule.json"], "--segments: segment 0"),
    (["evaluate", "{tmp}/recorded", "--plan", "{tmp}/not-json.json"], "is not JSON"),
    (["evaluate", "{tmp}/recorded", "--arm", "A", "--estimator", "dr"], "dr needs --posterior"),
    (["evaluate", "{tmp}/fresh", "--arm", "A"], "nothing recorded yet"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_the_store_is_unchanged(argv, message, stores, capsys):
    digests = {name: tree_digest(stores / name) for name in ("fresh", "recorded")}
    argv = [a.format(tmp=stores) for a in argv]
    err = one_line_error(*call(argv, capsys)[::2])
    assert message.format(tmp=stores) in err
    assert {name: tree_digest(stores / name) for name in digests} == digests
    assert not (stores / "new").exists() and not (stores / "a.csv").exists()


def test_evaluate_warns_of_segments_never_served_an_arm(stores, capsys):
    # A segment of visitors of one age, given an arm none of them was served (served elsewhere).
    logged = pt.open_experiment(stores / "recorded").recorded()
    served = pd.DataFrame({"age": logged["age"].values, "arm": logged["variant"].values})
    by_age = served.groupby("age")["arm"].agg(set)
    age, unserved = next((a, sorted(set(ARMS) - s)[0]) for a, s in by_age.items() if s != set(ARMS))
    weights = [
        {"id": 0, "rule": f"age == {age}", "weights": {unserved: 1.0}},
        {"id": -1, "weights": {a: 1 / 3 for a in ARMS}},
    ]
    (stores / "unsupported.json").write_text(json.dumps(weights))
    argv = ["evaluate", stores / "recorded", "--segments", stores / "unsupported.json"]
    status, _, err = call(argv, capsys)
    assert status == 0 and "of the policy's mass is on (segment, arm) pairs" in err
    argv = ["evaluate", stores / "recorded", "--arm", "A", "--bootstrap", "20"]
    assert "too few for a 90% percentile interval" in one_line_error(*call(argv, capsys)[::2])


@pytest.mark.parametrize(
    "damage",
    ["a visitor assigned another arm", "a missing outcome", "no outcome column"],
)
def test_a_refused_record_leaves_the_store_unchanged(damage, stores, capsys):
    store = stores / "fresh"
    assigned = stores / "assigned.csv"
    assert call(["assign", store, stores / "visitors.csv", "--out", assigned], capsys)[0] == 0
    table = with_outcome(read_assigned(assigned), 0)
    option = []
    if damage == "a visitor assigned another arm":
        table.loc[0, "arm"] = "B" if table.loc[0, "arm"] != "B" else "A"
    elif damage == "a missing outcome":
        table.loc[1, "outcome"] = np.nan
    else:
        option = ["--outcome", "revenue"]
    table.to_csv(stores / "outcomes.csv", index=False)
    before = tree_digest(store)
    state = pt.open_experiment(store)
    one_line_error(*call(["record", store, stores / "outcomes.csv", *option], capsys)[::2])
    assert tree_digest(store) == before
    after = pt.open_experiment(store)
    assert after.recorded() is None and after.plans == state.plans
    xr.testing.assert_identical(after.history, state.history)


def test_a_sample_ratio_mismatch_exits_3_and_advance_warns(tmp_path, capsys):
    store = tmp_path / "exp"
    argv = ["start", store, "--arms", "control,A,B", "--schedule", "3000", "--seed", "4"]
    assert call([*argv, "--min-visitors-per-arm", "1000000"], capsys)[0] == 0
    visitors(3000, 0).to_csv(tmp_path / "visitors.csv", index=False)
    argv = ["assign", store, tmp_path / "visitors.csv", "--out", tmp_path / "assigned.csv"]
    assert call(argv, capsys)[0] == 0
    table = with_outcome(read_assigned(tmp_path / "assigned.csv"), 0)
    lost = table.index[table["arm"] == "B"][:400]  # most of B's visitors lost in logging
    table.drop(index=lost).to_csv(tmp_path / "outcomes.csv", index=False)
    assert call(["record", store, tmp_path / "outcomes.csv"], capsys)[0] == 0
    code, out, err = call(["srm", store], capsys)
    assert code == 3 and "FLAGGED" in out
    assert err.count("\n") == 1 and "sample ratio mismatch in round(s) 0" in err
    code, out, err = call(["advance", store], capsys)  # burn-in: no fit
    assert code == 0 and "FLAGGED" in out
    assert err.startswith("pytyche: warning: sample ratio mismatch in round 0")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command_shows_an_example(command, capsys):
    code, out, _ = call([command, "--help"], capsys)
    assert code == 0
    assert "example" in out and f"pytyche {command} experiment.pytyche" in out


def test_the_installed_command_in_a_subprocess(stores):
    script = Path(sys.executable).parent / "pytyche"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pytyche.cli"]
    done = subprocess.run(
        [*command, "plan", str(stores / "recorded")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "round 0: initial, planned 200, recorded 200" in done.stdout


def test_start_without_a_seed_draws_one_and_prints_it(tmp_path, capsys):
    code, out, _ = call(["start", tmp_path / "a", "--arms", "control,A"], capsys)
    assert code == 0
    config = pt.open_experiment(tmp_path / "a").config
    assert (
        f"seed {config['seed']} (drawn at random); experiment id {config['experiment_id']}" in out
    )
    assert call(["start", tmp_path / "b", "--arms", "control,A"], capsys)[0] == 0
    assert pt.open_experiment(tmp_path / "b").config["seed"] != config["seed"]


def test_record_refuses_a_refund_in_a_hurdle_experiment_and_takes_a_one_arm_batch(tmp_path, capsys):
    store = tmp_path / "exp"
    assert call(["start", store, "--arms", "control,A,B", "--seed", "3"], capsys)[0] == 0
    visitors(60, 0).to_csv(tmp_path / "visitors.csv", index=False)
    argv = ["assign", store, tmp_path / "visitors.csv", "--out", tmp_path / "assigned.csv"]
    assert call(argv, capsys)[0] == 0
    table = read_assigned(tmp_path / "assigned.csv").assign(outcome=0.0)
    table.loc[4, "outcome"] = -20.0
    table.to_csv(tmp_path / "outcomes.csv", index=False)
    before = tree_digest(store)
    err = one_line_error(*call(["record", store, tmp_path / "outcomes.csv"], capsys)[::2])
    assert f"column 'outcome' is negative for 1 visitor(s): {table['visitor_id'][4]!r}" in err
    assert tree_digest(store) == before
    holdout = table[table["arm"] == "control"].iloc[:1].assign(outcome=0.0)
    holdout.to_csv(tmp_path / "one.csv", index=False)
    code, out, _ = call(["record", store, tmp_path / "one.csv"], capsys)
    assert code == 0 and "recorded 1 visitor(s) in round 0" in out


def test_remove_visitors_and_a_covariate(stores, capsys):
    store = stores / "recorded"
    ids = pt.open_experiment(store).recorded()["visitor_id"].values[:3].tolist()
    pd.DataFrame({"visitor_id": ids[:2]}).to_csv(stores / "bots.csv", index=False)
    before = tree_digest(store)
    argv = ["remove", store, "--visitors", "nobody,ghost", "--reason", "bots"]
    err = one_line_error(*call(argv, capsys)[::2])
    assert "2 visitor(s) have no recorded visit: 'nobody', 'ghost'" in err
    assert tree_digest(store) == before
    argv = ["remove", store, "--visitors", stores / "bots.csv", "--reason", "bot traffic"]
    code, out, _ = call(argv, capsys)
    assert code == 0 and "removed 2 recorded visit(s) of 2 visitor(s)" in out
    argv = ["remove", store, "--visitors", ids[2], "--round", "0", "--reason", "a test order"]
    assert call(argv, capsys)[0] == 0
    argv = ["remove", store, "--covariate", "age", "--reason", "collected after the visit"]
    code, out, _ = call(argv, capsys)
    assert code == 0 and "removed the covariate 'age'" in out
    recorded = pt.open_experiment(store).recorded()
    assert recorded.sizes["visitor"] == 197 and "age" not in recorded.variables
    assert not set(ids) & set(recorded["visitor_id"].values)
    err = one_line_error(*call(["remove", store, "--covariate", "age"], capsys)[::2])
    assert "--reason" in err
