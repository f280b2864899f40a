"""Fit wall time per family, and the multivariate vs one-fit-per-treatment recovery comparison.

    python benchmarks/bench_fit.py                 # wall time, 5,000 visitors × 3 arms × 200 draws
    python benchmarks/bench_fit.py --compare       # recovery: multivariate vs per-treatment fits

The comparison fits the same simulated experiments (``"segmented"`` scenario) two ways with the
same forests and draws: pytyche's single multivariate-treatment BCF, and one univariate BCF per
treatment on that treatment's and control's visitors (predicting every visitor). It reports
the correlation and RMSE of the posterior-mean contrast against the true contrast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

import numpy as np
from scipy.special import ndtr

import pytyche as pt

fit_module = importlib.import_module("pytyche.fitting")


def wall_times(n: int, draws: int, threads: int, seed: int) -> None:
    print(f"fit wall time: {n:,} visitors × 3 arms × {draws} draws, num_threads={threads}")
    for family in ("binary", "continuous", "hurdle"):
        observed, _ = pt.simulate_experiment(n, family=family, seed=seed)
        start = time.perf_counter()
        result = pt.fit(
            observed, family=family, n_draws=draws, num_threads=threads, seed=seed, progress=False
        )
        elapsed = time.perf_counter() - start
        print(f"  {family:<10} {elapsed:6.1f} s   {result}")


def per_treatment_contrast(observed, family, draws, trees_mu, trees_tau, threads, seed):
    """Posterior-mean contrast from one BCF per treatment (control vs that treatment)."""
    from stochtree import BCFModel, OutcomeModel

    arms = list(observed.attrs["pytyche_arms"])
    codes = fit_module.arm_codes(observed, arms)
    _, X = fit_module.design_matrix(observed)
    y = observed["outcome"].values
    n = y.size
    contrast = np.zeros((n, len(arms)))
    for k in range(1, len(arms)):
        rows = (codes == 0) | (codes == k)
        share = np.mean(codes[rows] == k)

        def bcf(X_fit, z, target, probit, stage, X_all=X, k=k, share=share):
            general = {
                "random_seed": seed * 100 + 10 * k + stage,
                "num_threads": threads,
                "propensity_covariate": "none",
            }
            if probit:
                general |= {
                    "outcome_model": OutcomeModel(outcome="binary", link="probit"),
                    "sample_sigma2_global": False,
                }
            model = BCFModel()
            model.sample(
                X_fit,
                z,
                target,
                propensity_train=np.full(z.size, share),
                X_test=X_all,
                Z_test=np.zeros(n),
                propensity_test=np.full(n, share),
                num_gfr=10,
                num_mcmc=draws,
                general_params=general,
                prognostic_forest_params={"num_trees": trees_mu},
                treatment_effect_forest_params={"num_trees": trees_tau},
            )
            return model

        z = (codes[rows] == k).astype(float)
        if family == "continuous":
            m = bcf(X[rows], z, y[rows], False, 0)
            contrast[:, k] = m.tau_hat_test.mean(axis=1)
        elif family == "binary":
            m = bcf(X[rows], z, y[rows], True, 0)
            mu, tau = m.mu_hat_test, m.tau_hat_test
            contrast[:, k] = (ndtr(mu + tau) - ndtr(mu)).mean(axis=1)
        else:
            c = bcf(X[rows], z, (y[rows] > 0).astype(float), True, 0)
            conv = rows & (y > 0)
            v = bcf(X[conv], (codes[conv] == k).astype(float), np.log(y[conv]), False, 1)
            half = v.global_var_samples / 2
            value0 = np.exp(v.mu_hat_test + half)
            value1 = np.exp(v.mu_hat_test + v.tau_hat_test + half)
            mu, tau = c.mu_hat_test, c.tau_hat_test
            contrast[:, k] = (ndtr(mu + tau) * value1 - ndtr(mu) * value0).mean(axis=1)
    return contrast


def compare(n: int, draws: int, trees_mu: int, trees_tau: int, threads: int, seeds) -> None:
    print(
        f"recovery, segmented scenario: {n:,} visitors × 3 arms, {draws} draws, "
        f"{trees_mu}/{trees_tau} trees (μ/τ), seeds {list(seeds)}"
    )
    print(
        f"  {'family':<10} {'approach':<14} {'seconds':>8} {'corr A':>7} {'corr B':>7} "
        f"{'rmse A':>8} {'rmse B':>8}"
    )
    for family in ("binary", "continuous", "hurdle"):
        rows = {"multivariate": [], "per-treatment": []}
        for seed in seeds:
            observed, truth = pt.simulate_experiment(n, family=family, seed=seed)
            true = truth["metric"].values - truth["metric"].values[:, :1]
            start = time.perf_counter()
            result = pt.fit(
                observed,
                family=family,
                n_draws=draws,
                n_trees_mu=trees_mu,
                n_trees_tau=trees_tau,
                num_threads=threads,
                seed=seed,
                progress=False,
            )
            multivariate = result.contrast().mean("draw").values
            rows["multivariate"].append((time.perf_counter() - start, multivariate, true))
            start = time.perf_counter()
            separate = per_treatment_contrast(
                observed, family, draws, trees_mu, trees_tau, threads, seed
            )
            rows["per-treatment"].append((time.perf_counter() - start, separate, true))
        for approach, runs in rows.items():
            seconds = np.mean([r[0] for r in runs])
            corr = [
                np.mean([np.corrcoef(e[:, k], t[:, k])[0, 1] for _, e, t in runs]) for k in (1, 2)
            ]
            rmse = [
                np.mean([np.sqrt(np.mean((e[:, k] - t[:, k]) ** 2)) for _, e, t in runs])
                for k in (1, 2)
            ]
            print(
                f"  {family:<10} {approach:<14} {seconds:8.1f} {corr[0]:7.3f} {corr[1]:7.3f} "
                f"{rmse[0]:8.4f} {rmse[1]:8.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=5_000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--trees-mu", type=int, default=200)
    parser.add_argument("--trees-tau", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2, help="experiments per family (--compare)")
    args = parser.parse_args()
    # The machine may be shared: the load before the run says how much.
    print(f"load average before the run: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    if args.compare:
        compare(
            args.visitors,
            args.draws,
            args.trees_mu,
            args.trees_tau,
            args.threads,
            range(args.seeds),
        )
    else:
        wall_times(args.visitors, args.draws, args.threads, args.seed)


if __name__ == "__main__":
    main()
