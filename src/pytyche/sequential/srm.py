"""Sample ratio mismatch under changing weights: recorded vs planned counts, chi-square."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.stats import chi2

__all__ = ["MIN_EXPECTED", "SampleRatioMismatchWarning", "srm_test"]

# Cells expected to hold fewer visitors than this are left out (the chi-square approximation
# needs moderately large expected counts).
MIN_EXPECTED = 5.0


class SampleRatioMismatchWarning(UserWarning):
    """A round's recorded counts per (cell, arm) are unlikely under its plan."""


def srm_test(
    observed: xr.DataArray, expected: xr.DataArray, threshold: float = 0.001
) -> xr.Dataset:
    """Chi-square test of recorded against planned counts, per round and pooled.

    Parameters
    ----------
    observed : xarray.DataArray
        Recorded visitors, dims (round, cell, arm).
    expected : xarray.DataArray
        Visitors the plans expected, same dims and coordinates: per round, the sum over its
        recorded visitors of the planned probability of each (cell, arm) for the visitor's
        segment. Each round's expected total equals its recorded total.
    threshold : float, default 0.001
        A round (or the pooled table) is flagged when its p-value is below this.

    Returns
    -------
    xarray.Dataset
        ``statistic``, ``dof``, ``p_value`` and ``flagged`` per ``round``, and
        ``pooled_statistic``, ``pooled_dof``, ``pooled_p_value``, ``pooled_flagged`` over
        every kept (round, cell, arm) count (degrees of freedom: kept cells minus one per
        round). Cells expected below 5 visitors are skipped; a round with fewer than 2 kept
        cells has NaN p-value and is not flagged. Also ``observed`` and ``expected``.

    Raises
    ------
    ValueError
        When `threshold` is not in (0, 1) or the two tables differ in shape.

    Examples
    --------
    >>> obs = xr.DataArray([[[480, 520]]], dims=("round", "cell", "arm"))
    >>> exp = xr.DataArray([[[500.0, 500.0]]], dims=("round", "cell", "arm"))
    >>> bool(srm_test(obs, exp)["flagged"][0])
    False
    """
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if observed.shape != expected.shape:
        raise ValueError(
            f"observed counts {observed.shape} and expected counts {expected.shape} differ in shape"
        )
    expected = expected.transpose(*observed.dims)
    o = np.asarray(observed.values, dtype=np.float64).reshape(observed.shape[0], -1)
    e = np.asarray(expected.values, dtype=np.float64).reshape(observed.shape[0], -1)
    kept = e >= MIN_EXPECTED
    terms = np.where(kept, (o - e) ** 2 / np.where(kept, e, 1.0), 0.0)
    statistic = terms.sum(axis=1)
    dof = kept.sum(axis=1) - 1
    with np.errstate(invalid="ignore"):
        p_value = np.where(dof >= 1, chi2.sf(statistic, np.maximum(dof, 1)), np.nan)
    pooled_dof = int(np.maximum(dof, 0).sum())
    pooled_statistic = float(terms[dof >= 1].sum())
    pooled_p = float(chi2.sf(pooled_statistic, pooled_dof)) if pooled_dof >= 1 else np.nan
    rounds = observed.coords.get("round")
    coords = {"round": rounds.values} if rounds is not None else {}
    return xr.Dataset(
        {
            "statistic": ("round", statistic),
            "dof": ("round", dof),
            "p_value": ("round", p_value),
            "flagged": ("round", np.nan_to_num(p_value, nan=1.0) < threshold),
            "pooled_statistic": pooled_statistic,
            "pooled_dof": pooled_dof,
            "pooled_p_value": pooled_p,
            "pooled_flagged": bool(pooled_dof >= 1 and pooled_p < threshold),
            "observed": observed,
            "expected": expected,
        },
        coords=coords,
        attrs={"threshold": threshold, "min_expected": MIN_EXPECTED},
    )
