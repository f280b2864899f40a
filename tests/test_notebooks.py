"""The notebooks run top to bottom, as a fresh kernel would run them."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_cells_run_in_order(path):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    try:
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                exec(compile(source, f"{path.name} cell {index}", "exec"), namespace)
    finally:
        plt.close("all")
    allocation = namespace["allocation"]  # the walkthrough's result: a split per segment
    assert allocation
    for weights in allocation.values():
        assert abs(sum(weights.values()) - 1.0) < 1e-12


def test_there_is_a_notebook():
    assert NOTEBOOKS
