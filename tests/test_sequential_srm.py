"""Sample ratio mismatch: false alarms under correct assignment, power, segments' own weights."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import chi2, kstest

from pytyche.sequential import (
    RoundPlan,
    SequentialExperiment,
    logged_observed,
    sequential_experiment,
    srm_test,
)

# (cell, arm) probabilities of a plan: control cell 5% on control, explore 5% uniform over 3
# arms, optimized 90% split 0.2 / 0.5 / 0.3.
PLAN = np.array([[0.05, 0.0, 0.0], [0.05 / 3] * 3, [0.9 * 0.2, 0.9 * 0.5, 0.9 * 0.3]])


def tables(counts: np.ndarray, probabilities: np.ndarray, n: int):
    dims = ("round", "cell", "arm")
    rounds = counts.shape[0]
    expected = np.broadcast_to(probabilities * n, counts.shape)
    coords = {"round": np.arange(rounds)}
    return (
        xr.DataArray(counts, dims=dims, coords=coords),
        xr.DataArray(expected, dims=dims, coords=coords),
    )


def test_false_alarm_rate_under_correct_assignment():
    rng = np.random.default_rng(0)
    n, rounds = 10_000, 1_000
    counts = rng.multinomial(n, PLAN.ravel(), size=rounds).reshape(rounds, 3, 3)
    result = srm_test(*tables(counts, PLAN, n), threshold=0.001)
    rate = float(result["flagged"].mean())
    print(f"false-alarm rate at p < 0.001 over {rounds} rounds: {rate:.4f}")
    assert rate < 0.005
    # Zero-probability cells are skipped: 7 kept cells, 6 degrees of freedom per round.
    assert (result["dof"] == 6).all()
    # p-values are about uniform: a fifth of them below 0.2.
    assert 0.16 < float((result["p_value"] < 0.2).mean()) < 0.24


def test_two_point_shift_at_50k_visitors_is_flagged():
    rng = np.random.default_rng(1)
    n, rounds = 50_000, 100
    shifted = PLAN.copy()
    shifted[2, 1] += 0.02  # arm A gains 2 points of traffic, taken from B
    shifted[2, 2] -= 0.02
    counts = rng.multinomial(n, shifted.ravel(), size=rounds).reshape(rounds, 3, 3)
    result = srm_test(*tables(counts, PLAN, n))
    print(f"flagged {int(result['flagged'].sum())} of {rounds} shifted rounds")
    assert bool(result["flagged"].all())
    assert bool(result["pooled_flagged"])


def test_statistic_matches_a_naive_chi_square_and_pools_rounds():
    observed = np.array([[[30, 0, 2], [40, 60, 70]], [[25, 1, 0], [50, 50, 50]]], dtype=float)
    expected = np.array([[[33, 1, 1], [45, 55, 67]], [[30, 0.5, 0.5], [45, 50, 50]]])
    result = srm_test(*tables(observed, expected, 1))
    naive = []
    for r in range(2):
        keep = expected[r] >= 5
        naive.append(((observed[r][keep] - expected[r][keep]) ** 2 / expected[r][keep]).sum())
    np.testing.assert_allclose(result["statistic"], naive)
    np.testing.assert_allclose(result["p_value"], chi2.sf(naive, [3, 3]))
    assert float(result["pooled_statistic"]) == pytest.approx(sum(naive))
    assert int(result["pooled_dof"]) == 6


def test_threshold_is_checked():
    observed, expected = tables(np.ones((1, 3, 3)), PLAN, 9)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\), got 2\.0"):
        srm_test(observed, expected, threshold=2)


# Two segments with opposite weights in the optimized cell (control / treatment): segment 0
# 80/20, segment 1 20/80; control cell 5%, explore 5% (uniform). Shape (segment, cell, arm).
OPPOSITE = np.array(
    [[[0.05, 0.0], [0.025, 0.025], [0.72, 0.18]], [[0.05, 0.0], [0.025, 0.025], [0.18, 0.72]]]
)
SEGMENT_DIMS = ("round", "segment", "cell", "arm")


def segment_tables(counts: np.ndarray, plan: np.ndarray = OPPOSITE):
    """Recorded counts (round, segment, cell, arm) and their expectation given each segment."""
    expected = counts.sum(axis=(2, 3))[:, :, None, None] * plan[None]
    return (
        xr.DataArray(counts, dims=SEGMENT_DIMS, coords={"round": np.arange(len(counts))}),
        xr.DataArray(expected, dims=SEGMENT_DIMS, coords={"round": np.arange(len(counts))}),
    )


def opposite_rounds(rng, n: int, rounds: int, served: np.ndarray = OPPOSITE) -> np.ndarray:
    per_segment = rng.multinomial(n, [0.5, 0.5], size=rounds)
    parts = [rng.multinomial(per_segment[:, s], served[s].ravel()) for s in range(2)]
    return np.stack(parts, axis=1).reshape(rounds, 2, 3, 2)


def test_segments_with_opposite_weights_keep_the_level_the_pooled_table_loses():
    rng = np.random.default_rng(2)
    check = srm_test(*segment_tables(opposite_rounds(rng, 50_000, 4_000)), threshold=0.05)
    rate = float(check["flagged"].mean())
    print(f"per-segment false alarms at p < 0.05: {rate:.4f}")
    assert 0.042 < rate < 0.058  # 4,000 rounds: 0.05 ± 2.3 standard errors
    assert kstest(check["p_value"].values, "uniform").pvalue > 0.01
    # Pooled into one (cell, arm) table, the counts vary less than the chi-square assumes.
    pooled = check["cell_arm_p_value"].values
    assert float(np.mean(pooled < 0.05)) < 0.042
    assert kstest(pooled, "uniform").pvalue < 1e-6
    # 4 kept counts per segment (control's control, explore's two, optimized's two) - 1 each.
    assert (check["dof"] == 8).all() and (check["cell_arm_dof"] == 4).all()


def test_a_loss_in_one_segment_is_flagged_where_the_pooled_table_misses_it():
    rng = np.random.default_rng(3)
    counts = opposite_rounds(rng, 200_000, 200)
    counts[:, 1, 2] = rng.binomial(counts[:, 1, 2], 0.95)  # 5% of segment 1's optimized lost
    check = srm_test(*segment_tables(counts))
    per_segment, pooled = float(check["flagged"].mean()), float(check["cell_arm_flagged"].mean())
    print(f"flagged at p < 0.001: per segment {per_segment:.3f}, pooled {pooled:.3f}")
    assert per_segment > 0.55 and pooled < 0.45
    # Serving that ignores the segments (50/50 in the optimized cell for everyone): the pooled
    # table matches its plan exactly in expectation; every segment does not.
    ignored = OPPOSITE.copy()
    ignored[:, 2] = 0.45
    check = srm_test(*segment_tables(opposite_rounds(rng, 50_000, 50, served=ignored)))
    assert bool(check["flagged"].all()) and float(check["cell_arm_flagged"].mean()) < 0.1


def test_statistic_per_segment_matches_a_naive_chi_square():
    observed = np.array(
        [[[[30, 2], [40, 60]], [[3, 1], [1, 2]]], [[[25, 0], [50, 50]], [[9, 1], [8, 7]]]]
    )
    expected = np.array(
        [[[[33, 1], [45, 53]], [[4, 1], [1, 1]]], [[[30, 0.5], [45, 49.5]], [[10, 1], [6, 8]]]],
        dtype=float,
    )
    check = srm_test(
        xr.DataArray(observed, dims=SEGMENT_DIMS), xr.DataArray(expected, dims=SEGMENT_DIMS)
    )
    # Round 0: segment 1 keeps no count, so only segment 0's 3 kept counts test (dof 2);
    # round 1: 3 kept counts in segment 0 and 3 in segment 1 (dof 2 + 2).
    naive, dof = [], []
    for r in range(2):
        total, free = 0.0, 0
        for s in range(2):
            keep = expected[r, s] >= 5
            if keep.sum() >= 2:
                o, e = observed[r, s][keep], expected[r, s][keep]
                total, free = total + ((o - e) ** 2 / e).sum(), free + keep.sum() - 1
        naive.append(total)
        dof.append(free)
    assert dof == [2, 4]
    np.testing.assert_allclose(check["statistic"], naive)
    np.testing.assert_array_equal(check["dof"], dof)
    np.testing.assert_allclose(check["p_value"], chi2.sf(naive, dof))
    assert float(check["pooled_statistic"]) == pytest.approx(sum(naive))
    # Summed over segments for the (cell, arm) view and the pooled test.
    np.testing.assert_array_equal(check["observed"], observed.sum(axis=1))
    np.testing.assert_array_equal(check["observed_by_segment"], observed)
    old = srm_test(*tables(observed.sum(axis=1), expected.sum(axis=1), 1))
    np.testing.assert_allclose(check["cell_arm_p_value"], old["p_value"])


def test_counts_in_one_pass_over_numpy_or_dask_columns():
    from pytyche.sequential.srm import assignment_counts

    rng = np.random.default_rng(4)
    n = 10_001
    segment = rng.choice([3, -1, 0], n)
    cell = rng.choice(["control", "explore", "optimized"], n).astype(object)
    arm = rng.choice(["control", "A"], n).astype(object)
    args = ([0, 3, -1], ["control", "explore", "optimized"], ["control", "A"])
    counts = assignment_counts(segment, cell, arm, *args)
    naive = pd.crosstab([segment, cell], arm).reindex(columns=args[2])
    for i, s in enumerate(args[0]):
        np.testing.assert_array_equal(counts[i], naive.loc[s].reindex(args[1]).to_numpy())
    lazy = [da.from_array(v, chunks=2_500) for v in (segment, cell, arm)]
    np.testing.assert_array_equal(assignment_counts(*lazy, *args), counts)
    with pytest.raises(ValueError, match=r"arm values \['B'\] are not among"):
        assignment_counts(segment, cell, np.where(arm == "A", "B", arm), *args)


def two_segment_experiment() -> SequentialExperiment:
    """An experiment whose current plan gives mobile visitors A and everyone else B."""
    exp = sequential_experiment(["control", "A", "B"], schedule=20_000, seed=5, name="srm")
    plan = RoundPlan(
        round=0,
        size=20_000,
        arms=exp.arms,
        active=exp.arms,
        cells=exp.plan().cells,
        segments={0: "device == 'mobile'", 1: "device != 'mobile'"},
        optimized={
            0: {"control": 0.1, "A": 0.8, "B": 0.1},
            1: {"control": 0.1, "A": 0.1, "B": 0.8},
            -1: {"control": 0.4, "A": 0.3, "B": 0.3},
        },
        status="optimized",
        seed=5,
    )
    return SequentialExperiment(exp.config, {**exp.state(), "plans": [plan]})


def test_experiment_counts_and_expects_per_segment_and_flags_a_one_segment_loss():
    exp = two_segment_experiment()
    rng = np.random.default_rng(6)
    visitors = pd.DataFrame(
        {
            "visitor_id": [f"v{i}" for i in range(20_000)],
            "device": rng.choice(["mobile", "desktop"], 20_000, p=[0.4, 0.6]),
        }
    )
    out = exp.plan().assign(visitors)
    out["outcome"] = 0.0
    # Logging lost a quarter of the desktop visitors served A in the optimized cell.
    lost = out.index[(out["segment"] == 1) & (out["cell"] == "optimized") & (out["arm"] == "A")]
    out = out.drop(index=lost[: len(lost) // 4])
    exp.record(logged_observed(out))
    check = exp.srm()
    plan = exp.plan()
    for s in (0, 1):
        rows = out[out["segment"] == s]
        naive = pd.crosstab(rows["cell"], rows["arm"]).reindex(
            index=["control", "explore", "optimized"], columns=list(exp.arms), fill_value=0
        )
        got = check["observed_by_segment"].sel(round=0, segment=s).values
        np.testing.assert_array_equal(got, naive.to_numpy())
        for cell in ("control", "explore", "optimized"):
            want = len(rows) * plan.cells[cell] * plan.cell_probability(cell).sel(segment=s)
            got = check["expected_by_segment"].sel(round=0, segment=s, cell=cell)
            np.testing.assert_allclose(got.values, want.values)
    assert check["segment"].values.tolist() == [-1, 0, 1]
    p, pooled = float(check["p_value"][0]), float(check["cell_arm_p_value"][0])
    print(f"one-segment loss: per-segment p = {p:.3g}, pooled (cell, arm) p = {pooled:.3g}")
    assert bool(check["flagged"][0]) and p < pooled / 1000


def test_the_cli_document_reports_both_tests_and_the_counts_by_segment():
    from pytyche.cli.experiment import srm_document

    exp = two_segment_experiment()
    visitors = pd.DataFrame(
        {"visitor_id": [f"v{i}" for i in range(3_000)], "device": ["mobile", "desktop"] * 1_500}
    )
    out = exp.plan().assign(visitors).assign(outcome=0.0)
    exp.record(logged_observed(out))
    check = exp.srm()
    document = srm_document(check)
    (row,) = document["rounds"]
    assert row["p_value"] == float(check["p_value"][0]) and row["dof"] == int(check["dof"][0])
    assert row["cell_arm"] == {
        "statistic": float(check["cell_arm_statistic"][0]),
        "dof": int(check["cell_arm_dof"][0]),
        "p_value": float(check["cell_arm_p_value"][0]),
        "flagged": bool(check["cell_arm_flagged"][0]),
    }
    assert sorted(row["counts_by_segment"]) == ["0", "1"]  # no visitor in segment -1
    mobile = out[(out["segment"] == 0) & (out["cell"] == "optimized") & (out["arm"] == "A")]
    assert row["counts_by_segment"]["0"]["optimized"]["A"]["observed"] == len(mobile)
    assert row["counts"]["optimized"]["A"]["observed"] == int(
        ((out["cell"] == "optimized") & (out["arm"] == "A")).sum()
    )
