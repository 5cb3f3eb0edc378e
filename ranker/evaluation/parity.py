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

The period: where the training data has an ``event_time`` column, the part of its time span in
which serving logged features (from the later of the first training row and the first served
impression to the earlier of the last of each), and only the training rows of that part are
compared. A feedback dataset's window mostly holds lists no ranker served (the demo world's
legacy history); comparing all 45 days of rows with the last few days of serving would measure
how the catalogue aged, not how features are computed. Without ``event_time``: the window the
last ``ranker dataset`` recorded for this file, else every impression. The report says which.

Serving's side holds the impressions ``ranker dataset --source impressions`` would learn from:
no trending lists (never scored) and no legacy history (logged without features), as
``ranker.rank.dataset.NOT_RANKER_DATA`` says; and, once views are logged as outcomes, only the
impressions someone looked at (a view, click or feedback), as both dataset sources keep only
looked-at rows. Which items get looked at is not a property of how features are computed, so
comparing with every served impression would add position bias to the measure
(``looked_at=False`` does it anyway).
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
from ranker.data.schema import Impression, Outcome
from ranker.rank.dataset import NOT_RANKER_DATA
from ranker.rank.features import REGISTRY
from ranker.rank.train import load_dataset

PSI_BINS = 10  # quantile bins of the training sample
EPSILON = 1e-4  # the floor of a bin's share, so an empty bin gives a finite PSI
PSI_WATCH = 0.1  # PSI at or above this: "watch"
PSI_SKEWED = 0.2  # PSI above this: "skewed", and the promotion gate refuses
MIN_SAMPLE = 200  # fewer values on either side: verdict "too few" (noise alone can pass 0.2)
SAMPLE_LIMIT = 50_000  # at most this many impressions are read, drawn at random over the period
#: ``ranker dataset`` writes features with 6 decimals; serving's values are rounded the same way,
#: so a value such as diversity 2/3 falls in the same bin on both sides.
DECIMALS = 6
#: The training CSV's column with when each row's list was shown (see ``ranker.rank.dataset.header``).
EVENT_TIME = "event_time"

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
    train_rows: int  # rows in the training file
    n_train: int  # of which fall in the period (all of them without event_time)
    population: str  # which served impressions count, in words
    n_served: int  # impressions of that population served in the period
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
                  end: datetime | None = None, limit: int = SAMPLE_LIMIT, bins: int = PSI_BINS,
                  looked_at: bool | None = None) -> ParityReport:
    """Compare each feature of ``train_csv`` with the features serving logged over ``[start, end)``.

    Without ``start`` and ``end``, the period is the part of the training rows' ``event_time``
    span in which serving logged features (none: nothing to compare), else the window
    ``last_dataset`` recorded for this file, else all impressions; ``period`` says which.
    Training rows outside the period are left out when the file has ``event_time``. At most
    ``limit`` impressions are read, in one query, drawn at random when more were served.
    ``looked_at`` (default: whether any view is logged) keeps only impressions with an outcome.

    Raises
    ------
    ranker.rank.train.DataError
        The training file is missing or unusable (it says how to build one).
    """
    if limit <= 0:
        raise ValueError(f"the impression sample must be positive, got {limit}")
    data = load_dataset(train_csv, min_positives=1)
    times = _event_times(Path(train_csv), len(data))
    if looked_at is None:
        looked_at = _views_logged(engine)
    population = ("served impressions someone looked at (a view, click or feedback logged)" if looked_at
                  else "served impressions, looked at or not")
    if start is not None or end is not None:
        period = "the period asked for"
    else:
        start, end, period = _default_period(engine, Path(train_csv), times, looked_at)
    train = np.round(data.x.astype(np.float64), DECIMALS)
    if times is not None:
        train = train[_within(times, start, end)]
    n_served = _count_served(engine, start, end, looked_at)
    served = _served_features(engine, start, end, looked_at, n_served, limit)
    features = []
    for j, name in enumerate(REGISTRY):
        t = train[:, j]
        s = np.round(np.array([f[name] for f in served if f.get(name) is not None], dtype=np.float64), DECIMALS)
        p = psi(t, s, bins)
        ks_stat, ks_p = ks(t, s)
        features.append(FeatureParity(name, p, ks_stat, ks_p, len(t), len(s),
                                      float(t.mean()) if len(t) else float("nan"),
                                      float(s.mean()) if len(s) else float("nan"), verdict(p, min(len(t), len(s)))))
    return ParityReport(str(train_csv), start, end, period, len(data), len(train), population, n_served,
                        len(served), features)


def parity_gate(report: ParityReport, threshold: float = PSI_SKEWED) -> tuple[bool, str]:
    """(pass?, why) for the promotion gate: fail when a feature's PSI is above ``threshold``.

    Only features with at least :data:`MIN_SAMPLE` values on both sides count. When none has
    (no traffic served in the period: a first model on a fresh world), the gate passes and says
    that parity was not checked.
    """
    compared = [f for f in report.features if f.verdict != "too few"]
    if not compared:
        return True, (f"parity not checked: {report.n_sampled:,} {report.population} {_period(report)}, "
                      f"fewer than {MIN_SAMPLE} to compare")
    over = sorted((f for f in compared if f.psi > threshold), key=lambda f: -f.psi)
    if over:
        listed = ", ".join(f"{f.feature} {f.psi:.3f}" for f in over)
        return False, (f"train/serve skew: PSI above {threshold:g} for {listed} (training data against "
                       f"{report.n_sampled:,} {report.population} {_period(report)}); see `ranker parity`")
    worst = max(compared, key=lambda f: f.psi)
    return True, f"train/serve parity: highest PSI {worst.psi:.3f} ({worst.feature}), at most {threshold:g}"


def _period(report: ParityReport) -> str:
    """``from 2025-01-01 00:00 to 2025-02-15 00:00 (where that came from)``."""
    start = f"{report.start:%Y-%m-%d %H:%M}" if report.start else "the first impression"
    end = f"{report.end:%Y-%m-%d %H:%M}" if report.end else "the last"
    return f"from {start} to {end} ({report.period})"


def _default_period(engine: Engine, path: Path, times: np.ndarray | None,
                    looked_at: bool) -> tuple[datetime | None, datetime | None, str]:
    """(start, end, where from): see :func:`parity_report`. ``end`` is exclusive; ``event_time``
    has whole seconds, so a span ends one second after its last row."""
    if times is not None:
        second = np.timedelta64(1, "s")
        first, last = times.min(), times.max() + second
        served = _served_span(engine, looked_at)
        if served is not None:
            first = max(first, served[0].astype("datetime64[s]"))
            last = min(last, served[1].astype("datetime64[s]") + second)
        if served is None or first >= last:
            return (_py(times.min()), _py(times.max() + second),
                    "the training data's event_time span; serving logged no features in it")
        return _py(first), _py(last), "the training data's event_time span, where serving logged features"
    with session_scope(engine) as s:
        last_dataset = get_setting(s, keys.LAST_DATASET) or {}
    if (last_dataset.get("window_start") and last_dataset.get("window_end")
            and _same_file(last_dataset.get("path"), path)):
        return (datetime.fromisoformat(last_dataset["window_start"]),
                datetime.fromisoformat(last_dataset["window_end"]) + timedelta(seconds=1),
                "the window the last `ranker dataset` recorded; the file has no event_time")
    return None, None, "all impressions; the file has no event_time and no recorded window"


def _py(t: np.datetime64) -> datetime:
    return t.astype("datetime64[us]").item()


def _within(times: np.ndarray, start: datetime | None, end: datetime | None) -> np.ndarray:
    keep = np.ones(len(times), dtype=bool)
    if start is not None:
        keep &= times >= np.datetime64(start, "us")
    if end is not None:
        keep &= times < np.datetime64(end, "us")
    return keep


def _event_times(path: Path, rows: int) -> np.ndarray | None:
    """Each row's ``event_time`` (datetime64[s], naive UTC), or None when the file has no such column
    or a value that is not a time."""
    column = next((c for c in pd.read_csv(path, nrows=0).columns if c.strip() == EVENT_TIME), None)
    if column is None:
        return None
    raw = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column].str.strip()
    times = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    if len(times) != rows or times.isna().any():
        return None
    return times.dt.tz_localize(None).to_numpy().astype("datetime64[s]")


def _same_file(a: str | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b.resolve()


def _views_logged(engine: Engine) -> bool:
    """Whether views of served impressions are logged as outcomes (as the simulator does)."""
    with engine.connect() as conn:
        return conn.execute(select(Outcome.id).join(Impression, Impression.id == Outcome.impression_id)
                            .where(Outcome.kind == "view", Impression.model_version.not_in(NOT_RANKER_DATA))
                            .limit(1)).first() is not None


def _served(start: datetime | None, end: datetime | None, looked_at: bool) -> list:
    """WHERE clauses: ranker-data impressions served in ``[start, end)``, with an outcome if ``looked_at``."""
    where = [Impression.model_version.not_in(NOT_RANKER_DATA)]
    if looked_at:
        where.append(Impression.id.in_(select(Outcome.impression_id)))
    if start is not None:
        where.append(Impression.served_at >= start)
    if end is not None:
        where.append(Impression.served_at < end)
    return where


def _served_span(engine: Engine, looked_at: bool) -> tuple[np.datetime64, np.datetime64] | None:
    """When the first and the last impression of the population were served; None when none was."""
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(Impression.served_at), func.max(Impression.served_at))
                                   .where(*_served(None, None, looked_at))).one()
    return None if first is None else (np.datetime64(first, "us"), np.datetime64(last, "us"))


def _count_served(engine: Engine, start: datetime | None, end: datetime | None, looked_at: bool) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Impression)
                                .where(*_served(start, end, looked_at))).scalar_one())


def _served_features(engine: Engine, start: datetime | None, end: datetime | None, looked_at: bool, n: int,
                     limit: int) -> list[dict[str, Any]]:
    """The logged features of the ``n`` impressions served in the period, or of ``limit`` of them
    drawn at random when there are more, in one query (the random draw sorts ids only).

    A random draw, not every n-th id: ids run in list order, so a stride would pick the same
    positions of every list (and features such as diversity depend on the position).
    """
    if n == 0:
        return []
    where = _served(start, end, looked_at)
    if n > limit:
        drawn = select(Impression.id).where(*where).order_by(func.random()).limit(limit)
        where = [Impression.id.in_(drawn)]
    with engine.connect() as conn:
        rows = conn.execute(select(Impression.features).where(*where)).scalars().all()
    return [r for r in rows if r]


__all__ = ["FeatureParity", "ParityReport", "ks", "latest_training_csv", "parity_gate", "parity_report",
           "psi", "verdict", "MIN_SAMPLE", "PSI_BINS", "PSI_SKEWED", "PSI_WATCH", "SAMPLE_LIMIT"]
