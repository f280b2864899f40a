"""Calibration: can the allocation's weights and the summary's intervals be trusted?

Run by hand, not in CI::

    .venv/bin/python benchmarks/calibration.py --experiments 216 --out DIR --workers 2
    .venv/bin/python benchmarks/calibration.py --records DIR/calibration_records.json --out DIR

Simulates ``--experiments`` experiments with known truth (``pt.simulate_experiment``,
``"segmented"`` scenario), spread evenly over six configurations (binary, continuous, hurdle ×
K = 2 and 3 arms), each with its own seed; fits each with ``pt.fit`` (the library's default
forests and draws unless told otherwise, ``num_threads=1``) and summarizes the planted segments
(``pt.planted_segments()``) with ``pt.segment_summary(ci=0.8)``. For every experiment ×
planted segment the truth is the simulator's true per-visitor expected metric
(``truth["metric"]``) averaged over the segment's members (``pt.membership`` of the rule on the
same visitors), so the true best arm and the true segment-mean contrasts are known. It reports:

1. **Reliability** of ``prob_best`` (= ``thompson_allocation(..., epsilon=0)``): every
   (experiment, segment, arm) gives a pair (p, the arm is truly best); per bin of p, the count,
   the mean p, the observed frequency and its binomial standard error (and a standard error
   clustered by experiment: the pairs of one fit are not independent).
2. **Coverage** of the central 80% contrast intervals (``contrast_lower`` / ``contrast_upper``)
   of each treatment against control, per family × K, with binomial and clustered standard
   errors, the share of misses above and below, and the factor by which the intervals would
   have to be widened about their centres to cover 80% of the truths.
   Also per planted segment and treatment arm, with the share of misses whose interval lies on
   0's side of the truth (the fit shrank the contrast towards no effect, or past it).
3. Per configuration: the Brier score and expected calibration error of ``prob_best``, and how
   often the arm with the largest ``prob_best`` is truly best against the mean of that largest
   ``prob_best``.

``--chains`` and ``--burnin`` pass ``n_chains`` and ``n_burnin`` to ``pt.fit`` (defaults: the
library's, 1 and 0). ``--records`` re-tabulates a saved run without fitting anything.

Writes ``calibration_records.json`` (one record per experiment: seeds, sizes, timings, and per
segment the truth and the summary), ``calibration_summary.json`` (the tables) and
``calibration_reliability.png`` to ``--out``. Records are also appended to
``calibration_records.jsonl`` as experiments finish, so a run cut short keeps its work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np

FAMILIES = ("binary", "continuous", "hurdle")
ARM_SETS = {2: ("control", "A"), 3: ("control", "A", "B")}
CONFIGS = tuple((family, k) for family in FAMILIES for k in ARM_SETS)
# The realistic configuration: a 3-arm e-mail test, hurdle spend (scenario "email").
EMAIL = ("email", 3)
# Table rows: each configuration, then "all" (the six segmented configurations pooled).
TABLE_ROWS = (*CONFIGS, EMAIL, ("all", 0))
Z_CI = 1.2815515655446004  # the normal quantile of 0.9: an 80% interval is ±Z_CI sd


def config_of(rec: dict) -> tuple[str, int]:
    return EMAIL if rec.get("scenario") == "email" else (rec["family"], rec["k"])


def in_row(config: tuple[str, int], row: tuple[str, int]) -> bool:
    return config == row or (row[0] == "all" and config != EMAIL)


def planted(rec: dict) -> list[dict]:
    """The planted segments of a record (not the whole population)."""
    return [seg for seg in rec["segments"] if not seg.get("population")]


def side(records: list[dict], key: str) -> list[dict]:
    """The records with ``segments`` taken from ``key``: "segments" (after), "raw_segments"."""
    return [{**rec, "segments": rec[key]} for rec in records]
CI = 0.8
CI_WIDE = 0.95
N_BINS = 10


def run_one(task: dict) -> dict:
    """Simulate, fit and summarize one experiment; return its record (plain JSON types).

    One fit gives both sides: the forests' own posterior (``correction=None``, "before") and
    its doubly robust correction (``pt.doubly_robust``, the default of ``pt.fit``, "after"),
    so before and after share the simulation, the seed and the forests.
    """
    import dask

    import pytyche as pt

    family, k, seed = task["family"], task["k"], task["seed"]
    scenario = task.get("scenario", "segmented")
    arms = ARM_SETS[k]
    observed, truth = pt.simulate_experiment(
        task["visitors"], arms=arms, family=family, scenario=scenario, seed=seed
    )
    segments = pt.planted_segments(scenario)
    everyone = pt.DiscoveredSegment(len(segments), "everyone")
    start = time.perf_counter()
    cpu = time.process_time()
    with dask.config.set(scheduler="synchronous"):
        raw = pt.fit(
            observed,
            family=family,
            n_draws=task["draws"],
            n_chains=task.get("chains", 1),
            n_burnin=task.get("burnin", 0),
            n_trees_mu=task["trees_mu"],
            n_trees_tau=task["trees_tau"],
            num_threads=1,
            seed=seed,
            progress=False,
            correction=None,
        )
        fit_seconds = time.perf_counter() - start
        fit_cpu = time.process_time() - cpu
        corrected = pt.doubly_robust(raw, seed=seed)
        sides = {
            name: summaries(result, [*segments, everyone])
            for name, result in (("raw", raw), ("dr", corrected))
        }
    member = np.asarray(pt.membership([*segments, everyone], observed).values, dtype=bool)
    metric = np.asarray(truth["metric"].transpose("visitor", "arm").values, dtype=np.float64)
    outcome = observed["outcome"].values.astype(np.float64)
    code = {arm: i for i, arm in enumerate(arms)}
    served = np.array([code[v] for v in observed["variant"].values.astype(str)])
    records: dict[str, list[dict]] = {"raw": [], "dr": [], "dim": []}
    for i, segment in enumerate([*segments, everyone]):
        rows = member[i]
        true_metric = metric[rows].mean(axis=0)
        common = {
            "segment": int(segment.id),
            "rule": str(segment.rule),
            "population": segment is everyone,
            "members": int(rows.sum()),
            "true_metric": true_metric.tolist(),
            "true_contrast": (true_metric - true_metric[0]).tolist(),
            # The allocation's vote, applied to the truth: the largest positive contrast,
            # else control (ties to the earlier arm, as np.argmax).
            "true_best": int(np.argmax(true_metric)),
        }
        for name, tables in sides.items():
            records[name].append({**common, **side_record(tables, segment.id)})
        records["dim"].append({**common, **difference_in_means(outcome[rows], served[rows], k)})
    return {
        **task,
        "arms": list(arms),
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu,
        "segments": records["dr"],
        "raw_segments": records["raw"],
        "dim_segments": records["dim"],
    }


def summaries(result, segments) -> dict:
    import pytyche as pt

    return {ci: pt.segment_summary(result, segments, ci=ci).compute() for ci in (CI, CI_WIDE)}


def side_record(tables: dict, segment_id: int) -> dict:
    row, wide = (tables[ci].sel(segment=segment_id) for ci in (CI, CI_WIDE))

    def values(table, name):
        return table[name].values.astype(float).tolist()

    return {
        "summary_members": int(row["members"].values),
        "prob_best": values(row, "prob_best"),
        "prob_best_mcse": values(row, "prob_best_mcse"),
        "contrast": values(row, "contrast"),
        "contrast_lower": values(row, "contrast_lower"),
        "contrast_upper": values(row, "contrast_upper"),
        "contrast_lower_95": values(wide, "contrast_lower"),
        "contrast_upper_95": values(wide, "contrast_upper"),
    }


def difference_in_means(outcome: np.ndarray, served: np.ndarray, k: int) -> dict:
    """The randomized baseline: each arm's mean minus control's, with normal intervals."""
    from scipy.special import ndtri

    means = np.array([outcome[served == a].mean() for a in range(k)])
    var = np.array([outcome[served == a].var(ddof=1) / (served == a).sum() for a in range(k)])
    contrast = means - means[0]
    se = np.sqrt(var + var[0])
    se[0] = 0.0
    out = {"contrast": contrast.tolist(), "contrast_se": se.tolist()}
    for suffix, level in (("", CI), ("_95", CI_WIDE)):
        z = float(ndtri(0.5 + level / 2))
        out[f"contrast_lower{suffix}"] = (contrast - z * se).tolist()
        out[f"contrast_upper{suffix}"] = (contrast + z * se).tolist()
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def reliability_pairs(records: list[dict]):
    """(p, truly best, experiment index, family, K) for every experiment × segment × arm."""
    p, hit, cluster, config = [], [], [], []
    for n, rec in enumerate(records):
        for seg in planted(rec):
            for arm, prob in enumerate(seg["prob_best"]):
                if not math.isfinite(prob):
                    continue
                p.append(prob)
                hit.append(arm == seg["true_best"])
                cluster.append(n)
                config.append(config_of(rec))
    return np.array(p, float), np.array(hit, bool), np.array(cluster, int), config


def coverage_pairs(records: list[dict]) -> list[dict]:
    """One row per treatment contrast of every experiment × planted segment.

    ``z`` is |truth - centre| / half-width of the interval: the interval widened about its
    centre by a factor s covers the truth exactly when z <= s. ``toward_zero``: a miss whose
    interval lies on the side of the truth where 0 is (the fit shrank the contrast towards no
    effect, or past it).
    """
    rows = []
    for n, rec in enumerate(records):
        for seg in planted(rec):
            for arm in range(1, len(seg["true_contrast"])):
                lo, up = seg["contrast_lower"][arm], seg["contrast_upper"][arm]
                lo95, up95 = seg["contrast_lower_95"][arm], seg["contrast_upper_95"][arm]
                true = seg["true_contrast"][arm]
                if not (math.isfinite(lo) and math.isfinite(up)):
                    continue
                half = (up - lo) / 2.0
                above, below = true > up, true < lo
                rows.append(
                    {
                        "covered": lo <= true <= up,
                        "covered_95": lo95 <= true <= up95,
                        # Standardized error: (centre - truth) / sd, sd from the 80% interval.
                        "error_z": ((lo + up) / 2.0 - true) / (half / Z_CI) if half > 0 else 0.0,
                        "sign": math.copysign(1.0, true) if true else 0.0,
                        "width": up - lo,
                        "above": above,
                        "below": below,
                        "toward_zero": (above and true > 0) or (below and true < 0),
                        "z": abs(true - (lo + up) / 2.0) / half if half > 0 else math.inf,
                        "experiment": n,
                        "config": config_of(rec),
                        "family": rec["family"],
                        "k": rec["k"],
                        "scenario": rec.get("scenario", "segmented"),
                        "segment": seg["segment"],
                        "rule": seg["rule"],
                        "arm": rec["arms"][arm],
                    }
                )
    return rows


def clustered_se(hit: np.ndarray, cluster: np.ndarray) -> float:
    """Standard error of a pooled proportion, clustered by experiment (ratio estimator)."""
    if hit.size == 0:
        return math.nan
    ids, inverse = np.unique(cluster, return_inverse=True)
    g = ids.size
    if g < 2:
        return math.nan
    y = np.bincount(inverse, weights=hit.astype(float))
    m = np.bincount(inverse).astype(float)
    f = y.sum() / m.sum()
    return float(math.sqrt(g / (g - 1) * np.sum((y - f * m) ** 2)) / m.sum())


def binomial_se(f: float, n: int) -> float:
    return math.sqrt(f * (1.0 - f) / n) if n else math.nan


def reliability_table(records: list[dict]) -> list[dict]:
    p, hit, cluster, _ = reliability_pairs(records)
    index = np.minimum((p * N_BINS).astype(int), N_BINS - 1)
    table = []
    for b in range(N_BINS):
        inside = index == b
        n = int(inside.sum())
        freq = float(hit[inside].mean()) if n else math.nan
        table.append(
            {
                "bin": [b / N_BINS, (b + 1) / N_BINS],
                "count": n,
                "mean_p": float(p[inside].mean()) if n else math.nan,
                "frequency": freq,
                "se": binomial_se(freq, n) if n else math.nan,
                "se_clustered": clustered_se(hit[inside], cluster[inside]),
            }
        )
    return table


def coverage_row(chosen: list[dict]) -> dict:
    n = len(chosen)
    covered = np.array([r["covered"] for r in chosen], bool)
    cluster = np.array([r["experiment"] for r in chosen], int)
    f = float(covered.mean())
    missed = n - int(covered.sum())
    return {
        "experiments": len(set(cluster.tolist())),
        "contrasts": n,
        "coverage": f,
        "se": binomial_se(f, n),
        "se_clustered": clustered_se(covered, cluster),
        "miss_above": float(np.mean([r["above"] for r in chosen])),
        "miss_below": float(np.mean([r["below"] for r in chosen])),
        # Of the misses, the share whose interval lies on 0's side of the truth.
        "misses_toward_zero": (
            sum(r["toward_zero"] for r in chosen) / missed if missed else math.nan
        ),
        # Widen every interval about its centre by this factor to cover 80% of truths.
        "widen_for_nominal": float(np.quantile([r["z"] for r in chosen], CI)),
        "coverage_95": float(np.mean([r["covered_95"] for r in chosen])),
        # Bias in standard errors: the mean of (centre - truth) / sd, and its standard error.
        "bias_z": float(np.mean([r["error_z"] for r in chosen])),
        "bias_z_se": float(np.std([r["error_z"] for r in chosen], ddof=1) / math.sqrt(n))
        if n > 1
        else math.nan,
        # The same error signed away from 0: negative when estimates are shrunk toward 0
        # (positive and negative truths do not cancel here).
        "outward_z": float(np.mean([r["sign"] * r["error_z"] for r in chosen])),
        "outward_z_se": float(np.std([r["sign"] * r["error_z"] for r in chosen], ddof=1))
        / math.sqrt(n)
        if n > 1
        else math.nan,
    }


def sharpness_table(records: list[dict]) -> list[dict]:
    """Median interval width of each side against the per-segment difference in means."""
    table = []
    for family, k in TABLE_ROWS:
        ratios: dict[str, list[float]] = {"dr": [], "raw": []}
        for rec in records:
            if not in_row(config_of(rec), (family, k)):
                continue
            for key, name in (("segments", "dr"), ("raw_segments", "raw")):
                for seg, dim in zip(rec[key], rec["dim_segments"], strict=True):
                    if seg.get("population"):
                        continue
                    for arm in range(1, rec["k"]):
                        width = seg["contrast_upper"][arm] - seg["contrast_lower"][arm]
                        baseline = dim["contrast_upper"][arm] - dim["contrast_lower"][arm]
                        ratios[name].append(width / baseline)
        if ratios["dr"]:
            table.append(
                {
                    "family": family,
                    "k": k,
                    "contrasts": len(ratios["dr"]),
                    "dr_over_dim": float(np.median(ratios["dr"])),
                    "raw_over_dim": float(np.median(ratios["raw"])),
                }
            )
    return table


def population_table(records: list[dict]) -> list[dict]:
    """The whole-population lift of each treatment: truth, difference in means, both sides."""
    table = []
    for family, k in TABLE_ROWS:
        rows = []
        for rec in records:
            if not in_row(config_of(rec), (family, k)):
                continue
            [dim] = [seg for seg in rec["dim_segments"] if seg.get("population")]
            [dr] = [seg for seg in rec["segments"] if seg.get("population")]
            [raw] = [seg for seg in rec["raw_segments"] if seg.get("population")]
            for arm in range(1, rec["k"]):
                se = dim["contrast_se"][arm]
                rows.append(
                    (
                        dim["true_contrast"][arm],
                        dim["contrast"][arm],
                        raw["contrast"][arm],
                        dr["contrast"][arm],
                        (raw["contrast"][arm] - dim["contrast"][arm]) / se,
                        (dr["contrast"][arm] - dim["contrast"][arm]) / se,
                        raw["contrast_lower_95"][arm] <= dim["true_contrast"][arm]
                        <= raw["contrast_upper_95"][arm],
                        dr["contrast_lower_95"][arm] <= dim["true_contrast"][arm]
                        <= dr["contrast_upper_95"][arm],
                    )
                )
        if not rows:
            continue
        values = np.array(rows, dtype=float)
        true, dim_mean, raw_mean, dr_mean = values[:, :4].mean(axis=0)
        table.append(
            {
                "family": family,
                "k": k,
                "lifts": len(rows),
                "true": float(true),
                "dim": float(dim_mean),
                "raw": float(raw_mean),
                "dr": float(dr_mean),
                # Mean distance from the difference in means, in its standard errors.
                "raw_minus_dim_se": float(values[:, 4].mean()),
                "dr_minus_dim_se": float(values[:, 5].mean()),
                "raw_coverage_95": float(values[:, 6].mean()),
                "dr_coverage_95": float(values[:, 7].mean()),
            }
        )
    return table


def coverage_table(records: list[dict]) -> list[dict]:
    rows = coverage_pairs(records)
    table = []
    for family, k in TABLE_ROWS:
        chosen = [r for r in rows if in_row(r["config"], (family, k))]
        if chosen:
            table.append({"family": family, "k": k, **coverage_row(chosen)})
    return table


def coverage_by_segment(records: list[dict]) -> list[dict]:
    """Coverage per planted segment and treatment arm, all families and K pooled."""
    rows = coverage_pairs(records)
    keys = sorted({(r["scenario"], r["segment"], r["rule"], r["arm"]) for r in rows})
    table = []
    for _, segment, rule, arm in keys:
        chosen = [r for r in rows if (r["rule"], r["arm"]) == (rule, arm)]
        table.append({"segment": segment, "rule": rule, "arm": arm, **coverage_row(chosen)})
    return table


def per_config_table(records: list[dict]) -> list[dict]:
    p, hit, _, config = reliability_pairs(records)
    index = np.minimum((p * N_BINS).astype(int), N_BINS - 1)
    table = []
    for family, k in TABLE_ROWS:
        mask = np.array([in_row(c, (family, k)) for c in config], bool)
        if not mask.any():
            continue
        pm, hm, im = p[mask], hit[mask], index[mask]
        ece = (
            sum(
                abs(pm[im == b].mean() - hm[im == b].mean()) * (im == b).sum()
                for b in range(N_BINS)
                if (im == b).any()
            )
            / mask.sum()
        )
        # Top arm: the arm with the largest prob_best in each experiment × segment.
        top_p, top_hit = [], []
        for rec in records:
            if not in_row(config_of(rec), (family, k)):
                continue
            for seg in planted(rec):
                probs = np.asarray(seg["prob_best"], float)
                if not np.isfinite(probs).all():
                    continue
                top = int(np.argmax(probs))
                top_p.append(probs[top])
                top_hit.append(top == seg["true_best"])
        table.append(
            {
                "family": family,
                "k": k,
                "pairs": int(mask.sum()),
                "brier": float(np.mean((pm - hm) ** 2)),
                "ece": float(ece),
                "segments": len(top_p),
                "top_mean_p": float(np.mean(top_p)),
                "top_correct": float(np.mean(top_hit)),
                "top_se": binomial_se(float(np.mean(top_hit)), len(top_hit)),
            }
        )
    return table


def shrinkage_table(records: list[dict]) -> list[dict]:
    """Mean true and posterior-mean contrast, and interval width, per config × segment × arm."""
    groups: dict[tuple, list] = {}
    for rec in records:
        for seg, dim in zip(rec["segments"], rec["dim_segments"], strict=True):
            for arm in range(1, rec["k"]):
                key = (*config_of(rec), seg["segment"], rec["arms"][arm])
                width = seg["contrast_upper"][arm] - seg["contrast_lower"][arm]
                groups.setdefault(key, []).append(
                    (seg["true_contrast"][arm], seg["contrast"][arm], width, dim["contrast"][arm])
                )
    table = []
    for (family, k, segment, arm), values in sorted(groups.items()):
        true, post, width, dim = np.nanmean(np.array(values, float), axis=0)
        table.append(
            {
                "family": family,
                "k": k,
                "segment": segment,
                "arm": arm,
                "n": len(values),
                "true_contrast": float(true),
                "posterior_contrast": float(post),
                "dim_contrast": float(dim),
                "interval_width": float(width),
            }
        )
    return table


def top_arm_by_segment(records: list[dict]) -> list[dict]:
    """Per planted segment (families and K pooled): the largest prob_best against its hits."""
    table = []
    keys = sorted(
        {(rec.get("scenario", "segmented"), s["segment"]) for rec in records for s in planted(rec)}
    )
    for scenario, segment in keys:
        top_p, top_hit, rule = [], [], ""
        for rec in records:
            if rec.get("scenario", "segmented") != scenario:
                continue
            for seg in planted(rec):
                probs = np.asarray(seg["prob_best"], float)
                if seg["segment"] != segment or not np.isfinite(probs).all():
                    continue
                rule = seg["rule"]
                top = int(np.argmax(probs))
                top_p.append(probs[top])
                top_hit.append(top == seg["true_best"])
        f = float(np.mean(top_hit))
        table.append(
            {
                "segment": segment,
                "rule": rule,
                "segments": len(top_p),
                "top_mean_p": float(np.mean(top_p)),
                "top_correct": f,
                "top_se": binomial_se(f, len(top_hit)),
            }
        )
    return table


def fmt(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def print_tables(reliability, coverage, configs, by_segment, top_by_segment, shrinkage) -> None:
    print("\nreliability of prob_best (every experiment × planted segment × arm)")
    print(f"  {'bin of p':<12} {'count':>6} {'mean p':>7} {'freq':>7} {'se':>6} {'se(cl)':>7}")
    for row in reliability:
        lo, hi = row["bin"]
        label = f"[{lo:.1f}, {hi:.1f}" + ("]" if hi == 1.0 else ")")
        print(
            f"  {label:<12} {row['count']:>6} {fmt(row['mean_p']):>7} {fmt(row['frequency']):>7} "
            f"{fmt(row['se']):>6} {fmt(row['se_clustered']):>7}"
        )
    print(f"\ncoverage of the {CI:.0%} contrast intervals (each treatment vs control)")
    print(
        f"  {'family':<10} {'K':>2} {'exps':>5} {'n':>5} {'coverage':>9} {'se':>6} {'se(cl)':>7} "
        f"{'above':>6} {'below':>6} {'to 0':>5} {'widen':>6} {'cov95':>6} {'bias z':>7} {'se':>5} "
        f"{'out z':>6}"
    )
    for row in coverage:
        k = "" if row["family"] == "all" else row["k"]
        print(
            f"  {row['family']:<10} {k:>2} {row['experiments']:>5} {row['contrasts']:>5} "
            f"{fmt(row['coverage']):>9} {fmt(row['se']):>6} {fmt(row['se_clustered']):>7} "
            f"{fmt(row['miss_above']):>6} {fmt(row['miss_below']):>6} "
            f"{fmt(row['misses_toward_zero'], '.2f'):>5} {fmt(row['widen_for_nominal'], '.2f'):>6} "
            f"{fmt(row['coverage_95']):>6} {fmt(row['bias_z'], '+.3f'):>7} "
            f"{fmt(row['bias_z_se'], '.3f'):>5} {fmt(row['outward_z'], '+.3f'):>6}"
        )
    print("  (above/below: truth above/below the interval; to 0: share of the misses whose")
    print("  interval lies on 0's side of the truth; widen: factor about the centre for 80%;")
    print("  cov95: coverage of the 95% intervals; bias z: mean (centre - truth) / sd, its se;")
    print("  out z: the same signed away from 0, negative when estimates shrink toward 0)")
    print("\ncoverage per planted segment and arm (families and K pooled)")
    print(f"  {'segment':<38} {'arm':<4} {'n':>4} {'coverage':>9} {'se(cl)':>7} {'to 0':>5}")
    for row in by_segment:
        label = f"{row['segment']}: {row['rule']}"
        print(
            f"  {label:<38} {row['arm']:<4} {row['contrasts']:>4} {fmt(row['coverage']):>9} "
            f"{fmt(row['se_clustered']):>7} {fmt(row['misses_toward_zero'], '.2f'):>5}"
        )
    print("\nprob_best per configuration")
    print(
        f"  {'family':<10} {'K':>2} {'pairs':>6} {'brier':>6} {'ECE':>6} "
        f"{'segs':>5} {'top p':>6} {'top ok':>7} {'se':>6}"
    )
    for row in configs:
        k = "" if row["family"] == "all" else row["k"]
        print(
            f"  {row['family']:<10} {k:>2} {row['pairs']:>6} {fmt(row['brier']):>6} "
            f"{fmt(row['ece']):>6} {row['segments']:>5} {fmt(row['top_mean_p']):>6} "
            f"{fmt(row['top_correct']):>7} {fmt(row['top_se']):>6}"
        )
    print("\nthe arm with the largest prob_best, per planted segment (families and K pooled)")
    print(f"  {'segment':<38} {'n':>4} {'top p':>6} {'top ok':>7} {'se':>6}")
    for row in top_by_segment:
        label = f"{row['segment']}: {row['rule']}"
        print(
            f"  {label:<38} {row['segments']:>4} {fmt(row['top_mean_p']):>6} "
            f"{fmt(row['top_correct']):>7} {fmt(row['top_se']):>6}"
        )
    print("  (top p: mean of the largest prob_best; top ok: share where that arm is truly best)")
    print("\nmean true contrast, posterior-mean contrast, difference in means, 80% width")
    print(
        f"  {'family':<10} {'K':>2} {'seg':>3} {'arm':<4} {'n':>3} "
        f"{'true':>8} {'post':>8} {'DiM':>8} {'width':>8}"
    )
    for row in shrinkage:
        print(
            f"  {row['family']:<10} {row['k']:>2} {row['segment']:>3} {row['arm']:<4} "
            f"{row['n']:>3} {row['true_contrast']:>8.4f} {row['posterior_contrast']:>8.4f} "
            f"{row['dim_contrast']:>8.4f} {row['interval_width']:>8.4f}"
        )
    print("  (segment 4 of the segmented scenario and 2 of email: everyone)")


def print_comparisons(dim_coverage, sharpness, population) -> None:
    print("\nthe randomized baseline (difference in means per segment, normal intervals)")
    print(f"  {'family':<10} {'K':>2} {'n':>5} {'coverage':>9} {'cov95':>6} {'bias z':>7}")
    for row in dim_coverage:
        k = "" if row["family"] == "all" else row["k"]
        print(
            f"  {row['family']:<10} {k:>2} {row['contrasts']:>5} {fmt(row['coverage']):>9} "
            f"{fmt(row['coverage_95']):>6} {fmt(row['bias_z'], '+.3f'):>7}"
        )
    print("\nmedian 80% interval width against the difference in means' (same data)")
    print(f"  {'family':<10} {'K':>2} {'n':>5} {'after':>7} {'before':>7}")
    for row in sharpness:
        k = "" if row["family"] == "all" else row["k"]
        print(
            f"  {row['family']:<10} {k:>2} {row['contrasts']:>5} {row['dr_over_dim']:>7.3f} "
            f"{row['raw_over_dim']:>7.3f}"
        )
    print("\nwhole-population lift (mean over experiments and treatments)")
    print(
        f"  {'family':<10} {'K':>2} {'n':>4} {'truth':>9} {'DiM':>9} {'before':>9} {'after':>9} "
        f"{'b-DiM/se':>9} {'a-DiM/se':>9} {'b cov95':>8} {'a cov95':>8}"
    )
    for row in population:
        k = "" if row["family"] == "all" else row["k"]
        print(
            f"  {row['family']:<10} {k:>2} {row['lifts']:>4} {row['true']:>9.4f} "
            f"{row['dim']:>9.4f} {row['raw']:>9.4f} {row['dr']:>9.4f} "
            f"{row['raw_minus_dim_se']:>+9.3f} {row['dr_minus_dim_se']:>+9.3f} "
            f"{row['raw_coverage_95']:>8.3f} {row['dr_coverage_95']:>8.3f}"
        )


def plot(reliability, coverage, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.15, 1]})
    rows = [r for r in reliability if r["count"]]
    mean_p = [r["mean_p"] for r in rows]
    freq = [r["frequency"] for r in rows]
    err = [1.96 * max(r["se"], r["se_clustered"] or 0.0) for r in rows]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    ax.errorbar(mean_p, freq, yerr=err, fmt="o-", color="C0", capsize=3, label="pytyche")
    for r in rows:
        ax.annotate(
            f"{r['count']}",
            (r["mean_p"], r["frequency"]),
            textcoords="offset points",
            xytext=(5, -11),
            fontsize=7,
            color="0.35",
        )
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("prob_best (mean in bin of width 0.1)")
    ax.set_ylabel("share truly best")
    ax.set_title("Reliability of prob_best (numbers: pairs per bin)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_aspect("equal")

    rows = [r for r in coverage if r["family"] != "all"]
    labels = [f"{r['family']}\nK={r['k']}" for r in rows]
    values = [r["coverage"] for r in rows]
    err = [1.96 * max(r["se"], r["se_clustered"] or 0.0) for r in rows]
    x = np.arange(len(rows))
    ax2.errorbar(x, values, yerr=err, fmt="o", color="C1", capsize=4)
    ax2.axhline(CI, color="0.6", ls="--", lw=1, label=f"nominal {CI:.0%}")
    ax2.set_xticks(x, labels, fontsize=8)
    low = min([*values, CI]) - 0.15
    ax2.set_ylim(max(0.0, low), 1.0)
    ax2.set_ylabel("coverage of the true segment contrast")
    ax2.set_title(f"{CI:.0%} contrast intervals (±1.96 se)", fontsize=10)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=216, help="spread over 6 configs")
    parser.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    parser.add_argument("--visitors", type=int, default=2_000)
    parser.add_argument(
        "--email", type=int, default=0, help="experiments of the realistic e-mail configuration"
    )
    parser.add_argument("--email-visitors", type=int, default=64_000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--burnin", type=int, default=0)
    parser.add_argument("--trees-mu", type=int, default=200)
    parser.add_argument("--trees-tau", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="experiment i uses seed S*100000+i")
    parser.add_argument("--workers", type=int, default=1, help="processes (1: in this one)")
    parser.add_argument(
        "--records",
        type=Path,
        nargs="+",
        help="tabulate saved calibration_records.json files (runs pooled); fit nothing",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.records:
        records = []
        for path in args.records:
            saved = json.loads(path.read_text())
            meta = saved["meta"]
            records += saved["records"]
            print(f"records of: {meta['command']} (started {meta['started_utc']})")
    else:
        meta, records = run(args)
    tables = {}
    sides = (("before (correction=None)", "raw_segments"), ("after (doubly robust)", "segments"))
    for name, key in sides:
        view = side(records, key)
        print(f"\n======== {name} ========")
        part = {
            "reliability": reliability_table(view),
            "coverage": coverage_table(view),
            "per_config": per_config_table(view),
            "coverage_by_segment": coverage_by_segment(view),
            "top_arm_by_segment": top_arm_by_segment(view),
            "contrast_by_segment": shrinkage_table(view),
        }
        print_tables(*part.values())
        tables["after" if key == "segments" else "before"] = part
    tables["dim_coverage"] = coverage_table(side(records, "dim_segments"))
    tables["sharpness"] = sharpness_table(records)
    tables["population"] = population_table(records)
    print_comparisons(tables["dim_coverage"], tables["sharpness"], tables["population"])
    fit_seconds = [r["fit_seconds"] for r in records]
    print(
        f"\nwall time {meta['wall_seconds']:.0f} s; per fit (simulation excluded, summary "
        f"included) median {np.median(fit_seconds):.1f} s, max {np.max(fit_seconds):.1f} s"
    )
    if not args.records:
        print(f"load average after {os.getloadavg()[0]:.2f}")
        (args.out / "calibration_records.json").write_text(
            json.dumps({"meta": meta, "records": records}, indent=1)
        )
    (args.out / "calibration_summary.json").write_text(
        json.dumps({"meta": meta, **tables}, indent=1)
    )
    chains = f", {meta['chains']} chains" if meta.get("chains", 1) > 1 else ""
    email = sum(rec.get("scenario") == "email" for rec in records)
    extra = f" + {email} e-mail experiments ({meta['email_visitors']:,} visitors)" if email else ""
    title = (
        f"After the doubly robust correction: {len(records) - email} simulated experiments "
        f"(binary/continuous/hurdle × K=2,3, {meta['visitors']:,} visitors){extra}, "
        f"{meta['draws']} draws{chains} each"
    )
    after = tables["after"]
    plot(after["reliability"], after["coverage"], args.out / "calibration_reliability.png", title)
    print(f"wrote calibration_records.json, calibration_summary.json, *.png to {args.out}")


def run(args) -> tuple[dict, list[dict]]:
    """Simulate and fit every experiment; return the run's metadata and records."""
    command = "python benchmarks/calibration.py " + " ".join(sys.argv[1:])
    started = datetime.now(UTC)
    print(f"command: {command}")
    print(
        f"started {started:%Y-%m-%d %H:%M} UTC on {platform.node() or '?'} "
        f"({os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.experiments} experiments over {len(CONFIGS)} configurations, "
        f"{args.visitors:,} visitors, {args.draws} draws × {args.chains} chain(s), "
        f"{args.burnin} burn-in, {args.trees_mu}/{args.trees_tau} trees (μ/τ), "
        f"{args.workers} worker(s)"
    )
    fit = {
        "draws": args.draws,
        "chains": args.chains,
        "burnin": args.burnin,
        "trees_mu": args.trees_mu,
        "trees_tau": args.trees_tau,
    }
    tasks = [
        {
            "index": i,
            "family": CONFIGS[i % len(CONFIGS)][0],
            "k": CONFIGS[i % len(CONFIGS)][1],
            "seed": args.seed * 100_000 + i,
            "visitors": args.visitors,
            **fit,
        }
        for i in range(args.experiments)
    ]
    tasks += [
        {
            **fit,
            "index": args.experiments + j,
            "family": "hurdle",
            "k": 3,
            "scenario": "email",
            "seed": args.seed * 100_000 + j,
            "visitors": args.email_visitors,
        }
        for j in range(args.email)
    ]
    # The slow e-mail fits first, so the workers end together.
    tasks.sort(key=lambda t: t.get("scenario") != "email")
    partial = args.out / "calibration_records.jsonl"
    partial.write_text("")
    records = []
    wall = time.perf_counter()

    def done(record: dict) -> None:
        records.append(record)
        with partial.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        n = len(records)
        if n == len(tasks) or n % max(1, len(tasks) // 20) == 0:
            elapsed = time.perf_counter() - wall
            print(f"  {n}/{len(tasks)} experiments, {elapsed:.0f} s", flush=True)

    if args.workers <= 1:
        for task in tasks:
            done(run_one(task))
    else:
        # One stochtree / BLAS / numba thread per process: the workers share the cores.
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        os.environ["NUMBA_NUM_THREADS"] = "1"
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run_one, t) for t in tasks]):
                done(future.result())
    records.sort(key=lambda r: r["index"])
    meta = {
        "command": command,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - wall,
        "cores": os.cpu_count(),
        "experiments": len(records),
        "visitors": args.visitors,
        "email_experiments": args.email,
        "email_visitors": args.email_visitors,
        "draws": args.draws,
        "chains": args.chains,
        "burnin": args.burnin,
        "trees_mu": args.trees_mu,
        "trees_tau": args.trees_tau,
        "workers": args.workers,
        "ci": CI,
    }
    return meta, records


if __name__ == "__main__":
    main()
