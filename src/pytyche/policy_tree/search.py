"""The search: the best policy tree over the binned covariates, on histograms.

The objective of a tree is the sum, over its leaves, of the summed contrast of the leaf's
best arm (0 for control): the posterior expected metric of "serve each leaf its best arm",
less that of "serve everyone control". The search sees visitors only through the weighted
rows ``[contrast * weight..., weight]`` and their bin codes, and scores splits from
histograms of those rows per bin (``pytyche.policy_tree._kernels``):

- depth 1 and 2 are exhaustive over the candidate splits: one pass over a node's visitors
  builds, for every pair of distinct covariates, the row sums per pair of bins; every
  depth-2 tree is then scored with running sums over those small arrays, in one compiled
  call per node (:meth:`Search.depth2`);
- depth >= 3 is exhaustive (:meth:`Search.exact`) or, when the caller says the work would
  be too large, each node takes the root split of the best depth-2 tree below it (a
  look-ahead of depth 2) and the last two levels are exhaustive. The exhaustive depth 3 is
  one compiled call: for each covariate, the children of its splits get their histograms by
  adding the visitors of one bin at a time, not by a pass over the node per split.

"Exhaustive" is over trees whose sibling leaves serve different arms: a split whose two
leaves would serve the same arm is no split (the two leaves are one segment), so it is never
chosen. Without missing values that loses nothing; with them it can, because a split can
pay just by shedding visitors with a missing value (who go down neither branch and count as
served control) while both sides keep one arm.
"""

from __future__ import annotations

import dataclasses
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._config import worker_threads
from ._kernels import best_depth1, best_depth2, best_exact3, node_histograms
from .binning import Feature

__all__ = [
    "SPLIT_COST",
    "THREADED_VISITORS",
    "Node",
    "Plan",
    "Search",
    "SplitLayout",
    "combine",
    "exact_work",
    "leaf_labels",
    "leaf_value_and_arm",
    "merge_same_arm_leaves",
    "split_arrays",
    "split_left_bins",
    "split_sums",
    "tree_depth",
    "tree_leaves",
]

# Cost of one split, relative to the summed absolute contrasts: breaks rounding-level ties
# in favour of the simpler tree (rounding is ~1e-16 × that sum per add).
SPLIT_COST = 1e-9
# Histograms of nodes with fewer visitors are built on one thread (threads cost more).
THREADED_VISITORS = 50_000


def leaf_value_and_arm(total: np.ndarray, n_contrasts: int) -> tuple[np.ndarray, np.ndarray]:
    """Value and best arm of leaves from their (..., column) sums.

    The value is the summed contrast of the best arm (0 for control); the best arm is the
    first treatment with the largest positive sum, else control — the allocation's tie rule.
    """
    sums = total[..., :n_contrasts]
    best = sums.max(axis=-1)
    arm = np.where(best > 0, sums.argmax(axis=-1) + 1, 0)
    return np.maximum(best, 0.0), arm


def split_sums(feature: Feature, values: np.ndarray):
    """Left and right sums of every candidate split of `feature`.

    ``values`` is (..., value bin, column) — missing values excluded; returns two
    (..., split, column) arrays. Numeric and many-level categorical splits are prefixes of
    the bins; a few-level categorical's are the exact two-way partitions.
    """
    if feature.subsets is not None:
        return feature.subsets @ values, (1.0 - feature.subsets) @ values
    # Left from the front, right from the back: both are exact sums, neither a difference.
    left = np.cumsum(values, axis=-2)[..., :-1, :]
    right = np.cumsum(values[..., ::-1, :], axis=-2)[..., ::-1, :][..., 1:, :]
    return left, right


def split_arrays(
    features: list[Feature],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate splits of every covariate, as the scoring kernels take them.

    Parameters
    ----------
    features : list of Feature
        The binned covariates.

    Returns
    -------
    n_bins, n_splits : numpy.ndarray
        int64 (covariate,).
    subset : numpy.ndarray
        bool (covariate,): True for a few-level categorical (explicit partitions), False when
        the splits are prefixes of the bins.
    masks : numpy.ndarray
        bool (covariate, split, bin): the bins each partition sends left (zeros elsewhere).
    """
    n_bins = np.array([f.n_bins for f in features], dtype=np.int64)
    n_splits = np.array([f.n_splits for f in features], dtype=np.int64)
    subset = np.array([f.subsets is not None for f in features], dtype=bool)
    most = max([f.n_splits for f in features if f.subsets is not None], default=0)
    masks = np.zeros((len(features), max(most, 1), max(int(n_bins.max(initial=0)), 1)), bool)
    for i, feature in enumerate(features):
        if feature.subsets is not None:
            masks[i, : feature.n_splits, : feature.n_bins] = feature.subsets.astype(bool)
    return n_bins, n_splits, subset, masks


def split_left_bins(feature: Feature, split: int) -> np.ndarray:
    """Boolean (value bin,) mask of the bins a split sends left.

    Parameters
    ----------
    feature : Feature
        The covariate.
    split : int
        One of its candidate splits.

    Returns
    -------
    numpy.ndarray
    """
    return feature.left_masks()[split].astype(bool)


# --------------------------------------------------------------------------- the search


@dataclasses.dataclass(eq=False)
class Plan:
    """The best tree of a node: as a leaf, and as its best split (value -inf if none)."""

    leaf_value: float
    leaf_arm: int
    split_value: float = -np.inf
    feature: int = -1
    left_bins: np.ndarray | None = None
    # The children: from depth1/depth2, each child's own split as (feature, left bins), or
    # None for a leaf; from the exhaustive search of depth >= 3, "leaf" or "split", the shape
    # its best combination needs (the child's subtree is searched again when grown).
    children: tuple = ()


@dataclasses.dataclass(eq=False)
class Node:
    """A node of the grown tree: its visitors, their column sums and its split, if any."""

    index: np.ndarray
    total: np.ndarray
    feature: int = -1
    left_bins: np.ndarray | None = None
    left: Node | None = None
    right: Node | None = None

    @property
    def is_leaf(self) -> bool:
        """Whether the node has no split."""
        return self.left is None

    def split(self) -> tuple[np.ndarray, Node, Node]:
        """The bins the split sends left, and the left and right children.

        Raises
        ------
        ValueError
            When the node is a leaf.
        """
        if self.left_bins is None or self.left is None or self.right is None:
            raise ValueError("a leaf has no split")
        return self.left_bins, self.left, self.right


@dataclasses.dataclass(frozen=True, eq=False)
class SplitLayout:
    """The binned covariates as the compiled kernels take them (the same for every refit)."""

    codes: np.ndarray  # int32 (covariate, visitor)
    splits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # from split_arrays
    rows: int  # histogram rows: the most value bins of any covariate, plus missing
    pairs: np.ndarray  # int64 (pair, 2): the covariate pairs f < g
    pair_ids: np.ndarray  # int64 (covariate, covariate): the pair index of f, g (both orders)

    @classmethod
    def of(cls, features: list[Feature]) -> SplitLayout:
        """The layout of a list of binned covariates.

        Parameters
        ----------
        features : list of Feature
            The binned covariates.

        Returns
        -------
        SplitLayout
        """
        n_visitors = features[0].codes.size if features else 0
        codes = np.zeros((len(features), n_visitors), dtype=np.int32)
        for i, feature in enumerate(features):
            codes[i] = feature.codes
        pairs = np.array(
            list(itertools.combinations(range(len(features)), 2)), dtype=np.int64
        ).reshape(-1, 2)
        pair_ids = np.zeros((len(features), len(features)), dtype=np.int64)
        for i, (f, g) in enumerate(pairs):
            pair_ids[f, g] = pair_ids[g, f] = i
        rows = max((f.n_bins for f in features), default=0) + 1
        return cls(codes, split_arrays(features), rows, pairs, pair_ids)


class Search:
    """The tree search on binned covariates and weighted visitor contrasts.

    Parameters
    ----------
    features : list of Feature
        The binned covariates.
    contrasts : numpy.ndarray
        float64 (visitor, treatment): posterior-mean contrasts against control.
    weights : numpy.ndarray
        float64 (visitor,): 1 for a fit, resampling counts for a bootstrap refit; visitors
        of weight 0 are left out.
    min_size : float
        Smallest leaf, in (weighted) visitors.
    exact : bool
        Search depth >= 3 exhaustively, else with the depth-2 look-ahead.
    layout : SplitLayout, optional
        ``SplitLayout.of(features)``, shared by refits.
    threads : int, optional
        Threads for the histograms of large nodes; default ``worker_threads()``.
    """

    def __init__(
        self,
        features: list[Feature],
        contrasts: np.ndarray,
        weights: np.ndarray,
        min_size: float,
        exact: bool,
        layout: SplitLayout | None = None,
        threads: int | None = None,
    ):
        self.features = features
        self.threads = worker_threads() if threads is None else threads
        self.layout = layout = SplitLayout.of(features) if layout is None else layout
        self.n_contrasts = contrasts.shape[1]
        values = np.empty((contrasts.shape[0], self.n_contrasts + 1), dtype=np.float64)
        np.multiply(contrasts, weights[:, None], out=values[:, :-1])
        values[:, -1] = weights
        self.values = values
        self.root_index = np.flatnonzero(weights > 0)
        self.min_size = min_size
        self.exhaustive = exact
        self.splits = layout.splits
        self.rows = layout.rows
        self.pairs = [(int(f), int(g)) for f, g in layout.pairs]
        self.pair_ids = layout.pair_ids
        # Every split costs a tiny amount, far above rounding and far below any real gain: a
        # tree whose value ties a simpler one (up to rounding) only adds rules, so it loses.
        self.cost = SPLIT_COST * float(np.abs(values[:, :-1]).sum())

    # -- histograms -----------------------------------------------------------------------

    def _node_histograms(self, index: np.ndarray, pairs: bool) -> tuple[np.ndarray, np.ndarray]:
        """The histograms of a node's visitors, padded to the most bins of any covariate.

        Returns ``hists`` (covariate, bin + missing, column) and, with ``pairs``, ``joint``
        (pair, bin, bin, column): per pair of distinct covariates f < g (``pair_ids``), the
        sums per pair of bins; without, an empty array.
        """
        layout = self.layout
        rows, columns = self.rows, self.values.shape[1]
        hists = np.zeros((len(self.features), rows, columns))
        joint = np.zeros((len(self.pairs) if pairs else 0, rows, rows, columns))
        features = np.arange(len(self.features), dtype=np.int64)
        pair_jobs = np.column_stack([layout.pairs, np.arange(len(layout.pairs))])[: len(joint)]
        threads = min(self.threads, len(features) + len(pair_jobs))
        if index.size < THREADED_VISITORS or threads < 2:
            node_histograms(layout.codes, index, self.values, features, pair_jobs, hists, joint)
            return hists, joint

        def run(part: int) -> None:  # every thread reads all visitors, for its histograms
            node_histograms(
                layout.codes,
                index,
                self.values,
                features[part::threads],
                pair_jobs[part::threads],
                hists,
                joint,
            )

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
        return hists, joint

    def _leaf_of(
        self, index: np.ndarray, hists: np.ndarray | None = None
    ) -> tuple[np.ndarray, float, int]:
        if hists is not None and self.features:
            total = hists[0, : self.features[0].n_bins + 1].sum(axis=0)
        else:
            total = self.values[index].sum(axis=0)
        value, arm = leaf_value_and_arm(total, self.n_contrasts)
        return total, float(value), int(arm)

    # -- depth 1 and 2: exhaustive on histograms ------------------------------------------

    def depth1(self, index: np.ndarray) -> Plan:
        """The best tree of depth <= 1 below a node."""
        hists, _ = self._node_histograms(index, pairs=False)
        _, leaf_value, leaf_arm = self._leaf_of(index, hists)
        plan = Plan(leaf_value, leaf_arm)
        value, f, split = best_depth1(hists, *self.splits, self.min_size, self.cost)
        if f >= 0:
            plan.split_value = float(value)
            plan.feature = int(f)
            plan.left_bins = split_left_bins(self.features[f], int(split))
            plan.children = (None, None)
        return plan

    def depth2(self, index: np.ndarray) -> Plan:
        """The best tree of depth <= 2 below a node, scored from pairwise histograms."""
        hists, joint = self._node_histograms(index, pairs=True)
        _, leaf_value, leaf_arm = self._leaf_of(index, hists)
        plan = Plan(leaf_value, leaf_arm)
        value, f, split, shape, *sides = best_depth2(
            hists, joint, self.pair_ids, *self.splits, self.min_size, self.cost
        )
        if f >= 0:
            plan.split_value = float(value)
            plan.feature = int(f)
            plan.left_bins = split_left_bins(self.features[f], int(split))
            grown = (shape & 2, shape & 1)  # shape: 0 leaves, 1 right splits, 2 left, 3 both
            plan.children = tuple(
                (int(g), split_left_bins(self.features[g], int(s))) if split_child else None
                for split_child, g, s in zip(grown, sides[::2], sides[1::2], strict=True)
            )
        return plan

    # -- depth >= 3 -----------------------------------------------------------------------

    def exact(self, index: np.ndarray, depth: int) -> Plan:
        """The best tree of depth <= `depth`, exhaustively (children searched per split)."""
        if depth <= 0:
            _, value, arm = self._leaf_of(index)
            return Plan(value, arm)
        if depth == 1:
            return self.depth1(index)
        if depth == 2:
            return self.depth2(index)
        hists, _ = self._node_histograms(index, pairs=False)
        _, leaf_value, leaf_arm = self._leaf_of(index, hists)
        plan = Plan(leaf_value, leaf_arm)
        if depth == 3:  # compiled: the children's histograms grow split by split
            layout = self.layout
            value, f, s, grow_left, grow_right = best_exact3(
                layout.codes,
                index,
                self.values,
                *layout.splits,
                layout.pairs,
                layout.pair_ids,
                self.min_size,
                self.cost,
            )
            if f >= 0:
                plan.split_value = float(value)
                plan.feature = int(f)
                plan.left_bins = split_left_bins(self.features[f], int(s))
                plan.children = tuple("split" if g else "leaf" for g in (grow_left, grow_right))
            return plan
        for f, feature in enumerate(self.features):
            left_total, right_total = split_sums(feature, hists[f][: feature.n_bins])
            codes = feature.codes[index]
            for s in range(feature.n_splits):
                if left_total[s, -1] < self.min_size or right_total[s, -1] < self.min_size:
                    continue
                left_bins = split_left_bins(feature, s)
                goes_left = np.append(left_bins, False)[codes]
                missing = codes == feature.n_bins
                children = [
                    self.exact(index[goes_left], depth - 1),
                    self.exact(index[~goes_left & ~missing], depth - 1),
                ]
                value, grown = combine(children, self.cost)
                if value > plan.split_value:
                    plan.split_value = value
                    plan.feature = f
                    plan.left_bins = left_bins
                    plan.children = tuple("split" if g else "leaf" for g in grown)
        return plan

    def grow(self, index: np.ndarray, depth: int, directive: str = "free") -> Node:
        """Build the tree below a node; `directive` forces it to be a leaf or a split."""
        total = self.values[index].sum(axis=0)
        if depth == 0 or directive == "leaf" or not self.features:
            return Node(index, total)
        if depth <= 2:
            plan = self.depth1(index) if depth == 1 else self.depth2(index)
        elif self.exhaustive:
            plan = self.exact(index, depth)
        else:  # look-ahead: the root split of the best depth-2 tree
            plan = self.depth2(index)
        wants_split = plan.split_value > plan.leaf_value
        if plan.left_bins is None or not (wants_split or directive == "split"):
            return Node(index, total)
        feature = self.features[plan.feature]
        codes = feature.codes[index]
        goes_left = np.append(plan.left_bins, False)[codes]
        goes_right = ~goes_left & (codes != feature.n_bins)
        node = Node(index, total, plan.feature, plan.left_bins)
        sides = (index[goes_left], index[goes_right])
        if depth <= 2:
            # The plan already holds the children: leaves or a split into two leaves.
            children = []
            for side, child in zip(sides, plan.children, strict=True):
                children.append(self._grow_planned(side, child))
            node.left, node.right = children
            return node
        if self.exhaustive:
            directives = plan.children
        else:  # a child the look-ahead grew must split; one it left as a leaf may grow
            directives = tuple("free" if c is None else "split" for c in plan.children)
        node.left = self.grow(sides[0], depth - 1, directives[0])
        node.right = self.grow(sides[1], depth - 1, directives[1])
        return node

    def _grow_planned(self, index: np.ndarray, child) -> Node:
        total = self.values[index].sum(axis=0)
        if child is None:
            return Node(index, total)
        f, left_bins = child
        codes = self.features[f].codes[index]
        goes_left = np.append(left_bins, False)[codes]
        goes_right = ~goes_left & (codes != self.features[f].n_bins)
        node = Node(index, total, f, left_bins)
        node.left = Node(index[goes_left], self.values[index[goes_left]].sum(axis=0))
        node.right = Node(index[goes_right], self.values[index[goes_right]].sum(axis=0))
        return node

    def fit(self, max_depth: int) -> Node:
        """The tree of depth <= `max_depth` over every visitor of positive weight."""
        root = self.grow(self.root_index, max_depth)
        merge_same_arm_leaves(root, self.n_contrasts)
        return root


def combine(children: list[Plan], cost: float) -> tuple[float, tuple[bool, bool]]:
    """Best value of a split from its children's plans; which children split."""
    left, right = children
    best, grown = -np.inf, (False, False)
    for grow_left, grow_right in ((False, False), (False, True), (True, False), (True, True)):
        if not grow_left and not grow_right and left.leaf_arm == right.leaf_arm:
            continue
        value = (
            (left.split_value if grow_left else left.leaf_value)
            + (right.split_value if grow_right else right.leaf_value)
            - cost
        )
        if value > best:
            best, grown = value, (grow_left, grow_right)
    return float(best), grown


def merge_same_arm_leaves(node: Node, n_contrasts: int) -> None:
    """Merge sibling leaves that serve the same arm into their parent, bottom-up.

    The search never chooses such a pair on the histogram sums it scores; a grown node's
    total is summed again, in another order, and a near-tie between arms could flip by
    rounding. This keeps the guarantee whatever the rounding (tested on hand-built trees).
    """
    if node.is_leaf:
        return
    _, left, right = node.split()
    merge_same_arm_leaves(left, n_contrasts)
    merge_same_arm_leaves(right, n_contrasts)
    if left.is_leaf and right.is_leaf:
        arms = [int(leaf_value_and_arm(child.total, n_contrasts)[1]) for child in (left, right)]
        if arms[0] == arms[1]:
            node.feature, node.left_bins, node.left, node.right = -1, None, None, None


def exact_work(features: list[Feature], n_visitors: int, columns: int, depth: int) -> float:
    """Elementary operations of an exhaustive search of `depth` (an upper bound).

    The estimate counts a pass over a node's visitors for each candidate split's children,
    as the search did before the exhaustive depth 3 grew its children's histograms bin by
    bin; it now overstates the work. It stays the rule that decides between the exhaustive
    and the look-ahead search (against the ``exact_tree_budget`` option), so that ``"auto"``
    picks the same search, and finds the same tree, as before.

    Parameters
    ----------
    features : list of Feature
        The binned covariates.
    n_visitors : int
        The number of visitors.
    columns : int
        Columns of a visitor's row (the number of arms).
    depth : int
        The depth searched.

    Returns
    -------
    float
    """
    p = len(features)
    splits = [f.n_splits for f in features]
    if depth <= 1:
        return p * n_visitors * columns + sum(splits) * columns * 10
    if depth == 2:
        pairs = p * (p + 1) / 2 * n_visitors * columns
        return pairs + sum(a * b for a in splits for b in splits) * columns * 10
    return sum(splits) * 2 * exact_work(features, n_visitors, columns, depth - 1)


def leaf_labels(root: Node, features: list[Feature], n_visitors: int) -> np.ndarray:
    """Leaf number (left to right) of every visitor by its bin codes; -1 when unassigned."""
    labels = np.full(n_visitors, -1, dtype=np.int64)
    counter = itertools.count()

    def visit(node: Node, positions: np.ndarray) -> None:
        if node.is_leaf:
            labels[positions] = next(counter)
            return
        left_bins, left, right = node.split()
        feature = features[node.feature]
        codes = feature.codes[positions]
        goes_left = np.append(left_bins, False)[codes]
        visit(left, positions[goes_left])
        visit(right, positions[~goes_left & (codes != feature.n_bins)])

    visit(root, np.arange(n_visitors))
    return labels


def tree_leaves(root: Node) -> list[Node]:
    """The leaves of a tree, left to right."""
    if root.is_leaf:
        return [root]
    _, left, right = root.split()
    return tree_leaves(left) + tree_leaves(right)


def tree_depth(root: Node) -> int:
    """The depth of a tree: 0 for a leaf."""
    if root.is_leaf:
        return 0
    _, left, right = root.split()
    return 1 + max(tree_depth(left), tree_depth(right))
