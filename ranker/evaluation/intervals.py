"""Bootstrap intervals of means and of paired differences, over users or lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap interval (``low``, ``high``) at :data:`CI_LEVEL`."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.value:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def mean_interval(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                  level: float = CI_LEVEL) -> Interval:
    """The mean of ``values`` (NaN ignored) and its percentile bootstrap interval over them.

    For a paired difference pass the per-user differences: resampling users resamples both
    orders together. Constant values give a zero-width interval; fewer than two values an
    interval of NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        mean = float(x.mean()) if len(x) else float("nan")
        return Interval(mean, float("nan"), float("nan"))
    if np.ptp(x) == 0:
        return Interval(float(x[0]), float(x[0]), float(x[0]))
    res = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))
    return Interval(float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high))


__all__ = ["BOOTSTRAP_RESAMPLES", "CI_LEVEL", "Interval", "mean_interval"]
