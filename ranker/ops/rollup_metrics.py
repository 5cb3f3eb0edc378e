"""The dashboard's online metrics read from the daily rollups (:mod:`ranker.data.rollups`).

Every function here returns what its namesake in :mod:`ranker.serving.online` (or
:func:`ranker.ops.report.ctr_by_cohort`) returns for the same arguments, and reads:

- the rollup tables for the whole days of the period the rollups cover (up to their
  watermark, :func:`ranker.data.rollups.through`);
- the live log, through :func:`ranker.data.rollups.user_rows` (the query that fills the rollups),
  for the rest: the days after the watermark (traffic on a new day since the last refresh) and
  the part-days at the edges of a period that does not start or end at midnight (an
  experiment's window that started mid-day).

So the figures are the live queries' figures as of the last refresh, for any period; only the
work differs. ``tests/test_rollups.py`` checks each against its live namesake.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, distinct, func, select, union_all
from sqlalchemy.sql import Subquery

from ranker import keys
from ranker.data import rollups
from ranker.data.schema import DailyMetric, DailyUserMetric
from ranker.evaluation.abtest import ABResult
from ranker.serving import online

Day = date | datetime | None
Interval = tuple[datetime | None, datetime | None]


def _midnight(d: date) -> datetime:
    return datetime.combine(d, datetime.min.time())


def _as_datetime(value: date | datetime) -> datetime:
    return value if isinstance(value, datetime) else _midnight(value)


def split(through: date | None, start: Day, end: Day) -> tuple[tuple[date | None, date] | None, list[Interval]]:
    """Split ``[start, end)`` (None: unbounded) into the whole days the rollups cover — ``(first day
    or None for unbounded, last day)``, or None — and the intervals to read live."""
    lo = None if start is None else _as_datetime(start)
    hi = None if end is None else _as_datetime(end)
    first = None if lo is None else (lo.date() if lo == _midnight(lo.date()) else lo.date() + timedelta(days=1))
    last = through if hi is None else (hi.date() - timedelta(days=1) if through is None else
                                       min(through, hi.date() - timedelta(days=1)))
    if through is None or last is None or (first is not None and first > last):
        return None, [(lo, hi)]
    live: list[Interval] = []
    if lo is not None and lo < _midnight(first):
        live.append((lo, _midnight(first)))
    after = _midnight(last + timedelta(days=1))
    if hi is None or after < hi:
        live.append((after, hi))
    return (first, last), live


def rows(engine: Engine, flow: str | None, start: Day, end: Day, source: str | None = None,
         per_user: bool = True) -> Subquery:
    """The rollup rows of ``[start, end)`` for ``flow`` and ``source`` (None: all), rolled-up days and
    live intervals together: :data:`ranker.data.rollups.USER_KEYS` (``per_user``; else only
    :data:`ranker.data.rollups.KEYS`) and :data:`ranker.data.rollups.SUMS`; a subquery to aggregate."""
    dialect = engine.dialect.name
    table = DailyUserMetric if per_user else DailyMetric
    names = [*(rollups.USER_KEYS if per_user else rollups.KEYS), *rollups.SUMS]
    rolled, live = split(rollups.through(engine), start, end)

    def keep(cols) -> list:
        return [*([cols.flow == flow] if flow else []), *([cols.source == source] if source else [])]

    parts = []
    if rolled is not None:
        first, last = rolled
        t = table.__table__.c
        parts.append(select(*(t[n] for n in names)).where(
            *([t.day >= first] if first is not None else []), t.day <= last, *keep(t)))
    for lo, hi in live:
        r = rollups.user_rows(dialect, lo, hi).subquery()
        parts.append(select(*(r.c[n] for n in names)).where(*keep(r.c)))
    return (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("rollup_rows")


def _day_column(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values).dt.date


# --- Per day ------------------------------------------------------------------------------


def daily_metrics_by_arm(engine: Engine, flow: str | None = None, start: Day = None, end: Day = None,
                         source: str | None = None) -> pd.DataFrame:
    """:func:`ranker.serving.online.daily_metrics_by_arm` from the rollups."""
    r = rows(engine, flow, start, end, source, per_user=False)
    sums = [func.sum(r.c[c]).label(c) for c in rollups.SUMS]
    stmt = (select(r.c.day, r.c.arm, r.c.flow, *sums).group_by(r.c.day, r.c.arm, r.c.flow)
            .having(func.sum(r.c.impressions) > 0))
    with engine.connect() as conn:
        found = pd.DataFrame(conn.execute(stmt).all(), columns=["day", "arm", "flow", *rollups.SUMS])
    if found.empty:
        return online.by_arm(found)
    found["day"] = _day_column(found["day"])
    found[list(rollups.SUMS)] = found[list(rollups.SUMS)].astype(float)
    has_lists = found["served_lists"] > 0  # as the live query's left merge: no lists, no list metrics
    found["lists"] = found["served_lists"].where(has_lists)
    for column, total in ((keys.ILD, "ild_sum"), (keys.CATEGORY_COVERAGE, "coverage_sum"),
                          (keys.CATEGORY_ENTROPY, "entropy_sum"), (keys.MEAN_AGE_DAYS, "age_sum")):
        found[column] = (found[total] / found["served_lists"]).where(has_lists)
    for column in ("impressions", "clicks", "feedback"):
        found[column] = found[column].astype(int)
    return online.by_arm(found)


def daily_requests_by_source(engine: Engine, flow: str | None = None, start: Day = None,
                             end: Day = None) -> pd.DataFrame:
    """:func:`ranker.serving.online.daily_requests_by_source` from the rollups."""
    r = rows(engine, flow, start, end, per_user=False)
    stmt = (select(r.c.day, r.c.source, func.sum(r.c.served_lists), func.sum(r.c.impressions),
                   func.sum(r.c.clicks)).group_by(r.c.day, r.c.source))
    counts = ["lists", "impressions", "clicks"]
    with engine.connect() as conn:
        out = pd.DataFrame(conn.execute(stmt).all(), columns=["day", "source", *counts])
    out["day"] = _day_column(out["day"])
    out[counts] = out[counts].astype(int)
    return out.sort_values(["day", "source"]).reset_index(drop=True)


def traffic_scope(engine: Engine) -> online.TrafficScope | None:
    """:func:`ranker.serving.online.traffic_scope` from the rollups."""
    r = rows(engine, None, None, None, per_user=False)
    stmt = (select(r.c.flow, r.c.source, func.min(r.c.day), func.max(r.c.day)).where(r.c.impressions > 0)
            .group_by(r.c.flow, r.c.source))
    with engine.connect() as conn:
        found = conn.execute(stmt).all()  # one pass over the rows
    if not found:
        return None
    first, last = min(pd.Timestamp(f).date() for *_, f, _ in found), max(pd.Timestamp(x).date() for *_, x in found)
    return online.TrafficScope(sorted({f for f, *_ in found}), sorted({s for _, s, *_ in found}), first, last)


# --- Over a period --------------------------------------------------------------------------


def summary_by_arm(engine: Engine, flow: str | None = None, start: Day = None, end: Day = None,
                   source: str | None = None, experiment: int | str | None = None,
                   users: bool = True) -> pd.DataFrame:
    """:func:`ranker.serving.online.summary_by_arm` from the rollups; ``users`` False leaves out the
    ``users`` column (distinct users read the per-user rollup, the rest only the daily one)."""
    if experiment is not None:
        start, end = _window(engine, start, end, experiment)[:2]
    r = rows(engine, flow, start, end, source, per_user=False)
    stmt = select(r.c.arm, *(func.sum(r.c[c]).label(c) for c in rollups.SUMS)).group_by(r.c.arm)
    with engine.connect() as conn:
        found = pd.DataFrame(conn.execute(stmt).all(), columns=["arm", *rollups.SUMS])
        if users:
            u = rows(engine, flow, start, end, source)
            n_users = dict(conn.execute(select(u.c.arm, func.count(distinct(u.c.user_id)))
                                        .where(u.c.impressions > 0).group_by(u.c.arm)).all())
    found = found[found["impressions"] > 0]
    if found.empty:
        return pd.DataFrame(columns=["arm", "impressions", "clicks", keys.CTR])
    out = pd.DataFrame({"arm": found["arm"], "impressions": found["impressions"].astype(int),
                        "clicks": found["clicks"].astype(int), "feedback": found["feedback"].astype(int),
                        **({"users": found["arm"].map(n_users).astype(int)} if users else {})})
    lists = found["served_lists"].astype(float)
    has_lists = lists > 0
    out["lists"] = lists.where(has_lists)
    for column, total in ((keys.ILD, "ild_sum"), (keys.CATEGORY_COVERAGE, "coverage_sum"),
                          (keys.CATEGORY_ENTROPY, "entropy_sum"), (keys.MEAN_AGE_DAYS, "age_sum")):
        out[column] = (found[total].astype(float) / lists).where(has_lists)
    out[keys.CTR] = out["clicks"] / out["impressions"]
    out[keys.FEEDBACK_RATE] = out["feedback"] / out["impressions"]
    return out.set_index("arm").sort_index()


def _window(engine: Engine, start: Day, end: Day, experiment: int | str | None) -> tuple[Day, Day, str | None]:
    """The experiment's window narrowed by ``start``/``end``, as :func:`ranker.serving.online.scope`."""
    from ranker.serving.experiments import find_experiment

    record = find_experiment(engine, None if experiment == online.LATEST else experiment) if experiment else None
    if record is not None:
        start = max(_as_datetime(start), record.started_at) if start else record.started_at
        if record.ended_at is not None:
            end = min(_as_datetime(end), record.ended_at) if end else record.ended_at
    return start, end, record.name if record else None


def scope(engine: Engine, flow: str | None = None, start: Day = None, end: Day = None, source: str | None = None,
          experiment: int | str | None = online.LATEST) -> online.Scope:
    """:func:`ranker.serving.online.scope` from the rollups; ``both_arms`` selects from :func:`rows`."""
    start, end, name = _window(engine, start, end, experiment)
    r = rows(engine, flow, start, end, source)
    both = (select(r.c.user_id).where(r.c.impressions > 0).group_by(r.c.user_id)
            .having(func.count(distinct(r.c.arm)) > 1))
    with engine.connect() as conn:
        excluded = int(conn.execute(select(func.count()).select_from(both.subquery())).scalar_one())
    return online.Scope(name, start, end, both, excluded)


def ab_test(engine: Engine, flow: str | None = None, start: Day = None, end: Day = None, mde: float = 0.05,
            source: str | None = None, experiment: int | str | None = online.LATEST) -> ABResult:
    """:func:`ranker.serving.online.ab_test` from the rollups."""
    sc = scope(engine, flow, start, end, source, experiment)
    r = rows(engine, flow, sc.start, sc.end, source)
    stmt = (select(r.c.arm, func.sum(r.c.clicks), func.sum(r.c.impressions))
            .where(r.c.user_id.not_in(sc.both_arms)).group_by(r.c.arm, r.c.user_id)
            .having(func.sum(r.c.impressions) > 0))
    return online._scoped(online._compare_arms(online._per_user(engine, stmt), 0, 1, mde, "CTR"), sc)


def guardrail_tests(engine: Engine, flow: str | None = None, start: Day = None, end: Day = None,
                    mde: float = 0.05, source: str | None = None,
                    experiment: int | str | None = online.LATEST) -> dict[str, ABResult]:
    """:func:`ranker.serving.online.guardrail_tests` from the rollups."""
    sc = scope(engine, flow, start, end, source, experiment)
    r = rows(engine, flow, sc.start, sc.end, source)
    sums = {keys.ILD: "ild_sum", keys.MEAN_AGE_DAYS: "age_sum"}
    stmt = (select(r.c.arm, func.sum(r.c.served_lists), *(func.sum(r.c[sums[c]]) for c in online.GUARDRAILS))
            .where(r.c.user_id.not_in(sc.both_arms)).group_by(r.c.arm, r.c.user_id)
            .having(func.sum(r.c.served_lists) > 0))
    per_arm = online._per_user(engine, stmt)
    return {column: online._scoped(online._compare_arms(per_arm, j + 1, 0, mde, label), sc)
            for j, (column, label) in enumerate(online.GUARDRAILS.items())}


def ctr_by_cohort(engine: Engine, flow: str | None = None, start: Day = None, end: Day = None,
                  source: str | None = None, experiment: int | str | None = None) -> list[dict]:
    """:func:`ranker.ops.report.ctr_by_cohort` from the rollups."""
    if experiment is not None:
        start, end = _window(engine, start, end, experiment)[:2]
    r = rows(engine, flow, start, end, source)
    stmt = (select(r.c.arm, r.c.cohort, func.sum(r.c.lists), func.sum(r.c.trending_lists),
                   func.count(distinct(r.c.user_id)), func.sum(r.c.impressions), func.sum(r.c.clicks))
            .where(r.c.impressions > 0).group_by(r.c.arm, r.c.cohort))
    with engine.connect() as conn:
        found = [(arm, cohort, *(int(v) for v in counts)) for arm, cohort, *counts in conn.execute(stmt).all()]
    order = {c: i for i, c in enumerate(rollups.COHORTS)}
    return [{"arm": arm, "cohort": cohort, "label": rollups.COHORTS[cohort], "lists": lists, "trending_lists": trending,
             "users": n_users, "impressions": n, "clicks": clicks, keys.CTR: clicks / n if n else float("nan")}
            for arm, cohort, lists, trending, n_users, n, clicks in sorted(found, key=lambda r: (r[0], order[r[1]]))]


__all__ = ["ab_test", "ctr_by_cohort", "daily_metrics_by_arm", "daily_requests_by_source", "guardrail_tests",
           "rows", "scope", "split", "summary_by_arm", "traffic_scope"]
