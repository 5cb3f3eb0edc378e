"""Train/serve parity: does each feature look the same in the training data as at serving?

For every registered feature, the training CSV's column is compared with the values serving
logged with its impressions (``impressions.features``, the features as served) over the same
period. Two measures:

PSI, the population stability index, over ``bins`` quantile bins of the training sample::

    PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)

where ``e_i`` and ``a_i`` are the shares of the training (expected) and serving (actual)
values in bin ``i``, each floored at ``EPSILON`` so an empty bin costs a large but finite
amount. It is 0 for identical distributions and grows with the shift; the usual reading,
used for the verdict, is < 0.1 ``ok``, 0.1–0.2 ``watch``, > 0.2 ``skewed``.

With no shift at all, PSI is still noise: about (1/n_train + 1/n_serving) times a χ² with
bins − 1 degrees of freedom, so its mean is about 9 · (1/n_train + 1/n_serving) and its 99th
percentile 21.7 · (1/n_train + 1/n_serving), 0.22 with 200 values on each side. A feature with
fewer than ``MIN_SAMPLE`` values on either side gets the verdict ``too few`` instead.

KS, the two-sample Kolmogorov–Smirnov statistic (the largest gap between the two empirical
CDFs, in [0, 1]) and its p-value, from :func:`scipy.stats.ks_2samp`. With tens of thousands
of values even a negligible shift is "significant", so the verdict reads PSI only.

The default period is the training data's own time span (its ``event_time`` column), else the
window the last ``ranker dataset`` recorded, else every impression: the first of these in which
serving logged enough impressions to compare. The report says which.

Only lists serving computed features for count: the A/B arms' lists (``config.ARMS``), without
trending lists (``model_version`` ``trending``, never scored) and without lists logged by other
means (the demo world's ``legacy`` history, which has no features).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import Engine, func, select

from ranker import config, keys
from ranker.data.db import get_setting, session_scope
from ranker.data.schema import Impression
from ranker.rank.features import REGISTRY
from ranker.rank.train import load_dataset

PSI_BINS = 10  # quantile bins of the training sample
EPSILON = 1e-4  # the floor of a bin's share, so an empty bin gives a finite PSI
PSI_WATCH = 0.1  # PSI at or above this: "watch"
PSI_SKEWED = 0.2  # PSI above this: "skewed", and the promotion gate refuses
MIN_SAMPLE = 200  # fewer values on either side: verdict "too few" (noise alone can pass 0.2)
SAMPLE_LIMIT = 50_000  # at most this many impressions are read, evenly spread over the period
#: ``ranker dataset`` writes features with 6 decimals; serving's values are rounded the same way,
#: so a value such as diversity 2/3 falls in the same bin on both sides.
DECIMALS = 6
#: The training CSV's column with when each row's list was shown (see ``ranker.rank.dataset.header``).
EVENT_TIME = "event_time"
#: The model version serving logs with trending lists (never reranked, so never scored).
TRENDING_VERSION = "trending"

VERDICTS = ("ok", "watch", "skewed", "too few")


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``actual`` against ``expected`` (1-D samples, any lengths).

    The bin edges are the ``bins``-quantiles of ``expected`` (repeated edges, from ties, merge),
    so each bin holds about 1/bins of the expected sample. NaN when either sample is empty.
    """
    expected = np.asarray(expected, dtype=np.float64).ravel()
    actual = np.asarray(actual, dtype=np.float64).ravel()
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    cuts = np.unique(np.quantile(expected, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    e = _shares(expected, cuts)
    a = _shares(actual, cuts)
    return float(np.sum((a - e) * np.log(a / e)))


def _shares(x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Share of ``x`` in each bin (-inf, c1), [c1, c2), ..., [cm, inf), floored at EPSILON."""
    counts = np.bincount(np.searchsorted(cuts, x, side="right"), minlength=len(cuts) + 1)
    return np.maximum(counts / len(x), EPSILON)


def ks(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov–Smirnov test; NaNs when a sample is empty."""
    if len(expected) == 0 or len(actual) == 0:
        return float("nan"), float("nan")
    result = stats.ks_2samp(expected, actual)
    return float(result.statistic), float(result.pvalue)


def verdict(psi_value: float, n: int = MIN_SAMPLE) -> str:
    """``ok`` below 0.1, ``watch`` from 0.1 to 0.2, ``skewed`` above 0.2; ``too few`` when the
    smaller sample ``n`` is under :data:`MIN_SAMPLE` (or the PSI is NaN)."""
    if n < MIN_SAMPLE or math.isnan(psi_value):
        return "too few"
    if psi_value > PSI_SKEWED:
        return "skewed"
    return "watch" if psi_value >= PSI_WATCH else "ok"


@dataclass
class FeatureParity:
    """One feature: training values against serving's logged values."""

    feature: str
    psi: float
    ks: float  # the largest gap between the two empirical CDFs, in [0, 1]
    ks_pvalue: float
    n_train: int
    n_serving: int
    train_mean: float
    serving_mean: float
    verdict: str


@dataclass
class ParityReport:
    """Per-feature parity of one training file with the impressions served over ``[start, end)``."""

    train_path: str
    start: datetime | None  # None: unbounded
    end: datetime | None
    period: str  # where the period came from, in words
    n_train: int  # training rows
    n_served: int  # impressions served in the period by the A/B arms, trending lists excluded
    n_sampled: int  # of which were read
    features: list[FeatureParity] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: ISO times, None for NaN."""
        d = asdict(self)
        d["start"] = self.start.isoformat() if self.start else None
        d["end"] = self.end.isoformat() if self.end else None
        d["features"] = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in f.items()}
                         for f in d["features"]]
        return d


def latest_training_csv(engine: Engine) -> Path:
    """The training file the last ``ranker dataset`` wrote, else ``config.DATA_DIR/ranker_train.csv``."""
    with session_scope(engine) as s:
        last = get_setting(s, keys.LAST_DATASET) or {}
    return Path(last["path"]) if last.get("path") else config.DATA_DIR / "ranker_train.csv"


def parity_report(engine: Engine, train_csv: str | Path, start: datetime | None = None,
                  end: datetime | None = None, limit: int = SAMPLE_LIMIT, bins: int = PSI_BINS) -> ParityReport:
    """Compare each feature of ``train_csv`` with the features serving logged over ``[start, end)``.

    Without ``start`` and ``end``, the period is the training data's ``event_time`` span, else
    the window ``last_dataset`` recorded for this file, else all impressions: the first of these
    in which serving logged at least :data:`MIN_SAMPLE` impressions (a feedback dataset's
    training rows may all predate the first served list). ``period`` says which. At most
    ``limit`` impressions are read, in one query, every n-th by id (an even spread over the period).

    Raises
    ------
    ranker.rank.train.DataError
        The training file is missing or unusable (it says how to build one).
    """
    if limit <= 0:
        raise ValueError(f"the impression sample must be positive, got {limit}")
    data = load_dataset(train_csv, min_positives=1)
    if start is None and end is None:
        start, end, period, n_served = _choose_period(engine, Path(train_csv))
    else:
        period, n_served = "the period asked for", _count_served(engine, start, end)
    served = _served_features(engine, start, end, n_served, limit)
    train = np.round(data.x.astype(np.float64), DECIMALS)
    features = []
    for j, name in enumerate(REGISTRY):
        t = train[:, j]
        s = np.round(np.array([f[name] for f in served if f.get(name) is not None], dtype=np.float64), DECIMALS)
        p = psi(t, s, bins)
        ks_stat, ks_p = ks(t, s)
        features.append(FeatureParity(name, p, ks_stat, ks_p, len(t), len(s), float(t.mean()),
                                      float(s.mean()) if len(s) else float("nan"), verdict(p, min(len(t), len(s)))))
    return ParityReport(str(train_csv), start, end, period, len(data), n_served, len(served), features)


def parity_gate(report: ParityReport, threshold: float = PSI_SKEWED) -> tuple[bool, str]:
    """(pass?, why) for the promotion gate: fail when a feature's PSI is above ``threshold``.

    Only features with at least :data:`MIN_SAMPLE` values on both sides count. When none has
    (no traffic served in the period: a first model on a fresh world), the gate passes and says
    that parity was not checked.
    """
    compared = [f for f in report.features if f.verdict != "too few"]
    if not compared:
        return True, (f"parity not checked: {report.n_sampled:,} impressions served {_period(report)}, "
                      f"fewer than {MIN_SAMPLE} to compare")
    over = sorted((f for f in compared if f.psi > threshold), key=lambda f: -f.psi)
    if over:
        listed = ", ".join(f"{f.feature} {f.psi:.3f}" for f in over)
        return False, (f"train/serve skew: PSI above {threshold:g} for {listed} (training data against "
                       f"{report.n_sampled:,} impressions served {_period(report)}); see `ranker parity`")
    worst = max(compared, key=lambda f: f.psi)
    return True, f"train/serve parity: highest PSI {worst.psi:.3f} ({worst.feature}), at most {threshold:g}"


def _period(report: ParityReport) -> str:
    """``from 2025-01-01 00:00 to 2025-02-15 00:00 (where that came from)``."""
    start = f"{report.start:%Y-%m-%d %H:%M}" if report.start else "the first impression"
    end = f"{report.end:%Y-%m-%d %H:%M}" if report.end else "the last"
    return f"from {start} to {end} ({report.period})"


def _choose_period(engine: Engine, path: Path) -> tuple[datetime | None, datetime | None, str, int]:
    """(start, end, where from, impressions served in it): the first period of
    :func:`_periods` in which serving logged at least :data:`MIN_SAMPLE` impressions, else the
    first period (which then has too few to compare)."""
    periods = _periods(engine, path)
    counts = []
    for start, end, label in periods:
        counts.append(_count_served(engine, start, end))
        if counts[-1] >= MIN_SAMPLE:
            if len(counts) > 1:
                label += (f"; {periods[0][2]} held {counts[0]:,} served impressions, "
                          f"fewer than {MIN_SAMPLE}")
            return start, end, label, counts[-1]
    return (*periods[0], counts[0])


def _periods(engine: Engine, path: Path) -> list[tuple[datetime | None, datetime | None, str]]:
    """The candidate periods, most faithful first: the training rows' time span (``end`` one second
    past the last, as ``event_time`` has whole seconds); the window the last ``ranker dataset``
    recorded, if it wrote this file; every impression."""
    periods: list[tuple[datetime | None, datetime | None, str]] = []
    span = _time_span(path)
    if span is not None:
        periods.append((span[0], span[1] + timedelta(seconds=1), "the training data's event_time span"))
    with session_scope(engine) as s:
        last = get_setting(s, keys.LAST_DATASET) or {}
    if last.get("window_start") and last.get("window_end") and _same_file(last.get("path"), path):
        periods.append((datetime.fromisoformat(last["window_start"]),
                        datetime.fromisoformat(last["window_end"]) + timedelta(seconds=1),
                        "the window the last `ranker dataset` recorded"))
    periods.append((None, None, "all impressions"))
    return periods


def _time_span(path: Path) -> tuple[datetime, datetime] | None:
    """The earliest and latest ``event_time`` of a training CSV (naive UTC), or None when it has no
    such column or no readable value in it."""
    column = next((c for c in pd.read_csv(path, nrows=0).columns if c.strip() == EVENT_TIME), None)
    if column is None:
        return None
    raw = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column].str.strip()
    times = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True).dropna()
    if times.empty:
        return None
    times = times.dt.tz_localize(None)
    return times.min().to_pydatetime(), times.max().to_pydatetime()


def _same_file(a: str | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b.resolve()


def _served(start: datetime | None, end: datetime | None) -> list:
    """WHERE clauses: impressions the A/B arms served in ``[start, end)``, trending lists excluded."""
    where = [Impression.arm.in_(config.ARMS), Impression.model_version != TRENDING_VERSION]
    if start is not None:
        where.append(Impression.served_at >= start)
    if end is not None:
        where.append(Impression.served_at < end)
    return where


def _count_served(engine: Engine, start: datetime | None, end: datetime | None) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Impression).where(*_served(start, end)))
                   .scalar_one())


def _served_features(engine: Engine, start: datetime | None, end: datetime | None, n: int,
                     limit: int) -> list[dict[str, Any]]:
    """The logged features of at most ``limit`` of the ``n`` impressions served in the period:
    every ``ceil(n / limit)``-th by id, in one query."""
    if n == 0:
        return []
    where = _served(start, end)
    step = -(-n // limit)
    if step > 1:
        where.append(Impression.id % step == 0)
    with engine.connect() as conn:
        rows = conn.execute(select(Impression.features).where(*where).limit(limit)).scalars().all()
    return [r for r in rows if r]


__all__ = ["FeatureParity", "ParityReport", "ks", "latest_training_csv", "parity_gate", "parity_report",
           "psi", "verdict", "MIN_SAMPLE", "PSI_BINS", "PSI_SKEWED", "PSI_WATCH", "SAMPLE_LIMIT"]
