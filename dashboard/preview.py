"""Ranking previews shared by the Rule weights and Ranking preview pages (no logging)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import Engine, func, select

from ranker import config, keys
from ranker.base import DEFAULT_MODEL, FALLBACK_MODEL
from ranker.base.store import fit_base_models, load_base_models
from ranker.data.db import get_engine
from ranker.data.schema import Interaction, Item, User
from ranker.flows import flow_role, personalised_flows, valid_flows
from ranker.rank.features import age_days
from ranker.rank.metrics import intra_list_diversity
from ranker.rank.rerank import Scorer
from ranker.rank.train import DataError, load_dataset
from ranker.serving.service import Recommendation, service

log = logging.getLogger(__name__)


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


#: The example user is the most engaged among this many latest engaged interactions (an index range
#: scan on created_at, milliseconds on a million interactions; a GROUP BY over all of them takes ~1 s).
EXAMPLE_WINDOW = 5000


def recently_active_user(engine: Engine) -> tuple[int, str] | None:
    """(user id, their first flow) of the most engaged user of late; None without engagement."""
    recent = (select(Interaction.user_id).where(Interaction.kind.in_(config.ENGAGED_KINDS))
              .order_by(Interaction.created_at.desc()).limit(EXAMPLE_WINDOW).subquery())
    stmt = (select(User.id, User.role).join(recent, recent.c.user_id == User.id).group_by(User.id, User.role)
            .order_by(func.count().desc(), User.id).limit(1))
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return int(row.id), valid_flows(row.role)[0]


@st.cache_data(ttl=300, show_spinner=False)
def _example(_engine: Engine, url: str) -> tuple[int, str] | None:
    return recently_active_user(_engine)


def example_user(engine: Engine) -> tuple[int, str] | None:
    """A stable example user for previews (cached for 5 minutes)."""
    return _example(engine, str(engine.url))


def base_models_ready(engine: Engine) -> bool:
    """True when the saved base models that serving needs were fitted on this database."""
    return all(name in load_base_models(engine) for name in (DEFAULT_MODEL, FALLBACK_MODEL))


#: Up to this many interactions a page may fit missing base models itself (seconds); above it, the
#: operator is asked to run `ranker base fit` (minutes on the large demo world).
INLINE_FIT_MAX_INTERACTIONS = 200_000


def ensure_base_models(engine: Engine, interactions: int) -> bool:
    """True when lists can be served. Fits missing or stale base models in the page on a small
    database; on a big one explains how to fit them and returns False."""
    if base_models_ready(engine):
        return True
    if interactions <= INLINE_FIT_MAX_INTERACTIONS:
        with st.spinner("Fitting the base models on this database (first use, a few seconds)…"):
            fit_base_models(engine)
        return True
    st.warning(f"The base models are missing, or were fitted before the catalogue changed. Fitting them on "
               f"{interactions:,} interactions takes minutes, too long for a page: run `ranker base fit`, "
               "then reload this page.")
    return False


#: The warm-up waits this long, so the page that started it renders first.
WARM_UP_DELAY_S = 2.0
WARM_UP_THREAD = "ranker-warm-up"


@st.cache_resource(show_spinner=False)
def warm_up(url: str) -> threading.Thread:
    """Once per process and database, load the serving state in the background: catalogue, item
    counts, base models and the active model (seconds on a million interactions), so the first
    preview an operator opens does not wait for it. Never fits base models."""
    thread = threading.Thread(target=_warm, args=(url,), name=WARM_UP_THREAD, daemon=True)
    thread.start()
    return thread


def _warm(url: str) -> None:
    time.sleep(WARM_UP_DELAY_S)
    try:
        engine = get_engine(url)
        example = recently_active_user(engine) if base_models_ready(engine) else None
        if example is not None:
            service(engine).recommend(*example, arm="treatment")
    except Exception as exc:  # only a head start: a page that needs the state loads it itself
        log.info("serving warm-up skipped: %s", exc)


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


def list_table(engine: Engine, rec: Recommendation, other: Recommendation | None = None,
               detail: bool = False) -> pd.DataFrame:
    """One row per item: position, id, name, category and score. With ``other`` (the base list) the
    list is a reranked one: each item's move from ``other`` and its reranker score; else its base
    score. ``detail`` adds field and type, the features as served and each feature's contribution."""
    items = _item_attrs(engine, rec.item_ids)
    mv = moves(other.item_ids, rec.item_ids) if other is not None else None
    rows = []
    for n, it in enumerate(rec.items):
        a = items.get(it.item_id, {})
        row = {"#": it.position + 1}
        if mv is not None:
            row["move"] = mv[n]
        row.update({"id": it.item_id, "item": a.get("name", str(it.item_id)), "category": a.get("category")})
        if detail:
            row.update({"field": a.get("field"), "type": a.get("type")})
        if mv is not None and it.score is not None:
            row["score"] = round(it.score, 4)
        else:
            row["base score"] = round(it.base_score, 4)
        if detail:
            row.update({f: round(v, 3) for f, v in it.features.items()})
            row.update({f"{f} ⊕": round(v, 3) for f, v in it.contributions.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(engine: Engine, before: Recommendation, after: Recommendation, before_label: str,
                     after_label: str) -> pd.DataFrame:
    """Two lists side by side, position by position, with each item's move from ``before`` to ``after``."""
    names = {i: a["name"] for i, a in _item_attrs(engine, [*before.item_ids, *after.item_ids]).items()}
    n = max(len(before.items), len(after.items))
    pad = [None] * n

    def column(ids: list[int]) -> tuple[list, list]:
        return (ids + pad)[:n], ([names.get(i, str(i)) for i in ids] + pad)[:n]

    b_ids, b_names = column(before.item_ids)
    a_ids, a_names = column(after.item_ids)
    return pd.DataFrame({"#": range(1, n + 1), f"id ({before_label})": b_ids, f"item ({before_label})": b_names,
                         f"id ({after_label})": a_ids, f"item ({after_label})": a_names,
                         "move": (moves(before.item_ids, after.item_ids) + pad)[:n]})


def list_quality(engine: Engine, rec: Recommendation) -> dict[str, float]:
    """Intra-list diversity and mean age (days) of a served list."""
    items = _item_attrs(engine, rec.item_ids)
    if not items:
        return {keys.ILD: float("nan"), keys.MEAN_AGE_DAYS: float("nan")}
    attrs = [items[i] for i in rec.item_ids]
    ild = intra_list_diversity(np.array([a["category"] for a in attrs], dtype=object),
                               np.array([a["field"] for a in attrs], dtype=object),
                               np.array([a["type"] for a in attrs], dtype=object))
    ages = age_days(rec.served_at, np.array([a["created_at"] for a in attrs], dtype="datetime64[us]"),
                    np.array([a["updated_at"] for a in attrs], dtype="datetime64[us]"))
    return {keys.ILD: ild, keys.MEAN_AGE_DAYS: float(ages.mean())}


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
def flows_with_users(_engine: Engine, url: str) -> list[str]:
    """The flows that have at least one user who may request them (one grouped count)."""
    with _engine.connect() as conn:
        roles = {r for r, n in conn.execute(select(User.role, func.count()).group_by(User.role)) if n}
    return [f for f in personalised_flows() if (flow_role(f) is None and roles) or flow_role(f) in roles]


@st.cache_data(ttl=300, show_spinner=False)
def users_for_flow(_engine: Engine, url: str, flow: str) -> pd.DataFrame:
    role = flow_role(flow)
    stmt = select(User.id, User.name, User.category, User.field).order_by(User.id)
    if role is not None:
        stmt = stmt.where(User.role == role)
    with _engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=["id", "name", "category", "field"])
