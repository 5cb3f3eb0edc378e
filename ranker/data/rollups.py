"""Daily rollups of the served-traffic log, maintained incrementally.

The dashboard's metric pages would otherwise scan ``impressions``, ``outcomes`` and
``interactions`` on every render. :func:`refresh` keeps two tables of sums instead
(migration 0010):

- ``daily_user_metrics`` (:class:`~ranker.data.schema.DailyUserMetric`): one row per day, flow,
  source, arm, user and cohort, for the per-user analyses (the A/B test and its guardrails, CTR by
  cohort, distinct users);
- ``daily_metrics`` (:class:`~ranker.data.schema.DailyMetric`): the same summed over users and
  cohorts, for the charts per day.

Both are computed by one query, :func:`user_rows`, which readers also run on whatever the rollups
do not cover (:mod:`ranker.ops.rollup_metrics`), so a figure read from rollups equals the one
the live queries of :mod:`ranker.serving.online` give.

**What is rolled up.** Every day through the day of the latest served list, the current (partial)
day included; traffic served after the last refresh on a later day is read live. A refresh
recomputes, besides the days new since the last one, every rolled-up day the log changed under
since (the current day whenever it has new traffic): a day with new impressions, a day
whose impressions got new outcomes (late clicks), and every day from the earliest new interaction
on (an interaction changes the cohort of the lists served after it). It finds them from the
highest ids it saw last time (:data:`ranker.keys.ROLLUPS`). A deletion from the log calls
:func:`mark_stale`, which moves the watermark back. A world wiped and rebuilt deletes that
setting, and ids lower than those seen mean rows were deleted: either way the next refresh rolls everything up again.

**Transactions.** A refresh deletes and re-inserts its days and moves its watermark in one
transaction: a crash leaves the previous rollups and watermark as they were. Its first statement
writes the watermark's row, so a second process refreshing at the same time waits for the first
(PostgreSQL: the row lock; SQLite: its single writer) and then finds nothing left to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, cast, delete, distinct, exists, func, insert, literal, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import Select
from sqlalchemy.types import Date, Float, Integer

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.data.db import write_lock
from ranker.data.schema import DailyMetric, DailyUserMetric, Impression, Interaction, Outcome, ServedList, Setting
from ranker.errors import RankerError
from ranker.faults import fault_point

log = logging.getLogger(__name__)

#: The source of lists logged without one, and of impressions with no served list
#: (the same as :data:`ranker.serving.online.EARLIER`).
EARLIER = "earlier"
#: A list's cohort, what its user had done strictly before it was served → its label.
COHORTS: dict[str, str] = {
    "engaged": "engaged before",
    "view_only": "view-only before",
    "new": "no events before",
}
#: The key columns of ``daily_metrics``; ``daily_user_metrics`` adds ``user_id`` and ``cohort``.
KEYS = ("day", "flow", "source", "arm")
USER_KEYS = (*KEYS, "user_id", "cohort")
#: Counts from ``impressions`` (and their outcomes).
IMPRESSION_SUMS = ("impressions", "clicks", "feedback", "lists", "trending_lists")
#: Counts and sums over ``served_lists``.
LIST_SUMS = ("served_lists", "ild_sum", "coverage_sum", "entropy_sum", "age_sum")
SUMS = (*IMPRESSION_SUMS, *LIST_SUMS)
#: ``served_lists`` column summed into each ``*_sum`` column.
LIST_COLUMNS = {"ild_sum": keys.ILD, "coverage_sum": keys.CATEGORY_COVERAGE, "entropy_sum": keys.CATEGORY_ENTROPY,
                "age_sum": keys.MEAN_AGE_DAYS}


class RollupsBusyError(RankerError, RuntimeError):
    """Another process held the database's write lock for longer than SQLite waits."""


# --- The one aggregation -------------------------------------------------------------


def day_of(col, dialect: str):
    """The calendar day of a timestamp column, as the live queries group by it."""
    return func.date(col) if dialect == "sqlite" else cast(col, Date)


def cohort_of(user_id, served_at):
    """``engaged`` / ``view_only`` / ``new``: the user's interactions strictly before ``served_at``
    (:func:`ranker.ops.report.ctr_by_cohort`'s definition)."""
    x = Interaction.__table__.c

    def before(*kinds: str):
        cond = [x.user_id == user_id, x.created_at < served_at]
        return exists(select(x.id).where(*cond, *([x.kind.in_(kinds)] if kinds else [])))

    return case((before(*config.ENGAGED_KINDS), "engaged"), (before(), "view_only"), else_="new")


def _in(col, lo: datetime | None, hi: datetime | None) -> list:
    return [*([col >= lo] if lo is not None else []), *([col < hi] if hi is not None else [])]


def user_rows(dialect: str, lo: datetime | None = None, hi: datetime | None = None) -> Select:
    """One row per (day, flow, source, arm, user_id, cohort) of the traffic served in ``[lo, hi)``
    (None: unbounded), with the :data:`SUMS`: what ``daily_user_metrics`` holds for those days.

    Impression-side sums come from ``impressions``, filtered and keyed by their own columns (the
    source through their served list), list-side ones from ``served_lists``, keyed by theirs, as
    :mod:`ranker.serving.online` filters each table.
    """
    imp, sl, out = Impression.__table__.c, ServedList.__table__.c, Outcome.__table__.c

    def flag(kinds) -> Any:
        return case((exists(select(out.id).where(out.impression_id == imp.id, out.kind.in_(kinds))), 1), else_=0)

    per_impression = (
        select(day_of(imp.served_at, dialect).label("day"), imp.flow,
               func.coalesce(sl.source, EARLIER).label("source"), imp.arm, imp.user_id,
               cohort_of(imp.user_id, imp.served_at).label("cohort"), imp.request_id, imp.model_version,
               flag(config.ENGAGED_KINDS).label("clicked"), flag(config.POSITIVE_KINDS).label("liked"))
        .select_from(Impression.__table__.outerjoin(ServedList.__table__, sl.request_id == imp.request_id))
        .where(*_in(imp.served_at, lo, hi))
        .subquery()
    )
    p = per_impression.c
    zero_int, zero_float = literal(0, Integer), literal(0.0, Float)
    impressions = (
        select(p.day, p.flow, p.source, p.arm, p.user_id, p.cohort, func.count().label("impressions"),
               func.sum(p.clicked).label("clicks"), func.sum(p.liked).label("feedback"),
               func.count(distinct(p.request_id)).label("lists"),
               func.count(distinct(case((p.model_version == config.TRENDING_FLOW, p.request_id)))).label(
                   "trending_lists"),
               zero_int.label("served_lists"), *(zero_float.label(c) for c in LIST_COLUMNS))
        .group_by(p.day, p.flow, p.source, p.arm, p.user_id, p.cohort)
    )
    lday = day_of(sl.served_at, dialect)
    lsource = func.coalesce(sl.source, EARLIER)
    lcohort = cohort_of(sl.user_id, sl.served_at)
    lists = (
        select(lday.label("day"), sl.flow, lsource.label("source"), sl.arm, sl.user_id, lcohort.label("cohort"),
               *(zero_int.label(c) for c in IMPRESSION_SUMS), func.count().label("served_lists"),
               *(func.sum(getattr(sl, col)).label(c) for c, col in LIST_COLUMNS.items()))
        .where(*_in(sl.served_at, lo, hi))
        .group_by(lday, sl.flow, lsource, sl.arm, sl.user_id, lcohort)
    )
    both = union_all(impressions, lists).subquery()
    b = both.c
    return (select(b.day, b.flow, b.source, b.arm, b.user_id, b.cohort,
                   *(func.sum(getattr(b, c)).label(c) for c in SUMS))
            .group_by(b.day, b.flow, b.source, b.arm, b.user_id, b.cohort))


# --- State -------------------------------------------------------------------------------


@dataclass
class Marks:
    """How far the log reaches now: its highest ids and the day of its latest served list."""

    impression_id: int
    outcome_id: int
    interaction_id: int
    last_day: date | None



def _marks(conn: Connection) -> Marks:
    ids = [conn.execute(select(func.coalesce(func.max(t.id), 0))).scalar_one() for t in (Impression, Outcome,
                                                                                          Interaction)]
    last = [conn.execute(select(func.max(t.served_at))).scalar_one() for t in (Impression, ServedList)]
    last = [_as_datetime(v) for v in last if v is not None]
    return Marks(*(int(i) for i in ids), max(last).date() if last else None)


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@dataclass(frozen=True)
class State:
    """The rollups' watermark, as stored under :data:`ranker.keys.ROLLUPS`."""

    through: date | None  # the last day rolled up; None: none yet
    impression_id: int  # the highest ids the last refresh saw
    outcome_id: int
    interaction_id: int
    refreshed_at: str | None = None

    @classmethod
    def from_value(cls, v: dict[str, Any] | None) -> State | None:
        if not v:
            return None
        return cls(None if v.get("through") is None else date.fromisoformat(v["through"]), int(v["impression_id"]),
                   int(v["outcome_id"]), int(v["interaction_id"]), v.get("refreshed_at"))

    def as_value(self) -> dict[str, Any]:
        return {"through": None if self.through is None else self.through.isoformat(),
                "impression_id": self.impression_id, "outcome_id": self.outcome_id,
                "interaction_id": self.interaction_id, "refreshed_at": self.refreshed_at}


def read_state(conn: Connection) -> State | None:
    """The stored watermark, or None when nothing is rolled up (or the world was wiped since)."""
    value = conn.execute(select(Setting.value).where(Setting.key == keys.ROLLUPS)).scalar_one_or_none()
    return State.from_value((value or {}).get("v"))


def through(engine: Engine) -> date | None:
    """The last day the rollups cover (None: none); readers read later days live."""
    with engine.connect() as conn:
        state = read_state(conn)
    return None if state is None else state.through


def mark_stale(conn: Connection, from_day: date) -> None:
    """Call in the transaction of a deletion from the log: the rollups of ``from_day`` and later are
    stale. The watermark moves back before ``from_day``, so readers read those days live, and the
    next refresh recomputes them."""
    state = read_state(conn)
    if state is None or state.through is None or from_day > state.through:
        return
    _save(conn, State(from_day - timedelta(days=1), state.impression_id, state.outcome_id, state.interaction_id,
                      state.refreshed_at))


def _save(conn: Connection, state: State) -> None:
    conn.execute(Setting.__table__.update().where(Setting.key == keys.ROLLUPS)
                 .values(value={"v": state.as_value()}, updated_at=utcnow()))


def _lock(conn: Connection) -> None:
    """Write the watermark's row first: a concurrent refresh waits here until this one commits."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    dialect = conn.dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(Setting).values(
        key=keys.ROLLUPS, value={"v": None}, updated_at=utcnow())
    conn.execute(stmt.on_conflict_do_update(index_elements=[Setting.key],
                                            set_={"updated_at": stmt.excluded.updated_at}))


# --- Refresh -----------------------------------------------------------------------------


@dataclass
class Refreshed:
    """What one :func:`refresh` did: the ``days`` it (re)computed, whether it rebuilt everything,
    the day the rollups now reach (``through``) and its duration."""

    days: list[date] = field(default_factory=list)
    full: bool = False
    through: date | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        reach = f"through {self.through}" if self.through else "no served traffic to roll up yet"
        if not self.days:
            return f"daily rollups up to date ({reach})"
        what = "rebuilt" if self.full else "refreshed"
        span = f"{self.days[0]}" if len(self.days) == 1 else f"{self.days[0]} … {self.days[-1]}"
        return f"daily rollups {what}: {len(self.days)} day(s) ({span}), {reach}, in {self.seconds:.2f} s"


def _up_to_date(state: State | None, marks: Marks) -> bool:
    return (state is not None and state.through == marks.last_day
            and (state.impression_id, state.outcome_id, state.interaction_id)
            == (marks.impression_id, marks.outcome_id, marks.interaction_id))


def _stale_days(conn: Connection, state: State, marks: Marks) -> set[date] | None:
    """Rolled-up days (≤ ``state.through``) the log changed under since ``state``; None: everything
    (ids went down: rows were deleted and others written in their place)."""
    if (marks.impression_id < state.impression_id or marks.outcome_id < state.outcome_id
            or marks.interaction_id < state.interaction_id):
        return None
    if state.through is None:
        return set()
    dialect, imp = conn.dialect.name, Impression.__table__.c
    end = datetime.combine(state.through + timedelta(days=1), datetime.min.time())
    stale: set[date] = set()
    if marks.impression_id > state.impression_id:
        day = day_of(imp.served_at, dialect)
        stale |= {_as_date(d) for d in conn.execute(select(day).distinct().where(
            imp.id > state.impression_id, imp.served_at < end)).scalars()}
    if marks.outcome_id > state.outcome_id:
        out = Outcome.__table__.c
        day = day_of(imp.served_at, dialect)
        stale |= {_as_date(d) for d in conn.execute(
            select(day).distinct()
            .select_from(Outcome.__table__.join(Impression.__table__, imp.id == out.impression_id))
            .where(out.id > state.outcome_id, imp.served_at < end)).scalars()}
    if marks.interaction_id > state.interaction_id:
        earliest = conn.execute(select(func.min(Interaction.created_at)).where(
            Interaction.id > state.interaction_id)).scalar_one()
        if earliest is not None:
            stale |= set(_days(_as_datetime(earliest).date(), state.through))
    return {d for d in stale if d <= state.through}


def _days(lo: date, hi: date) -> list[date]:
    return [lo + timedelta(days=i) for i in range((hi - lo).days + 1)] if lo <= hi else []


def _first_day(conn: Connection) -> date | None:
    first = [conn.execute(select(func.min(t.served_at))).scalar_one() for t in (Impression, ServedList)]
    first = [_as_datetime(v) for v in first if v is not None]
    return min(first).date() if first else None


def _ranges(days: list[date]) -> list[tuple[date, date]]:
    """Sorted days → runs of consecutive days, (first, last)."""
    runs: list[tuple[date, date]] = []
    for d in sorted(days):
        if runs and d == runs[-1][1] + timedelta(days=1):
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return runs


def _recompute(conn: Connection, lo: date | None, hi: date) -> None:
    """Delete and re-insert both tables' rows of the days ``lo`` (None: the first) through ``hi``."""
    dialect = conn.dialect.name
    start = None if lo is None else datetime.combine(lo, datetime.min.time())
    end = datetime.combine(hi + timedelta(days=1), datetime.min.time())
    for table in (DailyUserMetric, DailyMetric):
        conn.execute(delete(table).where(*([table.day >= lo] if lo is not None else []), table.day <= hi))
    conn.execute(insert(DailyUserMetric).from_select([*USER_KEYS, *SUMS], user_rows(dialect, start, end)))
    u = DailyUserMetric
    conn.execute(insert(DailyMetric).from_select(
        [*KEYS, *SUMS],
        select(u.day, u.flow, u.source, u.arm, *(func.sum(getattr(u, c)) for c in SUMS))
        .where(*([u.day >= lo] if lo is not None else []), u.day <= hi)
        .group_by(u.day, u.flow, u.source, u.arm)))


def refresh(engine: Engine, full: bool = False) -> Refreshed:
    """Bring the rollups up to date with the log (see the module docstring); ``full`` rebuilds them all.

    Cheap when nothing changed (a few indexed reads, no write). Idempotent, and safe when two
    processes run it at once.

    Raises
    ------
    RollupsBusyError
        On SQLite, another process kept the database's write lock past the busy timeout.
    """
    t0 = time.perf_counter()
    if not full:
        with engine.connect() as conn:
            state, marks = read_state(conn), _marks(conn)
        if _up_to_date(state, marks):
            return Refreshed(through=state.through, seconds=time.perf_counter() - t0)
    try:
        with write_lock(engine), engine.begin() as conn:
            _lock(conn)
            done = _refresh_locked(conn, full)
            fault_point("rollups:before_commit")
    except OperationalError as exc:
        if "locked" not in str(exc).lower():
            raise
        raise RollupsBusyError("the database stayed locked while refreshing the daily rollups (another process "
                               "is writing, perhaps another refresh); run `ranker rollups refresh` again later"
                               ) from None
    done.seconds = time.perf_counter() - t0
    if done.days:
        log.info(done.summary())
    return done


def _refresh_locked(conn: Connection, full: bool) -> Refreshed:
    state, marks = read_state(conn), _marks(conn)
    target = marks.last_day
    stale = None if full or state is None else _stale_days(conn, state, marks)
    if stale is None:  # everything, from scratch
        first = _first_day(conn)
        conn.execute(delete(DailyUserMetric))
        conn.execute(delete(DailyMetric))
        days = _days(first, target) if first is not None and target is not None else []
        if days:
            _recompute(conn, None, target)
        done = Refreshed(days, True, target if days else None)
    else:
        if target is None or (state.through is not None and target < state.through):
            # the log ends earlier than before (rows deleted): drop what lies past its end
            for table in (DailyUserMetric, DailyMetric):
                conn.execute(delete(table).where(*([table.day > target] if target is not None else [])))
            stale = {d for d in stale if target is not None and d <= target}
        first = None if target is None else (state.through + timedelta(days=1) if state.through
                                             else _first_day(conn))
        days = sorted(stale | set(_days(first, target) if first is not None else []))
        for lo, hi in _ranges(days):
            _recompute(conn, lo, hi)
        done = Refreshed(days, False, target if target is not None and (days or state.through) else None)
    _save(conn, State(done.through, marks.impression_id, marks.outcome_id, marks.interaction_id,
                      utcnow().isoformat(timespec="seconds")))
    return done


__all__ = ["COHORTS", "EARLIER", "KEYS", "SUMS", "USER_KEYS", "Refreshed", "RollupsBusyError", "State",
           "cohort_of", "day_of", "mark_stale", "read_state", "refresh", "through", "user_rows"]
