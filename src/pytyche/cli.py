"""``pytyche`` command line: ``pytyche demo`` runs one round of the experimenter's journey."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .fitting import fit
from .io import open_posterior
from .policy_tree import fit_policy_tree
from .segments import membership
from .simulate import simulate_experiment


def demo(n_visitors: int, n_draws: int, store: Path | None, epsilon: float, seed: int) -> None:
    """Simulate an experiment, fit a BCF, save and reopen it, find segments, allocate."""
    observed, truth = simulate_experiment(n_visitors, family="hurdle", seed=seed)
    arms = [str(a) for a in truth["arm"].values]
    print(
        f"1. experiment: {n_visitors:,} visitors split between {', '.join(arms)}; outcome is "
        "revenue per visitor (zero unless they convert); the best arm differs by segment"
    )

    start = time.perf_counter()
    # Smaller forests than fit()'s defaults keep the demo quick; the segments are still found.
    result = fit(
        observed,
        family="hurdle",
        n_draws=n_draws,
        n_trees_mu=50,
        n_trees_tau=20,
        seed=seed,
        progress=False,
    )
    print(
        f"2. hurdle BCF fitted with stochtree: {n_draws} posterior draws "
        f"in {time.perf_counter() - start:.1f} s"
    )

    with tempfile.TemporaryDirectory() as scratch:
        path = store if store is not None else Path(scratch) / "posterior.zarr"
        result.to_zarr(path, overwrite=store is not None)
        reopened = open_posterior(path)
        chunks = reopened.dataset["conversion"].data.npartitions
        print(f"3. saved atomically to {path} and reopened lazily ({chunks} dask chunk(s))")

        start = time.perf_counter()
        tree = fit_policy_tree(reopened, max_depth=2, n_bootstrap=20, seed=seed)
        print(f"4. policy tree fitted to the posterior in {time.perf_counter() - start:.1f} s:\n")
        print(tree)

        allocation = tree.allocation(epsilon=epsilon)
    member = membership(tree.segments, observed).values
    true_best = [arms[int(np.argmax(truth["metric"].values[m].mean(axis=0)))] for m in member]
    print(f"\n5. next round's traffic split per segment (Thompson, floor epsilon={epsilon}):\n")
    width = max(len(str(s.rule)) for s in tree.segments)
    header = f"{'segment':>7}  {'rule':<{width}}  " + "  ".join(f"{a:>8}" for a in arms)
    print(header + f"  {'true best':>9}")
    for segment, best in zip(tree.segments, true_best, strict=True):
        weights = allocation[segment.id]
        row = "  ".join(f"{weights[a]:>8.3f}" for a in arms)
        print(f"{segment.id:>7}  {segment.rule!s:<{width}}  {row}  {best:>9}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pytyche`` command."""
    parser = argparse.ArgumentParser(prog="pytyche", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="simulate, fit, save, discover segments and allocate, end to end"
    )
    demo_parser.add_argument("--visitors", type=int, default=4_000)
    demo_parser.add_argument("--draws", type=int, default=200)
    demo_parser.add_argument(
        "--store", type=Path, default=None, help="keep the posterior in this Zarr store"
    )
    demo_parser.add_argument("--epsilon", type=float, default=0.02)
    demo_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.visitors, args.draws, args.store, args.epsilon, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
