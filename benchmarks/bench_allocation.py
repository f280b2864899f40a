"""Time thompson_allocation against the streaming limit: a plain 2-thread dask sum.

    python benchmarks/bench_allocation.py [--visitors 200000] [--draws 1000] [--arms 4]

Builds a numpy-backed float32 continuous posterior (visitor, draw, arm) and, in the same run,
times (a) ``dask.array.from_array(x).sum()`` on 2 threads — the cost of reading every draw
once — and (b) ``thompson_allocation`` over 1, 16 and 64 segments, disjoint and overlapping,
on the numpy-backed posterior and on the same array wrapped as a dask-backed posterior
(visitor-major chunks of about 128 MB, threaded scheduler with 2 workers). Prints each time and
its ratio to (a); the target is <= 1.5. Each figure is the best of ``--repeat`` runs, after
one warm-up (numba compiles the kernel on first use).
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np
import xarray as xr

import pytyche as pt


def build_posterior(n_visitors: int, n_draws: int, n_arms: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    expected = np.empty((n_visitors, n_draws, n_arms), dtype=np.float32)
    for lo in range(0, n_visitors, 10_000):  # fill in slices: no float64 temporary of it all
        hi = min(lo + 10_000, n_visitors)
        expected[lo:hi] = rng.standard_normal((hi - lo, n_draws, n_arms), dtype=np.float32)
    arms = ["control", *(f"T{k}" for k in range(1, n_arms))]
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={
            "arm": arms,
            "variant": ("visitor", np.repeat(arms, -(-n_visitors // n_arms))[:n_visitors]),
            "cell": ("visitor", rng.integers(0, 64, n_visitors)),
            "age": ("visitor", rng.uniform(18, 80, n_visitors)),
            **{f"flag{i}": ("visitor", rng.random(n_visitors) < 0.5) for i in range(12)},
        },
        attrs={"pytyche_family": "continuous", "pytyche_schema": 1},
    )
    return pt.posterior(ds)


def segment_sets():
    disjoint = {
        s: [
            pt.DiscoveredSegment(i, f"cell in {tuple(range(i * 64 // s, (i + 1) * 64 // s))}")
            for i in range(s)
        ]
        for s in (1, 16, 64)
    }
    disjoint[1] = [pt.DiscoveredSegment(0, "everyone")]
    # Nested age bands overlap heavily: every visitor is in about half the segments.
    overlapping = {
        s: [pt.DiscoveredSegment(i, f"age > {18 + 62 * i / s:.3f}") for i in range(s)]
        for s in (16, 64)
    }
    # Independent overlapping segments (one per random flag): 2**s atoms, the hard case.
    many_atoms = {
        s: [pt.DiscoveredSegment(i, f"flag{i} == True") for i in range(s)] for s in (8, 12)
    }
    return disjoint, overlapping, many_atoms


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=200_000)
    parser.add_argument("--draws", type=int, default=1_000)
    parser.add_argument("--arms", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    result = build_posterior(args.visitors, args.draws, args.arms)
    x = result.dataset["expected"].values
    print(f"posterior: {x.shape} {x.dtype}, {x.nbytes / 1e9:.2f} GB, numpy-backed")

    chunk_rows = max(1, (128 * 2**20) // (x[:1].nbytes))
    lazy = da.from_array(x, chunks=(chunk_rows, -1, -1))

    def dask_sum():
        with dask.config.set(scheduler="threads", num_workers=2):
            lazy.sum().compute()

    lazy_result = pt.posterior(
        result.dataset.assign(expected=(result.dataset["expected"].dims, lazy))
    )
    disjoint, overlapping, many_atoms = segment_sets()
    pt.thompson_allocation(result, disjoint[16])  # warm-up: numba compile / cache load
    baseline = best_of(dask_sum, args.repeat)
    print(f"{'dask sum, 2 threads (baseline)':<54} {baseline:7.3f} s   1.00x")
    for backend, posterior in (("numpy", result), ("dask", lazy_result)):
        for label, sets in (
            ("disjoint", disjoint),
            ("overlapping", overlapping),
            ("many-atom", many_atoms),
        ):
            for n_segments, segments in sets.items():

                def allocate(segments=segments, posterior=posterior):
                    with dask.config.set(scheduler="threads", num_workers=2):
                        pt.thompson_allocation(posterior, segments)

                elapsed = best_of(allocate, args.repeat)
                name = f"thompson_allocation, {backend}, {n_segments:>2} {label} segments"
                print(f"{name:<54} {elapsed:7.3f} s   {elapsed / baseline:.2f}x")
    baseline_again = best_of(dask_sum, args.repeat)
    print(
        f"{'dask sum again (noise check)':<44} {baseline_again:7.3f} s   "
        f"{baseline_again / baseline:.2f}x"
    )


if __name__ == "__main__":
    main()
