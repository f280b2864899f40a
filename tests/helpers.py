"""Test helpers: random posteriors in the contract, segments, and a compute-counting scheduler.

Tests import these from here (``from helpers import ...``); ``conftest.py`` holds only
pytest configuration and fixtures.
"""

from __future__ import annotations

import contextlib

import dask
import numpy as np
import xarray as xr

import pytyche as pt

FAMILY_VARIABLES = {
    "binary": ("conversion",),
    "continuous": ("expected",),
    "hurdle": ("conversion", "value"),
}
DEVICES = np.array(["mobile", "desktop", "tablet"], dtype=object)


def random_dataset(
    family: str = "hurdle",
    n_visitors: int = 60,
    n_arms: int = 3,
    n_draws: int = 40,
    n_chains: int | None = None,
    seed: int = 0,
    dtype=np.float64,
    observed: bool = True,
) -> xr.Dataset:
    """A posterior Dataset of random draws, independent of pytyche's own example generator."""
    rng = np.random.default_rng(seed)
    sample_shape = (n_draws,) if n_chains is None else (n_chains, n_draws)
    sample_dims = ("draw",) if n_chains is None else ("chain", "draw")
    shape = (n_visitors, *sample_shape, n_arms)
    dims = ("visitor", *sample_dims, "arm")
    generators = {
        "conversion": lambda: rng.beta(2.0, 8.0, size=shape),
        "value": lambda: rng.gamma(2.0, 10.0, size=shape),
        "expected": lambda: rng.normal(0.0, 1.0, size=shape),
    }
    data_vars = {
        name: (dims, generators[name]().astype(dtype)) for name in FAMILY_VARIABLES[family]
    }
    arms = ["control", *(f"T{k}" for k in range(1, n_arms))]
    coords = {"arm": arms}
    if observed:
        age = rng.integers(18, 80, size=n_visitors).astype(float)
        age[rng.random(n_visitors) < 0.1] = np.nan
        coords |= {
            "variant": ("visitor", np.sort(rng.choice(np.array(arms, dtype=object), n_visitors))),
            "device": ("visitor", rng.choice(DEVICES, n_visitors)),
            "age": ("visitor", age),
            "returning": ("visitor", rng.random(n_visitors) < 0.4),
        }
    return xr.Dataset(
        data_vars, coords=coords, attrs={"pytyche_family": family, "pytyche_schema": 1}
    )


def random_result(*args, **kwargs):
    return pt.posterior(random_dataset(*args, **kwargs))


# Overlapping segments over the random covariates; together they cover most visitors.
OVERLAPPING_SEGMENTS = (
    pt.DiscoveredSegment(7, "device == 'mobile'"),
    pt.DiscoveredSegment(3, "device in ('desktop', 'tablet') and age > 40"),
    pt.DiscoveredSegment(11, "age <= 50"),
    pt.DiscoveredSegment(0, "everyone"),
    pt.DiscoveredSegment(5, "returning == True and device != 'tablet'"),
)


class CountingScheduler:
    """A dask scheduler that counts how often it is asked to compute, then runs synchronously."""

    def __init__(self):
        self.computes = 0

    def __call__(self, dsk, keys, **kwargs):
        self.computes += 1
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def counting_scheduler(computes: int):
    """Fail unless the block triggers exactly ``computes`` dask computes."""
    scheduler = CountingScheduler()
    with dask.config.set(scheduler=scheduler):
        yield scheduler
    assert scheduler.computes == computes, (
        f"{scheduler.computes} dask computes, expected exactly {computes}"
    )


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run the ``pytyche`` command in-process: (exit status, stdout, stderr)."""
    from pytyche import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
