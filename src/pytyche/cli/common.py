"""What the ``pytyche`` commands share: exceptions, argument types, checks, writes, dask.

Every check here runs before any work: it raises :class:`BadInput` (exit status 2, one line);
a failure during the work raises :class:`WorkFailed` or an ``OSError`` (exit status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._validate import check_metric_amount, check_probability
from ..io import PosteriorReadError, check_write_target, open_posterior
from ..policy_tree import PolicyTreeResult
from ..results import BCFResult
from ..segments import DiscoveredSegment, as_segments, membership

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
# pandas 2's default CSV float parser can be 1 ulp off the value written; pandas 3's is exact,
# and it deprecates the option.
CSV_FLOAT_OPTIONS = (
    {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
)


class BadInput(Exception):
    """Bad input (an argument, a file, a rule): exit status 2, one line."""


class WorkFailed(Exception):
    """A failure during the work: exit status 1, one line."""


# --------------------------------------------------------------------------- argument types


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), no usage dump."""

    def error(self, message: str):
        """Exit with status 2 and ``message`` on one line."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def bounded_int(low: int, high: int):
    """An argparse type: an integer in ``[low, high]``.

    Parameters
    ----------
    low, high : int
        The bounds, both allowed.

    Returns
    -------
    callable
        Parses the text; raises ``argparse.ArgumentTypeError`` outside the bounds.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {value:,}")
        return value

    return parse


def number_argument(check: Callable[[float], float], expected: str):
    """An argparse type: a number, checked by one of pytyche's argument checkers.

    Parameters
    ----------
    check : callable
        Returns the checked value, or raises ValueError naming what is wrong.
    expected : str
        What the argument should be, for text that is not a number.

    Returns
    -------
    callable
        Parses the text; raises ``argparse.ArgumentTypeError`` with the checker's message.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def probability_argument(name: str, why: str):
    """An argparse type: the probability ``name``, in [0, 1]; ``why`` says what the range means.

    Parameters
    ----------
    name : str
        The quantity's name, for the message.
    why : str
        What the range means, appended to the message.

    Returns
    -------
    callable
    """
    return number_argument(
        lambda value: check_probability(name, value, why=why), "a number in [0, 1]"
    )


epsilon_argument = probability_argument(
    "epsilon", " (the floor epsilon / K per arm sums to at most 1)"
)
stability_argument = probability_argument("min_stability", " (0 keeps any tree)")
amount_argument = number_argument(
    lambda value: check_metric_amount("min_practical_effect", value), "an amount >= 0"
)


def open_interval(name: str):
    """An argparse type: a number in the open interval (0, 1).

    Parameters
    ----------
    name : str
        The quantity's name, for the message.

    Returns
    -------
    callable
        Parses the text; raises ``argparse.ArgumentTypeError`` outside the interval.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be in (0, 1), got {text}")
        return value

    return parse


def share_argument(text: str) -> float:
    """An argparse type: a share of visitors in (0, 0.5].

    Parameters
    ----------
    text : str
        The argument.

    Returns
    -------
    float
    """
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
        # mkstemp's file is private (0600): give it the mode of the file it replaces, or
        # that of a new file under the umask, as a plain open() would.
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            umask = os.umask(0o022)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
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


def read_table(
    path: Path, argument: str = "DATA", text_columns: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a table argument: a CSV or Parquet file.

    Parameters
    ----------
    path : pathlib.Path
        A ``.csv``, ``.parquet`` or ``.pq`` file.
    argument : str, default "DATA"
        The argument's name, for the messages.
    text_columns : sequence of str, default ()
        Columns of a CSV file read as text, never parsed as numbers (visitor ids: ``007``
        stays ``"007"``); absent ones are ignored.

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
            f"{argument}: {path} does not exist"
            if not path.exists()
            else f"{argument}: {path} is not a file"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=dict.fromkeys(text_columns, object), **CSV_FLOAT_OPTIONS)
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
    except ImportError as error:
        raise BadInput(
            f"{argument}: reading Parquet needs pyarrow (pip install pyarrow): {error}"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as error:  # pandas' parser errors too
        raise BadInput(f"{argument}: cannot read {path}: {error}".replace("\n", " ")) from None
    raise BadInput(
        f"{argument}: {path} must be a .csv or .parquet file, got {suffix or 'no suffix'!r}"
    )


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


# --------------------------------------------------------------------------- messages


def one_line(error: object) -> str:
    """The text of an exception (or any object) on one line: whitespace runs become a space.

    Parameters
    ----------
    error : BaseException or object
        What to show.

    Returns
    -------
    str
    """
    return " ".join(str(error).split())
