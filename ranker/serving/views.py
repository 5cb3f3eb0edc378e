"""Served lists as an operator looks at them: the queries behind the dashboard's previews.

Each function reads the database (in SQL, never a whole table) and returns plain data ready to
lay out: the example user, the users a flow serves, a user's recent interactions, a served list
joined with its items' attributes, two lists compared position by position, a list's diversity and
freshness, and the last dataset and training run. :func:`warm_up` loads the serving state once.
Nothing here logs impressions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select

from ranker import config, keys
from ranker.base import DEFAULT_MODEL, FALLBACK_MODEL
from ranker.base.store import load_base_models
from ranker.data.db import get_setting, session_scope
from ranker.data.schema import Interaction, Item, User
from ranker.flows import flow_role, personalised_flows, valid_flows
from ranker.rank.features import age_days
from ranker.rank.metrics import intra_list_diversity
from ranker.serving.service import Recommendation, service

log = logging.getLogger(__name__)

#: The example user is the most engaged among this many latest engaged interactions (an index range
#: scan on created_at, milliseconds on a million interactions; a GROUP BY over all of them takes ~1 s).
EXAMPLE_WINDOW = 5000

#: Item attributes joined to a served list, in column order.
ITEM_ATTRIBUTES = ("name", "category", "field", "type", "created_at", "updated_at")


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


def flows_with_users(engine: Engine) -> list[str]:
    """The personalised flows that have at least one user who may request them (one grouped count)."""
    with engine.connect() as conn:
        roles = {role for role, n in conn.execute(select(User.role, func.count()).group_by(User.role)) if n}
    return [f for f in personalised_flows() if (flow_role(f) is None and roles) or flow_role(f) in roles]


def users_for_flow(engine: Engine, flow: str) -> pd.DataFrame:
    """Every user who may request ``flow``, by id: columns id, name, category, field."""
    role = flow_role(flow)
    stmt = select(User.id, User.name, User.category, User.field).order_by(User.id)
    if role is not None:
        stmt = stmt.where(User.role == role)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=["id", "name", "category", "field"])


def recent_interactions(engine: Engine, user_id: int, limit: int = 15) -> pd.DataFrame:
    """The user's latest ``limit`` interactions, newest first: created_at, kind and the item's name,
    category, field and type. Empty frame (same columns) for a user without any."""
    stmt = (select(Interaction.created_at, Interaction.kind, Item.name, Item.category, Item.field, Item.type)
            .join(Item, Item.id == Interaction.item_id).where(Interaction.user_id == user_id)
            .order_by(Interaction.created_at.desc()).limit(limit))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(),
                            columns=["created_at", "kind", "name", "category", "field", "type"])


def item_attributes(engine: Engine, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Item id → its :data:`ITEM_ATTRIBUTES`, for the ids that exist (one query)."""
    if not len(ids):
        return {}
    columns = [getattr(Item, name) for name in ITEM_ATTRIBUTES]
    with engine.connect() as conn:
        rows = conn.execute(select(Item.id, *columns).where(Item.id.in_([int(i) for i in ids]))).all()
    return {int(r[0]): dict(zip(ITEM_ATTRIBUTES, r[1:])) for r in rows}


def moves(before: Sequence[int], after: Sequence[int]) -> list[str]:
    """For each item of ``after``: ``↑n`` / ``↓n`` relative to its place in ``before``, ``=`` if
    unchanged, ``new`` if absent from ``before``."""
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


def list_frame(engine: Engine, rec: Recommendation, before: Recommendation | None = None) -> pd.DataFrame:
    """One row per item of ``rec``, in served order.

    Columns: ``position`` (from 1), ``move`` (from ``before``; only when it is given), ``item_id``,
    the :data:`ITEM_ATTRIBUTES` (None for an item no longer in the catalogue; its name is then its
    id), ``score`` (the reranker's, None for a base list), ``base_score``, then each feature as
    served (named as the feature) and its contribution to the score (``contribution_<feature>``).
    """
    attrs = item_attributes(engine, rec.item_ids)
    mv = moves(before.item_ids, rec.item_ids) if before is not None else None
    rows = []
    for n, it in enumerate(rec.items):
        a = attrs.get(it.item_id) or {**dict.fromkeys(ITEM_ATTRIBUTES), "name": str(it.item_id)}
        row: dict[str, Any] = {"position": it.position + 1}
        if mv is not None:
            row["move"] = mv[n]
        row.update({"item_id": it.item_id, **a, "score": it.score, "base_score": it.base_score, **it.features})
        row.update({f"contribution_{f}": v for f, v in it.contributions.items()})
        rows.append(row)
    columns = ["position", *(["move"] if mv is not None else []), "item_id", *ITEM_ATTRIBUTES, "score",
               "base_score"]
    return pd.DataFrame(rows, columns=columns + [c for c in (rows[0] if rows else {}) if c not in columns])


def comparison_frame(engine: Engine, before: Recommendation, after: Recommendation) -> pd.DataFrame:
    """Two lists side by side, one row per position (from 1): ``before_id``, ``before_name``,
    ``after_id``, ``after_name`` and ``move``, the move of the item at that position of ``after``
    from its place in ``before``. The shorter list is padded with None."""
    names = {i: a["name"] for i, a in item_attributes(engine, [*before.item_ids, *after.item_ids]).items()}
    n = max(len(before.items), len(after.items))
    pad = [None] * n

    def padded(values: list) -> list:
        return (values + pad)[:n]

    return pd.DataFrame({
        "position": range(1, n + 1),
        "before_id": padded(before.item_ids), "before_name": padded([names.get(i, str(i)) for i in before.item_ids]),
        "after_id": padded(after.item_ids), "after_name": padded([names.get(i, str(i)) for i in after.item_ids]),
        "move": padded(moves(before.item_ids, after.item_ids)),
    })


def list_quality(engine: Engine, rec: Recommendation) -> dict[str, float]:
    """``keys.ILD`` (intra-list diversity) and ``keys.MEAN_AGE_DAYS`` (mean age in days as of the serve
    time) of a served list; NaN for an empty list."""
    attrs = item_attributes(engine, rec.item_ids)
    shown = [attrs[i] for i in rec.item_ids if i in attrs]
    if not shown:
        return {keys.ILD: float("nan"), keys.MEAN_AGE_DAYS: float("nan")}

    def column(name: str, dtype: Any = object) -> np.ndarray:
        return np.array([a[name] for a in shown], dtype=dtype)

    ild = intra_list_diversity(column("category"), column("field"), column("type"))
    ages = age_days(rec.served_at, column("created_at", "datetime64[us]"), column("updated_at", "datetime64[us]"))
    return {keys.ILD: float(ild), keys.MEAN_AGE_DAYS: float(ages.mean())}


@dataclass(frozen=True)
class LatestRuns:
    """The summaries the latest ``ranker dataset`` and training run saved (None before the first)."""

    dataset: dict[str, Any] | None
    training: dict[str, Any] | None


def latest_runs(engine: Engine) -> LatestRuns:
    with session_scope(engine) as s:
        return LatestRuns(get_setting(s, keys.LAST_DATASET), get_setting(s, keys.LAST_TRAINING))


def base_order_hold(engine: Engine) -> str | None:
    """Why the treatment arm serves the base order (a do-no-harm hold from the last retrain), or None."""
    with session_scope(engine) as s:
        return (get_setting(s, keys.BASE_ORDER_HOLD) or {}).get("reason")


def base_models_ready(engine: Engine) -> bool:
    """True when the saved base models that serving needs were fitted on this database."""
    return all(name in load_base_models(engine) for name in (DEFAULT_MODEL, FALLBACK_MODEL))


def warm_up(engine: Engine) -> str | None:
    """Load the serving state a first preview needs: catalogue, item counts, base models and the
    active model (seconds on a million interactions), by serving the example user once, unlogged.

    Never fits base models. Returns the version that served, or None when there is nothing to
    serve yet (no fitted base models, no engaged user) or loading failed: this is only a head
    start, and a page that needs the state loads it itself.
    """
    try:
        example = recently_active_user(engine) if base_models_ready(engine) else None
        if example is None:
            return None
        return service(engine).recommend(*example, arm="treatment").model_version
    except Exception as exc:  # only a head start: the page that needs the state reports the failure
        log.info("serving warm-up skipped: %s", exc)
        return None
