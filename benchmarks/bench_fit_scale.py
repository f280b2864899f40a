"""Hurdle fit of a million visitors: train on a stratified sample, predict lazily, stream to Zarr.

    python benchmarks/bench_fit_scale.py            # 1,000,000 visitors, 50,000 trained on
    python benchmarks/bench_fit_scale.py --visitors 200000 --train 20000 --compare-visitors 0

Simulates the ``"segmented"`` hurdle scenario (3 arms), fits it with
``max_train_visitors=--train`` (default forests and 200 draws unless told), writes the posterior
with ``result.to_zarr`` (the prediction of every visitor happens during the write, one visitor
chunk per dask task), and reports:

- the time of the fit (training the two models on the sample and serializing the forests), of
  the write (prediction + Zarr), and the time spent inside stochtree's ``predict``;
- the process's peak resident memory (``resource.getrusage``) after the write and after the
  recovery read, before the comparison fit;
- recovery: the correlation between the posterior-mean contrast (read back from the store) and
  the true contrast, for arms A and B;
- the same recovery and fit time for a fit on **all** visitors of a ``--compare-visitors``
  experiment (default 100,000), the size a fit without sampling manages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import pytyche as pt


class PredictTimer:
    """Wraps stochtree's ``BCFModel.predict`` to add up the seconds spent inside it."""

    def __init__(self):
        from stochtree import BCFModel

        self.cls = BCFModel
        self.original = BCFModel.predict
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self):
        original = self.original

        def timed(model, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(model, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        self.cls.predict = timed
        return self

    def __exit__(self, *exc):
        self.cls.predict = self.original
        return False


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def correlations(result, truth) -> list[float]:
    estimate = result.contrast().mean("draw").values
    true = truth["metric"].values - truth["metric"].values[:, :1]
    return [float(np.corrcoef(estimate[:, k], true[:, k])[0, 1]) for k in (1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=1_000_000)
    parser.add_argument("--train", type=int, default=50_000, help="max_train_visitors")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--trees-mu", type=int, default=200)
    parser.add_argument("--trees-tau", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="stochtree num_threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compare-visitors", type=int, default=100_000, help="0: skip")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    options = {
        "n_draws": args.draws,
        "n_trees_mu": args.trees_mu,
        "n_trees_tau": args.trees_tau,
        "num_threads": args.threads,
        "seed": args.seed,
        "progress": False,
    }
    # The machine may be shared: the load before the run says how much.
    print(f"load average before the run: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    print(f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    print(
        f"hurdle, segmented scenario, 3 arms, {args.draws} draws, {args.trees_mu}/{args.trees_tau} "
        f"trees (μ/τ), num_threads={args.threads}, seed {args.seed}"
    )
    observed, truth = pt.simulate_experiment(args.visitors, family="hurdle", seed=args.seed)
    store = Path(tempfile.mkdtemp(prefix="bench-fit-scale-", dir=args.dir)) / "posterior.zarr"
    with PredictTimer() as timer:
        start, cpu = time.perf_counter(), time.process_time()
        result = pt.fit(observed, family="hurdle", max_train_visitors=args.train, **options)
        fitted, fitted_cpu = time.perf_counter() - start, time.process_time() - cpu
        info = json.loads(result.dataset.attrs["pytyche_fit"])
        start, cpu = time.perf_counter(), time.process_time()
        result.to_zarr(store)
        written, written_cpu = time.perf_counter() - start, time.process_time() - cpu
    rss_write = peak_rss_gb()
    del result
    reopened = pt.open_posterior(store)
    start = time.perf_counter()
    corr = correlations(reopened, truth)
    read = time.perf_counter() - start
    rss_read = peak_rss_gb()
    size_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e9
    del reopened
    shutil.rmtree(store.parent)
    print(
        f"{args.visitors:,} visitors, trained on {info['train_visitors']:,} "
        f"({info['train_converters']:,} converters for the value model); store {size_gb:.2f} GB"
    )
    print(f"  {'step':<44} {'wall s':>8} {'CPU s':>8}")
    print(f"  {'fit: train 2 models + serialize forests':<44} {fitted:8.1f} {fitted_cpu:8.1f}")
    print(f"  {'to_zarr: predict every visitor + write':<44} {written:8.1f} {written_cpu:8.1f}")
    print(f"  {'  inside stochtree predict (summed)':<44} {timer.seconds:8.1f}")
    total, total_cpu = fitted + written, fitted_cpu + written_cpu
    print(f"  {'total fit + predict + write':<44} {total:8.1f} {total_cpu:8.1f}")
    print(f"  {'recovery read (posterior-mean contrast)':<44} {read:8.1f}")
    print(f"  peak RSS: {rss_write:.2f} GB after the write, {rss_read:.2f} GB after the read")
    print(f"  recovery, corr(posterior-mean contrast, truth) A, B: {corr[0]:.3f}, {corr[1]:.3f}")
    if args.compare_visitors:
        observed, truth = pt.simulate_experiment(
            args.compare_visitors, family="hurdle", seed=args.seed
        )
        start, cpu = time.perf_counter(), time.process_time()
        full = pt.fit(observed, family="hurdle", **options)
        seconds, seconds_cpu = time.perf_counter() - start, time.process_time() - cpu
        corr = correlations(full, truth)
        print(
            f"  fit on all {args.compare_visitors:,} visitors (eager): {seconds:.1f} s wall, "
            f"{seconds_cpu:.1f} s CPU; recovery A, B: {corr[0]:.3f}, {corr[1]:.3f}"
        )


if __name__ == "__main__":
    main()
