"""Issue 8, items 11-14: a clear pytyche error, naming the input, for every bad input.

Each test reproduces what an adversarial probe found (the item is in the test's comment).
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt

from helpers import random_dataset

TINY = {"n_draws": 4, "n_trees_mu": 3, "n_trees_tau": 2, "num_threads": 1, "progress": False}


def tables(n: int = 30, **columns) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    return {
        arm: pd.DataFrame({"x": rng.normal(size=n), "y": (np.arange(n) % 2).astype(float)}).assign(
            **columns
        )
        for arm in ("control", "A")
    }


# Item 11: a covariate may not take the name of a posterior variable or dim.
@pytest.mark.parametrize("name", ["conversion", "value", "expected", "arm", "draw", "chain"])
def test_covariates_named_like_the_posterior_are_refused_up_front(name, monkeypatch):
    with pytest.raises(ValueError, match=f"covariate name '{name}' is taken"):
        pt.observed_data(tables(**{name: 1.0}), outcome="y")
    observed = pt.observed_data(tables(z=1.0), outcome="y").rename_vars({"z": name})
    with pytest.raises(ValueError, match=f"observed variable name '{name}' is taken"):
        pt.from_arrays("binary", ["control", "A"], observed, conversion=np.full((60, 2, 2), 0.5))

    import stochtree

    def no_fit(*args, **kwargs):
        raise AssertionError("the models were fitted before the name was checked")

    monkeypatch.setattr(stochtree.BCFModel, "sample", no_fit)
    for fit in (pt.fit, pt.fit_binary_bcf):
        with pytest.raises(ValueError, match=f"observed variable name '{name}' is taken"):
            fit(observed, **TINY)


# Item 12: raw exceptions become pytyche errors naming the input.
@pytest.mark.parametrize("family", [["binary"], {"binary": 1}, 3])
def test_a_family_attribute_that_is_not_text(tmp_path, family):
    ds = random_dataset("binary", n_visitors=8, dtype=np.float32)
    ds.attrs["pytyche_family"] = family
    with pytest.raises(ValueError, match="pytyche_family must be one of"):
        pt.posterior(ds)
    if isinstance(family, dict):
        return  # no store keeps a dict attribute
    path = tmp_path / "odd.zarr"
    ds = ds.drop_vars(["variant", "device"]).assign_coords(arm=ds["arm"].values.astype(object))
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    with pytest.raises(pt.PosteriorReadError, match="unknown pytyche_family"):
        pt.open_posterior(path)


def test_a_segment_id_beyond_64_bits():
    with pytest.raises(ValueError, match="segment id must fit in a 64-bit signed integer"):
        pt.DiscoveredSegment(2**70, "everyone")
    with pytest.raises(ValueError, match="64-bit"):
        pt.as_segments({-(2**63) - 1: "everyone"})
    assert pt.DiscoveredSegment(2**63 - 1, "everyone").id == 2**63 - 1


def test_covariates_given_as_one_string():
    with pytest.raises(TypeError, match=r"covariates must be a list.*pass \['x'\]"):
        pt.observed_data(tables(), outcome="y", covariates="x")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_too_few_visitors_to_fit(n):
    observed = pt.observed_data(tables(n), outcome="y")
    with pytest.raises(ValueError, match=rf"arm 'control' has {n} visitor\(s\).*at least 10"):
        pt.fit_continuous_bcf(observed, **TINY)


def test_outcomes_too_large_for_the_posterior():
    frames = tables(40)
    frames["A"] = frames["A"].assign(y=np.linspace(-1, 1, 40) * 1e300)
    observed = pt.observed_data(frames, outcome="y")
    for fit in (pt.fit, pt.fit_continuous_bcf):
        with pytest.raises(ValueError, match=r"is -1e\+300; outcomes must be within ±1e\+30"):
            fit(observed, **TINY)


@pytest.mark.parametrize(
    ("key", "hint"), [("num_chains", "n_chains="), ("random_seed", "seed="), ("keep_every", "")]
)
def test_stochtree_options_may_not_reshape_the_posterior(key, hint):
    observed = pt.observed_data(tables(), outcome="y")
    options = {"general_params": {key: 2}}
    with pytest.raises(ValueError, match=rf"may not set \['{key}'\].*{hint}"):
        pt.fit_binary_bcf(observed, stochtree_options=options, **TINY)
    with pytest.raises(TypeError, match="stochtree_options must be a mapping"):
        pt.fit_binary_bcf(observed, stochtree_options=[("general_params", {})], **TINY)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("\ud800x", "not valid Unicode"),
        (b"\xff\xfe", "not valid UTF-8"),
    ],
)
@pytest.mark.parametrize("write", [pt.to_zarr, pt.to_netcdf])
def test_text_that_is_not_unicode_names_the_variable(tmp_path, value, message, write):
    ds = random_dataset("binary", n_visitors=6, dtype=np.float32)
    device = ds["device"].values.copy()
    if isinstance(value, bytes):  # bytes text: numpy's fixed-width "S" dtype
        device = np.array([v.encode() for v in device], dtype="S8")
    device[2] = value
    result = pt.posterior(ds.assign_coords(device=("visitor", device)))
    with pytest.raises(ValueError, match=f"text variable 'device' holds .*{message}"):
        write(result, tmp_path / "p")
    assert list(tmp_path.iterdir()) == []


# Item 13: a parse error shows where, with a bounded excerpt, never the whole input.
def test_parse_errors_are_bounded():
    text = "age > 3 and " * 100_000 + "x >> 2"
    with pytest.raises(ValueError) as caught:
        pt.SegmentRule.parse(text)
    message = str(caught.value)
    assert len(message) < 300
    assert f"position {len(text) - 3} of 1,200,006 characters" in message
    assert "x >> 2" in message and "..." in message
    with pytest.raises(ValueError, match=r"at position 5 in 'age >> 3'"):
        pt.SegmentRule.parse("age >> 3")  # a short rule is shown whole


# Item 14: open_posterior never blocks on (or opens) anything but a file or a directory.
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_open_refuses_a_named_pipe(tmp_path):
    pipe = tmp_path / "pipe.nc"
    os.mkfifo(pipe)
    outcome = {}

    def target():
        try:
            pt.open_posterior(pipe)
        except pt.PosteriorReadError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # unblock the reader so the test process can end
        with open(pipe, "wb"):
            pass
        pytest.fail("open_posterior blocked on a named pipe")
    assert "neither a regular file nor a directory (it is a named pipe)" in outcome["error"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/null is a device")
def test_open_refuses_a_device():
    with pytest.raises(pt.PosteriorReadError, match="character device"):
        pt.open_posterior("/dev/null")


def test_an_unreadable_family_store_is_not_a_hang(tmp_path):
    ds = xr.Dataset({"x": ("visitor", np.arange(3.0))}, attrs={"pytyche_family": "binary"})
    ds.to_zarr(tmp_path / "p.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(pt.PosteriorReadError, match="lacks the variable"):
        pt.open_posterior(tmp_path / "p.zarr")
