"""Stickiness across plans: which returning visitors switch arm when the weights change.

Inside a cell, the arms' weights are laid out as cumulative intervals in arm order and a
visitor's fixed uniform ``u`` picks the interval that holds it. From one plan to the next, an
arm whose old interval is [a, b) and new one [c, d) keeps the visitors whose ``u`` lies in
both: the share that switches is 1 - |[a, b) ∩ [c, d)| / (b - a).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pytyche.sequential import RoundPlan

ARMS = ["control", "A", "B"]
N = 100_000


def plan(weights: dict[str, float]) -> RoundPlan:
    """Everyone in the optimized cell, one segment, these arm weights."""
    return RoundPlan(
        round=1,
        size=N,
        arms=ARMS,
        active=ARMS,
        cells={"control": 0.0, "explore": 0.0, "optimized": 1.0},
        segments={0: "everyone"},
        optimized={0: weights, -1: weights},
        status="optimized",
        seed=3,
    )


@pytest.fixture(scope="module")
def visitors() -> pd.DataFrame:
    return pd.DataFrame({"visitor_id": [f"v{i}" for i in range(N)]})


def switched_share(before: dict, after: dict) -> dict[str, float]:
    """The share of each arm's visitors that the exact interval arithmetic says switch."""
    edges = {}
    for name, weights in (("before", before), ("after", after)):
        ends = np.cumsum([weights[a] for a in ARMS])
        edges[name] = {a: (e - weights[a], e) for a, e in zip(ARMS, ends, strict=True)}
    share = {}
    for arm in ARMS:
        (a, b), (c, d) = edges["before"][arm], edges["after"][arm]
        if b > a:
            share[arm] = 1.0 - max(0.0, min(b, d) - max(a, c)) / (b - a)
    return share


def measured(visitors, before: dict, after: dict) -> tuple[pd.Series, pd.Series]:
    first = plan(before).assign(visitors)["arm"]
    second = plan(after).assign(visitors)["arm"]
    return first, second


def test_weight_moving_to_earlier_arms_still_moves_a_later_arms_visitors(visitors):
    # B's weight goes to control and A. A's weight grows (0.40 -> 0.62), yet control's interval
    # grows too and pushes A's start from 0.25 to 0.38: A's visitors in [0.25, 0.38) go to
    # control, 0.13 / 0.40 = 32.5% of them.
    before = {"control": 0.25, "A": 0.40, "B": 0.35}
    after = {"control": 0.38, "A": 0.62, "B": 0.0}
    first, second = measured(visitors, before, after)
    was_a = first == "A"
    moved = float((second[was_a] != "A").mean())
    print(f"A's visitors that switch: {moved:.4f} (exact 0.325)")
    assert switched_share(before, after)["A"] == pytest.approx(0.325)
    assert moved == pytest.approx(0.325, abs=4 * np.sqrt(0.325 * 0.675 / was_a.sum()))
    assert set(second[was_a & (second != "A")]) == {"control"}
    # Control's interval only grew at its end: every control visitor keeps control.
    assert (second[first == "control"] == "control").all()


CHANGES = [
    # A's start fixed and its weight grown: A keeps everyone; B's start moves right.
    ({"control": 0.2, "A": 0.3, "B": 0.5}, {"control": 0.2, "A": 0.5, "B": 0.3}),
    # Weight from control to B: A's interval moves left, B's start moves left and it grows.
    ({"control": 0.5, "A": 0.3, "B": 0.2}, {"control": 0.2, "A": 0.3, "B": 0.5}),
    # Every arm changes; A's old and new intervals barely overlap.
    ({"control": 0.1, "A": 0.3, "B": 0.6}, {"control": 0.35, "A": 0.1, "B": 0.55}),
]


@pytest.mark.parametrize(("before", "after"), CHANGES)
def test_the_share_that_switches_is_the_old_interval_outside_the_new_one(visitors, before, after):
    first, second = measured(visitors, before, after)
    exact = switched_share(before, after)
    for arm, share in exact.items():
        was = first == arm
        moved = float((second[was] != arm).mean())
        print(f"{arm}: switched {moved:.4f}, exact {share:.4f}")
        tolerance = 4 * np.sqrt(max(share * (1 - share), 1e-4) / was.sum())
        assert moved == pytest.approx(share, abs=tolerance)
        if share == 0.0:  # the new interval holds the old one: nobody switches
            assert moved == 0.0
