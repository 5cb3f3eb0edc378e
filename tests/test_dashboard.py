"""Dashboard pages under Streamlit's AppTest, on a real demo database."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ranker import db

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture
def app_db(small_world, monkeypatch):
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{small_world}")
    db._cached_engine.cache_clear()
    yield small_world
    db._cached_engine.cache_clear()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_overview_shows_real_counts(app_db):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    counts = db.table_counts(db.make_engine(f"sqlite:///{app_db}"))
    shown = _metrics(at)
    for name in ("users", "items", "interactions"):
        assert shown[name.capitalize()] == f"{counts[name]:,}"


def test_overview_on_empty_database_offers_demo_init(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    db._cached_engine.cache_clear()
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("ranker demo init" in i.value for i in at.info)
    db._cached_engine.cache_clear()
