"""Time thompson_allocation against the streaming limit: a plain 2-thread dask sum.

    python benchmarks/bench_allocation.py [--visitors 200000] [--draws 1000] [--arms 4]
                                          [--repeat 5]

Builds a numpy-backed float32 continuous posterior (visitor, draw, arm) and, in the same run,
times:

(a) the kernel alone against numpy, one thread each: ``pytyche._kernels.atom_sums_block``
    streaming every visitor into 16 atoms (in the numpy path's blocks) against numpy's own
    1-thread float32 ``x.sum()`` of the same array. Their ratio of elements per second does
    not depend on how fast the machine's memory is next to its cores: below 1 the kernel is
    compute-bound where numpy is not (target >= 0.8);
(b) ``dask.array.from_array(x).sum()`` on 2 threads: the cost of reading every draw once;
(c) ``thompson_allocation`` over 1, 4, 16 and 64 disjoint segments, 16 and 64 nested
    (overlapping) ones, and 8, 12 and 64 independent overlapping ones (one random flag each),
    on the numpy-backed posterior, on the same array wrapped as a dask-backed posterior
    (visitor-major chunks of about 128 MB, threaded scheduler with 2 workers; covariates in
    memory, as built), and on that posterior with its covariates dask-backed too (as
    ``pt.open_posterior`` returns them: the membership is then lazy and each chunk finds its
    own atoms).

The targets are <= 1.25x (b) for disjoint and 16 nested segments and <= 2x for 64 independent
ones. The machines are shared and noisy, so every timed run of a figure is preceded by a run of
its baseline ((a): numpy's sum, (c): the dask sum), the calls of (c) are timed round-robin
(each round times every call once, so all have the same chances at quiet moments), each
figure is the best of ``--repeat`` runs after one warm-up (numba compiles the kernel on first
use), and three ratios are printed: "row", to the best of the baseline runs that preceded that
call's runs; "best", to the best baseline of the whole run (the quietest moment); and "cpu",
the call's best CPU seconds (all threads) over the baseline's best, which other processes
inflate far less than wall time.
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np
import xarray as xr

import pytyche as pt
from pytyche._kernels import atom_sums_block

N_FLAGS = 64


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
            **{f"flag{i}": ("visitor", rng.random(n_visitors) < 0.5) for i in range(N_FLAGS)},
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
        for s in (1, 4, 16, 64)
    }
    disjoint[1] = [pt.DiscoveredSegment(0, "everyone")]
    # Nested age bands overlap heavily: every visitor is in about half the segments.
    overlapping = {
        s: [pt.DiscoveredSegment(i, f"age > {18 + 62 * i / s:.3f}") for i in range(s)]
        for s in (16, 64)
    }
    # Independent overlapping segments (one per random flag): up to 2**s atoms, the hard case.
    many_atoms = {
        s: [pt.DiscoveredSegment(i, f"flag{i} == True") for i in range(s)] for s in (8, 12, 64)
    }
    return disjoint, overlapping, many_atoms


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all the process's threads) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - start_cpu


def interleaved(fn, baseline, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` seconds of ``fn`` and of ``baseline``, run alternately."""
    times, baseline_times = [], []
    for _ in range(repeat):
        baseline_times.append(timed(baseline))
        times.append(timed(fn))
    return min(times), min(baseline_times)


def kernel_per_thread(x: np.ndarray, labels: np.ndarray, n_atoms: int, repeat: int):
    """Seconds for the kernel on one thread and for numpy's 1-thread float32 sum, same rows."""
    rows = x.reshape(len(x), -1)
    block = max(1, pt.get_options()["numpy_block_bytes"] // rows[:1].nbytes)
    sums = np.zeros((n_atoms, rows.shape[1]), dtype=np.float64)

    def kernel():
        for start in range(0, len(rows), block):
            stop = start + block
            atom_sums_block((rows[start:stop],), labels[start:stop], sums)

    kernel()  # compile / load the cache
    return interleaved(kernel, rows.sum, repeat)


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

    labels = (result.dataset["cell"].values // 4).astype(np.intp)  # 16 atoms, every visitor
    kernel, numpy_sum = kernel_per_thread(x, labels, 16, args.repeat)
    print(
        f"{'numpy float32 sum, 1 thread':<58} {numpy_sum:7.3f} s  "
        f"{x.size / numpy_sum / 1e9:5.2f} G elements/s"
    )
    print(
        f"{'kernel, 1 thread, 16 atoms':<58} {kernel:7.3f} s  "
        f"{x.size / kernel / 1e9:5.2f} G elements/s  {numpy_sum / kernel:.2f} of numpy's"
    )

    chunk_rows = max(1, (128 * 2**20) // (x[:1].nbytes))
    lazy = da.from_array(x, chunks=(chunk_rows, -1, -1))

    def dask_sum():
        with dask.config.set(scheduler="threads", num_workers=2):
            lazy.sum().compute()

    lazy_result = pt.posterior(
        result.dataset.assign(expected=(result.dataset["expected"].dims, lazy))
    )
    lazy_coords = {
        name: coord.variable.chunk({"visitor": chunk_rows})
        for name, coord in lazy_result.dataset.coords.items()
        if coord.dims == ("visitor",)
    }
    lazy_all = pt.posterior(lazy_result.dataset.assign_coords(lazy_coords))
    disjoint, overlapping, many_atoms = segment_sets()
    calls = {}
    for backend, posterior in (
        ("numpy", result),
        ("dask", lazy_result),
        ("dask, lazy covariates", lazy_all),
    ):
        for label, sets in (
            ("disjoint", disjoint),
            ("nested", overlapping),
            ("independent", many_atoms),
        ):
            for n_segments, segments in sets.items():

                def allocate(segments=segments, posterior=posterior):
                    with dask.config.set(scheduler="threads", num_workers=2):
                        pt.thompson_allocation(posterior, segments)

                calls[f"{backend}, {n_segments:>2} {label} segments"] = allocate
    for allocate in calls.values():  # warm-up: numba compile / cache load, graph caches
        allocate()
    # Round-robin: every round times each call once, right after a run of the baseline, so
    # every call's best-of has the same chances at the machine's quiet moments.
    times = {name: [] for name in calls}
    baselines = {name: [] for name in calls}
    for _ in range(args.repeat):
        for name, allocate in calls.items():
            baselines[name].append(timed_cpu(dask_sum))
            times[name].append(timed_cpu(allocate))
    best = min(min(b) for b in baselines.values())[0]
    best_cpu = min(min(cpu for _, cpu in b) for b in baselines.values())
    worst = max(max(b) for b in baselines.values())[0]
    print(f"{'dask sum, 2 threads (baseline): best of the run':<58} {best:7.3f} s  1.00x")
    print(f"(the baseline runs of this run took {best:.3f} to {worst:.3f} s)")
    # cpu: CPU seconds of all threads, best of the call's runs over the baseline's best. Other
    # processes on the machine inflate wall time far more than the work a call does, so this
    # column shows the work even when the wall-time columns are noisy.
    print(f"{'thompson_allocation':<58} {'time':>7}    {'row':>5}  {'best':>5}  {'cpu':>5}")
    for name in calls:
        elapsed, baseline = min(t for t, _ in times[name]), min(t for t, _ in baselines[name])
        cpu = min(c for _, c in times[name])
        print(
            f"{name:<58} {elapsed:7.3f} s  {elapsed / baseline:5.2f}x {elapsed / best:5.2f}x "
            f"{cpu / best_cpu:5.2f}x"
        )
    kernel_again, numpy_sum_again = kernel_per_thread(x, labels, 16, args.repeat)
    print(
        f"{'kernel / numpy per thread again (noise check)':<58} "
        f"{numpy_sum_again / kernel_again:.2f} of numpy's"
    )


if __name__ == "__main__":
    main()
