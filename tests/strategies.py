"""Hypothesis strategies shared by the tests: posteriors with segments, and chunkings."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import pytyche as pt

from helpers import random_dataset

CANDIDATE_RULES = [
    "everyone",
    "device == 'mobile'",
    "device != 'mobile'",
    "device in ('desktop', 'tablet') and age > 30",
    "age <= 45",
    "returning == True",
    "returning == False and age > 25",
]


@st.composite
def posteriors(draw):
    ds = random_dataset(
        family=draw(st.sampled_from(["binary", "continuous", "hurdle"])),
        n_visitors=draw(st.integers(8, 40)),
        n_arms=draw(st.integers(2, 5)),
        n_draws=draw(st.integers(1, 12)),
        n_chains=draw(st.sampled_from([None, 1, 2])),
        seed=draw(st.integers(0, 2**32 - 1)),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
    )
    rules = draw(st.lists(st.sampled_from(CANDIDATE_RULES), min_size=1, max_size=5, unique=True))
    ids = draw(st.permutations(range(len(rules))))
    segments = [pt.DiscoveredSegment(i, rule) for i, rule in zip(ids, rules, strict=True)]
    members = pt.membership(segments, pt.posterior(ds).observed).sum("visitor")
    assume(bool((members > 0).all()))
    return ds, segments


@st.composite
def chunkings(draw, ds):
    """Random chunk sizes along every dim of the posterior."""

    def split(n):
        cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4, unique=True))
        edges = [0, *sorted(c for c in cuts if c < n), n]
        return tuple(b - a for a, b in itertools.pairwise(edges) if b > a)

    return {dim: split(size) for dim, size in ds.sizes.items()}


epsilons = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))


# Typed rules over fixed covariates, and visitors' values for them (missing ones included):
# for checking a rule's translations against pt.membership.
RULE_COVARIATES = {"age": "number", "device": "text", "returning": "bool"}
rule_numbers = st.one_of(
    st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False)
)
rule_texts = st.one_of(
    st.sampled_from(["mobile", "desktop", "", "$in", "a.b"]),
    # NUL is refused in literals (test_segments.py): numpy's text drops trailing NULs.
    st.text(st.characters(exclude_characters="\x00"), max_size=4),
)
_RULE_VALUES = {"number": rule_numbers, "text": rule_texts, "bool": st.booleans()}


@st.composite
def typed_clauses(draw):
    """A clause on one of RULE_COVARIATES with literals of its kind."""
    name = draw(st.sampled_from(sorted(RULE_COVARIATES)))
    kind = RULE_COVARIATES[name]
    ops = ["==", "!=", "in", "not in"] + (["<", "<=", ">", ">="] if kind == "number" else [])
    op = draw(st.sampled_from(ops))
    values = _RULE_VALUES[kind]
    if op in ("in", "not in"):
        return pt.Clause(name, op, tuple(draw(st.lists(values, min_size=1, max_size=3))))
    return pt.Clause(name, op, draw(values))


typed_rules = st.lists(typed_clauses(), max_size=4).map(lambda cs: pt.SegmentRule(tuple(cs)))
# A visitor's value of a covariate: of its kind, or missing (None; NaN too for numbers).
_MISSING = st.sampled_from([None, float("nan")])
covariate_values = {
    "number": st.one_of(_MISSING, rule_numbers, st.sampled_from([float("inf"), float("-inf")])),
    "text": st.one_of(st.none(), rule_texts),
    "bool": st.one_of(st.none(), st.booleans()),
}
