"""The synthetic world: determinism, content, and refusal to mix worlds."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import Engine, func, select, text

from ranker import config
from ranker.data import db
from ranker.data.db import WorldExistsError
from ranker.sim.synth import HISTORY_DAYS, build_world
from ranker.sim.truth import load_truth


def _fingerprint(engine: Engine) -> str:
    h = hashlib.sha256()
    with engine.connect() as conn:
        for sql in ("SELECT id, name, role, category, field, created_at FROM users ORDER BY id",
                    "SELECT id, item_type, category, field, type, created_at, updated_at, views "
                    "FROM items ORDER BY id",
                    "SELECT user_id, item_id, kind, created_at FROM interactions ORDER BY id"):
            for row in conn.execute(text(sql)):
                h.update(repr(tuple(row)).encode())
    return h.hexdigest()


def test_same_seed_gives_same_rows(small_world_engine, tmp_path):
    other = db.make_engine(f"sqlite:///{tmp_path / 'again.db'}")
    counts = build_world(other, seed=42, scale="small")
    assert counts == db.table_counts(small_world_engine)
    assert _fingerprint(other) == _fingerprint(small_world_engine)


def test_different_seed_gives_different_world(small_world_engine, tmp_path):
    other = db.make_engine(f"sqlite:///{tmp_path / 'seed7.db'}")
    build_world(other, seed=7, scale="small")
    assert _fingerprint(other) != _fingerprint(small_world_engine)


def test_world_has_every_role_item_type_and_90_days(small_world_engine):
    with small_world_engine.connect() as conn:
        roles = set(conn.execute(text("SELECT DISTINCT role FROM users")).scalars())
        types = set(conn.execute(text("SELECT DISTINCT item_type FROM items")).scalars())
        kinds = set(conn.execute(text("SELECT DISTINCT kind FROM interactions")).scalars())
        first, last = conn.execute(text("SELECT min(created_at), max(created_at) FROM interactions")).one()
        # every flow has engaged feedback to learn from
        per_type = dict(conn.execute(text(
            "SELECT i.item_type, count(*) FROM interactions x JOIN items i ON i.id = x.item_id "
            "WHERE x.kind IN ('like','favorite','apply','interest') GROUP BY i.item_type")).all())
    assert roles == set(config.ROLES)
    assert types == set(config.ITEM_TYPES)
    assert {"view", "click"} <= kinds and kinds & set(config.POSITIVE_KINDS)
    span = (_dt(last) - _dt(first)).days
    assert span >= HISTORY_DAYS - 1
    assert all(per_type[t] >= 50 for t in config.ITEM_TYPES)


def test_items_views_match_view_interactions(small_world_engine):
    with small_world_engine.connect() as conn:
        mismatched = conn.execute(text(
            "SELECT count(*) FROM items i WHERE i.views != "
            "(SELECT count(*) FROM interactions x WHERE x.item_id = i.id AND x.kind = 'view')"
        )).scalar_one()
    assert mismatched == 0


def test_no_interaction_before_its_item_exists(small_world_engine):
    with small_world_engine.connect() as conn:
        early = conn.execute(text(
            "SELECT count(*) FROM interactions x JOIN items i ON i.id = x.item_id "
            "WHERE x.created_at < i.created_at")).scalar_one()
    assert early == 0


def test_ground_truth_is_stored_and_covers_every_user_and_item(small_world_engine):
    from sqlalchemy.orm import Session

    with Session(small_world_engine) as s:
        truth = load_truth(s)
        n_users = s.scalar(select(func.count()).select_from(text("users")))
        n_items = s.scalar(select(func.count()).select_from(text("items")))
    assert truth is not None
    assert truth.user_vecs.shape[0] == n_users and truth.item_vecs.shape[0] == n_items


def test_non_empty_database_is_refused_without_force(world_copy):
    before = db.table_counts(world_copy)
    with pytest.raises(WorldExistsError, match="--force"):
        build_world(world_copy, seed=1, scale="small")
    assert db.table_counts(world_copy) == before


@pytest.mark.slow  # a subprocess, a retrain or a second world: not for the inner loop
def test_force_replaces_the_world_without_mixing(world_copy):
    build_world(world_copy, seed=5, scale="small", force=True)
    fresh = db.make_engine(f"sqlite:///{world_copy.url.database}.fresh")
    build_world(fresh, seed=5, scale="small")
    assert _fingerprint(world_copy) == _fingerprint(fresh)


def test_unknown_preset_and_scale_are_refused(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ValueError, match="no-context"):
        build_world(engine, preset="nope")
    with pytest.raises(ValueError, match="small"):
        build_world(engine, scale="huge")


def _dt(value):
    from datetime import datetime

    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _young_view_share(engine: Engine, days: float = 14.0) -> float:
    """Share of history views on items younger than ``days`` when viewed."""
    from ranker.data.schema import Interaction, Item

    sql = (select(Item.created_at, Interaction.created_at).join(Item, Item.id == Interaction.item_id)
           .where(Interaction.kind == "view"))
    with engine.connect() as conn:
        rows = conn.execute(sql).all()
    young = sum(1 for created, seen in rows if (seen - created).total_seconds() < days * 86400)
    return young / len(rows)


def test_legacy_feed_shows_new_arrivals(small_world_engine, tmp_path, monkeypatch):
    # Without the boost the legacy feed barely shows new items, the base models never learn
    # them, and recency carries no signal among the ranker's candidates.
    from ranker.sim import synth

    monkeypatch.setattr(synth, "LEGACY_FRESH_WEIGHT", 0.0)
    plain = db.make_engine(f"sqlite:///{tmp_path / 'no_boost.db'}")
    build_world(plain, seed=42, scale="small")
    with_boost, without = _young_view_share(small_world_engine), _young_view_share(plain)
    assert with_boost > 1.3 * without, (with_boost, without)
