"""A/B serving: experiment config, deterministic assignment, impression and outcome logs.

Users (not requests) are randomised: ``sha256(salt:user_id)`` maps each user to a
number in [0, 100); those below the rollout % get the treatment (the reranked list),
the rest the control (the base order truncated to k). When no experiment runs (a new
database, or after ``ranker experiment stop``), everyone gets the treatment.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert, select

from ranker import config, keys
from ranker.data.clock import serve_now
from ranker.data.db import audit, get_setting, put_setting, session_scope, with_retries, write_lock
from ranker.data.schema import IMPRESSION, ExperimentRecord, Impression, Interaction, Outcome, ServedList
from ranker.errors import RankerError
from ranker.faults import fault_point
from ranker.rank.metrics import category_entropy, intra_list_diversity

log = logging.getLogger(__name__)


class UnknownImpressionError(RankerError, ValueError):
    pass


@dataclass
class Experiment:
    """The running experiment as serving reads it (the ``experiment`` setting, one query per request).

    The record of every experiment is the ``experiments`` table; this mirror of the running
    one is written in the same transaction. Without one, nobody is in control: everyone
    gets the ranker, as the guide's step 3 says.
    """

    rollout: float = config.DEFAULT_ROLLOUT_PERCENT  # % of users in treatment
    salt: str = config.DEFAULT_EXPERIMENT_SALT
    running: bool = False  # no experiment runs until an operator starts one
    started_at: str | None = None  # serve clock, ISO
    stopped_at: str | None = None
    id: int | None = None  # the ``experiments`` row
    name: str | None = None


class ExperimentError(RankerError, ValueError):
    """An experiment action that cannot be done now, with what to do instead."""


def validate_rollout(rollout: float) -> float:
    rollout = float(rollout)
    if not (0.0 <= rollout <= 100.0) or not np.isfinite(rollout):
        raise ValueError(f"rollout must be between 0 and 100 (percent of users), got {rollout:g}")
    return rollout


def get_experiment(engine: Engine) -> Experiment:
    """The running experiment (``running=False`` when none is)."""
    with session_scope(engine) as s:
        raw = get_setting(s, keys.EXPERIMENT)
    return Experiment(**raw) if raw else Experiment()


def list_experiments(engine: Engine) -> list[ExperimentRecord]:
    """Every experiment, newest first."""
    with session_scope(engine) as s:
        return list(s.scalars(select(ExperimentRecord).order_by(ExperimentRecord.id.desc())))


def experiment_rows(engine: Engine) -> list[dict[str, Any]]:
    """Every experiment, newest first, as plain rows for a table."""
    return [{"name": r.name, "rollout %": r.allocation, "started": r.started_at, "ended": r.ended_at,
             "running": r.ended_at is None, "owner": r.owner} for r in list_experiments(engine)]


def find_experiment(engine: Engine, which: int | str | None = None) -> ExperimentRecord | None:
    """An experiment by id or name; without one, the running experiment, else the latest."""
    with session_scope(engine) as s:
        stmt = select(ExperimentRecord)
        if which is None:
            stmt = stmt.order_by(ExperimentRecord.ended_at.is_not(None), ExperimentRecord.id.desc())
        elif isinstance(which, int) or str(which).isdigit():
            stmt = stmt.where(ExperimentRecord.id == int(which))
        else:
            stmt = stmt.where(ExperimentRecord.name == str(which))
        found = s.scalars(stmt.limit(1)).first()
    if found is None and which is not None:
        known = ", ".join(e.name for e in list_experiments(engine)) or "none yet"
        raise ExperimentError(f"no experiment {which!r}; experiments: {known}")
    return found


def start_experiment(engine: Engine, name: str | None = None, rollout: float | None = None,
                     owner: str = "cli", salt: str | None = None) -> ExperimentRecord:
    """Start an A/B experiment now (on the serve clock): ``rollout`` % of users get the ranker.

    Users are hashed with ``salt`` (default: the name), so each experiment splits users afresh.

    Raises
    ------
    ExperimentError
        One is already running, or the name is taken.
    """
    with session_scope(engine) as s:
        running = s.scalars(select(ExperimentRecord).where(ExperimentRecord.ended_at.is_(None))).first()
        if running is not None:
            raise ExperimentError(f"experiment {running.name!r} is running since {running.started_at:%Y-%m-%d %H:%M}; "
                                  "stop it first (`ranker experiment stop`)")
        previous = get_setting(s, keys.EXPERIMENT) or {}
        n = len(s.scalars(select(ExperimentRecord.id)).all()) + 1
        name = (name or f"experiment-{n}").strip()
        if not name or len(name) > 80:
            raise ExperimentError("an experiment name needs 1 to 80 characters")
        if s.scalars(select(ExperimentRecord).where(ExperimentRecord.name == name)).first() is not None:
            raise ExperimentError(f"an experiment named {name!r} exists already; choose another name")
        if rollout is None:
            rollout = previous.get("rollout", config.DEFAULT_ROLLOUT_PERCENT)  # the last one used
        rollout = validate_rollout(rollout)
        record = ExperimentRecord(name=name, arms=list(config.ARMS), allocation=rollout, salt=(salt or name)[:80],
                                  started_at=serve_now(s), ended_at=None, owner=owner[:80])
        s.add(record)
        s.flush()
        _mirror(s, record)
        audit(s, "experiment_start", {"id": record.id, "name": name, "rollout": rollout}, owner)
        s.expunge(record)
    return record


def stop_experiment(engine: Engine, owner: str = "cli") -> ExperimentRecord:
    """End the running experiment now (serve clock); everyone gets the ranker from the next request."""
    with session_scope(engine) as s:
        record = _running(s)
        record.ended_at = max(serve_now(s), record.started_at)
        _mirror(s, record)
        audit(s, "experiment_stop", {"id": record.id, "name": record.name}, owner)
        s.flush()
        s.expunge(record)
    return record


def set_rollout(engine: Engine, rollout: float, owner: str = "cli") -> ExperimentRecord:
    """Change the running experiment's allocation. Users whose arm changes are then in both arms,
    and analysis leaves them out (and says how many)."""
    rollout = validate_rollout(rollout)
    with session_scope(engine) as s:
        record = _running(s)
        record.allocation = rollout
        _mirror(s, record)
        audit(s, "experiment_rollout", {"id": record.id, "name": record.name, "rollout": rollout}, owner)
        s.flush()
        s.expunge(record)
    return record


def update_experiment(engine: Engine, *, rollout: float | None = None, running: bool | None = None,
                      name: str | None = None, actor: str = "cli") -> Experiment:
    """Start (``running=True``), stop (``running=False``) or re-allocate the experiment, as the
    dashboard's controls do; returns the serving view."""
    if running is True and not get_experiment(engine).running:
        start_experiment(engine, name, rollout, owner=actor)
    elif running is False and get_experiment(engine).running:
        stop_experiment(engine, owner=actor)
    elif rollout is not None:
        set_rollout(engine, rollout, owner=actor)
    return get_experiment(engine)


def _running(s) -> ExperimentRecord:
    record = s.scalars(select(ExperimentRecord).where(ExperimentRecord.ended_at.is_(None))).first()
    if record is None:
        raise ExperimentError("no experiment is running; start one with `ranker experiment start --name NAME`")
    return record


def _mirror(s, record: ExperimentRecord) -> None:
    """Write the serving view of ``record`` (one settings row) in the caller's transaction."""
    put_setting(s, keys.EXPERIMENT, asdict(Experiment(
        rollout=record.allocation, salt=record.salt, running=record.ended_at is None,
        started_at=record.started_at.isoformat(),
        stopped_at=record.ended_at.isoformat() if record.ended_at else None, id=record.id, name=record.name)))


def bucket(user_id: int, salt: str) -> float:
    """The user's position in [0, 100), stable for a given salt."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def assign_arm(user_id: int, exp: Experiment) -> str:
    if not exp.running:
        return "treatment"
    return "treatment" if bucket(user_id, exp.salt) < exp.rollout else "control"


# --- Logging ------------------------------------------------------------------------


def served_list_metrics(categories: list[str], fields: list[str], types: list[str], ages: list[float]) -> dict:
    """Per-list diversity and freshness, stored once per served list."""
    n = len(categories)
    return {
        keys.ILD: intra_list_diversity(np.array(categories, dtype=object), np.array(fields, dtype=object),
                                    np.array(types, dtype=object)),
        keys.CATEGORY_COVERAGE: len(set(categories)) / n if n else 0.0,
        keys.CATEGORY_ENTROPY: category_entropy(np.array(categories, dtype=object)) if n else 0.0,
        keys.MEAN_AGE_DAYS: float(np.mean(ages)) if n else 0.0,
    }


def log_served(engine: Engine, rec: Any, attrs: dict[str, list], source: str | None = None,
               context: dict[str, Any] | None = None) -> list[int]:
    """Write one served list (its impressions and its list-level metrics); returns impression ids.

    ``rec`` is a :class:`ranker.serving.service.Recommendation`; ``attrs`` holds the items'
    ``category``, ``field``, ``type`` and ``age_days`` lists in served order. ``source``
    (``api``, ``sim``, ...) and the caller's ``context`` are kept with the list.
    """
    rows = [
        {"request_id": rec.request_id, "user_id": rec.user_id, "item_id": it.item_id, "flow": rec.flow,
         "arm": rec.arm, "position": it.position, "score": it.score, "features": it.features,
         "model_version": rec.model_version, "served_at": rec.served_at}
        for it in rec.items
    ]
    summary = {"request_id": rec.request_id, "user_id": rec.user_id, "flow": rec.flow, "arm": rec.arm,
               "k": len(rec.items), "reranked": rec.reranked, "model_version": rec.model_version,
               "served_at": rec.served_at, "source": source, "context": context or None,
               **served_list_metrics(attrs["category"], attrs["field"], attrs["type"], attrs["age_days"])}

    def write() -> list[int]:  # one short transaction, in SQLAlchemy Core (the ORM costs more than the insert)
        with engine.begin() as conn:
            if rows:
                conn.execute(insert(Impression.__table__), rows)
            conn.execute(insert(ServedList.__table__), [summary])
            return list(conn.scalars(select(Impression.id).where(Impression.request_id == rec.request_id)
                                     .order_by(Impression.position)))

    with write_lock(engine):
        return with_retries(write)


def log_outcomes(engine: Engine, events: list[tuple[int, str, datetime]],
                 as_interactions: bool = True) -> None:
    """Log (impression_id, kind, time) outcomes in one short transaction.

    Each outcome is also written as a platform interaction of origin ``impression`` (so the
    base models see it; the popularity feature counts organic interactions only) unless
    ``as_interactions`` is False. An outcome already
    stored (the same impression and kind) is not stored again.

    Raises
    ------
    UnknownImpressionError
        An impression id that does not exist (nothing is written; the error is logged).
    """
    if not events:
        return
    bad_kinds = {k for _, k, _ in events} - set(config.INTERACTION_KINDS)
    if bad_kinds:
        raise ValueError(f"unknown outcome kind(s) {sorted(bad_kinds)}; use {config.INTERACTION_KINDS}")

    def write() -> None:
        with session_scope(engine) as s:
            ids = sorted({i for i, _, _ in events})
            shown = {imp: (user, item) for imp, user, item in s.execute(
                select(Impression.id, Impression.user_id, Impression.item_id).where(Impression.id.in_(ids))).all()}
            missing = [i for i in ids if i not in shown]
            if missing:
                log.error("rejected outcomes for unknown impression id(s) %s", missing[:10])
                raise UnknownImpressionError(f"unknown impression id(s) {missing[:10]}; outcomes must refer "
                                             "to a logged impression")
            outcomes = {}
            for imp, kind, ts in events:
                outcomes.setdefault((imp, kind), (*shown[imp], ts))
            _store_outcomes(s, outcomes, as_interactions)

    with write_lock(engine):
        with_retries(write)


# --- Feedback from clients ------------------------------------------------------------


@dataclass
class FeedbackEvent:
    """One event a client reports about an item it was served: ``kind`` is one of
    ``config.INTERACTION_KINDS``; ``ts`` is naive UTC (default: the serve clock's now)."""

    request_id: str
    item_id: int
    kind: str
    ts: datetime | None = None


@dataclass
class FeedbackResult:
    """What happened to one event: ``stored``, ``duplicate`` (already stored; not stored
    again) or ``rejected`` (with the reason)."""

    index: int
    status: str
    error: str | None = None


def record_feedback(engine: Engine, events: list[FeedbackEvent]) -> list[FeedbackResult]:
    """Store client feedback against the impressions it refers to, idempotently.

    Each event is matched to the impression of ``item_id`` in the list served as
    ``request_id``. An event for an unknown request, an item that was not shown in it,
    an unknown kind or a time before the list was served is rejected on its own; the
    valid events of the batch are stored in one short transaction, each as an outcome
    and as a platform interaction. The same (impression, kind) is stored once, however
    often or concurrently it is sent: the database's unique index decides.
    """
    from ranker.data.clock import serve_now

    def write() -> list[FeedbackResult]:
        with session_scope(engine) as s:
            now = serve_now(s)
            request_ids = sorted({e.request_id for e in events})
            shown = {(r, i): (imp, u, at) for imp, r, i, u, at in s.execute(
                select(Impression.id, Impression.request_id, Impression.item_id, Impression.user_id,
                       Impression.served_at).where(Impression.request_id.in_(request_ids))).all()}
            served_requests = {r for r, _ in shown}
            results: list[FeedbackResult] = []
            valid: dict[tuple[int, str], tuple[int, int, int, datetime]] = {}  # (imp, kind) -> (index, user, item, ts)
            for n, e in enumerate(events):
                error = _feedback_error(e, shown, served_requests)
                if error is None:
                    imp, user, served_at = shown[(e.request_id, e.item_id)]
                    ts = e.ts or max(now, served_at)
                    if ts < served_at:
                        error = (f"ts {ts.isoformat()} is before the list was served ({served_at.isoformat()}); "
                                 "send the time of the event, in UTC")
                    elif (imp, e.kind) in valid:
                        results.append(FeedbackResult(n, "duplicate"))
                        continue
                    else:
                        valid[(imp, e.kind)] = (n, user, e.item_id, ts)
                        continue
                results.append(FeedbackResult(n, "rejected", error))
            stored = _store_outcomes(s, {key: v[1:] for key, v in valid.items()})
            fault_point("api:feedback_write")  # outcomes and interactions inserted, not committed
            for key, (n, *_) in valid.items():
                results.append(FeedbackResult(n, "stored" if key in stored else "duplicate"))
            return sorted(results, key=lambda r: r.index)

    with write_lock(engine):
        return with_retries(write)


def _feedback_error(e: FeedbackEvent, shown: dict, served_requests: set[str]) -> str | None:
    if e.kind not in config.INTERACTION_KINDS:
        return f"unknown type {e.kind!r}; use one of: {', '.join(config.INTERACTION_KINDS)}"
    if e.request_id not in served_requests:
        return (f"unknown request_id {e.request_id!r}: no list was served with this id "
                "(use the request_id of a /v1/recommend or /v1/rank response)")
    if (e.request_id, e.item_id) not in shown:
        return f"item {e.item_id} was not shown in request {e.request_id}"
    return None


def _store_outcomes(s: Any, outcomes: dict[tuple[int, str], tuple[int, int, datetime]],
                    as_interactions: bool = True) -> set[tuple[int, str]]:
    """Write outcomes, (impression, kind) -> (user, item, time), each also as a platform
    interaction of origin ``impression`` unless ``as_interactions`` is False. An (impression, kind) already stored is
    skipped: the unique index decides, so concurrent writers store it once. Returns the new ones."""
    if not outcomes:
        return set()
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    rows = [{"impression_id": imp, "kind": kind, "created_at": ts} for (imp, kind), (_, _, ts) in outcomes.items()]
    stmt = (dialect_insert(Outcome).on_conflict_do_nothing(index_elements=["impression_id", "kind"])
            .returning(Outcome.impression_id, Outcome.kind))
    inserted = {(imp, kind) for imp, kind in s.execute(stmt, rows).all()}
    if inserted and as_interactions:
        s.execute(insert(Interaction), [
            {"user_id": user, "item_id": item, "kind": kind, "created_at": ts, "rating": None, "origin": IMPRESSION}
            for (imp, kind), (user, item, ts) in outcomes.items() if (imp, kind) in inserted])
    return inserted
