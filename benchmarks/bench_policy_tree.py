"""Time ``fit_policy_tree`` (large and small), and compare the exact tree with a greedy one.

Run by hand, not in CI::

    .venv/bin/python benchmarks/bench_policy_tree.py                    # 1,000,000 visitors
    .venv/bin/python benchmarks/bench_policy_tree.py --visitors 100000 --bootstrap 0 5

Three tables:

1. **Large** (``--visitors``, default 1,000,000): a numpy-backed continuous posterior
   (``--draws`` float32 draws) with 10 covariates — 5 continuous numbers (64 quantile
   thresholds each), ``age`` (62 integer values, 2% missing), ``device`` (3 levels),
   ``region`` (8 levels: exact partitions), ``city`` (30 levels: the best-arm-gain order) and a
   boolean — and 4 arms, with planted segments. For each depth and ``n_bootstrap`` it prints
   the time of the public ``fit_policy_tree`` call, and, measured separately on the same
   posterior, its two passes over the posterior: Γ̄ (pass 1, the per-visitor posterior-mean
   metric) and the leaf summaries (pass 2, ``segment_summary(...).compute()`` of the fitted
   leaves). ``search`` = fit - Γ̄ - summaries is the in-memory search, bootstrap refits
   included.
2. **Small** (``--small``, default 2,000 visitors): ``fit_policy_tree(max_depth=3)`` on the
   quick-start example posterior (3 covariates: exact search) and on the 10-covariate problem
   (look-ahead), with each ``--bootstrap`` count; the last column is the cost of one
   bootstrap refit relative to the fit without refits, from the same run.
3. **Exact against greedy** (``--compare``, default 20,000 visitors): the policy value of the
   fitted tree and of a greedy CART-style tree on the same posterior and candidate splits
   (each node takes the split with the largest immediate gain in policy value, if any,
   down to the same depth and leaf size), as the share of the oracle's gain each reaches:
   ``(value - control) / (oracle - control)``, where the oracle serves every visitor their
   own best arm by posterior mean and "control" serves everyone control.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import xarray as xr

import pytyche as pt
from pytyche.policy_tree.binning import bin_features
from pytyche.policy_tree.fit import posterior_mean_metric
from pytyche.policy_tree.search import Search, leaf_value_and_arm
from pytyche.segments import covariate_names


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


def interaction(n_visitors: int, seed: int = 0):
    """Γ̄ where no single split pays: A wins where exactly one of x0 > 0, x1 > 0 holds."""
    rng = np.random.default_rng(seed)
    columns = {f"x{i}": rng.normal(size=n_visitors) for i in range(3)}
    mean_metric = 1.0 + 0.05 * rng.normal(size=(n_visitors, 2))
    xor = (columns["x0"] > 0) != (columns["x1"] > 0)
    mean_metric[:, 1] += np.where(xor, 0.3, -0.3)
    return mean_metric, columns


def as_posterior(mean_metric, columns, n_draws: int, seed: int = 0) -> pt.ContinuousBCFResult:
    """A numpy-backed continuous posterior whose draws scatter around `mean_metric`."""
    n_visitors, n_arms = mean_metric.shape
    rng = np.random.default_rng(seed + 1)
    draws = mean_metric[:, None, :] + rng.normal(0.0, 0.5, (n_visitors, n_draws, n_arms))
    arms = ["control", "A", "B", "C"][:n_arms]
    variant = np.repeat(np.array(arms, dtype=object), -(-n_visitors // n_arms))[:n_visitors]
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


def posterior(n_visitors: int, n_draws: int, seed: int = 0) -> pt.ContinuousBCFResult:
    """The 10-covariate problem as a posterior."""
    return as_posterior(*problem(n_visitors, seed), n_draws, seed)


def greedy_objective(result, max_depth: int, min_size: float) -> float:
    """Policy value per visitor of a greedy tree: each node takes its best single split."""
    mean_metric = np.asarray(posterior_mean_metric(result), dtype=np.float64)
    contrasts = np.ascontiguousarray(mean_metric[:, 1:] - mean_metric[:, :1])
    observed = result.observed
    names = covariate_names(observed, exclude=("variant", "outcome"))
    bins = bin_features({name: observed[name].values for name in names}, contrasts, True)
    search = Search(bins, contrasts, np.ones(len(contrasts)), min_size, exact=True)

    def grow(index: np.ndarray, depth: int) -> float:
        leaf = float(leaf_value_and_arm(search.values[index].sum(axis=0), contrasts.shape[1])[0])
        if depth == 0:
            return leaf
        plan = search.depth1(index)
        if plan.left_bins is None or plan.split_value <= plan.leaf_value:
            return leaf
        feature = bins[plan.feature]
        codes = feature.codes[index]
        goes_left = np.append(plan.left_bins, False)[codes]
        goes_right = ~goes_left & (codes != feature.n_bins)
        return grow(index[goes_left], depth - 1) + grow(index[goes_right], depth - 1)

    value = grow(np.arange(len(contrasts)), max_depth)
    return (mean_metric[:, 0].sum() + value) / len(contrasts)


def oracle_objectives(result) -> tuple[float, float]:
    """(everyone on control, every visitor on their own best arm), per visitor."""
    mean_metric = np.asarray(posterior_mean_metric(result), dtype=np.float64)
    return float(mean_metric[:, 0].mean()), float(mean_metric.max(axis=1).mean())


def large_table(args) -> None:
    result = posterior(args.visitors, args.draws)
    print(
        f"\n1. {args.visitors:,} visitors × {args.draws} draws × 4 arms (float32, numpy), "
        "10 covariates; min_segment_share 0.05, search 'auto'"
    )
    start = time.perf_counter()
    posterior_mean_metric(result)
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


def small_table(args) -> None:
    n_visitors = args.small
    print(
        f"\n2. {n_visitors:,} visitors, fit_policy_tree(max_depth=3), default min_segment_share 0.1"
    )
    cases = {
        "example (3 covariates)": pt.example_posterior(n_visitors=n_visitors, n_draws=100),
        "10 covariates": posterior(n_visitors, args.draws),
    }
    for name, result in cases.items():
        base = None
        for n_bootstrap in sorted(args.bootstrap):
            start = time.perf_counter()
            tree = pt.fit_policy_tree(result, max_depth=3, n_bootstrap=n_bootstrap)
            took = time.perf_counter() - start
            line = (
                f"{name:<24} n_bootstrap {n_bootstrap:>3}  {took:6.2f} s  ({tree.search} "
                f"search, {len(tree.segments)} leaves)"
            )
            if base is None:
                base = took
            elif n_bootstrap:
                line += f"  one refit = {(took - base) / n_bootstrap / base:.2f} × the fit"
            print(line)


def compare_table(args) -> None:
    n_visitors = args.compare
    print(
        f"\n3. {n_visitors:,} visitors, min_segment_share 0.05: share of the oracle's gain "
        "over control (exact or look-ahead tree vs greedy tree)"
    )
    cases = {
        "example (3 covariates)": pt.example_posterior(n_visitors=n_visitors, n_draws=100),
        "10 covariates": posterior(n_visitors, args.draws),
        "interaction (x0 xor x1)": as_posterior(*interaction(n_visitors), args.draws),
    }
    for name, result in cases.items():
        control, oracle = oracle_objectives(result)
        for depth in (2, 3):
            tree = pt.fit_policy_tree(
                result, max_depth=depth, min_segment_share=0.05, n_bootstrap=0
            )
            greedy = greedy_objective(result, depth, tree.min_segment_size)
            share = (tree.objective - control) / (oracle - control)
            greedy_share = (greedy - control) / (oracle - control)
            print(
                f"{name:<24} depth {depth}  {tree.search:<9} {share:6.3f}  greedy "
                f"{greedy_share:6.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=1_000_000)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--bootstrap", type=int, nargs="+", default=[0, 50])
    parser.add_argument("--small", type=int, default=2_000, help="visitors of table 2")
    parser.add_argument("--compare", type=int, default=20_000, help="visitors of table 3")
    args = parser.parse_args()
    args.small = min(args.small, args.visitors)
    args.compare = min(args.compare, args.visitors)

    print("command: .venv/bin/python " + " ".join(sys.argv))
    # Warm the compiled kernels so that the first timing is not a compile time.
    pt.fit_policy_tree(posterior(2000, 4), max_depth=3, n_bootstrap=1)
    pt.fit_policy_tree(pt.example_posterior(n_visitors=2000, n_draws=4), max_depth=3)
    small_table(args)
    compare_table(args)
    large_table(args)


if __name__ == "__main__":
    main()
