"""The ``pytyche`` parser and entry point: both groups of commands, one set of conventions."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    FAMILIES,
    MAX_ARMS,
    MAX_CHAINS,
    MAX_DRAWS,
    MAX_SIMULATED_VISITORS,
    MAX_VISITORS,
    MIN_VISITORS,
    BadInput,
    Parser,
    WorkFailed,
    amount_argument,
    bounded_int,
    epsilon_argument,
    one_line,
    open_interval,
    share_argument,
    stability_argument,
)
from .experiment import add_commands
from .posterior import (
    allocate_command,
    demo_command,
    fit_command,
    simulate_command,
    summary_command,
    tree_command,
)

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
    parser = Parser(
        prog="pytyche",
        description="Adaptive online experiments from a terminal: simulate, fit, discover "
        "segments, allocate the next round and summarize, with the Monte Carlo error of "
        "every figure.",
        epilog="'pytyche COMMAND --help' shows each command's options and an example.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, help_text: str, epilog: str | None = None):
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name] if epilog is None else epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    seed = {"type": bounded_int(0, 2**63 - 1), "default": 0, "help": "seed (>= 0)"}
    overwrite = {
        "action": "store_true",
        "help": "replace an existing posterior store at --out (only a pytyche posterior)",
    }

    demo_parser = command("demo", "simulate, fit, save, discover segments and allocate, end to end")
    demo_parser.add_argument(
        "--visitors",
        type=bounded_int(MIN_VISITORS, MAX_VISITORS),
        default=4_000,
        help=f"visitors to simulate ({MIN_VISITORS:,} to {MAX_VISITORS:,}; default 4,000)",
    )
    demo_parser.add_argument(
        "--draws",
        type=bounded_int(1, MAX_DRAWS),
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
        "--epsilon",
        type=epsilon_argument,
        default=0.02,
        help="floor per arm is epsilon / K (0 to 1)",
    )
    demo_parser.add_argument("--seed", **seed)

    simulate = command(
        "simulate", "write a synthetic posterior store chunk by chunk, for scale trials"
    )
    simulate.add_argument(
        "--visitors",
        type=bounded_int(1, MAX_SIMULATED_VISITORS),
        required=True,
        metavar="N",
        help="visitors (rows)",
    )
    simulate.add_argument(
        "--draws",
        type=bounded_int(1, MAX_DRAWS),
        required=True,
        metavar="D",
        help="posterior draws (per chain)",
    )
    simulate.add_argument(
        "--arms",
        type=bounded_int(2, MAX_ARMS),
        required=True,
        metavar="K",
        help="arms, control first (named control, A, B, ...)",
    )
    simulate.add_argument(
        "--chains", type=bounded_int(1, MAX_CHAINS), default=None, help="add a chain dim"
    )
    simulate.add_argument(
        "--family", choices=FAMILIES, default="hurdle", help="posterior family (default hurdle)"
    )
    simulate.add_argument(
        "--chunk",
        type=bounded_int(1, MAX_SIMULATED_VISITORS),
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
        "--draws", type=bounded_int(1, MAX_DRAWS), default=200, help="posterior draws per chain"
    )
    fit_parser.add_argument(
        "--chains",
        type=bounded_int(1, MAX_CHAINS),
        default=1,
        help="MCMC chains (default 1; 2 or more give R-hat and honest Monte Carlo errors)",
    )
    fit_parser.add_argument(
        "--trees-mu",
        type=bounded_int(1, 10_000),
        default=200,
        help="trees of the prognostic forest (fewer: faster, rougher)",
    )
    fit_parser.add_argument(
        "--trees-tau",
        type=bounded_int(1, 10_000),
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
        "--max-depth", type=bounded_int(0, 6), default=2, help="depth of the tree (0 to 6)"
    )
    tree.add_argument(
        "--min-segment-share",
        type=share_argument,
        default=0.1,
        help="smallest share of visitors in a segment, in (0, 0.5]",
    )
    tree.add_argument(
        "--bootstrap",
        type=bounded_int(0, 10_000),
        default=50,
        help="bootstrap refits for the stability scores (0 to skip)",
    )
    tree.add_argument(
        "--min-stability",
        type=stability_argument,
        default=0.7,
        help="below this stability (weakest leaf), keep a shallower tree (0 keeps any; "
        "default 0.7)",
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
        "--epsilon",
        type=epsilon_argument,
        default=0.02,
        help="floor per arm is epsilon / K (0 to 1)",
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
        "--ci", type=open_interval("ci"), default=0.8, help="mass of the intervals, in (0, 1)"
    )
    summary.add_argument(
        "--min-practical-effect",
        type=amount_argument,
        default=None,
        metavar="AMOUNT",
        help="smallest lift worth having, in the metric's units (default: 2%% of control's mean)",
    )

    # The sequential experiment's commands: pytyche.cli.experiment.
    add_commands(command)
    return parser


# The posterior commands; each sequential command sets its own ``handler`` default.
COMMANDS: dict[str, Callable[[Any], int | None]] = {
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
    and one line, never a traceback. ``pytyche srm`` returns 3 when it flags a sample ratio
    mismatch.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; default: the command line.

    Returns
    -------
    int
        The exit status: 0 on success (or the status a command returns, such as 3 for a
        flagged sample ratio mismatch).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    try:
        status = handler(args)
    except BrokenPipeError:  # `pytyche allocate ... | head`: the reader left; stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except BadInput as error:
        parser.exit(2, f"pytyche: error: {one_line(error)}\n")
    except (OSError, ValueError, WorkFailed) as error:  # PosteriorReadError is a ValueError
        parser.exit(1, f"pytyche: error: {type(error).__name__}: {one_line(error)}\n")
    return status or 0
