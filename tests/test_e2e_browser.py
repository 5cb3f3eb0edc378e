"""The dashboard end to end: `streamlit run dashboard/app.py` driven in headless Chromium.

The server runs on a private copy of the trained small demo world. Screenshots of
every page go to ``$RANKER_SCREENSHOTS`` (default: ``ranker-screenshots`` in the system's
temporary folder), outside the repository, for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.common import PAGES
from ranker.data.db import make_engine
from ranker.ops import jobs
from ranker.rank import registry
from ranker.serving.service import recommend

playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("RANKER_SCREENSHOTS", Path(tempfile.gettempdir()) / "ranker-screenshots"))
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOADED = '[data-testid="stApp"][data-test-script-state="notRunning"]'
ERROR_BOXES = '[data-testid="stException"], [data-testid="stAlertContentError"]'
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (Debian: apt-get install chromium)"),
]


# --- Server and browser -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(trained_world, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """A private copy of the trained small world (active model v1, a dataset, no traffic), with this
    process's ``ranker`` pointed at it too, to compute what the pages should show."""
    from ranker import config
    from ranker.base import store
    from ranker.serving.service import _SERVICES

    root = tmp_path_factory.mktemp("e2e")
    with sqlite3.connect(trained_world["db"]) as src, sqlite3.connect(root / "world.db") as dst:
        src.backup(dst)
    shutil.copytree(trained_world["data"], root / "data")
    shutil.copytree(trained_world["models"], root / "models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "DATA_DIR", root / "data")
        mp.setattr(config, "MODELS_DIR", root / "models")
        store.clear_cache()
        _SERVICES.clear()
        engine = make_engine(f"sqlite:///{root / 'world.db'}")
        yield {"db": root / "world.db", "data": root / "data", "models": root / "models", "root": root,
               "engine": engine}
        engine.dispose()
        store.clear_cache()
        _SERVICES.clear()


@pytest.fixture(scope="module")
def server(world) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on a free port; its URL. Always stopped, with any job it started."""
    port = _free_port()
    url = f"sqlite:///{world['db']}"
    env = {**os.environ, "RANKER_DATABASE_URL": url, "RANKER_DATA_DIR": str(world["data"]),
           "RANKER_MODELS_DIR": str(world["models"])}
    log = open(world["root"] / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {(world['root'] / 'streamlit.log').read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        engine = make_engine(url)
        for job in jobs.recent(engine, limit=50):  # workers run in sessions of their own
            if job.status in jobs.ACTIVE and job.pid:
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def wait_for_app(page) -> None:
    """Wait until the script run is over, as Streamlit's own e2e tests do."""
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]', state="attached")
    page.wait_for_selector(LOADED, state="attached")
    page.wait_for_timeout(300)
    page.wait_for_selector(LOADED, state="attached")


def open_page(page, server: str, name: str) -> None:
    page.goto(f"{server}/{'' if name == 'overview' else name}")
    wait_for_app(page)


def screenshot(page, name: str) -> None:
    """The whole page (the main area scrolls inside the window, so grow the window to fit it first)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=stMain] *')]"
                           ".slice(0, 1).map(e => e.scrollHeight), 1000)")
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 100, 8000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def no_error_boxes(page) -> list[str]:
    return page.locator(ERROR_BOXES).all_inner_texts()


def column(page, table: int, name: str) -> list[str]:
    """The cells of column ``name`` in the ``table``-th st.dataframe (a canvas grid with accessible rows;
    only the columns in view are in the page, so keep ``name`` among the first ones)."""
    rows = page.locator('[data-testid="stDataFrame"]').nth(table).locator('[role="row"]')
    deadline = time.monotonic() + WAIT_MS / 1000
    while name not in (header := rows.first.locator('[role="columnheader"]').all_inner_texts()):
        assert time.monotonic() < deadline, f"no column {name!r} in table {table}; columns in view: {header}"
        page.wait_for_timeout(200)  # the grid draws after the script run ends
    at = header.index(name)
    return [rows.nth(r).locator('[role="gridcell"]').nth(at).inner_text() for r in range(1, rows.count())]


# --- Tests ----------------------------------------------------------------------------------


def test_every_page_opens_from_the_navigation_without_an_error_box(page, server):
    open_page(page, server, "overview")
    for name, (title, _icon) in PAGES.items():
        page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
        page.wait_for_url(f"{server}/{'' if name == 'overview' else name}")
        wait_for_app(page)
        playwright.expect(page.locator("h1").first).to_have_text(title)
        screenshot(page, name)
        assert no_error_boxes(page) == [], f"{title}: {no_error_boxes(page)}"


def test_train_button_runs_a_job_and_the_new_version_appears(page, server, world):
    engine = world["engine"]
    before = [v.version for v in registry.list_versions(engine)]
    open_page(page, server, "data_training")
    page.get_by_label("Epochs").fill("3")
    page.get_by_label("Epochs").press("Tab")
    page.get_by_role("button", name="Train", exact=True).click()

    new = f"v{len(before) + 1}"
    playwright.expect(page.get_by_text(f"Result: {new}")).to_be_visible(timeout=90_000)
    playwright.expect(page.get_by_text("succeeded", exact=False).first).to_be_visible()
    wait_for_app(page)
    screenshot(page, "data_training_after_train")
    assert no_error_boxes(page) == []
    assert [v.version for v in registry.list_versions(engine)] == [*before, new]


def test_moving_a_weight_slider_changes_the_reranked_example(page, server):
    open_page(page, server, "rule_weights")
    saved, these = column(page, 0, "id (saved)"), column(page, 0, "id (these weights)")
    assert len(saved) == 10 and these == saved and set(column(page, 0, "move")) == {"="}
    ndcg = page.locator('[data-testid="stMetricValue"]').first.inner_text()

    thumb = page.locator('[data-testid="stSlider"]').first.get_by_role("slider")
    thumb.focus()
    thumb.press("Home")  # model_score 0.5 → 0.0
    playwright.expect(thumb).to_have_attribute("aria-valuetext", "0.00")
    playwright.expect(page.locator('[data-testid="stMetricValue"]').first).not_to_have_text(ndcg)
    wait_for_app(page)

    assert column(page, 0, "id (saved)") == saved
    assert column(page, 0, "id (these weights)") != saved
    assert set(column(page, 0, "move")) != {"="}
    screenshot(page, "rule_weights_moved")
    assert no_error_boxes(page) == []


def test_choosing_a_user_shows_base_and_reranked_lists_side_by_side(page, server, world):
    open_page(page, server, "ranking_preview")
    picker = page.locator('[data-testid="stSelectbox"]').nth(1).get_by_role("combobox")
    default = picker.input_value()
    picker.click()
    page.keyboard.type("developer-00031")
    page.keyboard.press("Enter")
    playwright.expect(picker).to_have_value(re.compile(r"^31 · developer-00031 "))
    wait_for_app(page)
    assert not default.startswith("31 ·")

    tables = page.locator('[data-testid="stDataFrame"]')
    left, right = tables.nth(0).bounding_box(), tables.nth(1).bounding_box()
    assert abs(left["y"] - right["y"]) < 2 and right["x"] >= left["x"] + left["width"]  # side by side
    control = recommend(31, "developer-startup", engine=world["engine"], arm="control", log=False)
    treatment = recommend(31, "developer-startup", engine=world["engine"], arm="treatment", log=False)
    assert column(page, 0, "id") == [str(i) for i in control.item_ids]
    assert column(page, 1, "id") == [str(i) for i in treatment.item_ids]
    screenshot(page, "ranking_preview_user_31")
    assert no_error_boxes(page) == []


def test_simulated_traffic_from_the_metrics_page_fills_its_charts_and_verdict(page, server):
    open_page(page, server, "metrics_ab")
    for label, value in (("Days", "1"), ("Requests per day", "100")):
        page.get_by_label(label).fill(value)
        page.get_by_label(label).press("Tab")
    wait_for_app(page)
    page.get_by_role("button", name="Run simulation").click()

    # the world's legacy lists already fill the page: wait for the job itself, then its rerun
    playwright.expect(page.get_by_text(re.compile(r"Simulate job #\d+: succeeded"))).to_be_visible(timeout=120_000)
    playwright.expect(page.get_by_text("A/B verdict")).to_be_visible(timeout=30_000)
    wait_for_app(page)
    # lift, 5 over time, and served lists by source
    playwright.expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(7)
    screenshot(page, "metrics_ab_after_simulation")
    assert no_error_boxes(page) == []
    open_page(page, server, "overview")
    playwright.expect(page.get_by_text("CTR: treatment")).to_be_visible()
    screenshot(page, "overview_after_simulation")
    assert no_error_boxes(page) == []
