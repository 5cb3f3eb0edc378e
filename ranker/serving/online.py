"""Online metrics from the serving logs, aggregated in SQL per arm, flow and day.

- CTR: impressions with a click (or any engagement) / impressions.
- Explicit feedback rate: impressions with like/favorite/apply/interest / impressions.
- Diversity: mean intra-list diversity, category coverage and entropy of served lists.
- Freshness: mean age in days of served items.
- Traffic by source: served lists per day from HTTP (``api``), the simulator (``sim``), the CLI.

Every function takes optional ``flow``, ``start`` and ``end`` filters, and the metrics also a
``source`` filter (``api``, ``sim``, ``cli``, or :data:`EARLIER`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, cast, distinct, func, select
from sqlalchemy.types import Date

from ranker import config, keys
from ranker.data.schema import Impression, Outcome, ServedList
from ranker.evaluation.abtest import ABResult, analyse, arm_stats

ENGAGED = config.ENGAGED_KINDS
#: The source shown for lists logged before ``served_lists.source`` existed (NULL in the table),
#: and for impressions older still, which have no served list at all.
EARLIER = "earlier"


def _day(col, engine: Engine):
    return func.date(col) if engine.dialect.name == "sqlite" else cast(col, Date)


def _flag(kinds) -> select:
    return select(Outcome.impression_id).where(Outcome.kind.in_(kinds)).distinct()


def _from_source(model, source: str):
    """Rows of ``model`` (``ServedList`` or ``Impression``) served to requests from ``source``."""
    if model is ServedList:
        return ServedList.source.is_(None) if source == EARLIER else ServedList.source == source
    if source == EARLIER:  # includes impressions logged before served_lists existed
        return Impression.request_id.not_in(select(ServedList.request_id).where(ServedList.source.is_not(None)))
    return Impression.request_id.in_(select(ServedList.request_id).where(ServedList.source == source))


def _filters(model, flow: str | None, start: date | datetime | None, end: date | datetime | None,
             source: str | None = None):
    conds = []
    if flow:
        conds.append(model.flow == flow)
    if start:
        conds.append(model.served_at >= start)
    if end:
        conds.append(model.served_at < end)
    if source:
        conds.append(_from_source(model, source))
    return and_(*conds) if conds else True


def daily_metrics(engine: Engine, flow: str | None = None, start=None, end=None,
                  source: str | None = None) -> pd.DataFrame:
    """One row per (day, arm, flow): impressions, clicks, CTR, feedback rate, ILD, coverage,
    entropy, mean age. Aggregated in SQL; empty frame without traffic."""
    clicked = _flag(ENGAGED).subquery()
    liked = _flag(config.POSITIVE_KINDS).subquery()
    day = _day(Impression.served_at, engine)
    imp = (
        select(day.label("day"), Impression.arm, Impression.flow,
               func.count().label("impressions"),
               func.count(clicked.c.impression_id).label("clicks"),
               func.count(liked.c.impression_id).label("feedback"),
               func.count(distinct(Impression.user_id)).label("users"))
        .select_from(Impression)
        .outerjoin(clicked, clicked.c.impression_id == Impression.id)
        .outerjoin(liked, liked.c.impression_id == Impression.id)
        .where(_filters(Impression, flow, start, end, source))
        .group_by(day, Impression.arm, Impression.flow)
    )
    lday = _day(ServedList.served_at, engine)
    lists = (
        select(lday.label("day"), ServedList.arm, ServedList.flow, func.count().label("lists"),
               func.avg(ServedList.ild).label(keys.ILD),
               func.avg(ServedList.category_coverage).label(keys.CATEGORY_COVERAGE),
               func.avg(ServedList.category_entropy).label(keys.CATEGORY_ENTROPY),
               func.avg(ServedList.mean_age_days).label(keys.MEAN_AGE_DAYS))
        .where(_filters(ServedList, flow, start, end, source))
        .group_by(lday, ServedList.arm, ServedList.flow)
    )
    with engine.connect() as conn:
        a = pd.DataFrame(conn.execute(imp).mappings().all())
        b = pd.DataFrame(conn.execute(lists).mappings().all())
    if a.empty:
        return pd.DataFrame(columns=["day", "arm", "flow", "impressions", "clicks", "feedback", "users", "lists",
                                     *keys.ONLINE_METRICS])
    for df in (a, b):
        if not df.empty:
            df["day"] = pd.to_datetime(df["day"]).dt.date
    out = a.merge(b, on=["day", "arm", "flow"], how="left") if not b.empty else a
    out[keys.CTR] = out["clicks"] / out["impressions"]
    out[keys.FEEDBACK_RATE] = out["feedback"] / out["impressions"]
    return out.sort_values(["day", "arm", "flow"]).reset_index(drop=True)


#: The list-level metrics of ``served_lists``: means over served lists.
LIST_METRICS = (keys.ILD, keys.CATEGORY_COVERAGE, keys.CATEGORY_ENTROPY, keys.MEAN_AGE_DAYS)


def daily_metrics_by_arm(engine: Engine, flow: str | None = None, start=None, end=None,
                         source: str | None = None) -> pd.DataFrame:
    """One row per (day, arm), every flow (or ``flow``) together: impressions, clicks, feedback and
    lists, CTR and feedback rate over the impressions, and the :data:`LIST_METRICS` as means over the
    lists. Built on :func:`daily_metrics` (SQL, per flow): each list metric is the flows' means
    weighted by their lists. Empty frame without traffic."""
    return by_arm(daily_metrics(engine, flow, start, end, source=source))


def by_arm(daily: pd.DataFrame) -> pd.DataFrame:
    """:func:`daily_metrics_by_arm` from :func:`daily_metrics`' frame (rows per day, arm and flow)."""
    counts = ["impressions", "clicks", "feedback", "lists"]
    columns = ["day", "arm", *counts, keys.CTR, keys.FEEDBACK_RATE, *LIST_METRICS]
    daily = daily.reindex(columns=["day", "arm", *counts, *LIST_METRICS])
    if daily.empty:
        return pd.DataFrame(columns=columns)
    weighted = daily[list(LIST_METRICS)].mul(daily["lists"], axis=0)
    out = pd.concat([daily[["day", "arm", *counts]], weighted], axis=1).groupby(["day", "arm"], as_index=False)
    out = out.sum(min_count=1)
    out[list(LIST_METRICS)] = out[list(LIST_METRICS)].div(out["lists"], axis=0)
    out["lists"] = out["lists"].fillna(0).astype(int)
    out[keys.CTR] = out["clicks"] / out["impressions"]
    out[keys.FEEDBACK_RATE] = out["feedback"] / out["impressions"]
    return out[columns].sort_values(["day", "arm"]).reset_index(drop=True)


@dataclass(frozen=True)
class TrafficScope:
    """What the served traffic spans: its flows and request sources (:data:`EARLIER` for lists
    logged without one), sorted, and its first and last day."""

    flows: list[str]
    sources: list[str]
    first_day: date
    last_day: date


def traffic_scope(engine: Engine) -> TrafficScope | None:
    """The flows, sources and days to filter the online metrics by; None without served traffic."""
    day = _day(Impression.served_at, engine)
    source = select(ServedList.source).select_from(Impression).outerjoin(
        ServedList, ServedList.request_id == Impression.request_id).distinct()
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(day), func.max(day))).one()
        if first is None:
            return None
        flows = sorted(conn.execute(select(Impression.flow).distinct()).scalars())
        sources = sorted({s or EARLIER for s in conn.execute(source).scalars()})
    return TrafficScope(flows, sources, pd.Timestamp(first).date(), pd.Timestamp(last).date())


def summary_by_arm(engine: Engine, flow: str | None = None, start=None, end=None,
                   source: str | None = None, experiment: int | str | None = None) -> pd.DataFrame:
    """Headline metrics per arm over the whole period (SQL aggregates); with ``experiment`` (an id,
    a name or :data:`LATEST`), over that experiment's window only."""
    if experiment is not None:
        sc = scope(engine, flow, start, end, source, experiment)
        start, end = sc.start, sc.end
    clicked = _flag(ENGAGED).subquery()
    liked = _flag(config.POSITIVE_KINDS).subquery()
    imp = (
        select(Impression.arm, func.count().label("impressions"),
               func.count(clicked.c.impression_id).label("clicks"),
               func.count(liked.c.impression_id).label("feedback"),
               func.count(distinct(Impression.user_id)).label("users"))
        .outerjoin(clicked, clicked.c.impression_id == Impression.id)
        .outerjoin(liked, liked.c.impression_id == Impression.id)
        .where(_filters(Impression, flow, start, end, source))
        .group_by(Impression.arm)
    )
    lists = (
        select(ServedList.arm, func.count().label("lists"), func.avg(ServedList.ild).label(keys.ILD),
               func.avg(ServedList.category_coverage).label(keys.CATEGORY_COVERAGE),
               func.avg(ServedList.category_entropy).label(keys.CATEGORY_ENTROPY),
               func.avg(ServedList.mean_age_days).label(keys.MEAN_AGE_DAYS))
        .where(_filters(ServedList, flow, start, end, source))
        .group_by(ServedList.arm)
    )
    with engine.connect() as conn:
        a = pd.DataFrame(conn.execute(imp).mappings().all())
        b = pd.DataFrame(conn.execute(lists).mappings().all())
    if a.empty:
        return pd.DataFrame(columns=["arm", "impressions", "clicks", keys.CTR])
    out = a.merge(b, on="arm", how="left") if not b.empty else a
    out[keys.CTR] = out["clicks"] / out["impressions"]
    out[keys.FEEDBACK_RATE] = out["feedback"] / out["impressions"]
    return out.set_index("arm")


def _per_user(engine: Engine, stmt) -> dict[str, np.ndarray]:
    """Run ``stmt`` (one row per arm and user: arm, then sums) → arm → array of shape (users, sums)."""
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    out: dict[str, list] = {}
    for arm, *sums in rows:
        out.setdefault(arm, []).append(sums)
    return {arm: np.array(v, dtype=float) for arm, v in out.items()}


def _compare_arms(per_arm: dict[str, np.ndarray], num: int, den: int, mde: float, metric: str) -> ABResult:
    """Treatment against control for Σ column ``num`` / Σ column ``den`` (per-user delta method)."""
    stats = {arm: arm_stats(per_arm[arm][:, num], per_arm[arm][:, den]) if arm in per_arm else None
             for arm in config.ARMS}
    return analyse(stats["control"], stats["treatment"], mde=mde, metric=metric)


def _clicks_per_user(flow, start, end, source, both):
    """Per arm and user: engaged impressions, impressions (users in ``both`` arms left out)."""
    clicked = _flag(ENGAGED).subquery()
    return (
        select(Impression.arm, func.count(clicked.c.impression_id), func.count())
        .outerjoin(clicked, clicked.c.impression_id == Impression.id)
        .where(_filters(Impression, flow, start, end, source), Impression.user_id.not_in(both))
        .group_by(Impression.arm, Impression.user_id)
    )


#: ``experiment=LATEST``: analyse the running experiment, else the one that ended last.
LATEST = "latest"


@dataclass(frozen=True)
class Scope:
    """What an A/B analysis reads: one experiment's window on the serve clock, narrowed by any
    ``start``/``end`` given, and the users served in both arms inside it (left out)."""

    experiment: str | None  # its name; None when no experiment was ever started
    start: datetime | date | None
    end: datetime | date | None
    both_arms: object  # a select of the user ids served in both arms
    excluded: int  # how many users that is


def scope(engine: Engine, flow: str | None = None, start=None, end=None, source: str | None = None,
          experiment: int | str | None = LATEST) -> Scope:
    """The window of ``experiment`` (id, name, or :data:`LATEST`; None: no window) and the users
    it must leave out."""
    from ranker.serving.experiments import find_experiment

    record = find_experiment(engine, None if experiment == LATEST else experiment) if experiment else None
    if record is not None:
        start = max(_as_datetime(start), record.started_at) if start else record.started_at
        if record.ended_at is not None:
            end = min(_as_datetime(end), record.ended_at) if end else record.ended_at
    both = (select(Impression.user_id).where(_filters(Impression, flow, start, end, source))
            .group_by(Impression.user_id).having(func.count(distinct(Impression.arm)) > 1))
    with engine.connect() as conn:
        excluded = int(conn.execute(select(func.count()).select_from(both.subquery())).scalar_one())
    return Scope(record.name if record else None, start, end, both, excluded)


def _as_datetime(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.combine(value, datetime.min.time())


def _scoped(result: ABResult, sc: Scope) -> ABResult:
    result.experiment = sc.experiment
    result.excluded_users = sc.excluded
    if result.excluded_users:
        result.verdict += (f" {result.excluded_users:,} users were served in both arms (the rollout changed "
                           "during the experiment) and are left out.")
    return result


def ab_test(engine: Engine, flow: str | None = None, start=None, end=None, mde: float = 0.05,
            source: str | None = None, experiment: int | str | None = LATEST) -> ABResult:
    """CTR lift of treatment over control, per-user delta method, inside one experiment's window
    (default: the running or latest experiment); users served in both arms are left out."""
    sc = scope(engine, flow, start, end, source, experiment)
    per_user = _per_user(engine, _clicks_per_user(flow, sc.start, sc.end, source, sc.both_arms))
    return _scoped(_compare_arms(per_user, 0, 1, mde, "CTR"), sc)


#: List-level metrics compared between arms next to CTR: column of ``served_lists`` → label.
GUARDRAILS = {keys.ILD: "diversity (ILD)", keys.MEAN_AGE_DAYS: "mean age of served items"}


def guardrail_tests(engine: Engine, flow: str | None = None, start=None, end=None,
                    mde: float = 0.05, source: str | None = None,
                    experiment: int | str | None = LATEST) -> dict[str, ABResult]:
    """Diversity and freshness of treatment against control, with the same per-user delta method
    and the same experiment window as CTR: each metric is a mean over lists, Σ per-user metric /
    Σ per-user lists.

    Ages spread over hundreds of days, so a difference between two independent arms needs a
    confidence interval before it means "fresher" or "staler". A lower age is fresher.
    """
    sc = scope(engine, flow, start, end, source, experiment)
    stmt = (select(ServedList.arm, func.count(), *(func.sum(getattr(ServedList, c)) for c in GUARDRAILS))
            .where(_filters(ServedList, flow, sc.start, sc.end, source), ServedList.user_id.not_in(sc.both_arms))
            .group_by(ServedList.arm, ServedList.user_id))
    per_arm = _per_user(engine, stmt)  # one query for every metric
    return {column: _scoped(_compare_arms(per_arm, j + 1, 0, mde, label), sc)
            for j, (column, label) in enumerate(GUARDRAILS.items())}


def daily_requests_by_source(engine: Engine, flow: str | None = None, start=None, end=None) -> pd.DataFrame:
    """One row per (day, source): served ``lists``, their ``impressions`` and engaged impressions
    (``clicks``). Aggregated in SQL; a NULL source is shown as :data:`EARLIER`, as are impressions
    with no served list. Empty frame without traffic."""
    clicked = _flag(ENGAGED).subquery()
    day = _day(Impression.served_at, engine)
    imp = (
        select(day.label("day"), ServedList.source, func.count().label("impressions"),
               func.count(clicked.c.impression_id).label("clicks"))
        .select_from(Impression)
        .outerjoin(ServedList, ServedList.request_id == Impression.request_id)
        .outerjoin(clicked, clicked.c.impression_id == Impression.id)
        .where(_filters(Impression, flow, start, end))
        .group_by(day, ServedList.source)
    )
    lday = _day(ServedList.served_at, engine)
    lists = (
        select(lday.label("day"), ServedList.source, func.count().label("lists"))
        .where(_filters(ServedList, flow, start, end))
        .group_by(lday, ServedList.source)
    )
    with engine.connect() as conn:
        a = pd.DataFrame(conn.execute(imp).all(), columns=["day", "source", "impressions", "clicks"])
        b = pd.DataFrame(conn.execute(lists).all(), columns=["day", "source", "lists"])
    for df in (a, b):
        df["day"] = pd.to_datetime(df["day"]).dt.date
        df["source"] = df["source"].fillna(EARLIER)
    counts = ["lists", "impressions", "clicks"]
    out = b.merge(a, on=["day", "source"], how="outer")
    out[counts] = out[counts].fillna(0).astype(int)
    return out[["day", "source", *counts]].sort_values(["day", "source"]).reset_index(drop=True)


__all__ = ["EARLIER", "LIST_METRICS", "TrafficScope", "daily_metrics", "daily_metrics_by_arm",
           "traffic_scope", "summary_by_arm", "ab_test", "guardrail_tests", "daily_requests_by_source",
           "LATEST", "Scope", "scope"]
