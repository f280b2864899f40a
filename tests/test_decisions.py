"""recommend: against a naive float64 reference, the decision rule branch by branch and on each
threshold, the value of one more round, hurdle channels, laziness (one compute), the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import pytyche as pt
from pytyche._mcse import effective_sample_size
from pytyche.decisions import DecisionThresholds, Recommendation, recommend

from helpers import OVERLAPPING_SEGMENTS, counting_scheduler, random_dataset
from reference import reference_members, reference_metric
from strategies import chunkings, posteriors

PROBABILITIES = ("prob_positive", "prob_better", "prob_harm")
NUMERIC = (
    "control_mean",
    "treatment_mean",
    "lift",
    "lift_lower",
    "lift_upper",
    "relative_lift",
    "relative_lift_lower",
    "relative_lift_upper",
    *PROBABILITIES,
    *(f"{name}_mcse" for name in PROBABILITIES),
    "expected_loss_ship",
    "expected_loss_keep",
    "value_of_next_round",
)
CHANNELS = tuple(
    f"{channel}{suffix}"
    for channel in ("conversion_lift", "value_lift")
    for suffix in ("", "_lower", "_upper")
)


# -- the naive reference: loops over segments, samples, arms and visitors, float64 ------------


def naive_ess(chains: np.ndarray) -> float:
    """Stan's basic ESS, autocovariances by direct sums (no FFT), for one (chain, draw) series.

    Geyer's rules as Stan and ArviZ apply them: pair sums of autocorrelations (lags 2k, 2k+1)
    are kept while positive and made non-increasing; the even lag of the first pair dropped
    (or of the last pair computed) counts once, when positive.
    """
    n_chains, n_draws = chains.shape
    if np.ptp(chains) == 0:
        return float(n_chains * n_draws)
    means = [sum(c) / n_draws for c in chains]
    acov = [
        [
            sum((c[i] - m) * (c[i + lag] - m) for i in range(n_draws - lag)) / n_draws
            for lag in range(n_draws)
        ]
        for c, m in zip(chains, means, strict=True)
    ]
    within = sum(a[0] for a in acov) / n_chains * n_draws / (n_draws - 1)
    grand = sum(means) / n_chains
    between = sum((m - grand) ** 2 for m in means) / (n_chains - 1) if n_chains > 1 else 0.0
    var_plus = within * (n_draws - 1) / n_draws + between

    def rho(lag):
        return 1 - (within - sum(a[lag] for a in acov) / n_chains) / var_plus

    pairs = [1.0 + rho(1)]
    lag, last_even = 0, None
    while lag < n_draws - 4:
        lag += 2
        even, odd = rho(lag), rho(lag + 1)
        if even + odd <= 0:
            last_even = max(even, 0.0)
            break
        pairs.append(even + odd)
    if last_even is None:  # ran to the end: the last pair's even lag counts once
        last_even = rho(lag) if lag > 0 else 0.0
        pairs = pairs[:-1] if lag > 0 else pairs
    for k in range(1, len(pairs)):
        pairs[k] = min(pairs[k], pairs[k - 1])
    tau = -1 + 2 * sum(pairs) + last_even
    tau = max(tau, 1 / math.log10(n_chains * n_draws))
    return n_chains * n_draws / tau


def normal_loss_value(mean: float, sd: float) -> float:
    """Raiffa–Schlaifer: s (φ(z) - z Φ(-z)), s = sd / √2, z = |mean| / s; from math only."""
    if sd == 0:
        return 0.0
    s = sd / math.sqrt(2)
    z = abs(mean) / s
    density = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    tail = 0.5 * math.erfc(z / math.sqrt(2))
    return s * (density - z * tail)


def reference_decision(loss_ship, p_positive, p_better, p_harm, t: DecisionThresholds):
    if (
        loss_ship < t.expected_loss_tolerance
        and p_positive > t.p_positive
        and p_better > t.p_better
    ):
        return "ship"
    if p_harm > t.harm:
        return "stop"
    if p_better < t.futility:
        return "stop"
    return "continue"


def segment_means_loop(array: np.ndarray, members: list[int]) -> np.ndarray:
    """(sample, arm) mean over members of a (visitor, chain, draw, arm) array."""
    _, n_chains, n_draws, n_arms = array.shape
    out = np.zeros((n_chains * n_draws, n_arms))
    for chain in range(n_chains):
        for draw in range(n_draws):
            for arm in range(n_arms):
                total = 0.0
                for v in members:
                    total += float(array[v, chain, draw, arm])
                out[chain * n_draws + draw, arm] = total / len(members)
    return out


def reference_recommend(dataset, segments, effect, ci, thresholds):
    metric = reference_metric(dataset)
    _, n_chains, n_draws, n_arms = metric.shape
    hurdle = dataset.attrs["pytyche_family"] == "hurdle"
    if hurdle:
        order = [d for d in ("visitor", "chain", "draw", "arm") if d in dataset.dims]
        conversion = dataset["conversion"].transpose(*order).values.astype(np.float64)
        if "chain" not in order:
            conversion = conversion[:, np.newaxis]
    observed = dataset.coords.to_dataset()
    names = NUMERIC + (CHANNELS if hurdle else ()) + ("decision",)
    out = {name: [] for name in names}
    for segment in segments:
        members = reference_members(segment.rule, observed)
        means = segment_means_loop(metric, members)
        rows = {name: [] for name in names}
        for arm in range(1, n_arms):
            lift = [means[s, arm] - means[s, 0] for s in range(len(means))]
            n = len(lift)
            row = {
                "control_mean": sum(means[:, 0]) / n,
                "treatment_mean": sum(means[:, arm]) / n,
                "lift": sum(lift) / n,
                "lift_lower": np.quantile(lift, (1 - ci) / 2),
                "lift_upper": np.quantile(lift, (1 + ci) / 2),
                "prob_positive": sum(1 for x in lift if x > 0) / n,
                "prob_better": sum(1 for x in lift if x > effect) / n,
                "prob_harm": sum(1 for x in lift if x < -effect) / n,
                "expected_loss_ship": sum(max(-x, 0.0) for x in lift) / n,
                "expected_loss_keep": sum(max(x, 0.0) for x in lift) / n,
            }
            if all(means[s, 0] > 0 for s in range(n)):
                relative = [means[s, arm] / means[s, 0] - 1 for s in range(n)]
                row["relative_lift"] = sum(relative) / n
                row["relative_lift_lower"] = np.quantile(relative, (1 - ci) / 2)
                row["relative_lift_upper"] = np.quantile(relative, (1 + ci) / 2)
            else:
                row.update(dict.fromkeys(NUMERIC[5:8], math.nan))
            sd = math.sqrt(sum((x - row["lift"]) ** 2 for x in lift) / (n - 1))
            row["value_of_next_round"] = normal_loss_value(row["lift"], sd)
            for name, event in zip(
                PROBABILITIES,
                (lambda x: x > 0, lambda x: x > effect, lambda x: x < -effect),
                strict=True,
            ):
                # Without a chain dim the draws are one chain, with its own autocorrelation.
                indicator = np.array([float(event(x)) for x in lift]).reshape(n_chains, n_draws)
                ess = naive_ess(indicator)
                p = row[name]
                row[f"{name}_mcse"] = math.sqrt(p * (1 - p) / ess)
            if hurdle:
                conv = segment_means_loop(conversion, members)
                value = means / conv  # mean value among converters, per sample and arm
                for channel, per_arm in (("conversion_lift", conv), ("value_lift", value)):
                    diff = [per_arm[s, arm] - per_arm[s, 0] for s in range(n)]
                    row[channel] = sum(diff) / n
                    row[f"{channel}_lower"] = np.quantile(diff, (1 - ci) / 2)
                    row[f"{channel}_upper"] = np.quantile(diff, (1 + ci) / 2)
            row["decision"] = reference_decision(
                row["expected_loss_ship"],
                row["prob_positive"],
                row["prob_better"],
                row["prob_harm"],
                thresholds,
            )
            for name in names:
                rows[name].append(row[name])
        for name in names:
            out[name].append(rows[name])
    return {name: np.array(values) for name, values in out.items()}


def assert_matches_reference(result, dataset, segments, effect, ci, thresholds):
    expected = reference_recommend(dataset, segments, effect, ci, thresholds)
    for name, values in expected.items():
        if name == "decision":
            assert result[name].values.tolist() == values.tolist()
        else:
            if result[name].dims == ("segment",):  # control_mean: the same for every treatment
                values = values[:, 0]
            np.testing.assert_allclose(
                result[name].values, values, rtol=1e-9, atol=1e-12, err_msg=name
            )


# -- agreement with the reference: numpy and dask, chain present and absent --------------------


@pytest.mark.parametrize("family", ["binary", "continuous", "hurdle"])
@pytest.mark.parametrize("n_chains", [None, 3])
def test_matches_the_naive_reference(family, n_chains):
    ds = random_dataset(family, n_visitors=40, n_draws=12, n_chains=n_chains, seed=5)
    thresholds = DecisionThresholds(p_positive=0.6, p_better=0.55, futility=0.3, harm=0.6)
    effect = {"binary": 0.01, "continuous": 0.1, "hurdle": 0.2}[family]
    result = recommend(
        pt.posterior(ds),
        OVERLAPPING_SEGMENTS,
        thresholds=thresholds,
        min_practical_effect=effect,
        ci=0.7,
    )
    assert isinstance(result, Recommendation) and isinstance(result, xr.Dataset)
    assert result["lift"].dims == ("segment", "treatment")
    assert result["members"].dims == ("segment",)
    assert result["segment"].values.tolist() == [s.id for s in OVERLAPPING_SEGMENTS]
    assert result["rule"].values.tolist() == [str(s.rule) for s in OVERLAPPING_SEGMENTS]
    assert result["treatment"].values.tolist() == ["T1", "T2"]
    assert ("conversion_lift" in result) == (family == "hurdle")
    assert_matches_reference(result, ds, OVERLAPPING_SEGMENTS, effect, 0.7, thresholds)


@pytest.mark.parametrize("n_chains", [None, 2])
@pytest.mark.parametrize("chunks", [{"visitor": 7}, {"visitor": 16, "draw": 5}])
def test_dask_is_lazy_one_compute_and_agrees(n_chains, chunks):
    ds = random_dataset("hurdle", n_visitors=48, n_draws=10, n_chains=n_chains, seed=3)
    eager = recommend(pt.posterior(ds), OVERLAPPING_SEGMENTS, min_practical_effect=0.3)
    with counting_scheduler(computes=0):
        lazy = recommend(
            pt.posterior(ds.chunk(chunks)), OVERLAPPING_SEGMENTS, min_practical_effect=0.3
        )
    assert all(lazy[name].chunks is not None for name in lazy.data_vars), [
        name for name in lazy.data_vars if lazy[name].chunks is None
    ]
    with counting_scheduler(computes=1):
        computed = lazy.compute()
    assert isinstance(computed, Recommendation)
    for name in eager.data_vars:
        if eager[name].dtype == object:
            assert computed[name].values.tolist() == eager[name].values.tolist(), name
        else:
            np.testing.assert_allclose(
                computed[name].values, eager[name].values, rtol=1e-10, err_msg=name
            )
    assert computed.attrs == eager.attrs
    assert_matches_reference(computed, ds, OVERLAPPING_SEGMENTS, 0.3, 0.8, DecisionThresholds())
    with counting_scheduler(computes=1):
        text = str(lazy)  # printing a lazy result computes it once
    assert "everyone" in text
    with counting_scheduler(computes=1):
        frame = lazy.to_dataframe()  # once, not once per variable
    assert len(frame) == lazy.sizes["segment"] * lazy.sizes["treatment"]


@settings(max_examples=25)
@given(st.data())
def test_dask_equals_numpy_for_drawn_posteriors_and_chunkings(data):
    ds, segments = data.draw(posteriors())
    chunks = data.draw(chunkings(ds))
    if data.draw(st.booleans()):  # the covariates too: lazy membership
        lazy = ds.chunk(chunks)
    else:
        lazy = ds.assign({name: ds[name].chunk(chunks) for name in ds.data_vars})
    effect = data.draw(st.sampled_from([0.0, 0.01, 0.3]))
    eager = recommend(pt.posterior(ds), segments, min_practical_effect=effect)
    with counting_scheduler(computes=0):
        built = recommend(pt.posterior(lazy), segments, min_practical_effect=effect)
    with counting_scheduler(computes=1):
        computed = built.compute()
    for name in eager.data_vars:
        if eager[name].dtype == object:
            assert computed[name].values.tolist() == eager[name].values.tolist(), name
        else:
            np.testing.assert_allclose(
                computed[name].values, eager[name].values, rtol=1e-9, atol=1e-12, err_msg=name
            )


def test_planted_example_lands_in_ship_and_stop_like_the_reference():
    result = pt.example_posterior(n_visitors=600, n_draws=40, seed=2)
    segments = [
        pt.DiscoveredSegment(0, "device == 'mobile'"),
        pt.DiscoveredSegment(1, "device == 'tablet'"),
    ]
    decisions = recommend(result, segments, min_practical_effect=0.05)
    assert_matches_reference(decisions, result.dataset, segments, 0.05, 0.8, DecisionThresholds())
    assert decisions["decision"].sel(segment=0, treatment="A").item() == "ship"
    assert decisions["decision"].sel(segment=1).values.tolist() == ["stop", "stop"]


def test_agrees_with_segment_summary():
    result = pt.posterior(random_dataset("continuous", n_visitors=50, n_draws=30, seed=8))
    decisions = recommend(result, OVERLAPPING_SEGMENTS, ci=0.9)
    summary = pt.segment_summary(result, OVERLAPPING_SEGMENTS, ci=0.9).isel(arm=slice(1, None))
    for mine, theirs in [
        ("lift", "contrast"),
        ("lift_lower", "contrast_lower"),
        ("lift_upper", "contrast_upper"),
        ("prob_positive", "prob_positive"),
    ]:
        np.testing.assert_allclose(decisions[mine].values, summary[theirs].values, rtol=1e-12)
    np.testing.assert_array_equal(decisions["members"].values, summary["members"].values)


# -- the decision rule: each branch, and exactly on each threshold ------------------------------


def lift_posterior(lifts: dict[str, list[float]], control: float = 1.0) -> pt.ContinuousBCFResult:
    """A continuous posterior whose every visitor has lift ``lifts[treatment][draw]``."""
    names = list(lifts)
    n_draws = len(lifts[names[0]])
    n_visitors = 4
    expected = np.full((n_visitors, n_draws, 1 + len(names)), control)
    for k, name in enumerate(names, start=1):
        expected[:, :, k] = control + np.asarray(lifts[name])
    arms = ["control", *names]
    ds = xr.Dataset(
        {"expected": (("visitor", "draw", "arm"), expected)},
        coords={
            "arm": arms,
            "variant": ("visitor", ["control", "control", *[names[-1]] * (n_visitors - 2)]),
        },
    )
    return pt.ContinuousBCFResult(ds)


def decide(lifts, **kwargs):
    result = recommend(lift_posterior(lifts), **kwargs).isel(segment=0)
    return {
        str(t): (
            str(result["decision"].sel(treatment=t).item()),
            str(result["reason"].sel(treatment=t).item()),
        )
        for t in result["treatment"].values
    }


def test_each_branch_of_the_rule():
    lifts = {
        "win": [0.5] * 20,
        "harm": [-0.5] * 20,  # harm is checked before futility (P(better) is 0 too)
        "futile": [0.0] * 20,
        "open": [0.5] * 10 + [-0.5] * 10,
    }
    assert decide(lifts) == {
        "win": ("ship", "win"),
        "harm": ("stop", "harm"),
        "futile": ("stop", "futility"),
        "open": ("continue", "undecided"),
    }


def test_ship_needs_all_three_conditions():
    # P(>0) = P(better) = 0.95; expected loss of shipping 0.001 / 20 = 5e-5.
    lifts = {"T": [0.5] * 19 + [-0.001]}
    assert decide(lifts)["T"] == ("continue", "undecided")  # P(>0) not above 0.95
    bars = {"p_positive": 0.9, "p_better": 0.9}
    assert decide(lifts, thresholds=DecisionThresholds(**bars))["T"] == ("ship", "win")
    for failing in (
        {"p_positive": 0.96},
        {"p_better": 0.96},
        {"expected_loss_tolerance": 1e-5},
    ):
        thresholds = DecisionThresholds(**{**bars, **failing})
        assert decide(lifts, thresholds=thresholds)["T"] == ("continue", "undecided"), failing


def nudge_down(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def nudge_up(x: float) -> float:
    return float(np.nextafter(x, np.inf))


def test_exactly_on_each_threshold_does_not_cross_it():
    # P(>0) = P(>effect) = 19/20 = 0.95 exactly; expected loss of shipping 0.001 / 20.
    almost = {"T": [0.5] * 19 + [-0.001]}
    observed = recommend(lift_posterior(almost))
    loss = float(observed["expected_loss_ship"].item())
    assert loss == pytest.approx(0.001 / 20, rel=1e-12)
    assert float(observed["prob_positive"].item()) == 0.95
    easy = {"p_better": 0.5}
    on = DecisionThresholds(p_positive=0.95, **easy)
    assert decide(almost, thresholds=on)["T"][0] == "continue"
    assert (
        decide(almost, thresholds=DecisionThresholds(p_positive=nudge_down(0.95), **easy))["T"][0]
        == "ship"
    )
    # p_better exactly 0.95.
    easy = {"p_positive": 0.5}
    assert decide(almost, thresholds=DecisionThresholds(p_better=0.95, **easy))["T"][0] == (
        "continue"
    )
    assert (
        decide(almost, thresholds=DecisionThresholds(p_better=nudge_down(0.95), **easy))["T"][0]
        == "ship"
    )
    # Expected loss exactly the tolerance.
    easy = {"p_positive": 0.5, "p_better": 0.5}
    at = DecisionThresholds(expected_loss_tolerance=loss, **easy)
    above = DecisionThresholds(expected_loss_tolerance=nudge_up(loss), **easy)
    assert decide(almost, thresholds=at)["T"][0] == "continue"
    assert decide(almost, thresholds=above)["T"][0] == "ship"
    # P(harm) = 18/20 = 0.9 exactly (P(better) = 0.1, above futility).
    harmful = {"T": [-0.5] * 18 + [0.5] * 2}
    assert decide(harmful)["T"] == ("continue", "undecided")
    assert decide(harmful, thresholds=DecisionThresholds(harm=nudge_down(0.9)))["T"] == (
        "stop",
        "harm",
    )
    # P(better) = 1/20 = 0.05 exactly, no harm.
    futile = {"T": [0.5] + [0.0] * 19}
    assert decide(futile)["T"] == ("continue", "undecided")
    assert decide(futile, thresholds=DecisionThresholds(futility=nudge_up(0.05)))["T"] == (
        "stop",
        "futility",
    )


def test_min_practical_effect_is_strict_and_symmetric():
    lifts = {"T": [0.25] * 10 + [-0.25] * 10}
    result = recommend(lift_posterior(lifts, control=0.0), min_practical_effect=0.25)
    # Lifts of exactly ±0.25 are neither better nor harmful at min_practical_effect=0.25.
    assert float(result["prob_better"].item()) == 0.0
    assert float(result["prob_harm"].item()) == 0.0
    assert float(result["prob_positive"].item()) == 0.5
    wider = recommend(lift_posterior(lifts, control=0.0), min_practical_effect=0.125)
    assert float(wider["prob_better"].item()) == 0.5
    assert float(wider["prob_harm"].item()) == 0.5


# -- the value of one more round ----------------------------------------------------------------


def test_value_of_next_round_matches_the_closed_form():
    rng = np.random.default_rng(4)
    lifts = {"near": list(rng.normal(0.01, 0.05, 200)), "far": list(rng.normal(0.3, 0.05, 200))}
    result = recommend(lift_posterior(lifts)).isel(segment=0)
    for name, values in lifts.items():
        mean = float(np.mean(values))
        sd = float(np.std(values, ddof=1))
        expected = normal_loss_value(mean, sd)
        got = float(result["value_of_next_round"].sel(treatment=name).item())
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
    near = float(result["value_of_next_round"].sel(treatment="near").item())
    far = float(result["value_of_next_round"].sel(treatment="far").item())
    assert near > 0.005 > 1e-6 > far  # waiting is worth something only when it may flip


def test_value_of_next_round_at_zero_mean_is_s_times_phi_of_zero():
    result = recommend(lift_posterior({"T": [0.1, -0.1] * 10})).isel(segment=0)
    sd = float(np.std([0.1, -0.1] * 10, ddof=1))
    expected = sd / math.sqrt(2) / math.sqrt(2 * math.pi)
    assert float(result["value_of_next_round"].item()) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lift", [0.0, 0.25, -0.5])
def test_value_of_next_round_is_zero_for_a_degenerate_posterior(lift):
    result = recommend(lift_posterior({"T": [lift] * 15}))
    assert float(result["value_of_next_round"].item()) == 0.0
    assert float(result["lift_lower"].item()) == float(result["lift_upper"].item()) == lift


def test_single_sample_posterior_has_zero_value_of_next_round_and_no_warning():
    result = recommend(lift_posterior({"T": [0.3]}))
    assert float(result["value_of_next_round"].item()) == 0.0
    assert result["decision"].item() == "ship"


# -- hurdle channels ----------------------------------------------------------------------------


def test_hurdle_channels_against_direct_computation():
    n_visitors, n_draws = 30, 25
    rng = np.random.default_rng(11)
    conversion = rng.uniform(0.05, 0.3, size=(n_visitors, n_draws, 2))
    value = rng.gamma(3.0, 10.0, size=(n_visitors, n_draws, 2))
    ds = xr.Dataset(
        {
            "conversion": (("visitor", "draw", "arm"), conversion),
            "value": (("visitor", "draw", "arm"), value),
        },
        coords={
            "arm": ["control", "A"],
            "variant": ("visitor", ["control"] * 15 + ["A"] * 15),
            "x": ("visitor", np.arange(n_visitors) % 3),
        },
    )
    result = recommend(pt.HurdleBCFResult(ds), {0: "x == 1", 1: "everyone"}, ci=0.5)
    for index, members in enumerate([np.arange(n_visitors) % 3 == 1, np.ones(30, bool)]):
        conv = conversion[members].mean(axis=0)  # (draw, arm)
        revenue = (conversion * value)[members].mean(axis=0)
        basket = revenue / conv
        for name, per_arm in (
            ("lift", revenue),
            ("conversion_lift", conv),
            ("value_lift", basket),
        ):
            diff = per_arm[:, 1] - per_arm[:, 0]
            cell = result.isel(segment=index, treatment=0)
            np.testing.assert_allclose(float(cell[name]), diff.mean(), rtol=1e-10)
            np.testing.assert_allclose(
                [float(cell[f"{name}_lower"]), float(cell[f"{name}_upper"])],
                np.quantile(diff, [0.25, 0.75]),
                rtol=1e-10,
            )


def test_hurdle_channels_separate_more_buyers_from_bigger_baskets():
    n_visitors, n_draws = 8, 6
    conversion = np.full((n_visitors, n_draws, 3), 0.1)
    value = np.full((n_visitors, n_draws, 3), 50.0)
    conversion[..., 1] = 0.2  # A: twice the buyers, same basket
    value[..., 2] = 100.0  # B: same buyers, twice the basket
    ds = xr.Dataset(
        {
            "conversion": (("visitor", "draw", "arm"), conversion),
            "value": (("visitor", "draw", "arm"), value),
        },
        coords={"arm": ["control", "A", "B"], "variant": ("visitor", ["control"] * 8)},
    )
    result = recommend(pt.HurdleBCFResult(ds)).isel(segment=0)
    np.testing.assert_allclose(result["lift"].values, [5.0, 5.0])
    np.testing.assert_allclose(result["conversion_lift"].values, [0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(result["value_lift"].values, [0.0, 50.0], atol=1e-9)
    np.testing.assert_allclose(result["relative_lift"].values, [1.0, 1.0])


# -- relative lift where control's mean can be 0 ------------------------------------------------


def test_relative_lift_is_nan_with_a_reason_where_control_mean_can_be_zero():
    n_draws = 10
    conversion = np.full((4, n_draws, 2), 0.2)
    conversion[:2, 3, 0] = 0.0  # control converts no one among visitors 0, 1 in draw 3
    ds = xr.Dataset(
        {"conversion": (("visitor", "draw", "arm"), conversion)},
        coords={
            "arm": ["control", "A"],
            "variant": ("visitor", ["control", "control", "A", "A"]),
            "group": ("visitor", ["a", "a", "b", "b"]),
        },
    )
    result = recommend(pt.BinaryBCFResult(ds), {0: "group == 'a'", 1: "group == 'b'"})
    zero, fine = result.isel(segment=0, treatment=0), result.isel(segment=1, treatment=0)
    for name in ("relative_lift", "relative_lift_lower", "relative_lift_upper"):
        assert np.isnan(float(zero[name])), name
        assert float(fine[name]) == 0.0, name
    assert "control's segment mean is <= 0" in str(zero["note"].item())
    assert fine["note"].item() == ""
    assert np.isfinite(float(zero["lift"]))  # the absolute lift is still defined
    assert "n/a" in str(result)


def test_relative_lift_is_nan_for_a_negative_control_mean():
    result = recommend(lift_posterior({"T": [0.5] * 5}, control=-1.0), min_practical_effect=0.02)
    assert np.isnan(float(result["relative_lift"].item()))
    assert float(result["lift"].item()) == 0.5


# -- the default minimum practical effect: 2% of control's mean over all visitors -----------------


def test_default_effect_is_two_percent_of_controls_mean_over_all_visitors():
    # Control's metric is 10 for every visitor; a lift of 0.15 is below 2% of it (0.2).
    result = recommend(lift_posterior({"T": [0.15] * 5}, control=10.0))
    assert result.attrs["min_practical_effect"] == pytest.approx(0.2)
    basis = "2% of control's posterior mean metric over all visitors (10)"
    assert result.attrs["min_practical_effect_basis"] == basis
    assert float(result["prob_better"].item()) == 0.0
    assert f"min practical effect 0.2, {basis}" in str(result)
    given = recommend(lift_posterior({"T": [0.15] * 5}, control=10.0), min_practical_effect=0.02)
    assert given.attrs["min_practical_effect"] == 0.02
    assert given.attrs["min_practical_effect_basis"] == "given"
    assert float(given["prob_better"].item()) == 1.0


def test_default_effect_reads_every_visitor_not_only_the_segments():
    ds = lift_posterior({"T": [0.0] * 3}).dataset
    ds["expected"][:, :, 0] = np.array([1.0, 2.0, 3.0, 6.0])[:, None]  # control's mean: 3
    ds = ds.assign_coords(device=("visitor", ["a", "a", "b", "b"]))
    result = recommend(pt.ContinuousBCFResult(ds), {5: "device == 'a'"})
    assert result.attrs["min_practical_effect"] == pytest.approx(0.06)
    assert result["segment"].values.tolist() == [5] and result["members"].item() == 2
    assert float(result["control_mean"].item()) == pytest.approx(1.5)
    lazy = recommend(pt.ContinuousBCFResult(ds.chunk(visitor=2)), {5: "device == 'a'"})
    assert lazy.attrs == result.attrs
    assert lazy.compute()["decision"].values.tolist() == result["decision"].values.tolist()


@pytest.mark.parametrize("control", [0.0, -1.0])
def test_default_effect_is_refused_when_controls_mean_is_not_positive(control):
    with pytest.raises(ValueError, match=r"which is -?[01]: .*pass min_practical_effect="):
        recommend(lift_posterior({"T": [0.5] * 5}, control=control))


# -- Monte Carlo standard errors ------------------------------------------------------------------


def test_ess_kernel_matches_the_direct_sums():
    rng = np.random.default_rng(2)
    for shape in [(3, 40), (1, 25), (4, 9)]:
        x = rng.normal(size=shape)
        x = np.cumsum(x, axis=1) * 0.3 + rng.normal(size=shape)  # autocorrelated
        assert float(effective_sample_size(x)) == pytest.approx(naive_ess(x), rel=1e-9)
        indicator = x > 0
        assert float(effective_sample_size(indicator)) == pytest.approx(
            naive_ess(indicator.astype(float)), rel=1e-9
        )


def test_ess_of_independent_and_sticky_chains():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(4, 2000))
    assert 7000 < float(effective_sample_size(independent)) < 9000
    sticky = np.repeat(rng.normal(size=(4, 200)), 10, axis=1)
    assert float(effective_sample_size(sticky)) < 0.25 * 8000
    assert float(effective_sample_size(np.ones((2, 30)))) == 60.0
    assert np.isnan(effective_sample_size(np.array([[1.0, np.nan, 2.0, 3.0, 4.0]])))
    assert effective_sample_size(rng.normal(size=(5, 2, 3, 50))).shape == (5, 2)


def test_mcse_without_chains_is_the_one_chains_own():
    mixed = recommend(lift_posterior({"T": [0.5, -0.5] * 20}), min_practical_effect=0.02)
    runs = recommend(lift_posterior({"T": [0.5] * 20 + [-0.5] * 20}), min_practical_effect=0.02)
    # Alternating draws carry at least the binomial information; one long run of each far less.
    binomial = math.sqrt(0.5 * 0.5 / 40)
    assert float(mixed["prob_positive_mcse"].item()) <= binomial
    assert float(runs["prob_positive_mcse"].item()) > 2 * binomial


def test_mcse_grows_when_chains_are_sticky():
    n_chains, n_draws = 2, 60
    independent = np.where(np.arange(n_draws) % 2 == 0, 0.5, -0.5)
    sticky = np.where(np.arange(n_draws) < n_draws // 2, 0.5, -0.5)
    expected = np.ones((4, n_chains, n_draws, 3))
    expected[..., 1] += independent
    expected[..., 2] += sticky
    ds = xr.Dataset(
        {"expected": (("visitor", "chain", "draw", "arm"), expected)},
        coords={"arm": ["control", "alt", "run"], "variant": ("visitor", ["control"] * 4)},
    )
    result = recommend(pt.ContinuousBCFResult(ds)).isel(segment=0)
    assert result["prob_positive"].values.tolist() == [0.5, 0.5]
    mcse = result["prob_positive_mcse"].values
    assert mcse[1] > 3 * mcse[0]


# -- inputs, segments, empty segments and the table ---------------------------------------------


def test_default_segment_is_everyone():
    result = pt.posterior(random_dataset("binary", n_visitors=30, n_draws=8, seed=2))
    default = recommend(result)
    explicit = recommend(result, {0: "everyone"})
    assert default["segment"].values.tolist() == [0]
    assert default["rule"].values.tolist() == ["everyone"]
    xr.testing.assert_identical(default, explicit)


def test_empty_segment_is_na_without_warnings():
    result = pt.posterior(random_dataset("hurdle", n_visitors=30, n_draws=8, seed=2))
    decisions = recommend(result, {0: "age > 1000", 1: "everyone"})
    assert decisions["members"].values.tolist() == [0, 30]
    assert decisions["decision"].values[0].tolist() == ["n/a", "n/a"]
    assert "no members" in decisions["note"].values[0, 0]
    for name in NUMERIC + CHANNELS:
        assert np.isnan(decisions[name].values[0]).all(), name
        assert np.isfinite(decisions[name].values[1]).all(), name
    assert "n/a" in str(decisions)


def test_table_and_dataframe_have_one_row_per_segment_and_treatment():
    result = pt.example_posterior(n_visitors=900, n_draws=50, seed=3)
    decisions = recommend(result, {0: "device == 'mobile'", 1: "device == 'tablet'"})
    frame = decisions.to_dataframe()
    assert list(frame.index.names) == ["segment", "treatment"]
    assert len(frame) == 4
    assert {"decision", "lift", "prob_better", "value_of_next_round", "rule"} <= set(frame)
    table = decisions.table()
    assert len(table) == 4
    assert table["decision"].tolist()[2:] == ["stop (harm)", "stop (harm)"]
    text = str(decisions)
    assert text.splitlines()[0].startswith("Decisions per segment and treatment")
    assert len(text.splitlines()) == 3 + 4
    assert "device == 'tablet'" in text and "conversion lift" in text
    assert repr(decisions).startswith("<xarray.Recommendation>")
    one = decisions.sel(segment=1, treatment="B")  # a selection prints as a one-row table
    assert len(one.table()) == 1 and "stop (harm)" in str(one)
    assert len(decisions.sel(segment=0).table()) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"expected_loss_tolerance": 0.0}, ValueError, "expected_loss_tolerance must be"),
        ({"expected_loss_tolerance": -1}, ValueError, "expected_loss_tolerance must be"),
        ({"expected_loss_tolerance": math.inf}, ValueError, "expected_loss_tolerance"),
        ({"expected_loss_tolerance": "0.1"}, TypeError, "expected_loss_tolerance"),
        ({"p_positive": 1.0}, ValueError, r"p_positive must be in \(0, 1\), got 1.0"),
        ({"p_better": 0.0}, ValueError, "p_better must be in"),
        ({"futility": math.nan}, ValueError, "futility must be in"),
        ({"harm": 1.5}, ValueError, "harm must be in"),
        ({"harm": True}, TypeError, "harm must be a real number"),
    ],
)
def test_thresholds_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        DecisionThresholds(**kwargs)


def test_threshold_defaults_are_pytyche_0_2_1s():
    assert DecisionThresholds().as_dict() == {
        "expected_loss_tolerance": 0.01,
        "p_positive": 0.95,
        "p_better": 0.80,
        "futility": 0.05,
        "harm": 0.90,
    }


def test_arguments_are_checked():
    result = pt.posterior(random_dataset("binary", n_visitors=20, n_draws=5))
    with pytest.raises(TypeError, match=r"thresholds must be a pytyche\.DecisionThresholds"):
        recommend(result, thresholds={"harm": 0.5})
    with pytest.raises(ValueError, match="min_practical_effect must be a finite number >= 0"):
        recommend(result, min_practical_effect=-0.1)
    with pytest.raises(TypeError, match="min_practical_effect must be a real number"):
        recommend(result, min_practical_effect="0.1")
    with pytest.raises(ValueError, match="ci must be in"):
        recommend(result, ci=1.0)
    with pytest.raises(TypeError, match="posterior must be"):
        recommend(random_dataset())
    with pytest.raises(ValueError, match="no observed data"):
        recommend(pt.posterior(random_dataset(observed=False)))


# -- the Decisions page: its code runs and prints what the page shows ---------------------------


def test_decisions_page_prints_what_it_shows():
    import contextlib
    import io
    import re
    import types
    from pathlib import Path

    from pytyche.setup_check import check_setup

    page = (Path(__file__).parent.parent / "docs" / "decisions.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", page, flags=re.DOTALL)
    # pt as the page uses it (the names are also exported from pytyche itself).
    public = {name: getattr(pt, name) for name in dir(pt) if not name.startswith("_")}
    shim = types.SimpleNamespace(
        **{
            **public,
            "recommend": recommend,
            "DecisionThresholds": DecisionThresholds,
            "check_setup": check_setup,
        }
    )
    namespace: dict = {}
    checked = 0
    for index, (language, code) in enumerate(blocks):
        if language != "python":
            continue
        code = code.replace("import pytyche as pt\n", "")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(
                compile(code, f"decisions.md block {index}", "exec"),
                {"pt": shim, **namespace},
                namespace,
            )
        printed = out.getvalue()
        if printed:
            shown = blocks[index + 1][1]
            assert [line.rstrip() for line in printed.strip("\n").splitlines()] == [
                line.rstrip() for line in shown.strip("\n").splitlines()
            ], f"decisions.md block {index}"
            checked += 1
    assert checked == 4


def test_exports_and_accessor():
    assert pt.recommend is recommend and pt.check_setup is pt.setup_check.check_setup
    ds = random_dataset("hurdle", n_visitors=30, n_draws=8)
    xr.testing.assert_identical(
        ds.tyche.recommend({0: "everyone"}, ci=0.9),
        recommend(pt.posterior(ds), {0: "everyone"}, ci=0.9),
    )


# -- one ship per segment -------------------------------------------------------------------------


def two_winners_posterior(chunks=None) -> pt.BinaryBCFResult:
    """A and B both meet the ship rule in every device segment, with different losses.

    Mobile: B dips below control in one draw of 40 (A's loss is lower); desktop: A does (B's
    is lower); tablet: neither does (equal losses, 0).
    """
    device = np.array(["mobile", "desktop", "tablet"] * 4, dtype=object)
    variant = np.repeat(np.array(["control", "A", "B"], dtype=object), 4)
    observed = xr.Dataset(
        coords={
            "variant": ("visitor", variant),
            "outcome": ("visitor", np.zeros(12)),
            "device": ("visitor", device),
        },
        attrs={"pytyche_arms": ["control", "A", "B"]},
    )
    conversion = np.empty((12, 40, 3))
    conversion[...] = [0.1, 0.2, 0.2]
    conversion[device == "mobile", 0, 2] = 0.09
    conversion[device == "desktop", 0, 1] = 0.09
    arms = ["control", "A", "B"]
    return pt.from_arrays("binary", arms, observed, chunks=chunks, conversion=conversion)


def test_only_the_treatment_with_the_least_expected_loss_ships_in_a_segment():
    segments = {0: "device == 'mobile'", 1: "device == 'desktop'", 2: "device == 'tablet'"}
    result = recommend(two_winners_posterior(), segments, min_practical_effect=0.02)
    assert (result["prob_positive"] > 0.95).all() and (result["prob_better"] > 0.8).all()
    assert (result["expected_loss_ship"] < 0.01).all()  # both meet the ship rule everywhere
    assert result["decision"].values.tolist() == [
        ["ship", "continue"],
        ["continue", "ship"],
        ["ship", "continue"],  # a tie: the earlier arm ships
    ]
    assert result["reason"].values.tolist() == [
        ["win", "outranked"],
        ["outranked", "win"],
        ["win", "outranked"],
    ]
    assert result["note"].values.tolist() == [
        [
            "ship: lower expected loss of shipping than B",
            "continue: A ships in this segment (lower expected loss of shipping)",
        ],
        [
            "continue: B ships in this segment (lower expected loss of shipping)",
            "ship: lower expected loss of shipping than A",
        ],
        [
            "ship: lower expected loss of shipping than B",
            "continue: A ships in this segment (lower expected loss of shipping)",
        ],
    ]
    assert result.table()["decision"].tolist()[:2] == ["ship", "continue (outranked)"]
    lazy = recommend(two_winners_posterior(chunks=5), segments, min_practical_effect=0.02)
    assert lazy["decision"].chunks is not None and lazy["note"].chunks is not None
    xr.testing.assert_identical(lazy.compute(), result)
