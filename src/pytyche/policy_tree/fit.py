"""The fit: Γ̄ from the posterior, the search, bootstrap stability and the leaf summaries.

The objective is the posterior expected metric of the policy "serve each leaf its best arm".
It is linear in the posterior, so it only needs the posterior-mean metric of every visitor
and arm, Γ̄[visitor, arm]: a leaf's value is the largest, over arms, of the sum of Γ̄ over its
members. :func:`fit_policy_tree` makes two passes over the posterior (two dask computes on a
dask-backed one):

1. Γ̄ and the covariates (:func:`posterior_mean_metric`). Γ̄ reduces each visitor over its
   draws, not visitors into segments, so it has its own per-visitor kernel
   (``pytyche.policy_tree._kernels.posterior_mean_block``) rather than the allocation's segment
   reduction.
2. The leaf summaries, through :func:`pytyche.analysis.segment_summary` (the allocation's
   reduction).

Between the two, :func:`search_tree` works in memory on the contrasts
``Γ̄[:, k] - Γ̄[:, control]`` (so that control is exactly 0 and wins ties, as in the
allocation) and the binned covariates (:mod:`pytyche.policy_tree.binning`,
:mod:`pytyche.policy_tree.search`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import dask
import dask.array as da
import numpy as np

from .._config import get_options, worker_threads
from .._validate import check_choice, check_count, check_probability
from ..results import VISITOR, BCFResult, check_posterior
from ..segments import DiscoveredSegment, ordered_levels
from ..summary import segment_summary
from ._kernels import posterior_mean_block
from .binning import Feature, bin_features, select_features
from .result import PolicyTreeResult, describe_tree, path_rule
from .search import (
    Node,
    Search,
    SplitLayout,
    exact_work,
    leaf_labels,
    leaf_value_and_arm,
    tree_depth,
    tree_leaves,
)

__all__ = [
    "GATE_CI",
    "MAX_DEPTH",
    "MIN_STABILITY",
    "SEARCHES",
    "STABILITY_JACCARD",
    "TreeSearch",
    "fit_policy_tree",
    "min_segment_count",
    "posterior_mean_metric",
    "search_tree",
    "stability_scores",
    "tree_stability",
]

MAX_DEPTH = 6
SEARCHES = ("auto", "exact", "lookahead")
# Interval of the best arm's contrast reported on each leaf.
GATE_CI = 0.8
# A leaf counts as reproduced by a bootstrap refit when some refit leaf overlaps it this much.
STABILITY_JACCARD = 0.5
# Default smallest tree stability (its weakest leaf's stability score) a tree needs to be
# kept; below it, the deepest shallower tree that reaches it is kept. A planted segment scores
# about 1 (reproduced in nearly every refit); leaves of noise about 0.2-0.6 (0.42 on a real
# e-mail experiment's depth-3 tree). 0.7 asks that every segment be reproduced in a clear
# majority of the refits.
MIN_STABILITY = 0.7


# --------------------------------------------------------------------------- Γ̄


def posterior_mean_metric(result: BCFResult) -> np.ndarray | da.Array:
    """Γ̄: the posterior-mean metric of every visitor and arm.

    Parameters
    ----------
    result : BCFResult
        The posterior.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float64 (visitor, arm): numpy on a numpy-backed posterior (computed in blocks of
        about the ``numpy_block_bytes`` option, on ``worker_threads()`` threads), a lazy dask
        array with the posterior's visitor chunks on a dask-backed one.
    """
    factors = [f.data for f in result.metric_factors()]
    ndim = factors[0].ndim
    if any(isinstance(f, da.Array) for f in factors):
        first = next(f for f in factors if isinstance(f, da.Array))
        visitor_chunks = first.chunks[0]
        # Sample dims and arm whole in each block; the visitor axis as the posterior has it.
        arrays = [
            da.asarray(f).rechunk({0: visitor_chunks, **{a: -1 for a in range(1, ndim)}})
            for f in factors
        ]
        return da.map_blocks(
            posterior_mean_block,
            *arrays,
            drop_axis=list(range(1, ndim - 1)),
            chunks=(visitor_chunks, (factors[0].shape[-1],)),
            dtype=np.float64,
            meta=np.empty((0, 0), dtype=np.float64),
        )
    n_visitors = factors[0].shape[0]
    row_bytes = max(1, sum(f.dtype.itemsize for f in factors) * math.prod(factors[0].shape[1:]))
    block = max(1, get_options()["numpy_block_bytes"] // row_bytes)
    starts = list(range(0, n_visitors, block))
    out = np.empty((n_visitors, factors[0].shape[-1]), dtype=np.float64)

    def fill(start: int) -> None:
        stop = min(start + block, n_visitors)
        out[start:stop] = posterior_mean_block(*(f[start:stop] for f in factors))

    if len(starts) > 1:
        with ThreadPoolExecutor(min(worker_threads(), len(starts))) as pool:
            list(pool.map(fill, starts))
    elif starts:
        fill(0)
    return out


# --------------------------------------------------------------------------- the fit


def fit_policy_tree(
    posterior: BCFResult,
    *,
    max_depth: int = 3,
    min_segment_share: float | int = 0.1,
    features: Sequence[str] | None = None,
    n_bootstrap: int = 50,
    seed: int = 0,
    search: str = "auto",
    min_stability: float = MIN_STABILITY,
) -> PolicyTreeResult:
    """Discover segments: the shallow tree whose leaves, served their best arms, pay most.

    The objective of a tree is the posterior expected metric of the policy "serve each leaf
    the arm with the highest posterior expected segment-mean metric". It is linear in the
    posterior, so it is the sum over leaves of the largest, over arms, of the summed
    per-visitor posterior-mean metric Γ̄[visitor, arm]. The fit makes two passes over the
    posterior — two computes on a dask-backed one: the first computes Γ̄ (a per-visitor mean
    over draws) and loads the covariates; the search then runs in memory on Γ̄ and the
    covariates (bootstrap refits included); the second pass summarises the leaves with
    :func:`pytyche.analysis.segment_summary`, the allocation's reduction.

    Splits are ``x <= t`` / ``x > t`` on a numeric covariate (candidate thresholds: every
    distinct value, or 64 quantiles when there are more) and a two-way partition of the
    levels of a text or boolean covariate, written as set membership (every partition up to
    12 levels; with more, the levels are ordered once, over all visitors, by best arm and
    gain, and cut at up to 64 quantiles of that order, like a number). An ordered text
    covariate (a pandas ordered Categorical given to :func:`pytyche.observed_data`) is cut
    only into ranges of its order, each written as the set of its levels, in order. Depth 1
    and 2 are exact: the best tree over those candidate splits. Depth 3 and more are exact when the
    work fits a budget, else searched with a look-ahead of depth 2 at each node. Every leaf
    holds at least `min_segment_share` of the visitors; sibling leaves never serve the same
    arm (such a pair is one leaf), and "exact" means best among the trees that respect this;
    a tree with no useful split is the root alone, one segment with the ``everyone`` rule.

    A visitor with a missing value of a covariate its path splits on goes down neither
    branch: it is in no leaf, ``assign`` reports -1, and no rule matches it (rules never
    match missing values). The objective counts such visitors as served control. A split
    can therefore pay just by shedding such visitors to control while both sides keep one
    arm; the sibling rule forbids that tree, so with missing values the result can be worse
    than the best tree without the rule.

    Parameters
    ----------
    posterior : HurdleBCFResult | ContinuousBCFResult | BinaryBCFResult
        The posterior, carrying observed data (covariates along ``visitor``).
    max_depth : int, default 3
        Largest depth of the tree, 0 to 6.
    min_segment_share : float or int, default 0.1
        Smallest leaf: a share of the visitors in (0, 0.5], or an int number of visitors
        between 1 and half of the visitors.
    features : sequence of str, optional
        Covariates to split on; default every covariate along ``visitor`` holding numbers,
        text or booleans (an object column qualifies when all its non-missing values are of
        one of those kinds), except ``variant`` and ``outcome``.
    n_bootstrap : int, default 50
        Bootstrap refits (visitors resampled with replacement, Γ̄ and the binned covariates
        reused; run in parallel on the ``num_threads`` option's threads) for each leaf's
        ``stability_score``; 0 skips them (scores are NaN).
    seed : int, default 0
        Seed of the bootstrap; the tree itself is deterministic.
    search : {"auto", "exact", "lookahead"}, default "auto"
        How depth 3 and more are searched: ``"exact"`` always exhaustively (can be very
        slow), ``"lookahead"`` always with the depth-2 look-ahead, ``"auto"`` exhaustively when
        the estimated work is within the ``exact_tree_budget`` option
        (:func:`pytyche.set_options`). Depth 1 and 2 are always exact.
    min_stability : float, default 0.7
        Smallest tree stability to act on, in [0, 1]: the smallest ``stability_score`` of
        its leaves (every segment reproduced by that fraction of the refits). When the
        fitted tree's is below it, the tree is set aside for the best tree one level
        shallower, refitted and scored with its own `n_bootstrap` refits, and so on: the
        result is the deepest tree that reaches `min_stability`, or the root alone (one
        segment, ``everyone``). ``.stability_note`` says so, and ``.rejected_trees`` lists
        the trees set aside. Planted segments score about 1, leaves of noise about 0.2-0.6;
        0.7 asks that every segment be reproduced in a clear majority of the refits. 0
        keeps the tree whatever its stability; with ``n_bootstrap=0`` nothing is checked.
        Each level set aside costs another `n_bootstrap` refits.

    Returns
    -------
    PolicyTreeResult
        ``.segments`` are the leaves, ids 0..L-1 left to right, with ``population_share``,
        ``best_arm``, ``arm_best_probabilities`` (equal to ``thompson_allocation(...,
        epsilon=0)``), ``gate_estimate`` and ``gate_interval`` (posterior mean and 80%
        interval of the best arm's segment-mean contrast against control) and
        ``stability_score`` (fraction of bootstrap refits with a leaf of Jaccard overlap
        >= 0.5 with this leaf's members); ``.stability`` is the tree's stability.

    Raises
    ------
    ValueError
        When `max_depth` is outside 0..6, `min_segment_share` is outside (0, 0.5] (or an int
        below 1 or above half of the visitors), `min_stability` is NaN or outside [0, 1],
        `n_bootstrap` or `seed` is negative, `search`
        is not one of its choices, `features` is empty, names an unknown covariate, not a
        covariate, a covariate twice or an unusable one (e.g. an object column mixing
        kinds of values), ``posterior.observed`` is None, or the posterior-mean metric is
        not finite.
    TypeError
        When `posterior` is not an accepted result type, or `max_depth`, `n_bootstrap`,
        `seed`, `min_segment_share` or `min_stability` is not a number of the right kind (an
        int, or for the share and the stability a real number).

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=3_000, n_draws=50, seed=1)
    >>> tree = pt.fit_policy_tree(result, max_depth=2, min_segment_share=0.05, n_bootstrap=0)
    >>> sorted({segment.best_arm for segment in tree.segments})
    ['A', 'B', 'control']
    """
    result = check_posterior(posterior)
    max_depth = check_count("max_depth", max_depth)
    if max_depth > MAX_DEPTH:
        raise ValueError(f"max_depth must be between 0 and {MAX_DEPTH}, got {max_depth}")
    n_bootstrap = check_count("n_bootstrap", n_bootstrap)
    seed = check_count("seed", seed)
    search = check_choice("search", search, SEARCHES)
    min_stability = check_probability("min_stability", min_stability)
    observed = result.observed
    if observed is None:  # check_posterior has refused such a posterior
        raise ValueError("the posterior carries no observed data")
    n_visitors = observed.sizes[VISITOR]
    min_size = min_segment_count(min_segment_share, n_visitors)
    names, by_default = select_features(observed, features)
    orders = {
        name: order
        for name in names
        if (order := ordered_levels(observed[name].variable, name)) is not None
    }

    # Pass 1: Γ̄ and the covariates, in one compute.
    mean_metric, *columns = dask.compute(
        posterior_mean_metric(result), *(observed[name].data for name in names)
    )
    mean_metric = np.asarray(mean_metric, dtype=np.float64)
    finite = np.isfinite(mean_metric).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"the posterior-mean metric of {bad.size} visitor(s) is NaN or infinite (first at "
            f"visitor position {bad[0]}): check the posterior's draws"
        )
    search_result = search_tree(
        mean_metric,
        dict(zip(names, columns, strict=True)),
        max_depth=max_depth,
        min_size=min_size,
        n_bootstrap=n_bootstrap,
        seed=seed,
        search=search,
        skip_unusable=by_default,
        orders=orders,
        min_stability=min_stability,
    )
    root, bins, labels, stability, exact, rejected = search_result
    contrasts_width = mean_metric.shape[1] - 1

    nodes, paths = describe_tree(root, bins)
    segments = [DiscoveredSegment(leaf, path_rule(path)) for leaf, path in enumerate(paths)]
    # Pass 2: leaf summaries from the allocation's own reduction.
    summary = segment_summary(result, segments, ci=GATE_CI).compute()
    leaves = tree_leaves(root)
    arms = result.variants
    described = []
    for leaf, (segment, node) in enumerate(zip(segments, leaves, strict=True)):
        best = int(leaf_value_and_arm(node.total, contrasts_width)[1])
        row = summary.isel(segment=leaf)
        probabilities = row["prob_best"].values
        described.append(
            dataclasses.replace(
                segment,
                population_share=float(row["share"].values),
                best_arm=arms[best],
                arm_best_probabilities={
                    arm: float(p) for arm, p in zip(arms, probabilities, strict=True)
                },
                gate_estimate=float(row["contrast"].values[best]),
                gate_interval=(
                    float(row["contrast_lower"].values[best]),
                    float(row["contrast_upper"].values[best]),
                ),
                stability_score=float(stability[leaf]),
            )
        )
    leaf_values = sum(float(leaf_value_and_arm(node.total, contrasts_width)[0]) for node in leaves)
    control_total = float(mean_metric[:, 0].sum())
    info = {
        "arms": arms,
        "features": [feature.name for feature in bins],
        "n_visitors": n_visitors,
        "max_depth": max_depth,
        "min_segment_share": (
            int(min_segment_share)
            if isinstance(min_segment_share, numbers.Integral)
            else float(min_segment_share)
        ),
        "min_segment_size": int(min_size),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "search": "exact" if exact or max_depth <= 2 else "lookahead",
        "objective": (control_total + leaf_values) / n_visitors,
        "control_objective": control_total / n_visitors,
        "unassigned_share": float((labels < 0).mean()),
        "min_stability": min_stability,
        "stability": tree_stability(stability),
        "rejected_trees": rejected,
    }
    return PolicyTreeResult(nodes=nodes, segments=described, info=info, posterior=result)


class TreeSearch(NamedTuple):
    """What :func:`search_tree` found."""

    root: Node  # the kept tree
    bins: list[Feature]  # the binned covariates
    labels: np.ndarray  # int64 (visitor,): each visitor's leaf, -1 unassigned
    stability: np.ndarray  # float64 (leaf,): each leaf's stability score
    exact: bool  # whether depth >= 3 was searched exhaustively
    rejected: list[dict]  # the deeper trees set aside: {"depth", "stability"}, deepest first


def search_tree(
    mean_metric: np.ndarray,
    columns: Mapping[str, np.ndarray],
    *,
    max_depth: int,
    min_size: float,
    n_bootstrap: int,
    seed: int,
    search: str,
    skip_unusable: bool = False,
    orders: Mapping[str, Sequence[str]] | None = None,
    min_stability: float = 0.0,
) -> TreeSearch:
    """The in-memory part of the fit: bin, search, refit on bootstrap resamples.

    Parameters
    ----------
    mean_metric : numpy.ndarray
        Γ̄: float64 (visitor, arm), control first.
    columns : mapping of str to numpy.ndarray
        The covariates to split on, (visitor,) each.
    max_depth : int
        Largest depth of the tree.
    min_size : float
        Smallest leaf, in visitors (weights, in a bootstrap refit).
    n_bootstrap : int
        Bootstrap refits for the stability scores.
    seed : int
        Seed of the bootstrap.
    search : {"auto", "exact", "lookahead"}
        As :func:`fit_policy_tree`.
    skip_unusable : bool, default False
        Skip columns :func:`pytyche.segments.covariate_kind` rejects instead of raising (for
        the default features).
    orders : mapping of str to sequence of str, optional
        The levels, lowest first, of the ordered text covariates (split only into ranges).
    min_stability : float, default 0.0
        While the tree's :func:`tree_stability` is below this (with `n_bootstrap` > 0), the
        tree is set aside for the best tree one level shallower than it, refitted and
        rescored the same way; the root alone (stability 1) always qualifies.

    Returns
    -------
    TreeSearch
    """
    n_visitors = mean_metric.shape[0]
    contrasts = np.ascontiguousarray(mean_metric[:, 1:] - mean_metric[:, :1])
    bins = bin_features(columns, contrasts, skip_unusable, orders)
    if search == "auto":
        work = exact_work(bins, n_visitors, contrasts.shape[1] + 1, max_depth)
        exact = work <= get_options()["exact_tree_budget"]
    else:
        exact = search == "exact"
    layout = SplitLayout.of(bins)  # shared by the bootstrap refits

    def fit_at(depth: int) -> tuple[Node, np.ndarray, np.ndarray]:
        def fit(weights: np.ndarray, threads: int | None = None) -> Node:
            return Search(bins, contrasts, weights, min_size, exact, layout, threads).fit(depth)

        root = fit(np.ones(n_visitors))
        labels = leaf_labels(root, bins, n_visitors)
        return root, labels, stability_scores(labels, fit, bins, n_visitors, n_bootstrap, seed)

    root, labels, stability = fit_at(max_depth)
    rejected: list[dict] = []
    while tree_depth(root) > 0 and tree_stability(stability) < min_stability:
        rejected.append(
            {"depth": tree_depth(root), "stability": tree_stability(stability)}
        )
        root, labels, stability = fit_at(tree_depth(root) - 1)
    return TreeSearch(root, bins, labels, stability, exact, rejected)


def tree_stability(stability: np.ndarray) -> float:
    """A tree's stability: the smallest of its leaves' stability scores.

    The weakest leaf, not an average: a large leaf is reproduced almost whatever the refit
    (some refit leaf covers half of it), so an average over visitors would hide a split
    that noise placed.

    Parameters
    ----------
    stability : numpy.ndarray
        float64 (leaf,): the leaves' stability scores (NaN without refits).

    Returns
    -------
    float
        NaN without refits.
    """
    return float(np.min(stability))


def stability_scores(
    labels: np.ndarray,
    fit: Callable[[np.ndarray, int | None], Node],
    bins: list[Feature],
    n_visitors: int,
    n_bootstrap: int,
    seed: int,
) -> np.ndarray:
    """Per leaf: the fraction of bootstrap refits with a leaf of Jaccard overlap >= 0.5.

    Parameters
    ----------
    labels : numpy.ndarray
        int64 (visitor,): each visitor's leaf in the fitted tree, -1 when unassigned.
    fit : callable
        ``fit(weights, threads)``: a tree from (visitor,) float64 resampling weights, its
        histograms built on `threads` threads (None: ``worker_threads()``).
    bins : list of Feature
        The binned covariates.
    n_visitors : int
        The number of visitors.
    n_bootstrap : int
        The number of refits; 0 gives NaN scores.
    seed : int
        Seed of the resampling.

    Returns
    -------
    numpy.ndarray
        float64 (leaf,). Overlaps are counted on the original visitors, each once.
    """
    n_leaves = int(labels.max()) + 1
    if n_bootstrap == 0:
        return np.full(n_leaves, np.nan)
    rng = np.random.default_rng(seed)
    assigned = labels >= 0
    sizes = np.bincount(labels[assigned], minlength=n_leaves)
    reproduced = np.zeros(n_leaves)

    def resamples() -> Iterator[np.ndarray]:
        for _ in range(n_bootstrap):
            draws = rng.integers(0, n_visitors, size=n_visitors)
            yield np.bincount(draws, minlength=n_visitors).astype(np.float64)

    # Refits run in parallel, one thread each (the compiled search and the histograms release
    # the GIL), a few resamples ahead at most. The resamples are drawn in order and the
    # scores add up in order, so they do not depend on the threads.
    threads = min(worker_threads(), n_bootstrap)

    def refit_labels(weights: np.ndarray) -> np.ndarray:
        return leaf_labels(fit(weights, 1 if threads > 1 else None), bins, n_visitors)

    with ThreadPoolExecutor(threads) as pool:
        for refit in _in_order(pool, refit_labels, resamples(), 2 * threads):
            # Overlaps on the original visitors (each once), via one contingency table.
            n_refit = int(refit.max()) + 1
            both = assigned & (refit >= 0)
            table = np.bincount(
                labels[both] * n_refit + refit[both], minlength=n_leaves * n_refit
            ).reshape(n_leaves, n_refit)
            refit_sizes = np.bincount(refit[refit >= 0], minlength=n_refit)
            union = sizes[:, None] + refit_sizes[None, :] - table
            jaccard = np.divide(table, union, out=np.zeros(table.shape), where=union > 0)
            reproduced += jaccard.max(axis=1) >= STABILITY_JACCARD
    return reproduced / n_bootstrap


def _in_order(
    pool: ThreadPoolExecutor,
    function: Callable[[np.ndarray], np.ndarray],
    items: Iterable[np.ndarray],
    ahead: int,
) -> Iterator[np.ndarray]:
    # pool.map, with at most `ahead` items submitted and not yet consumed.
    pending: deque[Future[np.ndarray]] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def min_segment_count(share: float | int, n_visitors: int) -> float:
    """The smallest leaf, in visitors, from `min_segment_share`.

    Parameters
    ----------
    share : float or int
        A share of the visitors in (0, 0.5], or an int count between 1 and half of the
        visitors.
    n_visitors : int
        The number of visitors.

    Returns
    -------
    float
        The count itself, or ``ceil(share * n_visitors)`` (at least 1), rounded to 9 decimals
        first so that 0.1 × 300 means 30 visitors.

    Raises
    ------
    TypeError
        When `share` is a bool or not a real number.
    ValueError
        When `share` is outside the ranges above.
    """
    if isinstance(share, numbers.Integral) and not isinstance(share, bool):
        count = check_count("min_segment_share", share, minimum=1)
        if 2 * count > n_visitors:
            raise ValueError(
                f"min_segment_share={count} visitors is more than half of the {n_visitors} "
                "visitors (as a share, above 0.5): at most n_visitors // 2 = "
                f"{n_visitors // 2}"
            )
        return float(count)
    if isinstance(share, bool) or not isinstance(share, numbers.Real):
        raise TypeError(
            "min_segment_share must be a float share in (0, 0.5] or an int count, got "
            f"{share!r} ({type(share).__name__})"
        )
    if not 0.0 < share <= 0.5:  # NaN included
        raise ValueError(
            f"min_segment_share must be in (0, 0.5] (a share of visitors) or an int count, "
            f"got {share!r}"
        )
    # round() first: 0.1 * 300 is 30.000000000000004, which must mean 30 visitors.
    return float(max(1, math.ceil(round(share * n_visitors, 9))))
