"""The data layer on SQLite and PostgreSQL: schema round trip, migrations, errors."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import Engine, select, text

from ranker import keys
from ranker.data import db
from ranker.data.schema import Base, Impression, Interaction, Item, Outcome, Setting, User
from ranker.sim.truth import WorldTruth


def _round_trip(engine: Engine) -> None:
    db.upgrade(engine)
    t0 = datetime(2026, 1, 1, 12, 30, 5)
    with db.session_scope(engine) as s:
        u = User(name="ada", role="developer", category="ai", field="ml", created_at=t0)
        i = Item(item_type="startup", name="acme", category="ai", field="b2b-saas", type="seed",
                 created_at=t0, updated_at=t0, views=7)
        s.add_all([u, i])
        s.flush()
        s.add(Interaction(user_id=u.id, item_id=i.id, kind="like", created_at=t0))
        imp = Impression(request_id="r1", user_id=u.id, item_id=i.id, flow="developer-startup",
                         arm="treatment", position=0, score=0.9, model_version="rule",
                         features={"model_score": 1.0, "recency": 0.5}, served_at=t0)
        s.add(imp)
        s.flush()
        s.add(Outcome(impression_id=imp.id, kind="click", created_at=t0))
        db.put_setting(s, keys.RULE_WEIGHTS, {"model_score": 0.5})
    with db.session_scope(engine) as s:
        item = s.scalars(select(Item)).one()
        assert (item.name, item.category, item.views, item.created_at) == ("acme", "ai", 7, t0)
        inter = s.scalars(select(Interaction)).one()
        assert (inter.kind, inter.user_id, inter.item_id) == ("like", item.id - item.id + inter.user_id,
                                                              item.id)
        imp = s.scalars(select(Impression)).one()
        assert imp.features == {"model_score": 1.0, "recency": 0.5}
        assert db.get_setting(s, keys.RULE_WEIGHTS) == {"model_score": 0.5}
        assert s.scalars(select(Setting.key)).all() == ["rule_weights"]
    counts = db.table_counts(engine)
    assert counts["users"] == 1 and counts["outcomes"] == 1 and counts["impressions"] == 1


def test_schema_round_trip_sqlite(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'rt.db'}")
    _round_trip(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


@pytest.mark.postgres
def test_schema_round_trip_postgres(pg_url):
    engine = db.make_engine(pg_url)
    with engine.begin() as conn:  # a clean slate in the shared test database
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    try:
        _round_trip(engine)
        assert db.schema_revision(engine) == db.head_revision()
    finally:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()


def test_upgrade_keeps_existing_rows(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'up.db'}")
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        s.add(User(name="x", role="founder", created_at=datetime(2026, 1, 1)))
    assert db.upgrade(engine) == db.head_revision()  # a second upgrade is a no-op
    assert db.table_counts(engine)["users"] == 1


def test_world_truth_table_is_separate_from_observable_schema():
    observable = {t.name for t in Base.metadata.sorted_tables} - {WorldTruth.__tablename__}
    assert "world_truth" not in observable
    assert "items" in observable


def test_unknown_scheme_is_refused_with_masked_url():
    with pytest.raises(db.DatabaseError) as err:
        db.make_engine("mysql://bob:hunter2@db.example/ranker")
    assert "hunter2" not in str(err.value)
    assert "mysql" in str(err.value) and "***" in str(err.value)


def test_unreachable_server_names_url_without_password():
    engine = db.make_engine("postgresql+psycopg://bob:hunter2@127.0.0.1:1/nothing")
    with pytest.raises(db.DatabaseError) as err:
        db.check_connection(engine)
    message = str(err.value)
    assert "hunter2" not in message
    assert "127.0.0.1:1" in message and "RANKER_DATABASE_URL" in message


def test_plain_postgresql_scheme_uses_psycopg3():
    engine = db.make_engine("postgresql://u@127.0.0.1:1/x")
    assert engine.dialect.driver == "psycopg"


def test_upgrade_from_first_revision_migrates_in_place(tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(db._alembic_config(engine), "0001")
    assert "served_lists" not in inspect(engine).get_table_names()
    with db.session_scope(engine) as s:
        s.add(User(name="early", role="investor", created_at=datetime(2025, 1, 1)))
    assert db.upgrade(engine) == db.head_revision()
    assert "served_lists" in inspect(engine).get_table_names()
    with db.session_scope(engine) as s:
        assert s.scalars(select(User.name)).all() == ["early"]


def test_upgrade_to_0004_keeps_one_outcome_per_impression_and_kind_and_carries_activations_over(tmp_path):
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    from ranker.data.schema import ModelActivation

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(db._alembic_config(engine), "0003")
    t = datetime(2026, 1, 1)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, role, created_at) VALUES (1, 'u', 'developer', :t)"), {"t": t})
        conn.execute(text("INSERT INTO items (id, item_type, name, category, field, type, created_at, updated_at, "
                          "views) VALUES (1, 'startup', 'i', 'a', 'b', 'c', :t, :t, 0)"), {"t": t})
        conn.execute(text("INSERT INTO impressions (id, request_id, user_id, item_id, flow, arm, position, score, "
                          "features, model_version, served_at) VALUES (1, 'r', 1, 1, 'developer-startup', "
                          "'treatment', 0, 0.5, '{}', 'v1', :t)"), {"t": t})
        for kind in ("click", "click", "view", "click"):
            conn.execute(text("INSERT INTO outcomes (impression_id, kind, created_at) VALUES (1, :k, :t)"),
                         {"k": kind, "t": t})
        conn.execute(text("INSERT INTO audit_log (at, actor, action, details) VALUES "
                          "(:t, 'dashboard', 'model_activate', '{\"version\": \"v2\"}')"), {"t": t})
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        assert sorted(s.scalars(select(Outcome.kind))) == ["click", "view"]
        history = s.execute(select(ModelActivation.version, ModelActivation.actor, ModelActivation.activated_at)).all()
        assert [tuple(h) for h in history] == [("v2", "dashboard", t)]
    with pytest.raises(IntegrityError), db.session_scope(engine) as s:
        s.add(Outcome(impression_id=1, kind="view", created_at=t))


def _interaction_origins_after_upgrade_from_0006(engine: Engine) -> dict[str, str]:
    """An old-schema database: a served view and click with their interactions, and an organic view
    and click of the same item (one at the time of the served click, but another kind)."""
    from alembic import command

    command.upgrade(db._alembic_config(engine), "0006")
    t = datetime(2026, 1, 1)
    later = datetime(2026, 1, 1, 0, 0, 5)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name, role, created_at) VALUES (1, 'u', 'developer', :t)"), {"t": t})
        conn.execute(text("INSERT INTO items (id, item_type, name, category, field, type, created_at, updated_at, "
                          "views) VALUES (1, 'startup', 'i', 'a', 'b', 'c', :t, :t, 0)"), {"t": t})
        conn.execute(text("INSERT INTO impressions (id, request_id, user_id, item_id, flow, arm, position, score, "
                          "features, model_version, served_at) VALUES (1, 'r', 1, 1, 'developer-startup', "
                          "'treatment', 0, 0.5, '{}', 'v1', :t)"), {"t": t})
        for kind, at in (("view", t), ("click", later)):
            conn.execute(text("INSERT INTO outcomes (impression_id, kind, created_at) VALUES (1, :k, :t)"),
                         {"k": kind, "t": at})
        rows = {"served view": ("view", t), "served click": ("click", later), "organic view": ("view", later),
                "organic click": ("click", datetime(2026, 1, 2))}
        for kind, at in rows.values():
            conn.execute(text("INSERT INTO interactions (user_id, item_id, kind, created_at) VALUES (1, 1, :k, :t)"),
                         {"k": kind, "t": at})
    assert db.upgrade(engine) == db.head_revision()
    with engine.begin() as conn:  # a row written without an origin is organic
        conn.execute(text("INSERT INTO interactions (user_id, item_id, kind, created_at) VALUES (1, 1, 'like', :t)"),
                     {"t": t})
        origin = {(k, at): o for k, at, o in conn.execute(
            select(Interaction.kind, Interaction.created_at, Interaction.origin)).all()}
    assert origin.pop(("like", t)) == "organic"
    return {name: origin[key] for name, key in rows.items()}


EXPECTED_ORIGINS = {"served view": "impression", "served click": "impression", "organic view": "organic",
                    "organic click": "organic"}


def test_upgrade_to_0007_marks_the_outcomes_of_impressions_and_keeps_the_rest_organic(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    assert _interaction_origins_after_upgrade_from_0006(engine) == EXPECTED_ORIGINS


@pytest.mark.postgres
def test_upgrade_to_0007_marks_the_outcomes_of_impressions_on_postgres(pg_url):
    engine = db.make_engine(pg_url)

    def drop_all() -> None:  # a clean slate in the shared test database
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))

    drop_all()
    try:
        assert _interaction_origins_after_upgrade_from_0006(engine) == EXPECTED_ORIGINS
    finally:
        drop_all()
        engine.dispose()
