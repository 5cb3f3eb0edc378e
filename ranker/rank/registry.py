"""Model registry: checkpoints, versions, the active pointer, rollback and hot reload.

Layout under ``config.MODELS_DIR``::

    versions/v1.pth, v2.pth, ...   registered versions on this machine (the model store's cache)
    active.pth                     a copy of the active version, for tools; serving never reads it

The database is the truth: it records each version, the SHA-256 of its bytes, its metrics
and which one is active (the ``active_history`` setting makes rollback possible).
Registering puts the bytes into the model store (:mod:`ranker.rank.store`, chosen by
``RANKER_MODEL_STORE``; by default the ``versions/`` folder itself). Serving reads the active
row on every request and loads that version's file, ``versions/vN.pth``, fetching it from
the store first when this machine lacks it or holds other bytes, so activating is one commit
that every replica follows: a crash before it leaves the old model active everywhere, one
after it the new. ``active.pth`` is derived from the row after the commit
(:func:`sync_active_file`). Every file is written to a temporary path, fsynced and
``os.replace``d, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.orm import Session

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.data.db import audit, get_setting, put_setting, session_scope
from ranker.data.files import atomic_write_bytes
from ranker.data.schema import ModelActivation, ModelVersion
from ranker.errors import RankerError
from ranker.faults import fault_point
from ranker.rank.features import feature_names
from ranker.rank.model import RankerMLP
from ranker.rank.rerank import NeuralScorer
from ranker.rank.spec import CHECKPOINT_FORMAT, Checkpoint, CheckpointError, ModelSpec
from ranker.rank.store import DirStore, ModelStore, ModelStoreError, open_store, sha256_hex

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "ActiveModel", "ModelStoreError", "RegistryError",
           "activate_version", "active_path", "atomic_write_bytes", "load_checkpoint", "load_version", "local_file",
           "model_store", "register", "rollback", "save_checkpoint", "sync_active_file", "version_path"]

log = logging.getLogger(__name__)
RULE = "rule"
#: A replica that could not fetch the active version from the model store tries again after this long.
FETCH_RETRY_S = 1.0


class RegistryError(RankerError, ValueError):
    pass


def models_dir() -> Path:
    """``config.MODELS_DIR`` (set by ``RANKER_MODELS_DIR``), read at call time."""
    return Path(config.MODELS_DIR)


def versions_dir() -> Path:
    return models_dir() / "versions"


def version_path(version: str) -> Path:
    """The file of a registered version, ``versions/<version>.pth``: what serving loads."""
    return versions_dir() / f"{version}.pth"


def active_path() -> Path:
    """``active.pth``: a copy of the active version for tools (``--model models/active.pth``),
    written after each activation commits. Serving never reads it."""
    return models_dir() / "active.pth"


# --- Files --------------------------------------------------------------------------


def save_checkpoint(path: Path, model: RankerMLP, meta: dict[str, Any]) -> None:
    """Write ``model`` with its spec and ``meta`` (see :meth:`ModelSpec.save`).

    A net built without feature names (``RankerMLP(4)``) is named by ``meta["feature_names"]``,
    else by the feature registry.
    """
    spec = model.spec
    if not spec.feature_names:
        spec = spec.with_features(meta.get("feature_names") or feature_names())
    spec.save(path, model, meta)


load_checkpoint = ModelSpec.load


# --- The model store ----------------------------------------------------------------


def model_store(bind: Engine | Connection) -> ModelStore:
    """The store ``RANKER_MODEL_STORE`` names (:func:`ranker.rank.store.open_store`); unset, this
    machine's ``versions/`` folder. ``bind`` serves ``db``."""
    return open_store(config.MODEL_STORE, bind, versions_dir())


def _is_cache(store: ModelStore) -> bool:
    """The store is this machine's ``versions/`` folder itself (the one-machine default)."""
    return isinstance(store, DirStore) and store.root.resolve() == versions_dir().resolve()


def local_file(bind: Engine | Connection, version: str, sha256: str | None = None) -> Path:
    """``versions/<version>.pth`` on this machine, first fetched from the model store when it is
    missing or its bytes are not ``sha256`` (the registry's record; None: not checked).

    Raises
    ------
    ModelStoreError
        The store has no ``version``, or other bytes than ``sha256``.
    """
    return _local_file(bind, version, sha256)[0]


def _local_file(bind: Engine | Connection, version: str, sha256: str | None) -> tuple[Path, bool]:
    """(:func:`local_file`, whether it was fetched from the store just now)."""
    path = version_path(version)
    if path.is_file() and (sha256 is None or sha256_hex(path.read_bytes()) == sha256):
        return path, False
    store = model_store(bind)
    if _is_cache(store):
        return path, False  # nothing else to fetch from: loading the file says what is wrong with it
    data = store.get(version, sha256)
    atomic_write_bytes(path, data)
    log.info("fetched %s (%d bytes) from %s", version, len(data), store.location(version))
    return path, True


def load_version(bind: Engine | Connection, version: str, sha256: str | None = None) -> Checkpoint:
    """Load and validate a registered version from this machine's cache or the model store
    (:func:`local_file`): its bytes must be the registered ones, pass :meth:`ModelSpec.load`'s
    checks, and name ``version``.

    Raises
    ------
    CheckpointError
        One line saying which check failed (a :class:`ModelStoreError` when the store cannot help).
    """
    path, fetched = _local_file(bind, version, sha256)
    try:
        ckpt = load_checkpoint(path)
        if ckpt.version != version:
            raise CheckpointError(f"{path} holds {ckpt.version}, not {version}; activate another "
                                  "version with `ranker models activate vN`")
        if sha256 is not None and sha256_hex(path.read_bytes()) != sha256:
            raise CheckpointError(f"{path} is not the registered {version} (its SHA-256 is not the registry's); "
                                  "activate another version with `ranker models activate vN`")
    except CheckpointError:
        if fetched:  # keep no refused bytes in the cache: the next try fetches again
            path.unlink(missing_ok=True)
        raise
    return ckpt


def data_hash(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes, read 1 MiB at a time. A folder (a
    Parquet dataset partitioned by day) hashes each ``.parquet`` file's path inside it and its bytes,
    in path order, so a file that moves to another day changes the hash too."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 - used within the iteration
                h.update(chunk)
    return h.hexdigest()[:16]


# --- Versions -----------------------------------------------------------------------


def list_versions(engine: Engine) -> list[ModelVersion]:
    with session_scope(engine) as s:
        return list(s.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def active_version(engine: Engine) -> str | None:
    with session_scope(engine) as s:
        return s.scalar(select(ModelVersion.version).where(ModelVersion.is_active))


def register(engine: Engine, checkpoint: Path, activate: bool = False, actor: str = "cli") -> str:
    """Copy ``checkpoint`` into the registry as the next version (into the model store, with its
    SHA-256 in the row, and into this machine's ``versions/``); optionally activate it."""
    ckpt = load_checkpoint(checkpoint)
    with session_scope(engine) as s:
        n = len(s.scalars(select(ModelVersion.id)).all()) + 1
        existing = set(s.scalars(select(ModelVersion.version)))
        while f"v{n}" in existing:
            n += 1
        version = f"v{n}"
        meta = {**ckpt.meta, "version": version}
        data = Checkpoint(ckpt.state_dict, meta).to_bytes()
        store = model_store(s.connection())  # the database store writes in this transaction
        s.add(ModelVersion(
            version=version, path=store.location(version), created_at=utcnow(),
            feature_names=list(meta["feature_names"]), params=dict(meta.get("train_params", {})),
            metrics=dict(meta.get("metrics", {})), data_hash=meta.get("data_hash"), is_active=False,
            sha256=sha256_hex(data),
        ))
        audit(s, "model_register", {"version": version, "source": str(checkpoint)}, actor)
        s.flush()  # a name another registration took fails here, before any bytes are written
        store.put(version, data)
        if not _is_cache(store):
            atomic_write_bytes(version_path(version), data)
    if activate:
        activate_version(engine, version, actor=actor)
    return version


def _version_row(s: Session, version: str) -> ModelVersion:
    row = s.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        known = ", ".join(s.scalars(select(ModelVersion.version).order_by(ModelVersion.id))) or "none"
        raise RegistryError(f"unknown model version {version!r}; registered: {known}")
    return row


def activate_version(engine: Engine, version: str, actor: str = "cli") -> bool:
    """Make ``version`` (or ``rule``) the served model. Its file is validated first.

    The commit of the database row is the activation: serving follows the active row
    (:class:`ActiveModel`), and ``active.pth`` is rewritten from it only afterwards.
    Activating what is already active records nothing and only repairs ``active.pth``, so
    a retry after a crash past the commit ends as one activation. Returns whether anything
    changed.
    """
    if _already_active(engine, version):
        if version != RULE:  # e.g. after switching the store: this machine's copy reaches every replica
            with session_scope(engine) as s:
                _publish(s.connection(), _version_row(s, version))
        sync_active_file(engine)
        return False

    def pick(history: list[str]) -> tuple[str, list[str]]:
        return version, history if history and history[-1] == version else [*history, version]

    _switch(engine, pick, actor)
    return True


def _already_active(engine: Engine, version: str) -> bool:
    """``version`` is serving: its row is the active one, or (``rule``) no row is and the rule was chosen last."""
    with session_scope(engine) as s:
        active = s.scalar(select(ModelVersion.version).where(ModelVersion.is_active))
        if version != RULE:
            return active == version
        history = list(get_setting(s, keys.ACTIVE_HISTORY, []))
        return active is None and bool(history) and history[-1] == RULE


def _switch(engine: Engine, pick: Callable[[list[str]], tuple[str, list[str]]], actor: str) -> str:
    """Activate the version ``pick(history)`` names and save the history it returns, in one transaction."""
    with session_scope(engine) as s:
        version, history = pick(list(get_setting(s, keys.ACTIVE_HISTORY, [])))
        if version != RULE:  # unknown versions are refused, naming the known ones
            _publish(s.connection(), _version_row(s, version))
        s.execute(update(ModelVersion).values(is_active=False))
        if version != RULE:
            s.execute(update(ModelVersion).where(ModelVersion.version == version).values(is_active=True))
        put_setting(s, keys.ACTIVE_HISTORY, history[-50:])
        if get_setting(s, keys.BASE_ORDER_HOLD):  # an operator's or the gate's choice ends a do-no-harm hold
            put_setting(s, keys.BASE_ORDER_HOLD, None)
        s.add(ModelActivation(version=version, activated_at=utcnow(), actor=actor))
        audit(s, "model_activate", {"version": version}, actor)
        s.flush()
        fault_point("activate:before_commit")
    fault_point("activate:after_commit")
    try:
        sync_active_file(engine)
    except (OSError, CheckpointError) as exc:  # the activation stands; only the tools' copy is stale
        log.warning("activated %s, but could not update %s: %s", version, active_path(), exc)
    fault_point("activate:after_swap")
    return version


def _publish(conn: Connection, row: ModelVersion) -> None:
    """Validate ``row``'s checkpoint (never activate one that cannot be served) and make sure the
    model store holds it: a version registered before the store was set, or before its hash was
    recorded, is put there from this machine's copy, and its hash recorded."""
    load_version(conn, row.version, row.sha256)
    store = model_store(conn)
    if row.sha256 is None or not store.exists(row.version):
        data = version_path(row.version).read_bytes()
        row.sha256 = row.sha256 or sha256_hex(data)
        if not store.exists(row.version):
            store.put(row.version, data)
            log.info("put %s into %s", row.version, store.location(row.version))


def _active_row(engine: Engine) -> tuple[str, str | None] | None:
    """(version, sha256) of the database's active version, or None when the rule serves."""
    with engine.connect() as conn:
        row = conn.execute(select(ModelVersion.version, ModelVersion.sha256).where(ModelVersion.is_active)).first()
    return (row.version, row.sha256) if row is not None else None


def active_file(engine: Engine) -> Path | None:
    """The file of the database's active version (``versions/vN.pth``, fetched from the model
    store if this machine lacks it), or None when the rule serves. Tools that read the active
    model use this, never the ``active.pth`` copy."""
    row = _active_row(engine)
    if row is None:
        return None
    try:
        return local_file(engine, *row)
    except ModelStoreError as exc:  # the caller finds no file and says so
        log.warning("%s", exc)
        return version_path(row[0])


def sync_active_file(engine: Engine) -> str | None:
    """Make ``active.pth`` a copy of the database's active version (remove it when the rule is
    active) and return that version. Run after every activation and whenever serving loads a
    new active version, so a copy left stale by a crash is repaired."""
    row = _active_row(engine)
    dest = active_path()
    if row is None:
        dest.unlink(missing_ok=True)
        return None
    version = row[0]
    data = local_file(engine, *row).read_bytes()
    if not dest.is_file() or dest.read_bytes() != data:
        atomic_write_bytes(dest, data)
    return version


def activations(engine: Engine, limit: int = 50) -> list[ModelActivation]:
    """The latest model activations, newest first: which model served from when, and who made it so."""
    with session_scope(engine) as s:
        return list(s.scalars(select(ModelActivation).order_by(ModelActivation.id.desc()).limit(limit)))


def version_scorer(engine: Engine, version: str) -> NeuralScorer:
    """The scorer of a registered version (active or not), e.g. to compare it with the active one."""
    with session_scope(engine) as s:
        sha256 = _version_row(s, version).sha256
    return load_version(engine, version, sha256).scorer()


def rollback(engine: Engine, actor: str = "cli") -> str:
    """Re-activate the version that was active before the current one (one transaction, as
    :func:`activate_version`)."""
    def pick(history: list[str]) -> tuple[str, list[str]]:
        if len(history) < 2:
            raise RegistryError("no earlier version to roll back to; see `ranker models list`")
        return history[-2], history[:-1]

    return _switch(engine, pick, actor)


def backup_active(engine: Engine, dest_dir: Path | None = None) -> Path | None:
    """Copy the active version's file to ``models/backups/`` with a timestamp; None if the rule serves."""
    src = active_file(engine)
    if src is None or not src.exists():
        return None
    dest_dir = dest_dir or models_dir() / "backups"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"active-{utcnow():%Y%m%dT%H%M%S}.pth"
    shutil.copy2(src, dest)
    return dest


# --- Hot reload ---------------------------------------------------------------------


class ActiveModel:
    """The serving model, reloaded when the active model changes.

    With ``engine`` (serving), the model is the version the registry's active row names,
    loaded from its own file (:func:`version_path`), which is fetched from the model store
    when this machine lacks it or holds other bytes than the row's SHA-256
    (:func:`load_version`). ``get()`` costs one small query and one ``os.stat`` when nothing
    changed, so a version activated by any process, on any machine, is served from the next
    request on, and ``active.pth`` is never trusted. With ``path`` instead, the model is that
    file (a tool serving a given checkpoint).

    A new model that fails to load or validate is logged and never replaces a good model
    already loaded. One the store could not deliver is tried again after :data:`FETCH_RETRY_S`.
    """

    def __init__(self, path: Path | None = None, engine: Engine | None = None):
        if (path is None) == (engine is None):
            raise TypeError("ActiveModel needs either the registry's engine or a checkpoint path")
        self.path = Path(path) if path else None
        self.engine = engine
        self._lock = threading.Lock()
        self._sig: tuple | None = None
        self._scorer: NeuralScorer | None = None
        self._rejected: tuple | None = None
        self._retry_at = 0.0  # monotonic time after which a rejected fetch is tried again
        self.reason = config.MODEL_NOT_FOUND_MESSAGE
        self._warned_missing = False
        #: Called with the version after each successful (re)load, e.g. to count reloads.
        self.on_load: list[Callable[[str], None]] = []

    def _wanted(self) -> tuple[str | None, str | None, Path | None]:
        """(the version the registry makes active, or None in file mode; its registered SHA-256;
        the file to serve, or None when the registry names no version)."""
        if self.engine is None:
            return None, None, self.path
        with self.engine.connect() as conn:
            row = conn.execute(select(ModelVersion.version, ModelVersion.sha256)
                               .where(ModelVersion.is_active)).first()
        return (row.version, row.sha256, version_path(row.version)) if row else (None, None, None)

    @staticmethod
    def _signature(version: str | None, sha256: str | None, path: Path) -> tuple:
        """What must change for the model to be loaded again; ends in None when the file is missing."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return (version, sha256, path, None)
        return (version, sha256, path, st.st_ino, st.st_mtime_ns, st.st_size)

    def _rule(self, why: str) -> None:
        if not self._warned_missing:
            log.warning(config.MODEL_NOT_FOUND_MESSAGE)
            self._warned_missing = True
        self.reason = f"{config.MODEL_NOT_FOUND_MESSAGE} ({why})"
        self._scorer, self._sig = None, None

    def _is_rejected(self, sig: tuple) -> bool:
        return sig == self._rejected and (sig[-1] is not None or time.monotonic() < self._retry_at)

    def get(self) -> NeuralScorer | None:
        """The neural scorer, or None for the rule fallback (see ``reason``)."""
        version, sha256, path = self._wanted()
        if path is None:
            self._rule("no active version in the registry; train with `ranker train` or "
                       "`ranker models activate vN`")
            return None
        sig = self._signature(version, sha256, path)
        if version is None and sig[-1] is None:
            self._rule(f"no {path}")
            return None
        if sig == self._sig or self._is_rejected(sig):
            return self._scorer
        with self._lock:
            if sig == self._sig:  # another thread loaded it meanwhile
                return self._scorer
            try:
                ckpt = load_checkpoint(path) if version is None else load_version(self.engine, version, sha256)
            except CheckpointError as exc:  # ModelStoreError included
                self._reject(version, sha256, path, exc)
                return self._scorer
            self._scorer, self._warned_missing = ckpt.scorer(), False
            self._sig = self._signature(version, sha256, path)  # a file fetched from the store is here now
            self.reason = ""
            log.info("serving ranker model %s", self._scorer.version)
            if self.engine is not None:
                self._repair_active_file()
            for callback in self.on_load:
                callback(self._scorer.version)
            return self._scorer

    def _reject(self, version: str | None, sha256: str | None, path: Path, exc: CheckpointError) -> None:
        """Keep the current model; remember what failed so it is not loaded again on every request
        (a file still missing, which the store could not deliver, is tried again after a while)."""
        sig = self._signature(version, sha256, path)
        if sig != self._rejected:
            kept = self._scorer.version if self._scorer else "the rule-based ranker"
            log.warning("not loading %s: %s; still serving %s", version or "the new model file", exc, kept)
        self._rejected, self._retry_at = sig, time.monotonic() + FETCH_RETRY_S
        if self._scorer is None:
            self.reason = f"active model rejected: {exc}"

    def _repair_active_file(self) -> None:
        """Rewrite ``active.pth`` if a crash after an activation's commit left it stale."""
        try:
            sync_active_file(self.engine)
        except (OSError, CheckpointError) as exc:  # a read-only models folder, say: serving does not depend on it
            log.debug("could not update %s: %s", active_path(), exc)
