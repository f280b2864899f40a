"""The synthetic example posterior and the ``pytyche demo`` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche.cli import main


@pytest.mark.parametrize("family", ["binary", "continuous", "hurdle"])
def test_example_is_the_same_whatever_the_chunking(family):
    eager = pt.example_posterior(3_000, 20, family=family, n_chains=2, seed=5)
    lazy = pt.example_posterior(3_000, 20, family=family, n_chains=2, chunks=700, seed=5)
    assert lazy.dataset[lazy.metric_variables[0]].chunks is not None
    xr.testing.assert_identical(eager.dataset, lazy.dataset.compute())
    assert eager.sample_dims == ("chain", "draw")


def test_example_planted_best_arms_win_their_segments():
    result = pt.example_posterior(20_000, 200, seed=2)
    allocation = pt.thompson_allocation(
        result,
        {0: "device == 'mobile'", 1: "device == 'desktop' and age > 40", 2: "device == 'tablet'"},
        epsilon=0.0,
    )
    assert max(allocation[0], key=allocation[0].get) == "A"
    assert max(allocation[1], key=allocation[1].get) == "B"
    assert max(allocation[2], key=allocation[2].get) == "control"


def test_example_rejects_bad_arguments():
    with pytest.raises(ValueError, match="family must be one of"):
        pt.example_posterior(10, 2, family="poisson")
    with pytest.raises(ValueError, match="at least 2 arms"):
        pt.example_posterior(10, 2, arms=["control"])


def test_demo_runs_the_whole_journey(capsys, tmp_path):
    store = tmp_path / "demo.zarr"
    args = ["demo", "--visitors", "1500", "--draws", "40", "--store", str(store)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for step in ("1. experiment", "2. hurdle BCF fitted", "3. saved atomically", "4. policy tree"):
        assert step in out
    assert isinstance(pt.open_posterior(store), pt.HurdleBCFResult)  # --store keeps it
    table = out.split("5. next round's traffic split")[1].splitlines()[3:]
    rows = [line.split() for line in table if line.strip()]
    assert rows
    for row in rows:  # ... control A B, then the true best arm
        weights = [float(w) for w in row[-4:-1]]
        assert abs(sum(weights) - 1.0) < 2e-3
        assert min(weights) >= 0.02 / 3 - 1e-3
        assert row[-1] in ("control", "A", "B")


def test_demo_is_the_installed_command():
    completed = subprocess.run(
        [sys.executable, "-m", "pytyche.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in completed.stdout


def test_example_age_has_missing_values():
    age = pt.example_posterior(5_000, 2).observed["age"].values
    assert 0 < np.isnan(age).mean() < 0.05
