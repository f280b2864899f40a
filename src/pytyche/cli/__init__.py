"""``pytyche`` command line: every step of the experimenter's journey, from a terminal.

Commands: ``demo`` (the whole journey on a simulated experiment), ``simulate`` (a synthetic
posterior store, chunk by chunk), ``fit`` (a BCF posterior from a CSV or Parquet table),
``tree`` (segments from a policy tree), ``allocate`` (next round's traffic split) and
``summary`` (per-segment figures and decisions), each with ``--help``; and the sequential
experiment's ``start``, ``plan``, ``assign``, ``record``, ``advance``, ``srm`` and
``evaluate`` on an experiment store.

Every argument, file and segment rule is checked before any work starts: bad input exits
with status 2 and one line on stderr; a failure during the work (a disk filling up, a
corrupt chunk) exits with status 1 and one line, never a traceback.

The modules, imported one way (``common`` <- ``posterior``, ``experiment`` <- ``main``):

- :mod:`pytyche.cli.common`: what every command shares (exceptions, argument types, checks
  of input files, atomic writes, the dask scheduler);
- :mod:`pytyche.cli.posterior`: ``demo``, ``simulate``, ``fit``, ``tree``, ``allocate`` and
  ``summary``;
- :mod:`pytyche.cli.experiment`: the sequential experiment's commands;
- ``pytyche.cli.main``: the parser and the entry point, :func:`main`.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
