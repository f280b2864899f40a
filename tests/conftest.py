"""pytest configuration: the hypothesis profile and shared fixtures (helpers live in helpers.py)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

import pytyche as pt

from helpers import random_result

# No deadline: the first example of a run may include numba compiling (or loading) a kernel.
settings.register_profile(
    "pytyche", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("pytyche")


@pytest.fixture
def hurdle_result():
    return random_result("hurdle", seed=1)


@pytest.fixture
def options():
    """``pt.set_options`` for one test: every option is restored when the test ends."""
    saved = pt.get_options()
    yield pt.set_options
    pt.set_options(**saved)
