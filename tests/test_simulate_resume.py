"""Simulated traffic survives a crash: a killed run is resumed (or discarded) as a unit, never doubled.

The CLI tests run ``ranker simulate`` in a subprocess that a fault point ends as ``kill -9``
would (``RANKER_FAULT``, exit 137), run it again, and compare the database with an
uninterrupted run on a copy of the same world.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from ranker import keys
from ranker.data.db import ensure_schema, get_setting, make_engine, session_scope
from ranker.data.schema import Impression, Interaction, Item, Outcome, ServedList, SimulationRun
from ranker.faults import FAULT_EXIT_CODE
from ranker.ops import jobs
from ranker.sim import runs
from tests.conftest import ranker_env

START = datetime(2026, 1, 1)  # the small world's clock
DAY = ["--days", "1", "--requests-per-day", "300", "--no-refit"]


# --- Worlds and commands ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_world(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the small world (``world.db``) and its fitted base models (``models/``)."""
    root = tmp_path_factory.mktemp("fitted")
    _backup(small_world, root / "world.db")
    env = ranker_env(f"sqlite:///{root / 'world.db'}", root / "models")
    subprocess.run([sys.executable, "-m", "ranker", "base", "fit"], env=env, check=True, capture_output=True,
                   timeout=300)
    return root


@pytest.fixture(scope="module")
def uninterrupted(fitted_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What ``ranker simulate`` with ``DAY`` leaves when nothing stops it: lists, responses, items."""
    url = _world(fitted_world, tmp_path_factory.mktemp("uninterrupted"))
    assert _ranker(url, "simulate", *DAY).returncode == 0
    return {"lists": _lists(url), "responses": _responses(url), "items": _items(url)}


def _backup(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def _world(fitted: Path, folder: Path) -> str:
    """A private copy of the fitted world in ``folder``; returns its database URL."""
    _backup(fitted / "world.db", folder / "world.db")
    shutil.copytree(fitted / "models", folder / "models")
    return f"sqlite:///{folder / 'world.db'}"


def _ranker(url: str, *args: str, fault: str | None = None, models: Path | None = None) -> subprocess.CompletedProcess:
    """``ranker ARGS`` in a subprocess on ``url`` (models: beside a SQLite file unless given)."""
    models = models or Path(url.removeprefix("sqlite:///")).parent / "models"
    extra = {"RANKER_FAULT": fault} if fault else {}
    return subprocess.run([sys.executable, "-m", "ranker", *args], env=ranker_env(url, models, **extra),
                          capture_output=True, text=True, timeout=600)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one-line error of a refused command."""
    err = result.stderr.strip()
    assert result.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- What the database holds ------------------------------------------------------------


@contextmanager
def _db(url: str) -> Iterator[Connection]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _lists(url: str) -> list[tuple]:
    """Every simulated list: (request id, user, flow, arm, served at, items in served order)."""
    with _db(url) as conn:  # lists first: a list written meanwhile is not half read
        rows = conn.execute(select(ServedList.request_id, ServedList.user_id, ServedList.flow, ServedList.arm,
                                   ServedList.served_at).where(ServedList.source == "sim")
                            .order_by(ServedList.served_at, ServedList.request_id)).all()
        items: dict[str, list[int]] = {}
        for rid, item in conn.execute(select(Impression.request_id, Impression.item_id)
                                      .where(Impression.request_id.startswith("sim"))
                                      .order_by(Impression.request_id, Impression.position)):
            items.setdefault(rid, []).append(item)
    return [(*row, tuple(items[row[0]])) for row in rows]


def _unnamed(lists: list[tuple]) -> list[tuple]:
    """Lists without their request ids (which name the run)."""
    return [row[1:] for row in lists]


def _responses(url: str) -> tuple[list[tuple], list[tuple]]:
    """What simulated users did: outcomes (request id, position, kind, time), and the interactions
    logged after the world's start."""
    with _db(url) as conn:
        outcomes = conn.execute(select(Impression.request_id, Impression.position, Outcome.kind, Outcome.created_at)
                                .join(Impression, Impression.id == Outcome.impression_id)
                                .where(Impression.request_id.startswith("sim"))
                                .order_by(Impression.request_id, Impression.position, Outcome.kind)).all()
        interactions = conn.execute(select(Interaction.user_id, Interaction.item_id, Interaction.kind,
                                           Interaction.created_at).where(Interaction.created_at >= START)
                                    .order_by(Interaction.created_at, Interaction.user_id, Interaction.item_id,
                                              Interaction.kind)).all()
    return [tuple(o) for o in outcomes], [tuple(i) for i in interactions]


def _lists_per_day(url: str) -> dict[str, int]:
    with _db(url) as conn:
        day = func.date(ServedList.served_at)
        rows = conn.execute(select(day, func.count()).where(ServedList.source == "sim").group_by(day)).all()
    return {str(d): n for d, n in rows}


def _items(url: str) -> int:
    with _db(url) as conn:
        return conn.execute(select(func.count()).select_from(Item)).scalar_one()


def _runs(url: str) -> list[tuple]:
    """(id, status, unfinished, days finished) of every recorded simulation run."""
    with _db(url) as conn:
        rows = conn.execute(select(SimulationRun.id, SimulationRun.status, SimulationRun.unfinished,
                                   SimulationRun.day).order_by(SimulationRun.id)).all()
    return [tuple(r) for r in rows]


def _clock(url: str) -> datetime:
    engine = make_engine(url)
    try:
        with session_scope(engine) as s:
            return datetime.fromisoformat(get_setting(s, keys.CLOCK))
    finally:
        engine.dispose()


# --- A crash, then the same command -----------------------------------------------------


@pytest.mark.slow
def test_rerun_after_a_kill_mid_day_serves_exactly_the_lists_of_an_uninterrupted_run(fitted_world, uninterrupted,
                                                                                     tmp_path):
    url = _world(fitted_world, tmp_path / "crashed")
    killed = _ranker(url, "simulate", *DAY, fault="simulate:mid_day@196")
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    assert len(_lists(url)) == 196 and _clock(url) == START

    rerun = _ranker(url, "simulate", *DAY)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert "resuming simulation run 1 at day 1 of 1, request 197 of 300" in rerun.stdout
    assert _lists_per_day(url) == {"2026-01-01": 300}
    assert _clock(url) == START + timedelta(days=1)
    assert _runs(url) == [(1, "finished", None, 1)]

    assert _lists(url) == uninterrupted["lists"]
    assert _responses(url) == uninterrupted["responses"]
    assert _items(url) == uninterrupted["items"]


@pytest.mark.slow
def test_a_kill_before_the_clock_moves_finishes_the_day_without_serving_it_again(fitted_world, tmp_path):
    two_days = ["--days", "2", "--requests-per-day", "100", "--no-refit"]
    url = _world(fitted_world, tmp_path / "crashed")
    killed = _ranker(url, "simulate", *two_days, fault="simulate:before_clock")
    assert killed.returncode == FAULT_EXIT_CODE
    assert _lists_per_day(url) == {"2026-01-01": 100} and _clock(url) == START

    rerun = _ranker(url, "simulate", *two_days)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming simulation run 1 at day 1 of 2, request 101 of 100" in rerun.stdout
    assert _lists_per_day(url) == {"2026-01-01": 100, "2026-01-02": 100}
    assert _clock(url) == START + timedelta(days=2)

    whole = _world(fitted_world, tmp_path / "whole")
    assert _ranker(whole, "simulate", *two_days).returncode == 0
    assert _lists(url) == _lists(whole)
    assert _responses(url) == _responses(whole)
    assert _items(url) == _items(whole)  # the first day's new items were added once


@pytest.mark.slow
def test_a_rerun_with_another_seed_is_refused_and_discard_replaces_the_partial_day_as_a_unit(fitted_world, tmp_path):
    url = _world(fitted_world, tmp_path / "crashed")
    items_before = _items(url)
    assert _ranker(url, "simulate", *DAY, fault="simulate:mid_day@196").returncode == FAULT_EXIT_CODE
    partial = _lists(url)

    err = _error_line(_ranker(url, "simulate", *DAY, "--seed", "7"))
    assert "simulation run 1 stopped at day 1 of 1, request 197" in err
    assert "--resume" in err and "--discard" in err
    assert _lists(url) == partial and _clock(url) == START

    discarded = _ranker(url, "simulate", *DAY, "--seed", "7", "--discard")
    assert discarded.returncode == 0, discarded.stderr
    assert "discarded simulation run 1 at day 1 of 1, request 197: rolled back 196 lists" in discarded.stdout
    assert _lists_per_day(url) == {"2026-01-01": 300}
    assert {rid.split("-d")[0] for rid, *_ in _lists(url)} == {"sim-r2"}
    assert _runs(url) == [(1, "discarded", None, 0), (2, "finished", None, 1)]

    # the world is as if the killed run had never been: the same as seed 7 on a fresh copy
    fresh = _world(fitted_world, tmp_path / "fresh")
    assert _ranker(fresh, "simulate", *DAY, "--seed", "7").returncode == 0
    assert _unnamed(_lists(url)) == _unnamed(_lists(fresh))
    assert _responses(url)[1] == _responses(fresh)[1]
    assert _items(url) == _items(fresh) > items_before


@pytest.mark.slow
def test_lists_left_after_the_clock_without_a_run_are_refused_then_discarded(fitted_world, tmp_path):
    """What a crash of a version that kept no run records leaves: lists after the clock, nobody's."""
    url = _world(fitted_world, tmp_path / "crashed")
    assert _ranker(url, "simulate", *DAY, fault="simulate:mid_day@50").returncode == FAULT_EXIT_CODE
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(delete(SimulationRun))
    engine.dispose()

    err = _error_line(_ranker(url, "simulate", *DAY))
    assert "50 simulated lists lie after the world clock" in err and "--discard" in err
    assert len(_lists(url)) == 50

    assert _ranker(url, "simulate", *DAY, "--discard").returncode == 0
    assert _lists_per_day(url) == {"2026-01-01": 300}


@pytest.mark.slow
def test_the_dashboard_job_resumes_a_killed_simulation_job(fitted_world, uninterrupted, tmp_path):
    url = _world(fitted_world, tmp_path / "world")
    engine = ensure_schema(make_engine(url))
    params = {"days": 1, "requests_per_day": 300, "seed": 0, "refit_base": False}
    first, _ = jobs.submit(engine, "simulate", params, spawn=False)
    killed = _ranker(url, "jobs", "run", str(first.id), fault="simulate:mid_day@120")
    assert killed.returncode == FAULT_EXIT_CODE
    assert len(_lists(url)) == 120

    second, _ = jobs.submit(engine, "simulate", params, spawn=False)
    assert jobs.get(engine, first.id).status == "failed"  # its worker is gone
    done = _ranker(url, "jobs", "run", str(second.id))
    assert done.returncode == 0, done.stdout + done.stderr
    job = jobs.get(engine, second.id)
    engine.dispose()
    assert job.status == "succeeded"
    assert job.result["notice"] == "resuming simulation run 1 at day 1 of 1, request 121 of 300"
    assert job.result["requests"] == 300 and job.result["run_id"] == 1
    assert _lists(url) == uninterrupted["lists"]
    assert _responses(url) == uninterrupted["responses"]


# --- One simulation at a time -----------------------------------------------------------


@pytest.mark.slow
def test_a_second_simulation_while_one_runs_is_refused(fitted_world, tmp_path):
    url = _world(fitted_world, tmp_path / "world")
    long_run = subprocess.Popen([sys.executable, "-m", "ranker", "simulate", "--days", "1", "--requests-per-day",
                                 "100000", "--no-refit"], env=ranker_env(url, tmp_path / "world" / "models"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_a_list(url, long_run)
        for flags in ([], ["--discard"], ["--resume"]):
            err = _error_line(_ranker(url, "simulate", *DAY, *flags))
            assert err == (f"error: simulation run 1 is running (pid {long_run.pid}, day 1 of 1); wait for it or "
                           "cancel it (Ctrl-C where it runs, or cancel its job on the dashboard)")
    finally:
        long_run.kill()
        long_run.wait()
    # once its process is gone, the run can be discarded
    assert _ranker(url, "simulate", *DAY, "--discard").returncode == 0
    assert _lists_per_day(url) == {"2026-01-01": 300}
    assert [status for _, status, *_ in _runs(url)] == ["discarded", "finished"]


def _wait_for_a_list(url: str, proc: subprocess.Popen, limit: float = 300) -> None:
    """Wait until ``proc`` has served a list (it then holds its run)."""
    deadline = time.monotonic() + limit
    while not _lists_per_day(url):
        assert proc.poll() is None, "the simulation ended before serving a list"
        assert time.monotonic() < deadline, "the simulation served no list"
        time.sleep(0.5)


def _claim_race(engine: Engine, threads: int) -> list:
    """``threads`` threads claim a run at once; returns each one's run or error."""
    settings = runs.RunSettings(seed=0, days=1, requests_per_day=10, k=10, refit_base=False, new_items_per_day=0.0)
    start = threading.Barrier(threads)
    results: list = [None] * threads

    def claim(n: int) -> None:
        start.wait()
        try:
            results[n] = runs.claim(engine, settings)
        except Exception as exc:  # noqa: BLE001 - the result under test
            results[n] = exc

    workers = [threading.Thread(target=claim, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def _run_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(SimulationRun)).scalar_one()


def _check_one_claim_wins(engine: Engine, threads: int) -> None:
    before = _run_count(engine)
    results = _claim_race(engine, threads)
    won = [r for r in results if isinstance(r, runs.Run)]
    refused = [r for r in results if isinstance(r, runs.RunBusyError)]
    assert len(won) == 1 and len(refused) == threads - 1, results
    assert all(f"simulation run {won[0].id} is running" in str(e) for e in refused)
    runs.fail(engine, won[0], RuntimeError("test over"))
    assert _run_count(engine) == before + 1


def test_simultaneous_claims_give_one_run_and_refuse_the_others(world_copy):
    _check_one_claim_wins(ensure_schema(world_copy), threads=4)


def test_the_database_refuses_a_second_unfinished_run(world_copy):
    ensure_schema(world_copy)
    row = {"status": "running", "unfinished": True, "seed": 0, "days": 1, "requests_per_day": 1, "k": 10,
           "params": {}, "start_clock": START, "day": 0, "request": 0, "new_items": 0, "lease": 1, "actor": "t",
           "started_at": START, "updated_at": START}
    with world_copy.begin() as conn:
        conn.execute(insert(SimulationRun), [row])
        conn.execute(insert(SimulationRun), [{**row, "unfinished": None, "status": "finished"}])
    with pytest.raises(IntegrityError), world_copy.begin() as conn:
        conn.execute(insert(SimulationRun), [row])


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_on_postgresql_a_killed_run_resumes_and_only_one_claim_wins(pg_world, uninterrupted):
    url, models = pg_world
    killed = _ranker(url, "simulate", *DAY, fault="simulate:mid_day@196", models=models)
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    assert len(_lists(url)) == 196 and _clock(url) == START

    rerun = _ranker(url, "simulate", *DAY, models=models)
    assert rerun.returncode == 0, rerun.stderr
    assert _lists_per_day(url) == {"2026-01-01": 300} and _clock(url) == START + timedelta(days=1)
    assert _lists(url) == uninterrupted["lists"]  # the same world on SQLite, served without a crash
    assert _responses(url) == uninterrupted["responses"]

    engine = ensure_schema(make_engine(url))
    try:
        _check_one_claim_wins(engine, threads=6)
    finally:
        engine.dispose()
