"""Every cache of the dashboard, in one place: ``st.cache_resource`` for the engine and the serving
warm-up, ``st.cache_data`` with a time to live for each ``ranker`` read a page shows.

A cached read takes the engine first; it is cached per database URL. Writes call :func:`clear`.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from ranker.data import db
from ranker.evaluation.abtest import ABResult
from ranker.ops import rollup_metrics
from ranker.rank import dataset_files
from ranker.serving import online, views

#: Engines are cached per URL (with its password: two users of one server are two databases here).
BY_URL = {Engine: lambda engine: engine.url.render_as_string(hide_password=False)}
Day = date | datetime | None
log = logging.getLogger(__name__)


def clear() -> None:
    """Call after any write, so no page shows data cached from before it."""
    st.cache_data.clear()


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """The process-wide engine for ``url``, schema created or upgraded once."""
    return db.ensure_schema(db.get_engine(url))


@st.cache_resource(show_spinner="Loading the serving state (once after a start)…", hash_funcs=BY_URL)
def warm_up(engine: Engine) -> str | None:
    """Once per process and database, in the script run that calls it: :func:`ranker.serving.views.warm_up`.

    It runs in the script thread, never beside one. numpy reads the headers of the base models'
    ``.npz`` files with ``ast.literal_eval``, and under CPython 3.11 that can break Streamlit's
    ``ast.parse`` of a page in another thread ("SystemError: AST constructor recursion depth
    mismatch", python/cpython#106905). A second session that asks meanwhile waits for this one.
    """
    return views.warm_up(engine)


# --- Database ---------------------------------------------------------------------------


@st.cache_data(ttl=10, show_spinner=False, hash_funcs=BY_URL)
def table_counts(engine: Engine) -> dict[str, int]:
    return db.table_counts(engine)


@st.cache_data(ttl=10, show_spinner=False, hash_funcs=BY_URL)
def interaction_origins(engine: Engine) -> dict[str, int]:
    return db.interaction_origins(engine)


@st.cache_data(ttl=5, show_spinner=False, hash_funcs=BY_URL)
def api_server(engine: Engine) -> dict[str, Any] | None:
    """The server ``ranker serve`` recorded (url, pid, workers, started_at) with ``ready``, its
    ``/readyz`` answer (None when nothing answers); None when no server is recorded."""
    from ranker.api.server import probe, running_server

    server = running_server(engine)
    return None if server is None else {**server, "ready": probe(server["url"])}


# --- Serving ----------------------------------------------------------------------------


@st.cache_data(ttl=60, show_spinner=False, hash_funcs=BY_URL)
def rerank_latency(engine: Engine, scorer_version: str) -> dict:
    """p50/p99 of the serving rerank (300 timed reranks), measured once a minute per scorer."""
    from ranker.serving.service import service

    return service(engine).rerank_latency()


@st.cache_data(ttl=600, show_spinner="Simulating the same requests for every diversity method and knob…",
               hash_funcs=BY_URL)
def diversity_curves(engine: Engine, scorer_version: str, requests: int) -> dict[str, Any]:
    """Expected CTR against ILD per diversity method and knob (:func:`ranker.ops.report.diversity_curves`),
    per serving scorer; ValueError on a world without the oracle (imports)."""
    from ranker.ops.report import diversity_curves

    return diversity_curves(engine, requests=requests)


@st.cache_data(ttl=300, show_spinner=False, hash_funcs=BY_URL)
def example_user(engine: Engine) -> tuple[int, str] | None:
    """A stable example user for previews: (user id, flow)."""
    return views.recently_active_user(engine)


@st.cache_data(ttl=300, show_spinner=False, hash_funcs=BY_URL)
def flows_with_users(engine: Engine) -> list[str]:
    return views.flows_with_users(engine)


@st.cache_data(ttl=300, show_spinner=False, hash_funcs=BY_URL)
def users_for_flow(engine: Engine, flow: str) -> pd.DataFrame:
    return views.users_for_flow(engine, flow)


# --- Online metrics ---------------------------------------------------------------------
# Read from the daily rollups (ranker.ops.rollup_metrics): the same figures as ranker.serving.online's
# live queries, without scanning the log on every render. Each read refreshes the rollups first.


@st.cache_data(ttl=15, show_spinner="Rolling up the served traffic…", hash_funcs=BY_URL)
def fresh_rollups(engine: Engine) -> str | None:
    """Bring the daily rollups up to date (:func:`ranker.data.rollups.refresh`), at most every 15 s;
    returns the last day they cover (ISO), or None. When the refresh cannot run (a busy database,
    a read-only role), the reads stay right but late outcomes on rolled-up days wait for the next."""
    from sqlalchemy.exc import SQLAlchemyError

    from ranker.data import rollups
    from ranker.errors import RankerError

    try:
        done = rollups.refresh(engine)
    except (RankerError, SQLAlchemyError) as exc:
        log.warning("daily rollups not refreshed: %s", exc)
        reached = rollups.through(engine)
        return None if reached is None else reached.isoformat()
    return None if done.through is None else done.through.isoformat()


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def traffic_scope(engine: Engine) -> online.TrafficScope | None:
    fresh_rollups(engine)
    return rollup_metrics.traffic_scope(engine)


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def metrics_by_arm(engine: Engine, flow: str | None, start: Day, end: Day, source: str | None) -> pd.DataFrame:
    fresh_rollups(engine)
    return rollup_metrics.daily_metrics_by_arm(engine, flow, start, end, source=source)


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def summary_by_arm(engine: Engine) -> pd.DataFrame:
    """Headline metrics per arm over all served traffic (:func:`ranker.serving.online.summary_by_arm`),
    without the distinct users, which the Overview does not show."""
    fresh_rollups(engine)
    return rollup_metrics.summary_by_arm(engine, users=False)


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def ab_test(engine: Engine, flow: str | None, start: Day, end: Day, mde: float, source: str | None,
            experiment: str | None = None) -> ABResult:
    fresh_rollups(engine)
    return rollup_metrics.ab_test(engine, flow, start, end, mde=mde, source=source,
                                  experiment=experiment or online.LATEST)


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def ctr_by_cohort(engine: Engine, flow: str | None, start: Day, end: Day, source: str | None,
                  experiment: str | None = None) -> list[dict]:
    fresh_rollups(engine)
    return rollup_metrics.ctr_by_cohort(engine, flow, start, end, source, experiment or online.LATEST)


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def guardrail_tests(engine: Engine, flow: str | None, start: Day, end: Day,
                    source: str | None, experiment: str | None = None) -> dict[str, ABResult]:
    fresh_rollups(engine)
    return rollup_metrics.guardrail_tests(engine, flow, start, end, source=source,
                                          experiment=experiment or online.LATEST)


@st.cache_data(ttl=5, show_spinner=False, hash_funcs=BY_URL)
def experiments(engine: Engine) -> list[dict]:
    """Every A/B experiment, newest first, as table rows."""
    from ranker.serving.experiments import experiment_rows

    return experiment_rows(engine)


@st.cache_data(ttl=15, show_spinner=False, hash_funcs=BY_URL)
def requests_by_source(engine: Engine, flow: str | None, start: Day, end: Day) -> pd.DataFrame:
    fresh_rollups(engine)
    return rollup_metrics.daily_requests_by_source(engine, flow, start, end)


# --- Dataset files ----------------------------------------------------------------------


def dataset_preview(path: Path) -> dataset_files.DatasetPreview | None:
    """:func:`ranker.rank.dataset_files.preview_dataset`, read again when the file or the feature set
    (the columns it must have) changes."""
    from ranker.rank.features import feature_set

    return _dataset_preview(str(path), _mtime(path), feature_set())


@st.cache_data(ttl=30, show_spinner=False)
def _dataset_preview(path: str, mtime: float | None, feature_set: str) -> dataset_files.DatasetPreview | None:
    return dataset_files.preview_dataset(path)


def held_out() -> dataset_files.HeldOut | None:
    """:func:`ranker.rank.dataset_files.load_held_out`, read again when either file changes."""
    train = dataset_files.train_path()
    paths = (dataset_files.val_path(train), train)
    return _held_out(tuple((str(p), _mtime(p)) for p in paths))


@st.cache_data(ttl=60, show_spinner=False)
def _held_out(stamped: tuple[tuple[str, float | None], ...]) -> dataset_files.HeldOut | None:
    return dataset_files.load_held_out([Path(p) for p, _ in stamped])


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


@st.cache_data(ttl=60, show_spinner=False, hash_funcs=BY_URL)
def version_vs_base(engine: Engine, version: str) -> dict | None:
    """A version against the base order on the latest retrain's holdout, or None without one."""
    from ranker.ops.pipeline import version_vs_base as check

    try:
        found = check(engine, version)
    except (ValueError, OSError):  # an unreadable holdout or checkpoint: the activation says why
        return None
    return None if found is None else found.as_dict()


@st.cache_data(ttl=60, show_spinner=False, hash_funcs=BY_URL)
def parity(engine: Engine) -> dict | None:
    """`ranker parity` of the latest training file, or None when there is none."""
    from ranker.evaluation.parity import latest_training_csv, parity_gate, parity_report
    from ranker.rank.train import DataError

    try:
        report = parity_report(engine, latest_training_csv(engine))
    except DataError:
        return None
    ok, reason = parity_gate(report)
    return {**report.as_dict(), "gate_ok": ok, "gate_reason": reason}
