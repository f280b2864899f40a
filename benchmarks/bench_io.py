"""Zarr (and netCDF) write/read throughput for a large posterior, against a plain disk copy.

    python benchmarks/bench_io.py --gb 2 --dir SCRATCH_DIR

Builds a hurdle posterior of about ``--gb`` GB (float32, two variables, drawn by
:func:`pytyche.example_posterior`) in memory, writes it with :func:`pytyche.to_zarr` (atomic:
temp store + rename), reopens it with :func:`pytyche.open_posterior` and reads every chunk back
(a sum), printing MB/s; ``--netcdf`` adds the same for :func:`pytyche.to_netcdf`. The draws are
held in memory so that the figures time the I/O, not the synthetic generator.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dask

import pytyche as pt


def total(result) -> float:
    return float(sum(result.dataset[name].data.sum() for name in result.metric_variables).compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--netcdf", action="store_true")
    args = parser.parse_args()
    # The machine may be shared: the load before the run says how much.
    print(f"load average before the run: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")

    arms = ("control", "A", "B")
    per_visitor = 2 * args.draws * len(arms) * 4
    n_visitors = int(args.gb * 1e9 // per_visitor)
    chunk = 128 * 2**20 // (args.draws * len(arms) * 4)
    result = pt.example_posterior(
        n_visitors, args.draws, arms, family="hurdle", chunks=chunk, seed=0
    )
    with dask.config.set(scheduler="threads"):
        start = time.perf_counter()
        result = pt.posterior(result.dataset.compute())
        print(f"  (generated in memory in {time.perf_counter() - start:.1f} s)")
    size = sum(result.dataset[name].nbytes for name in result.metric_variables)
    mb = size / 1e6
    print(
        f"hurdle posterior: {n_visitors:,} visitors × {args.draws} draws × {len(arms)} arms × 2 "
        f"variables, float32 = {size / 1e9:.2f} GB, dask threads scheduler"
    )
    workdir = Path(tempfile.mkdtemp(dir=args.dir, prefix="pytyche-bench-io-"))
    try:
        with dask.config.set(scheduler="threads"):
            start = time.perf_counter()
            path = pt.to_zarr(result, workdir / "posterior.zarr")
            write = time.perf_counter() - start
            print(f"  to_zarr                     {write:6.1f} s  {mb / write:7.0f} MB/s")
            on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
            print(f"  store on disk: {on_disk:,.0f} MB")

            start = time.perf_counter()
            opened = pt.open_posterior(path)
            total(opened)
            read = time.perf_counter() - start
            print(f"  open_posterior + full read {read:6.1f} s  {mb / read:7.0f} MB/s")

            if args.netcdf:
                start = time.perf_counter()
                nc = pt.to_netcdf(result, workdir / "posterior.nc")
                write = time.perf_counter() - start
                print(f"  to_netcdf                   {write:6.1f} s  {mb / write:7.0f} MB/s")
                start = time.perf_counter()
                total(pt.open_posterior(nc))
                read = time.perf_counter() - start
                print(f"  netCDF open + full read     {read:6.1f} s  {mb / read:7.0f} MB/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
