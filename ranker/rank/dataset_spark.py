"""Spark dataset builds (``ranker dataset --engine spark [--master URL]``).

The polars engine's rows (:mod:`ranker.rank.dataset_columnar`), and so the python builder's, built
with PySpark where the log is big: the same lists, labels, sampled negatives, positions and
features, to float rounding. The three stages, and where each runs:

1. **Lists** (Spark): the window's logged impressions joined with their outcomes into labels,
   or, without logged lists, the window's interactions cut into view sessions with window
   functions (a new session after ``session_gap_minutes`` without an event). The lists are then
   collected to the driver, one row per shown item.
2. **Base model and sampling** (the driver, in Python): :func:`ranker.rank.dataset_columnar._scan_logged`
   / ``_scan_sessions`` walk the lists in the python builder's order, scoring each with the base
   model as refitted for its moment and drawing the negatives from one random generator, so the
   draws come in the same order and give the same rows. **This stage does not distribute yet**:
   on a cluster it is the driver's work, over the lists only (a few hundred thousand rows for
   millions of interactions). Distributing it means broadcasting the fitted base models and
   drawing per partition with per-list seeds, which changes the sampled rows.
3. **Features** (Spark): recency from the catalogue; popularity, the item's CTR and the user's
   history as of strictly before each list, by window sums over the union of the events and the
   rows, partitioned by item or user and ordered by time (``rangeBetween(unbounded, -1)`` on
   microseconds is "strictly before"); diversity by window minima within each list. The
   features of lists the ranker served are the ones it logged (read on the driver).

Spark reads the log (interactions, impressions, outcomes, served lists) over JDBC when the
database is PostgreSQL, or from Parquet: a folder of exports (``--from-parquet DIR``, the
layout :func:`export_tables` writes), which is also what a SQLite database is turned into first.
The database still gives the clock, the catalogue, the users and the base models' fits. No
Python runs on the executors (no UDFs), so a cluster needs only Spark and, for JDBC, the
PostgreSQL driver jar. The rows are collected to the driver and written as the other engines
write them (CSV, or Parquet partitioned by day), under a temporary name renamed into place.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from sqlalchemy import Engine, Text, cast, func, select

from ranker import config
from ranker.data.catalog import load_catalog
from ranker.data.interactions import _raw_time, load_users
from ranker.data.schema import ORGANIC, Impression, Interaction, Outcome, ServedList
from ranker.errors import RankerError
from ranker.rank import dataset as ds
from ranker.rank import dataset_columnar as dc
from ranker.rank.features import HISTORY, LABEL_POSITIVE_KINDS, REGISTRY

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)
#: Spark's master when neither ``--master`` nor an active session says: every core of this machine.
DEFAULT_MASTER = "local[*]"
#: The PostgreSQL JDBC driver Spark fetches (through its Ivy resolver, from ~/.m2 or Maven Central)
#: when no jar is found on this machine.
PG_JDBC_PACKAGE = "org.postgresql:postgresql:42.7.4"
#: Where a PostgreSQL JDBC jar may already be: Debian's libpostgresql-jdbc-java, then Maven's cache.
PG_JDBC_JARS = ("/usr/share/java/postgresql.jar", "~/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar")
#: The log tables Spark reads, each with the columns it needs (times as naive-UTC timestamps, or
#: int64 microseconds since 1970).
TABLES = {
    "interactions": ("id", "user_id", "item_id", "kind", "origin", "created_at"),
    "impressions": ("id", "request_id", "user_id", "item_id", "position", "served_at", "model_version", "features"),
    "outcomes": ("impression_id", "kind"),
    "served_lists": ("request_id", "served_at", "context"),
}
_TIME = {"interactions": "created_at", "impressions": "served_at", "served_lists": "served_at"}
_US_PER_DAY = 86_400e6


# --- The session and the log's source ----------------------------------------------------


class SparkUnavailable(RankerError, RuntimeError):
    """Java or PySpark is missing here; the message says what to install."""


def _pyspark():  # noqa: ANN202 - the pyspark.sql module
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SparkUnavailable("the spark engine needs Java 17 or later (`java` is not on PATH and JAVA_HOME is "
                           "unset): install a JRE (e.g. `apt-get install default-jre-headless`) or use "
                           "--engine polars")
    try:
        import pyspark.sql
    except ImportError:
        raise SparkUnavailable("the spark engine needs PySpark: `pip install 'ranker[spark]'` (or use --engine "
                           "polars)") from None
    return pyspark.sql


def _pg_jars() -> list[str]:
    """Local PostgreSQL JDBC jars (the newest of Maven's cache), if any."""
    for pattern in PG_JDBC_JARS:
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if found:
            return [found[-1]]
    return []


def spark_session(master: str | None = None, jdbc: bool = False) -> SparkSession:
    """The active Spark session, or a new one on ``master`` (default :data:`DEFAULT_MASTER`).

    A new session keeps times in UTC (the database's naive times are UTC), runs no web UI nor
    console progress bars and, with ``jdbc``, has the PostgreSQL JDBC driver on its classpath (a
    local jar, else the package fetched through Spark's resolver). In local mode it shuffles into
    two partitions per core, not Spark's 200. Other settings (memory, executors) come from
    ``spark-defaults.conf`` or ``PYSPARK_SUBMIT_ARGS`` as usual.
    """
    sql = _pyspark()
    active = sql.SparkSession.getActiveSession()
    if active is not None:
        if master and active.sparkContext.master != master:
            log.warning("using the active Spark session on %s, not --master %s", active.sparkContext.master, master)
        return active
    utc, master = "-Duser.timezone=UTC", master or DEFAULT_MASTER
    builder = (sql.SparkSession.builder.appName("ranker-dataset").master(master)
               .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.extraJavaOptions", utc).config("spark.executor.extraJavaOptions", utc))
    if master.startswith("local"):
        builder = builder.config("spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 1)))
    if jdbc:
        jars = _pg_jars()
        builder = builder.config("spark.jars", ",".join(jars)) if jars else \
            builder.config("spark.jars.packages", PG_JDBC_PACKAGE)
    return builder.getOrCreate()


def export_tables(engine: Engine, folder: str | Path) -> Path:
    """Write the log tables Spark reads (:data:`TABLES`) as ``folder/<table>.parquet``, one file
    each, times as naive-UTC timestamps (microseconds). Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = {"interactions": Interaction, "impressions": Impression, "outcomes": Outcome,
              "served_lists": ServedList}
    types: dict[str, pl.DataType | None] = {
        "id": pl.Int64, "user_id": pl.Int64, "item_id": pl.Int64, "position": pl.Int64, "impression_id": pl.Int64,
        "kind": pl.String, "origin": pl.String, "request_id": pl.String, "model_version": pl.String,
        "features": pl.String, "context": pl.String}
    for table, columns in TABLES.items():
        c = models[table].__table__.c
        exprs = [_raw_time(c[n]) if n in _TIME.values() else cast(c[n], Text) if n in ("features", "context")
                 else c[n] for n in columns]
        frame = dc._fetch(engine, select(*exprs), {n: None if n in _TIME.values() else types[n] for n in columns})
        times = [n for n in columns if n in _TIME.values()]
        frame.with_columns(pl.col(times).cast(pl.Datetime("us"))).write_parquet(folder / f"{table}.parquet")
    return folder


class _Source:
    """The log tables as Spark frames with :data:`TABLES`' columns, the time column replaced by ``t``:
    microseconds since 1970, from a naive-UTC timestamp (read in the session's UTC) or an integer
    column that already holds them."""

    def __init__(self, spark: SparkSession, engine: Engine, parquet: Path | None):
        self.spark, self.engine, self.parquet = spark, engine, parquet

    def table(self, name: str) -> DataFrame:
        from pyspark.sql import functions as F  # noqa: N812

        if self.parquet is not None:
            path = self.parquet / f"{name}.parquet"
            if not path.exists():
                raise ValueError(f"{path} does not exist; write the log's Parquet exports with "
                                 "ranker.rank.dataset_spark.export_tables, or drop --from-parquet")
            frame = self.spark.read.parquet(str(path))
        else:
            frame = self._jdbc(name)
        missing = [c for c in TABLES[name] if c not in frame.columns]
        if missing:
            raise ValueError(f"the {name} table Spark read lacks column(s) {', '.join(missing)}; "
                             f"export it again with ranker.rank.dataset_spark.export_tables")
        frame = frame.select(*TABLES[name])
        if name in _TIME:
            when = _TIME[name]
            integer = frame.schema[when].dataType.typeName() in ("long", "integer")
            t = F.col(when).cast("long") if integer else F.unix_micros(F.col(when).cast("timestamp"))
            frame = frame.withColumn("t", t).drop(when)
        return frame

    def _jdbc(self, name: str) -> DataFrame:
        url = self.engine.url
        if url.get_backend_name() != "postgresql":
            raise ValueError(f"Spark reads {url.get_backend_name()} databases from Parquet exports only; "
                             "drop --from-parquet to have them written first")
        columns = ", ".join(f"CAST({c} AS TEXT) AS {c}" if c in ("features", "context") else c for c in TABLES[name])
        reader = (self.spark.read.format("jdbc").option("driver", "org.postgresql.Driver")
                  .option("url", f"jdbc:postgresql://{url.host or 'localhost'}:{url.port or 5432}/{url.database}")
                  .option("dbtable", f"(SELECT {columns} FROM {name}) AS t").option("fetchsize", "10000"))
        if url.username:
            reader = reader.option("user", url.username)
        if url.password:
            reader = reader.option("password", url.password)
        if name == "interactions":  # the big one: read in id ranges, in parallel
            with self.engine.connect() as conn:
                lo, hi = conn.execute(select(func.min(Interaction.id), func.max(Interaction.id))).one()
            if lo is not None and hi > lo:
                parts = max(self.spark.sparkContext.defaultParallelism, 1) * 2
                reader = (reader.option("partitionColumn", "id").option("lowerBound", str(lo))
                          .option("upperBound", str(hi + 1)).option("numPartitions", str(parts)))
        return reader.load()


# --- The build ------------------------------------------------------------------------


def build(engine: Engine, cfg: ds.DatasetConfig, progress: ds.Progress | None = None, show_bar: bool = False,
          fitted_base=None, spark: SparkSession | None = None) -> ds.DatasetSummary:
    """What :func:`ranker.rank.dataset.build_dataset` runs for ``engine="spark"`` (feedback source).

    ``spark``: the session to use (default: the active one, else a new one on ``cfg.spark_master``).
    ``cfg.spark_input``: a folder of the log's Parquet exports to read instead of the database.
    """
    if cfg.source != "feedback":
        raise ValueError("the spark engine builds the feedback source; build --source impressions with "
                         "--engine polars or python")
    unsupported = [n for n in REGISTRY if n not in dc.COLUMNAR_FEATURES]
    if unsupported:
        raise ValueError(f"the spark engine does not compute feature(s) {', '.join(unsupported)}; "
                         "build with --engine python")
    cfg = dc._resolve_paths(cfg)
    if cfg.format == "parquet":
        for path in (cfg.output, cfg.val_output):
            if path is not None:
                dc._check_replaceable(Path(path))
    parquet = Path(cfg.spark_input) if cfg.spark_input is not None else None
    postgres = engine.url.get_backend_name() == "postgresql"
    spark = spark or spark_session(cfg.spark_master, jdbc=parquet is None and postgres)
    if parquet is not None or postgres:
        return _build(engine, cfg, _Source(spark, engine, parquet), progress, show_bar, fitted_base)
    with tempfile.TemporaryDirectory(prefix=".ranker-spark-") as tmp:  # SQLite: through Parquet exports
        if progress:
            progress(0.01, "exporting the log to Parquet for Spark")
        source = _Source(spark, engine, export_tables(engine, tmp))
        return _build(engine, cfg, source, progress, show_bar, fitted_base)


def _build(engine: Engine, cfg: ds.DatasetConfig, source: _Source, progress: ds.Progress | None, show_bar: bool,
           base=None) -> ds.DatasetSummary:
    from pyspark.sql import functions as F  # noqa: N812

    now = cfg.window_end or ds._clock(engine)
    start = cfg.window_start or now - timedelta(days=cfg.window_days)
    if start >= now:
        raise ValueError(f"empty dataset window: {start} is not before {now}")
    start_us, now_us = dc._us(start), dc._us(now)
    events = source.table("interactions")
    history = events.where(F.col("t") < now_us)
    if history.limit(1).count() == 0:
        raise ValueError("the database has no interactions; run `ranker demo init` or import data first")
    window = history.where(F.col("t") >= start_us)
    if window.where(F.col("kind").isin(*LABEL_POSITIVE_KINDS)).limit(1).count() == 0:
        raise ValueError(f"no engagement ({', '.join(LABEL_POSITIVE_KINDS)}) in the last "
                         f"{cfg.window_days:g} days; widen --window-days or collect more feedback")
    if not any(n in HISTORY for n in REGISTRY):
        history = history.where(F.col("origin") == ORGANIC)  # popularity counts organic events only
    bases = ds._BaseSchedule(engine, cfg.base_model, cfg.refit_days, start, progress, base)
    catalog = load_catalog(engine)
    frame = _logged_frame(source, start_us, now_us)
    if progress:
        progress(0.05, "lists")
    kept = dc.sample_lists(frame, lambda: _candidates(source, start_us, now_us),
                           lambda: _session_frame(window, cfg.session_gap_minutes), bases, cfg, progress, show_bar)
    rows, lists = kept.frames()
    users = pl.from_pandas(load_users(engine)).with_columns(pl.col("category").cast(pl.String))
    recomputed = lists.filter(~pl.col("logged")).select("lst")
    out = dc.assemble(rows, lists, frame, _features(source.spark, rows.join(recomputed, on="lst", how="semi"), lists,
                                                    catalog, users, history))
    return dc._write(out, cfg, ds._val_start(start, now, cfg), "feedback", start, now)


# --- Stage 1: lists (Spark) -------------------------------------------------------------


def _collect(frame: DataFrame) -> pl.DataFrame:
    return pl.from_arrow(frame.toArrow())


def _logged_frame(source: _Source, start_us: int, end_us: int) -> pl.DataFrame:
    """:func:`ranker.rank.dataset_columnar._logged_frame`'s frame: one row per impression logged in
    the window (trending lists left out) in served order, with its label and list number ``lst``."""
    from pyspark.sql import functions as F  # noqa: N812

    imp = source.table("impressions").where((F.col("t") >= start_us) & (F.col("t") < end_us)
                                            & (F.col("model_version") != config.TRENDING_FLOW))
    outcomes = source.table("outcomes").join(imp.select(F.col("id").alias("impression_id")), "impression_id")
    labels = outcomes.groupBy(F.col("impression_id").alias("id")).agg(
        F.max(F.col("kind").isin(*LABEL_POSITIVE_KINDS)).alias("engaged"),
        F.max(F.col("kind") == "view").alias("viewed"))
    label = F.when(F.col("engaged"), 1).when(F.col("viewed"), 0).otherwise(-1).cast("byte")
    joined = imp.join(labels, "id", "left").select(
        "id", "request_id", "user_id", "item_id", "position", F.col("t").alias("when"), "features",
        label.alias("label"))
    frame = _collect(joined)
    if frame.is_empty():
        return frame
    frame = frame.sort("when", "request_id", "position")
    return frame.with_columns(lst=(pl.col("request_id") != pl.col("request_id").shift()).fill_null(True).cum_sum())


def _candidates(source: _Source, start_us: int, end_us: int) -> dict[str, list[int]]:
    """The candidates each list of the window was chosen from, by request id (when logged)."""
    from pyspark.sql import functions as F  # noqa: N812

    lists = source.table("served_lists").where((F.col("t") >= start_us) & (F.col("t") < end_us)
                                               & F.col("context").isNotNull())
    parsed = lists.select("request_id", F.from_json("context", "candidates array<bigint>").alias("c"))
    got = _collect(parsed.where(F.col("c.candidates").isNotNull())
                   .select("request_id", F.col("c.candidates").alias("candidates")))
    return dict(zip(got["request_id"].to_list(), got["candidates"].to_list(), strict=True))


def _session_frame(window: DataFrame, gap_minutes: float) -> pl.DataFrame:
    """:func:`ranker.rank.dataset_columnar._session_frame`'s lists from the window's interactions:
    events sorted by (user, time, id) and cut where a user changes or ``gap_minutes`` pass without
    an event, numbered over all sessions in that order; only sessions with an engagement and at
    least two viewed items, each viewed item once (at its first view) with its label."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    by_user = Window.partitionBy("user_id").orderBy("t", "id")
    gap = F.col("t") - F.lag("t").over(by_user)
    w = window.withColumn("new", F.when(gap.isNull() | (gap > gap_minutes * 60e6), 1).otherwise(0))
    w = w.withColumn("s", F.sum("new").over(by_user.rowsBetween(Window.unboundedPreceding, 0)) - 1)
    # each user's sessions are numbered after those of every user with a smaller id
    counts = w.groupBy("user_id").agg((F.max("s") + 1).alias("n"))
    before = Window.orderBy("user_id").rowsBetween(Window.unboundedPreceding, -1)
    offsets = counts.select("user_id", F.coalesce(F.sum("n").over(before), F.lit(0)).alias("offset"))
    w = w.join(offsets, "user_id").withColumn("lst", F.col("offset") + F.col("s"))
    first = w.groupBy("lst").agg(F.first("user_id").alias("user_id"), F.min("t").alias("when"))
    positive = w.where(F.col("kind").isin(*LABEL_POSITIVE_KINDS)).select("lst", "item_id").distinct()
    shown = (w.where(F.col("kind") == "view").groupBy("lst", "item_id")
             .agg(F.min(F.struct("t", "id")).alias("first_view")))
    shown = (shown.join(positive.withColumn("label", F.lit(1).cast("byte")), ["lst", "item_id"], "left")
             .fillna(0, ["label"]))
    usable = (shown.groupBy("lst").count().where(F.col("count") >= 2).select("lst")
              .join(positive.select("lst").distinct(), "lst"))
    out = shown.join(usable, "lst").join(first, "lst")
    frame = _collect(out.select("lst", "item_id", "label", "user_id", "when",
                                F.col("first_view.t").alias("_t"), F.col("first_view.id").alias("_id")))
    return frame.sort("lst", "_t", "_id").drop("_t", "_id")


# --- Stage 3: features (Spark) ----------------------------------------------------------


def _as_of(x: DataFrame, events: DataFrame, keys: list[str], values: dict[str, Column], how: str = "sum") -> DataFrame:
    """(lst, rank, one column per ``values``) for the rows of ``x`` (keyed by ``lst``, ``rank``, with
    ``keys`` and ``when``): each value summed (or, with ``how="max"``, maximised) over ``events`` (with
    ``keys`` and ``t``) of the same keys strictly before the row's ``when``. One window over the union
    of both, partitioned by the keys and ordered by time, reaching up to 1 µs before the row (0, or
    null for a maximum, when there is none)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    names = list(values)
    agg = F.sum if how == "sum" else F.max
    ev = events.groupBy(*keys, "t").agg(*[agg(v).alias(n) for n, v in values.items()])
    ev = ev.select(*keys, "t", *names, F.lit(None).cast("long").alias("lst"), F.lit(None).cast("long").alias("rank"))
    rows = x.select(*keys, F.col("when").alias("t"), *[F.lit(None).cast(ev.schema[n].dataType).alias(n)
                                                       for n in names], "lst", "rank")
    before = Window.partitionBy(*keys).orderBy("t").rangeBetween(Window.unboundedPreceding, -1)
    both = ev.unionByName(rows).select("lst", "rank", *[agg(n).over(before).alias(n) for n in names])
    got = both.where(F.col("lst").isNotNull())
    return got.fillna(0, names) if how == "sum" else got


def _features(spark: SparkSession, rows: pl.DataFrame, lists: pl.DataFrame, catalog, users: pl.DataFrame,  # noqa: ANN001
              history: DataFrame) -> pl.DataFrame:
    """(lst, rank, one column per registered feature) for the picked ``rows`` of recomputed lists,
    computed in Spark over every row of those lists (diversity reads the rows above)."""
    from pyspark.sql import functions as F  # noqa: N812

    names = list(REGISTRY)
    if rows.is_empty():
        return pl.DataFrame(schema={"lst": pl.Int64, "rank": pl.Int64, **{n: pl.Float64 for n in names}})
    items = spark.createDataFrame(dc._catalog_frame(catalog).to_arrow())
    x = spark.createDataFrame(rows.with_columns(pl.col("rank").cast(pl.Int64))
                              .join(lists.select("lst", "user_id", "when", "lo", "hi"), on="lst").to_arrow())
    x = x.join(F.broadcast(items), "item_id", "left").persist()
    unknown = x.where(F.col("created").isNull()).select("item_id").distinct().limit(5).collect()
    if unknown:
        raise ValueError(f"unknown item id(s): {[r.item_id for r in unknown]}")
    is_view = F.col("kind") == "view"
    organic = history.where(F.col("origin") == ORGANIC)
    counts = [_as_of(x, organic, ["item_id"], {"views": is_view.cast("long"), "others": (~is_view).cast("long")})]
    if set(names) & set(HISTORY):
        x = x.select("*", *[F.coalesce(F.col(a), F.lit("None")).alias(f"_{a}") for a in ("category", "field", "type")])
        counts += _with_history(x, history, items)
    for got in counts:
        x = x.join(got, ["lst", "rank"])
    x = x.repartition("lst")  # every window below is within a list: one shuffle, not one per window
    if "user_affinity" in names:
        user_cats = spark.createDataFrame(users.select(user_id="id", user_category="category").to_arrow())
        x = x.join(F.broadcast(user_cats), "user_id", "left")
    when, lo, hi, s = F.col("when"), F.col("lo"), F.col("hi"), F.col("score")
    ref = (F.when(~F.col("updated_null") & (F.col("updated") <= when), F.greatest("created", "updated"))
           .otherwise(F.col("created")))
    age = (when - ref).cast("double") / _US_PER_DAY
    exprs = {
        "model_score": F.when(hi > lo, _clip((s - lo) / (hi - lo))).otherwise(1.0),
        "recency": F.exp(-F.greatest(age, F.lit(0.0)) / config.RECENCY_DECAY_DAYS),
        "popularity": _clip(F.log(F.col("views") + config.INTERACTION_POPULARITY_WEIGHT * F.col("others") + 1.0)
                            / float(np.log(max(catalog.max_views, 2.0)))),
        "diversity": 1.0 - _most_shared() / 3.0,
        "user_affinity": F.coalesce(F.col("category") == F.col("user_category"), F.lit(False)).cast("double"),
        **_history_exprs(),
    }
    picked = x.select("*", *[exprs[n].cast("double").alias(f"_f_{n}") for n in names]).where(F.col("picked"))
    try:
        return _collect(picked.select("lst", "rank", *[F.col(f"_f_{n}").alias(n) for n in names]))
    finally:
        x.unpersist()


def _clip(col: Column, lower: float = 0.0, upper: float = 1.0) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    return F.least(F.greatest(col, F.lit(lower)), F.lit(upper))


def _most_shared() -> Column:
    """The most attributes (0 to 3) an item above in the list shares with this one (see
    :func:`ranker.rank.dataset_columnar._most_shared`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    def above(*key: str) -> Column:
        return F.col("rank") > F.min("rank").over(Window.partitionBy("lst", *key))

    return (F.when(above("category", "field", "type"), 3.0)
            .when(above("category", "field") | above("category", "type") | above("field", "type"), 2.0)
            .when(above("category") | above("field") | above("type"), 1.0).otherwise(0.0))


def _with_history(x: DataFrame, history: DataFrame, items: DataFrame) -> list[DataFrame]:
    """(lst, rank, values) frames for the rows of ``x`` (with the candidate's ``_category``,
    ``_field``, ``_type``): the user's summed weights before each list (in all, and on the
    candidate's category, field and type), the user's latest event, and the item's views and
    engagements over every origin (see :func:`ranker.rank.dataset_columnar._with_history`)."""
    from pyspark.sql import functions as F  # noqa: N812

    kind = F.col("kind")
    weight = (F.when(kind.isin(*config.ENGAGED_KINDS), 1.0).when(kind == "view", config.HISTORY_VIEW_WEIGHT)
              .otherwise(0.0))
    attrs = ("category", "field", "type")
    known = (history.join(F.broadcast(items.select("item_id", *attrs)), "item_id")
             .select("user_id", "item_id", "kind", "t", weight.alias("w"),
                     *[F.coalesce(F.col(a), F.lit("None")).alias(f"_{a}") for a in attrs]))
    is_view = F.col("kind") == "view"
    return [_as_of(x, known, ["user_id"], {"total": F.col("w")}),
            *[_as_of(x, known, ["user_id", f"_{a}"], {f"mass_{a}": F.col("w")}) for a in attrs],
            _as_of(x, history, ["user_id"], {"last": F.col("t")}, how="max"),
            _as_of(x, history, ["item_id"], {"views_all": is_view.cast("long"),
                                             "engaged_all": (~is_view).cast("long")})]


def _history_exprs() -> dict[str, Column]:
    from pyspark.sql import functions as F  # noqa: N812

    prior = F.col("total") + config.AFFINITY_PRIOR_WEIGHT
    a, m = config.ITEM_CTR_PRIOR_VIEWS, config.ITEM_CTR_PRIOR_MEAN
    days = (F.col("when") - F.col("last")).cast("double") / _US_PER_DAY
    return {
        "category_affinity": F.col("mass_category") / prior,
        "field_affinity": F.col("mass_field") / prior,
        "type_affinity": F.col("mass_type") / prior,
        "item_ctr": _clip((F.col("engaged_all") + a * m) / (F.col("views_all") + a)),
        "user_recency": F.when(F.col("last").isNull(), 0.0)
        .otherwise(F.exp(-F.greatest(days, F.lit(0.0)) / config.USER_RECENCY_DAYS)),
    }

