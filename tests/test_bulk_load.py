"""The demo world's bulk load: PostgreSQL takes the history through COPY, SQLite through inserts,
and both hold the same rows with the same ids; a build that did not finish is refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url

from ranker import keys
from ranker.data import db
from ranker.data.schema import Impression, Interaction, Item, Outcome, ServedList, Setting, User
from ranker.sim.synth import SCALES, build_world
from ranker.sim.truth import WorldTruth

#: Every world table, ordered by its key; the audit log (wall-clock times) is left out.
TABLES = ((User, User.id), (Item, Item.id), (Interaction, Interaction.id), (ServedList, ServedList.request_id),
          (Impression, Impression.id), (Outcome, Outcome.id), (WorldTruth, WorldTruth.key))


def _rows(engine: Engine, model, key) -> list[tuple]:
    table = model.__table__
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*table.c).order_by(key))]


def _settings(engine: Engine) -> dict:
    with db.session_scope(engine) as s:
        return {row.key: row.value for row in s.scalars(select(Setting))}


@pytest.fixture
def pg_engine(pg_url) -> Iterator[Engine]:
    """An empty database of this test's own on the PostgreSQL server."""
    name = f"ranker_bulk_{os.getpid()}"
    admin = db.make_engine(pg_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(make_url(pg_url).set(database=name).render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_the_small_world_bulk_loaded_into_postgresql_holds_the_same_rows_and_ids_as_on_sqlite(small_world: Path,
                                                                                              pg_engine: Engine):
    sqlite = db.make_engine(f"sqlite:///{small_world}")
    build_world(pg_engine, seed=7, scale="small")  # a world to replace: --force truncates it, ids start again
    counts = build_world(pg_engine, seed=42, scale="small", force=True)
    assert counts["interactions"] > 20_000 and counts["outcomes"] > 20_000  # more than one COPY batch
    for model, key in TABLES:
        pg_rows, sqlite_rows = _rows(pg_engine, model, key), _rows(sqlite, model, key)
        assert len(pg_rows) == len(sqlite_rows) > 0, model.__tablename__
        assert pg_rows == sqlite_rows, model.__tablename__
    pg_settings, sqlite_settings = _settings(pg_engine), _settings(sqlite)
    assert keys.WORLD_BUILD not in pg_settings
    assert pg_settings == sqlite_settings
    # PostgreSQL's id sequences continue after the loaded ids
    with pg_engine.connect() as conn:
        last = conn.execute(select(Impression.id).order_by(Impression.id.desc()).limit(1)).scalar_one()
        following = conn.execute(text("SELECT nextval(pg_get_serial_sequence('impressions', 'id'))")).scalar_one()
    assert following == last + 1
    sqlite.dispose()


def test_a_finished_build_leaves_no_build_record(small_world_engine):
    assert db.unfinished_world(small_world_engine) is None
    db.refuse_unfinished_world(small_world_engine)  # does not raise


def test_a_world_with_a_build_record_is_refused_by_demo_init_without_force_and_rebuilt_with_it(world_copy):
    with db.session_scope(world_copy) as s:  # what a build killed halfway leaves behind
        db.put_setting(s, keys.WORLD_BUILD, {"seed": 7, "preset": "default", "scale": "small",
                                             "started_at": "2026-12-16T09:00:00"})
    with pytest.raises(db.IncompleteWorldError, match=r"scale small, seed 7.*ranker demo init --force"):
        build_world(world_copy, seed=42, scale="small")
    counts = build_world(world_copy, seed=42, scale="small", force=True)
    assert db.unfinished_world(world_copy) is None
    assert counts["users"] == sum(SCALES["small"].users.values())


def test_the_xlarge_scale_has_100k_items_200k_users_and_the_large_worlds_mix_of_types():
    xlarge, large = SCALES["xlarge"], SCALES["large"]
    assert sum(xlarge.items.values()) == 100_000 and sum(xlarge.users.values()) == 200_000
    for kind in ("users", "items"):
        x, big = getattr(xlarge, kind), getattr(large, kind)
        assert list(x) == list(big)  # the same types in the same order (the names count on it)
        assert {t: n / sum(x.values()) for t, n in x.items()} == {t: n / sum(big.values()) for t, n in big.items()}


def test_the_ranker_data_index_leaves_out_exactly_what_the_dataset_builder_leaves_out():
    import re

    from ranker.rank.dataset import NOT_RANKER_DATA

    index = next(i for i in Impression.__table__.indexes if i.name == "ix_impressions_ranker_served")
    for dialect in ("postgresql", "sqlite"):
        assert set(re.findall(r"'(\w+)'", str(index.dialect_options[dialect]["where"]))) == set(NOT_RANKER_DATA)


def test_migration_0009_gives_the_indexes_the_schema_declares(tmp_path):
    from sqlalchemy import inspect

    engine = db.make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    db.upgrade(engine)
    migrated = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("impressions")}
    declared = {i.name: [c.name for c in i.columns] for i in Impression.__table__.indexes}
    assert migrated == declared
    assert migrated["ix_impressions_ranker_served"] == ["served_at"] and migrated["ix_impressions_item"] == ["item_id"]
    with engine.connect() as conn:
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_impressions_ranker_served'")).scalar()
    assert "WHERE model_version NOT IN ('trending', 'legacy')" in sql
