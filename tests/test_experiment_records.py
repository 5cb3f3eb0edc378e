"""A/B experiments are records: nobody is in control until an operator starts one, analysis reads
only an experiment's window on the serve clock, and users served in both arms are left out."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ranker import config
from ranker.data.clock import serve_now, set_clock
from ranker.data.db import ensure_schema, make_engine, session_scope
from ranker.data.schema import Interaction, User
from ranker.serving import experiments as ex
from ranker.serving.online import ab_test, guardrail_tests
from ranker.serving.service import recommend
from tests.conftest import ranker_env


def _developers(engine, n: int) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(
            select(User.id).join(Interaction, Interaction.user_id == User.id)
            .where(User.role == "developer", Interaction.kind.in_(config.POSITIVE_KINDS))
            .group_by(User.id).order_by(func.count().desc(), User.id).limit(n)).scalars())


def _serve(engine, users: list[int], hours: float = 1.0) -> list:
    """Serve each user once, then move the serve clock on by ``hours``."""
    recs = [recommend(u, "developer-startup", 5, engine=engine, source="cli") for u in users]
    with session_scope(engine) as s:
        set_clock(s, serve_now(s) + timedelta(hours=hours))
    return recs


def test_a_new_database_runs_no_experiment_and_everyone_gets_the_ranker(tmp_path):
    engine = ensure_schema(make_engine(f"sqlite:///{tmp_path / 'new.db'}"))
    exp = ex.get_experiment(engine)
    assert not exp.running and ex.list_experiments(engine) == []
    assert {ex.assign_arm(u, exp) for u in range(500)} == {"treatment"}


def test_the_demo_world_starts_a_named_demo_experiment(small_world_engine):
    exp = ex.get_experiment(small_world_engine)
    assert exp.running and exp.name == "demo"
    (record,) = ex.list_experiments(small_world_engine)
    assert record.owner == "demo init" and record.ended_at is None
    with session_scope(small_world_engine) as s:
        assert record.started_at == serve_now(s)  # on the world's clock, not the wall clock


def test_start_and_stop_are_refused_when_they_make_no_sense(world_copy):
    with pytest.raises(ex.ExperimentError, match="is running since"):
        ex.start_experiment(world_copy, "second")
    ex.stop_experiment(world_copy)
    with pytest.raises(ex.ExperimentError, match="no experiment is running"):
        ex.stop_experiment(world_copy)
    with pytest.raises(ex.ExperimentError, match="exists already"):
        ex.start_experiment(world_copy, "demo")
    with pytest.raises(ValueError, match="between 0 and 100"):
        ex.start_experiment(world_copy, "bad", rollout=101)
    assert [e.name for e in ex.list_experiments(world_copy)] == ["demo"]


def test_analysis_reads_only_the_experiments_window_and_past_ones_stay_analysable(served):
    users = _developers(served, 40)
    ex.stop_experiment(served)
    before = _serve(served, users)  # no experiment: everyone in treatment
    assert {r.arm for r in before} == {"treatment"}
    first = ex.start_experiment(served, "first", rollout=50)
    inside = _serve(served, users)
    ex.stop_experiment(served)
    _serve(served, users)  # after: treatment again
    arms = [r.arm for r in inside]
    result = ab_test(served, experiment="first")
    assert result.experiment == "first" and result.excluded_users == 0
    assert (result.control.users, result.treatment.users) == (arms.count("control"), arms.count("treatment"))
    assert result.control.denominator + result.treatment.denominator == sum(len(r.items) for r in inside)

    ex.start_experiment(served, "second", rollout=20)
    _serve(served, users)
    again = ab_test(served, experiment=first.id)  # by id, after another one started
    assert (again.control.users, again.treatment.users) == (result.control.users, result.treatment.users)
    assert ab_test(served).experiment == "second"  # the running one by default
    assert [e.name for e in ex.list_experiments(served)] == ["second", "first", "demo"]


def test_users_served_in_both_arms_are_reported_and_left_out(served):
    users = _developers(served, 40)
    ex.stop_experiment(served)
    ex.start_experiment(served, "moving", rollout=30)
    first = {r.user_id: r.arm for r in _serve(served, users)}
    ex.set_rollout(served, 70)  # users between 30 and 70 move from control to treatment
    second = {r.user_id: r.arm for r in _serve(served, users)}
    moved = {u for u in users if first[u] != second[u]}
    assert moved
    result = ab_test(served)
    assert result.excluded_users == len(moved)
    assert result.control.users + result.treatment.users == len(users) - len(moved)
    assert "served in both arms" in result.verdict
    assert all(g.excluded_users == len(moved) for g in guardrail_tests(served).values())


@pytest.mark.slow  # a subprocess, a retrain or a second world: not for the inner loop
def test_cli_starts_lists_and_stops_experiments(served, tmp_path):
    env = ranker_env(str(served.url), tmp_path / "models")

    def ranker(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "ranker", "experiment", *args], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        return out.stdout

    assert "stopped experiment 'demo'" in ranker("stop")
    assert "no experiment is running" in ranker("show")
    assert "started experiment 'launch'" in ranker("start", "--name", "launch", "--rollout", "25")
    listing = ranker("list")
    assert "launch" in listing and "running" in listing and "demo" in listing
    bad = subprocess.run([sys.executable, "-m", "ranker", "experiment", "start", "--name", "x"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "is running since" in bad.stderr and "Traceback" not in bad.stderr


def test_api_lists_starts_and_stops_experiments(served):
    from fastapi.testclient import TestClient

    from ranker.api import create_app
    from ranker.api.auth import Keys

    with TestClient(create_app(served, keys=Keys(write=("w",)))) as c:
        assert c.post("/v1/experiments/stop").status_code == 401  # writes need a key
        stopped = c.post("/v1/experiments/stop", headers={"X-API-Key": "w"})
        assert stopped.status_code == 200 and stopped.json()["running"] is False
        assert c.post("/v1/experiments/stop", headers={"X-API-Key": "w"}).status_code == 409
        bad = c.post("/v1/experiments", json={"name": "x", "rollout": 120}, headers={"X-API-Key": "w"})
        assert bad.status_code == 422 and bad.json()["field"] == "rollout"
        started = c.post("/v1/experiments", json={"name": "api-test", "rollout": 10}, headers={"X-API-Key": "w"})
        assert started.status_code == 201
        assert started.json() | {"id": 0, "started_at": ""} == {
            "id": 0, "name": "api-test", "arms": ["control", "treatment"], "allocation": 10.0, "started_at": "",
            "ended_at": None, "owner": "api", "running": True}
        clash = c.post("/v1/experiments", json={"name": "again"}, headers={"X-API-Key": "w"})
        assert clash.status_code == 409 and "is running since" in clash.json()["error"]
        assert [e["name"] for e in c.get("/v1/experiments").json()] == ["api-test", "demo"]
    assert ex.get_experiment(served).rollout == 10
