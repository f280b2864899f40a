"""``pytyche`` command line: ``pytyche demo`` runs one round of the experimenter's journey."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._validate import check_probability
from .fitting import fit
from .io import PosteriorReadError, check_write_target, open_posterior
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


# Bounds of the demo's arguments: enough visitors for the hurdle fit (10 converters per arm),
# and few enough that the fit, the store and the tree stay within a laptop's memory.
MIN_VISITORS, MAX_VISITORS = 300, 2_000_000
MAX_DRAWS = 10_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), no usage dump."""

    def error(self, message: str):
        """Exit with status 2 and ``message`` on one line."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {value:,}")
        return value

    return parse


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    try:
        return check_probability(
            "epsilon", value, why=" (the floor epsilon / K per arm sums to at most 1)"
        )
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pytyche`` command.

    Every argument is checked before any work starts: a bad one exits with status 2 and one
    line on stderr; a failure during the work (a disk filling up, say) exits with status 1
    and one line, never a traceback.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; default: the command line.

    Returns
    -------
    int
        The exit status: 0 on success.
    """
    parser = _Parser(prog="pytyche", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo_parser = commands.add_parser(
        "demo", help="simulate, fit, save, discover segments and allocate, end to end"
    )
    demo_parser.add_argument(
        "--visitors",
        type=_bounded_int(MIN_VISITORS, MAX_VISITORS),
        default=4_000,
        help=f"visitors to simulate ({MIN_VISITORS:,} to {MAX_VISITORS:,})",
    )
    demo_parser.add_argument(
        "--draws",
        type=_bounded_int(1, MAX_DRAWS),
        default=200,
        help=f"posterior draws (1 to {MAX_DRAWS:,})",
    )
    demo_parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="keep the posterior in this Zarr store (new, empty, or a pytyche posterior)",
    )
    demo_parser.add_argument(
        "--epsilon", type=_epsilon, default=0.02, help="floor per arm is epsilon / K (0 to 1)"
    )
    demo_parser.add_argument(
        "--seed", type=_bounded_int(0, 2**63 - 1), default=0, help="seed (>= 0)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.store is not None:
            try:
                check_write_target(args.store, overwrite=True)
            except (OSError, ValueError) as error:
                parser.exit(2, f"pytyche: error: --store: {error}\n")
        try:
            demo(args.visitors, args.draws, args.store, args.epsilon, args.seed)
        except (OSError, ValueError, PosteriorReadError) as error:
            parser.exit(1, f"pytyche: error: {type(error).__name__}: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
