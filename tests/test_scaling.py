"""Scaling: the allocation graph grows with the chunks, not the segments; reading stays chunked.

The sizes here are tiny: ``pt.set_options(chunk_bytes=...)`` stands in for the 128 MB chunks of a
real posterior, so each test checks the layout rule, not a speed.
"""

from __future__ import annotations

import re
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import pytyche as pt

from helpers import counting_scheduler

N_VISITORS = 6_400
N_DRAWS = 20
ARMS = ("control", "A", "B", "C")
ROW_BYTES = N_DRAWS * len(ARMS) * 4  # float32, one visitor's draws × arms


def age_segments(n: int) -> dict[int, str]:
    """``n`` disjoint segments over the same covariates (mobile or not × age bands)."""
    if n == 1:
        return {0: "device in ('mobile', 'desktop', 'tablet') and age >= 18"}
    bands = n // 2
    width = 64 // bands
    return {
        2 * band + side: f"device {op} 'mobile' and age >= {18 + width * band} "
        f"and age < {18 + width * (band + 1)}"
        for band in range(bands)
        for side, op in enumerate(("==", "!="))
    }


def example(n_chunks: int, family: str = "continuous"):
    return pt.example_posterior(
        N_VISITORS, N_DRAWS, ARMS, family=family, chunks=N_VISITORS // n_chunks, seed=3
    )


def stored(tmp_path, n_chunks: int, family: str = "continuous"):
    """The same posterior written to Zarr in ``n_chunks`` visitor chunks and reopened lazily."""
    path = tmp_path / f"{family}-{n_chunks}.zarr"
    with pt.set_options(chunk_bytes=ROW_BYTES * N_VISITORS // n_chunks):
        pt.to_zarr(example(n_chunks, family), path)
    return pt.open_posterior(path, chunks=N_VISITORS // n_chunks)


def chunked(n_chunks: int):
    """The posterior in memory, then ``ds.chunk``-ed: covariates chunked like the draws."""
    return pt.posterior(example(1).dataset.compute().chunk({"visitor": N_VISITORS // n_chunks}))


SOURCES = {
    "example_posterior (covariates in memory)": lambda tmp_path, n: example(n),
    "open_posterior (covariates in their own chunks)": lambda tmp_path, n: stored(tmp_path, n),
    "ds.chunk (covariates chunked like the draws)": lambda tmp_path, n: chunked(n),
}
LAZY_PIECES = {"win_frequencies": pt.win_frequencies, "segment_means": pt.segment_means}


def graph_size(array: xr.DataArray) -> int:
    assert isinstance(array.data, da.Array), "expected a lazy (dask-backed) result"
    return len(array.data.__dask_graph__())


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("piece", sorted(LAZY_PIECES))
def test_the_graph_grows_with_the_chunks_not_the_segments(piece, source, tmp_path):
    function = LAZY_PIECES[piece]
    sizes = {}
    for n_chunks in (16, 32, 64):
        result = SOURCES[source](tmp_path, n_chunks)
        assert result.dataset["expected"].data.numblocks[0] == n_chunks
        with counting_scheduler(0):  # building the graph computes nothing
            for n_segments in (1, 16, 64):
                segments = age_segments(n_segments)
                sizes[n_chunks, n_segments] = graph_size(function(result, segments))

    for n_chunks in (16, 32, 64):
        one = sizes[n_chunks, 1]
        for n_segments in (16, 64):
            # No task per segment (let alone per segment and chunk): the count may differ by a
            # few tasks between code paths (one segment vs several), not with the segments.
            assert abs(sizes[n_chunks, n_segments] - one) <= 4, sizes
    for n_segments in (1, 16, 64):
        small, medium, large = (sizes[n, n_segments] for n in (16, 32, 64))
        # Twice the chunks, about twice the tasks: a constant per chunk plus a fixed overhead.
        assert 1.6 <= medium / small <= 2.05, sizes
        assert 1.6 <= large / medium <= 2.05, sizes
        per_chunk_small, per_chunk_large = (medium - small) / 16, (large - medium) / 32
        assert per_chunk_large == pytest.approx(per_chunk_small, rel=0.1), sizes


# --------------------------------------------------------------------------- reading chunks


def assert_visitor_only(array: da.Array, limit_bytes: int) -> None:
    """Chunks split ``visitor`` only, and none is larger than ``limit_bytes``."""
    assert all(len(chunks) == 1 for chunks in array.chunks[1:]), array.chunks
    assert max(array.chunks[0]) * ROW_BYTES <= limit_bytes, array.chunks


@pytest.mark.parametrize("family", ["continuous", "hurdle"])
def test_open_posterior_auto_keeps_visitor_only_chunks_of_the_target_size(family, tmp_path):
    target = 100 * ROW_BYTES  # stands in for 128 MB: 100 visitors a chunk
    path = tmp_path / "posterior.zarr"
    result = example(8, family)
    with pt.set_options(chunk_bytes=target):
        pt.to_zarr(result, path)
        with counting_scheduler(0):  # opening reads metadata only
            opened = pt.open_posterior(path, chunks="auto")
    for name in opened.metric_variables:
        data = opened.dataset[name].data
        assert opened.dataset[name].dims == ("visitor", "draw", "arm")
        assert_visitor_only(data, target)
        assert data.chunks[0][:-1] == (100,) * (data.numblocks[0] - 1)

    # Opened with a larger target: whole stored chunks per dask chunk, as many as fit.
    with pt.set_options(chunk_bytes=350 * ROW_BYTES):
        opened = pt.open_posterior(path, chunks="auto")
    for name in opened.metric_variables:
        data = opened.dataset[name].data
        assert_visitor_only(data, 350 * ROW_BYTES)
        assert data.chunks[0][:-1] == (300,) * (data.numblocks[0] - 1)
    xr.testing.assert_equal(opened.dataset.compute(), result.dataset.compute())


# --------------------------------------------------------------------------- other layouts


def plain_xarray_store(path, result, order, chunks) -> None:
    """Write ``result`` with plain xarray (not pt.to_zarr): any axis order and chunking."""
    ds = result.dataset.compute().transpose(*order)
    assert ds.attrs["pytyche_family"] and ds.attrs["pytyche_schema"] == 1
    sizes = ds.sizes  # -1 (or no entry) in ``chunks``: the whole dim
    stored = tuple(sizes[dim] if chunks.get(dim, -1) == -1 else chunks[dim] for dim in order)
    encoding = {name: {"chunks": stored} for name in ds.data_vars}
    ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding)


LAYOUTS = {
    # name: (axis order, stored chunks, how often a pass reads each stored chunk)
    "draw-split, all visitors per stored chunk": (
        ("visitor", "draw", "arm"),
        {"visitor": -1, "draw": 5},
        "many",
    ),
    "draw-major, all visitors per stored chunk": (
        ("draw", "visitor", "arm"),
        {"visitor": -1, "draw": 5},
        "many",
    ),
    "draw-major, small stored chunks": (
        ("draw", "visitor", "arm"),
        {"visitor": 50, "draw": 5},
        "once",
    ),
    "arm-split": (("visitor", "draw", "arm"), {"visitor": 200, "arm": 1}, "once"),
}


@pytest.mark.parametrize("family", ["continuous", "hurdle"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_store_in_another_layout_is_converted_lazily_with_one_warning(layout, family, tmp_path):
    order, chunks, reads = LAYOUTS[layout]
    target = 400 * ROW_BYTES  # stands in for 128 MB
    path = tmp_path / "other-layout.zarr"
    result = example(4, family)
    plain_xarray_store(path, result, order, chunks)

    with (
        pt.set_options(chunk_bytes=target),
        counting_scheduler(0),  # lazily: nothing is read while opening
        pytest.warns(da.PerformanceWarning) as caught,
    ):
        opened = pt.open_posterior(path, chunks="auto")
    assert len(caught) == 1, [str(w.message) for w in caught]  # one per store, not per variable
    message = str(caught[0].message)
    assert str(path) in message
    assert "visitor-major" in message
    assert "pt.to_zarr(pt.open_posterior(" in message  # the fix
    if reads == "many":
        # The cost: each stored chunk (all visitors) is read once per visitor chunk.
        times = re.search(r"reads each stored chunk (\d+) times", message)
        assert times, message
        assert int(times.group(1)) == opened.dataset[opened.metric_variables[0]].data.numblocks[0]
    else:
        assert "copies" in message, message

    for name in opened.metric_variables:
        data = opened.dataset[name].data
        assert opened.dataset[name].dims == ("visitor", "draw", "arm")
        assert data.numblocks[0] > 1
        assert_visitor_only(data, target)
    xr.testing.assert_equal(opened.dataset.compute(), result.dataset.compute())
    # The same blocks as a visitor-major posterior: the same sums, bit for bit.
    same_blocks = pt.posterior(result.dataset.chunk({"visitor": data.chunks[0]}))
    segments = age_segments(16)
    assert pt.thompson_allocation(opened, segments) == pt.thompson_allocation(same_blocks, segments)


def test_a_visitor_major_store_written_by_plain_xarray_opens_without_a_warning(tmp_path):
    path = tmp_path / "plain.zarr"
    result = example(4)
    plain_xarray_store(path, result, ("visitor", "draw", "arm"), {"visitor": 400})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opened = pt.open_posterior(path, chunks="auto")
    assert_visitor_only(opened.dataset["expected"].data, N_VISITORS * ROW_BYTES)
    np.testing.assert_array_equal(
        opened.dataset["expected"].values, result.dataset["expected"].values
    )
