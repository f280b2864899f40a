"""Issue 8, items 1-6: no silent wrong answer, whichever reader opened a posterior.

Each test reproduces what an adversarial probe found (the issue's numbered item is in the
test's comment) and checks the result against the in-memory posterior or a naive reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt

from helpers import random_dataset

STRING = np.dtypes.StringDType()
SEGMENTS = [
    pt.DiscoveredSegment(0, "device != 'mobile'"),
    pt.DiscoveredSegment(1, "device == 'mobile'"),
    pt.DiscoveredSegment(2, "device == ''"),
    pt.DiscoveredSegment(3, "everyone"),
]


def missing_text_posterior(n_visitors: int = 900) -> xr.Dataset:
    """A third of the visitors have no device; the allocation depends on who is in which."""
    ds = random_dataset("binary", n_visitors=n_visitors, n_draws=30, dtype=np.float32, seed=4)
    device = np.array(["mobile", "desktop", None] * (n_visitors // 3), dtype=object)
    device[device == None] = np.nan  # noqa: E711  (elementwise)
    device[7] = ""  # a genuine empty string stays a value
    conversion = ds["conversion"].values
    # Missing-device visitors strongly prefer T2: counting them in a rule moves the allocation.
    missing = pd.isna(device)
    conversion[missing, :, 2] = 0.9
    conversion[missing, :, :2] = 0.05
    return ds.assign(conversion=(ds["conversion"].dims, conversion)).assign_coords(
        device=("visitor", device)
    )


def open_zarr_plainly(path):
    return xr.open_zarr(path)


READERS = {
    "open_posterior zarr": ("zarr", lambda p: pt.open_posterior(p).dataset),
    "open_posterior netcdf": ("netcdf", lambda p: pt.open_posterior(p).dataset),
    "xr.open_dataset netcdf": ("netcdf", xr.open_dataset),
    "xr.open_dataset netcdf chunks={}": ("netcdf", lambda p: xr.open_dataset(p, chunks={})),
    "xr.open_zarr": ("zarr", open_zarr_plainly),
    "xr.open_dataset zarr chunks={}": (
        "zarr",
        lambda p: xr.open_dataset(p, engine="zarr", chunks={}),
    ),
}


# Item 1: a missing text value read by a plain reader must not become the value "".
@pytest.mark.parametrize("reader", sorted(READERS))
def test_missing_text_means_the_same_through_every_reader(tmp_path, reader):
    ds = missing_text_posterior()
    fmt, read = READERS[reader]
    path = tmp_path / ("p.zarr" if fmt == "zarr" else "p.nc")
    (pt.to_zarr if fmt == "zarr" else pt.to_netcdf)(pt.posterior(ds), path)
    opened = read(path)
    expected_members = ds.tyche.membership(SEGMENTS).values
    members = opened.tyche.membership(SEGMENTS).values
    np.testing.assert_array_equal(members, expected_members)
    assert members[0].sum() == 300  # desktop (299) and the one genuine "", not the missing
    assert members[2].sum() == 1
    assert opened.tyche.thompson_allocation(SEGMENTS) == ds.tyche.thompson_allocation(SEGMENTS)
    decoded = opened.tyche.result.dataset
    assert "device__pytyche_missing" not in decoded.variables
    assert pd.isna(decoded["device"].values).sum() == 300


def test_decoding_stays_lazy_and_is_idempotent(tmp_path):
    ds = missing_text_posterior(90)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "p.zarr")
    opened = xr.open_zarr(path)
    result = pt.posterior(opened)
    assert result.dataset["device"].chunks is not None  # nothing computed
    again = pt.posterior(result.dataset)
    assert again.dataset["device"].values.tolist() == ds["device"].values.tolist()


# Item 2: numpy's variable-width StringDType is text wherever covariates are read.
def test_string_dtype_is_text_everywhere():
    ds = random_dataset("binary", n_visitors=60, dtype=np.float32)
    variant = np.repeat(np.array(["control", "T1", "T2"], dtype=object), 20)
    ds = ds.assign_coords(variant=("visitor", variant))
    plain = pt.posterior(ds)
    text = ds.assign_coords(
        device=("visitor", ds["device"].values.astype(STRING)),
        variant=("visitor", ds["variant"].values.astype(STRING)),
        arm=ds["arm"].values.astype(STRING),
    )
    result = pt.posterior(text)
    assert pt.thompson_allocation(result, SEGMENTS[:2]) == pt.thompson_allocation(
        plain, SEGMENTS[:2]
    )
    # Observed data with StringDType labels: from_arrays checks them (fits use the same check).
    rebuilt = pt.from_arrays(
        "binary", list(plain.variants), result.observed, conversion=ds["conversion"].values
    )
    np.testing.assert_array_equal(
        pt.membership(SEGMENTS[:2], rebuilt.observed).values,
        pt.membership(SEGMENTS[:2], plain.observed).values,
    )


def test_string_dtype_missing_marker_is_missing():
    values = np.array(["mobile", np.nan, "desktop"], dtype=np.dtypes.StringDType(na_object=np.nan))
    assert pt.Clause("device", "!=", "mobile").evaluate(values).tolist() == [False, False, True]
    assert pt.Clause("device", "in", ("mobile",)).evaluate(values).tolist() == [True, False, False]


def test_string_dtype_from_open_zarr_round_trips(tmp_path):
    ds = random_dataset("hurdle", n_visitors=50, dtype=np.float32)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "s.zarr")
    opened = xr.open_zarr(path)
    # Recent zarr/xarray give StringDType ("T"); the lowest supported versions give object ("O").
    # Both must be text; StringDType itself is exercised by the tests above.
    assert opened["device"].dtype.kind in ("T", "O")
    assert opened.tyche.thompson_allocation(SEGMENTS[:2]) == ds.tyche.thompson_allocation(
        SEGMENTS[:2]
    )


# Item 3: a deleted chunk of a covariate or coordinate is an error, not "" or NaN.
@pytest.mark.parametrize("name", ["device", "age", "variant", "returning", "arm"])
def test_every_variable_chunk_is_checked_at_open(tmp_path, name):
    ds = random_dataset("binary", n_visitors=40, dtype=np.float32)
    path = pt.to_zarr(pt.posterior(ds), tmp_path / "s.zarr")
    chunks = sorted(p for p in (path / name).rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks, f"no chunk file written for {name!r}"
    chunks[0].unlink()
    with pytest.raises(pt.PosteriorReadError, match=f"variable '{name}' is missing its chunk"):
        pt.open_posterior(path)


# Item 4: draws are never truncated or overflowed by the dtype they are cast to.
@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.bool_, "uint16"])
def test_from_arrays_refuses_a_non_float_dtype(dtype):
    conversion = np.full((4, 3, 2), 0.4)
    with pytest.raises(ValueError, match=r"dtype must be a floating-point dtype.*truncate"):
        pt.from_arrays("binary", ["control", "A"], conversion=conversion, dtype=dtype)


def test_from_arrays_refuses_values_beyond_the_dtype_range():
    expected = np.zeros((4, 3, 2))
    expected[2, 1, 1] = 1e39
    with pytest.raises(ValueError, match=r"1e\+39 at index \(2, 1, 1\), beyond the range of float"):
        pt.from_arrays("continuous", ["control", "A"], expected=expected)
    kept = pt.from_arrays("continuous", ["control", "A"], expected=expected, dtype=np.float64)
    assert kept.dataset["expected"].values[2, 1, 1] == 1e39
    with pytest.raises(TypeError, match="numpy floating-point dtype"):
        pt.from_arrays("continuous", ["control", "A"], expected=expected, dtype="nonsense")


# Item 5: a float32 covariate is compared with the literal as written, not rounded to float32.
@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(
    "rule", ["x < 1e-50", "x <= 0.1", "x > 0.1", "x == 0.1", "x != 0.1", "x in (0.1, 0.3)"]
)
def test_float32_covariates_compare_in_the_literals_precision(rule, lazy):
    x = np.array([0.0, 0.1, 0.2, 0.3, np.nan], dtype=np.float32)
    data = xr.DataArray(x, dims="visitor").chunk(2).data if lazy else x
    observed = xr.Dataset({"x": ("visitor", data)})
    got = pt.SegmentRule.parse(rule).evaluate(observed).values
    clause = pt.SegmentRule.parse(rule).clauses[0]
    exact = [float(v) for v in x]  # float32 → Python float is exact
    ops = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "in": lambda a, b: a in b,
    }
    literal = clause.value
    expected = [not np.isnan(v) and ops[clause.op](v, literal) for v in exact]
    assert got.tolist() == expected
    if rule == "x <= 0.1":
        assert got.tolist() == [True, False, False, False, False]
    if rule == "x < 1e-50":
        assert got.tolist() == [True, False, False, False, False]


# Item 6a: arm labels are text; bytes would come back as "b'control'".
def test_bytes_arm_names_are_an_error():
    ds = random_dataset("binary", n_visitors=10)
    with pytest.raises(ValueError, match=r"'arm' coordinate must hold the arm names as text"):
        pt.posterior(ds.assign_coords(arm=np.array([b"control", b"T1", b"T2"])))


# Item 6b: visitor ids 1 and '1' are distinct in memory; a store would make them equal.
@pytest.mark.parametrize("write", [pt.to_zarr, pt.to_netcdf])
def test_mixed_kind_visitor_ids_are_refused_and_integer_ids_are_exact(tmp_path, write):
    ds = random_dataset("binary", n_visitors=4, dtype=np.float32)
    mixed = ds.assign_coords(visitor=np.array([1, "1", 2, 3], dtype=object))
    with pytest.raises(ValueError, match=r"cannot store 'visitor' exactly.*1 and '1'"):
        write(pt.posterior(mixed), tmp_path / "mixed")
    ints = ds.assign_coords(visitor=np.array([10, 11, 12, 13], dtype=object))
    opened = pt.open_posterior(write(pt.posterior(ints), tmp_path / "ints"))
    assert opened.dataset["visitor"].values.tolist() == [10, 11, 12, 13]
    assert opened.dataset["visitor"].dtype == np.int64


# Item 6c: object columns of numbers or booleans stay numbers or booleans through a store.
@pytest.mark.parametrize("write", [pt.to_zarr, pt.to_netcdf])
def test_object_numbers_and_booleans_keep_their_kind(tmp_path, write):
    ds = random_dataset("binary", n_visitors=6, dtype=np.float32)
    ds = ds.assign_coords(
        score=("visitor", np.array([1, 2.5, None, 4, 5, 6], dtype=object)),
        count=("visitor", np.array([1, 2, 3, 4, 5, 6], dtype=object)),
        flag=("visitor", np.array([True, False] * 3, dtype=object)),
    )
    segments = [
        pt.DiscoveredSegment(0, "score > 2"),
        pt.DiscoveredSegment(1, "flag == True"),
        pt.DiscoveredSegment(2, "count in (2, 3)"),
    ]
    before = pt.membership(segments, pt.posterior(ds).observed).values
    opened = pt.open_posterior(write(pt.posterior(ds), tmp_path / "obj"))
    np.testing.assert_array_equal(pt.membership(segments, opened.observed).values, before)
    assert opened.dataset["flag"].dtype == bool
    assert opened.dataset["count"].dtype == np.int64
    missing_bool = ds.assign_coords(flag=("visitor", np.array([True, None] * 3, dtype=object)))
    with pytest.raises(ValueError, match="'flag' exactly: it holds booleans with missing"):
        write(pt.posterior(missing_bool), tmp_path / "bad")


# Item 6d: a lazily opened posterior never mixes in the numbers of a store written over it.
@pytest.mark.parametrize(("write", "name"), [(pt.to_zarr, "p.zarr"), (pt.to_netcdf, "p.nc")])
def test_reading_after_the_path_was_replaced_is_an_error(tmp_path, write, name):
    first = random_dataset("binary", n_visitors=30, dtype=np.float32, seed=1)
    second = random_dataset("binary", n_visitors=30, dtype=np.float32, seed=2)
    path = write(pt.posterior(first), tmp_path / name)
    opened = pt.open_posterior(path)
    write(pt.posterior(second), path, overwrite=True)
    with pytest.raises(pt.PosteriorReadError, match="was replaced or removed after it was opened"):
        opened.dataset["conversion"].values  # noqa: B018
    reopened = pt.open_posterior(path)
    np.testing.assert_array_equal(reopened.dataset["conversion"].values, second["conversion"])
