"""Persistence: Zarr and netCDF round trips, atomic writes (even under SIGKILL), clear errors."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import pytyche as pt

from conftest import random_dataset

io_module = importlib.import_module("pytyche.io")

FORMATS = {"zarr": (pt.to_zarr, "store.zarr"), "netcdf": (pt.to_netcdf, "posterior.nc")}


def with_missing_text(ds: xr.Dataset) -> xr.Dataset:
    device = ds["device"].values.copy()
    device[::5] = np.nan
    return ds.assign_coords(
        device=("visitor", device), visits=("visitor", np.arange(ds.sizes["visitor"]))
    )


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize(
    ("family", "chains"), [("binary", None), ("continuous", 2), ("hurdle", None)]
)
def test_round_trip_is_identical_and_lazy(tmp_path, fmt, family, chains):
    ds = with_missing_text(random_dataset(family, n_chains=chains, dtype=np.float32, seed=3))
    result = pt.posterior(ds)
    write, name = FORMATS[fmt]
    path = write(result, tmp_path / name)
    assert path == tmp_path / name
    opened = pt.open_posterior(path)
    assert type(opened) is type(result)
    for variable in result.metric_variables:
        data = opened.dataset[variable].data
        assert isinstance(data, da.Array)  # lazy
        assert opened.dataset[variable].dims[0] == "visitor"
        assert all(len(c) == 1 for c in data.chunks[1:])  # draw, chain and arm whole
    # Text covariates (missing values included), numbers and booleans survive.
    assert opened.dataset["device"].dtype == object
    xr.testing.assert_identical(opened.dataset.compute(), ds)
    segments = [pt.DiscoveredSegment(0, "device == 'mobile'"), pt.DiscoveredSegment(1, "everyone")]
    assert pt.thompson_allocation(opened, segments) == pt.thompson_allocation(result, segments)


def test_fit_round_trip_through_zarr(tmp_path):
    observed, _ = pt.simulate_experiment(300, family="hurdle", seed=1)
    result = pt.fit(observed, n_draws=8, n_trees_mu=5, n_trees_tau=3, num_threads=1, progress=False)
    opened = pt.open_posterior(pt.to_zarr(result, tmp_path / "fit.zarr"))
    xr.testing.assert_identical(opened.dataset.compute(), result.dataset.compute())
    assert json.loads(opened.dataset.attrs["pytyche_fit"])["backend"] == "stochtree"


def test_zarr_chunks_are_visitor_major_and_open_aligns_to_them(tmp_path, monkeypatch):
    ds = random_dataset("binary", n_visitors=100, n_draws=10, dtype=np.float32)
    monkeypatch.setattr(io_module, "CHUNK_BYTES", 10 * 10 * 3 * 4)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "s.zarr")
    monkeypatch.undo()
    stored = zarr.open_array(path / "conversion", mode="r")
    assert stored.chunks == (10, 10, 3)
    opened = pt.open_posterior(path)
    assert opened.dataset["conversion"].data.chunks == ((100,), (10,), (3,))
    opened = pt.open_posterior(path, chunks=25)
    assert opened.dataset["conversion"].data.chunks[0] == (25,) * 4
    np.testing.assert_array_equal(opened.dataset["conversion"].values, ds["conversion"].values)


def test_open_accepts_another_axis_order(tmp_path):
    ds = random_dataset("binary", n_visitors=20, n_draws=6, dtype=np.float32)
    # Written by plain xarray, draw-major (arm names as variable-length text, as zarr 3 wants).
    draw_major = ds.transpose("draw", "arm", "visitor")
    draw_major = draw_major.assign_coords(arm=draw_major["arm"].values.astype(object))
    draw_major = draw_major.drop_vars(["variant", "device"])
    draw_major.to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    opened = pt.open_posterior(tmp_path / "other.zarr")
    assert opened.dataset["conversion"].dims == ("visitor", "draw", "arm")
    np.testing.assert_array_equal(opened.dataset["conversion"].values, ds["conversion"].values)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_overwrite(tmp_path, fmt):
    write, name = FORMATS[fmt]
    first = pt.posterior(random_dataset("binary", seed=1, dtype=np.float32))
    second = pt.posterior(random_dataset("binary", seed=2, dtype=np.float32))
    path = write(first, tmp_path / name)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write(second, path)
    write(second, path, overwrite=True)
    xr.testing.assert_identical(pt.open_posterior(path).dataset.compute(), second.dataset)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporaries left


def failing_result(ds: xr.Dataset) -> pt.BinaryBCFResult:
    """A lazy posterior whose last chunk raises when computed: the writer fails mid-way."""

    def block(x, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise RuntimeError("disk on fire")
        return x

    data = da.from_array(ds["conversion"].values, chunks=(20, -1, -1)).map_blocks(
        block, dtype=np.float32
    )
    return pt.posterior(ds.assign(conversion=(ds["conversion"].dims, data)))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_failed_write_leaves_the_old_store(tmp_path, fmt, monkeypatch):
    write, name = FORMATS[fmt]
    old = random_dataset("binary", seed=1, dtype=np.float32)
    path = write(pt.posterior(old), tmp_path / name)
    new = failing_result(random_dataset("binary", seed=2, dtype=np.float32))
    monkeypatch.setattr(io_module, "CHUNK_BYTES", 20 * 40 * 3 * 4)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write(new, path, overwrite=True)
    xr.testing.assert_identical(pt.open_posterior(path).dataset.compute(), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


WRITER = textwrap.dedent(
    """
    import sys, time
    import dask, dask.array as da, numpy as np
    import pytyche as pt, pytyche.io as io

    io.CHUNK_BYTES = 2_000 * 50 * 3 * 4  # many small chunks: a long write to interrupt

    def slow(x):
        time.sleep(0.05)
        return x

    n = 400_000
    conversion = da.random.default_rng(1).uniform(size=(n, 50, 3), chunks=(2_000, 50, 3))
    result = pt.from_arrays("binary", ["control", "A", "B"], conversion=conversion.map_blocks(slow))
    with dask.config.set(scheduler="synchronous"):
        print("writing", flush=True)
        getattr(pt, sys.argv[1])(result, sys.argv[2], overwrite=True)
    print("finished", flush=True)
    """
)


def kill_mid_write(tmp_path: Path, function: str, target: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, str(script), function, str(target)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout.readline().strip() == b"writing"
        deadline = time.monotonic() + 60
        # Wait until the temporary beside the target has data in it, then kill the writer.
        while time.monotonic() < deadline:
            temporaries = [p for p in tmp_path.iterdir() if ".pytyche-" in p.name]
            if temporaries and _size(temporaries[0]) > 1_000_000:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the writer never got going")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sigkill_mid_write_leaves_the_old_store_or_none(tmp_path, fmt):
    write, name = FORMATS[fmt]
    old = random_dataset("hurdle", seed=1, dtype=np.float32)
    target = write(pt.posterior(old), tmp_path / name)
    kill_mid_write(tmp_path, "to_zarr" if fmt == "zarr" else "to_netcdf", target)
    # The old store is intact at the path: the killed write never touched it.
    xr.testing.assert_identical(pt.open_posterior(target).dataset.compute(), old)
    # Without an old store, nothing at all is at the path.
    fresh = tmp_path / ("fresh-" + name)
    kill_mid_write(tmp_path, "to_zarr" if fmt == "zarr" else "to_netcdf", fresh)
    assert not fresh.exists()


# --------------------------------------------------------------------------- bad stores


def test_open_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no posterior at"):
        pt.open_posterior(tmp_path / "missing.zarr")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a store at all")
    with pytest.raises(pt.PosteriorReadError, match="neither a Zarr store nor a netCDF file"):
        pt.open_posterior(junk)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(pt.PosteriorReadError, match="not a Zarr store"):
        pt.open_posterior(tmp_path / "empty_dir")
    plain = tmp_path / "plain.zarr"
    xr.Dataset({"x": ("visitor", np.arange(3.0))}).to_zarr(plain, consolidated=False)
    with pytest.raises(pt.PosteriorReadError, match="no 'pytyche_family' attribute"):
        pt.open_posterior(plain)


def test_open_rejects_missing_variable_and_wrong_schema(tmp_path):
    path = pt.to_zarr(pt.posterior(random_dataset("hurdle", dtype=np.float32)), tmp_path / "h.zarr")
    group = zarr.open_group(path, mode="a")
    group.attrs["pytyche_schema"] = 2
    with pytest.raises(pt.PosteriorReadError, match="pytyche_schema is 2"):
        pt.open_posterior(path)
    group.attrs["pytyche_schema"] = 1
    del group["value"]
    with pytest.raises(pt.PosteriorReadError, match=r"lacks the variable\(s\) \['value'\]"):
        pt.open_posterior(path)


def test_corrupt_chunk_is_a_clear_error(tmp_path):
    ds = random_dataset("binary", n_visitors=60, dtype=np.float32)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "c.zarr")
    chunk = next(
        p for p in (path / "conversion").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])  # truncated
    opened = pt.open_posterior(path)  # metadata is fine: opening is lazy
    with pytest.raises(
        pt.PosteriorReadError, match=r"could not read visitors 0-60 of 'conversion'"
    ):
        _ = opened.dataset["conversion"].values


def test_truncated_netcdf_is_a_clear_error(tmp_path):
    path = pt.to_netcdf(pt.posterior(random_dataset("binary", dtype=np.float32)), tmp_path / "t.nc")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(pt.PosteriorReadError, match=r"t\.nc"):
        _ = pt.open_posterior(path).dataset["conversion"].values


def test_write_rejects_non_posteriors(tmp_path):
    with pytest.raises(TypeError, match="take a pytyche result"):
        pt.to_zarr(np.ones(3), tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="cannot tell the posterior's family"):
        pt.to_netcdf(xr.Dataset({"x": ("visitor", np.ones(3))}), tmp_path / "x.nc")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_result_methods_write_the_same_store(tmp_path, fmt):
    result = pt.posterior(random_dataset("hurdle", dtype=np.float32, seed=8))
    method = result.to_zarr if fmt == "zarr" else result.to_netcdf
    path = method(tmp_path / FORMATS[fmt][1])
    xr.testing.assert_identical(pt.open_posterior(path).dataset.compute(), result.dataset)
    with pytest.raises(FileExistsError):
        method(path)
    assert method(path, overwrite=True) == path
