"""Writing an imported data set into the database: one transaction, in batches."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, case, func, insert, select, text
from sqlalchemy.orm import Session
from tqdm import tqdm

from ranker import config, keys
from ranker.data.clock import set_clock, utcnow
from ranker.data.db import WorldExistsError, audit, ensure_schema, get_setting, is_empty, put_setting, session_scope
from ranker.data.importing.dirty import FieldWarning
from ranker.data.importing.mapping import DEFAULT_POSITIVE_MIN, ImportRows, SourceData, plan_rows
from ranker.data.importing.records import MAX_DB_ID, ImportDataError
from ranker.data.schema import ORGANIC, AuditLog, Base, Interaction, Item, User
from ranker.faults import fault_point

log = logging.getLogger(__name__)

INSERT_BATCH = 20_000
#: An external id written as a positive integer of at most ten digits (kept as the database id, see _assign_ids).
_INT_ID = re.compile(r"^[1-9][0-9]{0,9}$")
Progress = Callable[[float, str], None]


@dataclass
class ImportSummary:
    """What :func:`write_import` wrote.

    ``warnings`` lists, per file and optional field, the bad values that were read as
    missing, with up to three example lines (see :mod:`ranker.data.importing.dirty`).
    """

    source: str
    files: list[str]
    mode: str  # new | append | force
    users: int
    items: int
    interactions: int
    views: int
    positives: int
    ratings: int
    first_interaction: str
    last_interaction: str
    clock: str
    popularity_max_views: int
    user_ids: str  # "source" (kept) or "assigned"
    item_ids: str
    seconds: float = 0.0
    warnings: list[FieldWarning] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_import(engine: Engine, data: SourceData, *, append: bool = False, force: bool = False,
                 positive_min: float = DEFAULT_POSITIVE_MIN, show_bar: bool = False,
                 progress: Progress | None = None, actor: str = "cli") -> ImportSummary:
    """Write ``data`` into the database in one transaction: all of it, or nothing.

    Parameters
    ----------
    engine : Engine
    data : SourceData
    append : bool
        Add to a non-empty database (integer ids must not collide with existing ones).
    force : bool
        Empty the database first, as ``ranker demo init --force`` does (the audit log stays).
    positive_min : float
        A rating at or above this is also a ``like``.
    show_bar : bool
        Show a tqdm progress bar on stderr.
    progress : callable, optional
        ``progress(fraction, message)`` after each batch.
    actor : str
        Written to the audit log.

    Raises
    ------
    WorldExistsError
        The database holds users, items or interactions and neither flag is set.
    ImportDataError
        ``append`` with ids that already exist.
    ValueError
        Both flags, a non-finite ``positive_min``, or no interactions.
    """
    t0 = time.perf_counter()
    rows, mode = _plan(engine, data, append, force, positive_min)
    total = len(rows.users) + len(rows.items) + len(rows.interactions)
    bar = tqdm(total=total, desc=f"import {data.source}", unit="row", disable=not show_bar)
    try:
        summary = _write(engine, data, rows, mode, positive_min, actor, _stepper(bar, total, progress))
    finally:
        bar.close()
    summary.seconds = round(time.perf_counter() - t0, 2)
    log.info("imported %s: %d users, %d items, %d interactions in %.1fs", data.source, summary.users,
             summary.items, summary.interactions, summary.seconds)
    return summary


def _plan(engine: Engine, data: SourceData, append: bool, force: bool, positive_min: float) -> tuple[ImportRows, str]:
    """Check the flags, map ``data`` to rows and check the database may take them; returns the rows
    and the mode (new, append or force)."""
    if append and force:
        raise ValueError("choose one of --append (add to the database) and --force (replace it)")
    if not np.isfinite(positive_min):
        raise ValueError(f"positive_min must be a finite rating, got {positive_min}")
    rows = plan_rows(data, positive_min)
    ensure_schema(engine)
    if not force and not append and not is_empty(engine):
        raise WorldExistsError(
            "the database already holds users, items or interactions; re-run with --append to add "
            "this data set to them, or --force to replace them")
    return rows, "force" if force else ("append" if append else "new")


def _stepper(bar: tqdm, total: int, progress: Progress | None) -> Callable[[int, str], None]:
    """The callback :func:`_insert_rows` calls after each batch: advance ``bar`` and report progress."""
    def step(n: int, what: str) -> None:
        bar.update(n)
        if progress:
            progress(bar.n / total, what)
    return step


def _write(engine: Engine, data: SourceData, rows: ImportRows, mode: str, positive_min: float, actor: str,
           step: Callable[[int, str], None]) -> ImportSummary:
    """The import's one transaction: wipe (mode force), insert every row, then settings, world record and audit."""
    with session_scope(engine) as s:
        if mode == "force":
            _wipe(s)
        user_ids, user_mode = _assign_ids(s, User, rows.users["ext_id"].to_numpy(dtype=object), "user")
        item_ids, item_mode = _assign_ids(s, Item, rows.items["ext_id"].to_numpy(dtype=object), "item")
        _insert_rows(s, rows, user_ids, item_ids, step)
        _sync_id_sequences(s)
        max_views, clock = _refresh_settings(s)
        summary = _summary(data, rows, mode, clock, max_views, user_mode, item_mode)
        _record_world(s, data, summary, mode, positive_min)
        audit(s, "import", {k: v for k, v in summary.as_dict().items() if k != "seconds"}, actor=actor)
    return summary


def _record_world(session: Session, data: SourceData, summary: ImportSummary, mode: str, positive_min: float) -> None:
    """Write the record of what data the database holds (an append keeps the previous record inside)."""
    world = {"source": data.source, "files": summary.files, "mode": mode, "positive_min": positive_min,
             "start": summary.first_interaction, "end": summary.last_interaction,
             "imported_at": utcnow().isoformat(timespec="seconds")}
    if mode == "append":
        world["appended_to"] = get_setting(session, keys.WORLD)
    # Saved base models are tied to this record (ranker.base.store): a new import invalidates them.
    put_setting(session, keys.WORLD, world)


def _wipe(session: Session) -> None:
    """Empty every table but the audit log (what ``ranker demo init --force`` deletes), children
    first, inside the caller's transaction."""
    for table in reversed(Base.metadata.sorted_tables):
        if table.name != AuditLog.__tablename__:
            session.execute(table.delete())


def _assign_ids(session: Session, model: type, ext_ids: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """Database ids for ``ext_ids``: the ids themselves when all are integers, else new consecutive ones.

    Raises
    ------
    ImportDataError
        Integer ids that already exist in the database (an ``--append`` collision).
    """
    as_text = pd.Series(ext_ids, dtype=object).astype(str)
    if len(as_text) and as_text.str.fullmatch(_INT_ID).all():
        ids = as_text.astype(np.int64).to_numpy()
        if ids.max() <= MAX_DB_ID:
            lo, hi = int(ids.min()), int(ids.max())
            taken = session.execute(select(model.id).where(model.id >= lo, model.id <= hi)).scalars().all()
            clash = np.intersect1d(ids, np.asarray(taken, dtype=np.int64))
            if len(clash):
                raise ImportDataError(
                    f"{len(clash)} {what} id(s) of the import already exist in the database (e.g. "
                    f"{', '.join(map(str, clash[:5]))}); --append needs new ids: import into an empty "
                    "database, or replace it with --force")
            return ids, "source"
    start = (session.execute(select(func.max(model.id))).scalar() or 0) + 1
    return np.arange(start, start + len(ext_ids), dtype=np.int64), "assigned"


def _insert_rows(session: Session, rows: ImportRows, user_ids: np.ndarray, item_ids: np.ndarray,
                 step: Callable[[int, str], None]) -> None:
    """Insert users, items, then interactions (mapped to ``user_ids``/``item_ids``), batch by batch."""
    users, items, inter = rows.users, rows.items, rows.interactions
    _insert(session, User, {
        "id": user_ids.tolist(),
        **{c: _texts(users[c]) for c in ("name", "role", "category", "field")},
        "created_at": users["created_at"].to_numpy("datetime64[us]").tolist(),
    }, lambda n: step(n, "users"))
    created = items["created_at"].to_numpy("datetime64[us]").tolist()
    _insert(session, Item, {
        "id": item_ids.tolist(),
        **{c: _texts(items[c]) for c in ("name", "item_type", "category", "field", "type")},
        "created_at": created,
        "updated_at": created,
        "views": items["views"].to_numpy(np.int64).tolist(),
    }, lambda n: step(n, "items"))
    user_rows = pd.Index(users["ext_id"].to_numpy(dtype=object)).get_indexer(inter["user"].to_numpy(dtype=object))
    item_rows = pd.Index(items["ext_id"].to_numpy(dtype=object)).get_indexer(inter["item"].to_numpy(dtype=object))
    _insert(session, Interaction, {
        "user_id": user_ids[user_rows].tolist(),
        "item_id": item_ids[item_rows].tolist(),
        "kind": inter["kind"].to_numpy(dtype=object).tolist(),
        "created_at": inter["time"].to_numpy("datetime64[us]").tolist(),
        "rating": [None if r != r else r for r in inter["rating"].to_numpy(np.float64).tolist()],
    }, lambda n: step(n, "interactions"))


def _texts(column: pd.Series) -> list[str | None]:
    """A text column as a list, with None (NULL) for a missing value; pandas may hold those as NaN."""
    return [None if v is None or v != v else v for v in column.to_numpy(dtype=object).tolist()]


def _insert(session: Session, model: type, columns: dict[str, Sequence[Any]], done: Callable[[int], None]) -> None:
    """``INSERT`` the rows given column-wise, ``INSERT_BATCH`` rows per statement."""
    names = list(columns)
    n = len(columns[names[0]])
    for a in range(0, n, INSERT_BATCH):
        b = min(a + INSERT_BATCH, n)
        batch = [dict(zip(names, values)) for values in zip(*(columns[c][a:b] for c in names))]
        session.execute(insert(model), batch)
        done(b - a)
        fault_point("import:mid_batch")  # written in the import's transaction, not committed


def _sync_id_sequences(session: Session) -> None:
    """On PostgreSQL, move the id sequences of users and items past the ids inserted explicitly,
    so that rows added later without an id do not collide with imported ones."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for table in (User.__tablename__, Item.__tablename__):
        session.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"))


def _refresh_settings(session: Session) -> tuple[int, datetime]:
    """Recompute ``popularity_max_views`` over the organic interactions (as :mod:`ranker.sim.synth`
    does; imported rows are all organic) and the clock over the database."""
    is_view = case((Interaction.kind == "view", 1), else_=0)
    other = func.count() - func.sum(is_view)
    per_item = (select((func.sum(is_view) + config.INTERACTION_POPULARITY_WEIGHT * other + 1).label("peak"))
                .where(Interaction.origin == ORGANIC).group_by(Interaction.item_id).subquery())
    peak = float(session.execute(select(func.max(per_item.c.peak))).scalar() or 1.0)
    max_views = int(np.ceil(peak / 100.0) * 100)
    put_setting(session, keys.POPULARITY_MAX_VIEWS, max_views)
    last = session.execute(select(func.max(Interaction.created_at))).scalar()
    if isinstance(last, str):  # some drivers hand back the stored text
        last = datetime.fromisoformat(last)
    set_clock(session, last)
    return max_views, last


def _summary(data: SourceData, rows: ImportRows, mode: str, clock: datetime, max_views: int,
             user_mode: str, item_mode: str) -> ImportSummary:
    kinds = rows.interactions["kind"].to_numpy(dtype=object)
    times = rows.interactions["time"].to_numpy("datetime64[s]")
    return ImportSummary(
        source=data.source, files=list(data.files), mode=mode, users=len(rows.users), items=len(rows.items),
        interactions=len(kinds), views=int((kinds == "view").sum()),
        positives=int(np.isin(kinds, config.POSITIVE_KINDS).sum()),
        ratings=int(np.isfinite(data.events["rating"].to_numpy(dtype=np.float64)).sum()),
        first_interaction=str(times.min()), last_interaction=str(times.max()), clock=clock.isoformat(),
        popularity_max_views=max_views, user_ids=user_mode, item_ids=item_mode, warnings=list(data.warnings),
    )
