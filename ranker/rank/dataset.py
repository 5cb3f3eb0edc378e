"""Training data for the ranker (``ranker dataset``), without the guide's leaks.

Two sources:

``feedback`` (the guide's Step 1, corrected as SPEC §12 says)
    The window is the last ``window_days`` before the clock. The lists come from the
    serving log (a legacy feed's lists, with their candidates, or the ranker's); without
    logged lists (imported data), a user's views within one session reconstruct the list.
    ``model_score`` is the score of the base model as it would have served then (refitted
    every ``refit_days``, each fit on earlier interactions only), scaled over the request's
    candidates; recency and popularity are taken as of the list, and diversity by the
    serving function over it. Items serving could not have offered are dropped. Labels
    follow :func:`ranker.rank.features.label`: engaged (a click or explicit feedback) or
    looked at and not engaged; negatives are sampled at ``neg_ratio`` per positive.

``impressions``
    Lists served by :func:`ranker.serving.service.recommend`, with the features logged at serve
    time; the label is engaged (an outcome was logged) or not. Groups are requests.

Rows are written as they are made (bounded memory) with a progress bar, under temporary
names that become the files' own only when the build has finished.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, Select, and_, or_, select
from tqdm import tqdm

from ranker import config, keys
from ranker.data.catalog import Catalog, CountIndex, load_catalog
from ranker.data.clock import serve_now, utcnow
from ranker.data.db import put_setting, session_scope
from ranker.data.files import atomic_open
from ranker.data.interactions import load_interactions, load_users
from ranker.data.schema import Impression, Outcome, ServedList
from ranker.faults import fault_point
from ranker.rank.features import (
    LABEL_POSITIVE_KINDS,
    REGISTRY,
    UserHistory,
    feature_columns,
    list_features,
    make_context,
    needs_history,
    score_range,
    with_history,
)
from ranker.rank.features import label as item_label

if TYPE_CHECKING:
    from ranker.base import BaseRecommender

log = logging.getLogger(__name__)
SOURCES = ("feedback", "impressions")
ENGINES = ("polars", "python", "spark")
FORMATS = ("csv", "parquet")
#: Lists whose features were never computed by the ranker's serving path: trending lists (never
#: reranked, not ranker data) and legacy lists (no features logged; the feedback source
#: recomputes theirs point in time).
NOT_RANKER_DATA = (config.TRENDING_FLOW, config.LEGACY)
Progress = Callable[[float, str], None]


@dataclass
class DatasetConfig:
    output: Path = field(default_factory=lambda: config.DATA_DIR / "ranker_train.csv")  # read when built
    neg_ratio: float = config.DEFAULTS.neg_ratio  # negatives sampled per positive, within the same list
    source: str = "feedback"
    window_days: float = config.DEFAULTS.window_days  # feedback: lists from the last N days before the clock
    base_model: str = config.DEFAULTS.base_model  # feedback: the base model that gives model_score
    session_gap_minutes: float = 30.0  # views further apart start a new list
    refit_days: float = config.DEFAULTS.refit_days  # feedback: the base model is refitted this often
    val_output: Path | None = None  # also write the latest ``val_fraction`` of lists here
    val_fraction: float = config.DEFAULTS.val_fraction
    seed: int = config.DEFAULTS.seed
    #: Explicit feedback window; overrides ``window_days`` (used by time-split evaluation).
    window_start: datetime | None = None
    window_end: datetime | None = None
    #: feedback: "polars" computes the rows column by column (ranker.rank.dataset_columnar), "python" list by
    #: list, "spark" with PySpark (ranker.rank.dataset_spark)
    engine: str = "polars"
    format: str | None = None  # "csv" or "parquet" (a folder partitioned by day); None: .parquet outputs are Parquet
    spark_master: str | None = None  # engine "spark": the master URL (default: the active session's, else local[*])
    spark_input: Path | None = None  # engine "spark": a folder of the log's Parquet exports (default: the database)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; choose one of: {', '.join(SOURCES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        self.format = self.format or ("parquet" if self.output.suffix == ".parquet" else "csv")
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of: {', '.join(FORMATS)}")
        if self.engine != "spark" and (self.spark_master or self.spark_input):
            raise ValueError("--master and --from-parquet choose how the spark engine runs; add --engine spark")
        if not self.neg_ratio > 0:
            raise ValueError(f"--neg-ratio must be positive, got {self.neg_ratio}")
        if not self.refit_days > 0:
            raise ValueError(f"--refit-days must be positive, got {self.refit_days}")
        if not self.window_days > 0:
            raise ValueError(f"--window-days must be positive, got {self.window_days}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class DatasetSummary:
    path: str
    rows: int
    positives: int
    groups: int
    source: str
    val_path: str | None = None
    val_rows: int = 0
    val_positives: int = 0
    window_start: str | None = None
    window_end: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


#: The CSV's column with the 0-based position each row's item was shown at in its list (-1: unknown),
#: for position-bias correction; not a feature.
POSITION_COLUMN = "position"


def header() -> list[str]:
    return ["user_id", "item_id", *feature_columns(), "label", "group_id", "event_time", POSITION_COLUMN]


class _Writer:
    """Streams rows into the train file, or the val file for the latest lists.

    A context manager: the files are written under temporary names and take their own names
    only when the block ends without an exception (see :func:`ranker.data.files.atomic_open`),
    so a failed or killed build never leaves a partial dataset where training would read it.
    """

    def __init__(self, cfg: DatasetConfig, val_from: datetime | None):
        self.cfg, self.val_from = cfg, val_from
        self._stack = ExitStack()
        paths = [cfg.output] + ([Path(cfg.val_output)] if cfg.val_output is not None else [])
        self._writers = [csv.writer(self._stack.enter_context(atomic_open(p, newline=""))) for p in paths]
        for w in self._writers:
            w.writerow(header())
        # per file: [train, val]
        self.rows, self.positives, self.groups = [0, 0], [0, 0], [0, 0]

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def write(self, user_id: int, item_ids, x: np.ndarray, labels, group: str, when: datetime,
              positions=None) -> None:
        """Write one list's sampled rows; ``positions``: where each was shown (0-based; None: unknown)."""
        target = 1 if self.val_from is not None and when >= self.val_from else 0
        w = self._writers[target]
        stamp = when.isoformat(timespec="seconds")
        if positions is None:
            positions = np.full(len(labels), -1)
        for item, feats, label, pos in zip(item_ids, x, labels, positions):
            w.writerow([user_id, int(item), *(f"{v:.6f}" for v in feats), int(label), group, stamp, int(pos)])
        self.rows[target] += len(labels)
        self.positives[target] += int(np.sum(labels))
        self.groups[target] += 1
        fault_point("dataset:mid_write")

    def summary(self, source: str, start: datetime, end: datetime) -> DatasetSummary:
        return DatasetSummary(
            path=str(self.cfg.output), rows=self.rows[0], positives=self.positives[0], groups=self.groups[0],
            source=source, val_path=str(self.cfg.val_output) if self.cfg.val_output else None,
            val_rows=self.rows[1], val_positives=self.positives[1], window_start=start.isoformat(),
            window_end=end.isoformat())


def build_dataset(engine: Engine, cfg: DatasetConfig, progress: Progress | None = None,
                  show_bar: bool = False, fitted_base=None) -> DatasetSummary:
    """Write the training CSV described by ``cfg``; returns what was written.

    ``fitted_base`` (feedback source): a ``cfg.base_model`` already fitted on the interactions
    before the window starts, to reuse instead of fitting it again.

    Raises
    ------
    ValueError
        Nothing to build from (say which command fills the data).
    """
    if cfg.engine == "spark":
        from ranker.rank.dataset_spark import build as build_spark

        summary = build_spark(engine, cfg, progress, show_bar, fitted_base)
    elif cfg.format == "parquet" or (cfg.source == "feedback" and cfg.engine == "polars"):
        from ranker.rank.dataset_columnar import build

        summary = build(engine, cfg, progress, show_bar, fitted_base)
    elif cfg.source == "feedback":
        summary = _from_feedback(engine, cfg, progress, show_bar, fitted_base)
    else:
        summary = _from_impressions(engine, cfg, progress, show_bar)
    with session_scope(engine) as s:
        put_setting(s, keys.LAST_DATASET, {**summary.as_dict(), "created_at": utcnow().isoformat()})
    return summary


# --- Feedback ---------------------------------------------------------------------


def _sessions(user: np.ndarray, t_us: np.ndarray, gap_us: float) -> np.ndarray:
    """Session number per row of interactions sorted by (user, time)."""
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(t_us) > gap_us)]
    return np.cumsum(new) - 1


@dataclass
class _Lists:
    """The window's interactions sorted by (user, time), cut into sessions: the lists users saw.

    List ``s`` is rows ``bounds[s]:bounds[s + 1]`` of the arrays, all of shape (n,).
    """

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray  # str
    t_us: np.ndarray  # microseconds since 1970
    bounds: np.ndarray  # (n_lists + 1,)

    @classmethod
    def from_window(cls, window: pd.DataFrame, gap_minutes: float) -> _Lists:
        w = window.sort_values(["user_id", "created_at"], kind="stable")
        user = w["user_id"].to_numpy()
        t_us = w["created_at"].to_numpy().astype("datetime64[us]").astype(np.int64)
        session = _sessions(user, t_us, gap_minutes * 60e6)
        bounds = np.flatnonzero(np.r_[True, session[1:] != session[:-1], True])
        return cls(user, w["item_id"].to_numpy(), w["kind"].astype(str).to_numpy(), t_us, bounds)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def labelled(self, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """List ``s`` as (items shown, in order; label per item; positions of the unengaged ones),
        or None when it holds no engagement or fewer than two views."""
        a, b = self.bounds[s], self.bounds[s + 1]
        kind, item = self.kind[a:b], self.item[a:b]
        shown = _unique_in_order(item[kind == "view"])
        positive_items = set(item[np.isin(kind, LABEL_POSITIVE_KINDS)].tolist())
        if not positive_items or len(shown) < 2:
            return None
        engaged_items = set(item[np.isin(kind, config.ENGAGED_KINDS)].tolist())
        labels = np.array([i in positive_items for i in shown], dtype=np.int8)
        negatives = np.flatnonzero([i not in engaged_items for i in shown])
        return shown, labels, negatives


@dataclass
class _UserEvents:
    """Every user's events sorted by (user, time), to read one user's history before a moment."""

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    t: np.ndarray  # datetime64[us]

    @classmethod
    def from_history(cls, history: pd.DataFrame) -> _UserEvents:
        h = history.sort_values(["user_id", "created_at"], kind="stable")
        return cls(h["user_id"].to_numpy(), h["item_id"].to_numpy(np.int64), h["kind"].astype(str).to_numpy(),
                   h["created_at"].to_numpy().astype("datetime64[us]"))

    def history(self, catalog: Catalog, user_id: int, when: datetime) -> UserHistory:
        a, b = np.searchsorted(self.user, user_id, "left"), np.searchsorted(self.user, user_id, "right")
        end = a + int(np.searchsorted(self.t[a:b], np.datetime64(when, "us"), "left"))
        return UserHistory.from_events(catalog, self.item[a:end], self.kind[a:end], self.t[a:end], when)


@dataclass
class _AsOf:
    """What point-in-time features of a list need: the catalogue, counts over the history, users,
    and for history features every user's events and the all-origin counts."""

    catalog: Catalog
    counts: CountIndex
    users: pd.DataFrame  # indexed by user id
    events: _UserEvents | None = None
    all_counts: CountIndex | None = None

    @classmethod
    def load(cls, engine: Engine, history: pd.DataFrame) -> _AsOf:
        extra = {}
        if needs_history():
            extra = {"events": _UserEvents.from_history(history),
                     "all_counts": CountIndex(history["item_id"].to_numpy(), history["created_at"].to_numpy(),
                                              (history["kind"] == "view").to_numpy())}
        return cls(load_catalog(engine), CountIndex.from_history(history), load_users(engine).set_index("id"),
                   **extra)


def _sample(labels: np.ndarray, negatives: np.ndarray, neg_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions to keep: every positive, and ``neg_ratio`` negatives per positive drawn from
    ``negatives`` (all of them when there are fewer)."""
    n_neg = min(len(negatives), int(np.ceil(neg_ratio * labels.sum())))
    return np.sort(np.r_[np.flatnonzero(labels), rng.choice(negatives, n_neg, replace=False)])


def _feedback_window(engine: Engine, cfg: DatasetConfig) -> tuple[datetime, datetime, pd.DataFrame, pd.DataFrame]:
    """(start, end, history before end, interactions in [start, end)); ValueError when there is
    nothing to learn from."""
    now = cfg.window_end or _clock(engine)
    start = cfg.window_start or now - timedelta(days=cfg.window_days)
    if start >= now:
        raise ValueError(f"empty dataset window: {start} is not before {now}")
    history = load_interactions(engine, until=now)
    if len(history) == 0:
        raise ValueError("the database has no interactions; run `ranker demo init` or import data first")
    window = history[history["created_at"].to_numpy() >= np.datetime64(start, "us")]
    if not window["kind"].isin(LABEL_POSITIVE_KINDS).any():
        raise ValueError(f"no engagement ({', '.join(LABEL_POSITIVE_KINDS)}) in the last "
                         f"{cfg.window_days:g} days; widen --window-days or collect more feedback")
    return start, now, history, window


def _fit_base(engine: Engine, base_model: str, start: datetime, progress: Progress | None) -> BaseRecommender:
    """``base_model`` fitted on the interactions before ``start`` only (no label leak); the same fit
    done before on the same history is reused (:mod:`ranker.base.fits`) unless ``config.FIT_CACHE`` is off."""
    from ranker.base import fits, make_base_model
    from ranker.base.base import TrainingData

    if progress:
        progress(0.02, f"fitting {base_model} on history before {start:%Y-%m-%d}")
    model, data = make_base_model(base_model), TrainingData.from_engine(engine, start)
    return fits.fit(model, data) if config.FIT_CACHE else model.fit(data)


def _from_feedback(engine: Engine, cfg: DatasetConfig, progress: Progress | None,
                   show_bar: bool, base=None) -> DatasetSummary:
    start, now, history, window = _feedback_window(engine, cfg)
    bases = _BaseSchedule(engine, cfg.base_model, cfg.refit_days, start, progress, base)
    as_of = _AsOf.load(engine, history)
    rng = np.random.default_rng(cfg.seed)
    logged = _LoggedLists.load(engine, start, now)
    with _Writer(cfg, _val_start(start, now, cfg)) as writer:
        if len(logged):
            skipped_unknown = _write_logged(writer, logged, bases, as_of, cfg, rng, progress, show_bar)
        else:  # no lists were logged (imported data): the views of a session are the list
            lists = _Lists.from_window(window, cfg.session_gap_minutes)
            skipped_unknown = _write_lists(writer, lists, bases, as_of, cfg, rng, progress, show_bar)
        if skipped_unknown:
            log.info("skipped %d lists of users the base model does not know (served trending)",
                     skipped_unknown)
        if sum(writer.positives) == 0:
            raise ValueError("no list in the window holds both engagement and a viewed-not-engaged item; "
                             "widen --window-days or collect more feedback")
    return writer.summary("feedback", start, now)


class _BaseSchedule:
    """The base model as it would have served at a moment: refitted every ``refit_days`` from
    the window's start, each fit on the interactions before its cutoff only.

    Each cutoff is fitted once and kept, so lists met out of time order (view sessions are
    read user by user) never refit a model already fitted: at most one fit per period.
    """

    def __init__(self, engine: Engine, base_model: str, refit_days: float, start: datetime,
                 progress: Progress | None, first: BaseRecommender | None = None):
        self.engine, self.base_model, self.start, self.progress = engine, base_model, start, progress
        self.step = timedelta(days=refit_days)
        self.models: dict[datetime, BaseRecommender] = {start: first} if first is not None else {}

    def at(self, when: datetime) -> BaseRecommender:
        periods = max(int((when - self.start) / self.step), 0)
        cutoff = self.start + periods * self.step
        if cutoff not in self.models:
            self.models[cutoff] = _fit_base(self.engine, self.base_model, cutoff, self.progress)
        return self.models[cutoff]


@dataclass
class _LoggedLists:
    """Lists served in the window and logged (the legacy feed's, the ranker's), with what users did.

    ``frame`` holds one row per impression, sorted by (served_at, request_id, position);
    ``kinds`` maps an impression id to the outcome kinds logged for it, ``candidates`` a
    request id to the candidates its list was chosen from (when they were logged).
    """

    frame: pd.DataFrame
    kinds: dict[int, set[str]]
    candidates: dict[str, list[int]]

    @classmethod
    def load(cls, engine: Engine, start: datetime, end: datetime) -> _LoggedLists:
        in_window = and_(Impression.served_at >= start, Impression.served_at < end,
                         Impression.model_version != config.TRENDING_FLOW)
        with engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(
                select(Impression.id, Impression.request_id, Impression.user_id, Impression.item_id,
                       Impression.position, Impression.served_at, Impression.features)
                .where(in_window).order_by(Impression.served_at, Impression.request_id, Impression.position)
            ).all(), columns=["id", "request_id", "user_id", "item_id", "position", "served_at", "features"])
            kinds: dict[int, set[str]] = {}
            for imp, kind in conn.execute(select(Outcome.impression_id, Outcome.kind).join(
                    Impression, Impression.id == Outcome.impression_id).where(in_window)):
                kinds.setdefault(imp, set()).add(kind)
            contexts = conn.execute(select(ServedList.request_id, ServedList.context).where(
                ServedList.served_at >= start, ServedList.served_at < end, ServedList.context.is_not(None)))
            candidates = {r: c["candidates"] for r, c in contexts if isinstance(c, dict) and "candidates" in c}
        return cls(frame, kinds, candidates)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_lists(self) -> int:
        return int(self.frame["request_id"].nunique())

    def lists(self):
        """(request id, user id, served at, item ids, labels (-1: not looked at), logged features, positions)."""
        f = self.frame
        if f.empty:
            return
        bounds = np.flatnonzero(np.r_[True, f["request_id"].to_numpy()[1:] != f["request_id"].to_numpy()[:-1],
                                      True])
        ids, items, users = f["id"].to_numpy(), f["item_id"].to_numpy(), f["user_id"].to_numpy()
        positions = f["position"].to_numpy()
        for a, b in zip(bounds[:-1], bounds[1:]):
            labels = np.array([_label_or_none(self.kinds.get(int(i), set())) for i in ids[a:b]], dtype=np.int8)
            yield (f["request_id"].iat[a], int(users[a]), f["served_at"].iat[a].to_pydatetime(), items[a:b],
                   labels, f["features"].iloc[a:b].tolist() if f["features"].iat[a] else None, positions[a:b])


def _label_or_none(kinds: set[str]) -> int:
    value = item_label(kinds)
    return -1 if value is None else value


def _write_logged(writer: _Writer, logged: _LoggedLists, bases: _BaseSchedule, as_of: _AsOf,
                  cfg: DatasetConfig, rng: np.random.Generator, progress: Progress | None, show_bar: bool) -> int:
    """Write the sampled rows of every logged list; returns how many lists were skipped because the
    base model did not know their user then (they were served trending, never reranked)."""
    skipped_unknown = 0
    names = list(REGISTRY)
    bar = tqdm(desc="dataset", unit="list", disable=not show_bar)
    try:
        for n, (request_id, uid, when, shown, labels, features, shown_at) in enumerate(logged.lists()):
            bar.update(1)
            if progress and n % 2000 == 0:
                progress(0.1 + 0.9 * n / max(logged.n_lists, 1), f"list {n:,}")
            if not (labels == 1).any() or not (labels == 0).any():
                continue
            if features is not None:  # served by the ranker: the features as served
                x = np.array([[float(f[c]) for c in names] for f in features])
            else:
                base = bases.at(when)
                if not base.knows_user(uid):
                    skipped_unknown += 1
                    continue
                keep = _servable(base, uid, shown)
                shown, labels, shown_at = shown[keep], labels[keep], shown_at[keep]
                cands = np.asarray(logged.candidates.get(request_id, shown), dtype=np.int64)
                cands = cands[_servable(base, uid, cands)]
                x = _features(as_of, base.score(uid, shown), shown, when, uid,
                              score_range(base.score(uid, cands)) if len(cands) else None)
            labelled = labels >= 0
            if not (labels[labelled] == 1).any() or not (labels[labelled] == 0).any():
                continue
            rows = np.flatnonzero(labelled)
            pick = rows[_sample(labels[rows], np.flatnonzero(labels[rows] == 0), cfg.neg_ratio, rng)]
            writer.write(uid, shown[pick], x[pick], labels[pick], str(request_id), when, shown_at[pick])
    finally:
        bar.close()
    return skipped_unknown


@dataclass
class CandidateList:
    """One logged request as serving would have seen it then: the candidates it could have offered,
    in base order, as a feature context, and which of them the user engaged with when shown."""

    request_id: str
    user_id: int
    served_at: datetime
    context: object  # ranker.rank.features.ListContext of the candidates, base order
    relevant: np.ndarray  # (n,) bool: shown and engaged


def candidate_lists(engine: Engine, start: datetime, end: datetime, base_model: str = config.DEFAULTS.base_model,
                    refit_days: float = config.DEFAULTS.refit_days, progress: Progress | None = None):
    """Every list served in [start, end) whose candidates were logged, rebuilt point in time with
    the base model as it would have served then (refitted every ``refit_days`` from ``start``);
    lists of users that model did not know, or with no engaged candidate, are left out."""
    bases = _BaseSchedule(engine, base_model, refit_days, start, progress)
    as_of = _AsOf.load(engine, load_interactions(engine, until=end))
    logged = _LoggedLists.load(engine, start, end)
    for request_id, uid, when, shown, labels, _, _ in logged.lists():
        cands = logged.candidates.get(request_id)
        if cands is None or not (labels == 1).any():
            continue
        base = bases.at(when)
        if not base.knows_user(uid):
            continue
        cands = np.asarray(cands, dtype=np.int64)
        cands = cands[_servable(base, uid, cands)]
        scores = base.score(uid, cands).astype(np.float64)
        order = np.argsort(-scores, kind="stable")
        cands, scores = cands[order], scores[order]
        relevant = np.isin(cands, shown[labels == 1])
        if relevant.any():
            yield CandidateList(request_id, uid, when, _context_at(as_of, scores, cands, when, uid), relevant)


def _context_at(as_of: _AsOf, base_scores: np.ndarray, item_ids: np.ndarray, when: datetime, user_id: int):
    rows = as_of.catalog.index(item_ids)
    views, other = as_of.counts.counts(item_ids, np.full(len(item_ids), np.datetime64(when, "us")))
    ucat = ufield = None
    if user_id in as_of.users.index:
        ucat, ufield = as_of.users.at[user_id, "category"], as_of.users.at[user_id, "field"]
    ctx = make_context(as_of.catalog, rows, views, other, base_scores, when, user_id, ucat, ufield)
    if needs_history():
        if as_of.events is None or as_of.all_counts is None:
            raise ValueError("history features need the interaction history: load it with _AsOf.load")
        views_all, engaged_all = as_of.all_counts.counts(item_ids, np.full(len(item_ids), np.datetime64(when, "us")))
        with_history(ctx, as_of.events.history(as_of.catalog, user_id, when), views_all, engaged_all)
    return ctx


def _servable(base: BaseRecommender, user_id: int, item_ids: np.ndarray) -> np.ndarray:
    """Which items serving could have offered then: known to the base model as fitted, and not
    already engaged by the user before its cutoff (serving leaves those out of the candidates)."""
    known = base.item_rows(item_ids) >= 0
    return known & ~np.isin(item_ids, base.engaged_item_ids(user_id))


def _write_lists(writer: _Writer, lists: _Lists, bases: _BaseSchedule, as_of: _AsOf, cfg: DatasetConfig,
                 rng: np.random.Generator, progress: Progress | None, show_bar: bool) -> int:
    """Write the sampled rows of every usable list; returns how many lists were skipped because
    the base model does not know their user."""
    skipped_unknown = 0
    n_lists = len(lists)
    bar = tqdm(total=n_lists, desc="dataset", unit="list", disable=not show_bar)
    try:
        for s_i in range(n_lists):
            bar.update(1)
            if progress and s_i % 2000 == 0:
                progress(0.1 + 0.9 * s_i / n_lists, f"list {s_i:,}/{n_lists:,}")
            labelled = lists.labelled(s_i)
            if labelled is None:
                continue
            uid = int(lists.user[lists.bounds[s_i]])
            when = _to_datetime(lists.t_us[lists.bounds[s_i]])
            base = bases.at(when)
            if not base.knows_user(uid):
                skipped_unknown += 1  # served trending, never reranked: not ranker data
                continue
            shown, labels, _ = labelled
            servable = _servable(base, uid, shown)
            shown, labels, shown_at = shown[servable], labels[servable], np.flatnonzero(servable)
            negatives = np.flatnonzero(labels == 0)
            if labels.sum() == 0 or len(negatives) == 0:
                continue
            keep = _sample(labels, negatives, cfg.neg_ratio, rng)
            x = _features(as_of, base.score(uid, shown), shown, when, uid)
            writer.write(uid, shown[keep], x[keep], labels[keep], f"s{s_i}", when, shown_at[keep])
    finally:
        bar.close()
    return skipped_unknown


def features_at(catalog: Catalog, counts: CountIndex, base_scores: np.ndarray, item_ids: np.ndarray,
                when: datetime, user_id: int, users=None,
                base_range: tuple[float, float] | None = None) -> np.ndarray:
    """(n, F) features of ``item_ids`` shown in this order at ``when`` (point in time); model_score
    is scaled over ``base_range``, the base scores of the request's candidates (default: these items)."""
    return _features(_AsOf(catalog, counts, users if users is not None else pd.DataFrame()), base_scores,
                     item_ids, when, user_id, base_range)


def _features(as_of: _AsOf, base_scores: np.ndarray, item_ids: np.ndarray, when: datetime, user_id: int,
              base_range: tuple[float, float] | None = None) -> np.ndarray:
    ctx = _context_at(as_of, base_scores, item_ids, when, user_id)
    ctx.score_range = base_range
    return list_features(ctx)


def _unique_in_order(a: np.ndarray) -> np.ndarray:
    _, first = np.unique(a, return_index=True)
    return a[np.sort(first)]


def _to_datetime(t_us: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=int(t_us))


def _clock(engine: Engine) -> datetime:
    with session_scope(engine) as s:
        return serve_now(s)


def _val_start(start: datetime, end: datetime, cfg: DatasetConfig) -> datetime | None:
    if cfg.val_output is None:
        return None
    return end - (end - start) * cfg.val_fraction


# --- Impressions ------------------------------------------------------------------


def _impressions_query(views_logged: bool) -> Select:
    """Logged impressions with whether each was engaged, in served order per request.

    Once views are logged as outcomes (``views_logged``), only looked-at impressions are kept, so
    negatives are viewed-not-engaged as in the feedback source: an impression nobody looked at
    says nothing about the item, only about its position.
    """
    engaged = select(Outcome.impression_id).where(Outcome.kind.in_(LABEL_POSITIVE_KINDS))
    stmt = (
        select(Impression.request_id, Impression.user_id, Impression.item_id, Impression.features,
               Impression.served_at, Impression.position, Impression.id.in_(engaged).label("engaged"))
        .where(Impression.model_version.not_in(NOT_RANKER_DATA))
        .order_by(Impression.request_id, Impression.position)
    )
    if views_logged:
        viewed = select(Outcome.impression_id).where(Outcome.kind == "view")
        stmt = stmt.where(or_(Impression.id.in_(viewed), Impression.id.in_(engaged)))
    return stmt


def _served_span(conn: Connection) -> tuple[datetime, datetime]:
    """When the first and the last impression were served; ValueError when none was."""
    ranker = select(Impression.served_at).where(Impression.model_version.not_in(NOT_RANKER_DATA))
    first = conn.execute(ranker.order_by(Impression.served_at).limit(1)).scalar()
    if first is None:
        raise ValueError("no impressions logged yet; serve traffic with `ranker simulate` first, "
                         "or use --source feedback")
    last = conn.execute(ranker.order_by(Impression.served_at.desc()).limit(1)).scalar()
    return first, last


def _from_impressions(engine: Engine, cfg: DatasetConfig, progress: Progress | None,
                      show_bar: bool) -> DatasetSummary:
    with engine.connect() as conn:
        views_logged = conn.execute(select(Outcome.id).join(Impression, Impression.id == Outcome.impression_id)
                                    .where(Outcome.kind == "view", Impression.model_version.not_in(NOT_RANKER_DATA))
                                    .limit(1)).first() is not None
        first, last = _served_span(conn)
    stmt = _impressions_query(views_logged)
    names = list(REGISTRY)
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(desc="dataset", unit="request", disable=not show_bar)
    with _Writer(cfg, _val_start(first, last, cfg)) as writer, engine.connect() as conn:
        try:
            current, rows = None, []
            for row in conn.execution_options(yield_per=5000).execute(stmt):
                if row.request_id != current and rows:
                    _write_request(writer, rows, names, cfg, rng)
                    bar.update(1)
                    rows = []
                current = row.request_id
                rows.append(row)
            if rows:
                _write_request(writer, rows, names, cfg, rng)
        finally:
            bar.close()
        if sum(writer.positives) == 0:
            raise ValueError("no served list has an engaged item yet; simulate more traffic first")
    return writer.summary("impressions", first, last)


def _write_request(writer: _Writer, rows: list, names: list[str], cfg: DatasetConfig,
                   rng: np.random.Generator) -> None:
    labels = np.array([bool(r.engaged) for r in rows], dtype=np.int8)
    if labels.sum() == 0 or labels.all():
        return
    missing = [n for n in names if n not in rows[0].features]
    if missing:
        raise ValueError(f"impressions of request {rows[0].request_id} lack logged feature(s) {missing}; "
                         "they were served before those features existed: use --source feedback")
    keep = _sample(labels, np.flatnonzero(labels == 0), cfg.neg_ratio, rng)
    x = np.array([[float(r.features[n]) for n in names] for r in rows])
    items = np.array([r.item_id for r in rows])
    positions = np.array([r.position for r in rows])
    writer.write(int(rows[0].user_id), items[keep], x[keep], labels[keep], str(rows[0].request_id),
                 rows[0].served_at, positions[keep])
