"""Sequential experiments: plans, sticky assignment, SRM checks, off-policy evaluation, audit.

The loop: :func:`sequential_experiment` → ``exp.plan()`` (a :class:`RoundPlan`) →
``plan.assign(visitors)`` → serve, collect outcomes → ``exp.record(observed)`` →
``exp.advance()`` → the next plan. See ``docs/sequential.md``.
"""

from .assign import visitor_uniforms
from .config import check_config
from .evaluate import evaluate_policy, policy_probabilities
from .experiment import SequentialExperiment, logged_observed, sequential_experiment
from .growthbook import (
    exposures_from_growthbook,
    growthbook_attributes,
    growthbook_condition,
    to_growthbook,
)
from .plan import CELLS, NO_SEGMENT, RoundPlan, check_schedule, round_size
from .simulate import simulate_sequential
from .srm import SampleRatioMismatchWarning, srm_test
from .store import DamagedStoreError, StaleExperimentError, open_experiment, save_experiment

__all__ = [
    "CELLS",
    "NO_SEGMENT",
    "DamagedStoreError",
    "RoundPlan",
    "SampleRatioMismatchWarning",
    "SequentialExperiment",
    "StaleExperimentError",
    "check_config",
    "check_schedule",
    "evaluate_policy",
    "exposures_from_growthbook",
    "growthbook_attributes",
    "growthbook_condition",
    "logged_observed",
    "open_experiment",
    "policy_probabilities",
    "round_size",
    "save_experiment",
    "sequential_experiment",
    "simulate_sequential",
    "srm_test",
    "to_growthbook",
    "visitor_uniforms",
]
