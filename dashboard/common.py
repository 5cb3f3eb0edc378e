"""Shared dashboard plumbing: the engine and the serving warm-up, operator auth and audit, flash
messages, links and empty states. Caches live in :mod:`dashboard.cached`."""

from __future__ import annotations

import hmac
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from dashboard import cached
from ranker.data import db

ACTOR = "dashboard"


def get_engine_or_stop() -> Engine:
    """The engine, or an error box that says what to check, and stop the page."""
    try:
        return cached.engine(db.database_url())
    except db.DatabaseError as exc:
        st.error(f"Database unavailable. {exc}")
        st.stop()


def warm_up() -> None:
    """Load the serving state before the first page of a process runs (see :func:`cached.warm_up`);
    a database that cannot be opened is left for the page to report."""
    try:
        engine = cached.engine(db.database_url())
    except db.DatabaseError:
        return
    cached.warm_up(engine)


def database_label(eng: Engine) -> str:
    return db.mask_url(eng.url.render_as_string(hide_password=False))


def api_status(ready: dict[str, Any] | None) -> str:
    """A ``/readyz`` answer in words."""
    if ready is None:
        return "not answering (stopped or unreachable)"
    if not ready.get("ready"):
        return f"not ready: {ready.get('database')}"
    scorer = ready.get("scorer")
    return f"ready, serving {'the rule-based ranker' if scorer == 'rule' else scorer}"


def done(message: str) -> None:
    """After a write: clear caches and rerun the page; the new run shows ``message`` where the page
    calls :func:`show_done`."""
    cached.clear()
    st.session_state["_flash"] = message
    st.rerun()


def show_done() -> None:
    """Show the message left by :func:`done` in the previous run, once."""
    message = st.session_state.pop("_flash", None)
    if message:
        st.success(message)


# --- Operator password (SPEC §14) ------------------------------------------------------


def _operator_password() -> str | None:
    try:
        return st.secrets.get("operator_password")
    except (FileNotFoundError, KeyError, Exception):  # no secrets.toml at all
        return None


def operator_gate() -> bool:
    """True when mutations may proceed: no password is configured, or the right one was entered.

    Call once per page, before any mutating widget. When ``operator_password`` is set
    in ``.streamlit/secrets.toml``, the sidebar asks for it (compared with
    ``hmac.compare_digest``) and mutating buttons stay disabled until it matches.
    """
    secret = _operator_password()
    if not secret or st.session_state.get("operator_unlocked"):
        return True
    given = st.sidebar.text_input("Operator password", type="password", key="operator_password",
                                  help="Needed to train, promote, activate, change weights or the rollout, "
                                       "and run simulations.")
    if given and hmac.compare_digest(given.encode(), str(secret).encode()):
        st.session_state["operator_unlocked"] = True
        return True
    if given:
        st.sidebar.error("Wrong operator password.")
    else:
        st.sidebar.info("Enter the operator password to make changes.")
    return False


def audit(eng: Engine, action: str, details: dict[str, Any]) -> None:
    with db.session_scope(eng) as s:
        db.audit(s, action, details, actor=ACTOR)


PAGES = {
    "overview": ("Overview", ":material/home:"),
    "data_training": ("Data & Training", ":material/model_training:"),
    "models": ("Models", ":material/inventory_2:"),
    "rule_weights": ("Rule weights", ":material/tune:"),
    "ranking_preview": ("Ranking preview", ":material/compare_arrows:"),
    "metrics_ab": ("Metrics & A/B", ":material/monitoring:"),
}


def link(page: str, label: str | None = None) -> None:
    """A link to another page of the dashboard (``page`` is the file stem under ``pages/``)."""
    title, icon = PAGES[page]
    st.page_link(f"../pages/{page}.py", label=label or title, icon=icon)


def empty_database_notice(counts: dict[str, int]) -> bool:
    """Show how to fill an empty database, or how to rebuild a demo world whose build did not finish
    (:func:`ranker.data.db.unfinished_world`); True when the page has no world to show."""
    build = db.unfinished_world(get_engine_or_stop())
    if build is not None:
        st.error(f"Unfinished demo world: {db.unfinished_world_message(build)}")
        return True
    if counts.get("users", 0) == 0 and counts.get("items", 0) == 0:
        st.info("The database is empty. Build the demo world with `ranker demo init` "
                "(or `make run`, which does it on first run), or import your own data with `ranker import`.")
        return True
    return False


def fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    try:
        if v != v:  # NaN
            return "–"
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)
