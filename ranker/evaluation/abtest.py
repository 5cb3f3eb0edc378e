"""A/B analysis of a ratio metric (CTR) with users as the randomisation unit.

CTR = Σ clicks / Σ impressions is a ratio of per-user sums, and impressions of one
user are not independent, so the variance comes from the per-user delta method
(Deng et al., "Applying the Delta Method in Metric Analytics", 2018):

    Var(X̄/Ȳ) ≈ (1/n) · [σ²_X − 2 r σ_XY + r² σ²_Y] / μ_Y²,   r = μ_X / μ_Y

where X is a user's clicks, Y their impressions and n the number of users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

Z95 = stats.norm.ppf(0.975)


@dataclass
class ArmStats:
    """One arm of a ratio metric: for CTR the numerator is clicks and the denominator
    impressions; for a list-level metric (diversity, age) they are Σ metric and lists."""

    users: int
    denominator: float
    numerator: float
    rate: float  # Σ numerator / Σ denominator
    var: float  # delta-method variance of ``rate``


@dataclass
class ABResult:
    control: ArmStats | None
    treatment: ArmStats | None
    enough_data: bool
    lift: float | None = None  # relative: t / c - 1
    ci_low: float | None = None  # 95% CI of the relative lift
    ci_high: float | None = None
    p_value: float | None = None
    users_needed_per_arm: int | None = None  # to detect ``mde`` with 80% power
    mde: float = 0.05
    verdict: str = ""
    experiment: str | None = None  # the experiment whose window was analysed
    excluded_users: int = 0  # users served in both arms (left out)


def arm_stats(clicks: np.ndarray, impressions: np.ndarray) -> ArmStats | None:
    """Per-user sums → ratio and its delta-method variance; None without impressions."""
    x = np.asarray(clicks, dtype=np.float64)
    y = np.asarray(impressions, dtype=np.float64)
    n = len(y)
    if n == 0 or y.sum() == 0:
        return None
    mx, my = x.mean(), y.mean()
    r = mx / my
    if n > 1:
        cov = np.cov(x, y, ddof=1)
        var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * my * my)
    else:
        var = float("nan")
    return ArmStats(n, float(y.sum()), float(x.sum()), float(r), float(max(var, 0.0)))


def users_needed(control: ArmStats, treatment: ArmStats, mde: float, power: float = 0.80,
                 alpha: float = 0.05) -> int | None:
    """Users per arm for this test to detect a relative lift of ``mde`` with ``power``.

    Under the alternative t = c(1 + mde), the lift's delta-method variance with n users
    per arm is (σ²_t + (1 + mde)² σ²_c) / (n c²), σ² being the per-user variances of the
    arms' rates; the test detects the lift with ``power`` when
    mde ≥ (z_{1-α/2} + z_power) · its standard error. ``tests/test_abtest_power.py``
    checks this by simulating the test.
    """
    c = control.rate
    if c <= 0:
        return None
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    per_user_var = treatment.var * treatment.users + (1 + mde) ** 2 * control.var * control.users
    return math.ceil(z**2 * per_user_var / (mde * c) ** 2)


def analyse(control: ArmStats | None, treatment: ArmStats | None, mde: float = 0.05,
            min_users: int = 2, metric: str = "CTR") -> ABResult:
    """Relative lift of treatment over control with a 95% CI, p-value and a verdict."""
    if control is None or treatment is None or min(control.users, treatment.users) < min_users:
        missing = "control" if control is None or control.users < min_users else "treatment"
        return ABResult(control, treatment, False, mde=mde,
                        verdict=f"Not enough data: the {missing} arm has too few users with impressions. "
                                "Serve more traffic (e.g. run simulated traffic) and check again.")
    if control.rate == 0:
        return ABResult(control, treatment, False, mde=mde,
                        verdict=f"Not enough data: control's {metric} is 0 so far, so no relative lift exists "
                                "yet. Serve more traffic and check again.")
    c, t = control.rate, treatment.rate
    lift = t / c - 1.0
    # delta method for the ratio t/c of two independent estimates
    var_lift = treatment.var / c**2 + t**2 * control.var / c**4
    se_lift = math.sqrt(var_lift)
    # The p-value and the CI come from the same statistic, so they never disagree.
    z = lift / se_lift if se_lift > 0 else 0.0
    p = float(2 * stats.norm.sf(abs(z)))
    lo, hi = lift - Z95 * se_lift, lift + Z95 * se_lift
    needed = users_needed(control, treatment, mde)
    significant = p < 0.05
    direction = "higher" if lift > 0 else "lower"
    if significant:
        verdict = (f"The ranker's {metric} is {abs(lift):.1%} {direction} than the base order "
                   f"(95% CI {lo:+.1%} to {hi:+.1%}, p = {p:.3g}): a significant difference.")
    else:
        verdict = (f"No significant difference yet: {metric} lift {lift:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}, "
                   f"p = {p:.2g}). About {needed:,} users per arm are needed to detect a {mde:.0%} lift.")
    return ABResult(control, treatment, True, lift, lo, hi, p, needed, mde, verdict)
