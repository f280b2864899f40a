"""The ``ds.tyche`` accessor: one-line forwards to pytyche's public functions."""

from __future__ import annotations

import xarray as xr

from . import analysis
from .decisions import DecisionThresholds, Recommendation
from .results import check_posterior, posterior


@xr.register_dataset_accessor("tyche")
class TycheAccessor:
    """pytyche's methods on a posterior Dataset, as ``ds.tyche.<method>``.

    Each method wraps the Dataset with :func:`pytyche.posterior` and calls the function of
    the same name in :mod:`pytyche.analysis`.
    """

    def __init__(self, dataset: xr.Dataset):
        self._dataset = dataset

    @property
    def result(self):
        """The typed result of this Dataset: ``pytyche.posterior(ds)``."""
        return posterior(self._dataset)

    def thompson_allocation(self, segments, epsilon: float = 0.02) -> dict[int, dict[str, float]]:
        """Call :func:`pytyche.analysis.thompson_allocation` on this Dataset."""
        return analysis.thompson_allocation(self.result, segments, epsilon=epsilon)

    def segment_means(self, segments) -> xr.DataArray:
        """Call :func:`pytyche.analysis.segment_means` on this Dataset."""
        return analysis.segment_means(self.result, segments)

    def win_frequencies(self, segments) -> xr.DataArray:
        """Call :func:`pytyche.analysis.win_frequencies` on this Dataset."""
        return analysis.win_frequencies(self.result, segments)

    def segment_summary(self, segments, ci: float = 0.8, *, check: bool = False) -> xr.Dataset:
        """Call :func:`pytyche.analysis.segment_summary` on this Dataset."""
        return analysis.segment_summary(self.result, segments, ci=ci, check=check)

    def membership(self, segments) -> xr.DataArray:
        """Call :func:`pytyche.analysis.membership` on this Dataset's observed data."""
        observed = check_posterior(self.result).observed
        assert observed is not None  # check_posterior refuses a posterior without observed data
        return analysis.membership(segments, observed)

    def recommend(
        self,
        segments=None,
        *,
        thresholds: DecisionThresholds | None = None,
        min_practical_effect: float | None = None,
        ci: float = 0.8,
    ) -> Recommendation:
        """Call :func:`pytyche.analysis.recommend` on this Dataset."""
        return analysis.recommend(
            self.result,
            segments,
            thresholds=thresholds,
            min_practical_effect=min_practical_effect,
            ci=ci,
        )
