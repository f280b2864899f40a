"""The ``pytyche`` commands on a posterior: demo, simulate, fit, tree, allocate, summary."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import plot
from .._kernels import apply_exploration_floor
from ..data import observed_data, visitor_chunk
from ..decisions import recommend
from ..examples import example_posterior
from ..fitting import fit
from ..io import PosteriorReadError, open_posterior, to_zarr
from ..policy_tree import fit_policy_tree
from ..segments import membership
from ..simulate import simulate_experiment
from ..summary import ConvergenceWarning, check_convergence, segment_summary
from .common import (
    BadInput,
    check_output_file,
    check_posterior_path,
    check_segments_on,
    check_store_target,
    compute,
    read_segments,
    read_table,
    require_matplotlib,
    scheduler,
    write_atomically,
    write_json,
)

# --------------------------------------------------------------------------- summaries


def checked_summary(result, segments, ci: float = 0.8, client=None) -> xr.Dataset:
    """:func:`pytyche.segment_summary`, computed once and checked.

    Sampler warnings (:func:`pytyche.summary.check_convergence`) are printed on stderr as
    ``pytyche: warning: ...`` lines.

    Parameters
    ----------
    result : BCFResult
        The posterior.
    segments : sequence of DiscoveredSegment
        The segments, already checked against the posterior.
    ci : float, default 0.8
        Mass of the intervals.
    client : distributed.Client, optional
        Compute on this cluster.

    Returns
    -------
    xarray.Dataset
        The computed summary.

    Raises
    ------
    BadInput
        When a segment's members have non-finite draws.
    """
    summary = compute(segment_summary(result, segments, ci=ci), client)
    invalid = summary["prob_best"].isnull().any("arm").values
    if invalid.any():
        index = int(np.flatnonzero(invalid)[0])
        raise BadInput(
            f"segment {int(summary['segment'][index])} ({summary['rule'].values[index]}): a "
            "member's posterior draws contain NaN or infinity; check the posterior"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        check_convergence(summary)
    for warning in caught:
        print(f"pytyche: warning: {warning.message}", file=sys.stderr)
    return summary


def allocation_document(summary: xr.Dataset, epsilon: float) -> dict[str, Any]:
    """The allocation and its Monte Carlo errors, JSON-ready, from a computed summary.

    The weights are ``prob_best`` with the exploration floor: the numbers
    :func:`pytyche.thompson_allocation` returns, from the same pass over the posterior.

    Parameters
    ----------
    summary : xarray.Dataset
        A computed :func:`pytyche.segment_summary`.
    epsilon : float
        The exploration floor, in [0, 1].

    Returns
    -------
    dict
        ``allocation`` (``{segment id as text: {arm: weight}}``), ``epsilon``, ``arms``,
        ``n_samples``, ``n_chains``, ``mcse_method`` and ``segments``: per segment its
        ``id``, ``rule``, ``members``, ``weights``, ``prob_best`` and ``prob_best_mcse``.
    """
    arms = [str(a) for a in summary["arm"].values]
    weights = apply_exploration_floor(summary["prob_best"].values, epsilon)
    rows = zip(
        summary["segment"].values,
        summary["rule"].values,
        summary["members"].values,
        weights,
        summary["prob_best"].values,
        summary["prob_best_mcse"].values,
        strict=True,
    )
    segments = []
    for segment_id, rule, members, weight, prob_best, mcse in rows:
        segments.append(
            {
                "id": int(segment_id),
                "rule": str(rule),
                "members": int(members),
                "weights": dict(zip(arms, weight.tolist(), strict=True)),
                "prob_best": dict(zip(arms, prob_best.tolist(), strict=True)),
                "prob_best_mcse": dict(zip(arms, mcse.tolist(), strict=True)),
            }
        )
    return {
        "allocation": {str(s["id"]): s["weights"] for s in segments},
        "epsilon": epsilon,
        "arms": arms,
        "n_samples": int(summary.attrs["n_samples"]),
        "n_chains": int(summary.attrs["n_chains"]),
        "mcse_method": str(summary.attrs["mcse_method"]),
        "segments": segments,
    }


def summary_table(summary: xr.Dataset) -> pd.DataFrame:
    """One readable row per (segment, arm) of a computed :func:`pytyche.segment_summary`.

    Parameters
    ----------
    summary : xarray.Dataset
        The computed summary.

    Returns
    -------
    pandas.DataFrame
        Text columns: segment, rule, members, arm, metric, contrast with its interval,
        ``P(best) ± MCSE``, ``P(>0) ± MCSE``, expected loss, and with chains R-hat and ESS.
    """
    percent = f"{100 * summary.attrs['ci']:g}%"
    rows = []
    for i in range(summary.sizes["segment"]):
        for j in range(summary.sizes["arm"]):
            cell = summary.isel(segment=i, arm=j)
            row = {
                "segment": int(cell["segment"]),
                "rule": str(cell["rule"].values),
                "members": int(cell["members"]),
                "arm": str(cell["arm"].values),
                "metric": f"{float(cell['metric']):.4g}",
                f"contrast [{percent}]": (
                    f"{float(cell['contrast']):+.4g} [{float(cell['contrast_lower']):+.4g}, "
                    f"{float(cell['contrast_upper']):+.4g}]"
                ),
                "P(best) ± MCSE": _with_error(cell, "prob_best"),
                "P(>0) ± MCSE": _with_error(cell, "prob_positive"),
                "expected loss": f"{float(cell['expected_loss']):.4g}",
            }
            for name, label, spec in (
                ("contrast_rhat", "R-hat", ".3f"),
                ("contrast_ess", "ESS", ".0f"),
            ):
                if name in summary:
                    value = float(cell[name])
                    row[label] = "-" if math.isnan(value) else format(value, spec)
            rows.append(row)
    return pd.DataFrame(rows)


def _with_error(cell: xr.Dataset, name: str) -> str:
    return f"{float(cell[name]):.3f} ± {float(cell[f'{name}_mcse']):.3f}"


def allocation_figure(summary: xr.Dataset, epsilon: float, path: Path) -> Path:
    """:func:`pytyche.plot.allocation` of a computed summary, written to a PNG atomically.

    Drawn on an Agg canvas of its own: no global matplotlib backend is changed.

    Parameters
    ----------
    summary : xarray.Dataset
        A computed :func:`pytyche.segment_summary`.
    epsilon : float
        The exploration floor of the weights shown.
    path : pathlib.Path
        The PNG file to write, atomically.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_segments, n_arms = summary.sizes["segment"], summary.sizes["arm"]
    figure = Figure(figsize=(3.5 + 1.5 * n_arms, 1.2 + 0.6 * n_segments))
    FigureCanvasAgg(figure)
    plot.allocation(summary, epsilon=epsilon, ax=figure.add_subplot())
    figure.tight_layout()
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


# --------------------------------------------------------------------------- the commands


def demo(
    n_visitors: int,
    n_draws: int,
    store: Path | None,
    epsilon: float,
    seed: int,
    out: Path | None = None,
) -> None:
    """Simulate an experiment, fit a BCF, save and reopen it, find segments, allocate.

    Parameters
    ----------
    n_visitors, n_draws : int
        Size of the simulated experiment and of the posterior.
    store : pathlib.Path or None
        Keep the posterior in this Zarr store (replacing a posterior there).
    epsilon : float
        The exploration floor.
    seed : int
        Seed of the simulation, the fit and the tree.
    out : pathlib.Path, optional
        A new or empty directory: write ``posterior.zarr``, ``segments.json``,
        ``allocation.json`` and ``allocation.png`` there.
    """
    observed, truth = simulate_experiment(n_visitors, family="hurdle", seed=seed)
    arms = [str(a) for a in truth["arm"].values]
    print(
        f"1. experiment: {n_visitors:,} visitors split between {', '.join(arms)}; outcome is "
        "revenue per visitor (zero unless they convert); the best arm differs by segment"
    )

    start = time.perf_counter()
    # Smaller forests than fit()'s defaults keep the demo quick; the segments are still found.
    result = fit(
        observed,
        family="hurdle",
        n_draws=n_draws,
        n_trees_mu=50,
        n_trees_tau=20,
        seed=seed,
        progress=False,
    )
    print(
        f"2. hurdle BCF fitted with stochtree: {n_draws} posterior draws "
        f"in {time.perf_counter() - start:.1f} s"
    )

    with tempfile.TemporaryDirectory() as scratch:
        if store is not None:
            path = store
        elif out is not None:
            path = out / "posterior.zarr"
        else:
            path = Path(scratch) / "posterior.zarr"
        result.to_zarr(path, overwrite=store is not None)
        reopened = open_posterior(path)
        chunks = reopened.dataset["conversion"].data.npartitions
        print(f"3. saved atomically to {path} and reopened lazily ({chunks} dask chunk(s))")

        start = time.perf_counter()
        tree = fit_policy_tree(reopened, max_depth=2, n_bootstrap=20, seed=seed)
        print(f"4. policy tree fitted to the posterior in {time.perf_counter() - start:.1f} s:\n")
        print(tree)

        summary = checked_summary(reopened, tree.segments)
    document = allocation_document(summary, epsilon)
    member = membership(tree.segments, observed).values
    true_best = [arms[int(np.argmax(truth["metric"].values[m].mean(axis=0)))] for m in member]
    print(
        f"\n5. next round's traffic split per segment (Thompson, floor epsilon={epsilon}; "
        f"Monte Carlo error of a weight at most {max_mcse(document):.3f}):\n"
    )
    width = max(len(str(s.rule)) for s in tree.segments)
    header = f"{'segment':>7}  {'rule':<{width}}  " + "  ".join(f"{a:>8}" for a in arms)
    print(header + f"  {'true best':>9}")
    for segment, best in zip(tree.segments, true_best, strict=True):
        weights = document["allocation"][str(segment.id)]
        row = "  ".join(f"{weights[a]:>8.3f}" for a in arms)
        print(f"{segment.id:>7}  {segment.rule!s:<{width}}  {row}  {best:>9}")
    if out is not None:
        write_json(out / "segments.json", tree.to_dict())
        write_json(out / "allocation.json", document)
        allocation_figure(summary, epsilon, out / "allocation.png")
        print(f"\n6. wrote {out}: posterior.zarr, segments.json, allocation.json, allocation.png")


def max_mcse(document: dict[str, Any]) -> float:
    """The largest Monte Carlo standard error of a win frequency in an allocation document.

    Parameters
    ----------
    document : dict
        As :func:`allocation_document` returns.

    Returns
    -------
    float
    """
    return max(max(s["prob_best_mcse"].values()) for s in document["segments"])


def allocate_command(args) -> None:
    """``pytyche allocate``: the traffic split of a posterior over segments, as JSON.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    result = check_posterior_path(args.posterior)
    segments = read_segments(args.segments)
    check_segments_on(result, segments)
    if args.out is not None:
        check_output_file(args.out)
    with scheduler(args.scheduler) as client:
        summary = checked_summary(result, segments, client=client)
    document = allocation_document(summary, args.epsilon)
    if args.out is None:
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        write_json(args.out, document)
        print(
            f"wrote the allocation of {len(segments)} segment(s) to {args.out} (Monte Carlo "
            f"error of a weight at most {max_mcse(document):.3f})",
            file=sys.stderr,
        )


def summary_command(args) -> None:
    """``pytyche summary``: per-segment figures with their Monte Carlo errors, and decisions.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    result = check_posterior_path(args.posterior)
    segments = read_segments(args.segments)
    check_segments_on(result, segments)
    summary = checked_summary(result, segments, ci=args.ci)
    attrs = summary.attrs
    chains = f" in {attrs['n_chains']} chains" if attrs["n_chains"] else ""
    print(
        f"Segment summary ({attrs['n_samples']} posterior samples{chains}; ± is the Monte "
        f"Carlo standard error, {attrs['mcse_method']})"
    )
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(summary_table(summary).to_string(index=False))
        print()
        effect = args.min_practical_effect
        decisions = recommend(result, segments, ci=args.ci, min_practical_effect=effect)
        print(compute(decisions).__str__())


def fit_command(args) -> None:
    """``pytyche fit``: a BCF posterior from a table with one row per visitor.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    table = read_table(args.data)
    for option, column in (("--outcome", args.outcome), ("--arm-column", args.arm_column)):
        if column not in table.columns:
            raise BadInput(
                f"{option}: {args.data} has no column {column!r}; columns: {list(table.columns)}"
            )
    if args.outcome == args.arm_column:
        raise BadInput("--outcome and --arm-column must be different columns")
    labels = table[args.arm_column]
    if labels.isna().any():
        raise BadInput(
            f"--arm-column: {int(labels.isna().sum())} row(s) of {args.arm_column!r} are empty"
        )
    labels = labels.astype(str)
    arms = list(pd.unique(labels))
    if args.control is not None:
        if args.control not in arms:
            raise BadInput(f"--control: no arm {args.control!r} in {args.arm_column!r}: {arms}")
        arms.remove(args.control)
        arms.insert(0, args.control)
    if len(arms) < 2:
        raise BadInput(f"--arm-column: {args.arm_column!r} holds one arm only ({arms})")
    frames = [
        (arm, table[labels == arm].drop(columns=args.arm_column).reset_index(drop=True))
        for arm in arms
    ]
    try:
        observed = observed_data(frames, outcome=args.outcome)
    except (TypeError, ValueError) as error:
        raise BadInput(f"DATA: {error}") from None
    check_store_target(args.out, args.overwrite)
    start = time.perf_counter()
    try:
        result = fit(
            observed,
            family=args.family,
            n_draws=args.draws,
            n_chains=args.chains,
            n_trees_mu=args.trees_mu,
            n_trees_tau=args.trees_tau,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
    except ValueError as error:  # the data cannot be fitted: check_setup's problems
        raise BadInput(f"DATA: {error}") from None
    to_zarr(result, args.out, overwrite=args.overwrite)
    print(
        f"fitted a {result.family} BCF to {observed.sizes['visitor']:,} visitors "
        f"(arms {', '.join(arms)}; control {arms[0]}) in {time.perf_counter() - start:.1f} s; "
        f"wrote {args.out}"
    )


def tree_command(args) -> None:
    """``pytyche tree``: segments discovered by a policy tree, as JSON.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    result = check_posterior_path(args.posterior)
    check_output_file(args.out)
    try:
        tree = fit_policy_tree(
            result,
            max_depth=args.max_depth,
            min_segment_share=args.min_segment_share,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            min_stability=args.min_stability,
        )
    except PosteriorReadError:  # a corrupt chunk: a failure of the work, not of the input
        raise
    except ValueError as error:
        raise BadInput(f"POSTERIOR: {error}") from None
    write_json(args.out, tree.to_dict())
    print(tree)
    print(f"\nwrote {len(tree.segments)} segment(s) to {args.out}")


def simulate_command(args) -> None:
    """``pytyche simulate``: a synthetic posterior store, generated and written chunk by chunk.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    check_store_target(args.out, args.overwrite)
    arms = ["control", *(chr(ord("A") + k) for k in range(args.arms - 1))]
    sample_shape = (args.draws,) if args.chains is None else (args.chains, args.draws)
    chunk = args.chunk or visitor_chunk((args.visitors, *sample_shape, args.arms), 4)
    result = example_posterior(
        n_visitors=args.visitors,
        n_draws=args.draws,
        arms=arms,
        family=args.family,
        n_chains=args.chains,
        chunks=min(chunk, args.visitors),
        seed=args.seed,
    )
    start = time.perf_counter()
    to_zarr(result, args.out, overwrite=args.overwrite)
    size = sum(v.nbytes for v in result.dataset.data_vars.values()) / 2**20
    print(
        f"wrote a {args.family} posterior of {args.visitors:,} visitors × "
        f"{math.prod(sample_shape):,} samples × {args.arms} arms ({size:,.1f} MiB of "
        f"draws) to {args.out} in {time.perf_counter() - start:.1f} s"
    )


def demo_command(args) -> None:
    """``pytyche demo``: the whole journey on a simulated experiment.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.

    Raises
    ------
    BadInput
        For bad input, before any work.
    """
    if args.store is not None:
        check_store_target(args.store, overwrite=True, option="--store")
    if args.out is not None:
        require_matplotlib()
        if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
            raise BadInput(f"--out: {args.out} exists and is not an empty directory")
        if not args.out.parent.is_dir():
            raise BadInput(f"--out: {args.out.parent} is not an existing directory")
        try:
            args.out.mkdir(exist_ok=True)
        except OSError as error:
            raise BadInput(f"--out: cannot create {args.out}: {error.strerror}") from None
    demo(args.visitors, args.draws, args.store, args.epsilon, args.seed, out=args.out)
