"""Persistence: atomic save, refusal to clobber, resume with bit-identical next plans."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt
from pytyche.sequential import logged_observed, open_experiment, sequential_experiment

FIT = {"n_draws": 30, "n_trees_mu": 15, "n_trees_tau": 8, "n_warmstart": 4, "num_threads": 1}


def play_round(exp, seed):
    """Serve the current plan to simulated visitors and record their (hurdle) outcomes."""
    plan = exp.plan()
    _, truth = pt.simulate_experiment(plan.size, seed=seed)
    frame = pd.DataFrame(
        {
            "visitor_id": [f"r{plan.round}-{i}" for i in range(plan.size)],
            **{c: truth[c].values for c in ("device", "age", "returning", "visits")},
        }
    )
    out = plan.assign(frame)
    arm = pd.Categorical(out["arm"], categories=exp.arms).codes
    rows = np.arange(len(out))
    rng = np.random.default_rng(seed)
    converted = rng.random(len(out)) < truth["conversion"].values[rows, arm]
    out["outcome"] = np.where(converted, truth["value"].values[rows, arm], 0.0)
    exp.record(logged_observed(out))


def test_resumed_experiment_gives_bit_identical_next_plans(tmp_path):
    exp = sequential_experiment(
        ["control", "A", "B"], schedule=600, min_visitors_per_arm=50, fit_options=FIT, seed=9
    )
    play_round(exp, 1)
    exp.advance()
    play_round(exp, 2)
    store = exp.to_zarr(tmp_path / "exp")
    resumed = open_experiment(store)

    assert resumed.plans == exp.plans and resumed.round == exp.round == 1
    xr.testing.assert_identical(resumed.history, exp.history)
    xr.testing.assert_equal(resumed.recorded(), exp.recorded())
    for a, b in zip(resumed.plans, exp.plans, strict=True):
        pd.testing.assert_frame_equal(a.assigned, b.assigned)
    assert resumed.posterior is None and resumed.config == exp.config

    original, again = exp.advance(), resumed.advance()
    assert original == again and original.status == "optimized"
    assert np.array_equal(original.effective_probability.values, again.effective_probability.values)
    assert exp.history["data_hash"].values[-1] == resumed.history["data_hash"].values[-1]
    # The resumed experiment keeps assigning exactly like the original.
    frame = pd.DataFrame(
        {
            "visitor_id": ["x", "y"],
            "device": ["mobile", "tablet"],
            "age": [30.0, 60.0],
            "returning": [True, False],
            "visits": [1, 2],
        }
    )
    pd.testing.assert_frame_equal(original.assign(frame), again.assign(frame))


def test_save_replaces_only_experiment_stores(tmp_path):
    exp = sequential_experiment(["control", "A"], schedule=50)
    target = tmp_path / "exp"
    exp.to_zarr(target)
    assert open_experiment(target).round == 0
    exp.advance()  # nothing recorded: a burn-in round, no fit
    exp.to_zarr(target)  # replacing an experiment store is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary left behind
    resumed = open_experiment(target)
    assert resumed.round == 1 and resumed.plans == exp.plans

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a pytyche experiment store"):
        exp.to_zarr(a_file)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    with pytest.raises(FileExistsError, match="refusing to replace it"):
        exp.to_zarr(other)
    assert a_file.read_text() == "keep me" and (other / "data.csv").exists()

    with pytest.raises(ValueError, match="is not a pytyche experiment store"):
        open_experiment(other)
    with pytest.raises(FileNotFoundError, match="no experiment store"):
        open_experiment(tmp_path / "missing")
