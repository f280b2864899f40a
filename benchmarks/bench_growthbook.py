"""A round plan served by the real GrowthBook Python SDK: shares, timing, and a three-round loop.

    python benchmarks/bench_growthbook.py --visitors 200000 --loop-sizes 1500,1500,3000

Exports a demo plan (three arms, two segments and the visitors in no segment) with
:func:`pytyche.sequential.to_growthbook`, serves ``--visitors`` synthetic visitors (device
and age, 10% of each missing) with ``GrowthBook.get_feature_value``, records the tracked
exposures with :func:`pytyche.sequential.exposures_from_growthbook` and prints, per
(segment, arm), the SDK's share against the plan's effective probability (and how many
standard errors apart), the per-cell shares, and the SRM p-value with all exposures and with
5% of arm A's dropped. Then runs a loop (real fits, small trees): the SDK serves each round,
``record`` records it, ``advance`` plans the next; prints each plan and its SRM p-value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import pandas as pd
import xarray as xr
from growthbook import GrowthBook

from pytyche.sequential import (
    CELLS,
    RoundPlan,
    exposures_from_growthbook,
    growthbook_attributes,
    sequential_experiment,
    srm_test,
)

ARMS = ["control", "A", "B"]
FEATURE = "checkout"
FIT = {"n_draws": 10, "n_trees_mu": 10, "n_trees_tau": 5, "n_warmstart": 2, "num_threads": 1}


def demo_plan() -> RoundPlan:
    return RoundPlan(
        round=1,
        size=1_000,
        arms=ARMS,
        active=ARMS,
        cells={"control": 0.1, "explore": 0.2, "optimized": 0.7},
        segments={0: "device == 'mobile' and age > 40", 1: "device != 'mobile'"},
        optimized={
            0: {"control": 0.2, "A": 0.5, "B": 0.3},
            1: {"control": 0.6, "A": 0.1, "B": 0.3},
            -1: {"control": 0.3, "A": 0.3, "B": 0.4},
        },
        status="optimized",
        seed=42,
    )


def visitors(n: int, seed: int = 0, prefix: str = "v") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    device = rng.choice(["mobile", "desktop", "tablet"], n).astype(object)
    device[rng.random(n) < 0.1] = None
    age = rng.integers(18, 80, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan
    ids = [f"{prefix}{i}" for i in range(n)]
    return pd.DataFrame({"visitor_id": ids, "device": device, "age": age})


def serve(features: dict, table: pd.DataFrame, outcome=None) -> pd.DataFrame:
    """The SDK serves every visitor; its tracked exposures joined with the covariates."""
    tracked = []

    def on_viewed(experiment, result, user_context=None):
        tracked.append((experiment.key, result.variationId, result.hashValue))

    gb = GrowthBook(features=features["features"], on_experiment_viewed=on_viewed)
    for attributes in growthbook_attributes(table):
        gb.set_attributes(attributes)
        gb.get_feature_value(FEATURE, None)
    events = pd.DataFrame(tracked, columns=["experiment_key", "variation_id", "visitor_id"])
    events = events.merge(table, on="visitor_id", how="left")
    events["outcome"] = 0.0 if outcome is None else outcome(events)
    return events


def srm_p(observed: xr.Dataset, plan: RoundPlan) -> float:
    """One round's SRM p-value, counted as SequentialExperiment.srm counts."""
    counts = np.zeros((1, len(CELLS), len(plan.arms)))
    expected = np.zeros_like(counts)
    cell = pd.Categorical(observed["cell"].values.astype(str), categories=CELLS).codes
    arm = pd.Categorical(observed["variant"].values.astype(str), categories=plan.arms).codes
    np.add.at(counts[0], (cell, arm), 1.0)
    ids, n = np.unique(observed["segment"].values, return_counts=True)
    for k, name in enumerate(CELLS):
        table = plan.cell_probability(name).sel(segment=ids).values
        expected[0, k] = plan.cells[name] * (n[:, None] * table).sum(axis=0)
    dims = ("round", "cell", "arm")
    test = srm_test(xr.DataArray(counts, dims=dims), xr.DataArray(expected, dims=dims))
    return float(test["p_value"][0])


def shares(n: int) -> None:
    plan = demo_plan()
    features = plan.to_growthbook(FEATURE)
    print("exported features JSON of the demo plan (first rule):")
    rule = features["features"][FEATURE]["rules"][0]
    print(json.dumps({"defaultValue": "control", "rules[0]": rule}))
    print(f"({len(features['features'][FEATURE]['rules'])} rules in all)")
    table = visitors(n)
    start = time.perf_counter()
    events = serve(features, table)
    seconds = time.perf_counter() - start
    print(f"\nSDK served {n:,} visitors in {seconds:.1f} s ({1e6 * seconds / n:.0f} us each)")
    logged = exposures_from_growthbook(events, RoundPlan.from_dict(plan.to_dict()))
    frame = logged.to_dataframe().reset_index()
    print("\nsegment  arm       visitors   plan     SDK    (SDK - plan) / SE")
    for s in plan.segment_ids:
        here = frame[frame["segment"] == s]
        for a in plan.arms:
            p = float(plan.effective_probability.sel(segment=s, arm=a))
            share = float((here["variant"] == a).mean())
            z = (share - p) / math.sqrt(p * (1 - p) / len(here))
            print(f"{s:>7}  {a:<8} {len(here):>9,}  {p:.4f}  {share:.4f}  {z:+.2f}")
    cells = frame["cell"].value_counts(normalize=True)
    print("cells: " + ", ".join(f"{c} {cells[c]:.4f} (plan {plan.cells[c]})" for c in CELLS))
    effective = plan.effective_probability.to_pandas()
    want = effective.to_numpy()[
        effective.index.get_indexer(frame["segment"]),
        effective.columns.get_indexer(frame["variant"]),
    ]
    print(f"logged propensities equal the plan's: {bool((frame['propensity'] == want).all())}")
    is_a = np.flatnonzero((events["variation_id"] == 1).to_numpy())
    lost = np.random.default_rng(0).choice(is_a, is_a.size // 20, replace=False)
    dropped = exposures_from_growthbook(events.drop(index=lost), plan)
    print(f"SRM p-value: all exposures {srm_p(logged, plan):.3g}; ", end="")
    print(f"5% of arm A's dropped {srm_p(dropped, plan):.3g}")


def outcome(events: pd.DataFrame) -> np.ndarray:
    rng = np.random.default_rng(len(events))
    arm = events["variation_id"].to_numpy()
    mobile = (events["device"] == "mobile").to_numpy()
    return rng.normal(0.05 * (arm == 1) + 0.05 * mobile * (arm == 2), 1.0)


def loop(sizes: list[int]) -> None:
    exp = sequential_experiment(
        ARMS,
        seed=9,
        schedule=sizes,
        min_visitors_per_arm=50,
        family="continuous",
        fit_options=FIT,
    )
    for r in range(len(sizes)):
        plan = exp.plan()
        print(f"\n{plan}")
        table = visitors(plan.size, seed=r, prefix=f"r{r}-")
        events = serve(plan.to_growthbook(FEATURE), table, outcome)
        exp.record(exposures_from_growthbook(events, plan))
        p = float(exp.srm()["p_value"].sel(round=r))
        print(f"recorded {len(events):,} SDK exposures of round {r}; SRM p = {p:.3g}")
        if r < len(sizes) - 1:
            exp.advance()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=200_000)
    parser.add_argument("--loop-sizes", default="1500,1500,3000")
    args = parser.parse_args()
    print(f"load average before the run: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    shares(args.visitors)
    loop([int(n) for n in args.loop_sizes.split(",")])


if __name__ == "__main__":
    main()
