"""HTML building blocks for the rich Jupyter views (``_repr_html_``) of pytyche's objects.

Leaf module: imports nothing of pytyche. Every function takes plain values (text, numbers,
lists of rows) and returns an HTML fragment; every value that becomes text in the page goes
through :func:`escape`, so an arm name, a rule or a covariate name holding ``<script>``
shows as text. Fragments returned here are trusted HTML and are passed on as they are: only
a function's *fragment* arguments (``parts``, ``body``) are inserted unescaped.

The HTML is plain: tables, a ``<details>`` for long parts, ``<pre>`` for text trees; no
JavaScript, no stylesheet.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from numbers import Real
from typing import NamedTuple

__all__ = [
    "Cell",
    "bullets",
    "byte_size",
    "chunk_text",
    "details",
    "escape",
    "fields",
    "integer",
    "number",
    "paragraph",
    "percent",
    "preformatted",
    "table",
    "view",
]


class Cell(NamedTuple):
    """A table cell: its text, an optional hover text (e.g. the exact value), and emphasis.

    Attributes
    ----------
    text : object
        What the cell shows (escaped).
    title : object, optional
        Shown on hover (escaped): the unrounded value of a rounded number.
    strong : bool
        Bold (e.g. the best arm's column).
    """

    text: object
    title: object = None
    strong: bool = False


def escape(value: object) -> str:
    """``str(value)`` with ``&``, ``<``, ``>`` and both quotes escaped.

    Parameters
    ----------
    value : object
        Anything; converted with ``str``.

    Returns
    -------
    str

    Examples
    --------
    >>> escape("<script>alert('x')</script>")
    '&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;'
    """
    return html.escape(str(value), quote=True)


def _cell(value: object, tag: str) -> str:
    cell = value if isinstance(value, Cell) else Cell(value)
    text = escape(cell.text)
    if cell.strong:
        text = f"<strong>{text}</strong>"
    title = "" if cell.title is None else f' title="{escape(cell.title)}"'
    return f"<{tag}{title}>{text}</{tag}>"


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A ``<table>``: one header row, then one row per item of `rows`.

    Parameters
    ----------
    header : sequence
        Column titles (text or :class:`Cell`).
    rows : iterable of sequences
        Cell values (text, numbers or :class:`Cell`), each escaped.

    Returns
    -------
    str

    Examples
    --------
    >>> table(["arm", "weight"], [["A", "50.0%"]])
    '<table><thead><tr><th>arm</th><th>weight</th></tr></thead><tbody><tr><td>A</td><td>50.0%</td></tr></tbody></table>'
    """
    head = "".join(_cell(title, "th") for title in header)
    body = "".join("<tr>" + "".join(_cell(v, "td") for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fields(pairs: Iterable[tuple[object, object]]) -> str:
    """A two-column table of named values: the name in a row header, the value beside it.

    Parameters
    ----------
    pairs : iterable of (name, value)
        Values are text, numbers or :class:`Cell`, escaped.

    Returns
    -------
    str

    Examples
    --------
    >>> fields([("family", "binary")])
    '<table><tbody><tr><th>family</th><td>binary</td></tr></tbody></table>'
    """
    body = "".join(f"<tr>{_cell(name, 'th')}{_cell(value, 'td')}</tr>" for name, value in pairs)
    return f"<table><tbody>{body}</tbody></table>"


def paragraph(text: object) -> str:
    """A ``<p>`` of escaped text.

    Parameters
    ----------
    text : object
        The text.

    Returns
    -------
    str
    """
    return f"<p>{escape(text)}</p>"


def bullets(items: Iterable[object]) -> str:
    """A ``<ul>`` of escaped items; empty text for no items.

    Parameters
    ----------
    items : iterable
        The items.

    Returns
    -------
    str
    """
    listed = "".join(f"<li>{escape(item)}</li>" for item in items)
    return f"<ul>{listed}</ul>" if listed else ""


def preformatted(text: object) -> str:
    """A ``<pre>`` of escaped text (a text tree keeps its layout).

    Parameters
    ----------
    text : object
        The text.

    Returns
    -------
    str
    """
    return f"<pre>{escape(text)}</pre>"


def details(summary: object, body: str, *, open: bool = False) -> str:
    """A collapsible ``<details>`` block: `summary` (escaped) over the fragment `body`.

    Parameters
    ----------
    summary : object
        The always-visible line.
    body : str
        An HTML fragment built by this module.
    open : bool, default False
        Start expanded.

    Returns
    -------
    str
    """
    flag = " open" if open else ""
    return f"<details{flag}><summary>{escape(summary)}</summary>{body}</details>"


def view(title: object, *parts: str) -> str:
    """The whole view: a bold title line over the fragments `parts`.

    Parameters
    ----------
    title : object
        The object's one-line description (escaped).
    *parts : str
        HTML fragments built by this module; empty ones are skipped.

    Returns
    -------
    str
    """
    body = "".join(part for part in parts if part)
    return f'<div class="pytyche-view"><p><strong>{escape(title)}</strong></p>{body}</div>'


# --------------------------------------------------------------------------- numbers as text


def integer(value: int) -> str:
    """An integer with thousands separators: ``12,345``.

    Parameters
    ----------
    value : int
        The number.

    Returns
    -------
    str
    """
    return f"{int(value):,}"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, Real) and math.isnan(float(value)))


def number(value: float | None, spec: str = ".4g") -> str:
    """A number in a format spec; ``n/a`` for None or NaN.

    Parameters
    ----------
    value : float or None
        The number.
    spec : str, default ".4g"
        A format spec (``"+.4g"`` for a signed contrast).

    Returns
    -------
    str
    """
    return "n/a" if _missing(value) else format(float(value), spec)  # type: ignore[arg-type]


def percent(value: float | None, digits: int = 1) -> str:
    """A share as a percentage: ``0.1234`` → ``12.3%``; ``n/a`` for None or NaN.

    Parameters
    ----------
    value : float or None
        The share, 1 = 100%.
    digits : int, default 1
        Decimals shown.

    Returns
    -------
    str
    """
    return "n/a" if _missing(value) else f"{float(value):.{digits}%}"  # type: ignore[arg-type]


def byte_size(n_bytes: int) -> str:
    """A size in bytes in binary units: ``1536`` → ``1.5 KiB``.

    Parameters
    ----------
    n_bytes : int
        The size.

    Returns
    -------
    str

    Examples
    --------
    >>> byte_size(36 * 2**30)
    '36.0 GiB'
    """
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def chunk_text(chunks: Sequence[int] | None, max_runs: int = 4) -> str:
    """The chunk sizes of one dim, runs of equal sizes counted: ``4 × 1,000 + 500``.

    Parameters
    ----------
    chunks : sequence of int or None
        The dim's chunk sizes (dask's ``chunks`` entry for the dim); None for a numpy array.
    max_runs : int, default 4
        Runs shown before the rest is summarised.

    Returns
    -------
    str
        ``in memory`` for None.

    Examples
    --------
    >>> chunk_text((1000, 1000, 1000, 500))
    '3 × 1,000 + 500'
    >>> chunk_text(None)
    'in memory'
    """
    if chunks is None:
        return "in memory"
    runs: list[list[int]] = []
    for size in chunks:
        if runs and runs[-1][1] == size:
            runs[-1][0] += 1
        else:
            runs.append([1, int(size)])
    shown = [f"{count} × {size:,}" if count > 1 else f"{size:,}" for count, size in runs]
    if len(shown) > max_runs:
        return " + ".join(shown[:max_runs]) + f" + … ({len(chunks):,} chunks)"
    if len(chunks) == 1:
        return f"{chunks[0]:,} (one chunk)"
    return " + ".join(shown)
