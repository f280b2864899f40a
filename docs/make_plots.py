"""Draw the figures of docs/plots.md into docs/_static/ (run from the project root).

    python docs/make_plots.py

Every figure comes from the code shown in docs/plots.md, at small sizes so that the script
runs in a minute or two; the PNGs are written at 80 dpi to stay small in the repository.
"""

from __future__ import annotations

import pathlib

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import pytyche as pt
from pytyche.sequential import logged_observed, sequential_experiment

matplotlib.use("Agg")  # files only, no display

STATIC = pathlib.Path(__file__).parent / "_static"
FIT = {"n_draws": 40, "n_trees_mu": 20, "n_trees_tau": 10, "n_warmstart": 5, "num_threads": 1}


def save(ax, name: str) -> None:
    """Write the figure of ``ax`` to docs/_static/``name`` and close it."""
    ax.figure.savefig(STATIC / name, dpi=80, bbox_inches="tight")
    plt.close(ax.figure)
    print(f"{name}: {(STATIC / name).stat().st_size / 1024:.0f} KB")


def main() -> None:
    """Draw every figure of docs/plots.md."""
    # -- a posterior, its segments, one summary for both posterior plots
    result = pt.example_posterior(n_visitors=5_000, n_draws=500, n_chains=4, seed=1)
    tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    summary = pt.segment_summary(result, tree.segments)
    save(pt.plot.allocation(summary), "plot_allocation.png")
    save(pt.plot.contrasts(summary), "plot_contrasts.png")
    save(pt.plot.policy_tree(tree), "plot_policy_tree.png")

    # -- the sequential experiment, simulated against known truth
    simulation = pt.simulate_sequential(
        "segmented", rounds=4, schedule=("doubling", 1_000), seed=0, fit_options=FIT
    )
    save(pt.plot.regret(simulation), "plot_regret.png")

    # -- the sample ratio check of a recorded round (the outcome does not matter to it)
    exp = sequential_experiment(["control", "A", "B"], family="continuous", schedule=2_000)
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "visitor_id": [f"v{i}" for i in range(2_000)],
            "device": rng.choice(["mobile", "desktop"], 2_000),
            "age": rng.integers(18, 80, 2_000).astype(float),
        }
    )
    served = exp.plan().assign(frame)
    served["outcome"] = 0.0
    lost = served.index[served["arm"] == "B"][:150]  # arm B's logging drops visitors
    exp.record(logged_observed(served.drop(index=lost)))
    save(pt.plot.srm(exp), "plot_srm.png")


if __name__ == "__main__":
    main()
