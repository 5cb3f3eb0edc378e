"""`ranker serve` as a real process: called over HTTP with httpx, stopped with SIGTERM, and
run with four workers on PostgreSQL under concurrent load."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from ranker import config
from ranker.data.db import make_engine
from ranker.data.schema import Impression, Outcome, ServedList, User
from tests.conftest import free_port, metric_value, ranker_env, stop_server, wait_until_ready

STARTUP_TIMEOUT_S = 90

pytestmark = pytest.mark.slow  # real server processes


@contextmanager
def running_server(env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ranker", "serve", "--port", str(port), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, STARTUP_TIMEOUT_S)
        yield base, proc
    finally:
        stop_server(proc)


def _user_ids(engine, role: str = "developer") -> list[int]:
    with engine.connect() as conn:
        return [int(u) for u in conn.execute(select(User.id).where(User.role == role).order_by(User.id)).scalars()]


def _register_copy_of_v1(url: str, models: Path) -> None:
    code = ("from ranker.rank import registry; from ranker.data.db import get_engine; "
            "registry.register(get_engine(), registry.versions_dir() / 'v1.pth')")
    subprocess.run([sys.executable, "-c", code], env=ranker_env(url, models), check=True, capture_output=True,
                   timeout=120)


def _parent(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _consistent(engine) -> tuple[int, int]:
    """(served lists, impressions) served since the world was built (its legacy lists aside); asserts
    every list has exactly its k impressions."""
    with engine.connect() as conn:
        lists = conn.execute(select(func.count(), func.coalesce(func.sum(ServedList.k), 0))
                             .select_from(ServedList).where(ServedList.arm != config.LEGACY)).one()
        impressions = conn.execute(select(func.count()).select_from(Impression)
                                   .where(Impression.arm != config.LEGACY)).scalar_one()
    assert impressions == lists[1], "a served list without all its impressions (a partial write)"
    return int(lists[0]), int(impressions)


def test_ranker_serve_answers_over_http_and_stops_gracefully_on_sigterm(trained_world, tmp_path):
    shutil.copy(trained_world["db"], tmp_path / "world.db")
    shutil.copytree(trained_world["models"], tmp_path / "models")
    url = f"sqlite:///{tmp_path / 'world.db'}"
    engine = make_engine(url)
    users = _user_ids(engine)

    with running_server(ranker_env(url, tmp_path / "models")) as (base, proc):
        body = httpx.post(f"{base}/v1/recommend", json={"user_id": users[0], "flow": "developer-startup"}).json()
        assert body["model_version"] in ("v1", "base") and len(body["items"]) == 10
        r = httpx.post(f"{base}/v1/feedback", json={"events": [
            {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"], "type": "click"}]})
        assert r.json()["stored"] == 1
        assert httpx.get(f"{base}/v1/model").json()["active_version"] == "v1"
        assert "ranker_http_requests_total" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "Ranker"
        # a version activated from the CLI is what the server's next request is served with
        _register_copy_of_v1(url, tmp_path / "models")
        subprocess.run([sys.executable, "-m", "ranker", "models", "activate", "v2"], check=True, capture_output=True,
                       env=ranker_env(url, tmp_path / "models"), timeout=120)
        model = httpx.get(f"{base}/v1/model").json()
        assert (model["active_version"], model["serving"], model["history"][0]["version"]) == ("v2", "v2", "v2")
        with engine.connect() as conn:  # the dashboard finds the running server here
            recorded = conn.execute(text("SELECT value FROM settings WHERE key = 'api_server'")).scalar_one()
        assert str(base.rsplit(":", 1)[1]) in str(recorded)

        # SIGTERM while requests are in flight: each answered request is whole, none gets a 5xx
        statuses: list[int] = []
        errors: list[str] = []

        def client(uid: int) -> None:
            with httpx.Client(timeout=30) as c:
                for _ in range(50):
                    try:
                        statuses.append(c.post(f"{base}/v1/recommend",
                                               json={"user_id": uid, "flow": "developer-startup"}).status_code)
                    except httpx.TransportError as exc:  # refused once the server stops accepting
                        errors.append(type(exc).__name__)
                        return

        threads = [threading.Thread(target=client, args=(u,)) for u in users[:6]]
        for t in threads:
            t.start()
        while len(statuses) < 10:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert proc.wait(timeout=40) == 0
        output = proc.stdout.read()

    assert statuses and set(statuses) == {200}, output
    lists, _ = _consistent(engine)
    assert lists == len(statuses) + 1  # every answered request is logged, and nothing else
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Outcome)).scalar_one() >= 1
        cleared = conn.execute(text("SELECT value FROM settings WHERE key = 'api_server'")).scalar_one()
    assert "null" in str(cleared).lower() or "None" in str(cleared)
    assert "Traceback" not in output
    engine.dispose()


def test_serve_refuses_to_listen_openly_without_keys(tmp_path):
    env = ranker_env(f"sqlite:///{tmp_path / 'w.db'}", tmp_path / "models")
    r = subprocess.run([sys.executable, "-m", "ranker", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "RANKER_API_KEYS" in r.stderr and "Traceback" not in r.stderr


def test_serve_says_when_the_port_is_taken(tmp_path):
    env = ranker_env(f"sqlite:///{tmp_path / 'w.db'}", tmp_path / "models")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "ranker", "serve", "--port", str(port)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr


# --- PostgreSQL, four workers ------------------------------------------------------------------------


@pytest.mark.postgres
def test_four_workers_on_postgres_lose_and_duplicate_no_rows(pg_world, trained_world):
    import asyncio

    url, models = pg_world
    engine = make_engine(url)
    users = _user_ids(engine)[:16]
    requests_per_client = 15

    async def load(base: str) -> tuple[list[dict], list[dict]]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            async def one_client(uid: int) -> list[dict]:
                served = []
                for _ in range(requests_per_client):
                    r = await c.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": 5})
                    assert r.status_code == 200, r.text
                    served.append(r.json())
                return served

            lists = [b for chunk in await asyncio.gather(*(one_client(u) for u in users)) for b in chunk]
            # every click twice, from two clients at once: stored once each
            events = [{"request_id": b["request_id"], "item_id": b["items"][0]["item_id"], "type": "click"}
                      for b in lists]
            batches = [events[i:i + 20] for i in range(0, len(events), 20)]
            answers = await asyncio.gather(*(c.post("/v1/feedback", json={"events": b}) for b in batches + batches))
            return lists, [a.json() for a in answers]

    with running_server(ranker_env(url, models), "--workers", "4") as (base, _proc):
        workers = [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == _proc.pid]
        assert len(workers) >= 4
        lists, answers = asyncio.run(load(base))
        merged = httpx.get(f"{base}/metrics").text  # one worker answers with every worker's samples
        assert metric_value(merged, "ranker_http_requests_total", endpoint="/v1/recommend",
                            status="200") == len(lists)

        # activation from the CLI: every worker serves the new model from its next request on
        code = ("import sys; from ranker.rank import registry; from ranker.data.db import get_engine; "
                "registry.register(get_engine(), sys.argv[1])")
        env = ranker_env(url, models)
        subprocess.run([sys.executable, "-c", code, str(trained_world["models"] / "versions" / "v1.pth")], env=env,
                       check=True, capture_output=True, timeout=120)
        subprocess.run([sys.executable, "-m", "ranker", "models", "activate", "v1"], env=env, check=True,
                       capture_output=True, timeout=120)
        with httpx.Client(base_url=base) as c:
            serving = {c.get("/v1/model", headers={"Connection": "close"}).json()["serving"] for _ in range(24)}
        assert serving == {"v1"}

        # an item created with its own id over HTTP does not block later inserts that take the next id
        assert httpx.put(f"{base}/v1/items/50000", json={"item_type": "startup", "category": "a", "field": "b",
                                                          "type": "c"}).status_code == 201
    from ranker.data.db import session_scope
    from ranker.data.schema import Item

    with session_scope(engine) as s:
        later = Item(item_type="startup", name="later", category="a", field="b", type="c",
                     created_at=datetime(2026, 1, 1), updated_at=datetime(2026, 1, 1))
        s.add(later)
        s.flush()
        assert later.id > 50000

    n_lists, impressions = _consistent(engine)
    assert n_lists == len(lists) == len(users) * requests_per_client
    assert impressions == sum(len(b["items"]) for b in lists)
    assert len({b["request_id"] for b in lists}) == len(lists)
    assert sum(a["stored"] for a in answers) == len(lists)
    assert sum(a["duplicates"] for a in answers) == len(lists)
    with engine.connect() as conn:
        clicks = conn.execute(select(func.count()).select_from(Outcome).join(Impression)
                              .where(Outcome.kind == "click", Impression.arm != config.LEGACY)).scalar_one()
    assert clicks == len(lists)
    engine.dispose()
