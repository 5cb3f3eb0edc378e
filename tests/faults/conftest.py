"""Harness of the fault-injection suite: worlds on SQLite and PostgreSQL, ``ranker`` run as real
processes, and the checks made after a fault.

A *world* is a folder a ``ranker`` process runs in, with ``models/`` and ``data/`` under it
(relative paths, so that a copy of the folder is a whole world), and a database: the SQLite
file ``world.db`` beside them, or a PostgreSQL database of its own made from a template. Every
world starts as :func:`fault_world`: the small demo world with fitted base models, a training
CSV, version v1 active and v2 registered.

A :class:`Snapshot` is what a world holds: the row count of every table and a fingerprint of
every file a reader would open under ``models/`` and ``data/`` (a file whose name starts with a
dot is a temporary file no reader looks for).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from ranker import config
from ranker.data.db import make_engine
from ranker.data.schema import Base, Impression, ModelVersion, ServedList, User
from tests.conftest import free_port, ranker_env, stop_server, wait_until_ready
from tests.test_import import ITEMS, USERS, write_ml100k

COMMAND_TIMEOUT_S = 300
STARTUP_TIMEOUT_S = 90
#: Ratings in the import's input: with the likes they add, more interactions than one insert batch
#: (ranker.data.importing.writer.INSERT_BATCH, 20,000) holds.
IMPORT_RATINGS = 16_000


# --- Worlds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A folder and a database that ``ranker`` commands run on."""

    root: Path
    url: str

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    def env(self, fault: str | None = None) -> dict[str, str]:
        """The environment of a ``ranker`` process in this world; ``fault`` sets ``RANKER_FAULT``."""
        return ranker_env(self.url, Path("models"), **({"RANKER_FAULT": fault} if fault else {}))

    def start(self, args: list[str], fault: str | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ranker", *args], cwd=self.root, env=self.env(fault),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def run(self, args: list[str], fault: str | None = None) -> Run:
        """Run ``ranker ARGS`` to its end; returns its exit status and output."""
        proc = self.start(args, fault)
        try:
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return Run(None, f"ranker {' '.join(args)} did not end within {COMMAND_TIMEOUT_S} s:\n{out}")
        return Run(proc.returncode, out)

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        engine = make_engine(self.url)
        try:
            yield engine
        finally:
            engine.dispose()


@dataclass
class Run:
    """How a command (or a server's life) ended: its exit status, its output, what a retry needs,
    and the world just before the step that can crash when the run committed other work first."""

    returncode: int | None
    output: str
    retry: dict[str, Any] = field(default_factory=dict)
    before_step: Snapshot | None = None


def _copy_sqlite(src: Path, dst: Path) -> None:
    """Copy a SQLite database with the backup API (a consistent copy, WAL included)."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def _copy_files(src: Path, dst: Path) -> None:
    for name in ("models", "data"):
        shutil.copytree(src / name, dst / name)


@pytest.fixture(scope="session")
def fault_world(trained_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every world of the suite is copied from (read-only): ``trained_world`` (v1 active)
    plus v2 to activate (v1's weights scaled by 0.9, so the served file tells them apart), with the
    registry's paths made relative, and the training CSV also as Parquet (``data/ranker_train.parquet``)."""
    from ranker.base import store
    from ranker.data.files import atomic_write_bytes
    from ranker.rank import registry
    from ranker.rank.dataset_columnar import _read_built_csv, _write_parquet_frame

    root = tmp_path_factory.mktemp("fault_world")
    _copy_sqlite(trained_world["db"], root / "world.db")
    _copy_files(trained_world["root"], root)
    saved = config.MODELS_DIR
    config.MODELS_DIR = root / "models"
    engine = make_engine(f"sqlite:///{root / 'world.db'}")
    try:
        v1 = registry.load_checkpoint(registry.versions_dir() / "v1.pth")
        v2 = registry.Checkpoint({k: v * 0.9 for k, v in v1.state_dict.items()}, v1.meta)
        atomic_write_bytes(root / "v2.pth", v2.to_bytes())
        registry.register(engine, root / "v2.pth")
        data = root / "data"
        _write_parquet_frame(_read_built_csv(data / "ranker_train.csv"), data / "ranker_train.parquet")
        with engine.begin() as conn:  # the registry's layout, relative to the world's folder
            conn.execute(ModelVersion.__table__.update().values(
                path="models/versions/" + ModelVersion.version + ".pth"))
    finally:
        engine.dispose()
        config.MODELS_DIR = saved
        store.clear_cache()
    return root


@pytest.fixture(scope="session")
def fault_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input files the commands read: an ml-100k folder (``ml-100k/``) of :data:`IMPORT_RATINGS`
    ratings by the three users of tests/test_import.py and 300 more, of its four items and 400 more."""
    folder = tmp_path_factory.mktemp("fault_inputs")
    rng = np.random.default_rng(0)
    users = USERS + [(u, 30, "F", "writer", "10001") for u in range(4, 304)]
    items = ITEMS + [(i, f"Film {i} (1990)", "01-Jan-1990", [8]) for i in range(5, 405)]
    pairs = rng.choice(len(users) * len(items), size=IMPORT_RATINGS, replace=False)
    ratings = [(int(p // len(items)) + 1, int(p % len(items)) + 1, int(rng.integers(1, 6)), 881_250_949 + n)
               for n, p in enumerate(pairs)]
    write_ml100k(folder / "ml-100k", ratings, items, users)
    return folder


def _sqlite_world(src: Path, dst: Path) -> World:
    dst.mkdir(parents=True, exist_ok=True)
    _copy_sqlite(src / "world.db", dst / "world.db")
    _copy_files(src, dst)
    return World(dst, f"sqlite:///{dst / 'world.db'}")


def _pg_template(pg_url: str, src: Path, name: str) -> None:
    """Make database ``name`` on the server of ``pg_url`` hold the rows of the SQLite world in
    ``src`` (copied table by table), with amcheck installed: the template of PostgreSQL worlds."""
    from ranker.data.db import ensure_schema

    _drop_database(pg_url, name)
    with _admin(pg_url) as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    a, b = make_engine(f"sqlite:///{src / 'world.db'}"), ensure_schema(make_engine(_database_url(pg_url, name)))
    try:
        with a.connect() as read, b.begin() as write:
            for table in Base.metadata.sorted_tables:
                rows = [dict(r._mapping) for r in read.execute(select(table))]
                if rows:
                    write.execute(table.insert(), rows)
                if "id" in table.c:
                    write.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                       f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
            write.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
    finally:
        a.dispose()
        b.dispose()


def _pg_world(pg_url: str, template: str, name: str, src: Path, dst: Path) -> World:
    with _admin(pg_url) as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    dst.mkdir(parents=True, exist_ok=True)
    _copy_files(src, dst)
    return World(dst, _database_url(pg_url, name))


@contextmanager
def _admin(pg_url: str) -> Iterator[Any]:
    engine = make_engine(pg_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _drop_database(pg_url: str, name: str) -> None:
    with _admin(pg_url) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _database_url(pg_url: str, name: str) -> str:
    return make_url(pg_url).set(database=name).render_as_string(hide_password=False)


# --- What a world holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Row counts per table, fingerprints per readable file (relative path -> fingerprint) and the
    version the registry marks active."""

    counts: dict[str, int]
    files: dict[str, str]
    active: tuple[str, ...]


def fingerprint(path: Path) -> str:
    """What ``path`` holds: a checkpoint by its weights and a fitted base model by its arrays (their
    meta carries times), any other file by its bytes. A checkpoint or base model that does not load
    is ``unreadable`` with the reason."""
    if path.suffix == ".npz" and "base" in path.parts:
        from ranker.base.base import BaseRecommender

        try:
            arrays = BaseRecommender.load(path)._arrays()
        except Exception as exc:  # noqa: BLE001 - the reason is the fingerprint
            return f"unreadable: {exc}"
        h = hashlib.sha256()
        for name in sorted(arrays):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arrays[name]).tobytes())
        return "arrays:" + h.hexdigest()[:16]
    if path.suffix == ".pth":
        from ranker.rank.registry import load_checkpoint

        try:
            state = load_checkpoint(path).state_dict
        except Exception as exc:  # noqa: BLE001 - the reason is the fingerprint
            return f"unreadable: {exc}"
        h = hashlib.sha256()
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].numpy().tobytes())
        return "weights:" + h.hexdigest()[:16]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def readable_files(root: Path) -> list[Path]:
    """Files under ``models/`` and ``data/`` that a reader opens by name (not dot-named temporaries)."""
    return sorted(p for d in ("models", "data") for p in (root / d).rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def snapshot(world: World) -> Snapshot:
    with world.engine() as engine, engine.connect() as conn:
        counts = {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                  for t in Base.metadata.sorted_tables}
        active = tuple(conn.execute(select(ModelVersion.version).where(ModelVersion.is_active)).scalars())
    files = {}
    for p in readable_files(world.root):
        name = str(p.relative_to(world.root))
        if p.parent.name == "fits" and p.suffix == ".npz":  # the fit cache (ranker.base.fits)
            # an entry's name ends in a hash of the data as the driver returned it, which differs between
            # SQLite and PostgreSQL, and any readable entry is as good as another: readable is what counts
            name, print_ = name.rsplit("-", 1)[0], fingerprint(p)
            files[name] = print_ if print_.startswith("unreadable") else "a readable fit"
        else:
            files[name] = fingerprint(p)
    return Snapshot(counts, files, active)


def integrity_problems(world: World) -> list[str]:
    """What is wrong with the database: SQLite's integrity and foreign-key checks, or PostgreSQL's
    amcheck over every table and B-tree index; and a served list without all its impressions."""
    problems: list[str] = []
    with world.engine() as engine, engine.connect() as conn:
        if world.backend == "sqlite":
            result = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
            if result != ["ok"]:
                problems.append(f"PRAGMA integrity_check: {result[:5]}")
            problems += [f"foreign key: {tuple(r)}" for r in conn.exec_driver_sql("PRAGMA foreign_key_check")]
        else:
            heap = conn.execute(text(
                "SELECT c.relname, v.msg FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, "
                "LATERAL verify_heapam(c.oid) v WHERE n.nspname = 'public' AND c.relkind = 'r'")).all()
            problems += [f"heap {name}: {msg}" for name, msg in heap]
            conn.execute(text(
                "SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_am am ON am.oid = c.relam WHERE n.nspname = 'public' AND c.relkind = 'i' "
                "AND am.amname = 'btree'")).all()  # raises on a corrupt index
        k, impressions = conn.execute(select(func.coalesce(func.sum(ServedList.k), 0))).scalar_one(), \
            conn.execute(select(func.count()).select_from(Impression)).scalar_one()
        if k != impressions:
            problems.append(f"served lists promise {k} impressions, {impressions} are stored (a partial list)")
    return problems


def half_done_files(before: Snapshot, after: Snapshot, clean: Snapshot) -> dict[str, str]:
    """Files of ``after`` that are neither as they were ``before`` the command nor as a clean run
    leaves them: a half-written or otherwise foreign file that a reader would pick up."""
    bad = {}
    for name in sorted(set(before.files) | set(after.files) | set(clean.files)):
        if after.files.get(name) not in (before.files.get(name), clean.files.get(name)):
            bad[name] = after.files.get(name, "missing")
    return bad


# --- Scenarios: what runs, with and without the fault ------------------------------------------------


@dataclass(frozen=True)
class Command:
    """``ranker ARGS`` in a world; ``{inputs}`` in an argument is the folder of :func:`fault_inputs`.
    The fault fires at its ``nth`` passage; the retry is the same command."""

    args: tuple[str, ...]
    nth: int = 1
    #: The database after a crash is as before the command or as after it (False: resumable steps).
    all_or_nothing: bool = True

    def first(self, world: World, inputs: Path, fault: str | None = None) -> Run:
        return world.run([a.format(inputs=inputs) for a in self.args], fault)

    def retry(self, world: World, inputs: Path, first: Run) -> Run:
        return self.first(world, inputs)


@dataclass(frozen=True)
class Feedback:
    """``ranker serve`` in a world: one list recommended, then feedback on ``clicks`` of its items.
    The retry starts a new server and sends the same feedback again, as a client whose request
    failed would; its run ends with the server stopped (SIGTERM, status 0)."""

    clicks: int = 3
    nth: int = 1
    all_or_nothing: bool = True

    def first(self, world: World, inputs: Path, fault: str | None = None) -> Run:
        with world.engine() as engine, engine.connect() as conn:
            user = conn.execute(select(User.id).where(User.role == "developer").order_by(User.id)).scalars().first()
        with running_server(world, fault) as (base, proc):
            body = httpx.post(f"{base}/v1/recommend", json={"user_id": user, "flow": "developer-startup"},
                              timeout=60).json()
            events = [{"request_id": body["request_id"], "item_id": it["item_id"], "type": "click"}
                      for it in body["items"][: self.clicks]]
            before_step = snapshot(world)
            run = self._send(base, proc, events)
        run.before_step = before_step
        return run

    def retry(self, world: World, inputs: Path, first: Run) -> Run:
        with running_server(world) as (base, proc):
            return self._send(base, proc, first.retry["events"])

    def _send(self, base: str, proc: subprocess.Popen, events: list[dict]) -> Run:
        try:
            response = httpx.post(f"{base}/v1/feedback", json={"events": events}, timeout=60)
        except httpx.TransportError as exc:  # the server died on the request
            proc.wait(timeout=60)
            return Run(proc.returncode, f"{type(exc).__name__}: {exc}\n{proc.stdout.read()}", {"events": events})
        reply = response.json()
        stop_server(proc)
        return Run(proc.returncode if response.status_code == 200 and reply["stored"] == len(events) else -1,
                   f"{response.status_code} {reply}", {"events": events})




@contextmanager
def running_server(world: World, fault: str | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``ranker serve`` on a free port in ``world``, ready; stopped on exit if still running."""
    port = free_port()
    proc = world.start(["serve", "--port", str(port)], fault)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, proc, STARTUP_TIMEOUT_S)
        yield base, proc
    finally:
        stop_server(proc)


# --- Trials: each point crashed and retried, all of them run by a pool ---------------------------------


@dataclass
class Trial:
    """What one point's crash and retry in one world left at each step."""

    before: Snapshot
    crashed: Run
    problems_at_crash: list[str]  # integrity_problems() just after the crash
    at_crash: Snapshot
    retried: Run
    problems_after: list[str]  # integrity_problems() after the retry
    after: Snapshot


def crash_and_retry(scenario: Command | Feedback, point: str, world: World, inputs: Path) -> Trial:
    """Run ``scenario`` in ``world`` with the fault at ``point``, look at the world, retry, look again."""
    before = snapshot(world)
    crashed = scenario.first(world, inputs, fault=f"{point}@{scenario.nth}")
    problems_at_crash, at_crash = integrity_problems(world), snapshot(world)
    retried = scenario.retry(world, inputs, crashed)
    return Trial(before, crashed, problems_at_crash, at_crash, retried, integrity_problems(world), snapshot(world))


def clean_run(scenario: Command | Feedback, world: World, inputs: Path) -> Snapshot:
    """What ``scenario`` leaves in ``world`` when nothing goes wrong."""
    run = scenario.first(world, inputs)
    assert run.returncode == 0, f"the clean run of {scenario} failed ({run.returncode}):\n{run.output}"
    return snapshot(world)


class Trials:
    """Runs the session's trials and clean runs on a pool of threads, each driving its own
    processes in its own world, so that they overlap; a test waits for its own.

    Clean runs are made once per scenario on SQLite and shared by the backends (the PostgreSQL
    template holds the same rows). Each PostgreSQL world is a database of its own, made from the
    template and dropped when its trial ends.
    """

    def __init__(self, src: Path, inputs: Path, folder: Path, scenarios: dict[str, Any], pg_url: str | None):
        self.src, self.inputs, self.folder, self.scenarios, self.pg_url = src, inputs, folder, scenarios, pg_url
        self._pool = ThreadPoolExecutor(max_workers=min(3, os.cpu_count() or 2), thread_name_prefix="fault-trial")
        self._clean: dict[Any, Future] = {}
        self._trials: dict[tuple[str, str], Future] = {}
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._template: str | None = None

    def start(self, selected: list[tuple[str, str]]) -> None:
        """Queue the clean runs, then the trials, of ``selected`` (point, backend) pairs, in order."""
        for point, _ in selected:
            self._clean_future(self.scenarios[point])
        for point, backend in selected:
            self._trial_future(point, backend)

    def clean(self, scenario: Any) -> Snapshot:
        return self._clean_future(scenario).result()

    def trial(self, point: str, backend: str) -> Trial:
        return self._trial_future(point, backend).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._template:
            _drop_database(self.pg_url, self._template)

    def _clean_future(self, scenario: Any) -> Future:
        with self._lock:
            if scenario not in self._clean:
                self._clean[scenario] = self._pool.submit(self._run_clean, scenario)
            return self._clean[scenario]

    def _trial_future(self, point: str, backend: str) -> Future:
        with self._lock:
            if (point, backend) not in self._trials:
                self._trials[point, backend] = self._pool.submit(self._run_trial, point, backend)
            return self._trials[point, backend]

    def _run_clean(self, scenario: Any) -> Snapshot:
        return clean_run(scenario, _sqlite_world(self.src, self.folder / f"clean{next(self._names)}"), self.inputs)

    def _run_trial(self, point: str, backend: str) -> Trial:
        n = next(self._names)
        dst = self.folder / f"{backend}{n}"
        if backend == "sqlite":
            return crash_and_retry(self.scenarios[point], point, _sqlite_world(self.src, dst), self.inputs)
        name = f"ranker_faults_{os.getpid()}_{n}"
        with self._lock:  # one CREATE DATABASE at a time: the template must have no other user
            if self._template is None:
                self._template = f"ranker_faults_{os.getpid()}_template"
                _pg_template(self.pg_url, self.src, self._template)
            world = _pg_world(self.pg_url, self._template, name, self.src, dst)
        try:
            return crash_and_retry(self.scenarios[point], point, world, self.inputs)
        finally:
            _drop_database(self.pg_url, name)


@pytest.fixture(scope="session")
def trials(fault_world: Path, fault_inputs: Path, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Trials]:
    """The trials of every (point, backend) the session's selected tests name, started at once."""
    from tests.conftest import _pg_reachable, _pg_url
    from tests.faults.test_faults import SCENARIOS

    pg_url = _pg_url()
    pg_url = pg_url if pg_url and _pg_reachable(pg_url) else None
    here = Path(__file__).parent
    params = [item.callspec.params for item in request.session.items
              if item.path.parent == here and hasattr(item, "callspec")]
    selected = [(p["point"], p["backend"]) for p in params if "point" in p and "backend" in p]
    runs = Trials(fault_world, fault_inputs, tmp_path_factory.mktemp("trials"), SCENARIOS, pg_url)
    runs.start([(p, b) for p, b in selected if p in SCENARIOS and (b == "sqlite" or pg_url)])
    yield runs
    runs.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """The database a trial runs on; PostgreSQL ones skip, saying why, when it is not reachable."""
    if request.param == "postgres":
        request.getfixturevalue("pg_url")
    return request.param
