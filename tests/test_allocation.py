"""thompson_allocation: every sentence of its reference page, and agreement with the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

import pytyche as pt
from pytyche._kernels import apply_exploration_floor

from helpers import OVERLAPPING_SEGMENTS, counting_scheduler, random_dataset, random_result
from reference import reference_allocation


def designed_posterior(
    winners: list[int], n_arms: int = 3, n_visitors: int = 6
) -> pt.ContinuousBCFResult:
    """A continuous posterior in which draw d is won by arm ``winners[d]`` in every segment.

    Control sits at 0.5; the designated treatment at 1.0 and other treatments at 0.0, so the
    control's draws (winner 0) have all contrasts negative.
    """
    expected = np.zeros((n_visitors, len(winners), n_arms))
    expected[:, :, 0] = 0.5
    for draw, arm in enumerate(winners):
        if arm > 0:
            expected[:, draw, arm] = 1.0
    arms = ["control", *(f"T{k}" for k in range(1, n_arms))]
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={
            "arm": arms,
            "variant": ("visitor", [arms[v % n_arms] for v in range(n_visitors)]),
            "device": ("visitor", ["mobile", "desktop"] * (n_visitors // 2)),
        },
    )
    return pt.ContinuousBCFResult(ds)


EVERYONE = [pt.DiscoveredSegment(0, "everyone")]


# -- "each arm's weight is the posterior probability that it is the segment's best arm" --------


def test_weight_is_fraction_of_draws_won():
    winners = [0] * 5 + [1] * 12 + [2] * 3
    allocation = pt.thompson_allocation(designed_posterior(winners), EVERYONE, epsilon=0.0)
    assert allocation == {0: {"control": 5 / 20, "T1": 12 / 20, "T2": 3 / 20}}


def test_each_draw_votes_once_per_segment_with_mean_contrast_over_members():
    # Two members: T1 helps one a lot and hurts the other a little; a per-visitor majority
    # would call it a tie, the mean contrast (+0.4) gives T1 the vote.
    expected = np.array([[[0.0, 1.0]], [[0.0, -0.2]]])  # (visitor, draw=1, arm=2)
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={
            "arm": ["control", "T1"],
            "variant": ("visitor", ["control", "T1"]),
            "x": ("visitor", [1, 2]),
        },
    )
    result = pt.ContinuousBCFResult(ds)
    assert pt.thompson_allocation(result, EVERYONE, epsilon=0) == {0: {"control": 0.0, "T1": 1.0}}
    # Each segment votes on its own members only.
    only_second = [pt.DiscoveredSegment(4, "x == 2")]
    assert pt.thompson_allocation(result, only_second, epsilon=0) == {
        4: {"control": 1.0, "T1": 0.0}
    }


def test_vote_goes_to_largest_contrast_and_to_control_when_none_positive():
    expected = np.array(
        [
            [0.5, 0.6, 0.9, 0.7],  # T2 largest positive contrast
            [0.5, 0.4, 0.3, 0.1],  # all negative: control
            [0.5, 0.5, 0.5, 0.5],  # all zero: not positive, control
            [0.5, 0.8, 0.6, 0.8],  # tie between T1 and T3: earlier arm
        ]
    )[np.newaxis]  # one visitor
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={"arm": ["c", "T1", "T2", "T3"], "variant": ("visitor", ["c"])},
    )
    allocation = pt.thompson_allocation(pt.posterior(ds), EVERYONE, epsilon=0)
    assert allocation == {0: {"c": 0.5, "T1": 0.25, "T2": 0.25, "T3": 0.0}}


def test_confident_posterior_concentrates_and_close_one_spreads():
    rng = np.random.default_rng(3)
    n_visitors, n_draws = 50, 400
    shape = (n_visitors, n_draws, 3)
    # Segment "mobile": T2 far ahead of everyone. Segment "desktop": T1 and T2 neck and neck.
    mobile = np.arange(n_visitors) % 2 == 0
    center = np.where(mobile[:, None], [0.0, 0.1, 1.0], [0.0, 0.5, 0.5])
    draw_noise = rng.normal(0, 0.1, size=(1, n_draws, 3))
    expected = center[:, None, :] + draw_noise + rng.normal(0, 0.01, size=shape)
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={
            "arm": ["control", "T1", "T2"],
            "variant": ("visitor", ["control"] * n_visitors),
            "device": ("visitor", np.where(mobile, "mobile", "desktop")),
        },
    )
    segments = [
        pt.DiscoveredSegment(0, "device == 'mobile'"),
        pt.DiscoveredSegment(1, "device == 'desktop'"),
    ]
    allocation = pt.thompson_allocation(pt.posterior(ds), segments, epsilon=0)
    assert allocation[0]["T2"] == 1.0
    assert allocation[1]["T1"] > 0.3 and allocation[1]["T2"] > 0.3
    assert allocation[1]["control"] < 0.05


# -- posterior: one of the three result types, carrying observed data ---------------------------


@pytest.mark.parametrize(
    ("family", "cls"),
    [
        ("binary", pt.BinaryBCFResult),
        ("continuous", pt.ContinuousBCFResult),
        ("hurdle", pt.HurdleBCFResult),
    ],
)
def test_accepts_each_result_type(family, cls):
    ds = random_dataset(family, seed=31)
    allocation = pt.thompson_allocation(cls(ds), EVERYONE, epsilon=0.0)
    assert allocation == reference_allocation(ds, EVERYONE, 0.0)


@pytest.mark.parametrize(
    "bad", [random_dataset(), {"conversion": 1}, None, "posterior", np.zeros((2, 2, 2))]
)
def test_rejects_other_types_with_type_error(bad):
    with pytest.raises(TypeError, match="posterior must be one of"):
        pt.thompson_allocation(bad, EVERYONE)


def test_bare_dataset_error_points_to_the_accessor():
    with pytest.raises(TypeError, match=r"ds\.tyche\.thompson_allocation"):
        pt.thompson_allocation(random_dataset(), EVERYONE)


def test_posterior_without_observed_data_raises():
    result = pt.posterior(random_dataset(observed=False))
    assert result.observed is None
    with pytest.raises(ValueError, match="no observed data"):
        pt.thompson_allocation(result, EVERYONE)


# -- segments: only id and rule consumed; membership over the concatenated visitor rows ---------


class DuckSegment:
    """Carries id and rule plus fields thompson_allocation must ignore."""

    def __init__(self, id, rule):
        self.id, self.rule = id, rule
        self.best_arm = "nonsense"
        self.population_share = -1.0


def test_only_id_and_rule_are_consumed():
    result = random_result("binary", seed=2)
    plain = [pt.DiscoveredSegment(1, "device == 'mobile'"), pt.DiscoveredSegment(2, "age > 30")]
    duck = [DuckSegment(1, "device == 'mobile'"), DuckSegment(2, pt.SegmentRule.parse("age > 30"))]
    assert pt.thompson_allocation(result, duck) == pt.thompson_allocation(result, plain)


def test_membership_follows_variant_major_rows():
    # Rows are control's visitors then T1's: a rule on `variant` picks exactly those rows, and
    # their metric rows decide. Control rows favour T1, T1's rows favour control.
    expected = np.zeros((4, 1, 2))
    expected[:2, 0, 1] = 1.0
    expected[2:, 0, 1] = -1.0
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={
            "arm": ["control", "T1"],
            "variant": ("visitor", ["control", "control", "T1", "T1"]),
        },
    )
    segments = [
        pt.DiscoveredSegment(0, "variant == 'control'"),
        pt.DiscoveredSegment(1, "variant == 'T1'"),
    ]
    assert pt.thompson_allocation(pt.posterior(ds), segments, epsilon=0) == {
        0: {"control": 0.0, "T1": 1.0},
        1: {"control": 1.0, "T1": 0.0},
    }


def test_overlapping_segments_are_allowed_and_each_votes_on_its_own_members():
    ds = random_dataset("continuous", seed=5)
    allocation = pt.thompson_allocation(pt.posterior(ds), OVERLAPPING_SEGMENTS, epsilon=0.0)
    for segment in OVERLAPPING_SEGMENTS:  # the same as allocating each segment on its own
        alone = pt.thompson_allocation(pt.posterior(ds), [segment], epsilon=0.0)
        assert allocation[segment.id] == alone[segment.id]


def test_segments_as_mapping():
    result = random_result("continuous", seed=5)
    as_list = [pt.DiscoveredSegment(2, "age > 30"), pt.DiscoveredSegment(1, "everyone")]
    assert pt.thompson_allocation(result, {2: "age > 30", 1: "everyone"}) == (
        pt.thompson_allocation(result, as_list)
    )


def test_duplicate_segment_ids_raise():
    with pytest.raises(ValueError, match="duplicate segment id 3"):
        pt.thompson_allocation(
            random_result(),
            [pt.DiscoveredSegment(3, "age > 1"), pt.DiscoveredSegment(3, "everyone")],
        )


def test_segment_matching_zero_visitors_raises_and_names_it():
    segments = [pt.DiscoveredSegment(0, "everyone"), pt.DiscoveredSegment(9, "age > 1000")]
    with pytest.raises(ValueError, match=r"segment 9 \(age > 1000\) matches zero visitors"):
        pt.thompson_allocation(random_result(), segments)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_member_draws_raise(bad_value):
    ds = random_dataset("hurdle", seed=4)
    mobile = np.flatnonzero(ds["device"].values == "mobile")[0]
    ds["value"][mobile, 3, 1] = bad_value
    segments = [
        pt.DiscoveredSegment(0, "device != 'mobile'"),
        pt.DiscoveredSegment(1, "device == 'mobile'"),
    ]
    with pytest.raises(ValueError, match=r"segment 1 .*NaN or infinity"):
        pt.thompson_allocation(pt.posterior(ds), segments)
    # The same draws are harmless to a segment they are not a member of.
    assert set(pt.thompson_allocation(pt.posterior(ds), segments[:1])) == {0}


def test_non_finite_draws_flag_only_the_segments_they_belong_to():
    ds = random_dataset("continuous", seed=4)
    mobile = np.flatnonzero(ds["device"].values == "mobile")[0]
    ds["expected"][mobile, 0, 1] = np.inf
    # Overlapping: "everyone" holds the broken visitor, "device != 'mobile'" does not.
    segments = [pt.DiscoveredSegment(0, "everyone"), pt.DiscoveredSegment(1, "device != 'mobile'")]
    frequencies = pt.win_frequencies(pt.posterior(ds), segments)
    assert np.isnan(frequencies.sel(segment=0)).all()
    assert float(frequencies.sel(segment=1).sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"segment 0 \(everyone\): a member's posterior draws"):
        pt.thompson_allocation(pt.posterior(ds), segments)


# -- epsilon: the exploration floor ---------------------------------------------------------------


def test_floor_raises_to_exactly_epsilon_over_k_iterating_until_stable():
    # Wins (150, 21, 20, 9) of 200: T3 is below the floor 0.1; rescaling the rest then pushes
    # T1 and T2 below it too, so a second round floors them as well.
    winners = [0] * 150 + [1] * 21 + [2] * 20 + [3] * 9
    result = designed_posterior(winners, n_arms=4)
    weights = pt.thompson_allocation(result, EVERYONE, epsilon=0.4)[0]
    assert weights["T3"] == weights["T2"] == weights["T1"] == 0.1
    assert weights["control"] == pytest.approx(0.7, abs=1e-12)
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)


def test_floor_rescales_the_rest_proportionally():
    weights = apply_exploration_floor(np.array([[0.6, 0.39, 0.01]]), 0.3)[0]
    assert weights[2] == 0.3 / 3
    assert weights[0] / weights[1] == pytest.approx(0.6 / 0.39, rel=1e-12)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_floor_inert_when_every_arm_is_above_it():
    winners = [0] * 8 + [1] * 7 + [2] * 5
    result = designed_posterior(winners)
    raw = pt.thompson_allocation(result, EVERYONE, epsilon=0.0)
    # The floor 0.75 / 3 = 0.25 equals the lowest frequency: met, not undershot.
    assert pt.thompson_allocation(result, EVERYONE, epsilon=0.75) == raw
    assert pt.thompson_allocation(result, EVERYONE, epsilon=0.3) == raw


def test_epsilon_zero_returns_raw_win_frequencies_verbatim():
    result = random_result("hurdle", seed=8, n_draws=37)
    allocation = pt.thompson_allocation(result, OVERLAPPING_SEGMENTS, epsilon=0.0)
    frequencies = pt.win_frequencies(result, OVERLAPPING_SEGMENTS)
    for segment in OVERLAPPING_SEGMENTS:
        row = frequencies.sel(segment=segment.id)
        assert allocation[segment.id] == {a: float(row.sel(arm=a)) for a in result.variants}


def test_no_arm_starved_to_zero():
    winners = [1] * 50  # T1 wins every draw
    weights = pt.thompson_allocation(designed_posterior(winners), EVERYONE)[0]
    assert weights["control"] == weights["T2"] == 0.02 / 3
    assert weights["T1"] == pytest.approx(1 - 2 * 0.02 / 3, abs=1e-12)


def test_epsilon_one_is_uniform():
    weights = pt.thompson_allocation(designed_posterior([1] * 10), EVERYONE, epsilon=1.0)[0]
    assert list(weights) == ["control", "T1", "T2"]
    np.testing.assert_allclose(list(weights.values()), [1 / 3] * 3, rtol=0, atol=1e-15)


@pytest.mark.parametrize("epsilon", [-0.01, 1.0000001, 2, np.nan, np.inf, -np.inf])
def test_epsilon_outside_unit_interval_raises(epsilon):
    with pytest.raises(ValueError, match="epsilon must be in"):
        pt.thompson_allocation(random_result(), EVERYONE, epsilon=epsilon)


@pytest.mark.parametrize("epsilon", ["0.1", None, True])
def test_epsilon_not_a_number_raises_type_error(epsilon):
    with pytest.raises(TypeError, match="epsilon"):
        pt.thompson_allocation(random_result(), EVERYONE, epsilon=epsilon)


# -- returns ----------------------------------------------------------------------------------


def test_return_shape_order_and_sum():
    result = random_result("hurdle", n_arms=5, seed=9)
    allocation = pt.thompson_allocation(result, OVERLAPPING_SEGMENTS)
    assert list(allocation) == [7, 3, 11, 0, 5]
    for weights in allocation.values():
        assert list(weights) == ["control", "T1", "T2", "T3", "T4"]
        assert all(type(w) is float for w in weights.values())
        assert abs(math.fsum(weights.values()) - 1.0) <= 1e-12


# -- agreement with the naive reference ------------------------------------------------------


@pytest.mark.parametrize("family", ["binary", "continuous", "hurdle"])
@pytest.mark.parametrize("n_arms", [2, 3, 5])
@pytest.mark.parametrize("n_chains", [None, 3])
def test_agrees_with_naive_reference(family, n_arms, n_chains):
    ds = random_dataset(
        family,
        n_visitors=45,
        n_arms=n_arms,
        n_draws=25,
        n_chains=n_chains,
        seed=n_arms + 10 * (n_chains or 0) + len(family),
    )
    result = pt.posterior(ds)
    for epsilon in (0.0, 0.02, 0.5, 1.0):
        expected = reference_allocation(ds, OVERLAPPING_SEGMENTS, epsilon)
        actual = pt.thompson_allocation(result, OVERLAPPING_SEGMENTS, epsilon)
        assert list(actual) == list(expected)
        for segment_id, weights in expected.items():
            assert list(actual[segment_id]) == list(weights)
            np.testing.assert_allclose(
                list(actual[segment_id].values()), list(weights.values()), rtol=0, atol=1e-12
            )
        if epsilon == 0.0:  # raw frequencies are exact multiples of 1 / samples
            assert actual == expected


@pytest.mark.parametrize("dtype", [">f8", ">f4", "float16", "int16", "uint8"])
def test_other_dtypes_give_the_float64_allocation(dtype):
    ds = random_dataset("hurdle", seed=23)
    # Integer-coded draws in 0..200, exactly representable in every dtype here.
    ds = ds.assign({name: (ds[name] * 20).round().clip(0, 200) for name in ds.data_vars})
    expected = pt.thompson_allocation(pt.posterior(ds), OVERLAPPING_SEGMENTS, 0.0)
    converted = ds.astype(dtype)
    for posterior in (converted, converted.chunk({"visitor": 13})):
        result = pt.posterior(posterior)
        assert pt.thompson_allocation(result, OVERLAPPING_SEGMENTS, 0.0) == expected
        # The per-visitor contrast is computed in floating point: no wrap-around.
        assert float(result.contrast().min()) < 0


def test_float32_posterior_agrees_with_reference():
    ds = random_dataset("hurdle", n_visitors=80, n_draws=30, dtype=np.float32, seed=21)
    assert pt.thompson_allocation(pt.posterior(ds), OVERLAPPING_SEGMENTS, 0.0) == (
        reference_allocation(ds, OVERLAPPING_SEGMENTS, 0.0)
    )


def test_other_axis_orders_give_the_same_allocation():
    ds = random_dataset("hurdle", n_chains=2, seed=13)
    expected = pt.thompson_allocation(pt.posterior(ds), OVERLAPPING_SEGMENTS)
    transposed = ds.transpose("arm", "draw", "visitor", "chain")
    assert pt.thompson_allocation(pt.posterior(transposed), OVERLAPPING_SEGMENTS) == expected
    lazy = transposed.chunk({"draw": 7, "visitor": 11, "arm": 2})
    assert pt.thompson_allocation(pt.posterior(lazy), OVERLAPPING_SEGMENTS) == expected


# -- laziness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_coords", [False, True])
def test_dask_posterior_builds_lazily_and_computes_once(chunk_coords):
    ds = random_dataset("hurdle", n_visitors=90, seed=17)
    if chunk_coords:
        lazy = ds.chunk({"visitor": 25})
    else:
        lazy = ds.assign({name: ds[name].chunk({"visitor": 25}) for name in ds.data_vars})
    with counting_scheduler(computes=0):
        result = pt.posterior(lazy)
        means = pt.segment_means(result, OVERLAPPING_SEGMENTS)
        frequencies = pt.win_frequencies(result, OVERLAPPING_SEGMENTS)
        member = pt.membership(OVERLAPPING_SEGMENTS, result.observed)
    assert means.chunks is not None and frequencies.chunks is not None
    assert (member.chunks is not None) == chunk_coords
    with counting_scheduler(computes=1) as scheduler:
        allocation = pt.thompson_allocation(result, OVERLAPPING_SEGMENTS)
    assert scheduler.computes == 1
    assert allocation == pt.thompson_allocation(pt.posterior(ds), OVERLAPPING_SEGMENTS)


def test_empty_segment_is_reported_before_reading_the_draws():
    def explode(block):
        raise AssertionError("the posterior's draws were read")

    ds = random_dataset("continuous", seed=2)
    draws = ds["expected"].chunk({"visitor": 10}).data.map_blocks(explode, dtype=float)
    result = pt.posterior(ds.assign(expected=(ds["expected"].dims, draws)))
    segments = [pt.DiscoveredSegment(0, "everyone"), pt.DiscoveredSegment(1, "age > 999")]
    with counting_scheduler(computes=0), pytest.raises(ValueError, match="segment 1"):
        pt.thompson_allocation(result, segments)


def test_lazy_variant_labels_are_checked_in_the_single_compute():
    ds = random_dataset("binary", seed=3)
    ghost = ds.assign_coords(variant=("visitor", ["ghost"] * ds.sizes["visitor"]))
    lazy = pt.posterior(ghost.chunk({"visitor": 20}))  # labels unread: construction succeeds
    # One compute for the allocation, a second only to name the bad labels in the error.
    with counting_scheduler(computes=2), pytest.raises(ValueError, match=r"\['ghost'\]"):
        pt.thompson_allocation(lazy, EVERYONE)


def test_dask_errors_after_the_single_compute():
    ds = random_dataset("continuous", seed=2)
    ds["expected"][0, 0, 0] = np.nan
    lazy = pt.posterior(ds.chunk({"visitor": 10}))
    with counting_scheduler(computes=1), pytest.raises(ValueError, match="NaN or infinity"):
        pt.thompson_allocation(lazy, EVERYONE)
    with counting_scheduler(computes=1), pytest.raises(ValueError, match="zero visitors"):
        pt.thompson_allocation(lazy, [pt.DiscoveredSegment(1, "age > 999")])
    # With covariates in memory the empty segment is caught before any compute.
    eager_covariates = pt.posterior(ds.assign(expected=ds["expected"].chunk({"visitor": 10})))
    with counting_scheduler(computes=0), pytest.raises(ValueError, match="zero visitors"):
        pt.thompson_allocation(eager_covariates, [pt.DiscoveredSegment(1, "age > 999")])
