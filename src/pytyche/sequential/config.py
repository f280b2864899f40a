"""The settings of a sequential experiment, checked once: when it starts and when it is read.

:func:`check_config` is the one validator of an experiment's ``config`` dict: the
:func:`~pytyche.sequential.sequential_experiment` constructor builds the dict and passes it
here, and a store re-validates a config read from disk with it, so a bad setting (an unknown
fit option, a negative graduation loss) is refused before the first round, never at the first
fit after burn-in.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

from ..fitting import fit_binary_bcf, fit_continuous_bcf, fit_hurdle_bcf
from .assign import MAX_SEED
from .plan import check_arms, check_schedule, check_weight

__all__ = ["FAMILIES", "RESERVED_FIT_OPTIONS", "check_config", "fit_option_types"]

FAMILIES = ("hurdle", "binary", "continuous", "auto")
# Fit options the experiment sets itself.
RESERVED_FIT_OPTIONS = ("propensity", "family")
# Keys of a config: required ones, then the optional experiment id (absent from experiments
# started before experiments had ids; their assignment hash stays unsalted).
REQUIRED_KEYS = (
    "arms",
    "family",
    "min_control_weight",
    "min_explore_weight",
    "epsilon",
    "max_segment_depth",
    "min_segment_share",
    "min_visitors_per_arm",
    "schedule",
    "fit_options",
    "seed",
    "drop_threshold",
    "graduation_threshold",
    "graduation_loss",
)
OPTIONAL_KEYS = ("experiment_id",)


def fit_option_types() -> dict[str, str]:
    """The options :func:`pytyche.fit` passes on, and their annotated types.

    Derived from the keyword parameters of the family fits (:func:`pytyche.fit` takes
    ``**options`` and hands them to one of them), less those the experiment sets itself.

    Returns
    -------
    dict of str to str
        Option name → its annotation, such as ``"int"`` or ``"int | None"``.

    Examples
    --------
    >>> fit_option_types()["n_draws"]
    'int'
    """
    types: dict[str, str] = {}
    for function in (fit_binary_bcf, fit_continuous_bcf, fit_hurdle_bcf):
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                types.setdefault(parameter.name, str(parameter.annotation))
    return {k: v for k, v in types.items() if k not in RESERVED_FIT_OPTIONS}


# How each annotated type is checked; an annotation part not listed here accepts anything.
_TYPE_CHECKS = {
    "int": lambda v: isinstance(v, Integral) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, Real) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "Mapping": lambda v: isinstance(v, Mapping),
    "None": lambda v: v is None,
}


def check_fit_options(options: Any) -> dict[str, Any]:
    """Fit options: known names, values of the annotated types, JSON-serialisable.

    Parameters
    ----------
    options : mapping or None

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        For an option the experiment sets itself, an unknown option (the valid ones listed),
        a value of the wrong type, or a value JSON cannot write.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"fit_options must be a mapping of option to value, got {options!r}")
    options = dict(options)
    reserved = sorted(set(options) & set(RESERVED_FIT_OPTIONS))
    if reserved:
        raise ValueError(
            f"fit_options may not set {reserved}: the experiment sets the family from its "
            "`family` argument and the propensity from the logged assignments"
        )
    types = fit_option_types()
    for key, value in options.items():
        if key not in types:
            raise ValueError(
                f"fit_options has the unknown option {key!r}; valid options are "
                f"{sorted(types)} (those of pytyche.fit)"
            )
        parts = [part.strip() for part in types[key].split("|")]
        checks = [_TYPE_CHECKS[p] for p in parts if p in _TYPE_CHECKS]
        if len(checks) == len(parts) and not any(check(value) for check in checks):
            raise ValueError(
                f"fit_options[{key!r}] must be {types[key].replace(' | ', ' or ')}, got {value!r}"
            )
    try:
        json.dumps(options)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"fit_options must be JSON-serialisable (for the audit trail): {error}"
        ) from error
    return options


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _check_depth(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"max_segment_depth must be an integer 0..6, got {value!r}")
    if not 0 <= int(value) <= 6:
        raise ValueError(f"max_segment_depth must be 0..6, got {value!r}")
    return int(value)


def _check_schedule_json(value: Any) -> list:
    """A schedule as the config stores it: ``[kind, n]`` or ``["explicit", [n0, ...]]``."""
    if isinstance(value, Sequence) and len(value) == 2 and value[0] == "explicit":
        kind, sizes = check_schedule(list(value[1]))
    elif isinstance(value, Sequence) and len(value) == 2 and isinstance(value[0], str):
        kind, sizes = check_schedule(tuple(value))
    else:
        kind, sizes = check_schedule(value)
    return [kind, list(sizes) if kind == "explicit" else sizes]


def _check_experiment_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the experiment id (name) must be non-empty text, got {value!r}")
    return value


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check an experiment's settings; the normalised copy.

    Parameters
    ----------
    config : mapping
        As :func:`~pytyche.sequential.sequential_experiment` builds it (``exp.config``), or
        as read back from a store.

    Returns
    -------
    dict
        A JSON-safe copy: weights as float, the schedule as ``[kind, value]``.

    Raises
    ------
    ValueError
        For a missing or unknown key, and for any setting out of range (naming it and its
        value): weights outside [0, 1] or summing past 1, fewer than 2 arms, an unknown
        family, a bad schedule, depth, share, count or seed, an unknown fit option or one of
        the wrong type, a graduation loss that is not a finite non-negative number.

    Examples
    --------
    >>> from pytyche.sequential import sequential_experiment
    >>> config = sequential_experiment(["control", "A"], seed=3, name="demo").config
    >>> check_config(config) == config
    True
    >>> check_config({**config, "fit_options": {"n_draw": 10}})
    Traceback (most recent call last):
    ...
    ValueError: fit_options has the unknown option 'n_draw'; valid options are [...]...)
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"an experiment config must be a mapping, got {type(config).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    unknown = sorted(set(map(str, config)) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        raise ValueError(
            f"the experiment config lacks {missing} and has unknown keys {unknown}; its keys "
            f"are {list(REQUIRED_KEYS)} and optionally {list(OPTIONAL_KEYS)}"
        )
    c = check_weight("min_control_weight", config["min_control_weight"])
    e = check_weight("min_explore_weight", config["min_explore_weight"])
    if c + e > 1.0 + 1e-12:
        raise ValueError(
            f"min_control_weight + min_explore_weight must be at most 1, got {c} + {e} = "
            f"{c + e}; lower one of them"
        )
    family = config["family"]
    if family not in FAMILIES:
        raise ValueError(
            f"family must be 'hurdle', 'binary', 'continuous' or 'auto', got {family!r}"
        )
    share = config["min_segment_share"]
    if isinstance(share, bool) or not isinstance(share, Real) or not 0.0 < float(share) <= 0.5:
        raise ValueError(f"min_segment_share must be in (0, 0.5], got {share!r}")
    visitors = config["min_visitors_per_arm"]
    if isinstance(visitors, bool) or not isinstance(visitors, Integral) or visitors < 0:
        raise ValueError(f"min_visitors_per_arm must be a non-negative integer, got {visitors!r}")
    loss = config["graduation_loss"]
    if isinstance(loss, bool) or not isinstance(loss, Real) or not 0.0 <= float(loss) < math.inf:
        raise ValueError(
            f"graduation_loss must be a finite non-negative number (a fraction of the "
            f"segment's best mean metric, such as 0.01), got {loss!r}"
        )
    checked = {
        "arms": list(check_arms(config["arms"])),
        "family": family,
        "min_control_weight": c,
        "min_explore_weight": e,
        "epsilon": check_weight("epsilon", config["epsilon"]),
        "max_segment_depth": _check_depth(config["max_segment_depth"]),
        "min_segment_share": float(share),
        "min_visitors_per_arm": int(visitors),
        "schedule": _check_schedule_json(config["schedule"]),
        "fit_options": check_fit_options(config["fit_options"]),
        "seed": _check_int("seed", config["seed"], 0, MAX_SEED),
        "drop_threshold": check_weight("drop_threshold", config["drop_threshold"]),
        "graduation_threshold": check_weight(
            "graduation_threshold", config["graduation_threshold"]
        ),
        "graduation_loss": float(loss),
    }
    if "experiment_id" in config:
        checked["experiment_id"] = _check_experiment_id(config["experiment_id"])
    return checked
