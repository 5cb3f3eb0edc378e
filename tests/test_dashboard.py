"""Dashboard pages under Streamlit's AppTest, on real demo databases.

Every page is rendered through ``dashboard/app.py`` (``st.navigation``) and the values
it shows are checked against ``ranker/`` queries. Buttons start real background jobs:
``python -m ranker jobs run ID`` subprocesses that report progress in the jobs table.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from sqlalchemy import bindparam, text
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.testing.v1 import AppTest

from dashboard.common import PAGES
from ranker import config, keys
from ranker.data import db
from ranker.ops import jobs
from ranker.rank import registry, tuning
from ranker.rank.dataset import DatasetConfig
from ranker.rank.train import TrainConfig, load_dataset
from ranker.serving import online, views
from ranker.serving.experiments import log_outcomes
from ranker.serving.service import _SERVICES, recommend
from ranker.sim.simulate import simulate

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
pytestmark = pytest.mark.slow  # whole page runs and background jobs
PASSWORD = "correct horse"
JOB_TIMEOUT_S = 90.0


# --- Fixtures and helpers --------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """No page may see data cached for another test's database."""
    st.cache_data.clear()
    st.cache_resource.clear()
    db._cached_engine.cache_clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    db._cached_engine.cache_clear()


@pytest.fixture
def demo(served) -> Iterator:
    """The trained small demo world (active model v1, a dataset, no traffic); stops any job left running."""
    yield served
    for job in jobs.recent(served, limit=50):
        if job.status in jobs.ACTIVE and job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)  # the worker leads its own session
            except ProcessLookupError:
                pass


@pytest.fixture
def untrained(world_copy, isolated_dirs, monkeypatch):
    """The small demo world as `ranker demo init` leaves it: no base models, dataset, model or traffic."""
    monkeypatch.setenv("RANKER_DATABASE_URL", world_copy.url.render_as_string(hide_password=False))
    _SERVICES.clear()
    yield world_copy
    _SERVICES.clear()


@pytest.fixture
def empty_db(tmp_path, isolated_dirs, monkeypatch) -> Path:
    path = tmp_path / "empty.db"
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{path}")
    return path


def open_page(name: str, password: str | None = None) -> AppTest:
    """A new browser session on page ``name`` (a file stem under pages/), rendered once."""
    at = AppTest.from_file(APP, default_timeout=60)
    if password is not None:
        at.secrets["operator_password"] = password
    return at.switch_page(f"../pages/{name}.py").run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def texts(at: AppTest, kind: str) -> list[str]:
    """The texts of every element of ``kind`` (success, info, warning, error, caption, toast, ...)."""
    return [e.value for e in getattr(at, kind)]


def progress(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def links(at: AppTest) -> list[str]:
    """The pages linked to, by URL path (the file stem)."""
    return [p.proto.page for p in at.get("page_link")]


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return found[0]


def click(at: AppTest, label: str) -> AppTest:
    return button(at, label).click().run()


def number(at: AppTest, label: str):
    return next(n for n in at.number_input if n.label == label)


def everything_shown(at: AppTest) -> str:
    parts = [*progress(at)]
    for kind in ("title", "subheader", "success", "info", "warning", "error", "exception", "toast"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return " | ".join(parts)


def rerun_until(at: AppTest, shown: Callable[[AppTest], bool], what: str,
                timeout: float = JOB_TIMEOUT_S) -> AppTest:
    """Poll like the page's fragment does: rerun every 0.3 s until ``shown(at)``."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, at.exception
        if shown(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed {what} within {timeout:.0f} s; it shows: "
                                 f"{everything_shown(at)}")
        time.sleep(0.3)


def start_training(at: AppTest, engine, epochs: int, batch_size: int = 128):
    """Fill in the train form, press Train; returns the newest training job."""
    number(at, "Epochs").set_value(epochs)
    number(at, "Batch size").set_value(batch_size)
    click(at, "Train")
    assert not at.exception, at.exception
    return jobs.recent(engine, kind="train", limit=1)[0]


# --- Every page, real values ---------------------------------------------------------------


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_on_the_demo_database_without_an_error(demo, page):
    at = open_page(page)
    assert not at.exception, at.exception
    assert texts(at, "title") == [PAGES[page][0]]
    assert texts(at, "error") == []


def test_overview_counts_equal_the_database_and_it_names_the_serving_model(demo):
    at = open_page("overview")
    counts = db.table_counts(demo)
    assert counts["interactions"] > 0
    shown = metrics(at)
    for table in ("users", "items", "interactions", "impressions", "outcomes"):
        assert shown[table.capitalize()] == f"{counts[table]:,}"
    assert texts(at, "success") == ["Serving the neural ranker **v1**."]


def test_data_training_shows_the_dataset_rows_and_label_balance(demo):
    data = pd.read_csv(config.DATA_DIR / "ranker_train.csv")
    at = open_page("data_training")
    assert metrics(at) == {"Rows": f"{len(data):,}", "Positives": f"{int(data['label'].sum()):,}",
                           "Positive share": f"{data['label'].mean():.1%}"}
    assert at.dataframe[0].value.equals(data.head(20))


def test_models_table_lists_every_registered_version_with_its_ndcg(demo):
    registry.register(demo, registry.versions_dir() / "v1.pth", actor="test")  # a second version: v2
    versions = registry.list_versions(demo)
    at = open_page("models")
    table = at.dataframe[0].value
    assert table["version"].tolist() == [v.version for v in versions] == ["v1", "v2"]
    assert table["NDCG@10"].tolist() == pytest.approx([v.metrics["model"]["ndcg@10"] for v in versions])
    assert table["rule NDCG@10"].tolist() == pytest.approx([v.metrics["rule"]["ndcg@10"] for v in versions])
    assert table["active"].tolist() == ["●", ""]
    assert "Serving: **v1**." in texts(at, "caption")[0]


def test_rule_weights_preview_ndcg_equals_offline_ndcg_on_the_held_out_file(demo):
    held_out = load_dataset(config.DATA_DIR / "ranker_val.csv", min_positives=1)
    saved = tuning.current_weights(demo)
    at = open_page("rule_weights")
    assert [s.value for s in at.slider] == [saved[name] for name in ("model_score", "recency", "popularity",
                                                                      "diversity")]
    shown = metrics(at)
    assert shown["Offline NDCG@10 (these weights)"] == f"{tuning.offline_ndcg(saved, held_out):.4f}"
    assert shown["Rank correlation with saved weights (Kendall τ)"] == "1.000"


def test_moving_a_weight_slider_changes_the_ndcg_and_the_example_list(demo):
    held_out = load_dataset(config.DATA_DIR / "ranker_val.csv", min_positives=1)
    at = open_page("rule_weights")
    before = at.dataframe[0].value
    assert before["move"].eq("=").all()  # these weights are the saved ones

    at.slider(key="w_model_score").set_value(0.0).run()

    moved = {**tuning.current_weights(demo), "model_score": 0.0}
    assert metrics(at)["Offline NDCG@10 (these weights)"] == f"{tuning.offline_ndcg(moved, held_out):.4f}"
    after = at.dataframe[0].value
    assert after["id (saved)"].tolist() == before["id (saved)"].tolist()
    assert after["id (these weights)"].tolist() != before["id (these weights)"].tolist()
    assert not after["move"].eq("=").all()
    assert not button(at, "Save").disabled


def test_saving_a_freshness_boost_reaches_serving(demo):
    from ranker.serving.service import service

    at = open_page("rule_weights")
    assert at.number_input(key="freshness_boost").value == 0.0 and button(at, "Save boost").disabled
    at.number_input(key="freshness_boost").set_value(1.5).run()
    click(at, "Save boost")
    assert texts(at, "success") == ["Saved. The neural ranker serves with freshness boost 1.5 from the next request."]
    assert tuning.freshness_boost(demo) == 1.5
    scorer, _ = service(demo).scorer()
    assert scorer.version.endswith("+fresh1.5")
    assert db.recent_audit(demo, 1)[0].action == "freshness_boost"
    overview = open_page("overview")
    assert "with a freshness boost of 1.5" in texts(overview, "success")[0]


def test_ranking_preview_shows_the_served_base_and_reranked_lists_side_by_side(demo):
    at = open_page("ranking_preview")
    flow = at.selectbox[0].value
    picker = at.selectbox[1]
    ids = [int(label.split(" · ")[0]) for label in picker.options]
    user = next(u for u in ids[1:] if u != picker.value)  # not the default user
    picker.set_value(user).run()
    assert not at.exception, at.exception

    user = int(at.selectbox[1].value)
    control = recommend(user, flow, engine=demo, arm="control", log=False)
    treatment = recommend(user, flow, engine=demo, arm="treatment", log=False)
    base_table, reranked_table = at.dataframe[0].value, at.dataframe[1].value
    assert texts(at, "subheader")[:2] == ["Base order", "Reranked"]
    assert base_table["id"].tolist() == control.item_ids
    assert reranked_table["id"].tolist() == treatment.item_ids
    assert reranked_table["score"].tolist() == pytest.approx([i.score for i in treatment.items], abs=1e-4)
    detail = at.dataframe[2].value  # features and contributions, under the two lists
    assert detail["id"].tolist() == treatment.item_ids
    for name in ("model_score", "popularity"):
        assert detail[name].tolist() == pytest.approx([i.features[name] for i in treatment.items], abs=1e-3)
        assert detail[f"{name} ⊕"].tolist() == pytest.approx([i.contributions[name] for i in treatment.items],
                                                              abs=1e-3)
    assert treatment.model_version == "v1"


def test_metrics_page_verdict_and_overview_ctr_match_the_logs_after_simulated_traffic(demo):
    simulate(demo, days=1, requests_per_day=100, refit_base=False)

    at = open_page("metrics_ab")
    verdict = online.ab_test(demo, mde=0.05).verdict
    assert verdict
    assert verdict in texts(at, "success") + texts(at, "info")
    assert len(at.get("plotly_chart")) >= 5  # CTR, ILD, age, coverage, feedback rate over time
    guard = online.guardrail_tests(demo)
    table = next(d.value for d in at.dataframe if "metric" in d.value.columns)
    assert table["metric"].tolist() == list(online.GUARDRAILS.values())
    assert table["treatment"].tolist() == pytest.approx([g.treatment.rate for g in guard.values()])

    arms = online.summary_by_arm(demo)
    overview = open_page("overview")
    ctr = metrics(overview)["CTR: treatment"]
    assert ctr == f"{arms['ctr']['treatment']:.2%}"
    assert metrics(overview)["Impressions"] == f"{db.table_counts(demo)['impressions']:,}" != "0"


def test_the_serving_warm_up_runs_once_inside_the_first_script_run(demo, monkeypatch):
    """Regression: the warm-up loads .npz base models, and numpy parses their headers with
    ``ast.literal_eval``. Under CPython 3.11 the ast module's recursion counter is shared by threads,
    so a warm-up thread beside Streamlit's ``ast.parse`` of a page could fail it with "SystemError: AST
    constructor recursion depth mismatch". It now runs in the script thread, before the page, once
    per process, and leaves no thread behind."""
    calls, real = [], views.warm_up

    def spy(engine):
        calls.append({"in_script_run": get_script_run_ctx(suppress_warning=True) is not None,
                      "served": real(engine)})
        return calls[-1]["served"]

    monkeypatch.setattr(views, "warm_up", spy)
    threads = set(threading.enumerate())

    first = open_page("ranking_preview")
    second = open_page("metrics_ab")  # another session, on another page

    assert calls == [{"in_script_run": True, "served": "v1"}]
    assert not first.exception and not second.exception
    assert set(threading.enumerate()) <= threads


def test_the_training_forms_start_at_the_library_defaults(untrained, monkeypatch):
    for name, value in {"epochs": 7, "batch_size": 64, "lr": 0.005, "arch": "small"}.items():
        monkeypatch.setattr(TrainConfig, name, value)
    for name, value in {"neg_ratio": 3.0, "window_days": 30.0, "source": "impressions",
                        "val_fraction": 0.25}.items():
        monkeypatch.setattr(DatasetConfig, name, value)

    at = open_page("data_training")

    shown = {n.label: n.value for n in at.number_input}
    assert shown == {"Negatives per positive": 3.0, "Window (days)": 30, "Epochs": 7, "Batch size": 64,
                     "Learning rate": 0.005, "Validation split": 0.25,
                     "Share of lists with randomised swaps": 0.05}
    assert {s.label: s.value for s in at.selectbox} == {"Source": "impressions", "Feature set": "guide",
                                                        "Format": "csv",
                                                        "Architecture": "small", "Loss": "pairwise",
                                                        "Position correction": "auto"}


def test_the_feature_set_is_chosen_on_the_training_page_and_the_dataset_job_uses_it(demo):
    at = open_page("data_training")
    next(s for s in at.selectbox if s.label == "Feature set").select("history")
    click(at, "Generate dataset")
    assert not at.exception, at.exception
    assert tuning.feature_set(demo, apply=False) == "history"
    assert jobs.recent(demo, kind="dataset", limit=1)[0].params["features"] == "history"
    rules = open_page("rule_weights")  # the rule has a weight for each feature of the chosen set
    assert [s.label for s in rules.slider][:9] == list(config.DEFAULT_RULE_WEIGHTS) + [
        "category_affinity", "field_affinity", "type_affinity", "item_ctr", "user_recency"]


def test_a_parquet_dataset_is_built_previewed_and_trained_on_from_the_training_page(demo):
    from ranker.rank.train import load_dataset

    at = open_page("data_training")
    next(s for s in at.selectbox if s.label == "Format").select("parquet")
    click(at, "Generate dataset")
    job = jobs.recent(demo, kind="dataset", limit=1)[0]
    assert job.params["output"].endswith("ranker_train.parquet")
    assert job.params["val_output"].endswith("ranker_val.parquet")
    rerun_until(at, lambda at: jobs.get(demo, job.id).status == "succeeded", "the dataset job succeeding")

    folder = config.DATA_DIR / "ranker_train.parquet"
    assert folder.is_dir() and any(p.name.startswith("event_date=") for p in folder.iterdir())
    data = load_dataset(folder)
    at = open_page("data_training")
    assert metrics(at)["Rows"] == f"{len(data):,}"
    assert any("ranker_train.parquet" in c for c in texts(at, "caption"))
    assert next(s for s in at.selectbox if s.label == "Format").value == "parquet"
    train = start_training(at, demo, epochs=1)
    assert train.params["data"].endswith("ranker_train.parquet")


def test_position_correction_is_chosen_on_the_training_page_with_the_saved_estimate(demo):
    from ranker.rank.propensity import estimate_from_log, save_estimate

    at = open_page("data_training")
    assert any("no estimate saved" in c for c in texts(at, "caption"))
    est = estimate_from_log(demo)  # the legacy feed's randomised swaps
    save_estimate(demo, est)
    at = open_page("data_training")
    assert any(f"k^-{est.eta:.2f}" in c for c in texts(at, "caption"))
    next(s for s in at.selectbox if s.label == "Position correction").select("ipw")
    job = start_training(at, demo, epochs=1)
    assert job.params["config"]["position_correction"] == "ipw"
    assert job.params["config"]["loss"] == "pairwise"


def test_the_swap_share_is_set_on_the_training_page_and_serving_reads_it(demo):
    from ranker.rank.propensity import swap_share

    at = open_page("data_training")
    number(at, "Share of lists with randomised swaps").set_value(0.2).run()
    click(at, "Save swap share")
    assert not at.exception, at.exception
    assert swap_share(demo) == pytest.approx(0.2)


# --- HTTP API and traffic by source ---------------------------------------------------------

STARTED_AT = "2024-05-01T12:30:00.123456"


@contextmanager
def readyz_server(status: int, body: dict) -> Iterator[str]:
    """A real HTTP server on a free loopback port answering ``/readyz`` with ``status`` and JSON ``body``;
    yields its URL and stops when the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status if self.path == "/readyz" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def record_api_server(engine, url: str, workers: int = 2) -> None:
    """What `ranker serve` writes when it starts."""
    with db.session_scope(engine) as s:
        db.put_setting(s, keys.API_SERVER, {"url": url, "pid": os.getpid(), "workers": workers,
                                         "started_at": STARTED_AT})


def api_line(at: AppTest, url: str) -> str:
    found = [m for m in texts(at, "markdown") if url in m]
    assert len(found) == 1, texts(at, "markdown")
    return found[0]


def test_without_a_recorded_api_server_the_overview_says_how_to_start_one(demo):
    at = open_page("overview")
    assert "HTTP API" in texts(at, "subheader")
    assert "No API server running. Start one with `ranker serve` (see docs/api.md)." in texts(at, "caption")


def test_overview_links_a_ready_api_server_to_its_docs_and_says_what_it_serves(demo):
    with readyz_server(200, {"ready": True, "database": "ok", "scorer": "v1"}) as url:
        record_api_server(demo, url, workers=2)
        at = open_page("overview")
    assert not at.exception, at.exception
    assert api_line(at, url) == f"[{url}]({url}/docs) · 2 workers · started 2024-05-01 12:30:00 UTC · " \
                                "**ready, serving v1**"
    assert not any(c.startswith("No API server running") for c in texts(at, "caption"))


def test_overview_says_why_an_answering_api_server_is_not_ready(demo):
    with readyz_server(503, {"ready": False, "database": "database is locked", "scorer": "unknown"}) as url:
        record_api_server(demo, url, workers=1)
        at = open_page("overview")
    assert api_line(at, url).endswith(" · 1 worker · started 2024-05-01 12:30:00 UTC · "
                                      "**not ready: database is locked**")


def test_overview_says_a_recorded_api_server_that_stopped_is_not_answering(demo):
    with readyz_server(200, {"ready": True, "database": "ok", "scorer": "rule"}) as url:
        record_api_server(demo, url)
        assert api_line(open_page("overview"), url).endswith("**ready, serving the rule-based ranker**")
    st.cache_data.clear()  # as after the few seconds the status is cached for

    at = open_page("overview")
    assert api_line(at, url).endswith("**not answering (stopped or unreachable)**")


def chart_values(values: list | dict) -> list:
    """A trace's values from a figure's JSON: plotly sends numbers as typed arrays ({dtype, bdata})."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def served_lists_by_source(engine) -> dict[str, tuple[int, int]]:
    """source → (served lists, impressions), counted straight from the tables."""
    with engine.connect() as conn:
        lists = dict(conn.execute(text(
            "SELECT COALESCE(source, 'earlier'), COUNT(*) FROM served_lists GROUP BY 1")).all())
        impressions = dict(conn.execute(text(
            "SELECT COALESCE(l.source, 'earlier'), COUNT(*) FROM impressions i "
            "LEFT JOIN served_lists l ON l.request_id = i.request_id GROUP BY 1")).all())
    return {source: (n, impressions.get(source, 0)) for source, n in lists.items()}


def forget_served_traffic(engine) -> None:
    """Empty the log of served lists and their outcomes, as in a world without any served history."""
    with engine.begin() as conn:
        for table in ("outcomes", "impressions", "served_lists"):
            conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def quiet(demo):
    """The trained demo world with no served list logged yet."""
    forget_served_traffic(demo)
    return demo


@pytest.fixture
def mixed_traffic(quiet):
    """Simulated traffic, three lists served over HTTP (one clicked) and one logged without a source;
    yields the engine and the HTTP recommendations."""
    demo = quiet
    simulate(demo, days=1, requests_per_day=60, refit_base=False)
    with demo.connect() as conn:
        developers = conn.execute(text("SELECT id FROM users WHERE role = 'developer' ORDER BY id LIMIT 4"))
        users = [int(u) for u in developers.scalars()]
    api = [recommend(u, "developer-startup", 5, engine=demo, source="api") for u in users[:3]]
    recommend(users[3], "developer-startup", 5, engine=demo)  # as before sources were recorded
    log_outcomes(demo, [(api[0].impression_ids[0], "click", api[0].served_at)])
    yield demo, api


def test_traffic_by_source_counts_the_lists_impressions_and_clicks_of_each_source(mixed_traffic):
    engine, api = mixed_traffic
    by_source = online.daily_requests_by_source(engine)
    totals = by_source.groupby("source")[["lists", "impressions", "clicks"]].sum()

    assert sorted(totals.index) == ["api", "earlier", "sim"]
    assert totals.loc["api"].tolist() == [3, sum(len(r.items) for r in api), 1]
    assert totals.loc["earlier", "lists"] == 1
    assert {s: (totals.loc[s, "lists"], totals.loc[s, "impressions"]) for s in totals.index} == \
        served_lists_by_source(engine)
    with engine.connect() as conn:
        sim_clicks = conn.execute(text(
            "SELECT COUNT(DISTINCT o.impression_id) FROM outcomes o JOIN impressions i ON i.id = o.impression_id "
            "JOIN served_lists l ON l.request_id = i.request_id WHERE l.source = 'sim' AND o.kind IN :kinds")
            .bindparams(bindparam("kinds", expanding=True)), {"kinds": list(config.ENGAGED_KINDS)}).scalar_one()
    assert totals.loc["sim", "clicks"] == sim_clicks > 0


def test_the_online_metrics_of_one_source_count_only_its_traffic(mixed_traffic):
    engine, api = mixed_traffic
    counted = served_lists_by_source(engine)
    for source, (lists, impressions) in counted.items():
        daily = online.daily_metrics(engine, source=source)
        assert (daily["lists"].sum(), daily["impressions"].sum()) == (lists, impressions), source
    api_arms = online.summary_by_arm(engine, source="api")
    assert api_arms[["impressions", "clicks", "users"]].sum().tolist() == [sum(len(r.items) for r in api), 1, 3]


def test_metrics_page_charts_served_lists_by_source_and_filters_by_source(mixed_traffic):
    engine, _ = mixed_traffic
    at = open_page("metrics_ab")
    assert not at.exception, at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    by_source = next(c for c in charts if c["layout"].get("title", {}).get("text") == "Served lists per day, by source")
    shown = {trace["name"]: sum(chart_values(trace["y"])) for trace in by_source["data"]}
    assert shown == {s: n for s, (n, _) in served_lists_by_source(engine).items()}

    source = next(s for s in at.selectbox if s.label == "Source")
    assert source.options == ["all", "api", "earlier", "sim"]
    source.set_value("api").run()
    assert not at.exception, at.exception
    verdict = online.ab_test(engine, source="api", mde=0.05).verdict
    assert verdict != online.ab_test(engine, mde=0.05).verdict
    assert verdict in texts(at, "success") + texts(at, "info")


# --- Jobs ---------------------------------------------------------------------------------


def test_clicking_train_runs_a_real_training_job_and_the_new_version_appears(demo):
    at = open_page("data_training")
    job = start_training(at, demo, epochs=3)
    assert f"Training job #{job.id} started" in texts(at, "toast")
    assert job.pid and job.pid != os.getpid()  # a worker process of its own

    rerun_until(at, lambda at: any("succeeded" in s for s in texts(at, "success")), "the job succeeding")

    assert [v.version for v in registry.list_versions(demo)] == ["v1", "v2"]
    assert jobs.get(demo, job.id).status == "succeeded"
    assert "Result: v2" in texts(at, "subheader")
    assert (config.DATA_DIR / "jobs" / f"{job.id}.log").exists()
    models = open_page("models")
    assert models.dataframe[0].value["version"].tolist() == ["v1", "v2"]

    click(at, "Promote v2 to serving")
    assert registry.active_version(demo) == "v2"
    assert "v2 is now serving (hot reload, no restart)." in texts(at, "success")


def test_a_running_job_survives_a_page_reload_and_can_be_cancelled_there(demo):
    job = start_training(open_page("data_training"), demo, epochs=500, batch_size=8)  # minutes of work

    reloaded = open_page("data_training")  # a new session: all it knows is the database
    running = f"Train job #{job.id}: running"
    rerun_until(reloaded, lambda at: any(p.startswith(running) for p in progress(at)), "the job running")
    click(reloaded, "Cancel")

    rerun_until(reloaded, lambda at: f"Train job #{job.id}: cancelled." in texts(at, "warning"),
                "the job cancelled")
    assert jobs.get(demo, job.id).status == "cancelled"
    assert [v.version for v in registry.list_versions(demo)] == ["v1"]


def test_a_second_train_click_shows_the_training_job_already_running(demo):
    at = open_page("data_training")
    first = start_training(at, demo, epochs=500, batch_size=8)

    click(at, "Train")

    assert f"Training job #{first.id} is already running; showing it." in texts(at, "info")
    assert [j.id for j in jobs.recent(demo, kind="train")] == [first.id]
    again, created = jobs.submit(demo, "train", {"data": "any.csv"}, spawn=False)
    assert (again.id, created) == (first.id, False)
    jobs.cancel(demo, first.id)
    rerun_until(at, lambda at: f"Train job #{first.id}: cancelled." in texts(at, "warning"), "the job cancelled")


def test_a_failed_training_job_shows_its_error_on_the_page(demo):
    train_csv = config.DATA_DIR / "ranker_train.csv"
    pd.read_csv(train_csv).rename(columns={"label": "clicked"}).to_csv(train_csv, index=False)
    at = open_page("data_training")
    assert any("no column(s) label" in e for e in texts(at, "error"))  # said before anyone trains

    job = start_training(at, demo, epochs=3)
    failed = f"Train job #{job.id}: failed"
    rerun_until(at, lambda at: any(e.startswith(failed) for e in texts(at, "error")), "the job failing")

    error = jobs.get(demo, job.id).error
    assert "DataError" in error and "missing column(s): label" in error
    assert f"{failed}: {error}" in texts(at, "error")
    assert [v.version for v in registry.list_versions(demo)] == ["v1"]


# --- Empty states ---------------------------------------------------------------------


@pytest.mark.parametrize("page", list(PAGES))
def test_an_empty_database_offers_demo_init_on_every_page(empty_db, page):
    at = open_page(page)
    assert not at.exception, at.exception
    assert any("`ranker demo init`" in i for i in texts(at, "info")), everything_shown(at)


@pytest.mark.parametrize("page", list(PAGES))
def test_a_demo_world_whose_build_did_not_finish_is_refused_on_every_page_with_the_rebuild_command(untrained, page):
    # what a `ranker demo init` killed halfway leaves: rows, and the build record it never deleted
    with db.session_scope(untrained) as s:
        db.put_setting(s, keys.WORLD_BUILD, {"seed": 42, "preset": "default", "scale": "xlarge",
                                             "started_at": "2026-12-16T09:00:00"})
    at = open_page(page)
    assert not at.exception, at.exception
    errors = texts(at, "error")
    assert any("did not finish (scale xlarge, seed 42" in e and "`ranker demo init --force`" in e
               for e in errors), everything_shown(at)
    assert not at.metric and not at.dataframe  # nothing of the half-built world is shown


def test_without_a_model_the_pages_explain_the_rule_fallback_and_offer_train(demo):
    registry.activate_version(demo, registry.RULE, actor="test")

    overview = open_page("overview")
    warning = texts(overview, "warning")[0]
    assert "Serving the **rule-based ranker**" in warning and config.MODEL_NOT_FOUND_MESSAGE in warning
    assert "weights model_score 0.5, recency 0.2, popularity 0.2, diversity 0.1" in warning
    assert "data_training" in links(overview)

    training = open_page("data_training")
    assert any(i.startswith("No trained model yet: serving uses the rule-based ranker") for i in
               texts(training, "info"))
    assert not button(training, "Train").disabled


def test_without_a_dataset_or_model_the_pages_say_what_to_do_first(untrained):
    training = open_page("data_training")
    assert "No dataset yet: generate one above (or `ranker dataset`)." in texts(training, "info")
    assert button(training, "Train").disabled and not button(training, "Generate dataset").disabled

    models = open_page("models")
    assert texts(models, "info")[0].startswith("No trained versions yet: serving uses the rule-based ranker")
    assert links(models) == ["data_training"]

    weights = open_page("rule_weights")
    assert any(i.startswith("Offline NDCG needs held-out data") for i in texts(weights, "info"))


def test_without_impressions_the_pages_offer_simulated_traffic(quiet):
    overview = open_page("overview")
    assert any(i.startswith("No served traffic yet") for i in texts(overview, "info"))
    assert "metrics_ab" in links(overview)

    at = open_page("metrics_ab")
    assert any(i.startswith("No served traffic yet") for i in texts(at, "info"))
    assert at.expander[1].label == "Run simulated traffic on the demo world"
    assert at.expander[1].proto.expanded
    assert not button(at, "Run simulation").disabled


# --- Operator password and audit ------------------------------------------------------------

MUTATIONS = {
    "data_training": ["Generate dataset", "Train"],
    "models": ["Roll back", "Use rule-based ranker", "Back up active file"],
    "rule_weights": ["Reset to defaults"],  # "Save" and "Save boost" wait for a change
    "metrics_ab": ["Stop experiment", "Run simulation"],
}
#: Buttons that only read (compute and show), which need no password.
READ_ONLY = {"Compute the curves"}


@pytest.mark.parametrize("page", list(MUTATIONS))
def test_mutating_buttons_stay_disabled_until_the_operator_password_is_entered(demo, page):
    at = open_page(page, password=PASSWORD)
    changing = [b for b in at.button if b.label not in READ_ONLY]
    assert changing and all(b.disabled for b in changing)
    assert texts(at.sidebar, "info") == ["Enter the operator password to make changes."]

    at.text_input(key="operator_password").input("wrong").run()
    assert all(b.disabled for b in at.button if b.label not in READ_ONLY)
    assert texts(at.sidebar, "error") == ["Wrong operator password."]

    at.text_input(key="operator_password").input(PASSWORD).run()
    assert [button(at, label).disabled for label in MUTATIONS[page]] == [False] * len(MUTATIONS[page])


def test_without_an_operator_password_nothing_is_locked(demo):
    at = open_page("rule_weights")
    assert not at.text_input and not button(at, "Reset to defaults").disabled


def test_each_mutation_writes_an_audit_row_that_the_overview_shows(demo):
    at = open_page("rule_weights", password=PASSWORD)
    at.text_input(key="operator_password").input(PASSWORD).run()
    at.slider(key="w_diversity").set_value(0.3).run()
    click(at, "Save")
    assert texts(at, "success") == ["Saved. Serving uses these weights from the next request."]
    assert tuning.current_weights(demo)["diversity"] == 0.3

    at.switch_page("../pages/metrics_ab.py").run()  # the same session: still unlocked
    at.slider[0].set_value(70).run()
    click(at, "Save rollout")
    at.switch_page("../pages/models.py").run()
    click(at, "Back up active file")
    click(at, "Use rule-based ranker")
    assert registry.active_version(demo) is None

    mine = [a for a in db.recent_audit(demo, limit=50) if a.actor == "dashboard"]
    assert [a.action for a in mine] == ["model_activate", "model_backup", "experiment_rollout", "rule_weights"]
    assert mine[0].details == {"version": "rule"} and mine[2].details["rollout"] == 70
    log = open_page("overview").dataframe[0].value
    assert log["action"].tolist()[:4] == [a.action for a in mine]
    assert log["actor"].tolist()[:4] == ["dashboard"] * 4


@pytest.fixture
def imported_db(tmp_path, isolated_dirs, monkeypatch) -> Iterator:
    """A database holding an imported MovieLens-format data set (no served traffic yet)."""
    from ranker.data.importing import import_movielens
    from tests.test_evaluate import simulate_ml100k

    folder = tmp_path / "ml"
    folder.mkdir()
    simulate_ml100k(folder, n_users=60, n_items=80, per_user=25)
    url = f"sqlite:///{tmp_path / 'imported.db'}"
    engine = db.make_engine(url)
    import_movielens(engine, folder)
    monkeypatch.setenv("RANKER_DATABASE_URL", url)
    _SERVICES.clear()
    yield engine
    _SERVICES.clear()
    engine.dispose()


def test_dashboard_works_on_imported_data(imported_db):
    preview = open_page("ranking_preview")
    assert not preview.exception and not preview.error
    assert preview.selectbox[0].value == "user-item"
    shown = " ".join(str(df) for df in (d.value for d in preview.dataframe))
    assert "item" in shown
    board = open_page("metrics_ab")
    assert not board.exception
    assert any("need served lists" in i.value or "served traffic" in i.value for i in board.info)


def test_experiments_are_listed_stopped_and_started_from_the_metrics_page(demo):
    from ranker.serving import experiments

    at = open_page("metrics_ab")
    assert at.expander[0].label == "Experiment 'demo': running, 50% in treatment"
    assert at.dataframe[0].value["name"].tolist() == ["demo"]
    button(at, "Stop experiment").click().run()
    assert not experiments.get_experiment(demo).running
    at = open_page("metrics_ab")
    assert at.expander[0].label == "No experiment running: everyone gets the ranker"
    at.text_input[0].input("from-the-page").run()
    button(at, "Start experiment").click().run()
    exp = experiments.get_experiment(demo)
    assert exp.running and exp.name == "from-the-page"
    at = open_page("metrics_ab")
    assert at.dataframe[0].value["name"].tolist() == ["from-the-page", "demo"]
    assert at.selectbox[2].options == ["from-the-page", "demo"]  # flow, source, experiment


def test_models_page_shows_train_serve_parity(demo):
    at = open_page("models")
    assert "Train/serve parity" in [h.value for h in at.subheader]
    assert any("Promotion gate" in c for c in texts(at, "caption") + texts(at, "warning"))


def test_an_unfinished_simulation_run_offers_resume_or_discard(untrained):
    from ranker.data.clock import serve_now
    from ranker.data.schema import SimulationRun

    with db.session_scope(untrained) as s:
        now = serve_now(s)
        s.add(SimulationRun(status="failed", unfinished=True, seed=5, days=2, requests_per_day=40, k=10,
                            params={"refit_base": False, "new_items_per_day": 0.0}, start_clock=now, day=0,
                            request=17, new_items=0, lease=1, actor="cli", started_at=now, updated_at=now))
    at = open_page("metrics_ab")
    assert any("simulation run 1 (failed): seed 5, 40 requests a day, day 1 of 2" in w for w in texts(at, "warning"))
    radio = [r for r in at.radio if r.label == "Unfinished run"][0]
    assert radio.value == "resume"
    radio.set_value("discard").run()
    button(at, "Run simulation").click().run()
    job = jobs.recent(untrained, kind="simulate", limit=1)[0]
    try:
        assert job.params == {"days": 3, "requests_per_day": 300, "seed": 0, "unfinished": "discard"}
    finally:
        if job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_do_no_harm_hold_is_one_sentence_on_the_overview_and_models_pages(demo):
    from ranker.data.db import put_setting, session_scope

    reason = ("serving the base order: v1 is significantly worse than the base order on the holdout: NDCG@10 "
              "0.4000 against 0.5000")
    with session_scope(demo) as s:
        put_setting(s, keys.BASE_ORDER_HOLD, {"reason": reason})
    for page in ("overview", "models"):
        at = open_page(page)
        assert not at.exception
        said = [e for e in texts(at, "error") if "serves the **base order**" in e or "serves the base order" in e]
        assert len(said) == 1 and "v1 is significantly worse than the base order" in said[0], (page, said)


def _base_reversing_checkpoint(path: Path) -> Path:
    """A model that scores 1 − model_score: the base order upside down."""
    import torch

    from ranker.rank.features import feature_names
    from ranker.rank.model import RankerMLP
    from ranker.rank.spec import linear_layers

    model = RankerMLP(4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        (l1, l2, l3) = [name for name, _ in model.named_parameters() if name.endswith("weight")]
        params = dict(model.named_parameters())
        params[l1][0, feature_names().index("model_score")] = -1.0
        params[l1.replace("weight", "bias")][0] = 1.0
        params[l2][0, 0] = 1.0
        params[l3][0, 0] = 1.0
    assert len(linear_layers(model.state_dict())) == 3
    registry.save_checkpoint(path, model, {"feature_names": feature_names(), "input_dim": 4,
                                           "arch": {"hidden_dim1": 32, "hidden_dim2": 16, "dropout": 0.2}})
    return path


def _holdout_where_the_base_order_is_right(path: Path) -> Path:
    from ranker.rank.features import feature_columns

    rows = []
    for i in range(40):
        for pos, score in enumerate((0.9, 0.5, 0.1)):
            rows.append([i, i * 3 + pos, score, 0.5, 0.5, 0.5, int(pos == 0), f"l{i}",
                         f"2025-01-01T{i % 24:02d}:00:00"])
    pd.DataFrame(rows, columns=["user_id", "item_id", *feature_columns(), "label", "group_id", "event_time"]
                 ).to_csv(path, index=False)
    return path


def test_the_models_page_shows_a_version_against_the_base_order_and_asks_before_activating_a_harmful_one(
        demo, tmp_path):
    from ranker.data.db import put_setting, session_scope

    holdout = _holdout_where_the_base_order_is_right(tmp_path / "holdout.csv")
    with session_scope(demo) as s:
        put_setting(s, keys.LAST_DATASET, {"holdout_path": str(holdout)})
    bad = registry.register(demo, _base_reversing_checkpoint(tmp_path / "bad.pth"))
    at = open_page("models")
    at.selectbox[0].set_value(bad).run()
    warned = [w for w in texts(at, "warning") if w.startswith("Do no harm:")]
    assert len(warned) == 1 and f"{bad} is significantly worse than the base order" in warned[0]
    button(at, "Activate").click().run()
    assert any("Nothing changed" in e for e in texts(at, "error"))
    assert registry.active_version(demo) == "v1"
    at.checkbox[0].check().run()
    button(at, "Activate").click().run()
    assert registry.active_version(demo) == bad
