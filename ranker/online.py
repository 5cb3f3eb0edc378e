"""Online metrics from the serving logs, aggregated in SQL per arm, flow and day.

- CTR: impressions with a click (or any engagement) / impressions.
- Explicit feedback rate: impressions with like/favorite/apply/interest / impressions.
- Diversity: mean intra-list diversity, category coverage and entropy of served lists.
- Freshness: mean age in days of served items.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, cast, distinct, func, select
from sqlalchemy.types import Date

from ranker import config
from ranker.abtest import ABResult, analyse, arm_stats
from ranker.schema import Impression, Outcome, ServedList

ENGAGED = config.ENGAGED_KINDS


def _day(col, engine: Engine):
    return func.date(col) if engine.dialect.name == "sqlite" else cast(col, Date)


def _flag(kinds) -> select:
    return select(Outcome.impression_id).where(Outcome.kind.in_(kinds)).distinct()


def _filters(model, flow: str | None, start: date | datetime | None, end: date | datetime | None):
    conds = []
    if flow:
        conds.append(model.flow == flow)
    if start:
        conds.append(model.served_at >= start)
    if end:
        conds.append(model.served_at < end)
    return and_(*conds) if conds else True


def daily_metrics(engine: Engine, flow: str | None = None, start=None, end=None) -> pd.DataFrame:
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
        .where(_filters(Impression, flow, start, end))
        .group_by(day, Impression.arm, Impression.flow)
    )
    lday = _day(ServedList.served_at, engine)
    lists = (
        select(lday.label("day"), ServedList.arm, ServedList.flow, func.count().label("lists"),
               func.avg(ServedList.ild).label("ild"),
               func.avg(ServedList.category_coverage).label("category_coverage"),
               func.avg(ServedList.category_entropy).label("category_entropy"),
               func.avg(ServedList.mean_age_days).label("mean_age_days"))
        .where(_filters(ServedList, flow, start, end))
        .group_by(lday, ServedList.arm, ServedList.flow)
    )
    with engine.connect() as conn:
        a = pd.DataFrame(conn.execute(imp).mappings().all())
        b = pd.DataFrame(conn.execute(lists).mappings().all())
    if a.empty:
        return pd.DataFrame(columns=["day", "arm", "flow", "impressions", "clicks", "feedback", "users", "lists",
                                     "ctr", "feedback_rate", "ild", "category_coverage", "category_entropy",
                                     "mean_age_days"])
    for df in (a, b):
        if not df.empty:
            df["day"] = pd.to_datetime(df["day"]).dt.date
    out = a.merge(b, on=["day", "arm", "flow"], how="left") if not b.empty else a
    out["ctr"] = out["clicks"] / out["impressions"]
    out["feedback_rate"] = out["feedback"] / out["impressions"]
    return out.sort_values(["day", "arm", "flow"]).reset_index(drop=True)


def summary_by_arm(engine: Engine, flow: str | None = None, start=None, end=None) -> pd.DataFrame:
    """Headline metrics per arm over the whole period (SQL aggregates)."""
    clicked = _flag(ENGAGED).subquery()
    liked = _flag(config.POSITIVE_KINDS).subquery()
    imp = (
        select(Impression.arm, func.count().label("impressions"),
               func.count(clicked.c.impression_id).label("clicks"),
               func.count(liked.c.impression_id).label("feedback"),
               func.count(distinct(Impression.user_id)).label("users"))
        .outerjoin(clicked, clicked.c.impression_id == Impression.id)
        .outerjoin(liked, liked.c.impression_id == Impression.id)
        .where(_filters(Impression, flow, start, end))
        .group_by(Impression.arm)
    )
    lists = (
        select(ServedList.arm, func.count().label("lists"), func.avg(ServedList.ild).label("ild"),
               func.avg(ServedList.category_coverage).label("category_coverage"),
               func.avg(ServedList.category_entropy).label("category_entropy"),
               func.avg(ServedList.mean_age_days).label("mean_age_days"))
        .where(_filters(ServedList, flow, start, end))
        .group_by(ServedList.arm)
    )
    with engine.connect() as conn:
        a = pd.DataFrame(conn.execute(imp).mappings().all())
        b = pd.DataFrame(conn.execute(lists).mappings().all())
    if a.empty:
        return pd.DataFrame(columns=["arm", "impressions", "clicks", "ctr"])
    out = a.merge(b, on="arm", how="left") if not b.empty else a
    out["ctr"] = out["clicks"] / out["impressions"]
    out["feedback_rate"] = out["feedback"] / out["impressions"]
    return out.set_index("arm")


def per_user_counts(engine: Engine, flow: str | None = None, start=None, end=None,
                    kinds=ENGAGED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """arm → (clicks per user, impressions per user), summed in SQL."""
    clicked = _flag(kinds).subquery()
    stmt = (
        select(Impression.arm, Impression.user_id, func.count(clicked.c.impression_id), func.count())
        .outerjoin(clicked, clicked.c.impression_id == Impression.id)
        .where(_filters(Impression, flow, start, end))
        .group_by(Impression.arm, Impression.user_id)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    out: dict[str, tuple[list, list]] = {}
    for arm, _user, c, n in rows:
        out.setdefault(arm, ([], []))
        out[arm][0].append(c)
        out[arm][1].append(n)
    return {arm: (np.array(c, float), np.array(n, float)) for arm, (c, n) in out.items()}


def ab_test(engine: Engine, flow: str | None = None, start=None, end=None, mde: float = 0.05) -> ABResult:
    """CTR lift of treatment over control, per-user delta method."""
    counts = per_user_counts(engine, flow, start, end)
    stats = {arm: arm_stats(*counts[arm]) if arm in counts else None for arm in config.ARMS}
    return analyse(stats["control"], stats["treatment"], mde=mde)


#: List-level metrics compared between arms next to CTR: column of ``served_lists`` → label.
GUARDRAILS = {"ild": "diversity (ILD)", "mean_age_days": "mean age of served items"}


def guardrail_tests(engine: Engine, flow: str | None = None, start=None, end=None,
                    mde: float = 0.05) -> dict[str, ABResult]:
    """Diversity and freshness of treatment against control, with the same per-user delta method
    as CTR: each metric is a mean over lists, Σ per-user metric / Σ per-user lists.

    Ages spread over hundreds of days, so a difference between two independent arms needs a
    confidence interval before it means "fresher" or "staler". A lower age is fresher.
    """
    out: dict[str, ABResult] = {}
    for column, label in GUARDRAILS.items():
        col = getattr(ServedList, column)
        stmt = (select(ServedList.arm, func.sum(col), func.count())
                .where(_filters(ServedList, flow, start, end))
                .group_by(ServedList.arm, ServedList.user_id))
        with engine.connect() as conn:
            rows = conn.execute(stmt).all()
        per_arm: dict[str, tuple[list, list]] = {}
        for arm, total, lists in rows:
            per_arm.setdefault(arm, ([], []))
            per_arm[arm][0].append(float(total))
            per_arm[arm][1].append(float(lists))
        stats = {arm: arm_stats(np.array(per_arm[arm][0]), np.array(per_arm[arm][1])) if arm in per_arm else None
                 for arm in config.ARMS}
        out[column] = analyse(stats["control"], stats["treatment"], mde=mde, metric=label)
    return out


__all__ = ["daily_metrics", "summary_by_arm", "ab_test", "guardrail_tests", "per_user_counts"]
