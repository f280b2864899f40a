"""Persistence: appending saves, many writers and readers, refusal to clobber, resume."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pytyche as pt
from pytyche.sequential import (
    DamagedStoreError,
    StaleExperimentError,
    logged_observed,
    open_experiment,
    save_experiment,
    sequential_experiment,
)
from pytyche.sequential import store as store_module

cli = importlib.import_module("pytyche.cli")
cli_experiment = importlib.import_module("pytyche.cli.experiment")

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
        ["control", "A", "B"],
        schedule=600,
        min_visitors_per_arm=50,
        fit_options=FIT,
        seed=9,
        name="resume",
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
    exp = sequential_experiment(["control", "A"], schedule=50, seed=2, name="replace")
    target = tmp_path / "exp"
    exp.to_zarr(target)
    assert open_experiment(target).round == 0
    exp.advance()  # nothing recorded: a burn-in round, no fit
    exp.to_zarr(target)  # replacing an experiment store is fine
    # No temporary left behind; the writers' lock file stays beside the store.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.lock", "exp"]
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


# --------------------------------------------------------------------------- many writers


def small_experiment():
    return sequential_experiment(["control", "A"], schedule=50, seed=3, name="small")


def assign(exp, first, n):
    """Assign visitors v<first>..v<first + n - 1> with the current plan; the assigned table."""
    ids = np.arange(first, first + n)
    frame = pd.DataFrame(
        {
            "visitor_id": [f"v{i}" for i in ids],
            "device": np.where(ids % 2 == 0, "mobile", "desktop").astype(object),
            "age": ids.astype(float),
        }
    )
    return exp.plan().assign(frame)


def record(exp, first, n):
    """Assign and record n visitors (outcome = their number)."""
    out = assign(exp, first, n)
    out["outcome"] = np.arange(first, first + n, dtype=float)
    exp.record(logged_observed(out))


def marker(path):
    return json.loads((Path(path) / store_module.MARKER).read_text())


def parts(path):
    """The table parts in a store, each with the SHA-256 of its files."""
    found = {}
    for part in sorted(Path(path).glob("*.zarr")):
        digest = hashlib.sha256()
        for f in sorted(part.rglob("*")):
            if f.is_file():
                digest.update(f.read_bytes())
        found[part.name] = digest.hexdigest()
    return found


def same_experiment(a, b):
    assert a.plans == b.plans and a.config == b.config
    for x, y in zip(a.plans, b.plans, strict=True):
        pd.testing.assert_frame_equal(x.assigned, y.assigned)
    if a.recorded() is None:
        assert b.recorded() is None
    else:
        xr.testing.assert_identical(a.recorded(), b.recorded())


def test_a_stale_notebook_save_is_refused_and_loses_nothing(tmp_path):
    path = tmp_path / "exp"
    small_experiment().to_zarr(path)
    notebook = open_experiment(path)  # opened in a notebook, kept in memory
    command = open_experiment(path)  # `pytyche record` meanwhile: open, record, save
    record(command, 0, 10)
    save_experiment(command, path)
    assert marker(path)["version"] == 2 and command.store_version == (path.resolve(), 2)

    record(notebook, 100, 8)
    before = parts(path)
    with pytest.raises(StaleExperimentError, match=r"version 2.*version 1 of") as caught:
        notebook.to_zarr(path)
    assert "open the store again with open_experiment and redo the change" in str(
        caught.value
    ).replace("Open", "open")
    assert isinstance(caught.value, ValueError)
    assert parts(path) == before and marker(path)["version"] == 2
    same_experiment(open_experiment(path), command)  # the command's batch is kept

    # The fix: open again, redo the change, save.
    again = open_experiment(path)
    record(again, 100, 8)
    again.to_zarr(path)
    assert open_experiment(path).recorded().sizes["visitor"] == 18

    # Another experiment over the store: refused unless overwrite=True.
    other = sequential_experiment(["control", "A", "B"], schedule=50, seed=3, name="other")
    with pytest.raises(FileExistsError, match=r"holds another experiment.*overwrite=True"):
        other.to_zarr(path)
    assert open_experiment(path).recorded().sizes["visitor"] == 18
    # The same experiment (its settings, its id) rebuilt afresh has never seen the store: stale.
    rebuilt = pt.SequentialExperiment(open_experiment(path).config)
    with pytest.raises(StaleExperimentError, match="never read from or saved to a store"):
        rebuilt.to_zarr(path)
    other.to_zarr(path, overwrite=True)
    assert open_experiment(path).arms == ("control", "A", "B")
    small_experiment().to_zarr(tmp_path / "new")  # a new experiment at a new path is fine


def test_saving_through_a_symlink_updates_the_store_it_points_at(tmp_path):
    real = tmp_path / "data" / "exp"
    small_experiment().to_zarr(real)
    link = tmp_path / "exp-link"
    link.symlink_to(real, target_is_directory=True)

    exp = open_experiment(link)
    record(exp, 0, 6)
    assert exp.to_zarr(link) == link
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert open_experiment(real).recorded().sizes["visitor"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "exp-link"]
    # Saving by the real path next: the same store, the same version line.
    record(exp, 6, 8)
    exp.to_zarr(real)
    assert open_experiment(link).recorded().sizes["visitor"] == 14 and link.is_symlink()


def test_a_reader_during_saves_never_fails(tmp_path):
    path = tmp_path / "exp"
    small = small_experiment()
    record(small, 0, 10)
    small.to_zarr(path)
    big = open_experiment(path)
    record(big, 10, 10)
    states = {10: small, 20: big}
    stop = threading.Event()
    saves = []

    def writer():
        # Every save replaces every table (overwrite=True): parts are written and deleted.
        while not stop.is_set():
            for exp in (big, small):
                exp.to_zarr(path, overwrite=True)
                saves.append(exp)

    thread = threading.Thread(target=writer)
    thread.start()
    failures, seen = [], set()
    try:
        for _ in range(80):
            try:
                got = open_experiment(path)
            except Exception as error:
                failures.append(repr(error))
                continue
            rows = got.recorded().sizes["visitor"]
            same_experiment(got, states[rows])
            seen.add(rows)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert seen == {10, 20} and len(saves) >= 10


def test_a_reader_whose_parts_were_removed_reads_the_newest_version_once(tmp_path, monkeypatch):
    path = tmp_path / "exp"
    exp = small_experiment()
    record(exp, 0, 10)
    exp.to_zarr(path)
    old = marker(path)  # what a slow reader read before two saves
    record(exp, 10, 8)
    exp.to_zarr(path, overwrite=True)  # every table rewritten: the old parts unlisted
    exp.to_zarr(path)  # ... and removed
    assert not set(parts(path)) & {p["name"] for p in old["tables"][0]["assigned"]["parts"]}
    real = store_module._read_marker
    calls = []

    def slow_reader(source):
        calls.append(source)
        return old if len(calls) == 1 else real(source)

    monkeypatch.setattr(store_module, "_read_marker", slow_reader)
    same_experiment(open_experiment(path), exp)
    assert len(calls) == 2
    # The newest marker itself lists a missing part: damaged, after one retry.
    calls.clear()
    monkeypatch.setattr(store_module, "_read_marker", lambda source: old)
    with pytest.raises(DamagedStoreError, match=r"assigned-0-\w+\.zarr is listed .* missing"):
        open_experiment(path)


def test_a_held_lock_times_out_naming_the_lock_and_its_holder(tmp_path, capsys):
    path = tmp_path / "exp"
    exp = small_experiment()
    exp.to_zarr(path)
    lock_file = tmp_path / ".exp.lock"
    with open(lock_file, "r+") as holder:  # another process's lock (a second description)
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        holder.seek(0)
        holder.truncate()
        holder.write("process 4242 (pytyche advance exp)\n")
        holder.flush()
        start = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            save_experiment(exp, path, lock_timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 5
        message = str(caught.value)
        assert str(lock_file) in message and "waited 0.3 s" in message
        assert "process 4242 (pytyche advance exp)" in message and "remove nothing" in message

        # The CLI: one line, exit 1, the same facts.
        pd.DataFrame({"visitor_id": ["a"], "device": ["mobile"], "age": [3.0]}).to_csv(
            tmp_path / "visitors.csv", index=False
        )
        cli_experiment.LOCK_TIMEOUT = 0.2
        try:
            code = cli.main(
                [
                    "assign",
                    str(path),
                    str(tmp_path / "visitors.csv"),
                    "--out",
                    str(tmp_path / "a.csv"),
                ]
            )
        except SystemExit as stop:
            code = stop.code
        finally:
            cli_experiment.LOCK_TIMEOUT = 30.0
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "process 4242" in err and ".exp.lock" in err
    # Released: the lock is re-entrant within a thread (a read-modify-write around a save).
    with store_module.locked(path, timeout=0.3):
        record(exp, 0, 8)
        save_experiment(exp, path, lock_timeout=0.3)
    assert open_experiment(path).recorded().sizes["visitor"] == 8


KILLED_SAVE = """
import os, sys, time
import numpy as np, pandas as pd
from pytyche.sequential import open_experiment, logged_observed
exp = open_experiment(sys.argv[1])
out = exp.plan().assign(pd.DataFrame({"visitor_id": [f"k{i}" for i in range(8)],
                                       "device": ["mobile"] * 8, "age": np.arange(8.0)}))
out["outcome"] = 1.0
exp.record(logged_observed(out))
replace = os.replace
def stuck(source, target, **kwargs):  # the parts are written; the marker is swapped in next
    if str(target).endswith("pytyche_experiment.json"):
        open(sys.argv[2], "w").close()
        time.sleep(120)
    return replace(source, target, **kwargs)
os.replace = stuck
exp.to_zarr(sys.argv[1])
"""


def test_the_leftovers_of_a_killed_save_are_removed_by_the_next(tmp_path):
    path = tmp_path / "exp"
    exp = small_experiment()
    record(exp, 0, 8)
    exp.to_zarr(path)
    before = parts(path)
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the child never reached the marker swap"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    # Killed mid-save: new parts and a marker temporary inside; the old version intact.
    inside = sorted(p.name for p in path.iterdir())
    assert len(parts(path)) == len(before) + 2
    assert any(name.startswith(".tmp-") for name in inside)
    same_experiment(open_experiment(path), exp)
    # And what a killed save of the old format left beside the store.
    for name in (".exp.tmp-0123abcd", ".exp.old-4567ef89"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MARKER_NAME).write_text("{}")

    record(exp, 10, 8)
    exp.to_zarr(path)
    assert not [p.name for p in path.iterdir() if p.name.startswith(".")]
    listed = {
        p["name"]
        for t in marker(path)["tables"]
        for k in ("assigned", "recorded")
        for p in (t[k] or {"parts": []})["parts"]
    }
    assert set(parts(path)) == listed  # the killed save's parts are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.lock", "exp", "ready"]
    same_experiment(open_experiment(path), exp)


MARKER_NAME = store_module.MARKER


def damage_cells(path):
    meta = marker(path)
    meta["plans"][0]["cells"]["optimized"] = 1.35  # control 0.05 + explore 0.05 + 1.35
    (path / MARKER_NAME).write_text(json.dumps(meta))
    return r"round 0's cell weights .* sum to 1.45, not 1"


def damage_arms(path):
    meta = marker(path)
    meta["plans"][0]["arms"] = ["A", "control"]
    (path / MARKER_NAME).write_text(json.dumps(meta))
    return r"round 0's plan lists the arms \['A', 'control'\], the settings \['control', 'A'\]"


def damage_key(path):
    meta = marker(path)
    del meta["rounds"]
    (path / MARKER_NAME).write_text(json.dumps(meta))
    return r"lacks the key\(s\) \['rounds'\]"


def damage_settings(path):
    meta = marker(path)
    meta["config"]["fit_options"] = {"n_draw": 10}  # hand-edited: a misspelt fit option
    (path / MARKER_NAME).write_text(json.dumps(meta))
    return r"its settings are refused: fit_options has the unknown option 'n_draw'"


def damage_part(path):
    name = marker(path)["tables"][0]["recorded"]["parts"][0]["name"]
    shutil.rmtree(path / name)
    return rf"the part {name} is listed in {MARKER_NAME} but is missing"


def damage_chunk(path):
    name = marker(path)["tables"][0]["recorded"]["parts"][0]["name"]
    (path / name / "outcome" / "c" / "0").unlink()  # zarr alone would read zeros
    return rf"the part {name} .* cannot be read .*'outcome' has 0 of its 1 chunks"


@pytest.mark.parametrize(
    "damage",
    [damage_cells, damage_arms, damage_key, damage_settings, damage_part, damage_chunk],
)
def test_a_damaged_store_is_refused_naming_the_damage(damage, tmp_path, capsys):
    path = tmp_path / "exp"
    exp = small_experiment()
    record(exp, 0, 8)
    exp.to_zarr(path)
    what = damage(path)
    with pytest.raises(DamagedStoreError, match="is damaged: .*" + what):
        open_experiment(path)
    with pytest.raises(ValueError, match="is damaged"):  # a ValueError, for callers
        open_experiment(path)
    try:
        code = cli.main(["plan", str(path)])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "is damaged: " in err
    if damage is not damage_chunk:  # a save reads the marker, not every part's chunks
        with pytest.raises(DamagedStoreError):  # nor is it saved over, unless overwrite=True
            exp.to_zarr(path)
    exp.to_zarr(path, overwrite=True)
    same_experiment(open_experiment(path), exp)


def test_a_save_writes_only_the_new_rows(tmp_path, monkeypatch):
    path = tmp_path / "exp"
    exp = small_experiment()
    record(exp, 0, 10)
    exp.to_zarr(path)
    first = parts(path)
    assert len(first) == 2 and marker(path)["version"] == 1

    exp.to_zarr(path)  # nothing changed: no table written
    assert parts(path) == first and marker(path)["version"] == 2

    record(exp, 10, 5)
    exp.to_zarr(path)
    now = parts(path)
    added = sorted(set(now) - set(first))
    assert {k: now[k] for k in first} == first  # the old parts untouched
    assert [name.split("-")[0] for name in added] == ["assigned", "recorded"]
    tables = marker(path)["tables"][0]
    assert [p["rows"] for p in tables["assigned"]["parts"]] == [10, 5]
    assert [p["rows"] for p in tables["recorded"]["parts"]] == [10, 5]
    assert xr.open_zarr(path / added[1], consolidated=False)["outcome"].chunks is not None
    same_experiment(open_experiment(path), exp)

    # Recorded rows removed (generation changed): the round rewritten as one part, and the
    # experiment's other JSON state kept in the marker and given back on open.
    state = exp.state

    def removed_one():
        out = state()
        out["data"][0] = out["data"][0].isel(visitor=slice(1, None))
        return {**out, "generation": [1], "events": [{"removed": ["v0"]}]}

    monkeypatch.setattr(exp, "state", removed_one)
    exp.to_zarr(path)
    tables = marker(path)["tables"][0]
    assert [p["rows"] for p in tables["recorded"]["parts"]] == [14]
    assert [p["rows"] for p in tables["assigned"]["parts"]] == [10, 5]
    assert marker(path)["state"] == {"generation": [1], "events": [{"removed": ["v0"]}]}
    given = []
    real_init = store_module.SequentialExperiment.__init__

    def spy(self, config, state=None):
        given.append(state)
        real_init(self, config, state)

    monkeypatch.setattr(store_module.SequentialExperiment, "__init__", spy)
    assert open_experiment(path).recorded().sizes["visitor"] == 14
    assert given[0]["generation"] == [1] and given[0]["events"] == [{"removed": ["v0"]}]
    # The replaced parts stay one save (for readers of the old marker), then go.
    assert len(parts(path)) == 5
    exp.to_zarr(path)
    assert len(parts(path)) == 3


def write_format_1(exp, path):
    """The store layout of format 1: one Zarr group per table, written whole."""
    path.mkdir()
    state = exp.state()
    for r, (plan, data) in enumerate(zip(state["plans"], state["data"], strict=True)):
        format_1_table(path / f"assigned-{r}.zarr", plan.assigned)
        if data is not None:
            frame = data.reset_coords().to_dataframe().reset_index()
            format_1_table(path / f"recorded-{r}.zarr", frame)
    meta = {
        "pytyche_experiment": 1,
        "config": exp.config,
        "plans": [plan.to_dict() for plan in state["plans"]],
        "rounds": state["rounds"],
        "recorded": [data is not None for data in state["data"]],
    }
    (path / MARKER_NAME).write_text(json.dumps(meta))


def format_1_table(path, frame):
    variables, levels = {}, {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind == "O":
            missing = np.asarray(pd.isna(values), dtype=bool)
            unique, codes = np.unique(values[~missing].astype(str), return_inverse=True)
            full = np.full(values.size, -1, dtype=np.int64)
            full[~missing] = codes
            variables[name], levels[name] = ("row", full), unique.tolist()
        else:
            variables[name] = ("row", values)
    attrs = {"levels": json.dumps(levels), "columns": json.dumps(list(map(str, frame.columns)))}
    xr.Dataset(variables, attrs=attrs).to_zarr(path, mode="w-", consolidated=False)


def test_a_format_1_store_opens_and_its_first_save_converts_it(tmp_path):
    exp = small_experiment()
    record(exp, 0, 6)
    exp.advance()  # a burn-in round: nothing recorded in round 1 yet
    assign(exp, 50, 3)
    path = tmp_path / "old"
    write_format_1(exp, path)

    resumed = open_experiment(path)
    same_experiment(resumed, exp)
    assert resumed.store_version == (path.resolve(), 0)
    record(resumed, 60, 8)
    resumed.to_zarr(path)
    assert marker(path)["pytyche_experiment"] == 2 and marker(path)["version"] == 1
    same_experiment(open_experiment(path), resumed)
    # The format 1 tables stay for readers of the old marker until the next save.
    assert (path / "assigned-0.zarr").exists()
    resumed.to_zarr(path)
    assert not (path / "assigned-0.zarr").exists() and not (path / "recorded-0.zarr").exists()
    same_experiment(open_experiment(path), resumed)


def test_an_opened_store_reads_recorded_columns_lazily_and_never_as_zeros(tmp_path):
    path = tmp_path / "exp"
    exp = small_experiment()
    record(exp, 0, 12)
    exp.to_zarr(path)
    reader = open_experiment(path)
    data = reader.recorded()
    # Only the ids are read on open; every other column is a dask array over the parts.
    assert all(data[n].chunks is not None for n in ("outcome", "variant", "cell", "age"))
    np.testing.assert_array_equal(data["outcome"].values, exp.recorded()["outcome"].values)
    xr.testing.assert_identical(data.compute(), exp.recorded())
    # Another writer rewrites round 0 and saves twice: the parts the reader holds are gone.
    writer = open_experiment(path)
    writer.remove_visitors(["v0"], reason="a test order")
    writer.to_zarr(path)
    writer.to_zarr(path)
    assert sorted(writer.recorded()["outcome"].values) == list(range(1, 12))  # its own, loaded
    with pytest.raises(FileNotFoundError, match=r"removed by a later save .* open the experiment"):
        reader.recorded()["outcome"].values  # noqa: B018 - reading is the test
    assert sorted(open_experiment(path).recorded()["outcome"].values) == list(range(1, 12))


def test_record_reads_earlier_rounds_covariates_once_not_per_batch(tmp_path, monkeypatch):
    from pytyche.sequential import experiment as experiment_module

    exp = small_experiment()
    record(exp, 0, 40)
    exp.advance()
    read = []
    original = experiment_module._ColumnSummary.of.__func__

    def counting(cls, name, values):
        read.append(len(values))
        return original(cls, name, values)

    monkeypatch.setattr(experiment_module._ColumnSummary, "of", classmethod(counting))
    for first in (1000, 2000, 3000, 4000):  # each batch reads only itself (2 covariates)
        record(exp, first, 10)
    assert read == [10] * 8
    exp.to_zarr(tmp_path / "exp")
    exp = open_experiment(tmp_path / "exp")
    read.clear()
    record(exp, 6000, 10)  # reopened: each earlier round is read once, then never again
    assert sorted(read) == [10, 10, 40, 40, 40, 40]
    read.clear()
    record(exp, 7000, 10)
    assert read == [10, 10]
    # The checks still see what was recorded before: a covariate changing kind is refused.
    out = assign(exp, 8000, 10)
    out["outcome"] = 1.0
    out["device"] = np.arange(10.0)
    with pytest.raises(ValueError, match="holds number values in this batch but text values"):
        exp.record(logged_observed(out))
