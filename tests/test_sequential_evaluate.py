"""Off-policy evaluation: IPW / SNIPS / DR unbiased with known propensities; DR coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pytyche.sequential import evaluate_policy, logged_observed, sequential_experiment

ARMS = ["control", "A", "B"]
# Logging policy (known propensities) and true mean outcome, per device.
LOGGING = {"mobile": [0.2, 0.5, 0.3], "desktop": [0.5, 0.25, 0.25]}
MEAN = {"mobile": [1.0, 2.0, 0.5], "desktop": [1.0, 0.0, 3.0]}
TARGET = (
    {0: {"control": 0.1, "A": 0.8, "B": 0.1}, 1: {"B": 1.0}},
    {0: "device == 'mobile'", 1: "device == 'desktop'"},
)
# E over devices (half each) of Σ_k π(k | device) μ(device, k).
TRUE_VALUE = 0.5 * (0.1 * 1.0 + 0.8 * 2.0 + 0.1 * 0.5) + 0.5 * 3.0


def simulated_log(n, rng):
    device = rng.choice(["mobile", "desktop"], n)
    p = np.array([LOGGING[d] for d in device])
    mean = np.array([MEAN[d] for d in device])
    arm = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    rows = np.arange(n)
    y = mean[rows, arm] + rng.normal(0.0, 2.0, n)
    logged = xr.Dataset(
        coords={
            "variant": ("visitor", np.array(ARMS, dtype=object)[arm]),
            "outcome": ("visitor", y),
            "propensity": ("visitor", p[rows, arm]),
            "device": ("visitor", device.astype(object)),
        }
    )
    # A deliberately wrong outcome model: DR stays unbiased when the propensities are right.
    model = xr.DataArray(
        mean + np.array([0.3, -0.4, 0.2]), dims=("visitor", "arm"), coords={"arm": ARMS}
    )
    return logged, model


def test_estimators_are_unbiased_with_known_propensities():
    rng = np.random.default_rng(0)
    estimates = {"ipw": [], "snips": [], "dr": []}
    for _ in range(200):
        logged, model = simulated_log(1_000, rng)
        for estimator, values in estimates.items():
            result = evaluate_policy(
                logged, TARGET, estimator=estimator, posterior=model, n_bootstrap=0
            )
            values.append(float(result["estimate"]))
    for estimator, values in estimates.items():
        values = np.array(values)
        se = values.std(ddof=1) / np.sqrt(values.size)
        print(f"{estimator}: mean {values.mean():.4f} vs truth {TRUE_VALUE:.4f} (SE {se:.4f})")
        assert abs(values.mean() - TRUE_VALUE) < 2 * se


def test_dr_bootstrap_interval_covers_at_about_its_nominal_rate():
    rng = np.random.default_rng(1)
    covered = []
    for i in range(200):
        logged, model = simulated_log(800, rng)
        result = evaluate_policy(logged, TARGET, posterior=model, ci=0.9, n_bootstrap=200, seed=i)
        covered.append(float(result["lower"]) <= TRUE_VALUE <= float(result["upper"]))
    coverage = float(np.mean(covered))
    print(f"DR 90% bootstrap interval coverage over 200 replications: {coverage:.3f}")
    assert 0.84 <= coverage <= 0.96


def test_weights_and_diagnostics_by_hand():
    rng = np.random.default_rng(2)
    logged, _ = simulated_log(500, rng)
    result = evaluate_policy(logged, "B", estimator="ipw", n_bootstrap=0)
    served_b = logged["variant"].values == "B"
    w = np.where(served_b, 1.0 / logged["propensity"].values, 0.0)
    y = logged["outcome"].values
    assert float(result["estimate"]) == pytest.approx((w * y).mean())
    assert float(result["max_weight"]) == pytest.approx(w.max())
    assert float(result["effective_sample_size"]) == pytest.approx(w.sum() ** 2 / (w**2).sum())
    snips = evaluate_policy(logged, "B", estimator="snips", n_bootstrap=100)
    assert float(snips["estimate"]) == pytest.approx((w * y).sum() / w.sum())
    assert float(snips["lower"]) < float(snips["estimate"]) < float(snips["upper"])


def test_the_logging_plan_evaluates_to_the_observed_mean():
    exp = sequential_experiment(ARMS, schedule=500, seed=1, name="evaluate")
    plan = exp.plan()
    frame = pd.DataFrame({"visitor_id": range(500), "device": ["mobile", "desktop"] * 250})
    out = plan.assign(frame)
    out["outcome"] = np.arange(500.0)
    exp.record(logged_observed(out))
    result = evaluate_policy(exp.recorded(), plan, estimator="ipw", n_bootstrap=0)
    assert float(result["estimate"]) == pytest.approx(out["outcome"].mean())
    assert float(result["max_weight"]) == pytest.approx(1.0)
    assert float(result["effective_sample_size"]) == pytest.approx(500)


def test_bad_inputs_raise():
    logged, model = simulated_log(50, np.random.default_rng(3))
    for bad in (0.0, 1.5, np.nan):
        broken = logged.assign_coords(propensity=logged["propensity"].copy(data=np.full(50, bad)))
        with pytest.raises(ValueError, match=r"propensities must lie in \(0, 1\] .* 50 in visi"):
            evaluate_policy(broken, "A", estimator="ipw")
    missing = logged["outcome"].values.copy()
    missing[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"outcomes must be finite .* rows \[3, 7\]: \[nan, nan"):
        evaluate_policy(logged.assign_coords(outcome=("visitor", missing)), "A", estimator="ipw")
    with pytest.raises(ValueError, match="needs a 'propensity' coordinate"):
        evaluate_policy(logged.drop_vars("propensity"), "A", estimator="ipw")
    with pytest.raises(ValueError, match="needs posterior="):
        evaluate_policy(logged, "A")
    with pytest.raises(ValueError, match="estimator must be one of"):
        evaluate_policy(logged, "A", estimator="magic")
    partial = ({0: {"A": 1.0}}, {0: "device == 'mobile'"})
    with pytest.raises(ValueError, match="match no segment; give the allocation weights"):
        evaluate_policy(logged, partial, posterior=model)
    with_pooled = ({0: {"A": 1.0}, -1: {"B": 1.0}}, {0: "device == 'mobile'"})
    # Desktop visitors match no segment and get the -1 weights: the same policy as this one.
    spelled_out = ({0: {"A": 1.0}, 1: {"B": 1.0}}, TARGET[1])
    also = evaluate_policy(logged, with_pooled, estimator="ipw", n_bootstrap=0)
    same = evaluate_policy(logged, spelled_out, estimator="ipw", n_bootstrap=0)
    assert float(also["estimate"]) == float(same["estimate"])
    with pytest.raises(ValueError, match="unknown arm"):
        evaluate_policy(logged, "Z", posterior=model)


def two_arm_log(served, outcome, *, propensity=0.5, ids=None):
    """A log of the given arms served and outcomes, each with the same propensity."""
    n = len(served)
    coords = {
        "variant": ("visitor", np.array(served, dtype=object)),
        "outcome": ("visitor", np.asarray(outcome, dtype=np.float64)),
        "propensity": ("visitor", np.full(n, propensity)),
        "device": ("visitor", np.array(["mobile", "desktop"] * (n // 2), dtype=object)),
    }
    if ids is not None:
        coords["visitor"] = ids
    return xr.Dataset(coords=coords)


def test_a_policy_serving_an_arm_the_log_never_served_is_refused():
    # Only control and A were served: "always B" used to evaluate to 0 [0, 0].
    logged = two_arm_log(["control", "A"] * 50, np.ones(100))
    model = xr.DataArray(np.ones((100, 3)), dims=("visitor", "arm"), coords={"arm": ARMS})
    for estimator in ("ipw", "snips", "dr"):
        with pytest.raises(ValueError, match=r"no support: 100.0% of the policy's mass .*'B'"):
            evaluate_policy(logged, "B", estimator=estimator, posterior=model)
    with pytest.raises(ValueError, match=r"no support: 25.0% .*'B'"):
        evaluate_policy(logged, {"control": 0.5, "A": 0.25, "B": 0.25}, posterior=model)
    # Without an outcome model the arm is not even among the log's arms: still no support.
    with pytest.raises(ValueError, match=r"no support: 100.0% .*'B'"):
        evaluate_policy(logged, "B", estimator="ipw")


def test_a_segment_never_served_an_arm_served_elsewhere_is_reported_not_refused():
    # B was served on mobile only (a positive propensity everywhere); the policy gives B to
    # desktop (half the visitors): sampling, not missing support.
    served = np.where(np.arange(100) % 2 == 0, np.tile(["B", "B", "A", "A"], 25), "control")
    logged = two_arm_log(served, np.ones(100))
    policy = ({0: {"A": 1.0}, 1: {"B": 1.0}}, {0: "device == 'mobile'", 1: "device == 'desktop'"})
    result = evaluate_policy(logged, policy, estimator="ipw")
    assert float(result["unsupported_share"]) == 0.5
    both = ({0: {"A": 0.5, "B": 0.5}}, {0: "device == 'mobile'"})
    both[0][-1] = {"control": 1.0}
    assert float(evaluate_policy(logged, both, estimator="ipw")["unsupported_share"]) == 0.0


def test_snips_bootstrap_with_empty_resamples_is_refused_not_nan():
    # Two visitors out of 300 carry all the weight: some resamples hold neither.
    served = ["B", "B"] + ["A"] * 298
    logged = two_arm_log(served, np.arange(300.0))
    with pytest.raises(ValueError, match="bootstrap resamples hold no visitor"):
        evaluate_policy(logged, "B", estimator="snips", n_bootstrap=200)


def test_too_few_bootstrap_resamples_are_refused_and_zero_is_normal():
    logged, _ = simulated_log(200, np.random.default_rng(4))
    for few in (1, 20, 99):
        with pytest.raises(ValueError, match="too few for a 90% percentile interval"):
            evaluate_policy(logged, "A", estimator="ipw", n_bootstrap=few)
    with pytest.raises(ValueError, match="use at least 200"):
        evaluate_policy(logged, "A", estimator="ipw", ci=0.95, n_bootstrap=150)
    normal = evaluate_policy(logged, "A", estimator="ipw", n_bootstrap=0)
    assert normal.attrs["interval"] == "normal"
    half = 1.6448536269514722 * float(normal["standard_error"])
    assert float(normal["upper"]) - float(normal["estimate"]) == pytest.approx(half)


@pytest.mark.parametrize("n_bootstrap", [None, 0, 200])
def test_intervals_of_bounded_metrics_stay_in_their_bounds(n_bootstrap):
    rng = np.random.default_rng(5)
    # A served more often than its propensity 0.5 says: IPW's estimate exceeds 1.
    served = rng.permutation(["A"] * 170 + ["control"] * 130)
    converted = (rng.random(300) < 0.97).astype(float)
    result = evaluate_policy(
        two_arm_log(served, converted), "A", estimator="ipw", n_bootstrap=n_bootstrap
    )
    assert float(result["estimate"]) > 1.0
    assert 0.0 <= float(result["lower"]) <= float(result["upper"]) <= 1.0
    assert result.attrs["bounds"] == [0.0, 1.0]
    # Revenue: mostly 0, never negative: the interval's lower end stays at or above 0.
    revenue = np.where(rng.random(300) < 0.03, rng.exponential(50.0, 300), 0.0)
    result = evaluate_policy(
        two_arm_log(served, revenue), "A", estimator="ipw", n_bootstrap=n_bootstrap
    )
    assert float(result["lower"]) >= 0.0 and result.attrs["bounds"] == [0.0, np.inf]


def test_keys_of_the_wrong_type_name_the_key_and_what_was_expected():
    logged, _ = simulated_log(50, np.random.default_rng(6))
    text_ids = ({"0": {"A": 1.0}, "1": {"B": 1.0}}, TARGET[1])
    with pytest.raises(TypeError, match=r"keyed by \['0', '1'\] \(str\); segment ids are integ"):
        evaluate_policy(logged, text_ids, estimator="ipw")
    with pytest.raises(TypeError, match=r"keyed by \[1\] \(int\); arm weights are keyed by arm"):
        evaluate_policy(logged, {1: 0.5, "A": 0.5}, estimator="ipw")
    with pytest.raises(ValueError, match=r"missing \[1\], not a segment \[7\]"):
        evaluate_policy(logged, ({0: {"A": 1.0}, 7: {"B": 1.0}}, TARGET[1]), estimator="ipw")


def test_weights_must_sum_to_one_within_1e_9():
    logged, _ = simulated_log(50, np.random.default_rng(7))
    with pytest.raises(ValueError, match="summing to 1 \\(within 1e-09\\)"):
        evaluate_policy(logged, {"A": 0.500009, "B": 0.5}, estimator="ipw")
    evaluate_policy(logged, {"A": 0.5 + 1e-12, "B": 0.5}, estimator="ipw")


def test_a_plain_ab_table_takes_its_propensity_as_an_argument():
    logged, _ = simulated_log(300, np.random.default_rng(8))
    table = pd.DataFrame({"variant": logged["variant"].values, "outcome": logged["outcome"]})
    uniform = logged.assign_coords(propensity=("visitor", np.full(300, 1 / 3)))
    want = evaluate_policy(uniform, "A", estimator="ipw")
    for given in (1 / 3, {"control": 1 / 3, "A": 1 / 3, "B": 1 / 3}):
        got = evaluate_policy(table, "A", estimator="ipw", propensity=given)
        xr.testing.assert_allclose(got, want)
    # Given beside the coordinate: they must agree.
    both = evaluate_policy(uniform, "A", estimator="ipw", propensity=1 / 3)
    assert float(both["estimate"]) == float(want["estimate"])
    with pytest.raises(ValueError, match=r"propensity=0\.5 disagrees with the log.s propensity"):
        evaluate_policy(uniform, "A", estimator="ipw", propensity=0.5)
    with pytest.raises(ValueError, match="propensity must be non-negative weights summing to 1"):
        evaluate_policy(table, "A", estimator="ipw", propensity={"control": 0.5, "A": 0.2})
    with pytest.raises(ValueError, match=r"for each of the 3 arms served sums to 1.5 > 1"):
        evaluate_policy(table, "A", estimator="ipw", propensity=0.5)
    with pytest.raises(ValueError, match=r"needs a 'propensity' coordinate .*\(or give propen"):
        evaluate_policy(table, "A", estimator="ipw")


HEAVY_LOGGING = {"mobile": [0.49, 0.49, 0.02], "desktop": [0.3, 0.68, 0.02]}
HEAVY_POLICY = ({0: {"A": 1.0}, 1: {"B": 1.0}}, TARGET[1])
HEAVY_TRUTH = 0.5 * MEAN["mobile"][1] + 0.5 * MEAN["desktop"][2]


def heavy_log(n, rng):
    """A log where B was served 2% of the time: the policy's weights reach 50."""
    device = rng.choice(["mobile", "desktop"], n)
    p = np.array([HEAVY_LOGGING[d] for d in device])
    arm = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    rows = np.arange(n)
    y = np.array([MEAN[d] for d in device])[rows, arm] + rng.normal(0.0, 2.0, n)
    return xr.Dataset(
        coords={
            "variant": ("visitor", np.array(ARMS, dtype=object)[arm]),
            "outcome": ("visitor", y),
            "propensity": ("visitor", p[rows, arm]),
            "device": ("visitor", device.astype(object)),
        }
    )


def test_the_default_interval_does_not_move_with_the_seed_on_heavy_weights():
    logged = heavy_log(5_000, np.random.default_rng(9))
    for estimator in ("ipw", "snips"):
        results = [
            evaluate_policy(logged, HEAVY_POLICY, estimator=estimator, seed=s) for s in range(20)
        ]
        assert float(results[0]["max_weight"]) >= 50
        estimate = abs(float(results[0]["estimate"]))
        for bound in ("lower", "upper"):
            values = [float(r[bound]) for r in results]
            assert np.ptp(values) <= 0.01 * estimate, (estimator, bound, values)


def test_the_default_interval_covers_on_heavy_weights():
    rng = np.random.default_rng(10)
    covered = {"ipw": [], "snips": []}
    for _ in range(200):
        logged = heavy_log(5_000, rng)
        for estimator, hits in covered.items():
            result = evaluate_policy(logged, HEAVY_POLICY, estimator=estimator)
            hits.append(float(result["lower"]) <= HEAVY_TRUTH <= float(result["upper"]))
    for estimator, hits in covered.items():
        print(f"{estimator}: default 90% interval covered in {np.mean(hits):.3f} of 200")
        assert np.mean(hits) >= 0.85


def test_a_dask_backed_log_read_in_blocks_gives_the_same_result(monkeypatch):
    from pytyche.sequential import evaluate as module

    logged, model = simulated_log(20_000, np.random.default_rng(11))
    whole = {
        (estimator, b): evaluate_policy(
            logged, TARGET, estimator=estimator, posterior=model, n_bootstrap=b
        )
        for estimator in ("ipw", "snips", "dr")
        for b in (None, 200)
    }
    monkeypatch.setattr(module, "BLOCK", 4 * module.BOOTSTRAP_ROWS)
    chunked = logged.chunk(visitor=3_000)
    assert chunked["outcome"].chunks is not None
    for (estimator, b), want in whole.items():
        got = evaluate_policy(
            chunked,
            TARGET,
            estimator=estimator,
            posterior=model.chunk(visitor=5_000),
            n_bootstrap=b,
        )
        xr.testing.assert_allclose(got, want, rtol=1e-10)


def test_repeated_visitor_ids_give_a_clear_error_or_match_by_row():
    ids = ["v1", "v2", "v1", "v3"] * 10
    logged = two_arm_log(["control", "A"] * 20, np.arange(40.0), ids=ids)
    model = xr.DataArray(
        np.ones((40, 3)), dims=("visitor", "arm"), coords={"arm": ARMS, "visitor": ids}
    )
    # The same ids in the same order: matched row by row.
    same = evaluate_policy(logged, {"control": 0.5, "A": 0.5}, posterior=model)
    assert np.isfinite(float(same["estimate"]))
    shuffled = model.isel(visitor=np.arange(40)[::-1])
    with pytest.raises(ValueError, match=r"visitor ids repeat in the outcome model's visitors"):
        evaluate_policy(logged, {"control": 0.5, "A": 0.5}, posterior=shuffled)


def test_bad_rows_are_named_by_their_place_in_the_whole_log(monkeypatch):
    from pytyche.sequential import evaluate as module

    monkeypatch.setattr(module, "BLOCK", 2 * module.BOOTSTRAP_ROWS)
    logged, _ = simulated_log(10_000, np.random.default_rng(12))
    propensity = logged["propensity"].values.copy()
    propensity[[5_000, 9_999]] = 0.0
    broken = logged.assign_coords(propensity=("visitor", propensity))
    with pytest.raises(ValueError, match=r"rows 4096-8191 .* rows \[5000\]: \[0.0\]"):
        evaluate_policy(broken, "A", estimator="ipw")
