"""Shared fixtures: small demo worlds on SQLite, and PostgreSQL when reachable."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ranker.db import make_engine

PG_URL_ENV = "RANKER_TEST_POSTGRES_URL"


def _pg_url() -> str | None:
    return os.environ.get(PG_URL_ENV)


def _pg_reachable(url: str) -> bool:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    try:
        with socket.create_connection((u.host or "127.0.0.1", u.port or 5432), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL test URL, or a visible skip explaining how to enable the tests."""
    url = _pg_url()
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_URL_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    if not _pg_reachable(url):
        pytest.skip(f"PostgreSQL at {url} is unreachable")
    return url


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo world (seed 42), built once per test session. Treat it as read-only;
    copy it with ``world_copy`` to mutate."""
    from ranker.synth import build_world

    path = tmp_path_factory.mktemp("world") / "small.db"
    engine = make_engine(f"sqlite:///{path}")
    build_world(engine, seed=42, scale="small")
    engine.dispose()
    return path


@pytest.fixture
def world_copy(small_world: Path, tmp_path: Path) -> Iterator[Engine]:
    """A private, writable copy of the small world."""
    import sqlite3

    dst = tmp_path / "world.db"
    src = sqlite3.connect(small_world)
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    engine = make_engine(f"sqlite:///{dst}")
    yield engine
    engine.dispose()


@pytest.fixture
def small_world_engine(small_world: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{small_world}")
    yield engine
    engine.dispose()
