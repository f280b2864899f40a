"""The experiment loop: record checks, advance (atomic), burn-in, dropping, graduation, SRM."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt
from pytyche.sequential import SampleRatioMismatchWarning, logged_observed, sequential_experiment
from pytyche.sequential import experiment as experiment_module

ARMS = ["control", "A", "B"]


def visitors(n, round_index, seed=0):
    rng = np.random.default_rng([seed, round_index])
    return pd.DataFrame(
        {
            "visitor_id": [f"r{round_index}-{i}" for i in range(n)],
            "device": rng.choice(["mobile", "desktop"], n),
            "age": rng.integers(18, 80, n).astype(float),
        }
    )


def serve(plan, n=400, seed=0):
    """Assign a round's visitors and give them an outcome."""
    out = plan.assign(visitors(n, plan.round, seed))
    out["outcome"] = np.random.default_rng(plan.round).normal(size=len(out))
    return out


class FakeFit:
    """Stands in for pt.fit: a synthetic continuous posterior with known best arms."""

    def __init__(
        self,
        lift_mobile=(0.0, 1.0, -1.0),
        lift_other=(0.0, -1.0, 1.0),
        n_chains=None,
        n_draws=40,
        shared=0.0,
    ):
        """``shared``: scale of an autocorrelated per-sample shift common to all visitors
        (makes P(best) uncertain); ``n_chains``: add a chain dim."""
        self.calls = []
        self.lift = {"mobile": np.array(lift_mobile), "other": np.array(lift_other)}
        self.n_chains, self.n_draws, self.shared = n_chains, n_draws, shared

    def __call__(self, observed, family, propensity, **options):
        self.calls.append({"observed": observed, "propensity": propensity, "options": options})
        arms = list(observed.attrs["pytyche_arms"])
        index = [ARMS.index(a) for a in arms]
        mobile = observed["device"].values == "mobile"
        mean = np.where(mobile[:, None], self.lift["mobile"], self.lift["other"])[:, index]
        rng = np.random.default_rng(0)
        chains = () if self.n_chains is None else (self.n_chains,)
        samples = (*chains, self.n_draws, len(arms))
        draws = mean.reshape(-1, *[1] * len(chains), 1, len(arms)) + 0.05 * rng.standard_normal(
            (mean.shape[0], *samples)
        )
        if self.shared:  # AR(1) along draw: effective sample size well below the draws
            shift = rng.standard_normal(samples)
            for d in range(1, self.n_draws):
                shift[..., d, :] = 0.8 * shift[..., d - 1, :] + 0.6 * shift[..., d, :]
            draws = draws + self.shared * shift
        return pt.from_arrays("continuous", arms, observed, expected=draws)


def experiment(**kwargs):
    options = {
        "schedule": 400,
        "min_visitors_per_arm": 20,
        "family": "continuous",
        "seed": 4,
        "name": "test",
    }
    return sequential_experiment(ARMS, **{**options, **kwargs})


def test_record_refuses_what_the_plan_did_not_assign():
    exp = experiment()
    out = serve(exp.plan())
    ghost = out.iloc[:2].assign(visitor_id=["ghost-1", "ghost-2"])
    with pytest.raises(ValueError, match=r"2 visitor\(s\) were never assigned.*'ghost-1'"):
        exp.record(logged_observed(pd.concat([out, ghost])))
    wrong_arm = out.copy()
    flip = wrong_arm.index[wrong_arm["arm"] == "control"][:3]
    wrong_arm.loc[flip, "arm"] = "A"
    with pytest.raises(ValueError, match=r"3 visitor\(s\) were served another arm"):
        exp.record(logged_observed(wrong_arm))
    wrong_p = out.copy()
    wrong_p.loc[wrong_p.index[5], "propensity"] *= 0.5
    with pytest.raises(ValueError, match=r"propensity that differs.*'r0-5'"):
        exp.record(logged_observed(wrong_p))
    wrong_cell = out.copy()
    wrong_cell["cell"] = "explore"
    with pytest.raises(ValueError, match="cell that differs"):
        exp.record(logged_observed(wrong_cell))
    assert exp.recorded() is None  # nothing recorded by the refusals
    exp.record(logged_observed(out.iloc[:100]))
    exp.record(logged_observed(out.iloc[100:]))
    assert exp.recorded().sizes["visitor"] == len(out)
    with pytest.raises(ValueError, match="already recorded in round 0"):
        exp.record(logged_observed(out.iloc[:5]))


def test_failing_fit_or_tree_leaves_the_experiment_unchanged(monkeypatch):
    exp = experiment()
    exp.record(logged_observed(serve(exp.plan())))
    plans, history, recorded = exp.plans, exp.history, exp.recorded()

    def broken(*args, **kwargs):
        raise RuntimeError("fit exploded")

    monkeypatch.setattr(experiment_module, "fit", broken)
    with pytest.raises(RuntimeError, match="fit exploded"):
        exp.advance()
    monkeypatch.setattr(experiment_module, "fit", FakeFit())
    monkeypatch.setattr(experiment_module, "fit_policy_tree", broken)
    with pytest.raises(RuntimeError, match="fit exploded"):
        exp.advance()
    assert exp.round == 0 and exp.plans == plans
    assert all(a is b for a, b in zip(exp.plans, plans, strict=True))
    xr.testing.assert_identical(exp.history, history)
    xr.testing.assert_identical(exp.recorded(), recorded)
    assert exp.posterior is None
    monkeypatch.undo()
    monkeypatch.setattr(experiment_module, "fit", FakeFit())
    assert exp.advance().round == 1 and exp.round == 1


def test_burn_in_keeps_the_optimized_cell_uniform_and_does_not_fit(monkeypatch):
    fake = FakeFit()
    monkeypatch.setattr(experiment_module, "fit", fake)
    exp = experiment(min_visitors_per_arm=1_000)
    exp.record(logged_observed(serve(exp.plan())))
    plan = exp.advance()
    assert plan.status == "burn-in" and not fake.calls
    assert all(w == pytest.approx(1 / 3) for w in plan.optimized[-1].values())
    assert "burn-in until every arm has 1000 visitors" in str(plan)


def test_advance_fits_with_logged_propensities_and_plans_per_segment(monkeypatch):
    fake = FakeFit()
    monkeypatch.setattr(experiment_module, "fit", fake)
    exp = experiment(epsilon=0.0, fit_options={"n_draws": 7, "seed": 100})
    first = exp.plan()
    out = serve(first)
    exp.record(logged_observed(out))
    plan = exp.advance()
    call = fake.calls[0]
    assert call["options"]["n_draws"] == 7 and call["options"]["seed"] == 101  # seed + round
    # Rows are variant-major; each row is the round-0 plan's probabilities for the visitor.
    observed = call["observed"]
    variant = observed["variant"].values
    assert list(pd.unique(variant)) == ARMS
    np.testing.assert_allclose(
        call["propensity"], first.effective_probability.values[[0] * len(variant)]
    )
    assert not {"propensity", "cell", "round", "segment"} & set(observed.coords)
    # Two segments (mobile vs desktop), each sure of its best arm.
    assert plan.status == "optimized" and len(plan.segments) == 2
    assert [str(s.rule) for s in plan.policy_tree.segments] == list(plan.segments.values())
    tree_segments = {s: rule for s, rule in plan.segments.items()}
    reference = pt.thompson_allocation(exp.posterior, tree_segments, epsilon=0.0)
    for s, weights in reference.items():
        assert plan.optimized[s] == pytest.approx(weights, abs=1e-12)
    c, e = plan.cells["control"], plan.cells["explore"]
    mobile = next(
        s
        for s, rule in plan.segments.items()
        if "'mobile'" in rule and "not" not in rule and "!=" not in rule
    )
    effective = plan.effective_probability.sel(segment=mobile)
    assert float(effective.sel(arm="A")) == pytest.approx((1 - c - e) + e / 3)
    assert float(effective.sel(arm="control")) == pytest.approx(c + e / 3)
    # Both treatments are best somewhere: nothing dropped; both pairs graduate.
    assert plan.dropped == ()
    assert {(g["arm"]) for g in plan.graduation} == {"A", "B"}
    assert "graduation candidate: A in segment" in str(plan)
    # The audit trail.
    history = exp.history
    assert list(history["round"].values) == [0, 1]
    assert history["data_hash"].values[0] == "" and len(history["data_hash"].values[1]) == 64
    assert json.loads(history["fit_options"].values[1])["seed"] == 101
    assert history["closed_at"].values[0] != "" and history["closed_at"].values[1] == ""
    assert set(history["package_version"].values) == {pt.__version__}
    assert json.loads(history["plan"].values[1]) == plan.to_dict()
    assert int(history["recorded"].values[0]) == len(out)


@pytest.mark.parametrize("n_chains", [None, 2])
def test_prob_best_mcse_equals_segment_summary(monkeypatch, n_chains):
    fake = FakeFit((0.0, 0.3, -0.3), (0.0, -0.3, 0.3), n_chains=n_chains, n_draws=100, shared=0.5)
    monkeypatch.setattr(experiment_module, "fit", fake)
    exp = experiment()
    exp.record(logged_observed(serve(exp.plan())))
    plan = exp.advance()
    assert plan.status == "optimized" and ("chain" in exp.posterior.sample_dims) == bool(n_chains)
    # The tree's segments, and the pooled row (-1) as the one segment "everyone".
    for segments, ids in ((plan.segments, list(plan.segments)), ({0: "everyone"}, [-1])):
        summary = pt.segment_summary(exp.posterior, segments)
        for s, row in zip(ids, summary["segment"].values, strict=True):
            expected = summary.sel(segment=row)
            assert list(plan.prob_best_mcse[s]) == ARMS
            np.testing.assert_allclose(
                [plan.prob_best[s][a] for a in ARMS], expected["prob_best"].values, rtol=1e-12
            )
            np.testing.assert_allclose(
                [plan.prob_best_mcse[s][a] for a in ARMS],
                expected["prob_best_mcse"].values,
                rtol=1e-12,
            )
    mcse = np.array([list(row.values()) for row in plan.prob_best_mcse.values()])
    assert (mcse > 0).all()
    if n_chains:  # autocorrelated draws: above the independent-draws error somewhere
        p = np.array([list(row.values()) for row in plan.prob_best.values()])
        assert (mcse > 1.2 * np.sqrt(p * (1 - p) / 200)).any()
    text = str(plan)
    assert "P(best) ± Monte Carlo standard error:" in text
    s, a = -1, "A"
    assert f"A {plan.prob_best[s][a]:.3f} ± {plan.prob_best_mcse[s][a]:.3f}" in text
    again = pt.sequential.RoundPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.prob_best_mcse == plan.prob_best_mcse


def test_an_arm_never_best_is_dropped(monkeypatch):
    fake = FakeFit(lift_mobile=(0, 1, -1), lift_other=(0, 1, -1))
    monkeypatch.setattr(experiment_module, "fit", fake)
    exp = experiment()
    exp.record(logged_observed(serve(exp.plan())))
    plan = exp.advance()
    assert plan.dropped == ("B",) and plan.active == ("control", "A")
    assert "dropped this round: B" in str(plan)
    out = serve(plan)
    assert (out["arm"] != "B").all()
    assert float(plan.effective_probability.sel(arm="B").sum()) == 0.0
    np.testing.assert_allclose(plan.effective_probability.sum("arm"), 1.0)
    # The next fit still sees B's round-0 visitors; round-1 visitors had (almost) no chance
    # of B, raised to 1e-6 so the fit's propensity covariate stays inside (0, 1).
    exp.record(logged_observed(out))
    exp.advance()
    propensity = fake.calls[-1]["propensity"]
    assert ((propensity > 0) & (propensity < 1)).all()
    np.testing.assert_allclose(propensity.sum(axis=1), 1.0)
    assert np.isclose(propensity[:, 2], 1e-6, rtol=1e-3).sum() == len(out)


def test_control_is_never_dropped_and_two_arms_remain(monkeypatch):
    fake = FakeFit(lift_mobile=(1, 0, -1), lift_other=(1, 0, -1))
    monkeypatch.setattr(experiment_module, "fit", fake)
    exp = experiment()
    exp.record(logged_observed(serve(exp.plan())))
    plan = exp.advance()
    assert "control" in plan.active and len(plan.active) == 2


def test_srm_expected_counts_and_a_flagged_round_warns():
    exp = experiment(min_visitors_per_arm=10**6, schedule=3_000)
    out = serve(exp.plan(), n=3_000)
    exp.record(logged_observed(out))
    check = exp.srm()
    # Naive expected counts: every visitor adds cell weight × P(arm | segment, cell).
    plan = exp.plan()
    cells = ("control", "explore", "optimized")
    tables = {cell: plan.cell_probability(cell).to_pandas() for cell in cells}
    naive = np.zeros((3, 3))
    for segment in out["segment"]:
        for k, cell in enumerate(cells):
            naive[k] += plan.cells[cell] * tables[cell].loc[segment].to_numpy()
    np.testing.assert_allclose(check["expected"].sel(round=0).values, naive)
    assert not bool(check["flagged"].sel(round=0))
    exp.advance()  # no warning on a correct round (warnings are errors in this suite)

    # Round 1: lose most of arm B's visitors in logging.
    out = serve(exp.plan(), n=3_000)
    lost = out.index[out["arm"] == "B"][:400]
    exp.record(logged_observed(out.drop(index=lost)))
    assert bool(exp.srm()["flagged"].sel(round=1))
    with pytest.warns(SampleRatioMismatchWarning, match="round 1"):
        plan = exp.advance()
    assert "sample ratio check of round 1" in str(plan) and "FLAGGED" in str(plan)


def test_covariates_must_not_change_between_rounds(monkeypatch):
    exp = experiment(min_visitors_per_arm=10**6)
    exp.record(logged_observed(serve(exp.plan())))
    exp.advance()
    out = serve(exp.plan()).drop(columns="age")
    with pytest.raises(ValueError, match="earlier rounds had"):
        exp.record(logged_observed(out))


def hurdle_round(plan, converters_of_a):
    """Serve a round; arm A converts exactly ``converters_of_a`` times, the others often."""
    out = plan.assign(visitors(300, plan.round))
    rng = np.random.default_rng(plan.round)
    spend = rng.lognormal(3.0, 0.5, len(out))
    converts = rng.random(len(out)) < 0.3
    is_a = (out["arm"] == "A").to_numpy()
    converts[is_a] = np.arange(is_a.sum()) < converters_of_a
    out["outcome"] = np.where(converts, spend, 0.0)
    return out


def test_hurdle_burn_in_waits_for_the_converters_the_fit_needs():
    fit_options = {"n_draws": 10, "n_trees_mu": 10, "n_trees_tau": 5, "n_warmstart": 2}
    exp = experiment(family="hurdle", fit_options={**fit_options, "num_threads": 1})
    exp.record(logged_observed(hurdle_round(exp.plan(), converters_of_a=9)))
    plan = exp.advance()  # enough visitors everywhere, but A has 9 converters: no fit yet
    assert plan.status == "burn-in" and exp.posterior is None
    assert plan.notes["arm_converters"]["A"] == 9
    assert plan.notes["waiting_for"] == ["A: 9 of 10 converters (outcome > 0)"]
    assert "and 10 converters (outcome > 0), so far control" in str(plan)
    exp.record(logged_observed(hurdle_round(plan, converters_of_a=1)))
    assert exp.advance().status == "optimized" and exp.posterior.family == "hurdle"


def test_a_fit_refused_by_the_setup_check_points_at_fit_data():
    exp = experiment(family="binary", min_visitors_per_arm=1)
    out = serve(exp.plan())
    out["outcome"] = 0.0  # valid 0/1 values, but nobody converted: nothing a binary fit can do
    exp.record(logged_observed(out))
    with pytest.raises(ValueError, match=r"check_setup\(exp\.fit_data\(\)\[0\], family='binary'\)"):
        exp.advance()


# -- record refuses what would poison advance ---------------------------------------------------


def refused(exp, observed, *fragments):
    """Record must refuse `observed` naming every fragment, leaving the experiment as it was."""
    before = exp.recorded()
    with pytest.raises(ValueError) as info:
        exp.record(observed)
    for fragment in fragments:
        assert fragment in str(info.value)
    after = exp.recorded()
    assert (before is None and after is None) or after.identical(before)
    return str(info.value)


def test_record_refuses_outcomes_the_family_cannot_fit():
    exp = experiment(family="hurdle")
    out = serve(exp.plan())
    out["outcome"] = out["outcome"].abs()
    out.loc[[3, 7], "outcome"] = [-12.5, -1.0]  # refunds
    ids = out["visitor_id"].tolist()
    refused(
        exp,
        logged_observed(out),
        "column 'outcome' is negative for 2 visitor(s)",
        f"{ids[3]!r} (-12.5)",
        f"{ids[7]!r} (-1.0)",
        "Nothing was recorded",
    )
    binary = experiment(family="binary")
    out = serve(binary.plan())
    out["outcome"] = (out["outcome"] > 0).astype(float)
    out.loc[0, "outcome"] = 2.0
    refused(binary, logged_observed(out), "column 'outcome' is not 0 or 1", "(2.0)")
    out.loc[0, "outcome"] = 1.0
    binary.record(logged_observed(out))  # fixed: accepted


def test_record_refuses_infinite_outcomes_and_covariates_in_a_hand_built_dataset():
    exp = experiment()
    observed = logged_observed(serve(exp.plan()))
    outcome = observed["outcome"].values.copy()
    outcome[5] = np.inf
    refused(exp, observed.assign_coords(outcome=("visitor", outcome)), "'outcome' is NaN or inf")
    outcome[5] = np.nan
    refused(exp, observed.assign_coords(outcome=("visitor", outcome)), "'outcome' is NaN or inf")
    age = observed["age"].values.copy()
    age[[1, 2]] = [np.inf, -np.inf]
    message = refused(exp, observed.assign_coords(age=("visitor", age)), "column 'age' is infinite")
    assert "for 2 visitor(s)" in message
    age[[1, 2]] = np.nan  # a missing covariate is fine: those visitors match no rule on it
    exp.record(observed.assign_coords(age=("visitor", age)))


def test_record_refuses_a_per_visitor_text_covariate():
    exp = experiment()
    out = serve(exp.plan())
    out["session"] = [f"s-{i}" for i in range(len(out))]
    message = refused(exp, logged_observed(out), "covariate 'session' has 400 distinct text")
    assert "more than the 256 a fit takes" in message and "remove_covariate" in message
    out = out.drop(columns="session")
    out["email"] = [f"user{i}@example.com" for i in range(len(out))]
    message = refused(exp, logged_observed(out.iloc[:30]), "'email' has 30 distinct text values")
    assert "a different value for every visit: an identifier" in message
    out["email"] = np.where(np.arange(len(out)) % 2, "gmail.com", "example.com")  # bucketed
    exp.record(logged_observed(out))


def test_record_refuses_text_a_segment_rule_could_not_match():
    # A NUL character in a hand-built Dataset (object text keeps it; numpy's fixed-width text
    # would drop it): the rule a tree writes on it is refused, so advance would fail.
    exp = experiment()
    observed = logged_observed(serve(exp.plan()))
    n = observed.sizes["visitor"]
    tier = np.array(["gold" if i % 2 else "basic\x00" for i in range(n)], dtype=object)
    refused(
        exp,
        observed.assign_coords(plan_tier=("visitor", tier)),
        "'plan_tier' holds a NUL character for 200 visitor(s)",
    )
    clean = np.where(tier == "gold", "gold", "basic").astype(object)
    exp.record(observed.assign_coords(plan_tier=("visitor", clean)))


def test_record_refuses_a_covariate_that_changes_kind_between_batches():
    exp = experiment()
    out = serve(exp.plan())
    out["plan_tier"] = np.where(np.arange(len(out)) % 2, "gold", "basic")
    exp.record(logged_observed(out.iloc[:200]))
    later = out.iloc[200:].assign(plan_tier=np.arange(200) % 3)
    refused(exp, logged_observed(later), "'plan_tier' holds number values in this batch but text")
    exp.record(logged_observed(out.iloc[200:]))
    assert exp.recorded().sizes["visitor"] == 400


# -- removing recorded data ---------------------------------------------------------------------


def test_remove_visitors_is_kept_in_the_audit_trail(monkeypatch):
    monkeypatch.setattr(experiment_module, "fit", FakeFit())
    exp = experiment()
    first = serve(exp.plan())
    exp.record(logged_observed(first))
    exp.advance()
    second = serve(exp.plan())
    exp.record(logged_observed(second))
    assert exp.state()["generation"] == [0, 0]
    gone = [first["visitor_id"][0], first["visitor_id"][1], second["visitor_id"][0]]
    with pytest.raises(ValueError, match="reason must be non-empty"):
        exp.remove_visitors(gone, reason=" ")
    with pytest.raises(ValueError, match=r"1 visitor\(s\) have no recorded visit: 'nobody'"):
        exp.remove_visitors([*gone, "nobody"], reason="bots")
    with pytest.raises(ValueError, match="have no recorded visit in round 1"):
        exp.remove_visitors(gone, reason="bots", round=1)
    assert exp.recorded().sizes["visitor"] == 800 and exp.events == []  # refusals change nothing
    assert exp.remove_visitors(gone, reason="bot traffic (ticket 42)") == 3
    assert exp.recorded().sizes["visitor"] == 797
    assert not set(gone) & set(exp.recorded()["visitor_id"].values)
    state = exp.state()
    assert state["generation"] == [1, 1]
    (event,) = state["events"]
    assert event["action"] == "remove_visitors" and event["reason"] == "bot traffic (ticket 42)"
    assert event["details"] == {"visitors": gone, "removed_per_round": {"0": 2, "1": 1}}
    assert json.loads(json.dumps(state["events"])) == exp.events
    assert exp.remove_visitors(second["visitor_id"][1], reason="test order", round=1) == 1
    assert exp.state()["generation"] == [1, 2]
    exp.advance()  # the fit runs on what is left
    assert exp.history["fitted_visitors"].values[-1] == 796


def test_remove_covariate_drops_it_from_every_round_and_later_batch(monkeypatch):
    monkeypatch.setattr(experiment_module, "fit", FakeFit())
    exp = experiment()
    exp.record(logged_observed(serve(exp.plan())))
    with pytest.raises(
        ValueError, match=r"'colour' is not a recorded covariate.*\['age', 'device'\]"
    ):
        exp.remove_covariate("colour", reason="typo")
    exp.remove_covariate("age", reason="collected after the visit: a leak")
    assert "age" not in exp.recorded().variables and exp.removed_covariates == ("age",)
    assert exp.events[0]["details"] == {"covariate": "age"}
    assert exp.state()["generation"] == [1]
    exp.advance()
    exp.record(logged_observed(serve(exp.plan())))  # still has the column: it is left out
    assert "age" not in exp.recorded().variables


# -- returning visitors, single-arm batches, the end of a schedule --------------------------------


def test_a_returning_visitor_is_one_row_per_visit(monkeypatch):
    monkeypatch.setattr(experiment_module, "fit", FakeFit())
    exp = experiment()
    exp.record(logged_observed(serve(exp.plan())))
    exp.advance()
    frame = visitors(400, 1)
    frame["visitor_id"] = visitors(400, 0)["visitor_id"]  # every round-0 visitor is back
    out = exp.plan().assign(frame)
    out["outcome"] = np.random.default_rng(1).normal(size=len(out))
    exp.record(logged_observed(out))
    recorded = exp.recorded()
    index = recorded.indexes["visitor"]
    assert index.is_unique and recorded.sizes["visitor"] == 800
    assert index[0] == "r0-0@0" and index[400] == f"{out['visitor_id'][0]}@1"
    assert recorded["visitor_id"].values[400] == out["visitor_id"][0]
    assert recorded["round"].values.tolist() == [0] * 400 + [1] * 400
    observed, _ = exp.fit_data()
    assert observed.indexes["visitor"].is_unique
    plan = exp.advance()
    assert exp.history["fitted_visitors"].values[-1] == 800
    assert exp.srm()["observed"].sum().item() == 800
    value = pt.sequential.evaluate_policy(
        exp.recorded(), plan, estimator="dr", posterior=exp.posterior, n_bootstrap=0
    )
    assert np.isfinite(float(value["estimate"]))


def test_a_batch_served_one_arm_records():
    exp = experiment()
    out = serve(exp.plan())
    holdout = out[out["cell"] == "control"]
    assert len(holdout) and set(holdout["arm"]) == {"control"}
    exp.record(logged_observed(holdout))
    exp.record(logged_observed(out[out["cell"] != "control"].iloc[:1]))
    assert exp.recorded().sizes["visitor"] == len(holdout) + 1
    numbers = serve(experiment().plan()).assign(visitor_id=np.arange(400))
    single = logged_observed(numbers.iloc[:1])
    assert single.sizes["visitor"] == 1 and single.attrs["pytyche_arms"] == [numbers["arm"][0]]


def test_an_explicit_schedule_ends_with_a_final_plan(monkeypatch):
    monkeypatch.setattr(experiment_module, "fit", FakeFit())
    exp = experiment(schedule=[400, 400])
    exp.record(logged_observed(serve(exp.plan())))
    assert exp.advance().status == "optimized" and not exp.finished
    exp.record(logged_observed(serve(exp.plan())))
    final = exp.advance()  # the last round's data is fitted and planned from
    assert final.status == "finished" and final.size == 0 and exp.finished
    assert {p.experiment_id for p in exp.plans} == {exp.config["experiment_id"]}
    assert exp.history["fitted_visitors"].values[-1] == 800 and final.prob_best
    assert "finished" in str(final)
    with pytest.raises(ValueError, match=r"finished.*assigns nobody"):
        final.assign(visitors(5, 2))
    with pytest.raises(ValueError, match=r"finished.*nothing can be recorded"):
        exp.record(logged_observed(serve(exp.plans[1])))
    with pytest.raises(ValueError, match="the experiment is finished"):
        exp.advance()


def test_settings_are_checked_at_the_start_not_at_the_first_fit():
    with pytest.raises(ValueError, match=r"unknown option 'n_draw'.*'n_draws'"):
        experiment(fit_options={"n_draw": 20})
    with pytest.raises(ValueError, match="graduation_loss"):
        experiment(graduation_loss=-1.0)


def test_the_default_seed_is_drawn_and_kept():
    a, b = sequential_experiment(ARMS), sequential_experiment(ARMS)
    assert a.config["seed"] != b.config["seed"] and 0 <= a.config["seed"] < 2**64
    assert len(a.config["experiment_id"]) == 32
    assert a.plan().seed == a.config["seed"] and a.plan().experiment_id == a.config["experiment_id"]
