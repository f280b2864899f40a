"""pytyche: per-segment Thompson allocation for adaptive online experiments, on xarray/dask."""

from . import accessor as _accessor  # noqa: F401  (registers ds.tyche)
from . import analysis
from ._config import get_options, set_options
from ._version import __version__
from .analysis import membership, segment_means, thompson_allocation, win_frequencies
from .examples import example_posterior
from .results import (
    BCFResult,
    BinaryBCFResult,
    ContinuousBCFResult,
    HurdleBCFResult,
    posterior,
)
from .segments import Clause, DiscoveredSegment, SegmentRule, as_segments

# -- posteriors from experiment data: observed data, simulator, BCF fits, persistence --
# isort: split
from .correction import doubly_robust
from .data import from_arrays, from_inference_data, observed_data
from .fitting import fit, fit_binary_bcf, fit_continuous_bcf, fit_hurdle_bcf
from .io import PosteriorReadError, open_posterior, to_netcdf, to_zarr
from .simulate import planted_segments, simulate_experiment

# -- segment discovery: policy tree --
# isort: split
from .policy_tree import PolicyTreeResult, fit_policy_tree
from .summary import ConvergenceWarning, check_convergence, segment_summary

# -- decisions: ship / continue / stop, and the pre-flight check of experiment data --
# isort: split
from .decisions import DecisionThresholds, Recommendation, recommend
from .setup_check import SetupReport, check_setup

# -- the sequential experiment: rounds, assignment, SRM, off-policy evaluation --
# isort: split
from . import sequential
from .sequential import (
    RoundPlan,
    SequentialExperiment,
    evaluate_policy,
    open_experiment,
    sequential_experiment,
    simulate_sequential,
)

# -- plots: matplotlib is imported when one is drawn, so this import stays cheap --
# isort: split
from . import plot

__all__ = [
    "BCFResult",
    "BinaryBCFResult",
    "Clause",
    "ContinuousBCFResult",
    "ConvergenceWarning",
    "DecisionThresholds",
    "DiscoveredSegment",
    "HurdleBCFResult",
    "PolicyTreeResult",
    "PosteriorReadError",
    "Recommendation",
    "RoundPlan",
    "SegmentRule",
    "SequentialExperiment",
    "SetupReport",
    "__version__",
    "analysis",
    "as_segments",
    "check_convergence",
    "check_setup",
    "doubly_robust",
    "evaluate_policy",
    "example_posterior",
    "fit",
    "fit_binary_bcf",
    "fit_continuous_bcf",
    "fit_hurdle_bcf",
    "fit_policy_tree",
    "from_arrays",
    "from_inference_data",
    "get_options",
    "membership",
    "observed_data",
    "open_experiment",
    "open_posterior",
    "planted_segments",
    "plot",
    "posterior",
    "recommend",
    "segment_means",
    "segment_summary",
    "sequential",
    "sequential_experiment",
    "set_options",
    "simulate_experiment",
    "simulate_sequential",
    "thompson_allocation",
    "to_netcdf",
    "to_zarr",
    "win_frequencies",
]
