"""pytyche: per-segment Thompson allocation for adaptive online experiments, on xarray/dask."""

from . import accessor as _accessor  # noqa: F401  (registers ds.tyche)
from . import analysis
from .analysis import membership, segment_means, thompson_allocation, win_frequencies
from .examples import example_posterior
from .results import BinaryBCFResult, ContinuousBCFResult, HurdleBCFResult, posterior
from .segments import Clause, DiscoveredSegment, SegmentRule, as_segments

# -- posteriors from experiment data: observed data, simulator, BCF fits, persistence --

# -- segment discovery: policy tree --

__version__ = "0.1.0"

__all__ = [
    "BinaryBCFResult",
    "Clause",
    "ContinuousBCFResult",
    "DiscoveredSegment",
    "HurdleBCFResult",
    "SegmentRule",
    "analysis",
    "as_segments",
    "example_posterior",
    "membership",
    "posterior",
    "segment_means",
    "thompson_allocation",
    "win_frequencies",
]
