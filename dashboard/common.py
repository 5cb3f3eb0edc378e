"""Shared dashboard plumbing: the engine, cached queries and empty states."""

from __future__ import annotations

import streamlit as st
from sqlalchemy import Engine

from ranker import db


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """The process-wide engine for ``url``, schema created or upgraded once."""
    return db.ensure_schema(db.get_engine(url))


def get_engine_or_stop() -> Engine:
    """The engine, or an error box that says what to check, and stop the page."""
    try:
        return engine(db.database_url())
    except db.DatabaseError as exc:
        st.error(f"Database unavailable. {exc}")
        st.stop()


@st.cache_data(ttl=10, show_spinner=False)
def table_counts(_engine: Engine, url: str) -> dict[str, int]:
    return db.table_counts(_engine)


def database_label(eng: Engine) -> str:
    return db.mask_url(eng.url.render_as_string(hide_password=False))
