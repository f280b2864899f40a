"""Time ``fit_policy_tree`` and its Γ̄ pass (issue 4's target: depth 2 under 30 s once Γ̄ is
computed).

Run by hand, not in CI::

    .venv/bin/python benchmarks/bench_policy_tree.py                    # 1,000,000 visitors
    .venv/bin/python benchmarks/bench_policy_tree.py --visitors 100000 --bootstrap 0 5

The problem: a numpy-backed continuous posterior (``--draws`` float32 draws) with 10
covariates — 5 continuous numbers (64 quantile thresholds each), ``age`` (62 integer values,
2% missing), ``device`` (3 levels), ``region`` (8 levels: exact partitions), ``city`` (30
levels: the best-arm-gain order) and a boolean — and 4 arms, with planted segments.

For each depth and ``n_bootstrap`` it prints the time of the public ``fit_policy_tree`` call,
and, measured separately on the same posterior, its two passes over the posterior: Γ̄ (pass 1,
the per-visitor posterior-mean metric) and the leaf summaries (pass 2,
``segment_summary(...).compute()`` of the fitted leaves). ``search`` = fit - Γ̄ - summaries is
the time of the in-memory search (bootstrap refits included) "once Γ̄ is computed".
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import xarray as xr

import pytyche as pt
from pytyche.policy_tree import _posterior_mean_metric


def problem(n_visitors: int, seed: int = 0):
    """Γ̄ (visitor, arm) with planted segments, and the 10 covariates."""
    rng = np.random.default_rng(seed)
    columns = {f"x{i}": rng.normal(size=n_visitors) for i in range(5)}
    columns["age"] = rng.integers(18, 80, size=n_visitors).astype(np.float64)
    columns["age"][rng.random(n_visitors) < 0.02] = np.nan
    columns["device"] = rng.choice(
        np.array(["mobile", "desktop", "tablet"], dtype=object), n_visitors
    )
    columns["region"] = rng.choice(np.array([f"r{i}" for i in range(8)], dtype=object), n_visitors)
    columns["city"] = rng.choice(
        np.array([f"c{i:02d}" for i in range(30)], dtype=object), n_visitors
    )
    columns["returning"] = rng.random(n_visitors) < 0.3
    mean_metric = np.empty((n_visitors, 4))
    mean_metric[:, 0] = 1.0 + 0.1 * rng.normal(size=n_visitors)
    lift = np.zeros((n_visitors, 3))
    lift[:, 0] = np.where(columns["device"] == "mobile", 0.3, -0.1)
    lift[:, 1] = np.where((columns["device"] == "desktop") & (columns["age"] > 40), 0.35, -0.05)
    lift[:, 2] = 0.2 * columns["x0"] - 0.1
    mean_metric[:, 1:] = mean_metric[:, :1] + lift + 0.05 * rng.normal(size=(n_visitors, 3))
    return mean_metric, columns


def posterior(n_visitors: int, n_draws: int, seed: int = 0) -> pt.ContinuousBCFResult:
    """A numpy-backed continuous posterior whose draws scatter around `problem`'s Γ̄."""
    mean_metric, columns = problem(n_visitors, seed)
    rng = np.random.default_rng(seed + 1)
    draws = mean_metric[:, None, :] + rng.normal(0.0, 0.5, (n_visitors, n_draws, 4))
    arms = ["control", "A", "B", "C"]
    variant = np.repeat(np.array(arms, dtype=object), -(-n_visitors // 4))[:n_visitors]
    dataset = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), draws.astype(np.float32))},
        coords={
            "arm": arms,
            "variant": ("visitor", variant),
            **{name: ("visitor", values) for name, values in columns.items()},
        },
        attrs={"pytyche_family": "continuous", "pytyche_schema": 1},
    )
    return pt.ContinuousBCFResult(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=1_000_000)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--bootstrap", type=int, nargs="+", default=[0, 50])
    args = parser.parse_args()

    result = posterior(args.visitors, args.draws)
    print("command: .venv/bin/python " + " ".join(sys.argv))
    print(
        f"{args.visitors:,} visitors × {args.draws} draws × 4 arms (float32, numpy), "
        "10 covariates; min_segment_share 0.05, search 'auto'"
    )
    # Warm the compiled kernels so that the first timing is not a compile time.
    pt.fit_policy_tree(posterior(2000, 4), max_depth=2, n_bootstrap=1)

    start = time.perf_counter()
    _posterior_mean_metric(result)
    gamma = time.perf_counter() - start
    print(f"Γ̄ pass (pass 1): {gamma:.3f} s")
    for depth in args.depths:
        for n_bootstrap in args.bootstrap:
            start = time.perf_counter()
            tree = pt.fit_policy_tree(
                result, max_depth=depth, min_segment_share=0.05, n_bootstrap=n_bootstrap
            )
            total = time.perf_counter() - start
            start = time.perf_counter()
            pt.segment_summary(result, tree.segments, ci=0.8).compute()
            summary = time.perf_counter() - start
            print(
                f"depth {depth}  n_bootstrap {n_bootstrap:>3}  fit_policy_tree {total:7.2f} s  "
                f"= Γ̄ {gamma:.3f} s + leaf summaries {summary:.2f} s + search "
                f"{total - gamma - summary:7.2f} s  ({len(tree.segments)} leaves, "
                f"{tree.search} search)"
            )


if __name__ == "__main__":
    main()
