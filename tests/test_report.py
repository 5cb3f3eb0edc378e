"""``ranker report``'s figures: gap closed from expected CTR with a bootstrap interval."""

from __future__ import annotations

import math

import numpy as np

from ranker.ops.report import gap_closed

# --- Gap closed ---------------------------------------------------------------------------------


def expected_clicks(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Expected clicks per request of base, a policy and the oracle: noisy, the policy halfway."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(4.0, 0.05, n)
    oracle = base + rng.gamma(2.0, 0.05, n)
    policy = base + 0.5 * (oracle - base) + rng.normal(0, 0.05, n)
    return {"base": base, "policy": policy, "oracle": oracle}


def test_gap_closed_is_a_ratio_of_sums_over_requests():
    # base 0.1 + 0.3 = 0.4, oracle 0.5 + 0.7 = 1.2, policy 0.3 + 0.3 = 0.6: (0.6 - 0.4) / (1.2 - 0.4) = 0.25
    out = gap_closed({"base": np.array([0.1, 0.3]), "policy": np.array([0.3, 0.3]),
                      "oracle": np.array([0.5, 0.7])}, resamples=50)
    assert math.isclose(out["policy"][0], 0.25)


def test_a_policy_equal_to_base_closes_nothing_and_one_equal_to_the_oracle_closes_all():
    e = expected_clicks(300)
    out = gap_closed({**e, "same as base": e["base"].copy(), "same as oracle": e["oracle"].copy()})
    assert out["base"] == out["same as base"] == (0.0, (0.0, 0.0))
    assert out["oracle"] == out["same as oracle"] == (1.0, (1.0, 1.0))


def test_gap_closed_and_its_interval_are_fixed_by_the_seed_and_contain_the_estimate():
    e = expected_clicks(500)
    first, again, other = gap_closed(e, seed=3), gap_closed(e, seed=3), gap_closed(e, seed=4)
    assert first == again
    point, (low, high) = first["policy"]
    assert other["policy"][0] == point  # the estimate is the sample's; only the interval is resampled
    assert other["policy"][1] != (low, high)
    assert low < point < high
    assert 0.3 < point < 0.7  # the policy sits halfway by construction


def test_the_interval_narrows_with_more_requests():
    width = {}
    for n in (200, 3200):
        _, (low, high) = gap_closed(expected_clicks(n, seed=n))["policy"]
        width[n] = high - low
    # The standard error falls as 1/sqrt(n): 16 times the requests, about a quarter of the width.
    assert width[3200] < width[200] / 2


def test_gap_closed_is_undefined_when_the_oracle_does_not_beat_base():
    flat = np.full(20, 0.2)
    point, (low, high) = gap_closed({"base": flat, "policy": flat * 1.1, "oracle": flat})["policy"]
    assert math.isnan(point) and math.isnan(low) and math.isnan(high)
