"""The ``pytyche`` command: every argument checked before any work (issue 8, items 8 and 15)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import pytyche as pt

from helpers import random_dataset

cli = importlib.import_module("pytyche.cli")


@pytest.fixture
def no_work(monkeypatch):
    """Fail if the demo starts any work (simulating, fitting)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the demo started working before checking its arguments")

    monkeypatch.setattr(cli, "simulate_experiment", forbidden)
    monkeypatch.setattr(cli, "fit", forbidden)


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

    monkeypatch.setattr(cli, "simulate_experiment", full_disk)
    code, err = run(["demo", "--store", str(tmp_path / "s.zarr")], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "No space left on device" in err
