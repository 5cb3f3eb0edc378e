"""Columnar dataset builds (``ranker dataset --engine polars``) and Parquet training data.

The feedback source of :mod:`ranker.rank.dataset`, computed over whole columns with Polars. It
writes the python builder's rows: the same lists, labels, sampled negatives (the same random
draws, in the same order), positions and features, to float rounding. Three stages:

1. **Lists** (Polars): the logged lists with each shown item's label from its outcomes, or,
   without logged lists, the window's view sessions.
2. **Base model** (Python, list by list, in the python builder's order): the base model as
   refitted for the list's moment says which shown items serving could have offered, their
   scores and the candidates' score range; then the negatives are sampled. The ensemble scales
   its scores over the items it is asked about, so this stays one call per list.
3. **Features** (Polars): recency from the catalogue; popularity, the item's CTR and the user's
   history by as-of joins on cumulative counts (events strictly before the list); diversity by
   counting, within each list, the items above that share attributes with each item.

Output is CSV (as the python builder writes it) or Parquet: a folder of files partitioned by
the day of ``event_time`` (``event_date=YYYY-MM-DD/part-0.parquet``), built under a temporary
name and renamed into place when complete. :func:`read_training_parquet` reads it back for
``ranker train``, refusing a missing column or a column of the wrong type.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, Text, and_, cast, select
from tqdm import tqdm

from ranker import config
from ranker.data.catalog import Catalog, load_catalog
from ranker.data.files import STALE_TEMP_SECONDS, atomic_open
from ranker.data.interactions import _gc_paused, _raw_time, _times, load_users
from ranker.data.schema import ORGANIC, Impression, Interaction, Outcome, ServedList
from ranker.faults import fault_point
from ranker.rank import dataset as ds
from ranker.rank.features import (
    HISTORY,
    LABEL_POSITIVE_KINDS,
    REGISTRY,
    feature_columns,
    needs_history,
    score_range,
)

log = logging.getLogger(__name__)
PARTITION = "event_date"
#: The features this engine computes; any other registered feature needs ``--engine python``.
COLUMNAR_FEATURES = ("model_score", "recency", "popularity", "diversity", *HISTORY, "user_affinity")
_US_PER_DAY = 86_400e6


def build(engine: Engine, cfg: ds.DatasetConfig, progress: ds.Progress | None = None, show_bar: bool = False,
          fitted_base=None) -> ds.DatasetSummary:
    """What :func:`ranker.rank.dataset.build_dataset` runs for the polars engine or Parquet output."""
    cfg = _resolve_paths(cfg)
    if cfg.format == "parquet":
        for path in (cfg.output, cfg.val_output):
            if path is not None:
                _check_replaceable(Path(path))
    if cfg.source == "feedback" and cfg.engine == "polars":
        unsupported = [n for n in REGISTRY if n not in COLUMNAR_FEATURES]
        if unsupported:
            raise ValueError(f"the polars engine does not compute feature(s) {', '.join(unsupported)}; "
                             "build with --engine python")
        return _from_feedback(engine, cfg, progress, show_bar, fitted_base)
    return _python_as_parquet(engine, cfg, progress, show_bar, fitted_base)


def _resolve_paths(cfg: ds.DatasetConfig) -> ds.DatasetConfig:
    """``cfg`` with, for Parquet, ``.csv`` outputs (the default's) renamed ``.parquet``."""
    if cfg.format == "csv":
        return cfg

    def renamed(p: Path | None) -> Path | None:
        return None if p is None else (Path(p).with_suffix(".parquet") if Path(p).suffix == ".csv" else Path(p))

    return replace(cfg, output=renamed(cfg.output), val_output=renamed(cfg.val_output))


# --- Stage 1: lists -------------------------------------------------------------------


def _fetch(engine: Engine, stmt, schema: dict[str, pl.DataType | None]) -> pl.DataFrame:  # noqa: ANN001
    """``stmt``'s rows as a Polars frame, read straight from the driver's cursor (no SQLAlchemy row
    objects: several times faster over millions of rows). A ``None`` dtype marks a time column,
    which becomes microseconds since 1970 (Int64) whatever the driver returns."""
    with _gc_paused(), engine.connect() as conn:
        rows = conn.execute(stmt).cursor.fetchall()
        frame = pl.DataFrame(rows, schema=list(schema.items()), orient="row", infer_schema_length=None)
    del rows
    times = [c for c, dtype in schema.items() if dtype is None]
    for c in times:
        if frame[c].dtype == pl.String:  # SQLite: ISO text
            try:
                parsed = frame[c].str.to_datetime(time_unit="us")
            except pl.exceptions.PolarsError:
                parsed = pl.Series(c, _times(frame[c].to_list()))
            frame = frame.with_columns(parsed.alias(c))
    return frame.with_columns(pl.col(times).cast(pl.Datetime("us")).cast(pl.Int64))


def _us(moment: datetime) -> int:
    """Microseconds since 1970 (naive UTC), as the frames hold times."""
    return int(np.datetime64(moment, "us").astype(np.int64))


def _load_events(engine: Engine, until: datetime | None = None, organic_only: bool = False) -> pl.DataFrame:
    """Interactions (before ``until``: in the order :func:`ranker.data.interactions.load_interactions`
    reads them) as user_id, item_id, kind, origin and t in microseconds."""
    t = Interaction.__table__.c
    stmt = select(t.user_id, t.item_id, t.kind, _raw_time(t.created_at), t.origin)
    if until is not None:
        stmt = stmt.where(t.created_at < until)
    if organic_only:
        stmt = stmt.where(t.origin == ORGANIC)
    return _fetch(engine, stmt, {"user_id": pl.Int64, "item_id": pl.Int64, "kind": pl.String, "t": None,
                                 "origin": pl.String})


def _feedback_window(engine: Engine, cfg: ds.DatasetConfig) -> tuple[datetime, datetime, pl.DataFrame]:
    """(start, end, the history the features read), refusing what
    :func:`ranker.rank.dataset._feedback_window` refuses. The guide's features count organic
    interactions only, so only those are read unless the history features need every event."""
    now = cfg.window_end or ds._clock(engine)
    start = cfg.window_start or now - timedelta(days=cfg.window_days)
    if start >= now:
        raise ValueError(f"empty dataset window: {start} is not before {now}")
    t = Interaction.__table__.c
    with engine.connect() as conn:
        if conn.execute(select(t.id).where(t.created_at < now).limit(1)).first() is None:
            raise ValueError("the database has no interactions; run `ranker demo init` or import data first")
        engaged = select(t.id).where(t.created_at >= start, t.created_at < now, t.kind.in_(LABEL_POSITIVE_KINDS))
        if conn.execute(engaged.limit(1)).first() is None:
            raise ValueError(f"no engagement ({', '.join(LABEL_POSITIVE_KINDS)}) in the last "
                             f"{cfg.window_days:g} days; widen --window-days or collect more feedback")
    # every event and then those before the end: a time range over nearly every row makes SQLite
    # read the table through its time index, several times slower than a plain scan
    history = _load_events(engine, organic_only=not needs_history())
    return start, now, history.filter(pl.col("t") < _us(now))


def _logged_frame(engine: Engine, start: datetime, end: datetime) -> pl.DataFrame:
    """One row per impression logged in [start, end) (trending lists left out), in served order,
    with its label (1 engaged, 0 looked at only, -1 not looked at) and list number ``lst``."""
    t = Impression.__table__.c
    in_window = and_(t.served_at >= start, t.served_at < end, t.model_version != config.TRENDING_FLOW)
    frame = _fetch(engine, select(t.id, t.request_id, t.user_id, t.item_id, t.position, _raw_time(t.served_at),
                                  cast(t.features, Text))
                   .where(in_window).order_by(t.served_at, t.request_id, t.position),
                   {"id": pl.Int64, "request_id": pl.String, "user_id": pl.Int64, "item_id": pl.Int64,
                    "position": pl.Int64, "when": None, "features": pl.String})
    outcomes = _fetch(engine, select(Outcome.impression_id, Outcome.kind)
                      .join(Impression, Impression.id == Outcome.impression_id).where(in_window),
                      {"id": pl.Int64, "kind": pl.String})
    labels = outcomes.group_by("id").agg(
        engaged=pl.col("kind").is_in(LABEL_POSITIVE_KINDS).any(), viewed=(pl.col("kind") == "view").any())
    frame = frame.join(labels, on="id", how="left", maintain_order="left")
    return frame.with_columns(
        label=pl.when(pl.col("engaged")).then(1).when(pl.col("viewed")).then(0).otherwise(-1).cast(pl.Int8),
        lst=(pl.col("request_id") != pl.col("request_id").shift()).fill_null(True).cum_sum(),
    ).drop("engaged", "viewed")


def _candidates(engine: Engine, start: datetime, end: datetime) -> dict[str, list[int]]:
    """The candidates each list of [start, end) was chosen from, by request id (when logged)."""
    with engine.connect() as conn:
        contexts = conn.execute(select(ServedList.request_id, ServedList.context).where(
            ServedList.served_at >= start, ServedList.served_at < end, ServedList.context.is_not(None)))
        return {r: c["candidates"] for r, c in contexts if isinstance(c, dict) and "candidates" in c}


def _session_frame(window: pl.DataFrame, gap_minutes: float) -> pl.DataFrame:
    """The window's view sessions as lists: per session (``lst``, numbered as the python builder
    numbers them), the viewed items in order of first view with their labels; only sessions with
    an engagement and at least two viewed items."""
    w = window.sort("user_id", "t", maintain_order=True).with_row_index("row")
    w = w.with_columns(lst=((pl.col("user_id") != pl.col("user_id").shift())
                            | ((pl.col("t") - pl.col("t").shift()) > gap_minutes * 60e6)).fill_null(True).cum_sum() - 1)
    first = w.group_by("lst").agg(pl.col("user_id").first(), when=pl.col("t").first())
    positive = w.filter(pl.col("kind").is_in(LABEL_POSITIVE_KINDS)).select("lst", "item_id").unique()
    shown = (w.filter(pl.col("kind") == "view").unique(["lst", "item_id"], keep="first", maintain_order=True)
             .select("lst", "item_id", "row"))
    shown = shown.join(positive.with_columns(label=pl.lit(1, pl.Int8)), on=["lst", "item_id"], how="left")
    shown = shown.with_columns(pl.col("label").fill_null(0))
    usable = (shown.group_by("lst").agg(n=pl.len())
              .join(positive.select("lst").unique(), on="lst", how="semi").filter(pl.col("n") >= 2))
    return (shown.join(usable.select("lst"), on="lst", how="semi").join(first, on="lst")
            .sort("lst", "row").drop("row"))


# --- Stage 2: the base model and the sampled rows, list by list ------------------------


@dataclass
class _Rows:
    """Stage 2's output, built list by list: per kept row (in output order) and per kept list.

    A recomputed list keeps every servable shown row (diversity reads the rows above), with
    ``picked`` marking the sampled ones; a list the ranker served keeps its picked rows only,
    with ``source``, their row in the impression frame (whose logged features they take).
    """

    rows: dict[str, list[np.ndarray]] = field(default_factory=lambda: {
        c: [] for c in ("lst", "item_id", "score", "position", "label", "picked", "source")})
    lists: dict[str, list] = field(default_factory=lambda: {
        c: [] for c in ("user_id", "when", "group_id", "lo", "hi", "logged")})

    def add(self, uid: int, when_us: int, group: str, items: np.ndarray, labels: np.ndarray, positions: np.ndarray,
            picked: np.ndarray, scores: np.ndarray | None = None, span: tuple[float, float] = (np.nan, np.nan),
            source: np.ndarray | None = None) -> None:
        n, r = len(items), self.rows
        r["lst"].append(np.full(n, len(self.lists["user_id"]), dtype=np.int64))
        r["item_id"].append(np.asarray(items, dtype=np.int64))
        r["score"].append(np.full(n, np.nan) if scores is None else np.asarray(scores, dtype=np.float64))
        r["position"].append(np.asarray(positions, dtype=np.int64))
        r["label"].append(np.asarray(labels, dtype=np.int8))
        r["picked"].append(np.asarray(picked, dtype=bool))
        r["source"].append(np.full(n, -1, dtype=np.int64) if source is None else np.asarray(source, dtype=np.int64))
        for name, value in zip(self.lists, (uid, when_us, group, *span, source is not None)):
            self.lists[name].append(value)

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(rows with their ``rank`` within the list, lists) as Polars frames."""
        dtypes = {"lst": np.int64, "item_id": np.int64, "score": np.float64, "position": np.int64,
                  "label": np.int8, "picked": bool, "source": np.int64}
        rows = pl.DataFrame({c: np.concatenate(v) if v else np.empty(0, dtypes[c]) for c, v in self.rows.items()})
        rows = rows.with_columns(rank=pl.int_range(pl.len()).over("lst"))
        lists = pl.DataFrame({"lst": np.arange(len(self.lists["user_id"]), dtype=np.int64),
                              "user_id": np.asarray(self.lists["user_id"], dtype=np.int64),
                              "when": np.asarray(self.lists["when"], dtype=np.int64),
                              "group_id": pl.Series(self.lists["group_id"], dtype=pl.String),
                              "lo": np.asarray(self.lists["lo"], dtype=np.float64),
                              "hi": np.asarray(self.lists["hi"], dtype=np.float64),
                              "logged": np.asarray(self.lists["logged"], dtype=bool)})
        return rows, lists


def _picked(n: int, rows: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[rows] = True
    return out


def _bounds(lst: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, lst[1:] != lst[:-1], True])


def _scan_logged(frame: pl.DataFrame, candidates: dict[str, list[int]], bases: ds._BaseSchedule,
                 cfg: ds.DatasetConfig, rng: np.random.Generator, tick: Callable[[int], None]) -> tuple[_Rows, int]:
    """:func:`ranker.rank.dataset._write_logged`'s choices for every logged list, in its order."""
    both = frame.group_by("lst").agg(((pl.col("label") == 1).any() & (pl.col("label") == 0).any()).alias("ok"))
    frame = frame.with_row_index("src").join(both.filter("ok").select("lst"), on="lst", how="semi",
                                             maintain_order="left")
    lst, req, users = frame["lst"].to_numpy(), frame["request_id"].to_numpy(), frame["user_id"].to_numpy()
    items, labels_all, when_all = frame["item_id"].to_numpy(), frame["label"].to_numpy(), frame["when"].to_numpy()
    positions_all, src, feats = frame["position"].to_numpy(), frame["src"].to_numpy(), frame["features"]
    out, skipped_unknown = _Rows(), 0
    bounds = _bounds(lst)
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        tick(n)
        request_id, uid, when_us = req[a], int(users[a]), int(when_all[a])
        shown, labels, shown_at = items[a:b], labels_all[a:b], positions_all[a:b]
        text = feats[int(a)]
        logged = text is not None and bool(json.loads(text))
        scores = span = None
        if not logged:
            when = ds._to_datetime(when_us)
            base = bases.at(when)
            if not base.knows_user(uid):
                skipped_unknown += 1
                continue
            keep = ds._servable(base, uid, shown)
            shown, labels, shown_at = shown[keep], labels[keep], shown_at[keep]
            cands = np.asarray(candidates.get(request_id, shown), dtype=np.int64)
            cands = cands[ds._servable(base, uid, cands)]
            scores = base.score(uid, shown).astype(np.float64)
            span = score_range(base.score(uid, cands)) if len(cands) else score_range(scores)
        labelled = labels >= 0
        if not (labels[labelled] == 1).any() or not (labels[labelled] == 0).any():
            continue
        rows = np.flatnonzero(labelled)
        pick = rows[ds._sample(labels[rows], np.flatnonzero(labels[rows] == 0), cfg.neg_ratio, rng)]
        if logged:  # served by the ranker: only the picked rows, with the features as served
            out.add(uid, when_us, str(request_id), shown[pick], labels[pick], shown_at[pick],
                    np.ones(len(pick), dtype=bool), source=src[a:b][pick])
        else:
            out.add(uid, when_us, str(request_id), shown, labels, shown_at, _picked(len(shown), pick), scores, span)
    return out, skipped_unknown


def _scan_sessions(sessions: pl.DataFrame, bases: ds._BaseSchedule, cfg: ds.DatasetConfig,
                   rng: np.random.Generator, tick: Callable[[int], None]) -> tuple[_Rows, int]:
    """:func:`ranker.rank.dataset._write_lists`'s choices for every usable view session, in its order."""
    lst, users, when_all = sessions["lst"].to_numpy(), sessions["user_id"].to_numpy(), sessions["when"].to_numpy()
    items, labels_all = sessions["item_id"].to_numpy(), sessions["label"].to_numpy()
    out, skipped_unknown = _Rows(), 0
    bounds = _bounds(lst)
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        tick(n)
        uid, when_us = int(users[a]), int(when_all[a])
        base = bases.at(ds._to_datetime(when_us))
        if not base.knows_user(uid):
            skipped_unknown += 1
            continue
        shown, labels = items[a:b], labels_all[a:b]
        servable = ds._servable(base, uid, shown)
        shown, labels, shown_at = shown[servable], labels[servable], np.flatnonzero(servable)
        negatives = np.flatnonzero(labels == 0)
        if labels.sum() == 0 or len(negatives) == 0:
            continue
        keep = ds._sample(labels, negatives, cfg.neg_ratio, rng)
        scores = base.score(uid, shown).astype(np.float64)
        out.add(uid, when_us, f"s{int(lst[a])}", shown, labels, shown_at, _picked(len(shown), keep), scores,
                score_range(scores))
    return out, skipped_unknown


# --- Stage 3: features -----------------------------------------------------------------


def _catalog_frame(catalog: Catalog) -> pl.DataFrame:
    return pl.DataFrame({
        "item_id": catalog.ids, "created": catalog.created.astype("datetime64[us]").astype(np.int64),
        "updated": catalog.updated.astype("datetime64[us]").astype(np.int64),
        "updated_null": np.isnat(catalog.updated),
        "category": pl.Series(catalog.category.tolist(), dtype=pl.String),
        "field": pl.Series(catalog.field.tolist(), dtype=pl.String),
        "type": pl.Series(catalog.type.tolist(), dtype=pl.String)})


def _cumulative(events: pl.DataFrame, by: list[str], values: dict[str, pl.Expr]) -> pl.DataFrame:
    """Per ``by`` key and moment ``t``, each value summed over the key's events at or before ``t``."""
    return (events.group_by([*by, "t"]).agg(**values).sort([*by, "t"])
            .with_columns(pl.col(list(values)).cum_sum().over(by)).sort("t"))


def _as_of(left: pl.DataFrame, right: pl.DataFrame, by: list[str], on_left: list[str] | None = None) -> pl.DataFrame:
    """``left`` (sorted by ``when``) with ``right``'s cumulative values as of strictly before each
    row's ``when`` (0 when the key has no earlier event)."""
    values = [c for c in right.columns if c not in (*by, "t")]
    joined = left.join_asof(right, left_on="when", right_on="t", by_left=on_left or by, by_right=by,
                            strategy="backward", allow_exact_matches=False, check_sortedness=False)
    return joined.drop("t").with_columns(pl.col(values).fill_null(0))


def _features(rows: pl.DataFrame, lists: pl.DataFrame, catalog: Catalog, users: pl.DataFrame,
              history: pl.DataFrame) -> pl.DataFrame:
    """(lst, rank, one column per registered feature) for ``rows`` of recomputed lists."""
    names = list(REGISTRY)
    x = (rows.join(lists.select("lst", "user_id", "when", "lo", "hi"), on="lst")
         .join(_catalog_frame(catalog), on="item_id", how="left").sort("when"))
    if x["created"].null_count():
        unknown = x.filter(pl.col("created").is_null())["item_id"].unique().head(5).to_list()
        raise ValueError(f"unknown item id(s): {unknown}")
    is_view = pl.col("kind") == "view"
    organic = history.filter(pl.col("origin") == ORGANIC)
    x = _as_of(x, _cumulative(organic, ["item_id"], {"views": is_view.sum(), "others": (~is_view).sum()}),
               ["item_id"])
    if set(names) & set(HISTORY):
        x = _with_history(x, history, catalog)
    if "user_affinity" in names:
        x = x.join(users.select(user_id="id", user_category="category"), on="user_id", how="left")
    when, lo, hi, s = pl.col("when"), pl.col("lo"), pl.col("hi"), pl.col("score")
    ref = (pl.when(~pl.col("updated_null") & (pl.col("updated") <= when))
           .then(pl.max_horizontal("created", "updated")).otherwise(pl.col("created")))
    age = (when - ref).cast(pl.Float64) / _US_PER_DAY
    exprs = {
        "model_score": pl.when(hi > lo).then(((s - lo) / (hi - lo)).clip(0.0, 1.0)).otherwise(1.0),
        "recency": (-age.clip(lower_bound=0.0) / config.RECENCY_DECAY_DAYS).exp(),
        "popularity": ((pl.col("views") + config.INTERACTION_POPULARITY_WEIGHT * pl.col("others") + 1.0).log()
                       / float(np.log(max(catalog.max_views, 2.0)))).clip(0.0, 1.0),
        "diversity": 1.0 - _most_shared() / 3.0,
        "user_affinity": (pl.col("category") == pl.col("user_category")).fill_null(False).cast(pl.Float64),
        **_history_exprs(),
    }
    return x.select("lst", "rank", *[exprs[n].alias(n) for n in names])


def _most_shared() -> pl.Expr:
    """The most attributes (category, field, type: 0 to 3) that an item above in the list shares
    with this one; 0 for the first item, whose diversity is 1 as nothing is placed above it."""
    def above(*key: str) -> pl.Expr:
        return pl.col("rank") > pl.col("rank").min().over(["lst", *key])

    return (pl.when(above("category", "field", "type")).then(3.0)
            .when(above("category", "field") | above("category", "type") | above("field", "type")).then(2.0)
            .when(above("category") | above("field") | above("type")).then(1.0).otherwise(0.0))


def _with_history(x: pl.DataFrame, history: pl.DataFrame, catalog: Catalog) -> pl.DataFrame:
    """``x`` (sorted by ``when``) with, as of strictly before each list, the user's summed weights
    (in all, and on the candidate's category, field and type), the user's latest event, and the
    item's views and engagements over every origin (see :class:`ranker.rank.features.UserHistory`)."""
    weight = (pl.when(pl.col("kind").is_in(config.ENGAGED_KINDS)).then(1.0)
              .when(pl.col("kind") == "view").then(config.HISTORY_VIEW_WEIGHT).otherwise(0.0))
    attrs = ("category", "field", "type")
    # UserHistory keys its sums by str(value), so a missing attribute matches as "None"
    known = (history.join(_catalog_frame(catalog).select("item_id", *attrs), on="item_id", how="inner")
             .with_columns(weight.alias("w"), *[pl.col(a).fill_null("None").alias(f"_{a}") for a in attrs]))
    x = x.with_columns(pl.col(a).fill_null("None").alias(f"_{a}") for a in attrs)
    x = _as_of(x, _cumulative(known, ["user_id"], {"total": pl.col("w").sum()}), ["user_id"])
    for a in attrs:
        x = _as_of(x, _cumulative(known, ["user_id", f"_{a}"], {f"mass_{a}": pl.col("w").sum()}),
                   ["user_id", f"_{a}"])
    latest = history.select("user_id", "t").unique().with_columns(last=pl.col("t")).sort("t")
    x = x.join_asof(latest, left_on="when", right_on="t", by="user_id", strategy="backward",
                    allow_exact_matches=False, check_sortedness=False).drop("t")
    is_view = pl.col("kind") == "view"
    return _as_of(x, _cumulative(history, ["item_id"], {"views_all": is_view.sum(), "engaged_all": (~is_view).sum()}),
                  ["item_id"])


def _history_exprs() -> dict[str, pl.Expr]:
    """The history features (:data:`ranker.rank.features.HISTORY`) over :func:`_with_history`'s columns."""
    prior = pl.col("total") + config.AFFINITY_PRIOR_WEIGHT
    a, m = config.ITEM_CTR_PRIOR_VIEWS, config.ITEM_CTR_PRIOR_MEAN
    days = (pl.col("when") - pl.col("last")).cast(pl.Float64) / _US_PER_DAY
    recency = (-days.clip(lower_bound=0.0) / config.USER_RECENCY_DAYS).exp()
    return {
        "category_affinity": pl.col("mass_category") / prior,
        "field_affinity": pl.col("mass_field") / prior,
        "type_affinity": pl.col("mass_type") / prior,
        "item_ctr": ((pl.col("engaged_all") + a * m) / (pl.col("views_all") + a)).clip(0.0, 1.0),
        "user_recency": pl.when(pl.col("last").is_null()).then(0.0).otherwise(recency),
    }


def _logged_features(rows: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    """(lst, rank, one column per feature) for rows of lists the ranker served: the features it logged."""
    names = list(REGISTRY)
    texts = frame["features"].gather(rows["source"].to_numpy())
    decoded = texts.str.json_decode(pl.Struct({n: pl.Float64 for n in names})).struct.unnest()
    missing = [n for n in names if decoded[n].null_count()]
    if missing:
        raise ValueError(f"logged lists lack the feature(s) {', '.join(missing)}; they were served before those "
                         "features existed: choose another --window-days or feature set")
    return pl.concat([rows.select("lst", "rank"), decoded], how="horizontal")


# --- The build -------------------------------------------------------------------------


class _Ticker:
    """The progress bar and callback over stage 2's lists."""

    def __init__(self, total: int, progress: ds.Progress | None, show_bar: bool):
        self.total, self.progress = total, progress
        self.bar = tqdm(total=total, desc="dataset", unit="list", disable=not show_bar)

    def __call__(self, n: int) -> None:
        self.bar.update(1)
        if self.progress and n % 2000 == 0:
            self.progress(0.1 + 0.8 * n / max(self.total, 1), f"list {n:,}/{self.total:,}")


def sample_lists(frame: pl.DataFrame, candidates: Callable[[], dict[str, list[int]]],
                 sessions: Callable[[], pl.DataFrame], bases: ds._BaseSchedule, cfg: ds.DatasetConfig,
                 progress: ds.Progress | None, show_bar: bool) -> _Rows:
    """Stage 2, on the driver, for every engine: the logged lists of ``frame`` (with the candidates
    ``candidates()`` reads), or without any, the view sessions ``sessions()`` gives, scored by the
    base model and sampled with one generator seeded by ``cfg.seed``, in the python builder's order."""
    rng = np.random.default_rng(cfg.seed)
    lists = frame if len(frame) else sessions()
    tick = _Ticker(int(lists["lst"].n_unique()), progress, show_bar)
    try:
        if len(frame):
            kept, skipped_unknown = _scan_logged(frame, candidates(), bases, cfg, rng, tick)
        else:  # no lists were logged (imported data): the views of a session are the list
            kept, skipped_unknown = _scan_sessions(lists, bases, cfg, rng, tick)
    finally:
        tick.bar.close()
    if skipped_unknown:
        log.info("skipped %d lists of users the base model does not know (served trending)", skipped_unknown)
    if progress:
        progress(0.9, "features")
    return kept


def assemble(rows: pl.DataFrame, lists: pl.DataFrame, frame: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """The sampled rows with their features: ``features`` (lst, rank, one column per feature) for the
    recomputed lists, the logged ones for lists the ranker served; ValueError without a positive."""
    parts = [features]
    served = rows.join(lists.filter("logged").select("lst"), on="lst", how="semi")
    if len(served):
        parts.append(_logged_features(served, frame))
    out = (rows.filter("picked").join(pl.concat(parts), on=["lst", "rank"])
           .join(lists.select("lst", "user_id", "when", "group_id"), on="lst").sort("lst", "rank"))
    if out["label"].sum() == 0:
        raise ValueError("no list in the window holds both engagement and a viewed-not-engaged item; "
                         "widen --window-days or collect more feedback")
    return out


def _from_feedback(engine: Engine, cfg: ds.DatasetConfig, progress: ds.Progress | None, show_bar: bool,
                   base=None) -> ds.DatasetSummary:
    start, now, history = _feedback_window(engine, cfg)
    bases = ds._BaseSchedule(engine, cfg.base_model, cfg.refit_days, start, progress, base)
    catalog = load_catalog(engine)
    users = pl.from_pandas(load_users(engine)).with_columns(pl.col("category").cast(pl.String))
    frame = _logged_frame(engine, start, now)

    def sessions() -> pl.DataFrame:
        # read as the python builder reads it (every event before the end, in database order), so
        # events at the same moment keep the same order
        window = _load_events(engine, now).filter(pl.col("t") >= _us(start))
        return _session_frame(window, cfg.session_gap_minutes)

    kept = sample_lists(frame, lambda: _candidates(engine, start, now), sessions, bases, cfg, progress, show_bar)
    rows, lists = kept.frames()
    recomputed = lists.filter(~pl.col("logged")).select("lst")
    out = assemble(rows, lists, frame,
                   _features(rows.join(recomputed, on="lst", how="semi"), lists, catalog, users, history))
    return _write(out, cfg, ds._val_start(start, now, cfg), "feedback", start, now)


def _output_frame(out: pl.DataFrame) -> pl.DataFrame:
    """The dataset's columns (:func:`ranker.rank.dataset.header`) with typed values."""
    cols = dict(zip(REGISTRY, feature_columns()))
    return out.select(
        "user_id", "item_id", *[pl.col(n).alias(c) for n, c in cols.items()], pl.col("label").cast(pl.Int64),
        "group_id", event_time=pl.from_epoch("when", "us").dt.truncate("1s").cast(pl.Datetime("us")),
        position=pl.col("position"))


def _write(out: pl.DataFrame, cfg: ds.DatasetConfig, val_from: datetime | None, source: str, start: datetime,
           end: datetime) -> ds.DatasetSummary:
    val = pl.lit(False) if val_from is None else pl.col("when") >= _us(val_from)
    parts = out.with_columns(val=val).partition_by("val", as_dict=True, include_key=False)
    empty = out.clear()
    train, held = parts.get((False,), empty), parts.get((True,), empty)
    write = _write_parquet if cfg.format == "parquet" else _write_csv
    write(train, Path(cfg.output))
    if cfg.val_output is not None:
        write(held, Path(cfg.val_output))

    def count(f: pl.DataFrame) -> tuple[int, int, int]:
        return len(f), int(f["label"].sum() or 0), int(f["lst"].n_unique())

    (rows, pos, groups), (v_rows, v_pos, _) = count(train), count(held)
    return ds.DatasetSummary(path=str(cfg.output), rows=rows, positives=pos, groups=groups, source=source,
                             val_path=str(cfg.val_output) if cfg.val_output else None, val_rows=v_rows,
                             val_positives=v_pos, window_start=start.isoformat(), window_end=end.isoformat())


def _write_csv(out: pl.DataFrame, path: Path) -> None:
    """As the python builder writes it (the same bytes, to float rounding), one list at a time."""
    frame = _output_frame(out).with_columns(pl.col("event_time").dt.strftime("%Y-%m-%dT%H:%M:%S"))
    buf = io.BytesIO()
    frame.write_csv(buf, float_precision=6, line_terminator="\r\n", include_header=False)
    data = buf.getbuffer()
    line_ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1
    list_ends = line_ends[_bounds(out["lst"].to_numpy())[1:] - 1] if len(out) else []
    with atomic_open(path, "wb") as fh:
        fh.write((",".join(ds.header()) + "\r\n").encode())
        a = 0
        for b in list_ends:
            fh.write(data[a:b])
            a = b
            fault_point("dataset:mid_write")


def _write_parquet(out: pl.DataFrame, path: Path) -> None:
    """A folder of Parquet files, one per day of ``event_time``, renamed into place when complete."""
    frame = _output_frame(out).with_columns(pl.col("label").cast(pl.Int8))
    _write_parquet_frame(frame.to_arrow(), path)


def _write_parquet_frame(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        days = pl.from_arrow(table.select(["event_time"]))["event_time"].dt.strftime("%Y-%m-%d")
        for day in sorted(days.unique().to_list()) or [None]:
            part = table if day is None else table.filter(pa.array((days == day).to_numpy()))
            folder = tmp if day is None else tmp / f"{PARTITION}={day}"
            folder.mkdir(exist_ok=True)
            pq.write_table(part, folder / "part-0.parquet")
            fault_point("dataset:mid_write")
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sweep_stale_folders(path)


def _check_replaceable(path: Path) -> None:
    """ValueError unless ``path`` is new, a file, or a folder holding a Parquet dataset only."""
    if path.is_dir() and any(not (p.suffix == ".parquet" or p.name.startswith(f"{PARTITION}="))
                             for p in path.iterdir()):
        raise ValueError(f"{path} is a folder that holds more than a Parquet dataset; give the output a new "
                         "path ending in .parquet")


def _replace_folder(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, moving an earlier dataset at ``path`` aside first and deleting it after."""
    _check_replaceable(path)
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(path, old)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _sweep_stale_folders(path: Path) -> None:
    """Remove what crashed writers of ``path`` left (``.<name>.*`` untouched for an hour)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for left in path.parent.glob(f".{path.name}.*"):
        try:
            if left.stat().st_mtime < cutoff:
                shutil.rmtree(left) if left.is_dir() else left.unlink()
        except FileNotFoundError:
            continue


def _python_as_parquet(engine: Engine, cfg: ds.DatasetConfig, progress: ds.Progress | None, show_bar: bool,
                       base=None) -> ds.DatasetSummary:
    """The python builder's rows (impressions source, or ``--engine python``), written as Parquet."""
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(cfg.output).name}.", dir=Path(cfg.output).parent) as tmp:
        csv_cfg = replace(cfg, engine="python", format="csv", output=Path(tmp) / "train.csv",
                          val_output=Path(tmp) / "val.csv" if cfg.val_output is not None else None)
        if cfg.source == "feedback":
            summary = ds._from_feedback(engine, csv_cfg, progress, show_bar, base)
        else:
            summary = ds._from_impressions(engine, csv_cfg, progress, show_bar)
        _write_parquet_frame(_read_built_csv(csv_cfg.output), Path(cfg.output))
        if cfg.val_output is not None:
            _write_parquet_frame(_read_built_csv(csv_cfg.val_output), Path(cfg.val_output))
    return replace(summary, path=str(cfg.output), val_path=str(cfg.val_output) if cfg.val_output else None)


def _read_built_csv(path: Path) -> pa.Table:
    schema = {"user_id": pl.Int64, "item_id": pl.Int64, **{c: pl.Float64 for c in feature_columns()},
              "label": pl.Int8, "group_id": pl.String, "event_time": pl.String, ds.POSITION_COLUMN: pl.Int64}
    frame = pl.read_csv(path, schema=schema)
    return frame.with_columns(pl.col("event_time").str.to_datetime("%Y-%m-%dT%H:%M:%S", time_unit="us")).to_arrow()


# --- Reading Parquet for training ------------------------------------------------------


def _expected_types() -> dict[str, tuple[str, Callable[[pa.DataType], bool]]]:
    t = pa.types
    integer = ("an integer", t.is_integer)
    number = ("a number", lambda d: t.is_integer(d) or t.is_floating(d) or t.is_decimal(d))
    return {"user_id": integer, "item_id": integer, "startup_id": integer,
            **{c: number for c in feature_columns()}, "label": number, ds.POSITION_COLUMN: integer,
            "group_id": ("a string or an integer", lambda d: t.is_string(d) or t.is_large_string(d) or t.is_integer(d)),
            "event_time": ("a timestamp or an ISO 8601 string",
                           lambda d: t.is_timestamp(d) or t.is_date(d) or t.is_string(d) or t.is_large_string(d))}


def read_training_parquet(path: str | Path) -> pa.Table:
    """The columns of a Parquet dataset (a ``.parquet`` file, or a folder of them as ``ranker dataset
    --format parquet`` writes), without the day partition; :class:`ranker.rank.train.DataError` when
    it is missing, unreadable, lacks a column training needs, or holds a column of the wrong type."""
    from ranker.rank.stream import open_training_parquet
    from ranker.rank.train import DataError as ParquetDataError

    data = open_training_parquet(path)  # refuses a missing path, an unreadable file, a missing or mistyped column
    schema = data.schema
    keep = [c for c in schema.names if c != PARTITION]
    try:
        return data.to_table(columns=keep)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ParquetDataError(f"{path} is not a readable Parquet dataset: {str(exc).splitlines()[0]}") from None


def read_parquet_frame(path: str | Path):  # noqa: ANN201 - a pandas DataFrame (pandas imported lazily)
    """A Parquet dataset as :func:`ranker.rank.train.load_dataset` reads a CSV: every column as
    text, so the same checks (ranges, NaN, labels, times) apply to both."""
    table = read_training_parquet(path)
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("us", col.type.tz))
        columns[name] = col.cast(pa.string()).fill_null("")
    return pa.table(columns).to_pandas()
