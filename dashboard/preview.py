"""Ranking previews shared by the Rule weights and Ranking preview pages (nothing is logged).

Lists come from serving; :mod:`ranker.serving.views` joins them with the items' attributes. This
module only names the columns as the pages show them, and fits missing base models on a small
database.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from ranker import config
from ranker.base.store import fit_base_models
from ranker.rank.rerank import Scorer
from ranker.serving import views
from ranker.serving.service import Recommendation, service

#: Up to this many interactions a page may fit missing base models itself (seconds); above it, the
#: operator is asked to run `ranker base fit` (minutes on the large demo world).
INLINE_FIT_MAX_INTERACTIONS = 200_000


def ensure_base_models(engine: Engine, interactions: int) -> bool:
    """True when lists can be served. Fits missing or stale base models in the page on a small
    database; on a big one explains how to fit them and returns False."""
    if views.base_models_ready(engine):
        return True
    if interactions <= INLINE_FIT_MAX_INTERACTIONS:
        with st.spinner("Fitting the base models on this database (first use, a few seconds)…"):
            fit_base_models(engine)
        return True
    st.warning(f"The base models are missing, or were fitted before the catalogue changed. Fitting them on "
               f"{interactions:,} interactions takes minutes, too long for a page: run `ranker base fit`, "
               "then reload this page.")
    return False


def reranked(engine: Engine, user_id: int, flow: str, scorer: Scorer | None = None,
             k: int = config.DEFAULT_K) -> Recommendation:
    return service(engine).recommend(user_id, flow, k, arm="treatment", scorer=scorer)


def base_list(engine: Engine, user_id: int, flow: str, k: int = config.DEFAULT_K) -> Recommendation:
    return service(engine).recommend(user_id, flow, k, arm="control")


def list_table(engine: Engine, rec: Recommendation, other: Recommendation | None = None,
               detail: bool = False) -> pd.DataFrame:
    """One row per item: position, id, name, category and score. With ``other`` (the base list) the
    list is a reranked one: each item's move from ``other`` and its reranker score; else its base
    score. ``detail`` adds field and type, the features as served and each feature's contribution (⊕)."""
    frame = views.list_frame(engine, rec, other)
    features = list(rec.items[0].features) if rec.items else []
    shown = {"position": "#", "move": "move", "item_id": "id", "name": "item", "category": "category"}
    if detail:
        shown.update({"field": "field", "type": "type"})
    if other is not None and frame["score"].notna().any():
        shown["score"] = "score"
    else:
        shown["base_score"] = "base score"
    if detail:
        shown.update({f: f for f in features})
        shown.update({f"contribution_{f}": f"{f} ⊕" for f in features})
    table = frame[[c for c in shown if c in frame.columns]].rename(columns=shown)
    return table.round({"score": 4, "base score": 4, **{c: 3 for c in table.columns if c in features
                                                         or c.endswith(" ⊕")}})


def comparison_table(engine: Engine, before: Recommendation, after: Recommendation, before_label: str,
                     after_label: str) -> pd.DataFrame:
    """Two lists side by side, position by position, with each item's move from ``before`` to ``after``."""
    return views.comparison_frame(engine, before, after).rename(columns={
        "position": "#", "before_id": f"id ({before_label})", "before_name": f"item ({before_label})",
        "after_id": f"id ({after_label})", "after_name": f"item ({after_label})"})
