"""Sequential experiment: ``plan.assign`` and ``exp.record`` wall time at 10k, 100k and 1M.

Run by hand (never in CI)::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_sequential.py [--sizes 10000 100000 1000000]

For each size: best-of-``--repeat`` seconds of ``plan.assign`` (hash, segments, log), of
``logged_observed`` (``pytyche.observed_data`` of the assigned table) and of ``exp.record``
(checks against the assignment log, outcome and covariate checks), each with its ratio to
``np.sort`` of the same number of float64 measured in the same run (these machines are noisy).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pytyche.sequential import (
    evaluate_policy,
    logged_observed,
    open_experiment,
    sequential_experiment,
)

ARMS = ("control", "A", "B")


def best_of(repeat: int, work) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def visitors(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    return pd.DataFrame(
        {
            "visitor_id": np.array([f"user-{i}" for i in range(n)], dtype=object),
            "device": rng.choice(["mobile", "desktop", "tablet"], n),
            "age": rng.integers(18, 80, n).astype(float),
        }
    )


def measure(n: int, repeat: int) -> dict[str, float]:
    frame = visitors(n)
    floats = np.random.default_rng(0).random(n)
    baseline = best_of(repeat, lambda: np.sort(floats))

    def fresh():
        return sequential_experiment(["control", "A", "B"], seed=1, name="bench", schedule=n)

    plans = [fresh().plan() for _ in range(repeat)]  # a fresh log each time
    assign = best_of(repeat, lambda: plans.pop().assign(frame))
    exp = fresh()
    assigned = exp.plan().assign(frame)
    assigned["outcome"] = np.where(np.arange(n) % 3 == 0, 10.0, 0.0)
    observe = best_of(repeat, lambda: logged_observed(assigned))
    observed = logged_observed(assigned)
    experiments = [fresh() for _ in range(repeat)]
    for e in experiments:
        e.plan().assign(frame)
    record = best_of(repeat, lambda: experiments.pop().record(observed))
    return {"sort": baseline, "assign": assign, "logged_observed": observe, "record": record}


def scale(args) -> None:
    print(f"{'visitors':>10} {'np.sort s':>10}  step: seconds (x np.sort)")
    for n in args.sizes:
        times = measure(n, args.repeat)
        steps = ", ".join(
            f"{name} {seconds:.3f} s (x{seconds / times['sort']:.0f})"
            for name, seconds in times.items()
            if name != "sort"
        )
        print(f"{n:>10,} {times['sort']:>10.4f}  {steps}", flush=True)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def round_visitors(n: int, start: int, seed: int) -> pd.DataFrame:
    """``n`` visitors with text ids ``v<start>...``, a device and an age (some missing)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(np.float64)
    age[rng.random(n) < 0.01] = np.nan
    return pd.DataFrame(
        {
            "visitor_id": np.char.add("v", np.arange(start, start + n).astype(str)).astype(object),
            "device": rng.choice(np.array(["mobile", "desktop", "tablet"], dtype=object), n),
            "age": age,
        }
    )


def outcomes(assigned: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Hurdle outcomes shaped like real traffic: ~0.6% convert, log-normal spend."""
    rng = np.random.default_rng(seed)
    n = len(assigned)
    lift = assigned["arm"].map({"control": 0.0, "A": 0.002, "B": 0.001}).to_numpy()
    converted = rng.random(n) < 0.005 + lift
    out = assigned.copy()
    out["outcome"] = np.where(converted, rng.lognormal(3.0, 1.2, n), 0.0)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rounds(args) -> None:
    store = Path(args.dir) / "experiment.pytyche"
    n = args.visitors
    exp = sequential_experiment(
        ARMS, schedule=("fixed", n), seed=7, min_visitors_per_arm=10**12
    )  # burn-in throughout: no fit here
    exp.to_zarr(store)
    print(
        f"{'round':>5} {'assign':>7} {'record':>7} {'save':>7} {'written':>9} {'srm':>6} "
        f"{'advance':>8} {'peak RSS':>9}"
    )
    for r in range(args.rounds):
        table = round_visitors(n, r * n // 2, seed=100 + r)  # half of each round returns
        start = time.perf_counter()
        assigned = exp.plan().assign(table)
        t_assign = time.perf_counter() - start
        observed = logged_observed(outcomes(assigned, seed=200 + r))
        del assigned, table
        start = time.perf_counter()
        exp.record(observed)
        t_record = time.perf_counter() - start
        del observed
        before = dir_bytes(store)
        start = time.perf_counter()
        exp.to_zarr(store)
        t_save = time.perf_counter() - start
        written = dir_bytes(store) - before
        start = time.perf_counter()
        exp.srm()
        t_srm = time.perf_counter() - start
        start = time.perf_counter()
        exp.advance()
        t_advance = time.perf_counter() - start
        exp.to_zarr(store)
        print(
            f"{r:>5} {t_assign:>6.1f}s {t_record:>6.1f}s {t_save:>6.1f}s "
            f"{written / 1e6:>7.0f}MB {t_srm:>5.1f}s {t_advance:>7.1f}s {peak_rss_gb():>8.2f}GB",
            flush=True,
        )
    del exp
    start = time.perf_counter()
    exp = open_experiment(store)
    t_open = time.perf_counter() - start
    start = time.perf_counter()
    check = exp.srm()
    t_srm = time.perf_counter() - start
    logged = exp.recorded()
    start = time.perf_counter()
    value = evaluate_policy(logged, "A", estimator="snips")
    t_eval = time.perf_counter() - start
    print(
        f"open {t_open:.1f}s; SRM over {logged.sizes['visitor']:,} visits {t_srm:.1f}s "
        f"(p = {float(check['pooled_p_value']):.3g}); evaluate_policy(snips) {t_eval:.1f}s "
        f"({float(value['estimate']):.4f} [{float(value['lower']):.4f}, "
        f"{float(value['upper']):.4f}]); peak RSS {peak_rss_gb():.2f} GB"
    )


class StepTimer:
    """Adds up the seconds spent in named functions of ``advance`` (patched while active)."""

    STEPS = (
        ("srm", "SequentialExperiment.srm"),
        ("fit_data", "SequentialExperiment.fit_data"),
        ("check_setup", "check_setup"),
        ("fit (train; prediction stays lazy)", "fit"),
        ("policy tree (predicts every visit)", "fit_policy_tree"),
        ("segment means (predicts every visit)", "segment_means"),
    )

    def __init__(self):
        from pytyche.sequential import experiment

        self.module = experiment
        self.seconds = {label: 0.0 for label, _ in self.STEPS}
        self.saved = []

    def __enter__(self):
        for label, name in self.STEPS:
            owner, attr = self.module, name
            if "." in name:
                cls, attr = name.split(".")
                owner = getattr(self.module, cls)
            original = getattr(owner, attr)
            self.saved.append((owner, attr, original))
            setattr(owner, attr, self.timed(label, original))
        return self

    def timed(self, label, original):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start

        return run

    def __exit__(self, *exc):
        for owner, attr, original in self.saved:
            setattr(owner, attr, original)
        return False


def advance(args) -> None:
    store = Path(args.dir) / "experiment.pytyche"
    start = time.perf_counter()
    exp = open_experiment(store)
    print(f"open {time.perf_counter() - start:.1f}s", flush=True)
    exp.config["min_visitors_per_arm"] = 100
    exp.config["fit_options"] = {
        "max_train_visitors": args.train,
        "n_draws": args.draws,
        "n_trees_mu": args.trees_mu,
        "n_trees_tau": args.trees_tau,
        "num_threads": 1,
    }
    start = time.perf_counter()
    with StepTimer() as steps:
        plan = exp.advance()
    total = time.perf_counter() - start
    visits = exp.recorded().sizes["visitor"]
    print(f"advance() on {visits:,} visits: {total:.1f}s; peak RSS {peak_rss_gb():.2f} GB")
    for label, seconds in steps.seconds.items():
        print(f"  {label:<40} {seconds:8.1f}s")
    print(f"  {'the rest':<40} {total - sum(steps.seconds.values()):8.1f}s")
    print(plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.set_defaults(run=scale)
    p = sub.add_parser("rounds", help="rounds of a million visitors through one store")
    p.add_argument("--dir", required=True)
    p.add_argument("--visitors", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=10)
    p.set_defaults(run=rounds)
    p = sub.add_parser("advance", help="one advance() past burn-in on the rounds' store")
    p.add_argument("--dir", required=True)
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--trees-mu", type=int, default=50)
    p.add_argument("--trees-tau", type=int, default=20)
    p.set_defaults(run=advance)
    args = parser.parse_args()
    print(f"$ python benchmarks/bench_sequential.py {' '.join(sys.argv[1:])}")
    args.run(args)


if __name__ == "__main__":
    main()
