"""The fitted policy tree: its nodes as JSON, its leaves as segments, and its output.

A tree is kept as JSON-ready nodes (:func:`describe_tree`): each split names a covariate
and either a numeric threshold (``x <= t`` goes left, ``x > t`` right) or the levels each
side takes. Each leaf is a :class:`pytyche.DiscoveredSegment` whose rule is the AND of the
clauses on its path (:func:`path_rule`). :meth:`PolicyTreeResult.assign` evaluates those
rules, so the visitors a segment's rule selects are, by construction, the visitors the tree
puts in that leaf.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import _html
from ..analysis import thompson_allocation
from ..results import VISITOR
from ..segments import Clause, DiscoveredSegment, SegmentRule, covariate_names, membership
from .binning import Feature, python_literal
from .search import Node, tree_leaves

__all__ = [
    "FORMAT_VERSION",
    "PolicyTreeResult",
    "describe_tree",
    "path_rule",
    "set_clause",
    "side_levels",
    "split_clause",
    "split_description",
]

# Version of the ``to_dict`` description.
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- nodes and rules


def describe_tree(
    root: Node, bins: list[Feature]
) -> tuple[list[dict[str, Any]], list[list[tuple[dict[str, Any], str]]]]:
    """The grown tree as JSON-ready nodes, and the path to each leaf.

    Parameters
    ----------
    root : Node
        The grown tree.
    bins : list of Feature
        The binned covariates its splits index.

    Returns
    -------
    nodes : list of dict
        In level order, ids 0..: ``id``, ``depth``, ``members`` and ``split`` (None for a
        leaf, which has ``segment``, its number left to right; else a
        :func:`split_description`, with the ``left`` and ``right`` child ids).
    paths : list of list of (dict, str)
        Per leaf, left to right: the splits on its path and the side taken (``"left"`` or
        ``"right"``).
    """
    order: list[tuple[Node, int, dict]] = []
    # Levels of each categorical covariate that the path to a node lets through.
    queue: list[tuple[Node, int, dict]] = [(root, 0, {})]
    while queue:
        node, depth, allowed = queue.pop(0)
        order.append((node, depth, allowed))
        if not node.is_leaf:
            left_bins, left, right = node.split()
            feature = bins[node.feature]
            sides = [allowed, allowed]
            if feature.kind == "categorical":
                levels = allowed.get(feature.name, feature.levels)
                sides = [
                    {**allowed, feature.name: side_levels(feature, left_bins == go, levels)}
                    for go in (True, False)
                ]
            queue += [(left, depth + 1, sides[0]), (right, depth + 1, sides[1])]
    ids = {id(node): i for i, (node, _, _) in enumerate(order)}
    leaf_ids = {id(node): i for i, node in enumerate(tree_leaves(root))}
    nodes = []
    for node, depth, allowed in order:
        entry: dict[str, Any] = {
            "id": ids[id(node)],
            "depth": depth,
            "members": round(float(node.total[-1])),
            "split": None,
        }
        if node.is_leaf:
            entry["segment"] = leaf_ids[id(node)]
        else:
            left_bins, left, right = node.split()
            entry["split"] = split_description(bins[node.feature], left_bins, allowed)
            entry["left"] = ids[id(left)]
            entry["right"] = ids[id(right)]
        nodes.append(entry)
    paths: list[list] = []

    def walk(node_id: int, path: list) -> None:
        node = nodes[node_id]
        if node["split"] is None:
            paths.append(path)
            return
        walk(node["left"], [*path, (node["split"], "left")])
        walk(node["right"], [*path, (node["split"], "right")])

    walk(0, [])
    return nodes, paths


def side_levels(feature: Feature, side_bins: np.ndarray, allowed: Sequence) -> list:
    """The levels, in sorted order, whose bin is on a side and that the path lets through.

    Parameters
    ----------
    feature : Feature
        A categorical feature.
    side_bins : numpy.ndarray
        Boolean (value bin,): the bins on the side.
    allowed : sequence of literals
        The levels the path to the node lets through.

    Returns
    -------
    list
    """
    let_through = set(allowed)
    on_side = side_bins[feature.level_bins]
    return [
        level
        for level, on in zip(feature.levels, on_side, strict=True)
        if on and level in let_through
    ]


def split_description(feature: Feature, left_bins: np.ndarray, allowed: Mapping) -> dict:
    """A split as JSON: a numeric threshold, or the levels each side takes.

    A categorical side lists only the levels the path lets reach the node, so the rule and
    the text show no level that cannot be there.

    Parameters
    ----------
    feature : Feature
        The covariate split on.
    left_bins : numpy.ndarray
        Boolean (value bin,): the bins that go left.
    allowed : mapping of str to sequence
        Per categorical covariate, the levels the path to the node lets through.

    Returns
    -------
    dict
        ``{"covariate", "type": "numeric", "threshold"}`` or ``{"covariate", "type":
        "categorical", "left", "right"}``.
    """
    if feature.thresholds is not None:  # numeric
        # Bins 0..j go left: x <= thresholds[j].
        last = int(np.flatnonzero(left_bins).max())
        return {
            "covariate": feature.name,
            "type": "numeric",
            "threshold": python_literal(feature.thresholds[last]),
        }
    levels = allowed.get(feature.name, feature.levels)
    return {
        "covariate": feature.name,
        "type": "categorical",
        "left": side_levels(feature, left_bins, levels),
        "right": side_levels(feature, ~left_bins, levels),
    }


def split_clause(split: Mapping[str, Any], side: str) -> Clause:
    """The clause one side of a split makes.

    Parameters
    ----------
    split : dict
        A :func:`split_description`.
    side : {"left", "right"}
        ``x <= t`` / ``x > t`` for a numeric split; the side's levels for a categorical one.

    Returns
    -------
    Clause
    """
    name = split["covariate"]
    if split["type"] == "numeric":
        return Clause(name, "<=" if side == "left" else ">", split["threshold"])
    return set_clause(name, split[side])


def set_clause(name: str, levels: Sequence) -> Clause:
    """``name == level`` for one level, else ``name in (levels...)``.

    Parameters
    ----------
    name : str
        The covariate.
    levels : sequence of literals
        At least one.

    Returns
    -------
    Clause
    """
    if len(levels) == 1:
        return Clause(name, "==", levels[0])
    return Clause(name, "in", tuple(levels))


def path_rule(path: Sequence[tuple[Mapping[str, Any], str]]) -> SegmentRule:
    """The rule of a leaf: the AND of its path, one or two clauses per covariate.

    The splits on one numeric covariate merge into at most a lower bound ``x > a`` (the
    largest of the right turns' thresholds) and an upper bound ``x <= b`` (the smallest of
    the left turns'); those on one categorical covariate into one set clause of the levels
    every turn lets through.

    Parameters
    ----------
    path : list of (dict, str)
        A path from :func:`describe_tree`.

    Returns
    -------
    SegmentRule
        ``everyone`` for the root of a tree without splits.
    """
    bounds: dict[str, dict[str, Any]] = {}
    for split, side in path:
        state = bounds.setdefault(split["covariate"], {"split": split})
        if split["type"] == "numeric":
            key, pick = ("upper", min) if side == "left" else ("lower", max)
            threshold = split["threshold"]
            state[key] = threshold if key not in state else pick(state[key], threshold)
        else:
            levels = split[side]
            allowed = state.get("allowed")
            state["allowed"] = (
                list(levels) if allowed is None else [lv for lv in allowed if lv in levels]
            )
    clauses = []
    for name, state in bounds.items():
        if state["split"]["type"] == "numeric":
            if "lower" in state:
                clauses.append(Clause(name, ">", state["lower"]))
            if "upper" in state:
                clauses.append(Clause(name, "<=", state["upper"]))
        else:
            clauses.append(set_clause(name, state["allowed"]))
    return SegmentRule(tuple(clauses))


# --------------------------------------------------------------------------- the result


class PolicyTreeResult:
    """A fitted policy tree: its leaves are segments, each served its best arm.

    Built by :func:`fit_policy_tree`, or from :meth:`to_dict` output with :meth:`from_dict`.

    Attributes
    ----------
    segments : tuple of DiscoveredSegment
        The leaves, ids 0..L-1 left to right (left = the ``<=`` / ``in`` side of each split),
        each with its descriptive fields filled in.
    arms : tuple of str
        Arm names, control first.
    features : tuple of str
        The covariates the search could split on.
    objective : float
        Posterior expected metric per visitor of the policy "serve each leaf its best arm"
        (unassigned visitors served control).
    control_objective : float
        The same for "serve everyone control".
    unassigned_share : float
        Fraction of the fitted visitors in no leaf (a missing value on a split covariate).
    search : str
        ``"exact"`` or ``"lookahead"``: how levels below the last two were searched.
    stability : float
        The tree's stability: the smallest ``stability_score`` of its leaves (NaN without
        bootstrap refits).
    min_stability : float
        The smallest stability the fit accepted (0 for a tree built before it existed).
    rejected_trees : tuple of dict
        The deeper trees set aside as less stable than `min_stability`, deepest first:
        ``{"depth": int, "stability": float}`` each; empty when the fitted tree was kept.
    stability_note : str or None
        Why the tree is shallower than fitted (which depths were set aside, at what
        stability, and which was kept), or None when nothing was set aside.
    n_visitors, max_depth, min_segment_share, min_segment_size, n_bootstrap, seed
        The fit's inputs (``min_segment_size`` is the share as a visitor count).
    posterior : BCFResult or None
        The fitted posterior (None after :meth:`from_dict` without one).
    """

    def __init__(self, *, nodes, segments, info: Mapping[str, Any], posterior=None):
        self._nodes = nodes
        self.segments = tuple(segments)
        self.posterior = posterior
        self.arms = tuple(info["arms"])
        self.features = tuple(info["features"])
        self.n_visitors = int(info["n_visitors"])
        self.max_depth = int(info["max_depth"])
        self.min_segment_share = info["min_segment_share"]
        self.min_segment_size = int(info["min_segment_size"])
        self.n_bootstrap = int(info["n_bootstrap"])
        self.seed = int(info["seed"])
        self.search = str(info["search"])
        self.objective = float(info["objective"])
        self.control_objective = float(info["control_objective"])
        self.unassigned_share = float(info["unassigned_share"])
        stability = info.get("stability")
        self.stability = math.nan if stability is None else float(stability)
        self.min_stability = float(info.get("min_stability", 0.0))
        self.rejected_trees = tuple(
            {"depth": int(tree["depth"]), "stability": float(tree["stability"])}
            for tree in info.get("rejected_trees", ())
        )

    @property
    def stability_note(self) -> str | None:
        """Why the tree is shallower than fitted, or None when no tree was set aside."""
        if not self.rejected_trees:
            return None
        rejected = ", ".join(
            f"depth {tree['depth']} (stability {tree['stability']:.2f})"
            for tree in self.rejected_trees
        )
        kept = (
            "the root alone (one segment, everyone)"
            if self.depth == 0
            else f"the depth-{self.depth} tree (stability {self.stability:.2f})"
        )
        return (
            f"not stable enough to act on: set aside the tree(s) of {rejected}, below "
            f"min_stability {self.min_stability:g}; kept {kept}"
        )

    # -- use ------------------------------------------------------------------------------

    def assign(self, observed: xr.Dataset | None = None) -> xr.DataArray:
        """The segment id of every visitor: the leaf whose rule it matches.

        Each leaf's rule (``segment.rule``, the AND of the splits on its path) is evaluated
        with :func:`pytyche.membership`; the leaves' rules are disjoint, so a visitor
        matches at most one.

        Parameters
        ----------
        observed : xarray.Dataset, optional
            Covariates along ``visitor`` (e.g. ``posterior.observed``, or the next round's
            visitors); defaults to the fitted posterior's observed data.

        Returns
        -------
        xarray.DataArray
            int64 (visitor,) segment ids; -1 for a visitor the tree cannot place: a missing
            value, or a category level the fit never saw, on a covariate its path splits on
            (no rule matches it). Lazy when the covariates used are dask-backed.

        Raises
        ------
        ValueError
            When no `observed` is given and the tree carries no posterior, or a covariate is
            missing from `observed`.
        TypeError
            When a covariate of `observed` has a dtype its clauses cannot compare with (as
            :meth:`pytyche.SegmentRule.evaluate`).
        """
        if observed is None:
            if self.posterior is None:
                raise ValueError("this tree carries no posterior: pass the observed covariates")
            observed = self.posterior.observed
        used = sorted({node["split"]["covariate"] for node in self._nodes if node["split"]})
        for name in used:
            if name not in observed.variables or observed.variables[name].dims != (VISITOR,):
                raise ValueError(
                    f"the tree splits on {name!r}, which is not a covariate along 'visitor' of "
                    f"the observed data; found {covariate_names(observed)}"
                )
        # Rows in leaf order: the row of segment i is its rule's membership.
        members = membership(self.segments, observed)
        labels = xr.where(members.any("segment"), members.argmax("segment"), -1)
        return labels.drop_vars("rule", errors="ignore").rename("segment")

    def allocation(self, epsilon: float = 0.02) -> dict[int, dict[str, float]]:
        """Per-segment traffic split over the leaves: ``thompson_allocation(posterior, segments)``.

        Parameters
        ----------
        epsilon : float, default 0.02
            Exploration floor, as :func:`pytyche.thompson_allocation`.

        Returns
        -------
        dict[int, dict[str, float]]
            ``{segment id: {arm: weight}}``.

        Raises
        ------
        ValueError
            When the tree carries no posterior (rebuilt by :meth:`from_dict` without one), or
            as :func:`pytyche.thompson_allocation`.
        """
        if self.posterior is None:
            raise ValueError(
                "this tree carries no posterior (from_dict without one): call "
                "pytyche.thompson_allocation(posterior, tree.segments, epsilon) instead"
            )
        return thompson_allocation(self.posterior, self.segments, epsilon=epsilon)

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description of the tree: splits, leaves and their summaries.

        Returns
        -------
        dict
            Plain lists, dicts, str, int, float, bool and None only (``json.dumps(...,
            allow_nan=False)`` works; a NaN stability score is written as None). The
            posterior is not included.
        """
        segments = []
        for segment in self.segments:
            stability = segment.stability_score
            segments.append(
                {
                    "id": segment.id,
                    "rule": str(segment.rule),
                    "population_share": segment.population_share,
                    "best_arm": segment.best_arm,
                    "arm_best_probabilities": dict(segment.arm_best_probabilities or {}),
                    "gate_estimate": segment.gate_estimate,
                    "gate_interval": list(segment.gate_interval or ()),
                    "stability_score": None
                    if stability is None or math.isnan(stability)
                    else stability,
                }
            )
        return {
            "pytyche_policy_tree": FORMAT_VERSION,
            "arms": list(self.arms),
            "features": list(self.features),
            "n_visitors": self.n_visitors,
            "max_depth": self.max_depth,
            "min_segment_share": self.min_segment_share,
            "min_segment_size": self.min_segment_size,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "search": self.search,
            "objective": self.objective,
            "control_objective": self.control_objective,
            "unassigned_share": self.unassigned_share,
            "stability": None if math.isnan(self.stability) else self.stability,
            "min_stability": self.min_stability,
            "rejected_trees": [dict(tree) for tree in self.rejected_trees],
            "nodes": json.loads(json.dumps(self._nodes)),
            "segments": segments,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], posterior=None) -> PolicyTreeResult:
        """Rebuild a tree from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            As returned by :meth:`to_dict` (or read back from its JSON).
        posterior : BCFResult, optional
            The posterior to attach, for :meth:`allocation` and a default :meth:`assign`.

        Returns
        -------
        PolicyTreeResult

        Raises
        ------
        ValueError
            When `data` is not a policy tree description of a known version.
        """
        version = data.get("pytyche_policy_tree") if isinstance(data, Mapping) else None
        if version != FORMAT_VERSION:
            raise ValueError(
                f"not a pytyche policy tree description (version {FORMAT_VERSION}); got "
                f"pytyche_policy_tree={version!r}"
            )
        nan_stability = int(data["n_bootstrap"]) == 0
        segments = []
        for item in data["segments"]:
            stability = item["stability_score"]
            if stability is None and nan_stability:
                stability = math.nan
            segments.append(
                DiscoveredSegment(
                    item["id"],
                    item["rule"],
                    population_share=item["population_share"],
                    best_arm=item["best_arm"],
                    arm_best_probabilities=item["arm_best_probabilities"],
                    gate_estimate=item["gate_estimate"],
                    gate_interval=tuple(item["gate_interval"]),
                    stability_score=stability,
                )
            )
        nodes = json.loads(json.dumps(list(data["nodes"])))
        return cls(nodes=nodes, segments=segments, info=data, posterior=posterior)

    # -- display --------------------------------------------------------------------------

    def __str__(self) -> str:
        header = (
            f"Policy tree: {len(self.segments)} segment(s) over {self.n_visitors:,} visitors "
            f"(max_depth {self.max_depth}, {self.search} search; arms {', '.join(self.arms)})\n"
            f"expected metric per visitor {self.objective:.6g} under this policy, "
            f"{self.control_objective:.6g} with everyone on control"
        )
        if self.unassigned_share > 0:
            header += (
                f"\n{self.unassigned_share:.1%} of visitors unassigned (a missing value on a "
                "split covariate)"
            )
        if self.stability_note is not None:
            header += f"\n{self.stability_note}"
        lines = [header, "everyone"]

        def visit(node_id: int, prefix: str) -> None:
            node = self._nodes[node_id]
            split = node["split"]
            if split is None:
                return
            for side, last in (("left", False), ("right", True)):
                child = self._nodes[node[side]]
                branch = "└── " if last else "├── "
                text = str(split_clause(split, side))
                if child["split"] is None:
                    text += "  →  " + self._leaf_text(self.segments[child["segment"]])
                lines.append(prefix + branch + text)
                visit(node[side], prefix + ("    " if last else "│   "))

        if self._nodes[0]["split"] is None:
            lines[-1] += "  →  " + self._leaf_text(self.segments[0])
        visit(0, "")
        return "\n".join(lines)

    @staticmethod
    def _leaf_text(segment: DiscoveredSegment) -> str:
        probabilities = ", ".join(
            f"{arm} {p:.3f}" for arm, p in (segment.arm_best_probabilities or {}).items()
        )
        text = (
            f"segment {segment.id}: {segment.population_share:.1%} of visitors, best arm "
            f"{segment.best_arm}; P(best) {probabilities}"
        )
        if segment.gate_interval is not None:
            lo, hi = segment.gate_interval
            text += f"; gain vs control {segment.gate_estimate:+.4g} [{lo:+.4g}, {hi:+.4g}]"
        if segment.stability_score is not None and not math.isnan(segment.stability_score):
            text += f"; stability {segment.stability_score:.2f}"
        return text

    def __repr__(self) -> str:
        fallback = ""
        if self.rejected_trees:
            deepest = self.rejected_trees[0]
            fallback = (
                f", depth {self.depth} kept for stability (depth {deepest['depth']}: "
                f"{deepest['stability']:.2f} < {self.min_stability:g})"
            )
        return (
            f"<PolicyTreeResult: {len(self.segments)} segment(s), max_depth={self.max_depth}, "
            f"arms={list(self.arms)}{fallback}>"
        )

    def _repr_html_(self) -> str:
        return _tree_html(self)

    def plot(self, ax=None):
        """Draw the tree with matplotlib: splits on the edges, a box per leaf.

        The same as :func:`pytyche.plot.policy_tree`, which documents the drawing.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw; a new figure is made when omitted.

        Returns
        -------
        matplotlib.axes.Axes

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install "pytyche[plot]"``).
        """
        from ..plot import policy_tree  # the top layer: imported when called, not at import

        return policy_tree(self, ax=ax)

    @property
    def depth(self) -> int:
        """Depth of the fitted tree (0 for a root-only tree)."""
        return max(node["depth"] for node in self._nodes)


def _tree_html(tree: PolicyTreeResult) -> str:
    """The Jupyter view of a tree: its settings, the leaf table and the tree as text."""
    gain = tree.objective - tree.control_objective
    summary = _html.fields(
        [
            ("arms", ", ".join([f"{tree.arms[0]} (control)", *tree.arms[1:]])),
            ("visitors fitted", _html.integer(tree.n_visitors)),
            ("depth", f"{tree.depth} (max_depth {tree.max_depth}, {tree.search} search)"),
            ("split on", ", ".join(tree.features) or "nothing"),
            (
                "smallest leaf",
                f"{_html.percent(tree.min_segment_share)} of visitors ({tree.min_segment_size:,})",
            ),
            ("metric per visitor", _html.Cell(_html.number(tree.objective), tree.objective)),
            (
                "with everyone on control",
                _html.Cell(_html.number(tree.control_objective), tree.control_objective),
            ),
            ("gain of the policy", _html.Cell(_html.number(gain, "+.4g"), gain)),
            ("unassigned", f"{_html.percent(tree.unassigned_share)} (missing split covariate)"),
            ("bootstrap refits", f"{tree.n_bootstrap} (seed {tree.seed})"),
            (
                "stability",
                f"{_html.number(tree.stability, '.2f')} (min_stability {tree.min_stability:g})",
            ),
            *([("set aside", tree.stability_note)] if tree.stability_note else []),
        ]
    )
    rows = []
    for segment in tree.segments:
        probabilities = segment.arm_best_probabilities or {}
        interval = segment.gate_interval
        row: list[object] = [
            segment.id,
            str(segment.rule),
            _html.Cell(_html.percent(segment.population_share), segment.population_share),
            _html.Cell("" if segment.best_arm is None else segment.best_arm, strong=True),
        ]
        row += [
            _html.Cell(
                _html.number(probabilities.get(arm), ".3f"),
                probabilities.get(arm),
                strong=arm == segment.best_arm,
            )
            for arm in tree.arms
        ]
        row += [
            _html.Cell(_html.number(segment.gate_estimate, "+.4g"), segment.gate_estimate),
            "n/a"
            if interval is None
            else f"[{_html.number(interval[0], '+.4g')}, {_html.number(interval[1], '+.4g')}]",
            _html.number(segment.stability_score, ".2f"),
        ]
        rows.append(row)
    header = [
        "segment",
        "rule",
        "share",
        "best arm",
        *(f"P(best) {arm}" for arm in tree.arms),
        "gain vs control",
        "interval",
        "stability",
    ]
    lines = str(tree).split("\n")
    root = next(i for i, line in enumerate(lines) if line.startswith("everyone"))
    title = (
        f"PolicyTreeResult: {len(tree.segments)} segment(s) over {tree.n_visitors:,} visitors, "
        f"arms {', '.join(tree.arms)}"
    )
    return _html.view(
        title,
        summary,
        _html.table(header, rows),
        _html.details("tree", _html.preformatted("\n".join(lines[root:])), open=True),
    )
