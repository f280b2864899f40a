"""Off-policy evaluation of a Zarr log of 1,000,000 and 10,000,000 visitors: time, peak memory.

    python benchmarks/bench_evaluate.py --visitors 1000000 10000000 --dir SCRATCH_DIR

Writes a simulated log (arm served, outcome, propensity, a device covariate and a (visitor,
arm) outcome model, in chunks of 1,000,000 visitors) to Zarr, then in a fresh process per case
opens it with ``xr.open_zarr`` and runs :func:`pytyche.evaluate_policy` on a two-segment
policy: SNIPS and DR with the default interval, and at the smallest size a 200-resample Poisson
bootstrap. Each process reports its wall time and peak resident memory (``VmHWM``),
beside a baseline measured in the same run: ``np.sum`` over as many float64 (best of 5), and
the peak memory of a process that only imports pytyche and opens the store.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

ARMS = ["control", "A", "B"]
CHUNK = 1_000_000
POLICY = ({0: {"A": 1.0}, 1: {"B": 0.5, "control": 0.5}}, {0: "device == 'mobile'", 1: "everyone"})


def write_log(path: Path, n: int) -> None:
    """A uniform 3-arm log, written chunk by chunk so that the writer's memory stays small."""
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng(start)
        size = min(CHUNK, n - start)
        arm = rng.integers(0, 3, size)
        device = np.where(rng.random(size) < 0.5, "mobile", "desktop")
        mean = np.where(device[:, None] == "mobile", [1.0, 2.0, 0.5], [1.0, 0.0, 3.0])
        y = mean[np.arange(size), arm] + rng.normal(0.0, 2.0, size)
        chunk = xr.Dataset(
            {"model": (("visitor", "arm"), mean + 0.1)},
            coords={
                "variant": ("visitor", np.array(ARMS)[arm]),
                "outcome": ("visitor", y),
                "propensity": ("visitor", np.full(size, 1 / 3)),
                "device": ("visitor", device),
                "arm": ARMS,
            },
        ).chunk(visitor=CHUNK)
        with warnings.catch_warnings():
            # zarr 3 notes that fixed-width text has no V3 spec yet (xarray reads it back)
            # and that consolidated metadata is outside the V3 spec: notices, not problems.
            warnings.simplefilter("ignore")
            if start == 0:
                chunk.to_zarr(path, mode="w")
            else:
                chunk.drop_vars("arm").to_zarr(path, append_dim="visitor")


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would count the parent's
    pages from before ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, case: str) -> None:
    """One case in this process: print seconds and peak RSS as one line."""
    import pytyche as pt

    logged = xr.open_zarr(path)
    started = time.perf_counter()
    if case == "open":
        n = logged.sizes["visitor"]
        values = np.random.default_rng(0).random(n)
        timings = []
        for _ in range(5):
            t = time.perf_counter()
            values.sum()
            timings.append(time.perf_counter() - t)
        seconds, what = min(timings), f"np.sum over {n:,} float64 (best of 5)"
    else:
        estimator, _, bootstrap = case.partition(":")
        posterior = logged["model"] if estimator == "dr" else None
        result = pt.evaluate_policy(
            logged.drop_vars("model"),
            POLICY,
            estimator=estimator,
            posterior=posterior,
            n_bootstrap=int(bootstrap) if bootstrap else None,
        )
        seconds = time.perf_counter() - started
        what = (
            f"evaluate_policy {estimator} {result.attrs['interval']}: "
            f"{float(result['estimate']):.4f} [{float(result['lower']):.4f}, "
            f"{float(result['upper']):.4f}]"
        )
    peak = peak_rss_mib()
    print(f"{logged.sizes['visitor']:>11,}  {seconds:8.2f} s  peak RSS {peak:7.0f} MiB  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return
    print(f"load average before the run: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        for n in args.visitors:
            path = Path(scratch) / f"log-{n}.zarr"
            t = time.perf_counter()
            write_log(path, n)
            print(f"wrote {n:,} visitors in {time.perf_counter() - t:.1f} s")
            cases = ["open", "snips", "dr"] + (["snips:200"] if n == min(args.visitors) else [])
            for case in cases:
                command = [sys.executable, __file__, "--measure", str(path), case]
                subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
