"""A posterior larger than memory: the allocation and the summary out of core, threads and cluster.

    python benchmarks/bench_out_of_core.py --gib 36 --draws 1000 --dir SCRATCH_DIR [--keep]

1. Writes a synthetic posterior of ``--gib`` GiB (float32; :func:`pytyche.example_posterior`,
   continuous by default) to a Zarr store under ``--dir`` with :func:`pytyche.to_zarr`. The
   draws are generated lazily, one visitor chunk of about 128 MB per dask task, and streamed
   to disk, so the posterior is never whole in memory. The write runs in a child process that
   reports its own peak resident memory. ``to_zarr`` writes to a temporary store beside the
   target and renames it into place: the disk needs the store's size once.
2. Reopens the store with :func:`pytyche.open_posterior` and, on (a) dask's threaded scheduler
   and (b) a ``distributed.LocalCluster`` of 2 worker processes (1 thread each, a memory limit
   per worker of ``--worker-memory`` bytes), times

   - ``ds.sum(skipna=False)``: reading every draw once, the streaming limit (the baseline);
   - ``pt.thompson_allocation`` over 16 disjoint segments (mobile or not × 8 age bands);
   - ``pt.segment_summary(...).compute()`` over the same segments;
   - the baseline again, to show how much the machine's noise moved it.

   Each call's peak resident memory is measured with ``resource.getrusage(RUSAGE_SELF)
   .ru_maxrss`` of this process and, on the cluster, of every worker (``client.run``), after
   resetting the peak (``/proc/self/clear_refs``, Linux; elsewhere the figure is the peak of
   the process so far, and says so). Each scheduler first runs every call once on a small
   in-memory posterior, so that compiling the kernels is not timed.

Targets: each call <= 1.25× the baseline on the same scheduler; peak resident memory <= 3 GB.
The store is removed at the end unless ``--keep``; ``--store PATH`` times an existing store
instead of writing one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dask

import pytyche as pt

ARMS = ("control", "A", "B", "C")
VARIABLES = {"continuous": 1, "binary": 1, "hurdle": 2}
# Disjoint segments: mobile or not, crossed with 8 age bands of 8 years (ages run 18-80;
# visitors with a missing age are in none).
SEGMENTS = {
    2 * band + side: f"device {op} 'mobile' and age >= {18 + 8 * band} and age < {26 + 8 * band}"
    for band in range(8)
    for side, op in enumerate(("==", "!="))
}


# --------------------------------------------------------------------------- memory


def peak_rss() -> int:
    """This process's peak resident memory since the last reset, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


def reset_peak_rss() -> bool:
    """Reset the peak that ``ru_maxrss`` reports (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- writing


def posterior_shape(gib: float, draws: int, family: str) -> tuple[int, int]:
    """(visitors, visitors per 128 MB chunk) for a float32 posterior of ``gib`` GiB."""
    per_visitor = VARIABLES[family] * draws * len(ARMS) * 4
    n_visitors = max(len(ARMS), int(gib * 2**30 // per_visitor))
    chunk = max(1, pt.get_options()["chunk_bytes"] // (draws * len(ARMS) * 4))
    return n_visitors, min(chunk, n_visitors)


def write_store(path: Path, gib: float, draws: int, family: str) -> dict:
    """Generate and write the posterior chunk by chunk; returns what the child should report."""
    n_visitors, chunk = posterior_shape(gib, draws, family)
    result = pt.example_posterior(n_visitors, draws, ARMS, family=family, chunks=chunk, seed=0)
    reset_peak_rss()
    with dask.config.set(scheduler="threads"):
        start = time.perf_counter()
        pt.to_zarr(result, path)
        seconds = time.perf_counter() - start
    nbytes = sum(result.dataset[name].nbytes for name in result.metric_variables)
    return {"seconds": seconds, "bytes": nbytes, "peak_rss": peak_rss(), "visitors": n_visitors}


def write_in_child(path: Path, args) -> dict:
    """Run :func:`write_store` in a child process, so this process's peak covers reads only."""
    command = [
        sys.executable,
        __file__,
        "--write-to",
        str(path),
        "--gib",
        str(args.gib),
        "--draws",
        str(args.draws),
        "--family",
        args.family,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"writing the store failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- timing


def calls(path: Path):
    """The timed calls, each on a fresh open of the store: (name, function)."""

    def baseline():
        return pt.open_posterior(path).dataset.sum(skipna=False).compute()

    def allocation():
        return pt.thompson_allocation(pt.open_posterior(path), SEGMENTS)

    def summary():
        return pt.segment_summary(pt.open_posterior(path), SEGMENTS).compute()

    return [
        ("ds.sum(skipna=False) (baseline)", baseline),
        ("thompson_allocation, 16 segments", allocation),
        ("segment_summary(...).compute(), 16 segments", summary),
        ("ds.sum(skipna=False) again (noise check)", baseline),
    ]


def warm_up(family: str) -> None:
    """Every call once on a small in-memory posterior: numba compiles (or loads) its kernels."""
    small = pt.example_posterior(2_000, 20, ARMS, family=family, chunks=500, seed=1)
    small.dataset.sum(skipna=False).compute()
    pt.thompson_allocation(small, SEGMENTS)
    pt.segment_summary(small, SEGMENTS).compute()


def time_calls(title: str, path: Path, resettable: bool, client=None) -> None:
    """Time every call; print a table row as each one finishes (a long run shows progress)."""
    gb = 1e9
    scope = "per call" if resettable else "process lifetime (could not reset the peak)"
    print(f"\n{title}; peak resident memory {scope}")
    print("| call | time | ratio to the sum | peak RSS, this process | peak RSS, workers |")
    print("| --- | ---: | ---: | ---: | ---: |", flush=True)
    baseline = None
    for name, call in calls(path):
        reset_peak_rss()
        if client is not None:
            client.run(reset_peak_rss)
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        baseline = baseline or seconds
        peak = peak_rss()
        workers = "–"
        if client is not None:
            workers = " / ".join(f"{w / gb:.2f} GB" for w in sorted(client.run(peak_rss).values()))
        print(
            f"| {name} | {seconds:.1f} s | {seconds / baseline:.2f}× | {peak / gb:.2f} GB | "
            f"{workers} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=36.0, help="posterior size in GiB")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--family", default="continuous", choices=sorted(VARIABLES))
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the store goes")
    parser.add_argument("--keep", action="store_true", help="keep the store at the end")
    parser.add_argument("--store", help="time this existing store instead of writing one")
    parser.add_argument(
        "--worker-memory", type=float, default=3e9, help="memory limit per worker, bytes"
    )
    parser.add_argument("--write-to", help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.write_to:
        print(json.dumps(write_store(Path(args.write_to), args.gib, args.draws, args.family)))
        return

    import distributed

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"command: python benchmarks/bench_out_of_core.py {' '.join(sys.argv[1:])}")
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, "
        f"{memory / 2**30:.1f} GiB RAM; load average before the run {os.getloadavg()[0]:.2f}"
    )
    workdir = None
    if args.store:
        path = Path(args.store)
    else:
        # The store once (to_zarr writes a temporary beside the target, then renames it).
        n_visitors, _ = posterior_shape(args.gib, args.draws, args.family)
        needed = n_visitors * VARIABLES[args.family] * args.draws * len(ARMS) * 4
        free = shutil.disk_usage(args.dir).free
        if free < 1.05 * needed:
            raise SystemExit(
                f"{args.dir} has {free / 1e9:.1f} GB free; the store needs up to "
                f"{needed / 1e9:.1f} GB (uncompressed): choose another --dir or a smaller --gib"
            )
        workdir = Path(tempfile.mkdtemp(dir=args.dir, prefix="pytyche-bench-ooc-"))
        path = workdir / "posterior.zarr"
    try:
        if workdir is not None:
            written = write_in_child(path, args)
            on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            print(
                f"wrote {written['visitors']:,} visitors × {args.draws} draws × {len(ARMS)} "
                f"arms, {args.family}, float32 = {written['bytes'] / 2**30:.2f} GiB "
                f"({written['bytes'] / memory:.2f}× RAM) in {written['seconds']:.0f} s "
                f"({written['bytes'] / 1e6 / written['seconds']:.0f} MB/s; "
                f"{on_disk / 1e9:.1f} GB on disk); the writer's peak RSS "
                f"{written['peak_rss'] / 1e9:.2f} GB",
                flush=True,
            )
        opened = pt.open_posterior(path)
        data = opened.dataset[opened.metric_variables[0]].data
        print(
            f"store {path}: {opened.dataset.sizes['visitor']:,} visitors, "
            f"{data.nbytes * len(opened.metric_variables) / 2**30:.2f} GiB, "
            f"opened in {data.numblocks[0]} visitor chunks of {data.blocks[0].nbytes / 1e6:.0f} MB"
        )
        resettable = reset_peak_rss()

        with dask.config.set(scheduler="threads"):
            warm_up(args.family)
            title = f"(a) dask threaded scheduler, {dask.system.CPU_COUNT} threads"
            time_calls(title, path, resettable)
        load = os.getloadavg()[0]
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                memory_limit=int(args.worker_memory),
                dashboard_address=":0",  # any free port: never "already in use"
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
            dask.config.set(scheduler=client),
        ):
            warm_up(args.family)
            title = (
                "(b) distributed.LocalCluster, 2 worker processes × 1 thread, memory limit "
                f"{args.worker_memory / 1e9:.1f} GB per worker"
            )
            time_calls(title, path, resettable, client)
        print(f"\nload average: {load:.2f} after (a), {os.getloadavg()[0]:.2f} after (b)")
    finally:
        if workdir is not None:
            if args.keep:
                print(f"kept the store: {path}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
