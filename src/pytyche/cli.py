"""``pytyche`` command line: ``pytyche demo`` runs the allocation end to end."""

from __future__ import annotations

import argparse
import sys
import time

import dask

from .analysis import thompson_allocation
from .examples import example_posterior
from .segments import DiscoveredSegment

DEMO_SEGMENTS = (
    DiscoveredSegment(0, "device == 'mobile'"),
    DiscoveredSegment(1, "device == 'desktop' and age > 40"),
    DiscoveredSegment(2, "device == 'desktop' and age <= 40"),
    DiscoveredSegment(3, "device == 'tablet'"),
    DiscoveredSegment(4, "returning == True"),
    DiscoveredSegment(5, "everyone"),
)


def demo(n_visitors: int, n_draws: int, chunk: int, epsilon: float, seed: int) -> None:
    """Allocate next round's traffic over six segments of a lazy, chunked posterior."""
    result = example_posterior(
        n_visitors, n_draws, arms=("control", "A", "B"), family="hurdle", chunks=chunk, seed=seed
    )
    metric = result.dataset["conversion"]
    print(
        f"posterior: hurdle (revenue per visitor), {n_visitors:,} visitors × {n_draws} draws × "
        f"{len(result.variants)} arms; {metric.data.npartitions} lazy dask chunks of "
        f"{chunk:,} visitors ({2 * metric.nbytes / 2**20:,.0f} MiB in all, never held at once)"
    )
    start = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        allocation = thompson_allocation(result, DEMO_SEGMENTS, epsilon=epsilon)
    elapsed = time.perf_counter() - start
    arms = result.variants
    rules = [str(segment.rule) for segment in DEMO_SEGMENTS]
    width = max(map(len, rules))
    print(f"\nnext round's traffic split per segment (Thompson, floor epsilon={epsilon}):\n")
    print(f"{'segment':>7}  {'rule':<{width}}  " + "  ".join(f"{a:>8}" for a in arms))
    for segment, rule in zip(DEMO_SEGMENTS, rules, strict=True):
        weights = allocation[segment.id]
        print(
            f"{segment.id:>7}  {rule:<{width}}  " + "  ".join(f"{weights[a]:>8.3f}" for a in arms)
        )
    print(f"\none streaming pass (drawing the synthetic posterior on the fly): {elapsed:.2f} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pytyche`` command."""
    parser = argparse.ArgumentParser(prog="pytyche", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="allocate traffic on a synthetic posterior")
    demo_parser.add_argument("--visitors", type=int, default=20_000)
    demo_parser.add_argument("--draws", type=int, default=500)
    demo_parser.add_argument("--chunk", type=int, default=8_192, help="visitors per dask chunk")
    demo_parser.add_argument("--epsilon", type=float, default=0.02)
    demo_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.visitors, args.draws, args.chunk, args.epsilon, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
