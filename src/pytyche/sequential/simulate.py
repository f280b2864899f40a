"""Run the sequential loop offline against known truth and measure its regret."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..segments import membership
from ..simulate import planted_segments, simulate_experiment
from .evaluate import evaluate_policy, policy_probabilities
from .experiment import logged_observed, sequential_experiment
from .plan import check_arms, check_schedule, round_size

__all__ = ["POLICIES", "simulate_sequential"]

POLICIES = ("sequential", "thompson", "uniform")
# The experiment id of every simulated experiment (it salts the assignment hash).
SIMULATION_ID = "pytyche-simulation"
COVARIATES = ("device", "age", "returning", "visits")
# Outcome noise of the simulated loop (outcomes are drawn around the true expected metric).
LOG_SPEND_SD = 0.6
NOISE_SD = 3.0


def _round_seed(seed: int, r: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(r), int(stream)]))


def _outcomes(truth: xr.Dataset, family: str, arm: np.ndarray, rng) -> np.ndarray:
    """Outcomes of the arms served, with common random numbers for every policy."""
    n = arm.size
    rows = np.arange(n)
    u = rng.random(n)
    z = rng.standard_normal(n)
    if family == "binary":
        return (u < truth["conversion"].values[rows, arm]).astype(np.float64)
    if family == "continuous":
        return truth["expected"].values[rows, arm] + NOISE_SD * z
    value = truth["value"].values[rows, arm]
    spend = np.exp(np.log(value) - LOG_SPEND_SD**2 / 2 + LOG_SPEND_SD * z)
    return np.where(u < truth["conversion"].values[rows, arm], spend, 0.0)


def simulate_sequential(
    scenario: str = "segmented",
    arms: Sequence[str] = ("control", "A", "B"),
    rounds: int = 4,
    schedule=("doubling", 5_000),
    seed: int = 0,
    *,
    family: str = "hurdle",
    fit_options: Mapping[str, Any] | None = None,
    **experiment_options,
) -> xr.Dataset:
    """Run a sequential experiment and two baselines against :func:`pytyche.simulate_experiment`.

    Every round draws fresh visitors with known truth; the same visitors and the same outcome
    noise (common random numbers) go to three policies:

    - ``"sequential"``: :func:`sequential_experiment` with the given options;
    - ``"thompson"``: the same, non-segmented (``max_segment_depth=0``: one segment);
    - ``"uniform"``: a uniform A/B test (every arm equally likely).

    After each round the adaptive policies record outcomes and advance; the off-policy (DR,
    or IPW before the first fit) estimate of the next plan on all logged visitors is reported
    beside its true value on those visitors.

    Parameters
    ----------
    scenario : {"segmented", "uniform", "null"}, default "segmented"
        The truth (see :func:`pytyche.simulate_experiment`).
    arms : sequence of str, default ("control", "A", "B")
        Arm names, control first.
    rounds : int, default 4
        Rounds to run.
    schedule : default ("doubling", 5_000)
        Round sizes, as :func:`sequential_experiment` takes them.
    seed : int, default 0
        Seeds the visitors, the outcomes and the experiments.
    family : {"hurdle", "binary", "continuous"}, default "hurdle"
    fit_options : mapping, optional
        Passed to the experiments (e.g. small forests for a quick run).
    **experiment_options
        Other :func:`sequential_experiment` options (``min_control_weight``, ...).

    Returns
    -------
    xarray.Dataset
        Dims ``policy``, ``round`` and ``segment`` (the planted segments of
        :func:`pytyche.planted_segments`). Variables: ``visitors`` (round);
        ``served_metric`` (mean true expected metric of the arms served) and
        ``oracle_metric`` (every visitor on their true best arm); ``regret`` (total over the
        round's visitors of oracle minus served) and ``cumulative_regret``;
        ``best_arm_share`` (policy, round, segment): share of each planted segment's traffic
        on its true best arm; ``ope_estimate``, ``ope_lower``, ``ope_upper`` and
        ``ope_true`` (value per visitor of the next plan on the logged visitors; NaN for the
        uniform baseline and after the last round); ``advance_seconds`` (the refit and
        plan) and ``round_seconds`` (assignment, recording, advance and off-policy estimate).

    Raises
    ------
    ValueError
        For a bad scenario, family, arms, rounds or schedule.

    Examples
    --------
    >>> result = simulate_sequential(rounds=1, schedule=600,
    ...                              fit_options={"n_draws": 20, "n_trees_mu": 10,
    ...                                           "n_trees_tau": 5, "num_threads": 1})
    >>> sorted(result["regret"].dims)
    ['policy', 'round']
    """
    arms = check_arms(list(arms))
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    plan_schedule = check_schedule(schedule)
    options = dict(fit_options or {})
    # One experiment id for the three policies: reproducible for a seed, and the same visitor
    # hashes alike under each (common random numbers).
    experiments = {
        "sequential": sequential_experiment(
            arms,
            family=family,
            schedule=schedule,
            fit_options=options,
            seed=seed,
            name=SIMULATION_ID,
            **experiment_options,
        ),
        "thompson": sequential_experiment(
            arms,
            family=family,
            schedule=schedule,
            fit_options=options,
            seed=seed,
            name=SIMULATION_ID,
            **{**experiment_options, "max_segment_depth": 0},
        ),
        "uniform": sequential_experiment(
            arms,
            family=family,
            schedule=schedule,
            seed=seed,
            name=SIMULATION_ID,
            min_control_weight=0.0,
            min_explore_weight=1.0,
        ),
    }
    segments = planted_segments()
    shape = (len(POLICIES), rounds)
    out = {
        name: np.full(shape, np.nan)
        for name in (
            "served_metric",
            "regret",
            "ope_estimate",
            "ope_lower",
            "ope_upper",
            "ope_true",
            "advance_seconds",
            "round_seconds",
        )
    }
    best_share = np.full((*shape, len(segments)), np.nan)
    visitors = np.zeros(rounds, dtype=np.int64)
    oracle = np.zeros(rounds)
    truth_log: dict[str, list[pd.DataFrame]] = {name: [] for name in POLICIES}
    for r in range(rounds):
        n = round_size(plan_schedule, r)
        _, truth = simulate_experiment(
            n,
            arms,
            family=family,
            scenario=scenario,
            seed=int(np.random.SeedSequence([seed, r]).generate_state(1)[0]),
        )
        ids = np.array([f"r{r}-v{i}" for i in range(n)], dtype=object)
        frame = pd.DataFrame({"visitor_id": ids, **{c: truth[c].values for c in COVARIATES}})
        metric = truth["metric"].values
        best = metric.argmax(axis=1)
        members = membership(segments, truth).values
        visitors[r] = n
        oracle[r] = metric.max(axis=1).mean()
        for p, name in enumerate(POLICIES):
            round_started = time.perf_counter()
            exp = experiments[name]
            plan = exp.plan()
            assigned = plan.assign(frame)
            arm = pd.Categorical(assigned["arm"], categories=arms).codes.astype(np.int64)
            assigned["outcome"] = _outcomes(truth, family, arm, _round_seed(seed, r, 1))
            served = metric[np.arange(n), arm]
            out["served_metric"][p, r] = served.mean()
            out["regret"][p, r] = (metric.max(axis=1) - served).sum()
            hit = arm == best
            best_share[p, r] = [hit[m].mean() if m.any() else np.nan for m in members]
            truth_log[name].append(
                pd.DataFrame(metric, index=pd.Index(ids.astype(str)), columns=list(arms))
            )
            if name == "uniform" or r == rounds - 1:
                out["round_seconds"][p, r] = time.perf_counter() - round_started
                continue
            exp.record(logged_observed(assigned))
            started = time.perf_counter()
            next_plan = exp.advance()
            out["advance_seconds"][p, r] = time.perf_counter() - started
            logged = exp.recorded()
            assert logged is not None  # exp.record was called just above
            estimator = "dr" if exp.posterior is not None else "ipw"
            ope = evaluate_policy(
                logged,
                next_plan,
                estimator=estimator,
                posterior=exp.posterior,
                n_bootstrap=100,
                seed=seed,
            )
            true_metric = (
                # Rows of the log are visits ("id@round"); the truth is kept by visitor id.
                pd.concat(truth_log[name]).loc[logged["visitor_id"].values.astype(str)].to_numpy()
            )
            pi = policy_probabilities(next_plan, logged, arms)
            out["ope_true"][p, r] = float((pi * true_metric).sum(axis=1).mean())
            for key in ("estimate", "lower", "upper"):
                out[f"ope_{key}"][p, r] = float(ope[key])
            out["round_seconds"][p, r] = time.perf_counter() - round_started
    dims = ("policy", "round")
    data: dict[str, tuple[str | tuple[str, ...], np.ndarray]] = {
        name: (dims, values) for name, values in out.items()
    }
    data["cumulative_regret"] = (dims, np.cumsum(out["regret"], axis=1))
    data["regret_per_visitor"] = (dims, out["regret"] / visitors)
    data["oracle_metric"] = ("round", oracle)
    data["visitors"] = ("round", visitors)
    data["best_arm_share"] = (("policy", "round", "segment"), best_share)
    return xr.Dataset(
        data,
        coords={
            "policy": list(POLICIES),
            "round": np.arange(rounds),
            "segment": [s.id for s in segments],
            "rule": ("segment", [str(s.rule) for s in segments]),
        },
        attrs={"scenario": scenario, "family": family, "arms": list(arms), "seed": int(seed)},
    )
