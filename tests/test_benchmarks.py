"""Every benchmark script runs at a tiny size, so a benchmark cannot rot unnoticed.

The figures themselves are measured by hand (benchmarks/README.md); here only that each script
still runs end to end and prints its table.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# Tiny arguments per script; a new script must be added here (the test below checks).
TINY_ARGS = {
    "bench_allocation.py": "--visitors 3000 --draws 20 --repeat 1",
    "bench_fit.py": "--visitors 300 --draws 5 --trees-mu 5 --trees-tau 3",
    "bench_fit_scale.py": (
        "--visitors 2000 --train 500 --draws 5 --trees-mu 5 --trees-tau 3 "
        "--compare-visitors 1000 --dir {tmp}"
    ),
    "bench_io.py": "--gb 0.002 --draws 10 --netcdf --dir {tmp}",
    "bench_out_of_core.py": "--gib 0.002 --draws 10 --dir {tmp}",
    "bench_policy_tree.py": "--visitors 3000 --draws 5 --depths 2 --bootstrap 0",
}


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
