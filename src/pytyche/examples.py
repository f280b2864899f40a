"""A synthetic posterior with planted segment structure, for examples, the demo and benchmarks.

It is shaped exactly like a BCF posterior in the pytyche contract, but its draws come from a
simple generative model (known per-visitor truth plus per-draw, per-device uncertainty), not
from a fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from ._validate import check_arm_names
from .results import BCFResult, posterior_dataset, result_type

__all__ = ["example_posterior"]

DEVICES = np.array(["mobile", "desktop", "tablet"], dtype=object)


def example_posterior(
    n_visitors: int = 10_000,
    n_draws: int = 200,
    arms: Sequence[str] = ("control", "A", "B"),
    family: str = "hurdle",
    *,
    n_chains: int | None = None,
    chunks: int | None = None,
    dtype=np.float32,
    seed: int = 0,
) -> BCFResult:
    """Build a synthetic posterior whose best arm differs by segment.

    Covariates: ``device`` (text: mobile, desktop, tablet), ``age`` (float, about 2% missing)
    and ``returning`` (bool). Planted truth: the first treatment lifts mobile visitors, the
    second lifts desktop visitors over 40, and every treatment hurts tablet visitors, where
    control is best. Visitors are split evenly between arms, rows variant-major.

    Parameters
    ----------
    n_visitors : int
        Number of visitors (rows).
    n_draws : int
        Posterior draws per chain.
    arms : sequence of str
        Arm names, control first; at least 2.
    family : {"hurdle", "binary", "continuous"}
        Which posterior family to build.
    n_chains : int, optional
        Add a ``chain`` dim of this size beside ``draw``.
    chunks : int, optional
        Visitors per chunk: the draws are then a lazy dask array, generated block by block,
        so the posterior never needs to fit in memory.
    dtype : numpy dtype
        Float type of the draws.
    seed : int
        Seed; the same seed gives the same posterior, whatever the chunking.

    Returns
    -------
    HurdleBCFResult or BinaryBCFResult or ContinuousBCFResult
    """
    cls = result_type(family)
    arms = check_arm_names(arms)
    rng = np.random.default_rng([seed, 0])
    device_index = rng.choice(len(DEVICES), size=n_visitors, p=[0.5, 0.35, 0.15])
    device = DEVICES[device_index]
    age = rng.uniform(18, 80, size=n_visitors).round()
    age[rng.random(n_visitors) < 0.02] = np.nan
    returning = rng.random(n_visitors) < 0.3
    variant = np.repeat(np.array(arms, dtype=object), -(-n_visitors // len(arms)))[:n_visitors]

    lift = _planted_lift(device, age, len(arms))  # (visitor, arm), log-odds / log scale
    sample_shape = (n_draws,) if n_chains is None else (n_chains, n_draws)
    # Per-draw, per-arm, per-device posterior uncertainty: the part the allocation weighs.
    group_shift = rng.normal(0.0, 0.08, size=(*sample_shape, len(arms), len(DEVICES)))
    group_shift[..., 0, :] = 0.0

    variables = list(cls.metric_variables)

    def block(lo: int, hi: int, name: str) -> np.ndarray:
        shift = np.moveaxis(group_shift[..., device_index[lo:hi]], -1, 0)
        noise = _visitor_noise(lo, hi, shift.shape[1:], [seed, 1 + variables.index(name)])
        logit = _base(name) + lift[lo:hi].reshape(hi - lo, *(1,) * len(sample_shape), -1)
        logit = logit + shift + noise
        if name == "conversion":
            values = 1.0 / (1.0 + np.exp(-logit))
        elif name == "value":
            values = 40.0 * np.exp(0.25 * logit)
        else:
            values = 10.0 + 2.0 * logit
        return values.astype(dtype)

    shape = (n_visitors, *sample_shape, len(arms))
    sample_dims = ("draw",) if n_chains is None else ("chain", "draw")
    data_vars = {}
    data: np.ndarray | da.Array
    for name in variables:
        if chunks is None:
            data = block(0, n_visitors, name)
        else:
            data = _lazy(block, name, shape, chunks, dtype)
        data_vars[name] = (("visitor", *sample_dims, "arm"), data)
    ds = posterior_dataset(
        family,
        arms,
        data_vars,
        coords={
            "variant": ("visitor", variant),
            "device": ("visitor", device),
            "age": ("visitor", age),
            "returning": ("visitor", returning),
        },
    )
    return cls(ds)


def _base(name: str) -> float:
    return {"conversion": -2.5, "value": 0.0, "expected": 0.0}[name]


def _planted_lift(device: np.ndarray, age: np.ndarray, n_arms: int) -> np.ndarray:
    lift = np.zeros((device.size, n_arms))
    with np.errstate(invalid="ignore"):
        over_40 = age > 40
    lift[:, 1] = np.where(device == "mobile", 0.3, -0.1)
    if n_arms > 2:
        lift[:, 2] = np.where((device == "desktop") & over_40, 0.35, -0.05)
    for k in range(3, n_arms):  # further arms: small, close contenders
        lift[:, k] = 0.05 * (k - 2) * np.where(device == "desktop", 1.0, -1.0)
    lift[device == "tablet", 1:] = -0.2
    return lift


NOISE_TILE = 4096


def _visitor_noise(lo: int, hi: int, trailing: tuple[int, ...], key: list[int]) -> np.ndarray:
    # Drawn in fixed tiles of visitors, so any chunking yields the same numbers.
    if hi <= lo:
        return np.zeros((0, *trailing))
    tiles = [
        np.random.default_rng([*key, tile]).normal(0.0, 0.03, size=(NOISE_TILE, *trailing))
        for tile in range(lo // NOISE_TILE, (hi - 1) // NOISE_TILE + 1)
    ]
    offset = lo - (lo // NOISE_TILE) * NOISE_TILE
    return np.concatenate(tiles)[offset : offset + hi - lo]


def _lazy(block, name, shape, chunk, dtype) -> da.Array:
    visitor_chunks = tuple(min(chunk, shape[0] - lo) for lo in range(0, shape[0], chunk))

    def make(block_info=None):
        lo, hi = block_info[None]["array-location"][0]
        return block(lo, hi, name)

    return da.map_blocks(
        make,
        chunks=(visitor_chunks, *((n,) for n in shape[1:])),
        dtype=dtype,
        meta=np.empty((0,) * len(shape), dtype=dtype),
    )
