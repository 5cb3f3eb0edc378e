"""A demo world build killed halfway through its history (``demo:mid_history``): the half-built
world is refused by ``demo init`` and ``demo init --if-empty``, saying to rebuild it with
``--force``, and the rebuild ends with the same rows as a clean build."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ranker.cli.main import USER_ERROR
from ranker.data import db
from ranker.faults import FAULT_EXIT_CODE
from tests.faults.conftest import World, _admin, _database_url, _drop_database

pytestmark = pytest.mark.slow  # real processes

INIT = ["demo", "init", "--scale", "small"]
#: The fault fires after this many bulk-load steps (a table of a history batch): the users, items and
#: the first batch are committed, the rest of the history is not written.
NTH = 6


@pytest.fixture
def empty_world(backend: str, tmp_path: Path) -> Iterator[World]:
    """A folder and an empty database on ``backend``."""
    if backend == "sqlite":
        yield World(tmp_path, f"sqlite:///{tmp_path / 'world.db'}")
        return
    from tests.conftest import _pg_url

    pg_url = _pg_url()
    name = f"ranker_demo_fault_{os.getpid()}"
    _drop_database(pg_url, name)
    with _admin(pg_url) as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield World(tmp_path, _database_url(pg_url, name))
    _drop_database(pg_url, name)


def test_a_demo_build_killed_halfway_is_refused_until_rebuilt_with_force(empty_world: World, small_world: Path):
    crashed = empty_world.run(INIT, fault=f"demo:mid_history@{NTH}")
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.output
    with empty_world.engine() as engine:
        counts = db.table_counts(engine)
        assert counts["users"] > 0 and 0 < counts["interactions"]  # the half-built world holds rows
        assert db.unfinished_world(engine)["scale"] == "small"

    for args in (INIT + ["--if-empty"], INIT):
        refused = empty_world.run(args)
        assert refused.returncode == USER_ERROR, refused.output
        assert "did not finish (scale small, seed 42" in refused.output, refused.output
        assert "ranker demo init --force" in refused.output, refused.output

    rebuilt = empty_world.run(INIT + ["--force"])
    assert rebuilt.returncode == 0, rebuilt.output
    clean = db.make_engine(f"sqlite:///{small_world}")
    with empty_world.engine() as engine:
        assert db.unfinished_world(engine) is None
        rebuilt_counts = {k: v for k, v in db.table_counts(engine).items() if k != "audit_log"}
    assert rebuilt_counts == {k: v for k, v in db.table_counts(clean).items() if k != "audit_log"}
    assert rebuilt_counts["interactions"] > counts["interactions"]
    clean.dispose()
