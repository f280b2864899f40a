"""The ``pytyche`` command: every argument checked before any work (issue 8, items 8 and 15)."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pytyche as pt

from helpers import random_dataset

cli = importlib.import_module("pytyche.cli")
# A patch takes effect in the module whose functions look the name up: the commands on a
# posterior (and their work: fit, simulate_experiment, ...) live in pytyche.cli.posterior, what
# every command shares (CONNECT_TIMEOUT_S, scheduler) in pytyche.cli.common.
posterior = importlib.import_module("pytyche.cli.posterior")
common = importlib.import_module("pytyche.cli.common")


def forbid(monkeypatch, names, message):
    """Make each work function of ``names`` raise AssertionError(message) when called."""

    def forbidden(*args, **kwargs):
        raise AssertionError(message)

    for name in names:
        monkeypatch.setattr(posterior, name, forbidden)


@pytest.fixture
def no_work(monkeypatch):
    """Fail if the demo starts any work (simulating, fitting)."""
    forbid(
        monkeypatch,
        ("simulate_experiment", "fit"),
        "the demo started working before checking its arguments",
    )


def run(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    captured = capsys.readouterr()
    return caught.value.code, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--visitors", "0"], "--visitors: must be between 300 and 2,000,000, got 0"),
        (["--visitors", str(10**12)], "--visitors: must be between"),
        (["--visitors", "many"], "--visitors: expected an integer, got 'many'"),
        (["--draws", "0"], "--draws: must be between 1 and 10,000"),
        (["--epsilon", "2"], r"--epsilon: epsilon must be in [0, 1], got 2.0"),
        (["--epsilon", "nan"], "--epsilon: epsilon must be in [0, 1], got nan"),
        (["--epsilon", "lots"], "--epsilon: expected a number in [0, 1], got 'lots'"),
        (["--seed", "-1"], "--seed: must be between 0 and"),
        (["--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_before_any_work(argv, message, capsys, no_work):
    code, err = run(["demo", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_no_command_is_one_line_too(capsys):
    code, err = run([], capsys)
    assert code == 2 and err.count("\n") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_unwritable_store_is_refused_before_any_work(capsys, no_work, tmp_path):
    code, err = run(["demo", "--store", "/proc/posterior.zarr"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--store: cannot write /proc/posterior.zarr: the directory /proc is not writable" in err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = run(["demo", "--store", str(a_file / "posterior.zarr")], capsys)
    assert code == 2 and "is not a directory" in err


# Item 8: `pytyche demo --store DIR` replaces only a pytyche store (or an empty directory).
def test_the_store_replaces_only_a_posterior(capsys, no_work, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    code, err = run(["demo", "--store", str(thesis)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "is a directory that is not a pytyche posterior" in err
    assert (thesis / "chapter1.tex").read_text() == "years of work"
    text = tmp_path / "notes.txt"
    text.write_text("keep me")
    code, err = run(["demo", "--store", str(text)], capsys)
    assert code == 2 and "is a file that is not a pytyche posterior" in err
    assert text.read_text() == "keep me"


def test_demo_end_to_end_into_a_store_it_may_replace(capsys, tmp_path):
    store = pt.to_zarr(pt.posterior(random_dataset("hurdle", dtype=np.float32)), tmp_path / "s")
    assert cli.main(["demo", "--visitors", "300", "--draws", "8", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"saved atomically to {store}" in out and "next round's traffic split" in out
    reopened = pt.open_posterior(store)
    assert reopened.dataset.sizes["visitor"] == 300 and reopened.dataset.sizes["draw"] == 8


def test_a_failure_during_the_work_is_one_line_exit_1(capsys, monkeypatch, tmp_path):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(posterior, "simulate_experiment", full_disk)
    code, err = run(["demo", "--store", str(tmp_path / "s.zarr")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "No space left on device" in err


# -- every command: --help with an example, end to end at a tiny size, bad input -----------

COMMANDS = ("demo", "simulate", "fit", "tree", "allocate", "summary")
SEGMENTS = [
    {"id": 0, "rule": "device == 'mobile'"},
    {"id": 1, "rule": "device != 'mobile' and age > 40"},
    {"id": 2, "rule": "everyone"},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small chained posterior store, written as a user's would be."""
    result = pt.example_posterior(n_visitors=600, n_draws=30, n_chains=2, chunks=200, seed=4)
    return pt.to_zarr(result, tmp_path_factory.mktemp("cli") / "posterior.zarr")


@pytest.fixture
def segments_file(tmp_path):
    path = tmp_path / "segments.json"
    path.write_text(json.dumps(SEGMENTS))
    return path


def one_line_error(code, err, expected_code=2):
    assert code == expected_code, err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("pytyche")
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main([command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"pytyche {command}" in out


def test_simulate_writes_a_lazy_chunked_store(tmp_path, capsys):
    out = tmp_path / "sim.zarr"
    argv = ["simulate", "--visitors", "500", "--draws", "6", "--arms", "4", "--chains", "2"]
    assert cli.main([*argv, "--chunk", "200", "--family", "binary", "--out", str(out)]) == 0
    assert (
        "wrote a binary posterior of 500 visitors × 12 samples × 4 arms" in capsys.readouterr().out
    )
    result = pt.open_posterior(out)
    assert result.family == "binary" and list(result.variants) == ["control", "A", "B", "C"]
    assert dict(result.dataset["conversion"].sizes) == {
        "visitor": 500,
        "chain": 2,
        "draw": 6,
        "arm": 4,
    }
    expected = pt.example_posterior(500, 6, ["control", "A", "B", "C"], "binary", n_chains=2)
    np.testing.assert_array_equal(
        result.dataset["conversion"].values, expected.dataset["conversion"].values
    )
    # A second write to the same path is refused, unless it replaces a posterior on purpose.
    code, err = run([*argv, "--out", str(out)], capsys)
    assert "exists; pass overwrite=True to replace it (pass --overwrite)" in one_line_error(
        code, err
    )
    assert cli.main([*argv, "--out", str(out), "--overwrite"]) == 0


def test_tree_writes_segments_that_from_dict_reads(store, tmp_path, capsys):
    out = tmp_path / "tree.json"
    argv = ["tree", str(store), "--out", str(out), "--bootstrap", "0", "--max-depth", "1"]
    assert cli.main(argv) == 0
    assert f"wrote 2 segment(s) to {out}" in capsys.readouterr().out
    data = json.loads(out.read_text())
    tree = pt.PolicyTreeResult.from_dict(data)
    assert len(tree.segments) == 2 and tree.max_depth == 1
    # The list of its segments (with their descriptive fields) is a segments file too.
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(data["segments"]))
    assert cli.main(["allocate", str(store), "--segments", str(listed), "--epsilon", "0"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["allocation"] == allocation_of(store, tree.segments, 0.0)


def test_tree_passes_min_stability_and_records_it(store, tmp_path):
    argv = ["tree", str(store), "--bootstrap", "2", "--max-depth", "1"]
    for given, expected in ((["--min-stability", "0.25"], 0.25), ([], 0.7)):
        out = tmp_path / f"tree {expected}.json"
        assert cli.main([*argv, "--out", str(out), *given]) == 0
        assert json.loads(out.read_text())["min_stability"] == expected


def allocation_of(store, segments, epsilon):
    return {
        str(k): v
        for k, v in pt.thompson_allocation(pt.open_posterior(store), segments, epsilon).items()
    }


def test_allocate_prints_the_allocation_and_its_errors(store, segments_file, capsys):
    assert cli.main(["allocate", str(store), "--segments", str(segments_file)]) == 0
    document = json.loads(capsys.readouterr().out)
    segments = {s["id"]: s["rule"] for s in SEGMENTS}
    assert document["allocation"] == allocation_of(store, segments, 0.02)  # to the last digit
    assert document["epsilon"] == 0.02 and document["n_samples"] == 60
    assert document["n_chains"] == 2 and "ESS" in document["mcse_method"]
    summary = pt.segment_summary(pt.open_posterior(store), segments).compute()
    for row, segment in zip(document["segments"], SEGMENTS, strict=True):
        assert row["id"] == segment["id"] and row["rule"] == str(
            pt.SegmentRule.parse(segment["rule"])
        )
        expected = summary.sel(segment=segment["id"])
        assert list(row["prob_best_mcse"].values()) == expected["prob_best_mcse"].values.tolist()
        assert list(row["prob_best"].values()) == expected["prob_best"].values.tolist()
        assert row["members"] == int(expected["members"])


def test_allocate_reads_the_tree_output_and_writes_atomically(store, tmp_path, capsys):
    tree_json = tmp_path / "tree.json"
    assert cli.main(["tree", str(store), "--out", str(tree_json), "--bootstrap", "0"]) == 0
    out = tmp_path / "allocation.json"
    out.write_text("an older allocation")
    argv = ["allocate", str(store), "--segments", str(tree_json), "--epsilon", "0.1"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    tree = pt.PolicyTreeResult.from_dict(json.loads(tree_json.read_text()))
    assert json.loads(out.read_text())["allocation"] == allocation_of(store, tree.segments, 0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allocation.json", "tree.json"]


def test_allocate_on_a_distributed_scheduler(store, segments_file, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "allocation.json"
    with distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        argv = ["allocate", str(store), "--segments", str(segments_file), "--out", str(out)]
        before = cluster.scheduler.transition_counter
        assert cli.main([*argv, "--scheduler", cluster.scheduler_address]) == 0
        assert cluster.scheduler.transition_counter > before  # the work ran on the cluster
    segments = {s["id"]: s["rule"] for s in SEGMENTS}
    assert json.loads(out.read_text())["allocation"] == allocation_of(store, segments, 0.02)


def test_summary_prints_errors_diagnostics_and_decisions(store, segments_file, capsys):
    assert cli.main(["summary", str(store), "--segments", str(segments_file), "--ci", "0.9"]) == 0
    captured = capsys.readouterr()
    assert "60 posterior samples in 2 chains" in captured.out
    for column in ("contrast [90%]", "P(best) ± MCSE", "P(>0) ± MCSE", "R-hat", "ESS"):
        assert column in captured.out
    assert "Decisions per segment and treatment" in captured.out
    summary = pt.segment_summary(pt.open_posterior(store), {0: "device == 'mobile'"}).compute()
    best = summary.sel(segment=0, arm="A")
    assert f"{float(best['prob_best']):.3f} ± {float(best['prob_best_mcse']):.3f}" in captured.out
    # 2 chains of 30 draws: too few effective samples, said on stderr as a warning line.
    assert captured.err.startswith("pytyche: warning: segment_summary: ")
    assert "bulk ESS" in captured.err and captured.err.count("\n") == 1
    assert "min practical effect 0.000" not in captured.out  # the default: 2% of control


def test_summary_takes_the_min_practical_effect(store, segments_file, capsys):
    argv = ["summary", str(store), "--segments", str(segments_file)]
    assert cli.main([*argv, "--min-practical-effect", "0.25"]) == 0
    assert "min practical effect 0.25)" in capsys.readouterr().out
    code, err = run([*argv, "--min-practical-effect", "-1"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--min-practical-effect: min_practical_effect must be a finite number >= 0" in err


@pytest.fixture
def table(tmp_path):
    observed, _ = pt.simulate_experiment(400, family="binary", seed=2)
    frame = observed.to_dataframe().reset_index(drop=True)
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # arms interleaved
    path = tmp_path / "visitors.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_fit_from_a_csv_with_a_chosen_control(table, tmp_path, capsys):
    path, frame = table
    out = tmp_path / "fitted.zarr"
    arms = list(pd.unique(frame["variant"]))
    control = "control" if arms[0] != "control" else arms[1]
    argv = ["fit", str(path), "--outcome", "outcome", "--arm-column", "variant", "--out", str(out)]
    small = ["--draws", "5", "--trees-mu", "5", "--trees-tau", "3", "--control", control]
    assert cli.main([*argv, *small]) == 0
    assert f"control {control}" in capsys.readouterr().out
    result = pt.open_posterior(out)
    assert result.family == "binary"
    assert result.variants[0] == control and sorted(result.variants) == sorted(arms)
    assert result.dataset.sizes["visitor"] == 400 and result.dataset.sizes["draw"] == 5
    variant = result.observed["variant"].values
    assert variant[0] == control  # variant-major rows, control first
    np.testing.assert_array_equal(
        np.sort(result.observed["outcome"].values), np.sort(frame["outcome"].values)
    )


def test_demo_out_writes_the_posterior_segments_allocation_and_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--visitors", "300", "--draws", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Monte Carlo error of a weight at most" in printed and f"6. wrote {out}" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["allocation.json", "allocation.png", "posterior.zarr", "segments.json"]
    posterior = pt.open_posterior(out / "posterior.zarr")
    tree = pt.PolicyTreeResult.from_dict(json.loads((out / "segments.json").read_text()))
    document = json.loads((out / "allocation.json").read_text())
    assert document["allocation"] == {
        str(k): v for k, v in pt.thompson_allocation(posterior, tree.segments).items()
    }
    assert (out / "allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad input: exit 2, one line on stderr, no work done ------------------------------------


WORK = ("segment_summary", "fit", "fit_policy_tree", "to_zarr", "example_posterior")


@pytest.fixture
def forbid_work(monkeypatch):
    forbid(monkeypatch, WORK, "work started before the input was checked")


def simulate_argv(tmp_path):
    return [*"simulate --visitors 10 --draws 2 --arms 2 --out".split(), str(tmp_path / "s.zarr")]


@pytest.mark.parametrize(
    ("name", "make_argv"),
    [
        ("simulate_experiment", lambda s, t, seg, tab: ["demo", "--visitors", "300"]),
        (
            "fit",
            lambda s, t, seg, tab: [
                "fit",
                tab,
                "--outcome",
                "outcome",
                "--arm-column",
                "variant",
                "--out",
                str(t / "p.zarr"),
            ],
        ),
        ("segment_summary", lambda s, t, seg, tab: ["allocate", str(s), "--segments", seg]),
        (
            "fit_policy_tree",
            lambda s, t, seg, tab: ["tree", str(s), "--out", str(t / "tree.json")],
        ),
        ("example_posterior", lambda s, t, seg, tab: simulate_argv(t)),
        ("to_zarr", lambda s, t, seg, tab: simulate_argv(t)),
    ],
)
def test_the_forbidden_work_is_what_the_commands_call(
    name, make_argv, store, segments_file, table, tmp_path, monkeypatch
):
    # no_work and forbid_work patch these names: each patch must reach the command's call, or
    # the bad-input tests would pass without proving that no work started.
    assert name in {"simulate_experiment", *WORK}
    forbid(monkeypatch, [name], f"{name} was called")
    argv = make_argv(store, tmp_path, str(segments_file), str(table[0]))
    with pytest.raises(AssertionError, match=f"{name} was called"):
        cli.main(argv)


def test_the_connect_timeout_is_read_where_it_is_patched(monkeypatch):
    seen = {}

    class Client:
        def __init__(self, address, timeout, set_as_default):
            seen["timeout"] = timeout

        def close(self):
            seen["closed"] = True

    monkeypatch.setitem(sys.modules, "distributed", types.SimpleNamespace(Client=Client))
    monkeypatch.setattr(common, "CONNECT_TIMEOUT_S", 1)
    with common.scheduler("tcp://127.0.0.1:1") as client:
        assert isinstance(client, Client)
    assert seen == {"timeout": 1, "closed": True}


def bad_segments(tmp_path, content) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def allocate_one_rule(rule: str):
    """The argv of `pytyche allocate` with one segment of this rule."""
    return lambda s, t, seg: [
        "allocate",
        str(s),
        "--segments",
        bad_segments(t, [{"id": 0, "rule": rule}]),
    ]


@pytest.mark.parametrize(
    ("make_argv", "message"),
    [
        (
            lambda s, t, seg: ["allocate", str(t / "nothing.zarr"), "--segments", seg],
            "no posterior at",
        ),
        (
            lambda s, t, seg: ["allocate", seg, "--segments", seg],
            "is neither a Zarr store nor a netCDF file",
        ),
        (
            lambda s, t, seg: ["allocate", str(s), "--segments", str(t / "none.json")],
            "none.json does not exist",
        ),
        (
            lambda s, t, seg: ["allocate", str(s), "--segments", bad_segments(t, "{not json")],
            "is not JSON",
        ),
        (allocate_one_rule("device ==="), "segment 0:"),
        (allocate_one_rule("colour == 'red'"), "colour"),
        (allocate_one_rule("age > 500"), "segment 0 (age > 500) matches zero visitors"),
        (allocate_one_rule("device > 3"), "--segments:"),
        (
            lambda s, t, seg: ["allocate", str(s), "--segments", bad_segments(t, [{"rule": "x"}])],
            'item 0 must be {"id": <int>, "rule": "<rule>"}',
        ),
        (
            lambda s, t, seg: [
                "allocate",
                str(s),
                "--segments",
                bad_segments(t, [SEGMENTS[0]] * 2),
            ],
            "--segments:",
        ),
        (
            lambda s, t, seg: ["allocate", str(s), "--segments", seg, "--epsilon", "1.5"],
            "epsilon must be in [0, 1]",
        ),
        (
            lambda s, t, seg: ["allocate", str(s), "--segments", seg, "--out", str(t)],
            "is a directory",
        ),
        (
            lambda s, t, seg: [
                "allocate",
                str(s),
                "--segments",
                seg,
                "--scheduler",
                "tcp://127.0.0.1:1",
            ],
            "--scheduler: cannot connect to",
        ),
        (
            lambda s, t, seg: ["summary", str(s), "--segments", bad_segments(t, {"a": 1})],
            "must hold a policy tree",
        ),
        (
            lambda s, t, seg: ["summary", str(s), "--segments", seg, "--ci", "1"],
            "ci must be in (0, 1)",
        ),
        (lambda s, t, seg: ["summary", str(t / "missing"), "--segments", seg], "no posterior at"),
        (
            lambda s, t, seg: ["tree", str(s), "--out", str(t / "no" / "tree.json")],
            "is not an existing directory",
        ),
        (
            lambda s, t, seg: ["tree", str(s), "--out", "t.json", "--max-depth", "9"],
            "--max-depth: must be between 0 and 6",
        ),
        (
            lambda s, t, seg: ["tree", str(s), "--out", "t.json", "--min-stability", "2"],
            "--min-stability: min_stability must be in [0, 1], got 2.0",
        ),
        (lambda s, t, seg: ["tree", seg, "--out", str(t / "t.json")], "POSTERIOR:"),
        (
            lambda s, t, seg: [
                "simulate",
                "--visitors",
                "10",
                "--draws",
                "5",
                "--arms",
                "1",
                "--out",
                "x",
            ],
            "--arms: must be between 2",
        ),
        (
            lambda s, t, seg: [
                "simulate",
                "--visitors",
                "10",
                "--draws",
                "5",
                "--arms",
                "2",
                "--out",
                seg,
                "--overwrite",
            ],
            "is a file that is not a pytyche posterior",
        ),
        (
            lambda s, t, seg: ["simulate", "--visitors", "10", "--draws", "5", "--arms", "2"],
            "required: --out",
        ),
        (
            lambda s, t, seg: [
                "fit",
                str(t / "none.csv"),
                "--outcome",
                "y",
                "--arm-column",
                "a",
                "--out",
                "p.zarr",
            ],
            "none.csv does not exist",
        ),
        (
            lambda s, t, seg: [
                "fit",
                seg,
                "--outcome",
                "y",
                "--arm-column",
                "a",
                "--out",
                "p.zarr",
            ],
            "must be a .csv or .parquet file",
        ),
        (
            lambda s, t, seg: ["demo", "--store", str(t / "a.zarr"), "--out", str(t / "d")],
            "not allowed with argument",
        ),
        (lambda s, t, seg: ["demo", "--out", str(t)], "exists and is not an empty directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_work(
    make_argv, message, store, segments_file, tmp_path, capsys, forbid_work, monkeypatch
):
    monkeypatch.setattr(common, "CONNECT_TIMEOUT_S", 1)
    argv = make_argv(store, tmp_path, str(segments_file))
    (tmp_path / "keep.txt").write_text("x")  # tmp_path is not empty
    code, err = run(argv, capsys)
    assert message in one_line_error(code, err)


def csv_with(tmp_path, frame) -> str:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--outcome", "revenue", "--arm-column", "variant"], "--outcome: "),
        (["--outcome", "outcome", "--arm-column", "arm"], "--arm-column: "),
        (
            ["--outcome", "outcome", "--arm-column", "variant", "--control", "zzz"],
            "--control: no arm 'zzz'",
        ),
        (["--outcome", "outcome", "--arm-column", "outcome"], "must be different columns"),
    ],
)
def test_fit_bad_columns_exit_2_before_fitting(
    options, message, table, tmp_path, capsys, forbid_work
):
    path, _ = table
    code, err = run(["fit", str(path), *options, "--out", str(tmp_path / "p.zarr")], capsys)
    assert message in one_line_error(code, err)


def test_a_zarr_store_that_is_not_a_posterior_is_bad_input(tmp_path, segments_file, capsys):
    import xarray as xr

    other = tmp_path / "other.zarr"
    xr.Dataset({"x": ("i", np.arange(3))}).to_zarr(other, consolidated=False)
    for command in ("allocate", "summary"):
        code, err = run([command, str(other), "--segments", str(segments_file)], capsys)
        assert "is not a pytyche posterior" in one_line_error(code, err)
    code, err = run(["tree", str(other), "--out", str(tmp_path / "t.json")], capsys)
    assert "is not a pytyche posterior" in one_line_error(code, err)


def test_fit_one_arm_or_a_bad_outcome_is_bad_input(tmp_path, capsys, forbid_work):
    frame = pd.DataFrame({"variant": ["a"] * 4, "y": [0, 1, 0, 1], "age": [1, 2, 3, 4]})
    argv = ["fit", csv_with(tmp_path, frame), "--outcome", "y", "--arm-column", "variant"]
    code, err = run([*argv, "--out", str(tmp_path / "p.zarr")], capsys)
    assert "holds one arm only" in one_line_error(code, err)
    frame = pd.DataFrame({"variant": ["a", "b"] * 2, "y": ["x", "y"] * 2, "age": [1, 2, 3, 4]})
    argv = ["fit", csv_with(tmp_path, frame), "--outcome", "y", "--arm-column", "variant"]
    code, err = run([*argv, "--out", str(tmp_path / "p.zarr")], capsys)
    assert "DATA: " in one_line_error(code, err)


def test_parquet_without_its_engine_is_bad_input(tmp_path, capsys, monkeypatch, forbid_work):
    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    data = tmp_path / "visitors.parquet"
    data.write_bytes(b"PAR1")
    argv = ["fit", str(data), "--outcome", "y", "--arm-column", "a", "--out", str(tmp_path / "p")]
    code, err = run(argv, capsys)
    assert "reading Parquet needs pyarrow" in one_line_error(code, err)


def test_demo_out_without_matplotlib_is_bad_input(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    code, err = run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert "pip install 'pytyche[plot]'" in one_line_error(code, err)
    assert not (tmp_path / "demo").exists()


def test_a_corrupt_chunk_during_allocate_is_exit_1(store, segments_file, tmp_path, capsys):
    import shutil

    broken = Path(shutil.copytree(store, tmp_path / "broken.zarr"))
    chunk = next(
        p for p in (broken / "conversion").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[:-8] + b"garbage!")
    code, err = run(["allocate", str(broken), "--segments", str(segments_file)], capsys)
    assert "PosteriorReadError" in one_line_error(code, err, expected_code=1)


def test_allocate_reads_netcdf_and_draws_a_progress_bar_on_a_terminal(
    store, segments_file, tmp_path, capsys, monkeypatch
):
    # The fixture's posterior, built in memory (the same draws whatever the chunking).
    result = pt.example_posterior(n_visitors=600, n_draws=30, n_chains=2, seed=4)
    netcdf = pt.to_netcdf(result, tmp_path / "posterior.nc")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["allocate", str(netcdf), "--segments", str(segments_file)]) == 0
    captured = capsys.readouterr()
    segments = {s["id"]: s["rule"] for s in SEGMENTS}
    assert json.loads(captured.out)["allocation"] == allocation_of(store, segments, 0.02)
    assert "100% Completed" in captured.err  # dask's ProgressBar, on stderr only


def test_distributed_progress_goes_to_stderr(store, segments_file, capsys, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        argv = ["allocate", str(store), "--segments", str(segments_file)]
        assert cli.main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["epsilon"] == 0.02  # stdout stays pure JSON
    assert "100% Completed" in captured.err
