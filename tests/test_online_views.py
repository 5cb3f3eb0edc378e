"""Online metrics as the Metrics & A/B page shows them: per day and arm, and the filters' scope."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import text

from ranker import config, keys
from ranker.data.clock import serve_now
from ranker.data.db import session_scope
from ranker.serving import online
from ranker.serving.experiments import log_outcomes
from ranker.serving.service import recommend


def table(engine, sql: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(sql), conn)


def users(engine, role: str, n: int) -> list[int]:
    return table(engine, f"SELECT id FROM users WHERE role = '{role}' ORDER BY id LIMIT {n}")["id"].tolist()


@pytest.fixture
def quiet(served):
    """The trained small world with its log of served lists emptied (a demo world may hold history)."""
    with served.begin() as conn:
        for name in ("outcomes", "impressions", "served_lists"):
            conn.execute(text(f"DELETE FROM {name}"))
    return served


@pytest.fixture
def traffic(quiet):
    """Two days of served lists in both arms: simulated (day 1, developers), HTTP and unsourced
    (day 2, founders), with clicks on three of them."""
    engine = quiet
    with session_scope(engine) as s:
        now = serve_now(s)
    day1, day2 = now - timedelta(days=1), now
    lists = []
    for n, user in enumerate(users(engine, "developer", 4)):
        lists.append(recommend(user, "developer-startup", 5, engine=engine, as_of=day1, arm=config.ARMS[n % 2],
                               source="sim"))
    for n, user in enumerate(users(engine, "founder", 3)):
        lists.append(recommend(user, "founder-developer", 5, engine=engine, as_of=day2, arm=config.ARMS[n % 2],
                               source="api" if n < 2 else None))
    clicked = [lists[0], lists[1], lists[4]]
    log_outcomes(engine, [(rec.impression_ids[0], "click", rec.served_at) for rec in clicked])
    return engine


def expected_by_arm(engine, flow: str | None = None) -> pd.DataFrame:
    """Per (day, arm), counted straight from the tables with pandas."""
    where = f"WHERE flow = '{flow}'" if flow else ""
    imp = table(engine, f"SELECT id, arm, date(served_at) AS day FROM impressions {where}")
    kinds = ", ".join(f"'{k}'" for k in config.ENGAGED_KINDS)
    clicked = set(table(engine, f"SELECT impression_id FROM outcomes WHERE kind IN ({kinds})")["impression_id"])
    imp["clicks"] = imp["id"].isin(clicked).astype(int)
    lists = table(engine, f"SELECT arm, date(served_at) AS day, ild, mean_age_days FROM served_lists {where}")
    out = imp.groupby(["day", "arm"]).agg(impressions=("id", "size"), clicks=("clicks", "sum")).join(
        lists.groupby(["day", "arm"]).agg(lists=("ild", "size"), ild=("ild", "mean"),
                                          mean_age_days=("mean_age_days", "mean")))
    out["ctr"] = out["clicks"] / out["impressions"]
    return out.reset_index()


def test_metrics_by_arm_add_up_the_flows_of_each_day_and_arm(traffic):
    shown = online.daily_metrics_by_arm(traffic)
    expected = expected_by_arm(traffic)

    assert [(str(d), a) for d, a in zip(shown["day"], shown["arm"])] == list(zip(expected["day"], expected["arm"]))
    assert shown["arm"].tolist() == ["control", "treatment"] * 2
    assert shown["impressions"].tolist() == expected["impressions"].tolist() == [10, 10, 10, 5]
    assert shown["clicks"].tolist() == expected["clicks"].tolist() == [1, 1, 1, 0]
    assert shown["lists"].tolist() == expected["lists"].tolist() == [2, 2, 2, 1]
    assert shown[keys.CTR].tolist() == pytest.approx(expected["ctr"].tolist())
    assert shown[keys.ILD].tolist() == pytest.approx(expected["ild"].tolist())
    assert shown[keys.MEAN_AGE_DAYS].tolist() == pytest.approx(expected["mean_age_days"].tolist())


def test_metrics_by_arm_of_one_flow_count_only_that_flow(traffic):
    shown = online.daily_metrics_by_arm(traffic, flow="founder-developer")
    expected = expected_by_arm(traffic, flow="founder-developer")
    assert shown["impressions"].tolist() == expected["impressions"].tolist() == [10, 5]
    assert shown[keys.ILD].tolist() == pytest.approx(expected["ild"].tolist())


def test_metrics_by_arm_weight_each_flows_mean_by_its_lists(quiet):
    """One day and arm, two flows with different numbers of lists: the day's ILD is the mean over lists,
    not the mean of the two flows' means."""
    engine = quiet
    with session_scope(engine) as s:
        now = serve_now(s)
    recs = [recommend(u, "developer-startup", 5, engine=engine, as_of=now, arm="treatment")
            for u in users(engine, "developer", 3)]
    recs.append(recommend(users(engine, "founder", 1)[0], "founder-developer", 5, engine=engine, as_of=now,
                          arm="treatment"))
    ild = table(engine, "SELECT ild FROM served_lists")["ild"]

    shown = online.daily_metrics_by_arm(engine)

    assert shown["lists"].tolist() == [len(recs)] == [len(ild)]
    assert shown[keys.ILD].tolist() == pytest.approx([ild.mean()])


def test_the_traffic_scope_names_every_flow_source_and_day(traffic):
    scope = online.traffic_scope(traffic)
    days = table(traffic, "SELECT MIN(date(served_at)) AS first, MAX(date(served_at)) AS last FROM impressions")
    assert scope.flows == ["developer-startup", "founder-developer"]
    assert scope.sources == ["api", online.EARLIER, "sim"]
    assert (str(scope.first_day), str(scope.last_day)) == (days["first"][0], days["last"][0])
    assert scope.last_day - scope.first_day == timedelta(days=1)


def test_without_traffic_there_is_no_scope_and_no_metrics(quiet):
    assert online.traffic_scope(quiet) is None
    empty = online.daily_metrics_by_arm(quiet)
    assert empty.empty and {"day", "arm", "impressions", keys.CTR, keys.ILD} <= set(empty.columns)
