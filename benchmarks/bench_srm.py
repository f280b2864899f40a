"""Sample ratio checks when segments get different weights: false alarms and power.

    python benchmarks/bench_srm.py [--null-rounds 20000] [--rounds 2000] [--seed 0]

Not a timing. A numpy simulation of one round's assignment counts: visitors fall into two
segments (1/2 each); cells control 5% (always control), explore 5% (uniform), optimized 90%
with opposite weights: segment 0 80/20 control/treatment, segment 1 20/80. Each round's
counts per (segment, cell, arm) are multinomial given the segment's visitors; the expected
counts use the recorded visitors per segment, as ``SequentialExperiment.srm`` does. Three
checks of the same counts:

- per segment: ``pytyche.sequential.srm_test`` on (round, segment, cell, arm) counts
  (``flagged``, ``p_value``): one chi-square over every kept count, one degree of freedom
  less per segment;
- pooled (cell, arm): the same call's ``cell_arm_p_value``, the segments summed into one
  table (the check pytyche ran before);
- GrowthBook's formula: a chi-square goodness of fit of the visitors per arm (variation)
  against the traffic weights, variations - 1 degrees of freedom, flagged at p < 0.001 by
  default (``checkSrm`` in growthbook/growthbook packages/back-end/src/util/stats.ts and
  ``DEFAULT_SRM_THRESHOLD`` in packages/shared/src/constants.ts). Its weights here are each
  arm's expected share given the recorded segments (the most favourable choice).

Printed: under no mismatch, the false-alarm rate at p < 0.05 and p < 0.001 and the KS test
of the p-values against uniform; then the share of rounds flagged at p < 0.001 (and 0.05)
for mismatches at 50,000 and 200,000 visitors per round:

- "cell": 2% or 5% of the optimized cell's visitors lost (both segments, both arms);
- "cell, seg 1": the same loss in segment 1 only;
- "arm, seg 1": 2% or 5% of segment 1's optimized-cell control visitors (its 20% arm) lost;
- "segments ignored": the optimized cell served 50/50 to everyone (the segments' weights
  ignored), the size column giving nothing to drop.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import xarray as xr
from scipy.stats import chi2, kstest

from pytyche.sequential import srm_test

CELL_WEIGHTS = np.array([0.05, 0.05, 0.90])
OPTIMIZED = np.array([[0.8, 0.2], [0.2, 0.8]])  # (segment, arm) in the optimized cell
DIMS = ("round", "segment", "cell", "arm")


def plan_probabilities(optimized: np.ndarray = OPTIMIZED) -> np.ndarray:
    """P(cell, arm | segment), shape (segment, cell, arm)."""
    tables = [np.array([[1.0, 0.0], [0.5, 0.5], weights]) for weights in optimized]
    return CELL_WEIGHTS[None, :, None] * np.array(tables)


def simulate(rng, visitors: int, rounds: int, scenario: str, loss: float) -> np.ndarray:
    """Recorded counts (round, segment, cell, arm) under one mismatch scenario."""
    served = plan_probabilities(
        np.full((2, 2), 0.5) if scenario == "segments ignored" else OPTIMIZED
    )
    per_segment = rng.multinomial(visitors, [0.5, 0.5], size=rounds)
    counts = np.stack(
        [rng.multinomial(per_segment[:, s], served[s].ravel()) for s in range(2)], axis=1
    ).reshape(rounds, 2, 3, 2)
    if scenario == "cell":
        counts[:, :, 2] = rng.binomial(counts[:, :, 2], 1.0 - loss)
    elif scenario == "cell, seg 1":
        counts[:, 1, 2] = rng.binomial(counts[:, 1, 2], 1.0 - loss)
    elif scenario == "arm, seg 1":
        counts[:, 1, 2, 0] = rng.binomial(counts[:, 1, 2, 0], 1.0 - loss)
    return counts


def p_values(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-segment, pooled (cell, arm) and GrowthBook p-values of every round."""
    expected = counts.sum(axis=(2, 3))[:, :, None, None] * plan_probabilities()[None]
    check = srm_test(
        xr.DataArray(counts, dims=DIMS), xr.DataArray(expected, dims=DIMS), threshold=0.05
    )
    arm_users = counts.sum(axis=(1, 2)).astype(float)
    arm_expected = expected.sum(axis=(1, 2))
    statistic = ((arm_users - arm_expected) ** 2 / arm_expected).sum(axis=1)
    return {
        "per segment": check["p_value"].values,
        "pooled (cell, arm)": check["cell_arm_p_value"].values,
        "GrowthBook": chi2.sf(statistic, arm_users.shape[1] - 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null-rounds", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print("python benchmarks/bench_srm.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"\nNo mismatch, {args.null_rounds} rounds per size: false alarms, KS p-value")
    print(f"{'visitors':>9} {'test':<20} {'p<0.05':>7} {'p<0.001':>8} {'KS p':>9}")
    for visitors in (50_000, 200_000):
        found = p_values(simulate(rng, visitors, args.null_rounds, "none", 0.0))
        for name, p in found.items():
            ks = kstest(p, "uniform").pvalue
            print(
                f"{visitors:>9,} {name:<20} {np.mean(p < 0.05):>7.4f} "
                f"{np.mean(p < 0.001):>8.4f} {ks:>9.2g}"
            )
    print(f"\nPower, {args.rounds} rounds each: share flagged at p < 0.001 (at p < 0.05)")
    names = list(p_values(simulate(rng, 1000, 1, "none", 0.0)))
    print(f"{'scenario':<17} {'loss':>4} {'visitors':>9} " + "".join(f"{n:>22}" for n in names))
    cases = [(s, loss) for s in ("cell", "cell, seg 1", "arm, seg 1") for loss in (0.02, 0.05)]
    for scenario, loss in [*cases, ("segments ignored", 0.0)]:
        for visitors in (50_000, 200_000):
            found = p_values(simulate(rng, visitors, args.rounds, scenario, loss))
            row = "".join(
                f"{f'{np.mean(p < 0.001):.3f} ({np.mean(p < 0.05):.3f})':>22}"
                for p in found.values()
            )
            print(f"{scenario:<17} {loss:>4.0%} {visitors:>9,} {row}")


if __name__ == "__main__":
    main()
