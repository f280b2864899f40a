"""Time the policy-tree search once Γ̄ is computed (issue 4's target: depth 2 under 30 s).

Run by hand, not in CI::

    .venv/bin/python benchmarks/bench_policy_tree.py                    # 1,000,000 visitors
    .venv/bin/python benchmarks/bench_policy_tree.py --visitors 100000 --bootstrap 0 5

The problem: 10 covariates — 5 continuous numbers (64 quantile thresholds each), ``age``
(62 integer values, 2% missing), ``device`` (3 levels), ``region`` (8 levels: exact
partitions), ``city`` (30 levels: the ordered-levels path) and a boolean — and 4 arms, with
planted segments. The search runs on Γ̄ (visitor, arm) and the covariates, exactly as inside
``fit_policy_tree`` after its pass over the posterior; neither that pass nor the leaf summaries
(a second pass) are included. ``n_bootstrap`` refits are included.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pytyche.policy_tree import _search_tree


def problem(n_visitors: int, seed: int = 0):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=1_000_000)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--bootstrap", type=int, nargs="+", default=[0, 50])
    args = parser.parse_args()

    mean_metric, columns = problem(args.visitors)
    print(
        f"{args.visitors:,} visitors × {len(columns)} covariates × {mean_metric.shape[1]} arms "
        "(Γ̄ given; min_segment_share 0.05, search 'auto')"
    )
    # Warm the compiled kernels so that the first timing is not a compile time.
    _search_tree(
        mean_metric[:1000],
        {k: v[:1000] for k, v in columns.items()},
        max_depth=2,
        min_size=50,
        n_bootstrap=0,
        seed=0,
        search="auto",
    )
    min_size = float(np.ceil(0.05 * args.visitors))
    for depth in args.depths:
        for n_bootstrap in args.bootstrap:
            start = time.perf_counter()
            _, _, labels, _, exact = _search_tree(
                mean_metric,
                columns,
                max_depth=depth,
                min_size=min_size,
                n_bootstrap=n_bootstrap,
                seed=0,
                search="auto",
            )
            seconds = time.perf_counter() - start
            n_leaves = int(labels.max()) + 1
            print(
                f"depth {depth}  n_bootstrap {n_bootstrap:>3}  {seconds:8.2f} s  "
                f"({n_leaves} leaves, {'exact' if exact or depth <= 2 else 'lookahead'} search)"
            )


if __name__ == "__main__":
    main()
