"""Ranking previews shared by the Rule weights and Ranking preview pages (no logging)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import Engine, func, select

from ranker import config
from ranker.features import age_days
from ranker.metrics import intra_list_diversity
from ranker.rerank import Scorer
from ranker.schema import Interaction, Item, User
from ranker.serve import Recommendation, service
from ranker.train import DataError, load_dataset


@st.cache_data(ttl=60, show_spinner=False)
def _load(path: str, mtime: float):
    return load_dataset(path, min_positives=1)


def held_out_data():
    """(Dataset, path) of the validation CSV, else the training CSV; None if neither exists."""
    for path in (config.DATA_DIR / "ranker_val.csv", config.DATA_DIR / "ranker_train.csv"):
        if path.exists():
            try:
                return _load(str(path), path.stat().st_mtime), str(path)
            except DataError:
                continue
    return None


@st.cache_data(ttl=300, show_spinner=False)
def _example(_engine: Engine, url: str) -> tuple[int, str] | None:
    """The most active developer (or any user), a stable example for previews."""
    engaged = func.count(Interaction.id)
    stmt = (select(User.id, User.role).join(Interaction, Interaction.user_id == User.id)
            .where(Interaction.kind.in_(config.ENGAGED_KINDS)).group_by(User.id, User.role)
            .order_by(engaged.desc(), User.id).limit(1))
    with _engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    flows = [f for f, (role, _) in config.FLOWS.items() if role == row.role] or ["user-item"]
    return int(row.id), flows[0]


def example_user(engine: Engine) -> tuple[int, str] | None:
    return _example(engine, str(engine.url))


def reranked(engine: Engine, user_id: int, flow: str, scorer: Scorer | None = None,
             k: int = config.DEFAULT_K) -> Recommendation:
    return service(engine).recommend(user_id, flow, k, arm="treatment", scorer=scorer)


def base_list(engine: Engine, user_id: int, flow: str, k: int = config.DEFAULT_K) -> Recommendation:
    return service(engine).recommend(user_id, flow, k, arm="control")


def moves(before: Sequence[int], after: Sequence[int]) -> list[str]:
    """For each item of ``after``: ↑n / ↓n relative to its place in ``before``, = if unchanged, new if absent."""
    where = {item: i for i, item in enumerate(before)}
    out = []
    for i, item in enumerate(after):
        if item not in where:
            out.append("new")
        elif where[item] == i:
            out.append("=")
        else:
            d = where[item] - i
            out.append(f"↑{d}" if d > 0 else f"↓{-d}")
    return out


def list_table(engine: Engine, rec: Recommendation, other: Recommendation | None = None) -> pd.DataFrame:
    """One row per item: position, item, attributes, features, score contributions, move."""
    items = _item_attrs(engine, rec.item_ids)
    rows = []
    mv = moves(other.item_ids, rec.item_ids) if other is not None else [""] * len(rec.items)
    for it, move in zip(rec.items, mv):
        a = items.get(it.item_id, {})
        row = {"#": it.position + 1, "move": move, "item": f"{a.get('name', it.item_id)}",
               "category": a.get("category"), "field": a.get("field"), "type": a.get("type"),
               "score": it.score}
        row.update({f: round(v, 3) for f, v in it.features.items()})
        row.update({f"{f} ⊕": round(v, 3) for f, v in it.contributions.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def list_quality(engine: Engine, rec: Recommendation) -> dict[str, float]:
    """Intra-list diversity and mean age (days) of a served list."""
    items = _item_attrs(engine, rec.item_ids)
    if not items:
        return {"ild": float("nan"), "mean_age_days": float("nan")}
    attrs = [items[i] for i in rec.item_ids]
    ild = intra_list_diversity(np.array([a["category"] for a in attrs], dtype=object),
                               np.array([a["field"] for a in attrs], dtype=object),
                               np.array([a["type"] for a in attrs], dtype=object))
    ages = age_days(rec.served_at, np.array([a["created_at"] for a in attrs], dtype="datetime64[us]"),
                    np.array([a["updated_at"] for a in attrs], dtype="datetime64[us]"))
    return {"ild": ild, "mean_age_days": float(ages.mean())}


def _item_attrs(engine: Engine, ids: Sequence[int]) -> dict[int, dict]:
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(Item.id, Item.name, Item.category, Item.field, Item.type, Item.created_at,
                                   Item.updated_at).where(Item.id.in_(list(ids)))).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def recent_interactions(engine: Engine, user_id: int, limit: int = 15) -> pd.DataFrame:
    stmt = (select(Interaction.created_at, Interaction.kind, Item.name, Item.category, Item.field, Item.type)
            .join(Item, Item.id == Interaction.item_id).where(Interaction.user_id == user_id)
            .order_by(Interaction.created_at.desc()).limit(limit))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all())


@st.cache_data(ttl=300, show_spinner=False)
def users_for_flow(_engine: Engine, url: str, flow: str) -> pd.DataFrame:
    role = config.FLOWS[flow][0]
    stmt = select(User.id, User.name, User.category, User.field).order_by(User.id)
    if role is not None:
        stmt = stmt.where(User.role == role)
    with _engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all())
