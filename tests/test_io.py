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
from pytyche.data import visitor_chunk

from helpers import counting_scheduler, random_dataset

io_module = importlib.import_module("pytyche.io")

FORMATS = {"zarr": (pt.to_zarr, "store.zarr"), "netcdf": (pt.to_netcdf, "posterior.nc")}


def with_missing_text(ds: xr.Dataset) -> xr.Dataset:
    """Missing text values and genuine empty strings, side by side."""
    device = ds["device"].values.copy()
    device[::5] = np.nan
    device[1::5] = ""
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
    assert "device" + io_module.MISSING_SUFFIX not in opened.dataset.variables
    segments = [
        pt.DiscoveredSegment(0, "device == 'mobile'"),
        pt.DiscoveredSegment(1, "everyone"),
        pt.DiscoveredSegment(2, "device == ''"),
    ]
    before = pt.membership(segments, result.dataset).values
    after = pt.membership(segments, opened.dataset).values
    np.testing.assert_array_equal(after, before)
    assert before[2].sum() == ds.sizes["visitor"] // 5  # the genuine "" only, not the missing
    assert pt.thompson_allocation(opened, segments) == pt.thompson_allocation(result, segments)


def test_fit_round_trip_through_zarr(tmp_path):
    observed, _ = pt.simulate_experiment(300, family="hurdle", seed=1)
    result = pt.fit(observed, n_draws=8, n_trees_mu=5, n_trees_tau=3, num_threads=1, progress=False)
    opened = pt.open_posterior(pt.to_zarr(result, tmp_path / "fit.zarr"))
    xr.testing.assert_identical(opened.dataset.compute(), result.dataset.compute())
    assert json.loads(opened.dataset.attrs["pytyche_fit"])["backend"] == "stochtree"


def test_zarr_chunks_are_visitor_major_and_open_aligns_to_them(tmp_path):
    ds = random_dataset("binary", n_visitors=100, n_draws=10, dtype=np.float32)
    with pt.set_options(chunk_bytes=10 * 10 * 3 * 4):
        path = pt.to_zarr(pt.posterior(ds), tmp_path / "s.zarr")
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
    with pytest.warns(da.PerformanceWarning, match="not visitor-major") as caught:
        opened = pt.open_posterior(tmp_path / "other.zarr")
    assert len(caught) == 1
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
def test_failed_write_leaves_the_old_store(tmp_path, fmt):
    write, name = FORMATS[fmt]
    old = random_dataset("binary", seed=1, dtype=np.float32)
    path = write(pt.posterior(old), tmp_path / name)
    new = failing_result(random_dataset("binary", seed=2, dtype=np.float32))
    with pt.set_options(chunk_bytes=20 * 40 * 3 * 4), pytest.raises(RuntimeError, match="fire"):
        write(new, path, overwrite=True)
    xr.testing.assert_identical(pt.open_posterior(path).dataset.compute(), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


WRITER = textwrap.dedent(
    """
    import sys, time
    import dask, dask.array as da, numpy as np
    import pytyche as pt

    pt.set_options(chunk_bytes=2_000 * 50 * 3 * 4)  # many small chunks: a long write to interrupt

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


def kill_mid_write(tmp_path: Path, function: str, targets: list[Path]) -> None:
    """Start one writer per target (concurrently), SIGKILL each once its temporary has data."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    processes = {
        target: subprocess.Popen(
            [sys.executable, str(script), function, str(target)], stdout=subprocess.PIPE, env=env
        )
        for target in targets
    }
    try:
        for process in processes.values():
            assert process.stdout.readline().strip() == b"writing"
        deadline = time.monotonic() + 60
        running = dict(processes)
        # Wait until the temporary beside each target has data in it, then kill its writer.
        while running and time.monotonic() < deadline:
            for target, process in list(running.items()):
                temporaries = list(tmp_path.glob(f".{target.name}.pytyche-*"))
                if temporaries and _size(temporaries[0]) > 1_000_000:
                    os.kill(process.pid, signal.SIGKILL)
                    del running[target]
            time.sleep(0.05)
        if running:
            pytest.fail(f"the writers for {list(running)} never got going")
    finally:
        for process in processes.values():
            if process.poll() is None and process.returncode is None:
                process.kill()
            process.wait(timeout=30)
            process.stdout.close()
    assert all(p.returncode == -signal.SIGKILL for p in processes.values())


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sigkill_mid_write_leaves_the_old_store_or_none(tmp_path, fmt):
    write, name = FORMATS[fmt]
    old = random_dataset("hurdle", seed=1, dtype=np.float32)
    target = write(pt.posterior(old), tmp_path / name)
    fresh = tmp_path / ("fresh-" + name)
    kill_mid_write(tmp_path, "to_zarr" if fmt == "zarr" else "to_netcdf", [target, fresh])
    # The old store is intact at the path: the killed write never touched it.
    xr.testing.assert_identical(pt.open_posterior(target).dataset.compute(), old)
    # Without an old store, nothing at all is at the path.
    assert not fresh.exists()


SWAP = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import pytyche as pt, pytyche.io as io

    new = pt.from_arrays("binary", ["control", "A"], conversion=np.full((20, 3, 2), 0.7))
    target, mode = sys.argv[1], sys.argv[2]
    if mode == "exchange":  # killed right after the one atomic swap
        exchange = io._exchange

        def killed_after(a, b):
            assert exchange(a, b)
            os._exit(9)

        io._exchange = killed_after
    else:  # no renameat2: killed between the two renames of the fallback
        io._exchange = lambda a, b: False
        rename = os.rename

        def killed_after_first(a, b):
            rename(a, b)
            os._exit(9)

        os.rename = killed_after_first
    pt.to_zarr(new, target, overwrite=True)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux only")
def test_zarr_overwrite_swaps_atomically_and_names_what_a_kill_left(tmp_path):
    script = tmp_path / "swap.py"
    script.write_text(SWAP)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    old = pt.from_arrays("binary", ["control", "A"], conversion=np.full((20, 3, 2), 0.5))
    swapped, fallback = pt.to_zarr(old, tmp_path / "a.zarr"), pt.to_zarr(old, tmp_path / "b.zarr")
    processes = [
        subprocess.Popen([sys.executable, str(script), str(path), mode], env=env)
        for path, mode in ((swapped, "exchange"), (fallback, "rename"))
    ]
    assert [p.wait(timeout=60) for p in processes] == [9, 9]
    # One atomic exchange: the target holds the complete new store even when killed at once.
    np.testing.assert_array_equal(
        pt.open_posterior(swapped).dataset["conversion"].values, np.float32(0.7)
    )
    # The fallback's two renames, killed between them: nothing at the target, and opening
    # says which sibling the interrupted write left.
    assert not fallback.exists()
    with pytest.raises(
        FileNotFoundError, match=r"an interrupted write left \['\.b\.zarr\.pytyche-"
    ):
        pt.open_posterior(fallback)


def test_exchange_swaps_two_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.write_text("file")
    if not io_module._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is unavailable here")
    assert a.read_text() == "file" and b.is_dir()


@pytest.mark.parametrize("exchange", [True, False])
def test_overwrite_file_with_store_leaves_nothing_behind(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(io_module, "_exchange", lambda a, b: False)
    result = pt.posterior(random_dataset("binary", dtype=np.float32))
    path = pt.to_netcdf(result, tmp_path / "x.zarr")  # a posterior file, replaced by a store
    pt.to_zarr(result, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]
    xr.testing.assert_identical(pt.open_posterior(path).dataset.compute(), result.dataset)
    pt.to_zarr(result, path, overwrite=True)  # a store over a store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]


def test_netcdf_refuses_to_replace_a_directory(tmp_path):
    result = pt.posterior(random_dataset("binary", dtype=np.float32))
    store = pt.to_zarr(result, tmp_path / "x.zarr")
    with pytest.raises(IsADirectoryError, match=r"x\.zarr is a directory"):
        pt.to_netcdf(result, store, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]
    pt.open_posterior(store)


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


def chunk_files(path: Path, name: str) -> list[Path]:
    return sorted(p for p in (path / name).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_deleted_zarr_chunk_is_an_error_at_open(tmp_path):
    ds = random_dataset("hurdle", n_visitors=100, n_draws=10, dtype=np.float32)
    with pt.set_options(chunk_bytes=10 * 10 * 3 * 4):
        path = pt.to_zarr(pt.posterior(ds), tmp_path / "d.zarr")
    chunks = chunk_files(path, "value")
    assert len(chunks) == 10  # every chunk written
    chunks[3].unlink()
    with pytest.raises(
        pt.PosteriorReadError, match=r"'value' is missing its chunk 'c/3/0/0' .*visitors 30-40"
    ):
        pt.open_posterior(path)


def test_flipped_bytes_in_a_zarr_chunk_fail_the_checksum(tmp_path):
    ds = random_dataset("binary", n_visitors=60, dtype=np.float32)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "f.zarr")
    chunk = chunk_files(path, "conversion")[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    opened = pt.open_posterior(path)
    with pytest.raises(pt.PosteriorReadError, match=r"'conversion'.*checksum"):
        _ = opened.dataset["conversion"].values


def test_scrambled_netcdf_data_fails_the_checksum(tmp_path):
    ds = random_dataset("binary", n_visitors=60, dtype=np.float32)
    path = pt.to_netcdf(pt.posterior(ds), tmp_path / "s.nc")
    data = bytearray(path.read_bytes())
    # The variable is stored uncompressed: find its first values and scramble them.
    start = data.find(ds["conversion"].values.tobytes()[:64])
    assert start > 0
    data[start : start + 256] = b"\xff" * 256
    path.write_bytes(bytes(data))
    opened = pt.open_posterior(path)
    with pytest.raises(pt.PosteriorReadError, match=r"s\.nc: could not read .* of 'conversion'"):
        _ = opened.dataset["conversion"].values


def test_open_auto_chunks_by_bytes_in_whole_stored_chunks(tmp_path):
    ds = random_dataset("binary", n_visitors=100, n_draws=10, dtype=np.float32)
    per_visitor = 10 * 3 * 4
    with pt.set_options(chunk_bytes=10 * per_visitor):
        path = pt.to_zarr(pt.posterior(ds), tmp_path / "s.zarr")  # stored chunks: 10 visitors
    # 45 visitors' worth of bytes: rounded down to whole stored chunks, 40 visitors.
    with pt.set_options(chunk_bytes=45 * per_visitor):
        chunks = pt.open_posterior(path).dataset["conversion"].data.chunks
    assert chunks == ((40, 40, 20), (10,), (3,))
    # Less than one stored chunk's worth: one stored chunk, never a part of one.
    with pt.set_options(chunk_bytes=3 * per_visitor):
        assert pt.open_posterior(path).dataset["conversion"].data.chunks[0] == (10,) * 10
    # At the default target, a realistic posterior gets chunks in the contract's 64-256 MB.
    for shape in [(1_000_000, 1_000, 4), (200_000, 4_000, 10), (50_000, 2, 500, 3)]:
        rows = visitor_chunk(shape, 4)
        assert 64 * 2**20 <= rows * np.prod(shape[1:]) * 4 <= 256 * 2**20, shape


def test_from_arrays_from_inference_data_and_open_are_lazy(tmp_path):
    observed, _ = pt.simulate_experiment(300, family="binary", seed=1)
    draws = da.random.default_rng(0).uniform(size=(300, 10, 3), chunks=(50, 10, 3))
    group = xr.Dataset(
        {"c": (("obs", "draw", "t"), draws)},
        coords={"t": ["control", "A", "B"]},
    )
    group = group.expand_dims(chain=1).transpose("chain", "draw", "obs", "t")
    with counting_scheduler(0):
        result = pt.from_arrays("binary", ["control", "A", "B"], observed, conversion=draws)
        pt.from_inference_data(
            group, "binary", variables={"conversion": "c"}, visitor_dim="obs", arm_dim="t"
        )
    path = pt.to_zarr(result, tmp_path / "lazy.zarr")
    with counting_scheduler(0):
        opened = pt.open_posterior(path)
    with counting_scheduler(1):
        allocation = pt.thompson_allocation(opened, pt.planted_segments())
    assert allocation == pt.thompson_allocation(result, pt.planted_segments())


def test_plain_xarray_opens_a_store_quietly(tmp_path):
    """Consolidated metadata: xr.open_zarr neither warns nor falls back (issue 8, friction)."""
    import warnings

    ds = random_dataset("hurdle", n_visitors=30, dtype=np.float32)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "s.zarr")
    root = json.loads((path / "zarr.json").read_text())
    assert set(root["consolidated_metadata"]["metadata"]) >= {"conversion", "value", "device"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opened = xr.open_zarr(path)
    assert set(opened.variables) >= set(ds.variables)
    np.testing.assert_array_equal(opened["value"].values, ds["value"].values)
