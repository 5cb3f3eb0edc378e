"""Simulated traffic survives a crash: a killed run is resumed (or discarded) as a unit, never doubled.

The CLI tests run ``ranker simulate`` in a subprocess that a fault point ends as ``kill -9``
would (``RANKER_FAULT``, exit 137), then run it again and compare the database with an
uninterrupted run on a copy of the same world.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ranker import keys
from ranker.data.db import get_setting, make_engine, session_scope
from ranker.data.schema import Impression, Interaction, Outcome, ServedList
from ranker.faults import FAULT_EXIT_CODE
from tests.conftest import ranker_env

START = datetime(2026, 1, 1)  # the small world's clock
DAY = ["--days", "1", "--requests-per-day", "300", "--no-refit"]


@pytest.fixture(scope="module")
def fitted_world(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the small world (``world.db``) and its fitted base models (``models/``)."""
    root = tmp_path_factory.mktemp("fitted")
    _backup(small_world, root / "world.db")
    env = ranker_env(f"sqlite:///{root / 'world.db'}", root / "models")
    subprocess.run([sys.executable, "-m", "ranker", "base", "fit"], env=env, check=True, capture_output=True,
                   timeout=300)
    return root


def _backup(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def _world(fitted: Path, folder: Path) -> str:
    """A private copy of the fitted world in ``folder``; returns its database URL."""
    _backup(fitted / "world.db", folder / "world.db")
    shutil.copytree(fitted / "models", folder / "models")
    return f"sqlite:///{folder / 'world.db'}"


def _ranker(url: str, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    models = Path(make_engine(url).url.database).parent / "models" if url.startswith("sqlite") else None
    extra = {"RANKER_FAULT": fault} if fault else {}
    return subprocess.run([sys.executable, "-m", "ranker", *args], env=ranker_env(url, models, **extra),
                          capture_output=True, text=True, timeout=600)


def _lists(url: str) -> list[tuple]:
    """Every simulated list: (request id, user, flow, arm, served at, items in served order)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            items: dict[str, list[int]] = {}
            for rid, item in conn.execute(select(Impression.request_id, Impression.item_id)
                                          .where(Impression.request_id.startswith("sim"))
                                          .order_by(Impression.request_id, Impression.position)):
                items.setdefault(rid, []).append(item)
            rows = conn.execute(select(ServedList.request_id, ServedList.user_id, ServedList.flow, ServedList.arm,
                                       ServedList.served_at).where(ServedList.source == "sim")
                                .order_by(ServedList.served_at, ServedList.request_id)).all()
        return [(*row, tuple(items[row[0]])) for row in rows]
    finally:
        engine.dispose()


def _responses(url: str) -> tuple[list[tuple], list[tuple]]:
    """What simulated users did: outcomes (request id, position, kind, time) and the interactions
    logged after the world's start."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            outcomes = conn.execute(select(Impression.request_id, Impression.position, Outcome.kind, Outcome.created_at)
                                    .join(Impression, Impression.id == Outcome.impression_id)
                                    .where(Impression.request_id.startswith("sim"))
                                    .order_by(Impression.request_id, Impression.position, Outcome.kind)).all()
            interactions = conn.execute(select(Interaction.user_id, Interaction.item_id, Interaction.kind,
                                               Interaction.created_at).where(Interaction.created_at >= START)
                                        .order_by(Interaction.created_at, Interaction.user_id, Interaction.item_id,
                                                  Interaction.kind)).all()
        return [tuple(o) for o in outcomes], [tuple(i) for i in interactions]
    finally:
        engine.dispose()


def _clock(url: str) -> datetime:
    engine = make_engine(url)
    try:
        with session_scope(engine) as s:
            return datetime.fromisoformat(get_setting(s, keys.CLOCK))
    finally:
        engine.dispose()


def _lists_per_day(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.date(ServedList.served_at), func.count())
                                .where(ServedList.source == "sim").group_by(func.date(ServedList.served_at))).all()
        return {str(day): n for day, n in rows}
    finally:
        engine.dispose()


@pytest.mark.slow
def test_rerun_after_a_kill_mid_day_serves_exactly_the_lists_of_an_uninterrupted_run(fitted_world, tmp_path):
    url = _world(fitted_world, tmp_path / "crashed")
    killed = _ranker(url, "simulate", *DAY, fault="simulate:mid_day@196")
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    assert len(_lists(url)) == 196 and _clock(url) == START

    rerun = _ranker(url, "simulate", *DAY)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert _lists_per_day(url) == {"2026-01-01": 300}
    assert _clock(url) == START + timedelta(days=1)

    whole = _world(fitted_world, tmp_path / "whole")
    assert _ranker(whole, "simulate", *DAY).returncode == 0
    assert _lists(url) == _lists(whole)
    assert _responses(url) == _responses(whole)
