"""Observed data from per-arm tables, and posteriors from arrays and ArviZ-style groups."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt


def frames():
    return {
        "control": pd.DataFrame(
            {
                "device": pd.Series(["mobile", None, "tablet"], dtype="str"),
                "plan": pd.Categorical(["free", "pro", "free"]),
                "age": pd.array([30, pd.NA, 52], dtype="Int64"),
                "returning": [True, False, True],
                "visits": np.array([1, 2, 3], dtype=np.int64),
                "spend": [0.0, 12.5, 3.0],
            }
        ),
        "A": pd.DataFrame(
            {
                "device": ["desktop", "mobile"],
                "plan": pd.Categorical(["pro", "team"]),
                "age": pd.array([41, 19], dtype="Int64"),
                "returning": [False, False],
                "visits": np.array([4, 5], dtype=np.int64),
                "spend": [1.0, 0.0],
            }
        ),
    }


def test_observed_data_is_variant_major_with_typed_coordinates():
    obs = pt.observed_data(frames(), outcome="spend")
    assert obs.sizes["visitor"] == 5
    assert list(obs.data_vars) == []
    assert obs["variant"].values.tolist() == ["control"] * 3 + ["A"] * 2
    # Text and categorical stay text (not codes); missing text is NaN, as in xarray.
    assert obs["device"].dtype == object
    device = obs["device"].values
    assert pd.isna(device[1])
    assert device[[0, 2, 3, 4]].tolist() == ["mobile", "tablet", "desktop", "mobile"]
    assert obs["plan"].values.tolist() == ["free", "pro", "free", "pro", "team"]
    # Nullable integers with a gap become float with NaN; plain ints and bools keep their type.
    np.testing.assert_array_equal(obs["age"].values, [30, np.nan, 52, 41, 19])
    assert obs["age"].dtype == np.float64
    assert obs["visits"].dtype == np.int64
    assert obs["returning"].dtype == bool
    np.testing.assert_array_equal(obs["outcome"].values, [0.0, 12.5, 3.0, 1.0, 0.0])
    assert obs.attrs["pytyche_outcome"] == "spend"
    assert obs.attrs["pytyche_arms"] == ["control", "A"]
    assert "visitor" not in obs.indexes


def test_observed_data_rules_evaluate_on_text_covariates():
    obs = pt.observed_data(frames(), outcome="spend")
    member = pt.membership([pt.DiscoveredSegment(0, "device == 'mobile' and plan != 'team'")], obs)
    assert member.values.tolist() == [[True, False, False, False, False]]


def test_observed_data_covariate_selection_and_visitor_ids():
    data = frames()
    data["control"]["visitor_id"] = ["c1", "c2", "c3"]
    data["A"]["visitor_id"] = ["a1", "a2"]
    obs = pt.observed_data(data, outcome="spend", covariates=["device"])
    assert obs["visitor"].values.tolist() == ["c1", "c2", "c3", "a1", "a2"]
    assert set(obs.coords) == {"visitor", "variant", "device", "outcome"}


def test_observed_data_accepts_pairs_and_bool_outcome():
    pairs = [
        ("control", pd.DataFrame({"x": [1.0, 2.0], "y": [True, False]})),
        ("T", pd.DataFrame({"x": [3.0], "y": [True]})),
    ]
    obs = pt.observed_data(pairs, outcome="y")
    np.testing.assert_array_equal(obs["outcome"].values, [1.0, 0.0, 1.0])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: {"control": f["control"]}, "at least 2 arms"),
        (lambda f: {**f, "B": f["A"].iloc[:0]}, "arm 'B' has no rows"),
        (lambda f: {**f, "A": f["A"].drop(columns="spend")}, "arm 'A' has no outcome column"),
        (
            lambda f: {**f, "A": f["A"].assign(spend=["x", "y"])},
            "arm 'A': outcome column 'spend' has dtype",
        ),
        (
            lambda f: {**f, "A": f["A"].assign(spend=[1.0, np.nan])},
            "arm 'A': outcome column 'spend' has 1 missing",
        ),
        (
            lambda f: {**f, "A": f["A"].drop(columns="plan")},
            r"arm 'A' lacks the covariate column\(s\) \['plan'\]",
        ),
        (
            lambda f: {**f, "A": f["A"].assign(extra=1)},
            r"arm 'A' has column\(s\) \['extra'\]",
        ),
        (
            lambda f: {**f, "A": f["A"].assign(age=["old", "young"])},
            "covariate 'age' is number in arm 'control' but text in arm 'A'",
        ),
        (
            lambda f: {arm: t.rename(columns={"visits": "variant"}) for arm, t in f.items()},
            "covariate name 'variant' is taken",
        ),
        (
            lambda f: {**f, "A": f["A"].assign(when=pd.Timestamp("2024-01-01"))},
            "has column",
        ),
    ],
)
def test_observed_data_rejects_bad_tables(mutate, message):
    with pytest.raises(ValueError, match=message):
        pt.observed_data(mutate(frames()), outcome="spend")


def test_observed_data_rejects_duplicate_arms_ids_and_unsupported_dtypes():
    f = frames()
    with pytest.raises(ValueError, match=r"duplicate arm names \['A'\]"):
        pt.observed_data([("control", f["control"]), ("A", f["A"]), ("A", f["A"])], "spend")
    f["control"]["visitor_id"] = [1, 2, 3]
    f["A"]["visitor_id"] = [4, 2]
    with pytest.raises(ValueError, match="duplicate visitor id 2 in arms 'control' and 'A'"):
        pt.observed_data(f, "spend")
    f = frames()
    for frame in f.values():
        frame["when"] = pd.Timestamp("2024-01-01")
    # A wrong dtype is a TypeError everywhere a covariate is read (rules, trees, observed data).
    with pytest.raises(TypeError, match="arm 'control': covariate 'when' has unsupported dtype"):
        pt.observed_data(f, "spend")
    f = frames()
    f["A"]["returning"] = pd.array([True, pd.NA], dtype="boolean")
    with pytest.raises(ValueError, match="arm 'A', boolean covariate 'returning' has missing"):
        pt.observed_data(f, "spend")
    with pytest.raises(TypeError, match="arm 'A': expected a pandas DataFrame"):
        pt.observed_data({"control": frames()["control"], "A": [1, 2]}, "spend")


# --------------------------------------------------------------------------- from_arrays


def observed_for(n_per_arm=(4, 3, 3)):
    arms = ["control", "A", "B"]
    tables = {
        arm: pd.DataFrame({"device": (["mobile", "desktop"] * n)[:n], "y": 0.0})
        for arm, n in zip(arms, n_per_arm, strict=True)
    }
    return pt.observed_data(tables, outcome="y"), arms


def test_from_arrays_numpy_hurdle_in_contract():
    obs, arms = observed_for()
    n = obs.sizes["visitor"]
    rng = np.random.default_rng(0)
    conversion = rng.uniform(size=(n, 7, 3))
    value = rng.gamma(2.0, size=(n, 7, 3))
    result = pt.from_arrays("hurdle", arms, observed=obs, conversion=conversion, value=value)
    assert isinstance(result, pt.HurdleBCFResult)
    ds = result.dataset
    assert ds["conversion"].dims == ("visitor", "draw", "arm")
    assert ds["conversion"].dtype == np.float32
    assert isinstance(ds["conversion"].data, np.ndarray)  # numpy stays in memory with "auto"
    np.testing.assert_array_equal(ds["value"].values, value.astype(np.float32))
    assert ds.attrs == {"pytyche_family": "hurdle", "pytyche_schema": 1}
    assert result.variants == tuple(arms)
    xr.testing.assert_equal(result.observed["device"].variable, obs["device"].variable)
    pt.posterior(ds)  # validates


def test_from_arrays_rechunks_dask_visitor_major_and_keeps_chains():
    obs, arms = observed_for()
    n = obs.sizes["visitor"]
    expected = da.random.default_rng(1).normal(size=(n, 2, 5, 3), chunks=(3, 1, 2, 3))
    result = pt.from_arrays("continuous", arms, observed=obs, chunks=4, expected=expected)
    data = result.dataset["expected"].data
    assert result.dataset["expected"].dims == ("visitor", "chain", "draw", "arm")
    assert data.chunks[1:] == ((2,), (5,), (3,))
    assert data.chunks[0][0] == 4
    np.testing.assert_allclose(data.compute(), expected.compute().astype(np.float32))
    auto = pt.from_arrays("continuous", arms, expected=expected)
    assert auto.dataset["expected"].data.chunks[1:] == ((2,), (5,), (3,))
    assert auto.observed is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "poisson"}, "family must be one of"),
        ({"value": np.ones((10, 2, 3))}, r"missing \['conversion'\]"),
        ({"conversion": np.ones((10, 2, 2))}, "2 entries on its last .arm. axis but 3 arms"),
        ({"conversion": np.ones((10, 3))}, "has 2 dims"),
        ({"conversion": np.full((10, 2, 3), 1.5)}, r"probabilities in \[0, 1\]"),
        ({"conversion": np.full((10, 2, 3), np.nan)}, "NaN or infinity"),
        ({"conversion": np.ones((9, 2, 3))}, "observed data has 10 visitors but"),
        ({"conversion": np.ones((10, 2, 3)), "extra": np.ones(3)}, r"unexpected \['extra'\]"),
    ],
)
def test_from_arrays_errors(kwargs, message):
    obs, arms = observed_for()
    kwargs = {"family": "binary", **kwargs}
    with pytest.raises(ValueError, match=message):
        pt.from_arrays(arms=arms, observed=obs, **kwargs)


def test_from_arrays_requires_variant_major_observed():
    obs, arms = observed_for()
    shuffled = obs.isel(visitor=[4, 0, 1, 2, 3, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match=r"variant-major.*row 1 is served 'control' after 'A'"):
        pt.from_arrays("binary", arms, observed=shuffled, conversion=np.ones((10, 2, 3)))
    with pytest.raises(ValueError, match=r"not arm names: \['B'\]"):
        pt.from_arrays("binary", arms[:2], observed=obs, conversion=np.ones((10, 2, 2)))


# --------------------------------------------------------------------------- ArviZ-style


def inference_group(n=10, chains=2, draws=6):
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(chains, draws, 3, n))  # ArviZ: sample dims first, any event order
    return xr.Dataset(
        {"p_convert": (("chain", "draw", "treatment", "obs"), p)},
        coords={"treatment": ["control", "A", "B"], "chain": [0, 1], "draw": np.arange(draws)},
    )


def test_from_inference_data_transposes_lazily_to_visitor_major():
    group = inference_group()
    obs, _ = observed_for()
    result = pt.from_inference_data(
        group,
        "binary",
        observed=obs,
        variables={"conversion": "p_convert"},
        visitor_dim="obs",
        arm_dim="treatment",
    )
    conversion = result.dataset["conversion"]
    assert conversion.dims == ("visitor", "chain", "draw", "arm")
    assert result.variants == ("control", "A", "B")
    assert result.n_samples == 12
    expected = np.transpose(group["p_convert"].values, (3, 0, 1, 2)).astype(np.float32)
    np.testing.assert_array_equal(conversion.values, expected)


def test_from_inference_data_accepts_datatree_and_dask_group():
    group = inference_group().chunk({"draw": 2, "obs": 5})
    tree = xr.DataTree.from_dict({"posterior": group})
    result = pt.from_inference_data(
        tree,
        "binary",
        variables={"conversion": "p_convert"},
        visitor_dim="obs",
        arm_dim="treatment",
    )
    data = result.dataset["conversion"].data
    assert isinstance(data, da.Array)
    assert data.chunks[1:] == ((2,), (6,), (3,))  # chain, draw and arm whole


def test_from_inference_data_errors():
    group = inference_group()
    with pytest.raises(ValueError, match="no variable 'conversion'"):
        pt.from_inference_data(group, "binary", visitor_dim="obs", arm_dim="treatment")
    with pytest.raises(ValueError, match=r"lacks \['visitor'\]"):
        pt.from_inference_data(
            group, "binary", variables={"conversion": "p_convert"}, arm_dim="treatment"
        )
    with pytest.raises(ValueError, match="do not match"):
        pt.from_inference_data(
            group,
            "binary",
            arms=["control", "B", "A"],
            variables={"conversion": "p_convert"},
            visitor_dim="obs",
            arm_dim="treatment",
        )
    with pytest.raises(TypeError, match="posterior"):
        pt.from_inference_data(object(), "binary")


def test_categorical_with_number_categories_becomes_text():
    tables = {
        "control": pd.DataFrame({"plan": pd.Categorical([1, None, 2]), "y": [0.0, 1.0, 0.0]}),
        "A": pd.DataFrame({"plan": pd.Categorical([2.5, 3.0]), "y": [1.0, 0.0]}),
    }
    plan = pt.observed_data(tables, outcome="y")["plan"].values
    assert pd.isna(plan[1])
    assert plan[[0, 2, 3, 4]].tolist() == ["1", "2", "2.5", "3.0"]
    assert all(isinstance(v, str) for v in plan[[0, 2, 3, 4]])


def test_non_string_column_names_are_used_as_text():
    tables = {
        "control": pd.DataFrame({0: [1.0, 2.0], "y": [0.0, 1.0]}),
        "A": pd.DataFrame({0: [3.0, 4.0], "y": [1.0, 0.0]}),
    }
    obs = pt.observed_data(tables, outcome="y")
    np.testing.assert_array_equal(obs["0"].values, [1.0, 2.0, 3.0, 4.0])
    clash = {**tables, "A": pd.DataFrame({0: [3.0], "0": [1.0], "y": [1.0]})}
    with pytest.raises(ValueError, match=r"arm 'A' has duplicate column names \['0'\]"):
        pt.observed_data(clash, outcome="y")


def test_duplicate_visitor_ids_within_one_arm():
    f = frames()
    f["control"]["visitor_id"] = ["c1", "c2", "c1"]
    f["A"]["visitor_id"] = ["a1", "a2"]
    with pytest.raises(ValueError, match="duplicate visitor id 'c1' in arm 'control'"):
        pt.observed_data(f, "spend")


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ("control", "single string"),
        (["control", 3], "arm names must be non-empty strings, got 3"),
        (["control", ""], "non-empty strings"),
        (["control"], "at least 2 arms"),
        (["control", "A", "A"], r"duplicate arm names \['A'\]"),
    ],
)
def test_arm_names_are_checked_alike_everywhere(arms, message):
    with pytest.raises(ValueError, match=message):
        pt.from_arrays("binary", arms, conversion=np.full((4, 2, 3), 0.5))
    with pytest.raises(ValueError, match=message):
        pt.simulate_experiment(10, arms=arms)
    if not isinstance(arms, str):
        tables = [(arm, pd.DataFrame({"y": [0.0]})) for arm in arms]
        with pytest.raises(ValueError, match=message):
            pt.observed_data(tables, outcome="y")


def test_from_arrays_transposes_a_data_array_by_dim_name():
    rng = np.random.default_rng(2)
    values = rng.uniform(size=(5, 6, 3))  # (draw, visitor, arm)
    draw_first = xr.DataArray(values, dims=("draw", "visitor", "arm"))
    result = pt.from_arrays("binary", ["control", "A", "B"], conversion=draw_first)
    np.testing.assert_array_equal(
        result.dataset["conversion"].values, values.transpose(1, 0, 2).astype(np.float32)
    )
    lazy = xr.DataArray(da.from_array(values, chunks=2), dims=("draw", "visitor", "arm"))
    data = pt.from_arrays("binary", ["control", "A", "B"], conversion=lazy).dataset["conversion"]
    assert isinstance(data.data, da.Array)
    np.testing.assert_array_equal(data.values, values.transpose(1, 0, 2).astype(np.float32))
    with pytest.raises(ValueError, match=r"\['sample'\] are not posterior dims"):
        pt.from_arrays(
            "binary",
            ["control", "A", "B"],
            conversion=xr.DataArray(values, dims=("sample", "visitor", "arm")),
        )
    labelled = draw_first.assign_coords(arm=["control", "B", "A"])
    with pytest.raises(ValueError, match=r"arm labels \['control', 'B', 'A'\]"):
        pt.from_arrays("binary", ["control", "A", "B"], conversion=labelled)


# --------------------------------------------------------------------------- ArviZ interop


def test_arviz_default_dims_take_arm_names_and_interop_page_runs():
    """ArviZ labels an unnamed dim 0, 1, 2: ``arms=`` names it (issue 8, friction)."""
    import re
    import warnings
    from pathlib import Path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x's once-a-day notice
        az = pytest.importorskip("arviz")
    p_arm = np.random.default_rng(1).uniform(size=(2, 5, 6, 3))
    idata = az.from_dict(posterior={"p_arm": p_arm})
    names = {"variables": {"conversion": "p_arm"}, "visitor_dim": "p_arm_dim_0"}
    result = pt.from_inference_data(
        idata, "binary", arms=["control", "A", "B"], arm_dim="p_arm_dim_1", **names
    )
    assert list(result.variants) == ["control", "A", "B"]
    np.testing.assert_allclose(
        result.dataset["conversion"].values,
        p_arm.transpose(2, 0, 1, 3).astype(np.float32),
    )
    with pytest.raises(ValueError, match=r"only ArviZ's default labels 0, 1, \.\.\.\); pass arms="):
        pt.from_inference_data(idata, "binary", arm_dim="p_arm_dim_1", **names)
    labelled = idata.posterior.assign_coords(p_arm_dim_1=["c", "x", "y"])
    with pytest.raises(ValueError, match=r"do not match the group's 'p_arm_dim_1' coordinate"):
        pt.from_inference_data(
            labelled, "binary", arms=["control", "A", "B"], arm_dim="p_arm_dim_1", **names
        )
    # docs/interop.md: its python blocks run as written, in order.
    page = (Path(__file__).parent.parent / "docs" / "interop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) == 2
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"interop.md block {index}", "exec"), namespace)
    assert str(namespace["result"]) == (
        "<BinaryBCFResult (visitor: 120, chain: 2, draw: 50, arm: 3) arms=['control', 'A', 'B']>"
    )


# --------------------------------------------------------------------------- ordered text

HISTORY = ["1) $0 - $100", "2) $100 - $200", "3) $200 - $350", "10) $1,000 +"]


def history_frames(control_order=HISTORY, a_ordered=True):
    return {
        "control": pd.DataFrame(
            {
                "history_segment": pd.Categorical(
                    ["2) $100 - $200", None, "10) $1,000 +"], categories=control_order, ordered=True
                ),
                "spend": [0.0, 1.0, 2.0],
            }
        ),
        "A": pd.DataFrame(
            {
                "history_segment": pd.Categorical(
                    ["1) $0 - $100"], categories=HISTORY, ordered=a_ordered
                ),
                "spend": [3.0],
            }
        ),
    }


@pytest.mark.parametrize("store", ["zarr", "nc"])
def test_ordered_categorical_keeps_its_order_through_the_stores(tmp_path, store):
    obs = pt.observed_data(history_frames(), outcome="spend")
    column = obs["history_segment"]
    assert column.attrs == {"pytyche_ordered_levels": HISTORY}
    assert pt.segments.ordered_levels(column.variable) == tuple(HISTORY)
    values = column.values
    assert values[[0, 2, 3]].tolist() == ["2) $100 - $200", "10) $1,000 +", "1) $0 - $100"]
    assert pd.isna(values[1])
    # Unordered categoricals and plain text carry no order.
    assert frames_observed_attrs() == {}
    result = pt.from_arrays("continuous", ["control", "A"], obs, expected=np.zeros((4, 3, 2)))
    path = tmp_path / f"posterior.{store}"
    (pt.to_zarr if store == "zarr" else pt.to_netcdf)(result, path)
    reopened = pt.open_posterior(path).observed["history_segment"]
    assert pt.segments.ordered_levels(reopened.variable) == tuple(HISTORY)


def frames_observed_attrs():
    obs = pt.observed_data(frames(), outcome="spend")
    return {**obs["plan"].attrs, **obs["device"].attrs}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"a_ordered": False}, r"ordered categorical in arm 'control' but not in arm 'A'"),
        ({"control_order": HISTORY[::-1]}, r"ordered categories .* in arm 'A' but"),
    ],
)
def test_ordered_categorical_must_agree_across_arms(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pt.observed_data(history_frames(**kwargs), outcome="spend")


@pytest.mark.parametrize("raw", [[], ["a", "a"], [1, 2], "not-a-list-but-ok", {"a": 1}])
def test_ordered_levels_attribute_is_checked(raw):
    attrs = {"pytyche_ordered_levels": raw}
    variable = xr.Variable("visitor", np.array(["a"], dtype=object), attrs)
    if raw == "not-a-list-but-ok":
        assert pt.segments.ordered_levels(variable) == ("not-a-list-but-ok",)
        return
    with pytest.raises(ValueError, match=r"covariate 'covariate' has pytyche_ordered_levels="):
        pt.segments.ordered_levels(variable)
