"""The notebooks run top to bottom, as a fresh kernel would run them, and are stored stripped.

Each notebook's code cells run in order in one fresh namespace (no Jupyter needed); then the
notebook's own check asserts what the notebook claims to show. Sizes are the notebooks' own:
each sets them in its first code cell, small enough for CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from dask.utils import parse_bytes

import pytyche as pt

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def run_notebook(path: Path) -> tuple[dict, int]:
    """Run the code cells in order; returns the namespace and the number of figures drawn."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    saved = pt.get_options()
    try:
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                exec(compile(source, f"{path.name} cell {index}", "exec"), namespace)
        figures = len(plt.get_fignums())
    finally:
        plt.close("all")
        pt.set_options(**saved)  # a notebook may set options; the tests after it must not see them
    return namespace, figures


def assert_splits(allocation: dict, segment_ids, arms, epsilon: float = 0.02) -> None:
    assert list(allocation) == list(segment_ids)
    for weights in allocation.values():
        assert list(weights) == list(arms)
        assert abs(sum(weights.values()) - 1.0) < 1e-12
        assert min(weights.values()) >= epsilon / len(arms) - 1e-12


def check_quickstart(ns: dict, figures: int) -> None:
    result, tree, allocation = ns["result"], ns["tree"], ns["allocation"]
    assert result.dataset.sizes["visitor"] == ns["N_VISITORS"]
    assert_splits(allocation, [s.id for s in tree.segments], result.variants)
    # The split is Thompson allocation over the tree's segments, however it is asked for.
    assert allocation == pt.thompson_allocation(result, tree.segments, epsilon=0.02)
    assert allocation == tree.allocation(epsilon=0.02)
    # The check against the truth names a true best arm for every discovered segment.
    assert len(ns["check"]) == len(tree.segments)
    assert set(ns["check"]["true best arm"]) <= set(result.variants)
    assert figures == 2  # the tree and the split


def check_out_of_core(ns: dict, figures: int) -> None:
    posterior, limits = ns["posterior"], ns["limits"]
    limit = parse_bytes(ns["WORKER_MEMORY"])
    # Two workers, each held to the limit; the posterior's draws are larger than that limit,
    # and each chunk is a small fraction of it.
    assert len(limits) == 2 and set(limits.values()) == {limit}
    draws = [posterior.dataset[name] for name in posterior.metric_variables]
    assert sum(d.nbytes for d in draws) == ns["draws_bytes"] > limit
    for d in draws:
        assert d.chunks is not None  # opened lazily, never loaded
        largest = max(d.chunks[0]) * d.dtype.itemsize * np.prod(d.shape[1:])
        assert largest <= limit / 16
    # On the cluster, with no worker restarted, the split equals the one on local threads.
    assert ns["same_workers"]
    assert ns["allocation"] == ns["local_allocation"]
    assert_splits(ns["allocation"], list(ns["SEGMENTS"]), posterior.variants)
    np.testing.assert_allclose(ns["summary"]["prob_best"].sum("arm"), 1.0)
    assert ns["dashboard"].startswith("http")
    # The cluster is closed and the store removed.
    assert ns["client"].status == "closed"
    assert str(ns["cluster"].status) == "Status.closed"
    assert not Path(ns["scratch"].name).exists()
    assert figures == 0


def check_sequential(ns: dict, figures: int) -> None:
    rounds, exp = ns["ROUNDS"], ns["exp"]
    # ROUNDS rounds were served, recorded and closed; the next plan is ready.
    assert exp.round == rounds
    assert len(ns["regret"]) == len(ns["uniform_regret"]) == len(ns["visitors_served"]) == rounds
    history = exp.history
    assert history["recorded"].values[:rounds].tolist() == ns["visitors_served"]
    assert exp.posterior.dataset.sizes["visitor"] == sum(ns["visitors_served"])
    # Regret: cumulative sums of per-round regrets that are never negative; adapting paid off.
    for name in ("cumulative_regret", "cumulative_uniform_regret"):
        cumulative = np.asarray(ns[name])
        assert cumulative.shape == (rounds,)
        assert cumulative[0] >= 0 and np.all(np.diff(cumulative) >= 0)
    assert ns["cumulative_regret"][-1] < ns["cumulative_uniform_regret"][-1]
    # SRM: every round checked and clean; the planted mismatch is flagged.
    srm = ns["srm"]
    assert srm.sizes["round"] == rounds
    assert np.all((srm["p_value"] >= 0) & (srm["p_value"] <= 1))
    assert not srm["flagged"].any() and not bool(srm["pooled_flagged"])
    assert bool(ns["mismatch"]["flagged"][0])
    # Off-policy evaluation: an estimate inside its interval for every policy.
    evaluation = ns["evaluation"]
    assert list(evaluation.index) == list(ns["policies"])
    assert np.isfinite(evaluation.to_numpy()).all()
    assert (evaluation["90% lower"] <= evaluation["estimate"]).all()
    assert (evaluation["estimate"] <= evaluation["90% upper"]).all()
    assert figures == 1  # the regret plot


CHECKS = {
    "quickstart.ipynb": check_quickstart,
    "out_of_core.ipynb": check_out_of_core,
    "sequential.ipynb": check_sequential,
}


def test_every_notebook_has_its_check():
    assert {path.name for path in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path):
    namespace, figures = run_notebook(path)
    CHECKS[path.name](namespace, figures)


def stored_notebooks() -> list[Path]:
    """Every notebook git tracks or would add (untracked, not ignored) that exists in the work
    tree; without git, those in notebooks/."""
    git = shutil.which("git")
    if git is not None:
        listed = subprocess.run(
            [git, "ls-files", "--cached", "--others", "--exclude-standard", "*.ipynb"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if listed.returncode == 0:
            paths = {ROOT / line for line in listed.stdout.splitlines() if line}
            return sorted(path for path in paths if path.is_file())  # not those deleted here
    return NOTEBOOKS


@pytest.mark.parametrize("path", stored_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_is_stored_without_outputs(path):
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    assert "widgets" not in notebook["metadata"]  # saved widget state is output too
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert None not in ids and len(set(ids)) == len(ids)
    for cell in notebook["cells"]:
        assert not {"execution", "ExecuteTime"} & set(cell["metadata"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {cell['id']} has outputs: clear them"
            assert cell["execution_count"] is None, f"cell {cell['id']} has an execution count"
        else:
            assert "outputs" not in cell and "attachments" not in cell
