"""The relational schema (SQLAlchemy 2 ORM).

Observable platform data only. The synthetic world's hidden ground truth lives in
:mod:`ranker.sim.truth`, apart from everything here, so no feature, dataset or model
code can reach it by accident.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    role: Mapped[str] = mapped_column(String(20), index=True)  # developer|investor|founder|user
    # Declared profile attributes, as a platform would collect them at sign-up.
    category: Mapped[str | None] = mapped_column(String(60))
    field: Mapped[str | None] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_type: Mapped[str] = mapped_column(String(20), index=True)  # startup|developer|investor|item
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(60))
    field: Mapped[str] = mapped_column(String(60))
    type: Mapped[str] = mapped_column(String(60))
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    #: Denormalised total of view interactions; features use as-of counts instead.
    views: Mapped[int] = mapped_column(Integer, default=0)


#: Where an interaction came from. ``organic``: the platform's own events (a user found the
#: item by themselves), imports, and history not shown in a served list. ``impression``: an
#: outcome of a served list (a view, click or feedback on an impression), written along with
#: its ``outcomes`` row. The popularity feature counts organic interactions only.
ORGANIC = "organic"
IMPRESSION = "impression"
ORIGINS = (ORGANIC, IMPRESSION)


class Interaction(Base):
    __tablename__ = "interactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # see config.INTERACTION_KINDS
    created_at: Mapped[datetime] = mapped_column(DateTime)
    #: Explicit rating where the source has one (imports); None for the platform.
    rating: Mapped[float | None] = mapped_column(Float)
    #: ``organic`` or ``impression`` (see :data:`ORIGINS`).
    origin: Mapped[str] = mapped_column(String(12), default=ORGANIC, server_default=ORGANIC)

    __table_args__ = (
        Index("ix_interactions_user_time", "user_id", "created_at"),
        Index("ix_interactions_item_time", "item_id", "created_at"),
        Index("ix_interactions_time", "created_at"),
        # covers the per-item view/other counts serving computes at start-up
        Index("ix_interactions_item_kind_time", "item_id", "kind", "created_at"),
    )


#: Impressions that are ranker training data: neither trending lists nor the legacy feed
#: (``ranker.rank.dataset.NOT_RANKER_DATA``), the condition of a partial index.
_RANKER_DATA = text("model_version NOT IN ('trending', 'legacy')")


class Impression(Base):
    """One item in one served list."""

    __tablename__ = "impressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(40), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    flow: Mapped[str] = mapped_column(String(40))
    arm: Mapped[str] = mapped_column(String(20))
    position: Mapped[int] = mapped_column(Integer)  # 0-based
    score: Mapped[float | None] = mapped_column(Float)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(60))
    served_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_impressions_served", "served_at", "arm", "flow"),
        # migration 0009: the item foreign key's cascade on delete, and the dataset builder's served span
        Index("ix_impressions_item", "item_id"),
        Index("ix_impressions_ranker_served", "served_at", sqlite_where=_RANKER_DATA, postgresql_where=_RANKER_DATA),
    )


class ServedList(Base):
    """One served list: its arm and list-level diversity and freshness, for SQL aggregation."""

    __tablename__ = "served_lists"

    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    flow: Mapped[str] = mapped_column(String(40))
    arm: Mapped[str] = mapped_column(String(20))
    k: Mapped[int] = mapped_column(Integer)
    reranked: Mapped[bool] = mapped_column(Boolean)
    model_version: Mapped[str] = mapped_column(String(60))
    served_at: Mapped[datetime] = mapped_column(DateTime)
    ild: Mapped[float] = mapped_column(Float)  # intra-list diversity
    category_coverage: Mapped[float] = mapped_column(Float)  # distinct categories / list length
    category_entropy: Mapped[float] = mapped_column(Float)  # nats
    mean_age_days: Mapped[float] = mapped_column(Float)  # freshness: mean age of served items
    #: Where the request came from: ``api`` (HTTP), ``sim`` (the simulator), ``cli``, ``dashboard``.
    source: Mapped[str | None] = mapped_column(String(20))
    #: The caller's request context (HTTP ``context``), kept for analysis; None when not given.
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_served_lists_served", "served_at", "arm", "flow"),)


class Outcome(Base):
    """A click or explicit feedback logged against an impression."""

    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    impression_id: Mapped[int] = mapped_column(
        ForeignKey("impressions.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime)

    #: One outcome of each kind per impression: feedback sent twice is stored once.
    __table_args__ = (Index("uq_outcomes_impression_kind", "impression_id", "kind", unique=True),)


class DailyUserMetric(Base):
    """The served-traffic log rolled up per day, flow, source, arm, user and cohort
    (:mod:`ranker.data.rollups`, migration 0010): what the per-user analyses read (the A/B test,
    its guardrails, CTR by cohort) instead of scanning ``impressions`` and ``outcomes``.

    Impression-side counts (``impressions`` … ``trending_lists``) come from ``impressions`` (the
    source through its served list; ``earlier`` without one), list-side ones (``served_lists`` and
    the ``*_sum`` columns, sums over lists) from ``served_lists``, each keyed by its own columns.
    """

    __tablename__ = "daily_user_metrics"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # of served_at, the serve clock
    flow: Mapped[str] = mapped_column(String(40), primary_key=True)
    source: Mapped[str] = mapped_column(String(20), primary_key=True)  # api|sim|cli|legacy|...|earlier
    arm: Mapped[str] = mapped_column(String(20), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort: Mapped[str] = mapped_column(String(12), primary_key=True)  # engaged|view_only|new (before the list)
    impressions: Mapped[int] = mapped_column(Integer)
    clicks: Mapped[int] = mapped_column(Integer)  # impressions with an engagement
    feedback: Mapped[int] = mapped_column(Integer)  # impressions with an explicit positive
    lists: Mapped[int] = mapped_column(Integer)  # distinct request ids among the impressions
    trending_lists: Mapped[int] = mapped_column(Integer)  # ... of them served the trending list
    served_lists: Mapped[int] = mapped_column(Integer)  # rows of served_lists
    ild_sum: Mapped[float] = mapped_column(Float)
    coverage_sum: Mapped[float] = mapped_column(Float)
    entropy_sum: Mapped[float] = mapped_column(Float)  # nats
    age_sum: Mapped[float] = mapped_column(Float)  # days


class DailyMetric(Base):
    """:class:`DailyUserMetric` summed over users and cohorts: one row per day, flow, source and
    arm, what the metric charts and the traffic scope read."""

    __tablename__ = "daily_metrics"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    flow: Mapped[str] = mapped_column(String(40), primary_key=True)
    source: Mapped[str] = mapped_column(String(20), primary_key=True)
    arm: Mapped[str] = mapped_column(String(20), primary_key=True)
    impressions: Mapped[int] = mapped_column(Integer)
    clicks: Mapped[int] = mapped_column(Integer)
    feedback: Mapped[int] = mapped_column(Integer)
    lists: Mapped[int] = mapped_column(Integer)
    trending_lists: Mapped[int] = mapped_column(Integer)
    served_lists: Mapped[int] = mapped_column(Integer)
    ild_sum: Mapped[float] = mapped_column(Float)
    coverage_sum: Mapped[float] = mapped_column(Float)
    entropy_sum: Mapped[float] = mapped_column(Float)
    age_sum: Mapped[float] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(60), unique=True)
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    feature_names: Mapped[list[Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_hash: Mapped[str | None] = mapped_column(String(80))
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    #: SHA-256 (hex) of the checkpoint bytes registered; every replica checks what it loads against
    #: it (``ranker.rank.store``). None for versions registered before migration 0008.
    sha256: Mapped[str | None] = mapped_column(String(64))


class ModelFile(Base):
    """A registered version's checkpoint bytes, kept by the database model store
    (``RANKER_MODEL_STORE=db``, :class:`ranker.rank.store.DatabaseStore`)."""

    __tablename__ = "model_files"

    version: Mapped[str] = mapped_column(String(60), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)  # bytes
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ModelActivation(Base):
    """Which model became active when, and who did it: "which model served at time T"."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(60))  # a registry version, or "rule"
    activated_at: Mapped[datetime] = mapped_column(DateTime, index=True)  # wall clock, naive UTC
    actor: Mapped[str] = mapped_column(String(80))


class ExperimentRecord(Base):
    """One A/B experiment: its arms and allocation, who started it, and its window on the serve clock.

    At most one has no ``ended_at`` (the running one). Analysis reads only lists served
    inside an experiment's window.
    """

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    arms: Mapped[list[str]] = mapped_column(JSON)  # ["control", "treatment"]
    allocation: Mapped[float] = mapped_column(Float)  # % of users in treatment
    salt: Mapped[str] = mapped_column(String(80))  # users are hashed with it into arms
    started_at: Mapped[datetime] = mapped_column(DateTime)  # serve clock
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # serve clock; None: running
    owner: Mapped[str] = mapped_column(String(80))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30), index=True)  # dataset|train|simulate|...
    status: Mapped[str] = mapped_column(String(20), index=True)  # queued|running|succeeded|failed|cancelled
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class SimulationRun(Base):
    """One run of simulated traffic (``ranker simulate`` or the dashboard's job): its settings and how far it got.

    The world clock stands at ``start_clock + day`` days; the lists of the day being served
    carry request ids ``sim-r{id}-d{day}-{i}``. At most one run is unfinished at a time:
    ``unfinished`` is True until the run finishes or is discarded (then NULL), and its
    unique index refuses a second one, on SQLite and PostgreSQL alike.
    """

    __tablename__ = "simulation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(20))  # running|failed|finished|discarded
    unfinished: Mapped[bool | None] = mapped_column(Boolean)
    seed: Mapped[int] = mapped_column(BigInteger)
    days: Mapped[int] = mapped_column(Integer)
    requests_per_day: Mapped[int] = mapped_column(Integer)
    k: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # refit_base, new_items_per_day
    start_clock: Mapped[datetime] = mapped_column(DateTime)  # the world clock when day 0 began
    day: Mapped[int] = mapped_column(Integer, default=0)  # days finished (the clock has moved past them)
    request: Mapped[int] = mapped_column(Integer, default=0)  # requests served in the current day (as last reported)
    items_day: Mapped[int | None] = mapped_column(Integer)  # the last day whose new items were added
    new_items: Mapped[int] = mapped_column(Integer, default=0)  # items added over the run
    #: Bumped whenever a process takes the run over; a write that expects an older lease is refused.
    lease: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_started: Mapped[str | None] = mapped_column(String(40))  # the process's start time, against pid reuse
    host: Mapped[str | None] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(80))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime)  # wall clock, naive UTC
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("uq_simulation_runs_unfinished", "unfinished", unique=True),)


class Setting(Base):
    """Key/value settings: rule weights, experiment config, world clock."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class AuditLog(Base):
    """Every mutation made from the dashboard or CLI."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(80))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


#: Tables `db info` reports, in display order.
COUNTED_TABLES = (
    "users",
    "items",
    "interactions",
    "impressions",
    "served_lists",
    "outcomes",
    "model_versions",
    "model_activations",
    "jobs",
    "settings",
    "audit_log",
)
