"""Every example in pytyche's docstrings runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pytyche

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(pytyche.__path__, prefix="pytyche."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert failures == 0, f"{failures} docstring example(s) failed in {name}"
