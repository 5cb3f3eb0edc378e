"""Daily rollups (ranker.data.rollups) give the dashboard's metrics exactly as the live queries do.

Every metric the Metrics & A/B and Overview pages show is read both ways — from the rollups
(:mod:`ranker.ops.rollup_metrics`) and live (:mod:`ranker.serving.online`,
:func:`ranker.ops.report.ctr_by_cohort`) — over several filters and periods, on a small simulated
world, on SQLite and on PostgreSQL; then again after more traffic and late clicks, where an
incremental refresh must leave the same tables as a full rebuild.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import asdict
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import Engine, select, text

from ranker import config, faults
from ranker.data import rollups
from ranker.data.db import ensure_schema, make_engine, session_scope
from ranker.data.schema import DailyMetric, DailyUserMetric, Impression, Outcome, ServedList
from ranker.ops import report
from ranker.ops import rollup_metrics as rolled
from ranker.serving import online
from tests.conftest import ranker_env

REL = 1e-9


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def _same_frame(live: pd.DataFrame, from_rollups: pd.DataFrame, what: str) -> None:
    assert list(live.columns) == list(from_rollups.columns), what
    assert len(live) == len(from_rollups), what
    if live.empty:
        return
    pd.testing.assert_frame_equal(live.reset_index().astype({"day": str} if "day" in live.columns else {}),
                                  from_rollups.reset_index().astype({"day": str} if "day" in live.columns else {}),
                                  check_dtype=False, check_exact=False, rtol=REL, obj=what)


def _same_ab(live, from_rollups, what: str) -> None:
    a, b = asdict(live), asdict(from_rollups)
    assert a.keys() == b.keys()
    for k in a:
        assert _close(a[k], b[k]), f"{what}: {k}: live {a[k]!r} != rollups {b[k]!r}"


def _periods(engine: Engine) -> list[tuple[object, object]]:
    """Unbounded, whole days as the page picks them, a part-day window, and one inside a day."""
    scope = online.traffic_scope(engine)
    lo, hi = scope.first_day, scope.last_day
    mid = datetime.combine(hi, datetime.min.time()) - timedelta(hours=17, minutes=13)
    return [(None, None), (lo, hi + timedelta(days=1)), (hi - timedelta(days=2), hi),
            (mid, None), (mid - timedelta(days=1), mid + timedelta(hours=20)), (mid, mid + timedelta(hours=5))]


def assert_rollups_match_live(engine: Engine, every_filter: bool = True) -> int:
    """Compare every page metric both ways over periods and filters (with ``every_filter`` False: every
    flow and source together, and the simulator's); returns how many comparisons."""
    assert rolled.traffic_scope(engine) == online.traffic_scope(engine)
    scope = online.traffic_scope(engine)
    assert "sim" in scope.sources and len(scope.flows) > 1, "the world must have simulated traffic in several flows"
    n = 0
    flows, sources = ((None, scope.flows[0]), (None, "sim", config.LEGACY, online.EARLIER)) if every_filter else (
        (None,), (None, "sim"))
    for flow in flows:
        for source in sources:
            for start, end in _periods(engine):
                what = f"flow={flow} source={source} [{start}, {end})"
                _same_frame(online.daily_metrics_by_arm(engine, flow, start, end, source),
                            rolled.daily_metrics_by_arm(engine, flow, start, end, source), f"by arm {what}")
                _same_frame(online.summary_by_arm(engine, flow, start, end, source).sort_index(),  # arms unordered
                            rolled.summary_by_arm(engine, flow, start, end, source), f"summary {what}")
                for experiment in (None, online.LATEST):
                    _same_ab(online.ab_test(engine, flow, start, end, source=source, experiment=experiment),
                             rolled.ab_test(engine, flow, start, end, source=source, experiment=experiment),
                             f"A/B {what} {experiment}")
                    live_guard = online.guardrail_tests(engine, flow, start, end, source=source, experiment=experiment)
                    rolled_guard = rolled.guardrail_tests(engine, flow, start, end, source=source,
                                                          experiment=experiment)
                    assert live_guard.keys() == rolled_guard.keys()
                    for metric in live_guard:
                        _same_ab(live_guard[metric], rolled_guard[metric], f"{metric} {what} {experiment}")
                    live_cohorts = report.ctr_by_cohort(engine, flow, start, end, source, experiment)
                    rolled_cohorts = rolled.ctr_by_cohort(engine, flow, start, end, source, experiment)
                    assert len(live_cohorts) == len(rolled_cohorts), what
                    assert all(_close(a, b) for a, b in zip(live_cohorts, rolled_cohorts)), f"cohorts {what}"
                    n += 3
                if source is None:
                    _same_frame(online.daily_requests_by_source(engine, flow, start, end),
                                rolled.daily_requests_by_source(engine, flow, start, end), f"by source {what}")
                n += 2
    return n


def _tables(engine: Engine) -> tuple[list, list]:
    with engine.connect() as conn:
        users = conn.execute(select(DailyUserMetric).order_by(*DailyUserMetric.__table__.primary_key.columns)).all()
        days = conn.execute(select(DailyMetric).order_by(*DailyMetric.__table__.primary_key.columns)).all()
    return [tuple(r) for r in users], [tuple(r) for r in days]


def _same_tables(a: tuple[list, list], b: tuple[list, list]) -> None:
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for rx, ry in zip(x, y):
            assert all(_close(float(p), float(q)) if isinstance(p, float) else p == q for p, q in zip(rx, ry)), (rx, ry)


def _forget(engine: Engine) -> None:
    """Delete the rollups' watermark (as a wiped world does): the next refresh rolls up everything."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM settings WHERE key = 'rollups'"))


def _late_click(engine: Engine, day: date) -> datetime:
    """Log a click, a day late, on an unclicked impression served on ``day``; returns the click's time."""
    from ranker.serving.experiments import log_outcomes

    start = datetime.combine(day, datetime.min.time())
    with engine.connect() as conn:
        imp_id, served_at = conn.execute(
            select(Impression.id, Impression.served_at)
            .where(Impression.served_at >= start, Impression.served_at < start + timedelta(days=1),
                   Impression.id.not_in(select(Outcome.impression_id).where(Outcome.kind == "click")))
            .order_by(Impression.id).limit(1)).one()
    at = served_at + timedelta(days=1, hours=3)
    log_outcomes(engine, [(imp_id, "click", at)])
    return at


def _exercise(engine: Engine, simulate_more, every_filter: bool = True) -> None:
    """The scenario both backends run: roll up, compare (over every filter, or the main ones); late
    click, compare; more traffic, compare; the incremental tables against a full rebuild."""
    _forget(engine)  # simulate refreshed them: start from nothing rolled up
    first = rollups.refresh(engine)
    assert first.days and first.through == online.traffic_scope(engine).last_day
    assert rollups.refresh(engine).days == []  # nothing new: nothing recomputed
    assert assert_rollups_match_live(engine, every_filter) > 20

    clicked_day = first.through - timedelta(days=2)
    at = _late_click(engine, clicked_day)
    # the impression's day, and the days from the click on (as an interaction it changes later cohorts)
    assert rollups.refresh(engine).days == [clicked_day, *rollups._days(at.date(), first.through)]
    assert_rollups_match_live(engine, every_filter=False)

    simulate_more()
    again = rollups.refresh(engine)
    assert again.through > first.through and not again.full
    assert_rollups_match_live(engine, every_filter=False)
    incremental = _tables(engine)
    assert rollups.refresh(engine, full=True).full
    _same_tables(incremental, _tables(engine))


# --- SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def traffic(world_copy, isolated_dirs) -> Engine:
    """The small world (legacy feed history) with two simulated days of ranker traffic."""
    from ranker.sim.simulate import simulate

    engine = ensure_schema(world_copy)
    simulate(engine, days=2, requests_per_day=60, seed=1, refit_base=False)
    return engine


def test_every_page_metric_from_rollups_equals_the_live_query_on_sqlite(traffic):
    from ranker.sim.simulate import simulate

    _exercise(traffic, lambda: simulate(traffic, days=2, requests_per_day=40, seed=2, refit_base=False))


def test_simulation_refreshes_the_rollups_after_each_day(traffic):
    reached = rollups.through(traffic)
    assert reached == online.traffic_scope(traffic).last_day
    assert rollups.refresh(traffic).days == []  # simulate left nothing to do


def test_the_split_reads_part_days_live_and_whole_covered_days_from_rollups():
    through = date(2025, 1, 10)
    assert rolled.split(through, None, None) == ((None, through), [(datetime(2025, 1, 11), None)])
    assert rolled.split(None, date(2025, 1, 2), None) == (None, [(datetime(2025, 1, 2), None)])
    lo, hi = datetime(2025, 1, 3, 7, 30), datetime(2025, 1, 8, 12)
    assert rolled.split(through, lo, hi) == ((date(2025, 1, 4), date(2025, 1, 7)),
                                             [(lo, datetime(2025, 1, 4)), (datetime(2025, 1, 8), hi)])
    assert rolled.split(through, datetime(2025, 1, 5, 1), datetime(2025, 1, 5, 9)) == (
        None, [(datetime(2025, 1, 5, 1), datetime(2025, 1, 5, 9))])
    assert rolled.split(through, date(2025, 1, 9), date(2025, 1, 13)) == (
        (date(2025, 1, 9), through), [(datetime(2025, 1, 11), datetime(2025, 1, 13))])


def test_a_deleted_partial_day_marks_its_rollups_stale(traffic):
    """The simulator's rollback of an open day deletes lists: the rollups of those days are redone."""
    from ranker.sim import runs

    rollups.refresh(traffic)
    last = rollups.through(traffic)
    clock = datetime.combine(last, datetime.min.time()) + timedelta(hours=6)
    with session_scope(traffic) as s:
        gone = runs.rollback_open_day(s, clock)
    assert gone["lists"] > 0
    assert rollups.through(traffic) == last - timedelta(days=1)  # the day is read live until refreshed
    assert_rollups_match_live(traffic, every_filter=False)
    assert rollups.refresh(traffic).through == online.traffic_scope(traffic).last_day
    assert_rollups_match_live(traffic, every_filter=False)


def test_a_wiped_world_is_rolled_up_from_scratch(traffic):
    with session_scope(traffic) as s:
        s.execute(text("DELETE FROM settings"))
    assert rollups.through(traffic) is None
    assert_rollups_match_live(traffic, every_filter=False)  # read live meanwhile
    assert rollups.refresh(traffic).full
    assert_rollups_match_live(traffic, every_filter=False)


def test_a_crash_mid_refresh_leaves_the_previous_rollups(traffic, tmp_path):
    """The refresh dies (as kill -9) after rewriting its days, before committing: nothing changed."""
    rollups.refresh(traffic)
    before, state = _tables(traffic), rollups.through(traffic)
    url = traffic.url.render_as_string(hide_password=False)
    _forget(traffic)  # the next refresh rewrites every day
    env = ranker_env(url, tmp_path / "models", RANKER_FAULT="rollups:before_commit")
    done = subprocess.run([sys.executable, "-m", "ranker", "rollups", "refresh"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == faults.FAULT_EXIT_CODE, done.stderr
    assert rollups.through(traffic) is None  # the watermark is as it was (gone)
    assert _tables(traffic) == before  # and so are the tables
    assert rollups.refresh(traffic).through == state


def test_two_refreshes_at_once_leave_one_consistent_result(traffic, tmp_path):
    _forget(traffic)
    url = traffic.url.render_as_string(hide_password=False)
    env = ranker_env(url, tmp_path / "models")
    procs = [subprocess.Popen([sys.executable, "-m", "ranker", "rollups", "refresh", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert_rollups_match_live(traffic, every_filter=False)
    assert rollups.refresh(traffic).days == []


def test_the_cli_refreshes_and_rebuilds(traffic, tmp_path):
    import json

    url = traffic.url.render_as_string(hide_password=False)
    env = ranker_env(url, tmp_path / "models")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ranker", "rollups", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    up_to_date = json.loads(run("refresh", "--json").stdout)
    assert up_to_date["days"] == [] and up_to_date["through"] == str(rollups.through(traffic))
    rebuilt = run("refresh", "--full")
    assert rebuilt.returncode == 0 and "rebuilt" in rebuilt.stdout


# --- PostgreSQL --------------------------------------------------------------------------------


def test_every_page_metric_from_rollups_equals_the_live_query_on_postgresql(pg_world):
    url, models = pg_world
    env = ranker_env(url, models)

    def simulate(days: int, seed: int) -> None:
        subprocess.run([sys.executable, "-m", "ranker", "simulate", "--days", str(days), "--requests-per-day", "40",
                        "--seed", str(seed), "--no-refit"], env=env, check=True, capture_output=True, timeout=600)

    simulate(2, 1)
    engine = make_engine(url)
    try:
        # the main filters only: the full grid runs on SQLite, and this one must stay within the timeout
        _exercise(engine, lambda: simulate(2, 2), every_filter=False)
    finally:
        engine.dispose()


def test_served_lists_with_no_impressions_count_as_lists_only(traffic):
    """An empty served list has list metrics and no impressions, as in the live queries."""
    with session_scope(traffic) as s:
        last = s.scalar(select(ServedList.served_at).order_by(ServedList.served_at.desc()).limit(1))
        s.add(ServedList(request_id="empty-1", user_id=1, flow="developer-startup", arm="treatment", k=0,
                         reranked=True, model_version="rule", served_at=last - timedelta(days=1), ild=0.0,
                         category_coverage=0.0, category_entropy=0.0, mean_age_days=0.0, source="api"))
    rollups.refresh(traffic, full=True)  # a list with no impressions moves no id: a refresh finds it with its day
    assert_rollups_match_live(traffic, every_filter=False)
