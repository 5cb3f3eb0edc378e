"""Many replicas: the model store every replica reads, and activation reaching a replica that
never had the file (in-process on SQLite; two `ranker serve` processes on PostgreSQL)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from ranker import config
from ranker.data.db import make_engine, upgrade
from ranker.data.schema import ModelFile, ModelVersion
from ranker.rank import registry
from ranker.rank.store import DatabaseStore, DirStore, ModelStoreError, UrlStore, open_store, sha256_hex
from tests.conftest import free_port, ranker_env, stop_server, wait_until_ready
from tests.test_api_server import _user_ids
from tests.test_registry import make_checkpoint

# --- One interface, every store ----------------------------------------------------------------


@pytest.fixture(params=["dir", "db", "url"])
def store(request, tmp_path):
    if request.param == "dir":
        yield DirStore(tmp_path / "shared")
    elif request.param == "db":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        upgrade(engine)
        yield DatabaseStore(engine)
        engine.dispose()
    else:
        yield UrlStore(f"file://{tmp_path / 'bucket' / 'ranker'}")


def test_every_store_round_trips_a_version_and_refuses_other_bytes(store):
    assert not store.exists("v1")
    with pytest.raises(ModelStoreError, match="has no v1"):
        store.get("v1")
    digest = store.put("v1", b"first bytes")
    assert digest == sha256_hex(b"first bytes") and store.exists("v1")
    assert store.get("v1", digest) == b"first bytes"
    with pytest.raises(ModelStoreError, match="other bytes than the registered v1"):
        store.get("v1", sha256_hex(b"something else"))
    store.put("v1", b"second bytes")  # a name reused after the world was wiped: the new bytes win
    assert store.get("v1", sha256_hex(b"second bytes")) == b"second bytes"
    assert not store.exists("v2")


def test_the_setting_picks_the_store_and_a_wrong_one_is_refused_in_one_line(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    assert open_store("", engine, tmp_path / "versions").root == tmp_path / "versions"
    assert open_store("dir:/srv/ranker/models", engine, tmp_path).root == Path("/srv/ranker/models")
    assert isinstance(open_store(" db ", engine, tmp_path), DatabaseStore)
    with pytest.raises(ModelStoreError) as err:
        open_store("nfs", engine, tmp_path)
    assert "RANKER_MODEL_STORE='nfs'" in str(err.value) and "dir:/" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


# --- Two machines in one process: each its own models folder -------------------------------------


@pytest.fixture
def machines(isolated_dirs, tmp_path, monkeypatch):
    """Two models folders, "a" and "b"; ``use(name)`` makes this process that machine."""
    folders = {"a": tmp_path / "a" / "models", "b": tmp_path / "b" / "models"}

    def use(name: str) -> Path:
        monkeypatch.setattr(config, "MODELS_DIR", folders[name])
        return folders[name]

    use("a")
    return use


def _row(engine, version: str) -> ModelVersion:
    with engine.connect() as conn:
        return conn.execute(select(ModelVersion).where(ModelVersion.version == version)).one()


@pytest.mark.parametrize("setting", ["db", "dir"])
def test_a_replica_without_the_file_serves_what_another_activates(machines, world_copy, monkeypatch, tmp_path,
                                                                   setting):
    monkeypatch.setattr(config, "MODEL_STORE", "db" if setting == "db" else f"dir:{tmp_path / 'shared'}")
    a = machines("a")
    v1 = registry.register(world_copy, make_checkpoint(a / "1.pth", seed=1), activate=True)
    b = machines("b")
    replica = registry.ActiveModel(engine=world_copy)
    assert not (b / "versions").exists()
    assert replica.get().version == v1
    assert sha256_hex((b / "versions" / f"{v1}.pth").read_bytes()) == _row(world_copy, v1).sha256

    a = machines("a")
    v2 = registry.register(world_copy, make_checkpoint(a / "2.pth", seed=2), activate=True)
    machines("b")
    assert replica.get().version == v2
    assert (b / "versions" / f"{v2}.pth").read_bytes() == (a / "versions" / f"{v2}.pth").read_bytes()
    registry.rollback(world_copy)
    assert replica.get().version == v1  # back to the cached file


@pytest.mark.parametrize("damage", ["bytes changed", "not a checkpoint, hashes rewritten"])
def test_bad_bytes_in_the_store_are_refused_and_the_replica_keeps_its_model(machines, world_copy, monkeypatch,
                                                                             caplog, damage):
    monkeypatch.setattr(config, "MODEL_STORE", "db")
    a = machines("a")
    v1 = registry.register(world_copy, make_checkpoint(a / "1.pth", seed=1), activate=True)
    b = machines("b")
    replica = registry.ActiveModel(engine=world_copy)
    assert replica.get().version == v1

    machines("a")
    v2 = registry.register(world_copy, make_checkpoint(a / "2.pth", seed=2), activate=True)
    garbage = b"\x00 not a checkpoint " * 50
    with world_copy.begin() as conn:  # the store's copy goes bad after the activation
        if damage == "bytes changed":
            conn.execute(update(ModelFile).where(ModelFile.version == v2).values(data=garbage))
        else:
            conn.execute(update(ModelFile).where(ModelFile.version == v2)
                         .values(data=garbage, sha256=sha256_hex(garbage)))
            conn.execute(update(ModelVersion).where(ModelVersion.version == v2).values(sha256=sha256_hex(garbage)))
    machines("b")
    caplog.set_level(logging.WARNING)
    assert replica.get().version == v1
    assert f"still serving {v1}" in caplog.text
    if damage == "bytes changed":
        assert "SHA-256" in caplog.text
    else:  # bytes the hashes agree on still pass the checkpoint validation
        assert "not a readable ranker checkpoint" in caplog.text
    assert not (b / "versions" / f"{v2}.pth").exists()  # refused bytes are not kept as the cache

    fresh = registry.ActiveModel(engine=world_copy)  # a replica starting now has no model to keep
    assert fresh.get() is None and "active model rejected" in fresh.reason


def test_a_stale_cached_file_of_the_same_name_is_replaced_from_the_store(machines, world_copy, monkeypatch):
    monkeypatch.setattr(config, "MODEL_STORE", "db")
    b = machines("b")
    make_checkpoint(b / "versions" / "v1.pth", seed=9, version="v1")  # left by another world's v1
    a = machines("a")
    v1 = registry.register(world_copy, make_checkpoint(a / "1.pth", seed=1), activate=True)
    assert v1 == "v1"
    machines("b")
    assert registry.ActiveModel(engine=world_copy).get().version == "v1"
    assert (b / "versions" / "v1.pth").read_bytes() == (a / "versions" / "v1.pth").read_bytes()


def test_activating_puts_a_version_registered_before_the_store_into_it(machines, world_copy, monkeypatch):
    a = machines("a")
    v1 = registry.register(world_copy, make_checkpoint(a / "1.pth", seed=1))  # the local folder only
    with world_copy.begin() as conn:  # as registered before migration 0008
        conn.execute(update(ModelVersion).values(sha256=None))
    monkeypatch.setattr(config, "MODEL_STORE", "db")
    assert not DatabaseStore(world_copy).exists(v1)
    registry.activate_version(world_copy, v1)
    assert _row(world_copy, v1).sha256 == sha256_hex((a / "versions" / f"{v1}.pth").read_bytes())
    machines("b")
    assert registry.ActiveModel(engine=world_copy).get().version == v1


# --- Two `ranker serve` processes on one PostgreSQL ------------------------------------------------

POLL_TIMEOUT_S = 30  # generous: activation reaches a replica from its next request (see docs/scaling.md)
STARTUP_TIMEOUT_S = 90


@contextmanager
def running_servers(*envs: dict[str, str]) -> Iterator[list[str]]:
    """``ranker serve`` once per environment, started together; yields their base URLs."""
    procs, bases = [], []
    try:
        for env in envs:
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "ranker", "serve", "--port", str(port)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            bases.append(f"http://127.0.0.1:{port}")
        for base, proc in zip(bases, procs):
            wait_until_ready(base, proc, STARTUP_TIMEOUT_S)
        yield bases
    finally:
        for proc in procs:  # SIGTERM to all first: they shut down side by side
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            stop_server(proc)


def _served_version(base: str, body: dict) -> str:
    r = httpx.post(f"{base}/v1/recommend", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["model_version"].split("+")[0]


def _poll_until(base: str, body: dict, version: str) -> str:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    served = _served_version(base, body)
    while served != version and time.monotonic() < deadline:
        time.sleep(0.05)
        served = _served_version(base, body)
    return served


@pytest.mark.slow
@pytest.mark.postgres
def test_a_version_activated_through_one_server_is_served_by_the_other(pg_world, trained_world, tmp_path,
                                                                      monkeypatch):
    url, models_a = pg_world
    models_b = tmp_path / "b" / "models"
    shutil.copytree(models_a / "base", models_b / "base")  # base models are fitted on each machine
    engine = make_engine(url)
    developers = [{"user_id": uid, "flow": "developer-startup", "k": 5} for uid in _user_ids(engine)]
    monkeypatch.setattr(config, "MODELS_DIR", models_a)  # this process registers and activates as machine a
    monkeypatch.setattr(config, "MODEL_STORE", "db")
    envs = [ranker_env(url, models, RANKER_MODEL_STORE="db") for models in (models_a, models_b)]
    with running_servers(*envs) as (base_a, base_b):
        treated = next(u for u in developers if _served_version(base_b, u) == "rule")  # control gets "base"
        for expected in ("v1", "v2"):
            version = registry.register(engine, trained_world["models"] / "versions" / "v1.pth", activate=True)
            assert version == expected
            assert _poll_until(base_b, treated, expected) == expected
            assert _served_version(base_a, treated) == expected
            assert httpx.get(f"{base_b}/v1/model").json()["serving"].split("+")[0] == expected
        with engine.connect() as conn:
            stored = dict(conn.execute(select(ModelFile.version, ModelFile.sha256)).all())
            recorded = dict(conn.execute(select(ModelVersion.version, ModelVersion.sha256)).all())
    engine.dispose()
    assert stored == recorded and set(stored) == {"v1", "v2"}
    fetched = models_b / "versions" / "v2.pth"  # b registered nothing: its copy came from the database
    assert sha256_hex(fetched.read_bytes()) == recorded["v2"]
