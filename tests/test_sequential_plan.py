"""Plans: validation, schedules, cells and effective probabilities, the optimized weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche.sequential import RoundPlan, check_schedule, round_size, sequential_experiment
from pytyche.sequential.config import check_config
from pytyche.sequential.plan import exploration_floor, schedule_rounds

ARMS = ["control", "A", "B"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"min_control_weight": 1.5}, "min_control_weight must be in [0, 1], got 1.5"),
        ({"min_explore_weight": -0.1}, "min_explore_weight must be in [0, 1], got -0.1"),
        ({"min_control_weight": 0.6, "min_explore_weight": 0.5}, "0.6 + 0.5"),
        ({"epsilon": float("nan")}, "epsilon must be a number"),
        ({"schedule": 0}, "schedule must be a positive integer, got 0"),
        ({"schedule": ("tripling", 5)}, "'tripling'"),
        ({"schedule": [100, -5]}, "schedule[1] must be a positive integer, got -5"),
        ({"schedule": "doubling"}, "got 'doubling'"),
        ({"schedule": []}, "got []"),
        ({"max_segment_depth": 7}, "max_segment_depth must be 0..6, got 7"),
        ({"min_segment_share": 0.7}, "min_segment_share must be in (0, 0.5], got 0.7"),
        ({"min_visitors_per_arm": -1}, "got -1"),
        ({"seed": -3}, "got -3"),
        ({"fit_options": {"propensity": [0.5, 0.5]}}, "['propensity']"),
    ],
)
def test_bad_settings_raise_naming_the_value(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        sequential_experiment(ARMS, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("arms", "fragment"),
    [(["control"], "at least 2"), (["control", "A", "A"], "['A']"), ("control", "sequence")],
)
def test_bad_arms_raise(arms, fragment):
    with pytest.raises(ValueError) as info:
        sequential_experiment(arms)
    assert fragment in str(info.value)


def test_schedules():
    assert [round_size(check_schedule(None), r) for r in range(3)] == [1_000, 2_000, 4_000]
    assert [round_size(check_schedule(("doubling", 5_000)), r) for r in range(4)] == [
        5_000,
        10_000,
        20_000,
        40_000,
    ]
    assert [round_size(check_schedule(700), r) for r in range(3)] == [700] * 3
    assert [round_size(check_schedule(("fixed", 9)), r) for r in range(2)] == [9, 9]
    explicit = check_schedule([300, 500])
    assert [round_size(explicit, r) for r in range(2)] == [300, 500]
    with pytest.raises(ValueError, match="has 2 round"):
        round_size(explicit, 2)


def test_first_plan_is_uniform_outside_control():
    plan = sequential_experiment(ARMS, min_control_weight=0.1, min_explore_weight=0.2).plan()
    assert plan.round == 0 and plan.status == "initial" and plan.size == 1_000
    assert sum(plan.cells.values()) == pytest.approx(1.0)
    effective = plan.effective_probability
    np.testing.assert_allclose(effective.sum("arm"), 1.0)
    # control: its cell (0.1) plus a third of the other 0.9; treatments a third of 0.9 each.
    np.testing.assert_allclose(effective.sel(arm="control"), 0.1 + 0.9 / 3)
    np.testing.assert_allclose(effective.sel(arm="A"), 0.9 / 3)
    text = str(plan)
    assert "Round 0 plan" in text and "no posterior yet" in text


def _plan(optimized, c=0.05, e=0.05, segments=None, active=ARMS):
    segments = {0: "device == 'mobile'", 1: "device != 'mobile'"} if segments is None else segments
    return RoundPlan(
        round=1,
        size=1_000,
        arms=ARMS,
        active=active,
        cells={"control": c, "explore": e, "optimized": 1 - c - e},
        segments=segments,
        optimized=optimized,
        status="optimized",
        seed=3,
    )


def test_segment_sure_of_one_arm_gets_optimized_plus_explore_share():
    c, e = 0.1, 0.15
    plan = _plan(
        {0: {"A": 1.0}, 1: {"control": 0.2, "A": 0.3, "B": 0.5}, -1: {"control": 1.0}}, c, e
    )
    effective = plan.effective_probability
    np.testing.assert_allclose(effective.sum("arm"), 1.0)
    assert float(effective.sel(segment=0, arm="A")) == pytest.approx((1 - c - e) + e / 3)
    assert float(effective.sel(segment=0, arm="control")) == pytest.approx(c + e / 3)
    # Cell probabilities are proper distributions too.
    for cell in ("control", "explore", "optimized"):
        np.testing.assert_allclose(plan.cell_probability(cell).sum("arm"), 1.0)


def test_dropped_arm_gets_nothing_anywhere():
    plan = _plan(
        {0: {"control": 0.5, "A": 0.5}, 1: {"control": 0.5, "A": 0.5}, -1: {"control": 1.0}},
        active=["control", "A"],
    )
    assert float(plan.effective_probability.sel(arm="B").sum()) == 0.0
    np.testing.assert_allclose(plan.cell_probability("explore").sel(arm="A"), 0.5)


def test_plan_round_trips_through_dict():
    plan = _plan({0: {"A": 1.0}, 1: {"B": 1.0}, -1: {"control": 1.0}})
    again = RoundPlan.from_dict(plan.to_dict())
    assert again == plan
    xr.testing.assert_identical(again.effective_probability, plan.effective_probability)
    with pytest.raises(ValueError, match="not a pytyche round plan"):
        RoundPlan.from_dict({"round": 1})


def test_prob_best_mcse_round_trips_and_shows_beside_p_best():
    ids = (0, 1, -1)
    base = _plan({0: {"A": 1.0}, 1: {"B": 1.0}, -1: {"control": 1.0}})
    plan = RoundPlan(
        **{
            **{k: v for k, v in base.to_dict().items() if k != "pytyche_round_plan"},
            "segments": base.segments,
            "optimized": base.optimized,
            "graduation": [{"segment": 0, "arm": "A", "prob_best": 0.97, "expected_loss": 1e-4}],
            "prob_best": {s: {"control": 0.01, "A": 0.97, "B": 0.02} for s in ids},
            "expected_loss": {s: {"control": 0.5, "A": 1e-4, "B": 0.4} for s in ids},
            "prob_best_mcse": {s: {"control": 0.001, "A": 0.0123, "B": 0.0014} for s in ids},
        }
    )
    description = json.loads(json.dumps(plan.to_dict()))
    again = RoundPlan.from_dict(description)
    assert again == plan and again.prob_best_mcse == plan.prob_best_mcse
    assert again.prob_best_mcse[-1] == {"control": 0.001, "A": 0.0123, "B": 0.0014}
    changed = {**description, "prob_best_mcse": {**description["prob_best_mcse"], "0": {}}}
    assert RoundPlan.from_dict(changed) != plan  # part of equality
    # A description written before the MCSE was reported still loads, without it.
    old = RoundPlan.from_dict({k: v for k, v in description.items() if k != "prob_best_mcse"})
    assert old.prob_best_mcse == {} and old.prob_best == plan.prob_best
    assert "±" not in str(old) and "P(best) 0.970, expected loss" in str(old)
    text = str(plan)
    assert "graduation candidate: A in segment 0 (P(best) 0.970 ± 0.012, expected" in text
    assert "P(best) ± Monte Carlo standard error:" in text
    assert "  segment 1 (device != 'mobile'): control 0.010 ± 0.001, A 0.970 ± 0.012, " in text
    assert "  no segment (pooled): control 0.010 ± 0.001, A 0.970 ± 0.012, B 0.020 ± 0.001" in text


def test_weights_must_sum_to_one():
    with pytest.raises(ValueError, match=r"segment 0 sum to 0\.9"):
        _plan({0: {"A": 0.9}, 1: {"B": 1.0}, -1: {"control": 1.0}})
    with pytest.raises(ValueError, match=r"missing for segment id\(s\) \[-1\]"):
        _plan({0: {"A": 1.0}, 1: {"B": 1.0}})


def test_exploration_floor_matches_thompson_allocation():
    # The same floor as pt.thompson_allocation: compare on an example posterior.
    result = pt.example_posterior(n_visitors=600, n_draws=60, seed=2)
    segments = {0: "device == 'mobile'", 1: "device != 'mobile'"}
    raw = pt.thompson_allocation(result, segments, epsilon=0.0)
    floored = pt.thompson_allocation(result, segments, epsilon=0.3)
    rows = np.array([list(raw[s].values()) for s in segments])
    np.testing.assert_allclose(
        exploration_floor(rows, 0.3), [list(floored[s].values()) for s in segments], atol=1e-12
    )
    assert (exploration_floor(np.array([[1.0, 0.0, 0.0]]), 0.3) >= 0.1 - 1e-12).all()


@pytest.mark.parametrize(
    ("fit_options", "fragment"),
    [
        ({"n_draw": 10}, "unknown option 'n_draw'; valid options are ['chunk_bytes', 'correction'"),
        ({"n_draws": "many"}, "fit_options['n_draws'] must be int, got 'many'"),
        ({"n_trees_mu": 2.5}, "fit_options['n_trees_mu'] must be int, got 2.5"),
        ({"max_train_visitors": "all"}, "must be int or None, got 'all'"),
        ({"progress": 1}, "fit_options['progress'] must be bool, got 1"),
    ],
)
def test_fit_options_are_checked_when_the_experiment_starts(fit_options, fragment):
    with pytest.raises(ValueError) as info:
        sequential_experiment(ARMS, fit_options=fit_options)
    assert fragment in str(info.value)


@pytest.mark.parametrize("loss", [-0.1, float("nan"), float("inf"), "0.01", True])
def test_graduation_loss_must_be_a_finite_non_negative_number(loss):
    with pytest.raises(ValueError, match="graduation_loss must be a finite non-negative number"):
        sequential_experiment(ARMS, graduation_loss=loss)


def test_check_config_revalidates_a_config_read_back():
    exp = sequential_experiment(ARMS, schedule=[100, 200], seed=9, name="exp-9")
    config = json.loads(json.dumps(exp.config))
    assert check_config(config) == exp.config
    assert config["schedule"] == ["explicit", [100, 200]] and config["seed"] == 9
    older = {k: v for k, v in config.items() if k != "experiment_id"}
    assert "experiment_id" not in check_config(older)  # stores written before ids existed
    with pytest.raises(ValueError, match="unknown option 'n_draw'"):
        check_config({**config, "fit_options": {"n_draw": 5}})
    with pytest.raises(ValueError, match=r"lacks \['seed'\]"):
        check_config({k: v for k, v in config.items() if k != "seed"})
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        check_config({**config, "colour": "red"})
    with pytest.raises(ValueError, match="experiment id"):
        sequential_experiment(ARMS, name="  ")


def test_experiment_id_round_trips_with_the_plan():
    plan = sequential_experiment(ARMS, seed=3, name="exp-3").plan()
    description = json.loads(json.dumps(plan.to_dict()))
    assert description["experiment_id"] == "exp-3"
    assert RoundPlan.from_dict(description).experiment_id == "exp-3"
    assert schedule_rounds(check_schedule([1, 2, 3])) == 3
    assert schedule_rounds(check_schedule(("doubling", 5))) is None
