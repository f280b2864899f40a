"""Argument checkers: one per kind of argument, one exception type per kind of mistake.

Leaf module: imports nothing of pytyche. A value of the wrong *type* (a float where a count
belongs, a string where a number belongs) raises ``TypeError``; a value of the right type
outside what is allowed raises ``ValueError``. Every message names the argument, shows the
value and says what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

__all__ = [
    "check_arm_names",
    "check_choice",
    "check_count",
    "check_metric_amount",
    "check_probability",
    "check_variable_name",
]

# Names a store gives its own files (Zarr 3 and 2 metadata), and pytyche's suffix for the
# missing-text companion of a variable: never the name of a variable.
STORE_FILE_NAMES = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})
RESERVED_SUFFIX = "__pytyche_missing"


def check_count(name: str, value: Any, *, minimum: int = 0) -> int:
    """An integer argument (a count, a depth, a seed) as a Python ``int``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.
    minimum : int, default 0
        The smallest value allowed.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        When ``value`` is not an integer (``bool`` included: ``True`` is no count).
    ValueError
        When ``value`` is below ``minimum``.

    Examples
    --------
    >>> check_count("n_draws", 200, minimum=1)
    200
    >>> check_count("n_draws", 2.5)
    Traceback (most recent call last):
    ...
    TypeError: n_draws must be an integer, got 2.5 (float)
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_probability(
    name: str, value: Any, *, low_open: bool = False, high_open: bool = False, why: str = ""
) -> float:
    """A real number in [0, 1] (ends excluded as asked) as a Python ``float``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.
    low_open, high_open : bool, default False
        Exclude 0, or 1, from the allowed range.
    why : str, optional
        Appended to the range error: why the range is what it is.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        When ``value`` is not a real number (``bool`` included).
    ValueError
        When ``value`` is NaN or outside the range.

    Examples
    --------
    >>> check_probability("ci", 0.8, low_open=True, high_open=True)
    0.8
    >>> check_probability("ci", 1.0, low_open=True, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: ci must be in (0, 1), got 1.0
    """
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{name} must be a real number in {interval}, got {value!r} ({type(value).__name__})"
        )
    number = float(value)
    inside = (
        not math.isnan(number)
        and (0.0 < number if low_open else 0.0 <= number)
        and (number < 1.0 if high_open else number <= 1.0)
    )
    if not inside:
        raise ValueError(f"{name} must be in {interval}, got {value!r}{why}")
    return number


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of a fixed set of strings.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.
    choices : iterable of str
        The allowed values.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        When ``value`` is not one of ``choices``.

    Examples
    --------
    >>> check_choice("family", "binary", ("binary", "continuous", "hurdle"))
    'binary'
    """
    allowed = list(choices)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_arm_names(arms: Any) -> list[str]:
    """Arm names, control first: non-empty strings, at least 2, no duplicates.

    Parameters
    ----------
    arms : sequence of str
        Arm names, control first.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        For a single string, a name that is not a non-empty string, fewer than 2 arms, or
        duplicate names.

    Examples
    --------
    >>> check_arm_names(("control", "A"))
    ['control', 'A']
    """
    if isinstance(arms, str):
        raise ValueError(f"arms must be a sequence of arm names, got the single string {arms!r}")
    arms = list(arms)
    for name in arms:
        if not isinstance(name, str) or not name:
            raise ValueError(f"arm names must be non-empty strings, got {name!r} in {arms}")
    arms = [str(name) for name in arms]  # numpy str_ → str
    if len(arms) < 2:
        raise ValueError(f"an experiment needs at least 2 arms (control first), got {arms}")
    duplicates = sorted({a for a in arms if arms.count(a) > 1})
    if duplicates:
        raise ValueError(f"duplicate arm names {duplicates} in {arms}")
    return arms


def check_variable_name(name: Any, *, what: str = "variable", reserved: Iterable[str] = ()) -> str:
    r"""A name a Dataset variable (a covariate, a coordinate) may take in every store.

    The one rule for every writer: a name is non-empty text without ``/`` or ``\`` (Zarr
    makes a nested group of ``a/b``), without control characters (NUL included), that does
    not start with ``.`` (``.``, ``..`` and Zarr 2's metadata files), is not ``zarr.json``
    and does not end with ``__pytyche_missing`` (pytyche's companion of missing text).
    Letters, digits, spaces and other punctuation are all allowed.

    Parameters
    ----------
    name : object
        The name given.
    what : str, default "variable"
        What the name is of, for the message (``"covariate"``, ...).
    reserved : iterable of str, optional
        More names that are taken (the posterior's own variables and dims, say).

    Returns
    -------
    str

    Raises
    ------
    TypeError
        When ``name`` is not a str.
    ValueError
        When ``name`` breaks the rule above or is reserved.

    Examples
    --------
    >>> check_variable_name("page views", what="covariate")
    'page views'
    >>> check_variable_name("a/b", what="covariate")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: covariate name 'a/b' contains '/'; a name is non-empty text ...
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, got {name!r} ({type(name).__name__})")
    rule = (
        "a name is non-empty text without '/', '\\' or control characters, not starting with "
        f"'.', not 'zarr.json', not ending with {RESERVED_SUFFIX!r}"
    )
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = f"contains {'/' if '/' in name else chr(92)!r}"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problem = "contains a control character"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif name in STORE_FILE_NAMES:
        problem = "is the name of a store's metadata file"
    elif name.endswith(RESERVED_SUFFIX):
        problem = f"ends with {RESERVED_SUFFIX!r}, which pytyche uses for missing text"
    if problem is not None:
        safe = "".join(
            "_" if ch in "/\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in name
        ).lstrip(".")
        safe = safe.removesuffix(RESERVED_SUFFIX) or "x"
        if safe in STORE_FILE_NAMES:
            safe = safe.replace(".", "_")
        raise ValueError(f"{what} name {name!r} {problem}; {rule}: rename it, e.g. {safe!r}")
    taken = sorted(set(reserved))
    if name in taken:
        raise ValueError(f"{what} name {name!r} is taken: pytyche uses {taken} itself; rename it")
    return name


def check_metric_amount(name: str, value: Any, *, positive: bool = False) -> float:
    """A finite amount in the metric's units (>= 0, or > 0) as a Python ``float``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
        The value given.
    positive : bool, default False
        Exclude 0.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        When ``value`` is not a real number (``bool`` included).
    ValueError
        When ``value`` is NaN, infinite, negative, or 0 with ``positive``.

    Examples
    --------
    >>> check_metric_amount("min_practical_effect", 0.02)
    0.02
    >>> check_metric_amount("expected_loss_tolerance", 0, positive=True)
    Traceback (most recent call last):
    ...
    ValueError: expected_loss_tolerance must be a finite number > 0 (in the metric's units), got 0
    """
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{name} must be a real number {bound}, got {value!r} ({type(value).__name__})"
        )
    number = float(value)
    if not math.isfinite(number) or number < 0.0 or (positive and number == 0.0):
        raise ValueError(
            f"{name} must be a finite number {bound} (in the metric's units), got {value!r}"
        )
    return number
