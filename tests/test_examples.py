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


def test_demo_prints_a_split_per_segment(capsys):
    assert main(["demo", "--visitors", "3000", "--draws", "40", "--chunk", "1000"]) == 0
    out = capsys.readouterr().out
    assert "3 lazy dask chunks" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "5 "))]
    assert len(rows) == 2
    for row in rows:  # the last three fields are the weights of control, A and B
        weights = [float(w) for w in row[-3:]]
        assert abs(sum(weights) - 1.0) < 2e-3
        assert min(weights) >= 0.02 / 3 - 1e-3


def test_demo_runs_as_a_command():
    completed = subprocess.run(
        [sys.executable, "-m", "pytyche.cli", "demo", "--visitors", "2000", "--draws", "20"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "next round's traffic split per segment" in completed.stdout


def test_example_age_has_missing_values():
    age = pt.example_posterior(5_000, 2).observed["age"].values
    assert 0 < np.isnan(age).mean() < 0.05
