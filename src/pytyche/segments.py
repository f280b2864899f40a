"""Segments: named, interpretable rules over visitor covariates.

A segment rule is an AND of simple clauses such as ``device == 'mobile'`` or
``age > 40``.  Rules have a small text syntax that round-trips exactly::

    everyone
    device == 'mobile' and age > 40
    plan in ('pro', 'team') and `page views` >= 3

Rules are evaluated against an :class:`xarray.Dataset` of covariates laid out
along the ``visitor`` dimension, lazily when the covariates are dask-backed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "Clause",
    "DiscoveredSegment",
    "SegmentRule",
    "as_segments",
    "covariate_kind",
    "covariate_names",
    "dtype_kind",
    "membership",
    "ordered_levels",
]

VISITOR = "visitor"
# Attribute of an ordered text covariate (a pandas ordered Categorical given to
# ``observed_data``): its levels, lowest first. Stored with the variable, so Zarr and
# netCDF keep it.
ORDERED_LEVELS_ATTR = "pytyche_ordered_levels"
# Segment ids are stored as int64 (the ``segment`` coordinate).
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)

_SET_OPS = ("in", "not in")
_ORDERED_OPS = ("<", "<=", ">", ">=")
_OPS = ("==", "!=", *_ORDERED_OPS, *_SET_OPS)
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_KEYWORDS = frozenset({"and", "in", "not", "everyone", "True", "False"})
_NONFINITE = frozenset({"nan", "inf", "infinity"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


# --------------------------------------------------------------------------- literals


def _literal(value: Any) -> bool | int | float | str:
    """Normalise one literal to a plain Python bool/int/float/str, or raise ValueError."""
    # bool before int: bool is an int subclass but a different kind of literal.
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        if abs(int(value)) > sys.float_info.max:  # cannot be compared with a float column
            raise ValueError(f"integer literal {value} is beyond the float range")
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise ValueError(f"literal must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, str):
        if "\x00" in value:  # numpy's fixed-width text drops trailing NULs: "a\0" == "a"
            raise ValueError(
                f"text literal {value!r} holds a NUL character, which cannot be matched "
                "exactly; remove it from the rule"
            )
        return str(value)
    raise ValueError(
        f"literal must be a str, int, float or bool, got {value!r} ({type(value).__name__})"
    )


def _literal_kind(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "text"
    return "number"


def _format_literal(value: bool | int | float | str) -> str:
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace("'", "\\'")
            .replace("\n", "\\n")
            .replace("\t", "\\t")
        )
        return f"'{escaped}'"
    return repr(value)


def _format_name(name: str) -> str:
    if _IDENT.fullmatch(name) and name not in _KEYWORDS:
        return name
    return "`" + name.replace("`", "``") + "`"


# --------------------------------------------------------------------------- covariates


def covariate_names(observed: xr.Dataset, *, exclude: Iterable[str] = ()) -> list[str]:
    """The visitor covariates of observed data: its 1-D variables along ``visitor``.

    The one definition every module uses (rule evaluation, the policy tree, fits).

    Parameters
    ----------
    observed : xarray.Dataset
        Observed data: coordinates or data variables along ``visitor``.
    exclude : iterable of str, optional
        Names to leave out (e.g. ``variant`` and ``outcome``, which a policy cannot split on).

    Returns
    -------
    list of str
        In the Dataset's order; the ``visitor`` index is never a covariate.

    Examples
    --------
    >>> ds = xr.Dataset({"age": ("visitor", [30.0])}, coords={"visitor": [7]})
    >>> covariate_names(ds)
    ['age']
    """
    excluded = set(exclude)
    return [
        str(name)
        for name, var in observed.variables.items()
        if var.dims == (VISITOR,) and name not in observed.xindexes and name not in excluded
    ]


def ordered_levels(
    variable: xr.Variable | xr.DataArray, name: str = "covariate"
) -> tuple[str, ...] | None:
    """The levels of an ordered text covariate, lowest first, or None when it is unordered.

    Parameters
    ----------
    variable : xarray.Variable or xarray.DataArray
        A covariate; its ``pytyche_ordered_levels`` attribute (``ORDERED_LEVELS_ATTR``),
        written by :func:`pytyche.observed_data` for a pandas ordered Categorical, lists the
        levels in order.
    name : str, default "covariate"
        The covariate's name, for the message.

    Returns
    -------
    tuple of str or None

    Raises
    ------
    ValueError
        When the attribute is not a non-empty list of distinct strings.
    """
    raw = variable.attrs.get(ORDERED_LEVELS_ATTR)
    if raw is None:
        return None
    if isinstance(raw, str):  # a store may hand a one-element list back as its string
        raw = [raw]
    levels = tuple(raw) if isinstance(raw, list | tuple | np.ndarray) else ()
    if not levels or not all(isinstance(v, str) for v in levels) or len(set(levels)) < len(
        levels
    ):
        raise ValueError(
            f"covariate {name!r} has {ORDERED_LEVELS_ATTR}={raw!r}; expected a non-empty list "
            "of distinct strings (its levels, lowest first): fix or delete the attribute"
        )
    return levels


def dtype_kind(dtype: Any) -> str:
    """A covariate's kind from its dtype alone.

    Parameters
    ----------
    dtype : numpy or pandas dtype
        Kinds ``U``/``S``/``T`` (numpy's variable-width strings) and pandas' string dtypes are
        text, ``i``/``u``/``f`` numbers, ``b`` booleans; a categorical uses its categories'
        dtype.

    Returns
    -------
    str
        ``'text'``, ``'number'``, ``'bool'``, ``'object'`` (decided from the values: see
        :func:`covariate_kind`) or ``'unsupported'``.
    """
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        if categories.dtype.kind == "O":  # pandas < 3 keeps text categories as objects
            return _INFERRED_KINDS.get(pd.api.types.infer_dtype(categories), "unsupported")
        dtype = categories.dtype
    if isinstance(dtype, pd.StringDtype):
        return "text"
    if isinstance(dtype, pd.BooleanDtype):
        return "bool"
    kind = getattr(dtype, "kind", None)
    if kind is None:
        kind = np.dtype(dtype).kind
    if kind == "O":
        return "object"
    return {"U": "text", "S": "text", "T": "text", "i": "number", "u": "number", "f": "number",
            "b": "bool"}.get(kind, "unsupported")


def covariate_kind(values: Any, name: str = "covariate") -> str:
    """A covariate's kind: ``'text'``, ``'number'`` or ``'bool'``.

    The one classifier of covariates (rules, the policy tree and observed data use it). An
    object column's kind is that of its non-missing values, which must all be text, all
    numbers or all booleans; an object column with no values present counts as text.

    Parameters
    ----------
    values : array-like
        The covariate's values (numpy array, pandas Series or extension array).
    name : str, default "covariate"
        The covariate's name, for the message.

    Returns
    -------
    str

    Raises
    ------
    TypeError
        For an unsupported dtype, or an object column mixing kinds of values.

    Examples
    --------
    >>> covariate_kind(np.array(["a", None], dtype=object))
    'text'
    >>> covariate_kind(np.array([1, 2.5], dtype=object))
    'number'
    """
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        values = np.asarray(values)
        dtype = values.dtype
    kind = dtype_kind(dtype)
    if kind == "unsupported":
        raise TypeError(
            f"covariate {name!r} has unsupported dtype {dtype}; expected text, numbers or "
            "booleans"
        )
    if kind != "object":
        return kind
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    inferred_kind = _INFERRED_KINDS.get(inferred)
    if inferred_kind is None:
        raise TypeError(
            f"covariate {name!r} (dtype object) holds values of kinds [{inferred!r}]; expected "
            "all text, all numbers or all booleans (None/NaN for missing)"
        )
    return inferred_kind


# pandas' infer_dtype vocabulary → covariate kinds; anything else mixes kinds or is unsupported.
_INFERRED_KINDS = {
    "string": "text",
    "empty": "text",
    "boolean": "bool",
    "integer": "number",
    "floating": "number",
    "mixed-integer-float": "number",
    "decimal": "number",
}


# --------------------------------------------------------------------------- Clause


@dataclass(frozen=True, eq=False)
class Clause:
    """One comparison between a covariate and a literal.

    Parameters
    ----------
    covariate : str
        Name of a covariate along ``visitor``.
    op : {'==', '!=', '<', '<=', '>', '>=', 'in', 'not in'}
        Comparison operator.  Ordered operators apply to numeric covariates only.
    value : str, int, float, bool or tuple of these
        A single literal, or for ``in`` / ``not in`` a non-empty tuple (a list is
        accepted and converted) of literals of one kind.  Floats must be finite.

    Raises
    ------
    ValueError
        If the operator is unknown or the value does not fit it.
    TypeError
        If `covariate` is not a string.

    Notes
    -----
    Numbers are compared exactly as stored against the literal as written (a float64):
    a float32 covariate is widened to float64 first, never the literal rounded to float32.
    So ``x <= 0.1`` is False for ``float32(0.1)``, which is 0.10000000149..., and ``x < 1e-50``
    is True for 0.0. To select the float32 values that print as 0.1, write a literal
    between them and the next float32, or compare with a tolerance (``x < 0.1000001``).

    Equality is type-strict: ``Clause('x', '==', 1)`` differs from
    ``Clause('x', '==', True)`` and from ``Clause('x', '==', 1.0)``, because
    they print (and may evaluate) differently.

    Examples
    --------
    >>> import numpy as np
    >>> Clause("age", ">", 40).evaluate(np.array([30.0, 50.0, np.nan]))
    array([False,  True, False])
    >>> str(Clause("plan", "in", ("pro", "team")))
    "plan in ('pro', 'team')"
    """

    covariate: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.covariate, str):
            raise TypeError(f"covariate name must be a str, got {self.covariate!r}")
        if not self.covariate:
            raise ValueError("covariate name must not be empty")
        if self.op not in _OPS:
            raise ValueError(f"unknown operator {self.op!r}; expected one of {', '.join(_OPS)}")
        if self.op in _SET_OPS:
            if not isinstance(self.value, tuple | list) or not self.value:
                raise ValueError(
                    f"{self.op!r} needs a non-empty tuple of literals, got {self.value!r}"
                )
            value: Any = tuple(_literal(v) for v in self.value)
            kinds = {_literal_kind(v) for v in value}
            if len(kinds) > 1:
                raise ValueError(
                    f"literals of {self.op!r} must all be of one kind "
                    f"(text, number or bool), got {self.value!r}"
                )
        else:
            if isinstance(self.value, tuple | list):
                raise ValueError(f"{self.op!r} needs a single literal, got {self.value!r}")
            value = _literal(self.value)
        object.__setattr__(self, "value", value)

    @property
    def literals(self) -> tuple[bool | int | float | str, ...]:
        """The literal(s) as a tuple (one element unless the op is ``in``/``not in``)."""
        return self.value if self.op in _SET_OPS else (self.value,)

    def _key(self) -> tuple:
        return (self.covariate, self.op, tuple((type(v), v) for v in self.literals))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Clause):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        name = _format_name(self.covariate)
        if self.op in _SET_OPS:
            items = ", ".join(_format_literal(v) for v in self.value)
            return f"{name} {self.op} ({items})"
        return f"{name} {self.op} {_format_literal(self.value)}"

    def check_dtype(self, dtype: Any) -> str:
        """Check that this clause can be applied to a covariate of `dtype`.

        Parameters
        ----------
        dtype : numpy or pandas dtype
            Dtype of the covariate.  Kinds ``U``/``S``/``O`` are text, ``i``/``u``/``f``
            numbers, ``b`` booleans; a categorical uses its categories' dtype.

        Returns
        -------
        str
            The covariate kind: ``'text'``, ``'number'`` or ``'bool'``.

        Raises
        ------
        TypeError
            If the dtype is unsupported, an ordered operator is used on a non-numeric
            covariate, or the literal's kind differs from the covariate's.

        Examples
        --------
        >>> Clause("age", ">", 40).check_dtype(np.dtype("float64"))
        'number'
        >>> Clause("device", ">", "m").check_dtype(np.dtype("<U6"))
        Traceback (most recent call last):
        ...
        TypeError: operator '>' needs a numeric covariate, but 'device' has dtype <U6 (text)
        """
        kind = dtype_kind(dtype)
        if kind == "unsupported":
            raise TypeError(
                f"covariate {self.covariate!r} has unsupported dtype {dtype}; "
                "expected text, numbers or booleans"
            )
        if kind != "object":  # an object column's kind is known only from its values
            self._check_kind(kind, f"dtype {dtype}")
        return kind

    def _check_kind(self, kind: str, described: str) -> None:
        if self.op in _ORDERED_OPS and kind != "number":
            raise TypeError(
                f"operator {self.op!r} needs a numeric covariate, "
                f"but {self.covariate!r} has {described} ({kind})"
            )
        for literal in self.literals:
            if _literal_kind(literal) != kind:
                raise TypeError(
                    f"cannot compare covariate {self.covariate!r} ({described}, {kind}) "
                    f"with {_format_literal(literal)} ({_literal_kind(literal)})"
                )

    def evaluate(self, values: np.ndarray) -> np.ndarray:
        """Apply the clause to one block of covariate values.

        Parameters
        ----------
        values : numpy.ndarray
            Covariate values of any shape (a pandas extension array also works).
            Missing values (NaN, None, ``pd.NA``) match no clause, negated ones included.

        Returns
        -------
        numpy.ndarray
            Boolean array of the same shape.

        Raises
        ------
        TypeError
            As :meth:`check_dtype`.

        Examples
        --------
        >>> Clause("plan", "!=", "pro").evaluate(np.array(["pro", None, "free"], dtype=object))
        array([False, False,  True])
        """
        if not hasattr(values, "dtype"):
            values = np.asarray(values)
        # Check the original dtype: extension arrays (Int64, boolean) become object below.
        self.check_dtype(values.dtype)
        values = np.asarray(values)
        if values.dtype.kind == "T":  # numpy's StringDType: its missing marker, if any, → NaN
            values = values.astype(object)
        if values.dtype.kind != "O":  # fixed-width: only floats can be missing, as NaN
            if values.dtype.kind == "f" and values.dtype.itemsize < 8:
                # Compare in the literal's (float64) precision: widening is exact, whereas
                # rounding the literal to float32 would make 0.0 < 1e-50 False.
                values = values.astype(np.float64)
            out = self._compare(values)
            if values.dtype.kind == "f":
                out &= ~np.isnan(values)
            return out
        # Drop missing entries before comparing, so ``None < 3`` is never attempted.
        present = ~np.asarray(pd.isna(values), dtype=bool)
        out = np.zeros(values.shape, dtype=bool)
        kept = values[present]
        if kept.size:
            if kept.dtype.kind == "O":
                self._check_kind(covariate_kind(kept, self.covariate), "dtype object")
            out[present] = self._compare(kept)
        return out

    def _compare(self, values: np.ndarray) -> np.ndarray:
        literals: tuple[bool | int | float | str | bytes, ...] = self.literals
        if values.dtype.kind == "S":
            # Bytes are text: check_dtype has let only text (str) literals through.
            literals = tuple(v.encode() if isinstance(v, str) else v for v in literals)
        if self.op in _SET_OPS:
            hit = np.zeros(values.shape, dtype=bool)
            for literal in literals:
                hit |= np.asarray(values == literal, dtype=bool)
            return hit if self.op == "in" else ~hit
        return np.asarray(_COMPARE[self.op](values, literals[0]), dtype=bool)


# --------------------------------------------------------------------------- parser


class _Token(NamedTuple):
    kind: str  # name, qname, str, num, op, (, ), ",", end
    value: Any
    pos: int


# Characters of rule text shown on each side of a parse error's position.
EXCERPT_CHARS = 30


def _error(text: str, pos: int, message: str) -> ValueError:
    """A parse error: the message, the 0-based position and a bounded excerpt around it."""
    if len(text) <= 2 * EXCERPT_CHARS:
        return ValueError(f"{message} at position {pos} in {text!r}")
    lo, hi = max(0, pos - EXCERPT_CHARS), min(len(text), pos + EXCERPT_CHARS)
    before, after = repr(text[lo:pos])[1:-1], repr(text[pos:hi])[1:-1]
    excerpt = ("..." if lo else "") + before + after + ("..." if hi < len(text) else "")
    pointer = " " * (len(before) + (3 if lo else 0)) + "^"
    return ValueError(
        f"{message} at position {pos} of {len(text):,} characters:\n  {excerpt}\n  {pointer}"
    )


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch in "=!<>":
            two = text[i : i + 2]
            if two in ("==", "!=", "<=", ">="):
                tokens.append(_Token("op", two, i))
                i += 2
            elif ch in "<>":
                tokens.append(_Token("op", ch, i))
                i += 1
            else:
                raise _error(text, i, f"unexpected {ch!r} (did you mean '{ch}='?)")
        elif ch in "'\"":
            value, end = _scan_string(text, i)
            tokens.append(_Token("str", value, i))
            i = end
        elif ch == "`":
            start, i, chars = i, i + 1, []
            while True:
                if i >= n:
                    raise _error(text, start, "unterminated backtick name starting")
                if text[i] == "`":
                    if text[i + 1 : i + 2] == "`":
                        chars.append("`")
                        i += 2
                        continue
                    i += 1
                    break
                chars.append(text[i])
                i += 1
            if not chars:
                raise _error(text, start, "empty backtick name")
            tokens.append(_Token("qname", "".join(chars), start))
        elif match := _NUMBER.match(text, i):
            tokens.append(_Token("num", _number(text, i, match.group()), i))
            i = match.end()
        elif match := _IDENT.match(text, i):
            tokens.append(_Token("name", match.group(), i))
            i = match.end()
        else:
            word = _IDENT.match(text, i + 1) if ch == "-" else None
            if word and word.group().lower() in _NONFINITE:
                raise _error(text, i, "numbers must be finite, got '-" + word.group() + "'")
            raise _error(text, i, f"unexpected character {ch!r}")
    tokens.append(_Token("end", None, n))
    return tokens


def _scan_string(text: str, start: int) -> tuple[str, int]:
    quote, i = text[start], start + 1
    chars: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(chars), i + 1
        if ch == "\\":
            escape = text[i + 1 : i + 2]
            if not escape:
                break
            if escape not in _ESCAPES:
                raise _error(text, i, f"unknown escape '\\{escape}' in string")
            chars.append(_ESCAPES[escape])
            i += 2
        else:
            chars.append(ch)
            i += 1
    raise _error(text, start, "unterminated string starting")


def _number(text: str, pos: int, digits: str) -> int | float:
    try:
        value: int | float = float(digits) if any(c in digits for c in ".eE") else int(digits)
    except ValueError:  # e.g. more digits than int() will convert
        raise _error(text, pos, f"invalid number {digits!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(text, pos, f"numbers must be finite, got {digits!r}")
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: _Token, message: str) -> ValueError:
        return _error(self.text, token.pos, message)

    def is_word(self, token: _Token, word: str) -> bool:
        return token.kind == "name" and token.value == word

    def rule(self) -> SegmentRule:
        if len(self.tokens) == 2 and self.is_word(self.tokens[0], "everyone"):
            return SegmentRule()
        clauses = [self.clause()]
        while self.is_word(self.peek(), "and"):
            self.take()
            clauses.append(self.clause())
        if self.peek().kind != "end":
            raise self.fail(self.peek(), "expected 'and' or the end of the rule")
        return SegmentRule(tuple(clauses))

    def clause(self) -> Clause:
        token = self.take()
        if token.kind == "qname" or (token.kind == "name" and token.value not in _KEYWORDS):
            name = token.value
        elif token.kind == "name":
            raise self.fail(token, f"{token.value!r} is a keyword; quote the covariate as `name`")
        else:
            raise self.fail(token, "expected a covariate name")
        op_token = self.take()
        if op_token.kind == "op":
            op = op_token.value
        elif self.is_word(op_token, "in"):
            op = "in"
        elif self.is_word(op_token, "not"):
            if not self.is_word(self.take(), "in"):
                raise self.fail(self.tokens[self.i - 1], "expected 'in' after 'not'")
            op = "not in"
        else:
            raise self.fail(op_token, "expected an operator")
        if op in _SET_OPS:
            if self.peek().kind != "(":
                raise self.fail(self.peek(), f"expected '(' after {op!r}")
            self.take()
            values = [self.literal()]
            while self.peek().kind == ",":
                self.take()
                if self.peek().kind == ")":
                    break
                values.append(self.literal())
            if self.peek().kind != ")":
                raise self.fail(self.peek(), "expected ',' or ')'")
            self.take()
            value: Any = tuple(values)
        else:
            value = self.literal()
        try:
            return Clause(name, op, value)
        except ValueError as exc:
            raise self.fail(token, str(exc)) from None

    def literal(self) -> bool | int | float | str:
        token = self.take()
        if token.kind in ("str", "num"):
            return token.value
        if self.is_word(token, "True") or self.is_word(token, "False"):
            return token.value == "True"
        if token.kind == "name" and token.value.lower() in _NONFINITE:
            raise self.fail(token, f"numbers must be finite, got {token.value!r}")
        raise self.fail(token, "expected a literal (string, number, True or False)")


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class SegmentRule:
    """An AND of :class:`Clause` objects; no clauses matches every visitor.

    Parameters
    ----------
    clauses : tuple of Clause, default ()
        The clauses, all of which must hold.  A list is accepted and converted.

    Raises
    ------
    TypeError
        If an element of `clauses` is not a :class:`Clause`.

    Examples
    --------
    >>> rule = SegmentRule.parse("device == 'mobile' and age > 40")
    >>> rule.covariates
    ('device', 'age')
    >>> str(rule & SegmentRule.parse("plan in ('pro', 'team')"))
    "device == 'mobile' and age > 40 and plan in ('pro', 'team')"
    >>> str(SegmentRule.everyone())
    'everyone'
    """

    clauses: tuple[Clause, ...] = ()

    def __post_init__(self) -> None:
        clauses = tuple(self.clauses)
        for clause in clauses:
            if not isinstance(clause, Clause):
                raise TypeError(f"expected Clause objects, got {clause!r}")
        object.__setattr__(self, "clauses", clauses)

    @classmethod
    def parse(cls, text: str) -> SegmentRule:
        r"""Parse rule text.

        The grammar is ``everyone`` or ``clause ("and" clause)*`` with
        ``clause := name op literal | name ("in" | "not in") "(" literal ("," literal)* [","] ")"``.
        Names are identifiers or backtick-quoted (a backtick doubled inside);
        literals are quoted strings (escapes ``\\ \' \" \n \t``), finite
        ints and floats, ``True`` and ``False``.

        Parameters
        ----------
        text : str
            The rule text.

        Returns
        -------
        SegmentRule

        Raises
        ------
        ValueError
            If the text is malformed; the message gives the 0-based position (and, for a
            long rule, an excerpt of at most 60 characters around it, not the whole text).
        TypeError
            If `text` is not a string.

        Examples
        --------
        >>> SegmentRule.parse("`page views` >= 3 and plan not in ('free',)").clauses[1]
        Clause(covariate='plan', op='not in', value=('free',))
        >>> SegmentRule.parse("age >> 3")
        Traceback (most recent call last):
        ...
        ValueError: expected a literal (string, number, True or False) at position 5 in 'age >> 3'
        """
        if not isinstance(text, str):
            raise TypeError(f"rule text must be a str, got {type(text).__name__}")
        return _Parser(text).rule()

    @classmethod
    def everyone(cls) -> SegmentRule:
        """Return the rule with no clauses, which matches every visitor.

        Returns
        -------
        SegmentRule

        Examples
        --------
        >>> SegmentRule.everyone() == SegmentRule.parse("everyone")
        True
        """
        return cls()

    @property
    def covariates(self) -> tuple[str, ...]:
        """Distinct covariate names, in order of first appearance."""
        return tuple(dict.fromkeys(c.covariate for c in self.clauses))

    def __and__(self, other: SegmentRule | str) -> SegmentRule:
        if isinstance(other, str):
            other = SegmentRule.parse(other)
        if not isinstance(other, SegmentRule):
            return NotImplemented
        return SegmentRule(self.clauses + other.clauses)

    def __str__(self) -> str:
        return " and ".join(map(str, self.clauses)) if self.clauses else "everyone"

    def __repr__(self) -> str:
        return f"SegmentRule.parse({json.dumps(str(self), ensure_ascii=False)})"

    def evaluate(self, observed: xr.Dataset) -> xr.DataArray:
        """Evaluate the rule for every visitor.

        Parameters
        ----------
        observed : xarray.Dataset
            Covariates: variables or non-index coordinates that are 1-D along ``visitor``.

        Returns
        -------
        xarray.DataArray
            Boolean, dims ``("visitor",)``, with the ``visitor`` index of `observed`
            if it has one.  Dask-backed (nothing computed) when a covariate used is;
            for the everyone rule, when any variable along ``visitor`` is.

        Raises
        ------
        KeyError
            If a covariate is not in `observed`; the message lists the available ones.
        ValueError
            If a covariate is not 1-D along ``visitor``, or `observed` has no
            ``visitor`` dimension.
        TypeError
            If a clause does not fit its covariate's dtype (raised before computing).

        Examples
        --------
        >>> ds = xr.Dataset({"age": ("visitor", [30.0, 50.0])})
        >>> SegmentRule.parse("age > 40").evaluate(ds).values
        array([False,  True])
        """
        rows = membership({0: self}, observed)
        return rows.isel(segment=0).drop_vars(["segment", "rule"]).rename(None)


def _covariate(observed: xr.Dataset, name: str) -> xr.Variable:
    if name not in observed.variables or name in observed.xindexes:
        available = ", ".join(repr(n) for n in covariate_names(observed)) or "none"
        raise KeyError(
            f"unknown covariate {name!r}; available covariates along {VISITOR!r}: {available}"
        )
    var = observed.variables[name]
    if var.dims != (VISITOR,):
        raise ValueError(f"covariate {name!r} must be 1-D along {VISITOR!r}, got dims {var.dims}")
    return var


def _visitor_size(observed: xr.Dataset) -> int:
    if VISITOR not in observed.dims:
        raise ValueError(f"observed has no {VISITOR!r} dimension (dims: {tuple(observed.dims)})")
    return observed.sizes[VISITOR]


def _visitor_chunks(observed: xr.Dataset) -> tuple[int, ...] | None:
    """Visitor chunks of the first dask-backed variable along ``visitor``, if any."""
    for var in observed.variables.values():
        if VISITOR in var.dims and isinstance(var.data, da.Array):
            return var.data.chunks[var.dims.index(VISITOR)]
    return None


def _visitor_coords(observed: xr.Dataset) -> dict[str, xr.Variable]:
    if VISITOR in observed.xindexes:
        return {VISITOR: observed.variables[VISITOR]}
    return {}


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class DiscoveredSegment:
    """A segment: an integer id and the rule that defines it, with optional descriptions.

    Only `id` and `rule` define the segment: :func:`pytyche.thompson_allocation` and every
    other consumer of segments read nothing else, and equality and the hash compare only
    them (a fitted leaf equals ``DiscoveredSegment(leaf.id, leaf.rule)``). The descriptive
    fields are filled in by :func:`pytyche.fit_policy_tree` for its leaves and are ``None``
    ("not computed") on a hand-written segment.

    Parameters
    ----------
    id : int
        Segment id (numpy integers are converted; ``bool`` is rejected).
    rule : SegmentRule or str
        The rule, or its text (parsed with :meth:`SegmentRule.parse`).
    population_share : float, optional
        Fraction of the fitted visitors that the rule matches, in [0, 1].
    best_arm : str, optional
        The arm with the highest posterior expected segment-mean metric.
    arm_best_probabilities : mapping of str to float, optional
        ``{arm: posterior probability that the arm is the segment's best}``, in variant order
        (the raw win frequencies, as :func:`pytyche.thompson_allocation` with
        ``epsilon=0``); each in [0, 1].
    gate_estimate : float, optional
        Posterior mean of the best arm's segment-mean contrast against control (0 when the
        best arm is control).
    gate_interval : tuple of (float, float), optional
        Central posterior interval (80% from :func:`pytyche.fit_policy_tree`) of that
        contrast, lower <= upper.
    stability_score : float, optional
        Fraction of bootstrap refits with a leaf whose members overlap this segment's with
        Jaccard index >= 0.5, in [0, 1]; NaN when no bootstrap refits were run.

    Raises
    ------
    TypeError
        If `id` is not an integer, `rule` is neither a rule nor text, or a descriptive field
        has the wrong type.
    ValueError
        If `id` does not fit in 64 bits, rule text is malformed, `gate_interval` is not a
        pair or its lower bound is above its upper bound, or `population_share`,
        `stability_score` (NaN allowed) or an arm's best probability is outside [0, 1].

    Examples
    --------
    >>> DiscoveredSegment(3, "device == 'mobile' and age > 40")
    DiscoveredSegment(id=3, rule="device == 'mobile' and age > 40")
    >>> DiscoveredSegment(0, "everyone", population_share=1.0, best_arm="A").best_arm
    'A'
    """

    id: int
    rule: SegmentRule | str
    # Descriptive fields: outside equality and the hash, which are the segment's (id, rule).
    population_share: float | None = dataclasses.field(default=None, compare=False)
    best_arm: str | None = dataclasses.field(default=None, compare=False)
    arm_best_probabilities: dict[str, float] | None = dataclasses.field(default=None, compare=False)
    gate_estimate: float | None = dataclasses.field(default=None, compare=False)
    gate_interval: tuple[float, float] | None = dataclasses.field(default=None, compare=False)
    stability_score: float | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.id, bool | np.bool_) or not isinstance(self.id, int | np.integer):
            raise TypeError(
                f"segment id must be an int, got {self.id!r} ({type(self.id).__name__})"
            )
        if not INT64_MIN <= int(self.id) <= INT64_MAX:
            raise ValueError(
                f"segment id must fit in a 64-bit signed integer ({INT64_MIN} to {INT64_MAX}), "
                f"got {self.id}"
            )
        object.__setattr__(self, "id", int(self.id))
        if isinstance(self.rule, str):
            object.__setattr__(self, "rule", SegmentRule.parse(self.rule))
        elif not isinstance(self.rule, SegmentRule):
            raise TypeError(f"segment rule must be a SegmentRule or str, got {self.rule!r}")
        for name in ("population_share", "gate_estimate", "stability_score"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, self._real(value, name))
        share = self.population_share
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(f"population_share must be in [0, 1], got {share!r}")
        stability = self.stability_score
        if stability is not None and not (math.isnan(stability) or 0.0 <= stability <= 1.0):
            raise ValueError(f"stability_score must be in [0, 1] or NaN, got {stability!r}")
        if self.best_arm is not None and not isinstance(self.best_arm, str):
            raise TypeError(f"best_arm must be an arm name (str), got {self.best_arm!r}")
        if self.arm_best_probabilities is not None:
            if not isinstance(self.arm_best_probabilities, Mapping):
                raise TypeError(
                    "arm_best_probabilities must be a mapping {arm: probability}, got "
                    f"{self.arm_best_probabilities!r}"
                )
            probabilities = {
                str(arm): self._real(p, "arm_best_probabilities")
                for arm, p in self.arm_best_probabilities.items()
            }
            for arm, p in probabilities.items():
                if not 0.0 <= p <= 1.0:
                    raise ValueError(
                        f"arm_best_probabilities[{arm!r}] must be a probability in [0, 1], "
                        f"got {p!r}"
                    )
            object.__setattr__(self, "arm_best_probabilities", probabilities)
        if self.gate_interval is not None:
            interval = tuple(self.gate_interval)
            if len(interval) != 2:
                raise ValueError(f"gate_interval must be a (lower, upper) pair, got {interval!r}")
            lower, upper = (self._real(v, "gate_interval") for v in interval)
            if lower > upper:
                raise ValueError(
                    f"gate_interval must be (lower, upper) with lower <= upper, got "
                    f"{(lower, upper)!r}"
                )
            object.__setattr__(self, "gate_interval", (lower, upper))

    def __repr__(self) -> str:
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:  # descriptive fields not computed: keep the repr short
                continue
            text = (
                json.dumps(str(value), ensure_ascii=False) if field.name == "rule" else repr(value)
            )
            parts.append(f"{field.name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @staticmethod
    def _real(value: Any, name: str) -> float:
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        return float(value)


def as_segments(
    segments: Iterable[DiscoveredSegment] | Mapping[int, SegmentRule | str],
) -> tuple[DiscoveredSegment, ...]:
    """Normalise segments to a tuple of :class:`DiscoveredSegment`.

    Parameters
    ----------
    segments : sequence of DiscoveredSegment, or mapping of id to rule
        Items may be any objects with an integer ``id`` and a ``rule`` that is a
        :class:`SegmentRule` or rule text; a mapping is ``{id: rule_or_text}``.

    Returns
    -------
    tuple of DiscoveredSegment
        In the given order.

    Raises
    ------
    ValueError
        If there are no segments, two share an id, or rule text is malformed.
    TypeError
        If `segments` is not a sequence or mapping (a bare string or a single
        segment, say), or an item or id has the wrong type.

    Examples
    --------
    >>> as_segments({0: "everyone", 1: "age > 40"})[1]
    DiscoveredSegment(id=1, rule="age > 40")
    """
    if isinstance(segments, str | bytes | DiscoveredSegment | SegmentRule):
        raise TypeError(
            f"expected a sequence of segments or a mapping {{id: rule}}, "
            f"got a single {type(segments).__name__}; wrap it in a list"
        )
    if isinstance(segments, Mapping):
        result = [DiscoveredSegment(key, rule) for key, rule in segments.items()]
    elif isinstance(segments, Iterable):
        result = []
        for item in segments:
            if not isinstance(item, DiscoveredSegment):
                if not (hasattr(item, "id") and hasattr(item, "rule")):
                    raise TypeError(
                        f"expected a DiscoveredSegment or an object with 'id' and 'rule', "
                        f"got {item!r}"
                    )
                item = DiscoveredSegment(item.id, item.rule)
            result.append(item)
    else:
        raise TypeError(
            f"expected a sequence of segments or a mapping {{id: rule}}, "
            f"got {type(segments).__name__}"
        )
    if not result:
        raise ValueError("pass at least one segment; SegmentRule.everyone() covers all visitors")
    seen: set[int] = set()
    for segment in result:
        if segment.id in seen:
            raise ValueError(f"duplicate segment id {segment.id}")
        seen.add(segment.id)
    return tuple(result)


class _TextCodes(NamedTuple):
    """An object column of text as codes into its distinct values, for rules to compare.

    Comparing Python strings (and finding the missing ones) costs about 0.1 s per million
    visitors and clause; here it is done once per column, and each clause compares only the
    distinct values, then looks its answer up by code. Missing values (code -1) match no
    clause, as in :meth:`Clause.evaluate`.
    """

    codes: np.ndarray
    uniques: np.ndarray

    @classmethod
    def of(cls, column: Any) -> Any:
        """The column as codes when it holds text as objects; else the column itself."""
        kind = getattr(getattr(column, "dtype", None), "kind", None)
        if kind not in ("O", "T"):  # fixed-width text and numbers compare fast as they are
            return column
        # numpy's StringDType as objects, as Clause.evaluate reads it (its missing marker too).
        codes, uniques = pd.factorize(
            np.asarray(column).astype(object, copy=False), use_na_sentinel=True
        )
        uniques = np.asarray(uniques, dtype=object)
        # Only all-text columns: factorizing merges values that compare equal across types
        # (1, 1.0 and True), which would hide a mixed column that the rules must refuse.
        if not all(isinstance(value, str) for value in uniques):
            return column
        return cls(codes, uniques)

    def evaluate(self, clause: Clause) -> np.ndarray:
        """The clause's answer for every visitor of the column."""
        answers = np.append(clause.evaluate(self.uniques), False)  # code -1: missing
        return answers[self.codes]


def membership(
    segments: Iterable[DiscoveredSegment] | Mapping[int, SegmentRule | str],
    observed: xr.Dataset,
) -> xr.DataArray:
    """Which visitors belong to which segment.

    Parameters
    ----------
    segments : sequence of DiscoveredSegment, or mapping of id to rule
        Anything :func:`as_segments` accepts.
    observed : xarray.Dataset
        Covariates along ``visitor``.

    Returns
    -------
    xarray.DataArray
        Boolean, dims ``("segment", "visitor")``, with coordinates ``segment``
        (the ids, int64), ``rule`` (canonical rule text along ``segment``) and the
        ``visitor`` index of `observed` if it has one.  When any row is dask-backed,
        the whole array is one dask array (nothing computed) with a single
        ``segment`` chunk and the visitor chunks of the first dask-backed variable
        of `observed`; otherwise it is numpy-backed.

    Raises
    ------
    KeyError, ValueError, TypeError
        As :func:`as_segments` and :meth:`SegmentRule.evaluate`.

    Examples
    --------
    >>> ds = xr.Dataset({"age": ("visitor", [30.0, 50.0])})
    >>> membership({0: "everyone", 1: "age > 40"}, ds).values
    array([[ True,  True],
           [False,  True]])
    """
    segments = as_segments(segments)
    rules: list[SegmentRule] = []
    for segment in segments:
        assert isinstance(segment.rule, SegmentRule)  # rule text is parsed when a segment is made
        rules.append(segment.rule)
    names = list(dict.fromkeys(name for rule in rules for name in rule.covariates))
    variables = {name: _covariate(observed, name) for name in names}
    # Every clause's kind is checked here, before anything is computed.
    for rule in rules:
        for clause in rule.clauses:
            clause.check_dtype(variables[clause.covariate].dtype)
    size = _visitor_size(observed)

    def evaluate(*columns: Any) -> np.ndarray:
        """Every rule on one block of visitors: (segment, visitor) booleans."""
        values = {name: _TextCodes.of(column) for name, column in zip(names, columns, strict=True)}
        out = np.ones((len(rules), len(columns[0]) if columns else size), dtype=bool)
        for row, rule in zip(out, rules, strict=True):
            for clause in rule.clauses:
                column = values[clause.covariate]
                if isinstance(column, _TextCodes):
                    row &= column.evaluate(clause)
                else:
                    row &= clause.evaluate(column)
        return out

    chunks = _visitor_chunks(observed)
    lazy = any(isinstance(v.data, da.Array) for v in variables.values()) or (
        chunks is not None and any(not rule.clauses for rule in rules)
    )
    data: Any
    if not lazy:
        data = evaluate(*(v.data for v in variables.values()))
    elif not variables:  # only "everyone" rules
        data = da.ones((len(rules), size), dtype=bool, chunks=((len(rules),), chunks))
    else:
        # One task per visitor chunk for all rules together, so the graph grows with the
        # chunks, not with the number of segments or clauses.
        assert chunks is not None  # some covariate is dask-backed
        columns = [
            (v.data if isinstance(v.data, da.Array) else da.from_array(v.data, chunks=-1))
            .rechunk((chunks,))
            for v in variables.values()
        ]
        data = da.map_blocks(
            evaluate,
            *columns,
            new_axis=0,
            chunks=((len(rules),), chunks),
            dtype=bool,
            meta=np.empty((0, 0), dtype=bool),
        )
    coords: dict[str, Any] = {
        "segment": np.array([s.id for s in segments], dtype=np.int64),
        "rule": ("segment", np.array([str(s.rule) for s in segments])),
        **_visitor_coords(observed),
    }
    return xr.DataArray(data, dims=("segment", VISITOR), coords=coords, name="membership")
