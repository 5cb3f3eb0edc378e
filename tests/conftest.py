"""Shared fixtures: small demo worlds on SQLite, and PostgreSQL when reachable."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ranker.data.db import make_engine

PG_URL_ENV = "RANKER_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parents[1]
#: What a test run may leave in the checkout: caches and the virtual environment.
ALLOWED_LEFTOVERS = (".venv/", ".pytest_cache/", ".ruff_cache/", ".hypothesis/", "ranker.egg-info/")


def untracked_paths() -> set[str] | None:
    """Untracked and ignored paths in the checkout, or None outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    paths = {line[3:] for line in out.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not p.startswith(ALLOWED_LEFTOVERS) and "__pycache__/" not in p}


BEFORE_KEY = pytest.StashKey[set[str] | None]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[BEFORE_KEY] = untracked_paths()


@pytest.fixture(autouse=True, scope="session")
def no_fit_cache() -> Iterator[None]:
    """Dataset builds fit their base models afresh unless a test turns the fit cache on
    (``ranker.base.fits``): the cache would otherwise land in ``models/`` of the checkout."""
    from ranker import config

    saved = config.FIT_CACHE, os.environ.get("RANKER_FIT_CACHE")
    config.FIT_CACHE, os.environ["RANKER_FIT_CACHE"] = False, "0"
    yield
    config.FIT_CACHE = saved[0]
    if saved[1] is None:
        os.environ.pop("RANKER_FIT_CACHE", None)
    else:
        os.environ["RANKER_FIT_CACHE"] = saved[1]


@pytest.fixture(autouse=True)
def guide_features_after_each_test() -> Iterator[None]:
    """The feature set is process state (serving follows the operator's setting): each test ends
    back on the default set, so a test that chose history features does not leak into the next."""
    yield
    from ranker import config
    from ranker.rank.features import use_feature_set

    use_feature_set(config.DEFAULT_FEATURE_SET)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The repository-clean check runs after every other test."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_repository_clean"))


def _pg_url() -> str | None:
    return os.environ.get(PG_URL_ENV)


def _pg_reachable(url: str) -> bool:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    try:
        with socket.create_connection((u.host or "127.0.0.1", u.port or 5432), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL test URL, or a visible skip explaining how to enable the tests."""
    url = _pg_url()
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_URL_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    if not _pg_reachable(url):
        pytest.skip(f"PostgreSQL at {url} is unreachable")
    return url


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo world (seed 42), built once per test session. Treat it as read-only;
    copy it with ``world_copy`` to mutate."""
    from ranker.sim.synth import build_world

    path = tmp_path_factory.mktemp("world") / "small.db"
    engine = make_engine(f"sqlite:///{path}")
    build_world(engine, seed=42, scale="small")
    engine.dispose()
    return path


@pytest.fixture
def world_copy(small_world: Path, tmp_path: Path) -> Iterator[Engine]:
    """A private, writable copy of the small world."""
    import sqlite3

    dst = tmp_path / "world.db"
    src = sqlite3.connect(small_world)
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    engine = make_engine(f"sqlite:///{dst}")
    yield engine
    engine.dispose()


@pytest.fixture
def small_world_engine(small_world: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{small_world}")
    yield engine
    engine.dispose()


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch) -> dict[str, Path]:
    """Point data/ and models/ at a temporary folder (and clear cached base models)."""
    from ranker import config
    from ranker.base import store

    dirs = {"data": tmp_path / "data", "models": tmp_path / "models"}
    monkeypatch.setattr(config, "DATA_DIR", dirs["data"])
    monkeypatch.setattr(config, "MODELS_DIR", dirs["models"])
    monkeypatch.setenv("RANKER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("RANKER_MODELS_DIR", str(dirs["models"]))
    store.clear_cache()
    yield dirs
    store.clear_cache()


@pytest.fixture(scope="session")
def trained_world(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small world plus fitted base models, a dataset and a trained, active ranker (built once)."""
    import shutil

    from ranker import config
    from ranker.base import store
    from ranker.ops.pipeline import train_and_register
    from ranker.rank.dataset import DatasetConfig, build_dataset
    from ranker.rank.train import TrainConfig

    root = tmp_path_factory.mktemp("trained")
    shutil.copy(small_world, root / "world.db")
    saved = (config.DATA_DIR, config.MODELS_DIR)
    config.DATA_DIR, config.MODELS_DIR = root / "data", root / "models"
    engine = make_engine(f"sqlite:///{root / 'world.db'}")
    try:
        store.clear_cache()
        store.fit_base_models(engine)
        cfg = DatasetConfig(output=root / "data" / "ranker_train.csv", val_output=root / "data" / "ranker_val.csv")
        build_dataset(engine, cfg)
        train_and_register(engine, cfg.output, TrainConfig(epochs=10, lr=0.003), val=cfg.val_output,
                           output_dir=root / "models", activate=True, min_positives=50)
    finally:
        engine.dispose()
        config.DATA_DIR, config.MODELS_DIR = saved
        store.clear_cache()
    return {"root": root, "db": root / "world.db", "data": root / "data", "models": root / "models"}


@pytest.fixture
def served(trained_world, tmp_path, monkeypatch) -> Iterator[Engine]:
    """A private copy of ``trained_world`` with config pointed at it; yields its engine."""
    import shutil

    from ranker import config
    from ranker.base import store
    from ranker.serving.service import _SERVICES

    shutil.copy(trained_world["db"], tmp_path / "world.db")
    shutil.copytree(trained_world["models"], tmp_path / "models")
    shutil.copytree(trained_world["data"], tmp_path / "data")
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(config, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RANKER_MODELS_DIR", str(tmp_path / "models"))
    url = f"sqlite:///{tmp_path / 'world.db'}"
    monkeypatch.setenv("RANKER_DATABASE_URL", url)
    store.clear_cache()
    _SERVICES.clear()
    engine = make_engine(url)
    yield engine
    engine.dispose()
    _SERVICES.clear()
    store.clear_cache()


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def ranker_env(url: str, models: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``ranker`` subprocess on ``url``, with models (and data beside them) in a
    folder of the test's own; no RANKER_* or PROMETHEUS_* setting of this process leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANKER_", "PROMETHEUS_"))}
    return {**env, "RANKER_DATABASE_URL": url, "RANKER_MODELS_DIR": str(models),
            "RANKER_DATA_DIR": str(models.parent / "data"), **extra}


@pytest.fixture
def pg_world(pg_url, tmp_path) -> Iterator[tuple[str, Path]]:
    """A small world with fitted base models in a database of its own on the PostgreSQL server."""
    import subprocess
    import sys

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"ranker_api_{os.getpid()}"
    admin = make_engine(pg_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    env = ranker_env(url, tmp_path / "models")
    for cmd in (["demo", "init", "--scale", "small"], ["base", "fit"]):
        subprocess.run([sys.executable, "-m", "ranker", *cmd], env=env, check=True, capture_output=True, timeout=300)
    try:
        yield url, tmp_path / "models"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(base: str, proc, timeout: float) -> None:
    """Poll ``{base}/readyz`` until it answers 200; fail if ``proc`` exits or ``timeout`` passes."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"ranker serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("ranker serve did not become ready")
        time.sleep(0.2)


def stop_server(proc) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL it after 40 s."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
