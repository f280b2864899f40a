"""Plots of an experiment's results, with matplotlib (``pip install "pytyche[plot]"``).

Each function draws one picture of a result pytyche already computed, and returns the
matplotlib Axes it drew on; pass ``ax=`` to draw into a figure of your own. Nothing here
computes a statistic: the figures and their Monte Carlo errors are those of
:func:`pytyche.segment_summary`, :func:`pytyche.fit_policy_tree`,
:func:`pytyche.simulate_sequential` and :meth:`pytyche.SequentialExperiment.srm`.

- :func:`allocation`: the traffic split, segments × arms, each weight ± its Monte Carlo error;
- :func:`contrasts`: each treatment's contrast against control per segment, with its interval;
- :func:`policy_tree`: the discovered segments as a tree;
- :func:`regret`: cumulative regret of the simulated policies;
- :func:`srm`: the sample ratio check, observed against expected visitors per round.

matplotlib is imported when a function is called, so ``import pytyche`` stays cheap.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._kernels import apply_exploration_floor
from ._validate import check_probability
from .policy_tree import PolicyTreeResult
from .policy_tree.result import split_clause
from .results import ARM
from .sequential import SequentialExperiment
from .sequential.srm import MIN_EXPECTED

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["allocation", "contrasts", "policy_tree", "regret", "srm"]

# Row labels longer than this wrap onto further lines.
LABEL_WIDTH = 36
# A cell's text turns white above this weight, where the colour map is dark.
DARK_CELL = 0.6
# Fill of a flagged round in the SRM table, and text colour of a skipped cell.
FLAGGED = "#f8d7da"
SKIPPED = "#999999"


# --------------------------------------------------------------------------- shared checks


def _pyplot(function: str):
    """``matplotlib.pyplot``, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # an optional dependency
        raise ImportError(
            f"pytyche.plot.{function} needs matplotlib, which is not installed: pip install "
            f'"pytyche[plot]"'
        ) from error
    return plt


def _axes(function: str, ax, figsize: tuple[float, float]) -> Axes:
    """The Axes to draw on: ``ax``, or a new figure's of ``figsize`` inches."""
    plt = _pyplot(function)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
        return ax
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(
            f"pytyche.plot.{function}: ax must be a matplotlib Axes or None, got "
            f"{type(ax).__name__}; for a Figure pass fig.gca() or one of fig.axes"
        )
    return ax


def _summary_table(function: str, summary: Any, variables: Sequence[str], segments) -> xr.Dataset:
    """The ``variables`` of a segment_summary, for the chosen segments, in memory."""
    if not isinstance(summary, xr.Dataset):
        raise TypeError(
            f"pytyche.plot.{function} takes the output of pytyche.segment_summary (an "
            f"xarray.Dataset), got {type(summary).__name__}: call "
            f"pt.segment_summary(posterior, segments) first and pass its result"
        )
    missing = [name for name in variables if name not in summary.data_vars]
    if missing or "segment" not in summary.dims or ARM not in summary.dims:
        raise ValueError(
            f"pytyche.plot.{function} takes the output of pytyche.segment_summary, with "
            f"dims (segment, arm) and variables {list(variables)}; this Dataset has dims "
            f"{list(summary.dims)} and lacks {missing}"
        )
    table = summary[list(variables)]
    if segments is not None:
        wanted = [segments] if isinstance(segments, Integral) else list(segments)
        known = summary["segment"].values.tolist()
        unknown = [s for s in wanted if s not in known]
        if unknown or not wanted:
            what = f"segments {unknown!r} are not in the summary" if unknown else "no segment"
            raise ValueError(
                f"pytyche.plot.{function}: {what}, whose segments are {known}; pass some of "
                "those ids, or None for all"
            )
        table = table.sel(segment=wanted)
    # One compute for everything drawn (a lazy summary is one pass over the posterior).
    return table.transpose("segment", ARM).compute()


def _segment_labels(table: xr.Dataset) -> list[str]:
    """``"id: rule"`` per segment, wrapped; the id alone without a ``rule`` coordinate."""
    ids = table["segment"].values.tolist()
    if "rule" not in table.coords:
        return [f"segment {i}" for i in ids]
    rules = table["rule"].values.tolist()
    return [textwrap.fill(f"{i}: {rule}", LABEL_WIDTH) for i, rule in zip(ids, rules, strict=True)]


def _with_error(value: float, error: float) -> str:
    """``"0.62 ± 0.01"``: the error to one significant figure, the value to its decimals.

    Two decimals at least and four at most, so that an error below 0.005 still shows
    (``"0.623 ± 0.004"``) instead of rounding to a reassuring ``± 0.00``.
    """
    if not math.isfinite(value):
        return "–"
    if not math.isfinite(error):
        return f"{value:.2f}"
    decimals = 2 if error <= 0 else min(4, max(2, -math.floor(math.log10(error))))
    return f"{value:.{decimals}f} ± {error:.{decimals}f}"


# --------------------------------------------------------------------------- posterior plots


def allocation(summary: xr.Dataset, *, epsilon: float = 0.0, segments=None, ax=None) -> Axes:
    """Heatmap of the traffic split: segments × arms, each weight ± its Monte Carlo error.

    Each cell is the weight Thompson allocation gives the arm: the posterior probability
    that it is the segment's best (``prob_best`` of :func:`pytyche.segment_summary`) with
    the exploration floor ``epsilon`` applied, exactly as :func:`pytyche.thompson_allocation`
    applies it, annotated with its Monte Carlo standard error (``prob_best_mcse``) as
    ``"0.62 ± 0.01"``. The error is rounded to one significant figure and the weight to the
    same decimal place, so a weight is shown to as many digits as the posterior samples
    support.

    Parameters
    ----------
    summary : xarray.Dataset
        The output of :func:`pytyche.segment_summary` (lazy or computed; computed once here).
        One summary serves both this plot and :func:`contrasts`.
    epsilon : float, default 0.0
        The exploration floor, in [0, 1], as in :func:`pytyche.thompson_allocation`; 0
        shows the raw probabilities of being best.
    segments : int or sequence of int, optional
        Ids of the segments to show, in this order; all, in the summary's order, by default.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made when omitted. A colour bar is added beside it.

    Returns
    -------
    matplotlib.axes.Axes
        Rows are segments (labelled ``"id: rule"``), columns arms; ``ax.texts`` holds one
        annotation per cell, row by row. A segment without members is grey, marked ``–``.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``summary`` is not an xarray.Dataset (a posterior, say: summarize it first), or
        ``ax`` is not a matplotlib Axes.
    ValueError
        When ``summary`` lacks ``prob_best`` or ``prob_best_mcse``, a segment id is not in
        it, or ``epsilon`` is outside [0, 1].

    See Also
    --------
    contrasts : How large each treatment's effect is, per segment.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=1_000, n_draws=100, n_chains=2, seed=1)
    >>> summary = pt.segment_summary(result, {0: "device == 'mobile'", 1: "age > 40"})
    >>> ax = pt.plot.allocation(summary)
    >>> len(ax.texts)   # 2 segments × 3 arms
    6
    >>> import matplotlib.pyplot as plt
    >>> plt.close(ax.figure)
    """
    epsilon = check_probability("epsilon", epsilon)
    table = _summary_table("allocation", summary, ("prob_best", "prob_best_mcse"), segments)
    weights = apply_exploration_floor(table["prob_best"].values, epsilon)
    errors = table["prob_best_mcse"].values
    arms = [str(a) for a in table[ARM].values]
    n_segments, n_arms = weights.shape
    ax = _axes("allocation", ax, (3.5 + 1.5 * n_arms, 1.2 + 0.6 * n_segments))
    from matplotlib import colormaps

    cmap = colormaps["Blues"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(weights), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), weight in np.ndenumerate(weights):
        dark = math.isfinite(weight) and weight > DARK_CELL
        ax.text(
            j,
            i,
            _with_error(float(weight), float(errors[i, j])),
            ha="center",
            va="center",
            fontsize=9,
            color="white" if dark else "black",
        )
    ax.set_xticks(range(n_arms), arms)
    ax.set_yticks(range(n_segments), _segment_labels(table))
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    ax.set_xlabel("arm")
    floor = f", floor epsilon = {epsilon:g}" if epsilon else ""
    ax.set_title(f"Thompson weight = P(best arm){floor}, ± Monte Carlo error")
    ax.figure.colorbar(image, ax=ax, label="weight")
    return ax


def contrasts(summary: xr.Dataset, *, segments=None, ax=None) -> Axes:
    """Each treatment's contrast against control per segment: posterior mean and interval.

    A forest plot: one row per segment, one horizontal interval per treatment (control's
    contrast is 0 by definition and is not drawn), from ``contrast_lower`` to
    ``contrast_upper`` of :func:`pytyche.segment_summary` (its central ``ci`` interval,
    80% by default), with a dot at the posterior mean ``contrast``. An interval clear of
    the dashed zero line says the treatment's effect in that segment has a sign.

    Parameters
    ----------
    summary : xarray.Dataset
        The output of :func:`pytyche.segment_summary` (lazy or computed; computed once here).
    segments : int or sequence of int, optional
        Ids of the segments to show, top to bottom; all, in the summary's order, by default.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.collections`` holds, per treatment in arm order, the intervals (a
        ``LineCollection`` labelled with the arm, one segment per row) and the means;
        ``ax.get_yticklabels()`` are the segments (``"id: rule"``).

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``summary`` is not an xarray.Dataset, or ``ax`` is not a matplotlib Axes.
    ValueError
        When ``summary`` lacks the contrast variables, has no treatment arm, or a segment
        id is not in it.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=1_000, n_draws=100, seed=1)
    >>> summary = pt.segment_summary(result, {0: "device == 'mobile'", 1: "age > 40"}, ci=0.9)
    >>> ax = pt.plot.contrasts(summary)
    >>> [c.get_label() for c in ax.collections[::2]]   # intervals, one set per treatment
    ['A', 'B']
    >>> import matplotlib.pyplot as plt
    >>> plt.close(ax.figure)
    """
    variables = ("contrast", "contrast_lower", "contrast_upper")
    table = _summary_table("contrasts", summary, variables, segments)
    arms = [str(a) for a in table[ARM].values]
    if len(arms) < 2:
        raise ValueError(
            f"pytyche.plot.contrasts: the summary has arms {arms}, no treatment to contrast "
            "with control; summarize a posterior with at least two arms"
        )
    n_segments, treatments = table.sizes["segment"], arms[1:]
    ax = _axes("contrasts", ax, (7.5, 1.2 + 0.25 * n_segments * (len(treatments) + 1)))
    rows = -np.arange(n_segments, dtype=np.float64)  # the first segment on top
    # Treatments side by side within a segment's row, the first on top.
    offsets = np.linspace(0.25, -0.25, len(treatments)) if len(treatments) > 1 else [0.0]
    for k, (arm, offset) in enumerate(zip(treatments, offsets, strict=True)):
        color = f"C{k % 10}"  # the default colour cycle, one colour per treatment
        y = rows + offset
        ax.hlines(
            y,
            table["contrast_lower"].sel({ARM: arm}).values,
            table["contrast_upper"].sel({ARM: arm}).values,
            color=color,
            linewidth=2,
            label=arm,
        )
        ax.scatter(table["contrast"].sel({ARM: arm}).values, y, color=color, zorder=3, s=20)
    ax.axvline(0.0, color="#555555", linestyle="--", linewidth=1)
    ax.set_yticks(rows, _segment_labels(table))
    ax.set_ylim(rows[-1] - 0.6, 0.6)
    ci = summary.attrs.get("ci")
    interval = f"central {float(ci):.0%} interval" if ci is not None else "interval"
    ax.set_xlabel(f"contrast against {arms[0]} (segment mean): posterior mean and {interval}")
    ax.set_title("Treatment effect per segment")
    ax.legend(title="arm", loc="best")
    return ax


def policy_tree(tree: PolicyTreeResult, *, ax=None) -> Axes:
    """Draw a fitted policy tree: a split on each edge, a box per leaf.

    Each inner node shows how many fitted visitors reach it, each edge the clause its side
    of the split takes (``age <= 40.0``), and each leaf its segment: share of visitors, best
    arm and that arm's posterior probability of being best. :meth:`PolicyTreeResult.plot`
    calls this.

    Parameters
    ----------
    tree : PolicyTreeResult
        From :func:`pytyche.fit_policy_tree` (or :meth:`PolicyTreeResult.from_dict`).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure, sized to the tree, is made when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.texts`` holds one box per node (leaf boxes start with ``"segment "``) and one
        label per edge; ``ax.lines`` one line per edge.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``tree`` is not a PolicyTreeResult, or ``ax`` is not a matplotlib Axes.

    Examples
    --------
    >>> import pytyche as pt
    >>> result = pt.example_posterior(n_visitors=1_000, n_draws=40, seed=5)
    >>> tree = pt.fit_policy_tree(result, max_depth=2, n_bootstrap=0)
    >>> ax = pt.plot.policy_tree(tree)
    >>> sum(t.get_text().startswith("segment ") for t in ax.texts) == len(tree.segments)
    True
    >>> import matplotlib.pyplot as plt
    >>> plt.close(ax.figure)
    """
    if not isinstance(tree, PolicyTreeResult):
        raise TypeError(
            f"pytyche.plot.policy_tree takes a PolicyTreeResult, got {type(tree).__name__}: "
            "fit one with pt.fit_policy_tree(posterior) or rebuild it with "
            "pt.PolicyTreeResult.from_dict(data)"
        )
    nodes = tree.to_dict()["nodes"]
    ax = _axes(
        "policy_tree", ax, (max(6.0, 3.2 * max(1, len(tree.segments))), 1.8 + 1.6 * tree.depth)
    )
    positions: dict[int, tuple[float, float]] = {}
    leaves = itertools.count()

    def place(node_id: int, depth: int) -> float:
        # Leaves one unit apart, left to right; a split centred over its two children.
        node = nodes[node_id]
        if node["split"] is None:
            x = float(next(leaves))
        else:
            x = (place(node["left"], depth + 1) + place(node["right"], depth + 1)) / 2
        positions[node_id] = (x, -float(depth))
        return x

    place(0, 0)
    for node_id, (x, y) in positions.items():
        node = nodes[node_id]
        if node["split"] is None:
            segment = tree.segments[node["segment"]]
            probability = (segment.arm_best_probabilities or {}).get(segment.best_arm, math.nan)
            label = (
                f"segment {segment.id}\n{segment.population_share:.1%} of visitors\n"
                f"best: {segment.best_arm} (P={probability:.2f})"
            )
            style = {"boxstyle": "round", "facecolor": "#e8f1fb", "edgecolor": "#3a6ea5"}
        else:
            label = f"{node['members']:,} visitors"
            style = {"boxstyle": "round", "facecolor": "#f4f4f4", "edgecolor": "#888888"}
            for side in ("left", "right"):
                cx, cy = positions[node[side]]
                ax.plot([x, cx], [y, cy], color="#888888", zorder=1)
                ax.text(
                    (x + cx) / 2,
                    (y + cy) / 2,
                    str(split_clause(node["split"], side)),
                    ha="center",
                    va="center",
                    fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
                )
        ax.text(x, y, label, ha="center", va="center", fontsize=9, bbox=style, zorder=2)
    xs = [p[0] for p in positions.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(-tree.depth - 0.6, 0.6)
    ax.set_axis_off()
    ax.set_title(f"Policy tree: {len(tree.segments)} segment(s)")
    return ax


# ------------------------------------------------------------------ the sequential experiment


def regret(simulation: xr.Dataset, *, ax=None) -> Axes:
    """Cumulative regret of each simulated policy against the visitors served so far.

    Regret is what serving the arms a policy chose cost against serving every visitor their
    true best arm, summed over visitors, in metric units. A line that flattens belongs to a
    policy that has learned each segment's best arm.

    Parameters
    ----------
    simulation : xarray.Dataset
        The output of :func:`pytyche.simulate_sequential`: ``cumulative_regret`` (policy,
        round) and ``visitors`` (round).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is made when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        One line per policy, in the ``policy`` coordinate's order and labelled with it:
        x the cumulative visitors at the end of each round, y ``cumulative_regret``.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``simulation`` is not an xarray.Dataset, or ``ax`` is not a matplotlib Axes.
    ValueError
        When it lacks ``cumulative_regret`` or ``visitors``.
    """
    needed = ("cumulative_regret", "visitors")
    if not isinstance(simulation, xr.Dataset):
        raise TypeError(
            "pytyche.plot.regret takes the output of pytyche.simulate_sequential (an "
            f"xarray.Dataset), got {type(simulation).__name__}"
        )
    missing = [name for name in needed if name not in simulation.data_vars]
    if missing:
        raise ValueError(
            f"pytyche.plot.regret takes the output of pytyche.simulate_sequential; this "
            f"Dataset lacks {missing} (it has {sorted(map(str, simulation.data_vars))})"
        )
    ax = _axes("regret", ax, (6.5, 4.0))
    visitors = np.cumsum(simulation["visitors"].values)
    cumulative = simulation["cumulative_regret"].transpose("policy", "round")
    for policy in cumulative["policy"].values:
        ax.plot(visitors, cumulative.sel(policy=policy).values, marker="o", label=str(policy))
    ax.set_xlabel("visitors so far")
    ax.set_ylabel("cumulative regret (metric units)")
    scenario = simulation.attrs.get("scenario")
    ax.set_title(f"Cumulative regret{f', {scenario} scenario' if scenario else ''}")
    ax.legend(title="policy")
    return ax


def srm(check: xr.Dataset | SequentialExperiment, *, ax=None) -> Axes:
    """The sample ratio check as a table: observed / expected visitors per round, cell and arm.

    One row per (round, cell), one column per arm, each entry ``"observed / expected"``
    visitors; the round's chi-square p-value beside its first row and the pooled one in the
    last row. A flagged round (p-value below the check's threshold: visitors went missing or
    were assigned against the plan) is shaded red and marked ``SRM``. Entries expected to
    hold fewer than 5 visitors are left out of the test and shown grey.

    Parameters
    ----------
    check : xarray.Dataset or SequentialExperiment
        The output of :meth:`pytyche.SequentialExperiment.srm` or
        :func:`pytyche.sequential.srm_test`; an experiment is checked with
        ``experiment.srm()`` (pass ``experiment.srm(threshold)`` for another threshold).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure, sized to the table, is made when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        Axis lines off; ``ax.tables[0]`` holds the table, a header row then one row per
        (round, cell) and the pooled row.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    TypeError
        When ``check`` is neither an xarray.Dataset nor a SequentialExperiment, or ``ax``
        is not a matplotlib Axes.
    ValueError
        When the Dataset is not an SRM check, or (from ``experiment.srm()``) nothing has
        been recorded yet.

    Examples
    --------
    >>> import xarray as xr
    >>> from pytyche.sequential import srm_test
    >>> dims = ("round", "cell", "arm")
    >>> observed = xr.DataArray([[[480, 520]]], dims=dims, coords={"arm": ["control", "A"]})
    >>> expected = xr.DataArray([[[500.0, 500.0]]], dims=dims, coords={"arm": ["control", "A"]})
    >>> ax = srm(srm_test(observed, expected))
    >>> ax.tables[0][1, 2].get_text().get_text()   # round 0, first cell, control
    '480 / 500.0'
    >>> import matplotlib.pyplot as plt
    >>> plt.close(ax.figure)
    """
    if isinstance(check, SequentialExperiment):
        check = check.srm()
    if not isinstance(check, xr.Dataset):
        raise TypeError(
            "pytyche.plot.srm takes a SequentialExperiment or the Dataset of its .srm() "
            f"(or of pytyche.sequential.srm_test), got {type(check).__name__}"
        )
    needed = ("observed", "expected", "p_value", "flagged", "pooled_p_value", "pooled_flagged")
    missing = [name for name in needed if name not in check.data_vars]
    if missing:
        raise ValueError(
            f"pytyche.plot.srm takes the Dataset of SequentialExperiment.srm() or "
            f"pytyche.sequential.srm_test; this one lacks {missing}"
        )
    observed = check["observed"].transpose("round", "cell", "arm")
    expected = check["expected"].transpose("round", "cell", "arm")
    rounds = observed["round"].values if "round" in observed.coords else range(observed.shape[0])
    cells = observed["cell"].values if "cell" in observed.coords else range(observed.shape[1])
    arms = observed["arm"].values if "arm" in observed.coords else range(observed.shape[2])
    min_expected = float(check.attrs.get("min_expected", MIN_EXPECTED))
    threshold = check.attrs.get("threshold")

    def p_text(p: float, flagged: bool) -> str:
        return "n/a" if not math.isfinite(p) else f"{p:.3g}" + ("  SRM" if flagged else "")

    text: list[list[str]] = []
    shade: list[bool] = []
    grey: list[tuple[int, int]] = []
    p_values, flags = check["p_value"].values, check["flagged"].values
    for r, round_id in enumerate(rounds):
        for c, cell in enumerate(cells):
            row = [str(round_id) if c == 0 else "", str(cell)]
            for a in range(len(arms)):
                o, e = float(observed.values[r, c, a]), float(expected.values[r, c, a])
                row.append("–" if o == 0 and e == 0 else f"{o:,.0f} / {e:,.1f}")
                if e < min_expected:  # left out of the chi-square: shown grey
                    grey.append((len(text) + 1, 2 + a))
            row.append(p_text(float(p_values[r]), bool(flags[r])) if c == 0 else "")
            text.append(row)
            shade.append(bool(flags[r]))
    pooled = float(check["pooled_p_value"])
    text.append(["all", "pooled", *[""] * len(arms), p_text(pooled, bool(check["pooled_flagged"]))])
    shade.append(bool(check["pooled_flagged"]))
    columns = ["round", "cell", *[str(a) for a in arms], "p-value"]
    ax = _axes("srm", ax, (1.6 * len(columns) + 0.5, 0.8 + 0.3 * (len(text) + 1)))
    table = ax.table(cellText=text, colLabels=columns, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.3)
    for (row, _), cell in table.get_celld().items():
        if row >= 1 and shade[row - 1]:
            cell.set_facecolor(FLAGGED)
    for position in grey:
        table[position].get_text().set_color(SKIPPED)
    ax.set_axis_off()
    flagged_when = f"p < {float(threshold):g}" if threshold is not None else "flagged"
    ax.set_title(f"Sample ratio: observed / expected visitors ({flagged_when} is flagged SRM)")
    return ax
