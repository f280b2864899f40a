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
import time

import numpy as np
import pandas as pd

from pytyche.sequential import logged_observed, sequential_experiment


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'visitors':>10} {'np.sort s':>10}  step: seconds (x np.sort)")
    for n in args.sizes:
        times = measure(n, args.repeat)
        steps = ", ".join(
            f"{name} {seconds:.3f} s (x{seconds / times['sort']:.0f})"
            for name, seconds in times.items()
            if name != "sort"
        )
        print(f"{n:>10,} {times['sort']:>10.4f}  {steps}", flush=True)


if __name__ == "__main__":
    main()
