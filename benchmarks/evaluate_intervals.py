"""Seed stability and coverage of evaluate_policy's intervals on logs with heavy weights.

    python benchmarks/evaluate_intervals.py --visitors 5000 --replications 200 [--old OLD.py]

A simulated log where arm B was served with propensity 0.02 and a policy that serves B to
half the visitors (largest importance weight 50). Over seeds 0-19 on one log: the spread
(max - min) of each bound relative to the estimate, per estimator and interval (the default,
and 2,000 Poisson resamples). Over ``--replications`` fresh logs: how often the 90% interval
(default and normal) covers the known true value. ``--old`` adds the spread of another
``evaluate.py`` (with absolute imports, e.g. the version before this script:
``git show 38d3168:src/pytyche/sequential/evaluate.py``) run with 200 resamples.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import xarray as xr

from pytyche.sequential import evaluate_policy

ARMS = ["control", "A", "B"]
LOGGING = {"mobile": [0.49, 0.49, 0.02], "desktop": [0.3, 0.68, 0.02]}
MEAN = {"mobile": [1.0, 2.0, 0.5], "desktop": [1.0, 0.0, 3.0]}
POLICY = ({0: {"A": 1.0}, 1: {"B": 1.0}}, {0: "device == 'mobile'", 1: "device == 'desktop'"})
TRUTH = 0.5 * 2.0 + 0.5 * 3.0


def simulated_log(n: int, rng: np.random.Generator) -> tuple[xr.Dataset, xr.DataArray]:
    device = rng.choice(["mobile", "desktop"], n)
    p = np.array([LOGGING[d] for d in device])
    mean = np.array([MEAN[d] for d in device])
    arm = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    rows = np.arange(n)
    logged = xr.Dataset(
        coords={
            "variant": ("visitor", np.array(ARMS, dtype=object)[arm]),
            "outcome": ("visitor", mean[rows, arm] + rng.normal(0.0, 2.0, n)),
            "propensity": ("visitor", p[rows, arm]),
            "device": ("visitor", device.astype(object)),
        }
    )
    # A deliberately wrong outcome model, as in the tests.
    model = xr.DataArray(
        mean + np.array([0.3, -0.4, 0.2]), dims=("visitor", "arm"), coords={"arm": ARMS}
    )
    return logged, model


def seed_spread(n: int, old_path: str | None) -> None:
    logged, model = simulated_log(n, np.random.default_rng(123))
    cases = [
        ("default", evaluate_policy, {}),
        ("2000 Poisson", evaluate_policy, {"n_bootstrap": 2000}),
    ]
    if old_path:
        spec = importlib.util.spec_from_file_location("old_evaluate", old_path)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        cases.insert(0, ("old: 200 percentile", old.evaluate_policy, {"n_bootstrap": 200}))
    for estimator in ("ipw", "snips", "dr"):
        posterior = model if estimator == "dr" else None
        for label, function, options in cases:
            started = time.perf_counter()
            results = [
                function(
                    logged, POLICY, estimator=estimator, posterior=posterior, seed=s, **options
                )
                for s in range(20)
            ]
            seconds = (time.perf_counter() - started) / 20
            estimate = float(results[0]["estimate"])
            spread = {
                b: np.ptp([float(r[b]) for r in results]) / abs(estimate)
                for b in ("lower", "upper")
            }
            print(
                f"{estimator:5s} {label:22s} estimate {estimate:.3f}, largest weight "
                f"{float(results[0]['max_weight']):.0f}: spread over 20 seeds lower "
                f"{spread['lower']:.2%}, upper {spread['upper']:.2%} ({seconds * 1000:.0f} ms/call)"
            )


def coverage(n: int, replications: int) -> None:
    rng = np.random.default_rng(7)
    hits: dict[tuple[str, str], list[bool]] = {}
    for _ in range(replications):
        logged, model = simulated_log(n, rng)
        for estimator in ("ipw", "snips", "dr"):
            for label, bootstrap in (("default", None), ("normal", 0)):
                result = evaluate_policy(
                    logged, POLICY, estimator=estimator, posterior=model, n_bootstrap=bootstrap
                )
                covered = float(result["lower"]) <= TRUTH <= float(result["upper"])
                hits.setdefault((estimator, label), []).append(covered)
    for (estimator, label), covered in hits.items():
        print(
            f"coverage of the 90% {label} interval, {estimator}: {np.mean(covered):.3f} "
            f"over {replications} logs of {n:,} visitors"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=5_000)
    parser.add_argument("--replications", type=int, default=200)
    parser.add_argument("--old", default=None, help="another evaluate.py to compare")
    args = parser.parse_args()
    seed_spread(args.visitors, args.old)
    coverage(args.visitors, args.replications)


if __name__ == "__main__":
    main()
