"""Every benchmark script runs at a tiny size, so a benchmark cannot rot unnoticed.

The figures themselves are measured by hand (benchmarks/README.md); here only that each script
still runs end to end and prints its table.
"""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# Tiny arguments per script; a new script must be added here (the test below checks).
TINY_ARGS = {
    "bench_allocation.py": "--visitors 3000 --draws 20 --repeat 1",
    "bench_evaluate.py": "--visitors 3000 --dir {tmp}",
    "bench_fit.py": "--visitors 300 --draws 5 --trees-mu 5 --trees-tau 3",
    "bench_growthbook.py": "--visitors 3000 --loop-sizes 600,600",
    "bench_fit_scale.py": (
        "--visitors 2000 --train 500 --draws 5 --trees-mu 5 --trees-tau 3 "
        "--compare-visitors 1000 --dir {tmp}"
    ),
    "bench_io.py": "--gb 0.002 --draws 10 --netcdf --dir {tmp}",
    "bench_out_of_core.py": "--gib 0.002 --draws 10 --dir {tmp}",
    "bench_policy_tree.py": "--visitors 3000 --draws 5 --depths 2 --bootstrap 0",
    "bench_sequential.py": "--sizes 300 --repeat 1",
    "bench_srm.py": "--null-rounds 200 --rounds 50",
}


# The calibration study (benchmarks/calibration.py, docs/calibration.md) is not a bench_*.py
# timing script but runs at a tiny size here too.
CALIBRATION_TINY_ARGS = (
    "--experiments 2 --visitors 240 --draws 10 --trees-mu 5 --trees-tau 3 --out {tmp}"
)


def test_every_benchmark_has_a_smoke_run():
    scripts = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
    assert scripts, f"no benchmark scripts found in {BENCHMARKS}"
    assert sorted(TINY_ARGS) == scripts, "add the new benchmark's tiny arguments to TINY_ARGS"


@pytest.mark.parametrize("script", sorted(TINY_ARGS))
def test_benchmark_runs_at_a_tiny_size(script, tmp_path, monkeypatch, capsys):
    args = TINY_ARGS[script].format(tmp=tmp_path).split()
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    printed = capsys.readouterr().out
    # Each script prints a table of measured figures: at least one line with a number.
    assert any(ch.isdigit() for line in printed.splitlines() for ch in line), printed


def test_calibration_runs_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    args = CALIBRATION_TINY_ARGS.format(tmp=tmp_path).split()
    monkeypatch.setattr(sys, "argv", ["calibration.py", *args])
    runpy.run_path(str(BENCHMARKS / "calibration.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "reliability of prob_best" in printed and "coverage of the 80%" in printed, printed
    assert (tmp_path / "calibration_reliability.png").stat().st_size > 0

    raw = json.loads((tmp_path / "calibration_records.json").read_text())
    records = raw["records"]
    assert raw["meta"]["experiments"] == len(records) == 2
    # Two experiments: the first two configurations (binary, K = 2 then K = 3), own seeds.
    assert [(r["family"], r["k"]) for r in records] == [("binary", 2), ("binary", 3)]
    assert len({r["seed"] for r in records}) == 2
    pairs = contrasts = 0
    for record in records:
        k = record["k"]
        # The planted segments and everyone, scored after and before the correction and by
        # the difference in means, against the same truth.
        sides = [record[key] for key in ("segments", "raw_segments", "dim_segments")]
        for side in sides:
            assert [seg["population"] for seg in side] == [False] * 4 + [True]
            assert [seg["true_contrast"] for seg in side] == [s["true_contrast"] for s in sides[0]]
        for seg in record["segments"][:4]:
            assert seg["members"] == seg["summary_members"] > 0
            assert len(seg["prob_best"]) == len(seg["true_contrast"]) == k
            assert 0 <= seg["true_best"] < k and seg["true_contrast"][0] == 0
            assert math.isclose(sum(seg["prob_best"]), 1.0, abs_tol=1e-9)
            for suffix in ("", "_95"):
                lower, upper = seg[f"contrast_lower{suffix}"], seg[f"contrast_upper{suffix}"]
                bounds = zip(lower, upper, strict=True)
                assert all(lo <= up for lo, up in bounds)
            pairs += k
            contrasts += k - 1
        for dim in record["dim_segments"]:  # the 95% interval holds the 80% one
            assert dim["contrast_lower_95"][1] < dim["contrast_lower"][1] < dim["contrast"][1]

    saved = json.loads((tmp_path / "calibration_summary.json").read_text())
    assert {"before", "after", "dim_coverage", "sharpness", "population"} <= set(saved)
    summary = saved["after"]
    bins = summary["reliability"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) == pairs
    for b in bins:
        if b["count"]:
            # p lands in bin floor(10 p), which rounding may put a hair below p's bin edge.
            low, high = b["bin"][0] - 1e-12, b["bin"][1] + 1e-12
            assert 0 <= b["frequency"] <= 1 and low <= b["mean_p"] <= high
    coverage = {(row["family"], row["k"]): row for row in summary["coverage"]}
    assert coverage[("all", 0)]["contrasts"] == contrasts
    assert sum(row["contrasts"] for key, row in coverage.items() if key[0] != "all") == contrasts
    for row in coverage.values():
        assert 0 <= row["coverage"] <= row["coverage_95"] <= 1
        assert math.isclose(row["coverage"] + row["miss_above"] + row["miss_below"], 1.0)
    assert all(row["dr_over_dim"] > 0 for row in saved["sharpness"])
    assert sum(row["segments"] for row in summary["per_config"] if row["family"] != "all") == 8
