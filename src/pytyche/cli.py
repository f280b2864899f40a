"""``pytyche`` command line: every step of the experimenter's journey, from a terminal.

Commands: ``demo`` (the whole journey on a simulated experiment), ``simulate`` (a synthetic
posterior store, chunk by chunk), ``fit`` (a BCF posterior from a CSV or Parquet table),
``tree`` (segments from a policy tree), ``allocate`` (next round's traffic split) and
``summary`` (per-segment figures and decisions), each with ``--help``.

Every argument, file and segment rule is checked before any work starts: bad input exits
with status 2 and one line on stderr; a failure during the work (a disk filling up, a
corrupt chunk) exits with status 1 and one line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ._kernels import apply_exploration_floor
from ._validate import check_probability
from .data import observed_data, visitor_chunk
from .decisions import recommend
from .examples import example_posterior
from .fitting import fit
from .io import PosteriorReadError, check_write_target, open_posterior, to_zarr
from .policy_tree import PolicyTreeResult, fit_policy_tree
from .results import BCFResult
from .segments import DiscoveredSegment, as_segments, membership
from .simulate import simulate_experiment
from .summary import ConvergenceWarning, check_convergence, segment_summary

# Bounds of the demo's arguments: enough visitors for the hurdle fit (10 converters per arm),
# and few enough that the fit, the store and the tree stay within a laptop's memory.
MIN_VISITORS, MAX_VISITORS = 300, 2_000_000
MAX_DRAWS = 10_000
# simulate writes lazily, chunk by chunk: its sizes are bounded by the disk, not memory.
MAX_SIMULATED_VISITORS = 10**9
MAX_ARMS = 26
MAX_CHAINS = 64
FAMILIES = ("binary", "continuous", "hurdle")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Seconds to wait for a dask scheduler given by --scheduler before calling the address bad.
CONNECT_TIMEOUT_S = 10


class BadInput(Exception):
    """Bad input (an argument, a file, a rule): exit status 2, one line."""


class WorkFailed(Exception):
    """A failure during the work: exit status 1, one line."""


# --------------------------------------------------------------------------- argument types


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), no usage dump."""

    def error(self, message: str):
        """Exit with status 2 and ``message`` on one line."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {value:,}")
        return value

    return parse


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    try:
        return check_probability(
            "epsilon", value, why=" (the floor epsilon / K per arm sums to at most 1)"
        )
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _open_interval(name: str, high: float = 1.0):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0.0 < value < high or (high == 0.5 and value > 0.5):
            raise argparse.ArgumentTypeError(f"{name} must be in (0, {high:g}), got {text}")
        return value

    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 0.5], got {text!r}") from None
    if not 0.0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.5], got {text}")
    return value


# --------------------------------------------------------------------------- checks of input


def check_posterior_path(path: Path) -> BCFResult:
    """Open the POSTERIOR argument lazily (metadata and index coordinates only).

    Parameters
    ----------
    path : pathlib.Path
        A Zarr store or netCDF file written by pytyche.

    Returns
    -------
    BCFResult
        The lazily opened posterior, with observed data.

    Raises
    ------
    BadInput
        When nothing is at ``path``, it is not a pytyche posterior, or it has no observed
        data.
    """
    try:
        result = open_posterior(path)
    except FileNotFoundError as error:
        raise BadInput(f"POSTERIOR: {error}") from None
    except (PosteriorReadError, OSError) as error:
        raise BadInput(f"POSTERIOR: {error}") from None
    if result.observed is None:
        raise BadInput(
            f"POSTERIOR: {path} has no observed data (no 'variant' coordinate): segments "
            "cannot be evaluated on it"
        )
    return result


def read_segments(path: Path) -> list[DiscoveredSegment]:
    """Segments from a JSON file: ``PolicyTreeResult.to_dict()`` output or a list of rules.

    Parameters
    ----------
    path : pathlib.Path
        The file: ``{"pytyche_policy_tree": ..., "segments": [...]}`` as ``pytyche tree``
        writes, or a list ``[{"id": 0, "rule": "device == 'mobile'"}, ...]`` (other keys
        of an item, such as those of ``to_dict()["segments"]``, are ignored).

    Returns
    -------
    list of DiscoveredSegment

    Raises
    ------
    BadInput
        When the file is missing or unreadable, not JSON, not one of the two shapes, or a
        rule does not parse, or two segments share an id.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"--segments: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--segments: cannot read {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"--segments: {path} is not JSON: {error}") from None
    if isinstance(data, dict) and "pytyche_policy_tree" in data:
        try:
            return list(PolicyTreeResult.from_dict(data).segments)
        except (KeyError, TypeError, ValueError) as error:
            raise BadInput(f"--segments: {path}: not a valid policy tree: {error}") from None
    if not isinstance(data, list) or not data:
        raise BadInput(
            f"--segments: {path} must hold a policy tree (pytyche tree --out) or a non-empty "
            'list of {"id": <int>, "rule": "<rule>"} objects'
        )
    segments = []
    for position, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or isinstance(item.get("id"), bool)
            or not isinstance(item.get("id"), int)
            or not isinstance(item.get("rule"), str)
        ):
            raise BadInput(
                f"--segments: {path}: item {position} must be "
                f'{{"id": <int>, "rule": "<rule>"}}, got {json.dumps(item)[:80]}'
            )
        try:
            segments.append(DiscoveredSegment(item["id"], item["rule"]))
        except (TypeError, ValueError) as error:
            raise BadInput(f"--segments: segment {item['id']}: {error}") from None
    try:
        return list(as_segments(segments))
    except (TypeError, ValueError) as error:
        raise BadInput(f"--segments: {path}: {error}") from None


def check_segments_on(result: BCFResult, segments: Sequence[DiscoveredSegment]) -> None:
    """Evaluate the rules on the posterior's covariates, before any pass over the draws.

    Reads the covariates only (small), never the draws.

    Parameters
    ----------
    result : BCFResult
        A posterior with observed data.
    segments : sequence of DiscoveredSegment
        The segments to check.

    Raises
    ------
    BadInput
        For a rule on an unknown covariate, a comparison of text with a number, or a
        segment that matches no visitor.
    """
    observed = result.observed
    assert observed is not None  # check_posterior_path refused such a posterior
    try:
        member = membership(segments, observed)
        counts = np.asarray(member.sum("visitor").values)
    except KeyError as error:
        raise BadInput(f"--segments: {error.args[0] if error.args else error}") from None
    except (TypeError, ValueError) as error:
        raise BadInput(f"--segments: {error}") from None
    for segment, count in zip(segments, counts, strict=True):
        if count == 0:
            raise BadInput(
                f"--segments: segment {segment.id} ({segment.rule}) matches zero visitors of "
                "the posterior; drop it or widen its rule"
            )


def check_output_file(path: Path, option: str = "--out") -> Path:
    """Check, before any work, that a file may be written (atomically) at ``path``.

    Parameters
    ----------
    path : pathlib.Path
        The file to write; an existing file is replaced when the work is done.
    option : str, default "--out"
        The option's name, for the message.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BadInput
        When ``path`` is a directory, or its directory does not exist or is not writable.
    """
    if path.is_dir():
        raise BadInput(f"{option}: {path} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise BadInput(f"{option}: cannot write {path}: {parent} is not an existing directory")
    try:
        handle, probe = tempfile.mkstemp(prefix=".pytyche-probe-", dir=parent)
    except OSError as error:
        raise BadInput(
            f"{option}: cannot write {path}: the directory {parent} is not writable "
            f"({error.strerror})"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return path


def check_store_target(path: Path, overwrite: bool, option: str = "--out") -> Path:
    """Check, before any work, that a posterior store may be written at ``path``.

    Parameters
    ----------
    path : pathlib.Path
        The Zarr store to write.
    overwrite : bool
        Whether an existing pytyche posterior there may be replaced.
    option : str, default "--out"
        The option's name, for the message.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BadInput
        As :func:`pytyche.io.check_write_target` refuses the path.
    """
    try:
        return check_write_target(path, overwrite=overwrite)
    except FileExistsError as error:
        raise BadInput(f"{option}: {error} (pass --overwrite)") from None
    except (OSError, ValueError) as error:
        raise BadInput(f"{option}: {error}") from None


def require_matplotlib() -> None:
    """Check that matplotlib, an optional dependency, is installed.

    Raises
    ------
    BadInput
        When it is not, saying how to install it.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput(
            "--out: the figure needs matplotlib, an optional dependency: "
            "pip install 'pytyche[plot]'"
        ) from None


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Write a file through a temporary file beside ``path``, then rename it into place.

    A reader sees the old file or the complete new one, never a part; a failed write leaves
    no temporary behind.

    Parameters
    ----------
    path : pathlib.Path
        The file to write.
    write : callable
        Called with the temporary file's path; writes the content there.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.pytyche-", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        with open(temporary, "rb") as done:
            os.fsync(done.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically.

    Parameters
    ----------
    path : pathlib.Path
        The file to write.
    data : object
        JSON-safe data (no NaN).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- computing


@contextlib.contextmanager
def scheduler(address: str | None):
    """Local threads, or a ``distributed.Client`` connected to a scheduler, for a ``with``.

    Parameters
    ----------
    address : str or None
        The scheduler's address; None for local threads.

    Yields
    ------
    distributed.Client or None
        The client (the default scheduler inside the block, closed after it), or None.

    Raises
    ------
    BadInput
        When dask.distributed is not installed or the scheduler cannot be reached.
    """
    if address is None:
        yield None
        return
    try:
        import distributed
    except ImportError:
        raise BadInput("--scheduler: needs dask.distributed: pip install distributed") from None
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=True)
    except Exception as error:  # OSError, TimeoutError, a malformed address, ...
        raise BadInput(
            f"--scheduler: cannot connect to {address!r}: {type(error).__name__}: {error}"
        ) from None
    try:
        yield client
    finally:
        client.close()


def compute(collection, client=None):
    """Compute a dask-backed object once, with a progress bar on stderr when it is a terminal.

    On a ``distributed.Client`` the bar is distributed's ``progress``; on local threads
    dask's ``ProgressBar``. Nothing is drawn on stdout, which may be the JSON output.

    Parameters
    ----------
    collection : xarray.Dataset or other dask collection
        What to compute.
    client : distributed.Client, optional
        Compute there instead of on local threads.

    Returns
    -------
    object
        The computed object.

    Raises
    ------
    WorkFailed
        When the cluster fails (a worker lost, a task cancelled).
    """
    bar = sys.stderr.isatty()
    if client is not None:
        try:
            future = client.compute(collection)
            if bar:
                from distributed import progress

                with contextlib.redirect_stdout(sys.stderr):  # stdout may be the JSON
                    progress(future)
                    print(file=sys.stderr)
            return future.result()
        except (OSError, ValueError):  # the data's own errors, as on local threads
            raise
        except Exception as error:  # a worker killed, a lost connection, a cancelled task
            raise WorkFailed(f"the cluster failed: {type(error).__name__}: {error}") from None
    if bar:
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr):
            return collection.compute()
    return collection.compute()


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


def allocation_figure(document: dict[str, Any], path: Path) -> Path:
    """A heatmap of the weights (segments × arms), each annotated with its Monte Carlo error.

    Drawn with matplotlib's object API on an Agg canvas: no global backend is changed.

    Parameters
    ----------
    document : dict
        As :func:`allocation_document` returns.
    path : pathlib.Path
        The PNG file to write, atomically.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = document["arms"]
    segments = document["segments"]
    weights = np.array([[s["weights"][a] for a in arms] for s in segments])
    errors = np.array([[s["prob_best_mcse"][a] for a in arms] for s in segments])
    figure = Figure(figsize=(1.6 * len(arms) + 4.5, 0.6 * len(segments) + 1.6))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(weights, vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto")
    for i in range(weights.shape[0]):
        for j in range(weights.shape[1]):
            color = "white" if weights[i, j] > 0.6 else "black"
            ax.text(
                j,
                i,
                f"{weights[i, j]:.3f}\n± {errors[i, j]:.3f}",
                ha="center",
                va="center",
                color=color,
                fontsize=8,
            )
    ax.set_xticks(range(len(arms)), arms)
    ax.set_yticks(
        range(len(segments)), [f"{s['id']}: {s['rule']}"[:48] for s in segments], fontsize=8
    )
    ax.set_xlabel("arm")
    ax.set_title(f"Next round's traffic split (epsilon = {document['epsilon']:g}; ± MCSE)")
    figure.colorbar(image, ax=ax, label="weight")
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
        allocation_figure(document, out / "allocation.png")
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
        print(compute(recommend(result, segments, ci=args.ci)).__str__())


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


def read_table(path: Path) -> pd.DataFrame:
    """Read the DATA argument: a CSV or Parquet table.

    Parameters
    ----------
    path : pathlib.Path
        A ``.csv``, ``.parquet`` or ``.pq`` file.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    BadInput
        When the file is missing, of another kind, unreadable, or Parquet without pyarrow.
    """
    if not path.is_file():
        raise BadInput(
            f"DATA: {path} does not exist" if not path.exists() else f"DATA: {path} is not a file"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
    except ImportError as error:
        raise BadInput(
            f"DATA: reading Parquet needs pyarrow (pip install pyarrow): {error}"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as error:  # pandas' parser errors too
        raise BadInput(f"DATA: cannot read {path}: {error}".replace("\n", " ")) from None
    raise BadInput(f"DATA: {path} must be a .csv or .parquet file, got {suffix or 'no suffix'!r}")


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


# --------------------------------------------------------------------------- the parser

EXAMPLES = {
    "demo": "example:\n  pytyche demo --visitors 4000 --out demo-output/",
    "simulate": (
        "example (4.8 GB of float32 draws, generated and written chunk by chunk):\n"
        "  pytyche simulate --visitors 1000000 --draws 200 --arms 3 --out big.zarr"
    ),
    "fit": (
        "example:\n"
        "  pytyche fit visitors.csv --outcome revenue --arm-column variant --control control \\\n"
        "      --out posterior.zarr"
    ),
    "tree": "example:\n  pytyche tree posterior.zarr --max-depth 2 --out segments.json",
    "allocate": (
        "example:\n"
        "  pytyche allocate posterior.zarr --segments segments.json --epsilon 0.02 \\\n"
        "      --scheduler tcp://127.0.0.1:8786 --out allocation.json\n\n"
        'SEGMENTS.json: the output of `pytyche tree`, or [{"id": 0, "rule": "device == '
        "'mobile'\"}, ...]"
    ),
    "summary": "example:\n  pytyche summary posterior.zarr --segments segments.json --ci 0.9",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``pytyche`` argument parser, with one sub-command per step.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _Parser(
        prog="pytyche",
        description="Adaptive online experiments from a terminal: simulate, fit, discover "
        "segments, allocate the next round and summarize, with the Monte Carlo error of "
        "every figure.",
        epilog="'pytyche COMMAND --help' shows each command's options and an example.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str):
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    seed = {"type": _bounded_int(0, 2**63 - 1), "default": 0, "help": "seed (>= 0)"}
    overwrite = {
        "action": "store_true",
        "help": "replace an existing posterior store at --out (only a pytyche posterior)",
    }

    demo_parser = command("demo", "simulate, fit, save, discover segments and allocate, end to end")
    demo_parser.add_argument(
        "--visitors",
        type=_bounded_int(MIN_VISITORS, MAX_VISITORS),
        default=4_000,
        help=f"visitors to simulate ({MIN_VISITORS:,} to {MAX_VISITORS:,}; default 4,000)",
    )
    demo_parser.add_argument(
        "--draws",
        type=_bounded_int(1, MAX_DRAWS),
        default=200,
        help=f"posterior draws (1 to {MAX_DRAWS:,}; default 200)",
    )
    where = demo_parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        type=Path,
        default=None,
        help="keep the posterior in this Zarr store (new, empty, or a pytyche posterior)",
    )
    where.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write posterior.zarr, segments.json, allocation.json and allocation.png into "
        "this new or empty directory (the figure needs matplotlib)",
    )
    demo_parser.add_argument(
        "--epsilon", type=_epsilon, default=0.02, help="floor per arm is epsilon / K (0 to 1)"
    )
    demo_parser.add_argument("--seed", **seed)

    simulate = command(
        "simulate", "write a synthetic posterior store chunk by chunk, for scale trials"
    )
    simulate.add_argument(
        "--visitors",
        type=_bounded_int(1, MAX_SIMULATED_VISITORS),
        required=True,
        metavar="N",
        help="visitors (rows)",
    )
    simulate.add_argument(
        "--draws",
        type=_bounded_int(1, MAX_DRAWS),
        required=True,
        metavar="D",
        help="posterior draws (per chain)",
    )
    simulate.add_argument(
        "--arms",
        type=_bounded_int(2, MAX_ARMS),
        required=True,
        metavar="K",
        help="arms, control first (named control, A, B, ...)",
    )
    simulate.add_argument(
        "--chains", type=_bounded_int(1, MAX_CHAINS), default=None, help="add a chain dim"
    )
    simulate.add_argument(
        "--family", choices=FAMILIES, default="hurdle", help="posterior family (default hurdle)"
    )
    simulate.add_argument(
        "--chunk",
        type=_bounded_int(1, MAX_SIMULATED_VISITORS),
        default=None,
        metavar="VISITORS",
        help="visitors per generated chunk (default: about 128 MB of draws per chunk)",
    )
    simulate.add_argument("--seed", **seed)
    simulate.add_argument(
        "--out", type=Path, required=True, metavar="STORE.zarr", help="the Zarr store to write"
    )
    simulate.add_argument("--overwrite", **overwrite)

    fit_parser = command("fit", "fit a BCF posterior to a table of visitors (CSV or Parquet)")
    fit_parser.add_argument("data", type=Path, metavar="DATA", help="a .csv or .parquet table")
    fit_parser.add_argument("--outcome", required=True, metavar="COL", help="outcome column")
    fit_parser.add_argument(
        "--arm-column", required=True, metavar="COL", help="column naming the arm served"
    )
    fit_parser.add_argument(
        "--control",
        default=None,
        metavar="NAME",
        help="the control arm (default: the first arm in the table)",
    )
    fit_parser.add_argument(
        "--family",
        choices=("auto", *FAMILIES),
        default="auto",
        help="posterior family; auto: binary for a 0/1 outcome, hurdle for a non-negative one "
        "with many zeros, else continuous",
    )
    fit_parser.add_argument(
        "--draws", type=_bounded_int(1, MAX_DRAWS), default=200, help="posterior draws per chain"
    )
    fit_parser.add_argument(
        "--chains",
        type=_bounded_int(1, MAX_CHAINS),
        default=1,
        help="MCMC chains (default 1; 2 or more give R-hat and honest Monte Carlo errors)",
    )
    fit_parser.add_argument(
        "--trees-mu",
        type=_bounded_int(1, 10_000),
        default=200,
        help="trees of the prognostic forest (fewer: faster, rougher)",
    )
    fit_parser.add_argument(
        "--trees-tau",
        type=_bounded_int(1, 10_000),
        default=50,
        help="trees of the treatment-effect forest",
    )
    fit_parser.add_argument("--seed", **seed)
    fit_parser.add_argument(
        "--out", type=Path, required=True, metavar="POSTERIOR.zarr", help="the Zarr store to write"
    )
    fit_parser.add_argument("--overwrite", **overwrite)

    tree = command("tree", "discover segments with a policy tree; write them as JSON")
    tree.add_argument("posterior", type=Path, metavar="POSTERIOR", help="Zarr store or netCDF")
    tree.add_argument(
        "--out", type=Path, required=True, metavar="SEGMENTS.json", help="where to write the tree"
    )
    tree.add_argument(
        "--max-depth", type=_bounded_int(0, 6), default=2, help="depth of the tree (0 to 6)"
    )
    tree.add_argument(
        "--min-segment-share",
        type=_share,
        default=0.1,
        help="smallest share of visitors in a segment, in (0, 0.5]",
    )
    tree.add_argument(
        "--bootstrap",
        type=_bounded_int(0, 10_000),
        default=50,
        help="bootstrap refits for the stability scores (0 to skip)",
    )
    tree.add_argument("--seed", **seed)

    allocate = command("allocate", "next round's traffic split per segment, as JSON")
    allocate.add_argument("posterior", type=Path, metavar="POSTERIOR", help="Zarr store or netCDF")
    allocate.add_argument(
        "--segments",
        type=Path,
        required=True,
        metavar="SEGMENTS.json",
        help="the segments: pytyche tree's output, or a list of {id, rule} objects",
    )
    allocate.add_argument(
        "--epsilon", type=_epsilon, default=0.02, help="floor per arm is epsilon / K (0 to 1)"
    )
    allocate.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a dask.distributed scheduler address (default: local threads)",
    )
    allocate.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the JSON here, atomically (default: print it)",
    )

    summary = command("summary", "per-segment figures with Monte Carlo errors, and decisions")
    summary.add_argument("posterior", type=Path, metavar="POSTERIOR", help="Zarr store or netCDF")
    summary.add_argument(
        "--segments",
        type=Path,
        required=True,
        metavar="SEGMENTS.json",
        help="the segments: pytyche tree's output, or a list of {id, rule} objects",
    )
    summary.add_argument(
        "--ci", type=_open_interval("ci"), default=0.8, help="mass of the intervals, in (0, 1)"
    )
    return parser


COMMANDS: dict[str, Callable[[Any], None]] = {
    "demo": demo_command,
    "simulate": simulate_command,
    "fit": fit_command,
    "tree": tree_command,
    "allocate": allocate_command,
    "summary": summary_command,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pytyche`` command.

    Every argument is checked before any work starts: a bad one exits with status 2 and one
    line on stderr; a failure during the work (a disk filling up, say) exits with status 1
    and one line, never a traceback.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; default: the command line.

    Returns
    -------
    int
        The exit status: 0 on success.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except BrokenPipeError:  # `pytyche allocate ... | head`: the reader left; stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except BadInput as error:
        parser.exit(2, f"pytyche: error: {_one_line(error)}\n")
    except (OSError, ValueError, WorkFailed) as error:  # PosteriorReadError is a ValueError
        parser.exit(1, f"pytyche: error: {type(error).__name__}: {_one_line(error)}\n")
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
