"""Engine, sessions and schema migrations.

One setting picks the database: ``RANKER_DATABASE_URL``. The default is an
embedded SQLite file under ``data/``, opened with WAL, a busy timeout and
foreign keys on. PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.data.schema import COUNTED_TABLES, ORIGINS, AuditLog, Base, Interaction, Item, Setting, User
from ranker.errors import RankerError

SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
T = TypeVar("T")


class DatabaseError(RankerError, RuntimeError):
    """A database problem explained for the operator (URL shown with password masked)."""


class WorldExistsError(RankerError, RuntimeError):
    """The database already holds data that a new world or an import would mix with."""


def database_url() -> str:
    return os.environ.get(config.DATABASE_URL_ENV) or config.DEFAULT_DATABASE_URL


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def _normalise(url: str) -> str:
    # Plain postgresql:// would pick psycopg2, which is not installed: use psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str | None = None) -> Engine:
    """Create an engine for ``url`` (default: ``RANKER_DATABASE_URL``).

    Raises
    ------
    DatabaseError
        Unknown scheme or driver, with what to check.
    """
    raw = url or database_url()
    url = _normalise(raw)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(
            f"cannot parse database URL {mask_url(raw)!r}: expected e.g. "
            "sqlite:///data/ranker.db or postgresql+psycopg://user@host:5432/db "
            f"(set {config.DATABASE_URL_ENV})"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(
            f"unsupported database URL scheme {backend!r} in {mask_url(raw)}: "
            f"use sqlite:///PATH or postgresql+psycopg://... in {config.DATABASE_URL_ENV}"
        )
    try:
        if backend == "sqlite":
            db_path = parsed.database
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(
                url, pool_pre_ping=True, connect_args={"connect_timeout": 5}
            )
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"no driver for {mask_url(raw)} ({exc}); PostgreSQL needs postgresql+psycopg://"
        ) from None
    return engine


@lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """A process-wide engine per URL."""
    return _cached_engine(url or database_url())


def check_connection(engine: Engine) -> None:
    """Open one connection, or raise :class:`DatabaseError` naming what to check."""
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(
            f"cannot connect to {url}: {reason}. Check that the server is running and "
            f"that host, port, user and database in {config.DATABASE_URL_ENV} are right."
        ) from None


@lru_cache(maxsize=64)
def _session_factory(engine: Engine) -> sessionmaker:
    # One factory per engine: building a sessionmaker per transaction costs more than the query.
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error."""
    session = _session_factory(engine or get_engine())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


@contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """On SQLite, one writing transaction at a time per process and database.

    SQLite has one writer. Threads that collide otherwise wait in SQLite's busy handler,
    which sleeps in growing steps (up to 100 ms each), so under concurrent requests a
    few writes take seconds. A lock hands the turn over at once. Other processes still
    meet at SQLite's own lock. PostgreSQL needs no lock.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    key = engine.url.render_as_string(hide_password=False)
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        yield


def with_retries(fn: Callable[[], T], attempts: int = 5, delay: float = 0.2) -> T:
    """Run ``fn``, retrying when SQLite reports the database as locked."""
    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay * (2**attempt))
    raise AssertionError("unreachable")


# --- Schema -------------------------------------------------------------------


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine | None = None) -> str:
    """Migrate the schema in place to the newest revision; returns that revision."""
    from alembic import command

    engine = engine or get_engine()
    check_connection(engine)
    command.upgrade(_alembic_config(engine), "head")
    return schema_revision(engine) or "none"


def schema_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(get_engine())
    return ScriptDirectory.from_config(cfg).get_current_head() or "none"


def ensure_schema(engine: Engine | None = None) -> Engine:
    """Create or upgrade the schema if needed. Cheap when already current."""
    engine = engine or get_engine()
    check_connection(engine)
    if schema_revision(engine) != head_revision():
        upgrade(engine)
    return engine


class IncompleteWorldError(RankerError, RuntimeError):
    """The database holds a demo world whose build started and never finished."""


def unfinished_world(engine: Engine) -> dict[str, Any] | None:
    """The record of a demo world build that started and has not finished (it crashed or was
    killed, or is still running), or None. Such a world's rows are incomplete: nothing should
    read it until ``ranker demo init --force`` rebuilds it."""
    if "settings" not in inspect(engine).get_table_names():
        return None
    with session_scope(engine) as s:
        return get_setting(s, keys.WORLD_BUILD)


def unfinished_world_message(build: dict[str, Any]) -> str:
    """What to tell the operator about the unfinished build ``build`` (a :func:`unfinished_world` record)."""
    what = ", ".join(f"{k} {build[k]}" for k in ("scale", "seed", "started_at") if k in build)
    return (f"the database holds a demo world whose build did not finish ({what}): its history is "
            "incomplete. Re-run `ranker demo init --force` (with the same --scale) to rebuild it.")


def refuse_unfinished_world(engine: Engine) -> None:
    """Raise :class:`IncompleteWorldError` when the database holds an unfinished demo world build."""
    build = unfinished_world(engine)
    if build is not None:
        raise IncompleteWorldError(unfinished_world_message(build))


def is_empty(engine: Engine) -> bool:
    """True when the database holds no users, items or interactions."""
    with engine.connect() as conn:
        return all(conn.execute(select(func.count()).select_from(t)).scalar_one() == 0
                   for t in (User.__table__, Item.__table__, Interaction.__table__))


def table_counts(engine: Engine | None = None) -> dict[str, int]:
    """Row count per table (SQL ``count(*)``); 0 for tables not yet created."""
    engine = engine or get_engine()
    existing = set(inspect(engine).get_table_names())
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for name in COUNTED_TABLES:
            if name in existing:
                table = Base.metadata.tables[name]
                counts[name] = conn.execute(select(func.count()).select_from(table)).scalar_one()
            else:
                counts[name] = 0
    return counts


def interaction_origins(engine: Engine | None = None) -> dict[str, int]:
    """Interactions per origin (``organic``, ``impression``); zeros before the schema has the column."""
    engine = engine or get_engine()
    counts = dict.fromkeys(ORIGINS, 0)
    schema = inspect(engine)
    if schema.has_table("interactions") and "origin" in {c["name"] for c in schema.get_columns("interactions")}:
        with engine.connect() as conn:
            counts.update(conn.execute(select(Interaction.origin, func.count()).group_by(Interaction.origin)).all())
    return counts


# --- Settings and audit -------------------------------------------------------


def get_setting(session: Session, key: str, default: Any = None) -> Any:
    row = session.get(Setting, key)
    return default if row is None else row.value.get("v", default)


def put_setting(session: Session, key: str, value: Any) -> None:
    """Save setting ``key`` as one upsert, so processes writing the same new key at once (two
    replicas starting, say) do not collide on its primary key."""
    now = utcnow()
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):  # no native upsert: read, then write
        row = session.get(Setting, key)
        if row is None:
            session.add(Setting(key=key, value={"v": value}, updated_at=now))
        else:
            row.value, row.updated_at = {"v": value}, now
        return
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(Setting).values(
        key=key, value={"v": value}, updated_at=now)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[Setting.key], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at}))
    for obj in list(session.identity_map.values()):  # a copy this session read before is stale now
        if isinstance(obj, Setting) and obj.key == key:
            session.expire(obj)


def audit(session: Session, action: str, details: dict[str, Any], actor: str = "cli") -> None:
    session.add(AuditLog(at=utcnow(), actor=actor, action=action, details=details))


def recent_audit(engine: Engine, limit: int = 25) -> list[AuditLog]:
    with session_scope(engine) as s:
        return list(s.scalars(select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)))
