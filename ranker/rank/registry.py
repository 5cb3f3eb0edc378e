"""Model registry: checkpoints, versions, the active pointer, rollback and hot reload.

Layout under ``config.MODELS_DIR``::

    versions/v1.pth, v2.pth, ...   every registered version (the backups)
    active.pth                     a copy of the active version, for tools; serving never reads it

The database is the truth: it records each version, its metrics and which one is
active (the ``active_history`` setting makes rollback possible). Serving reads the active
row and loads that version's file, ``versions/vN.pth``, so activating is one commit: a
crash before it leaves the old model active everywhere, one after it the new.
``active.pth`` is derived from the row after the commit (:func:`sync_active_file`).
Every file is written to a temporary path, fsynced and ``os.replace``d, so a reader
never sees half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
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

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "ActiveModel", "RegistryError",
           "activate_version", "active_path", "atomic_write_bytes", "load_checkpoint", "register",
           "rollback", "save_checkpoint", "sync_active_file", "version_path"]

log = logging.getLogger(__name__)
RULE = "rule"


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


def data_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
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
    """Copy ``checkpoint`` into the registry as the next version; optionally activate it."""
    ckpt = load_checkpoint(checkpoint)
    with session_scope(engine) as s:
        n = len(s.scalars(select(ModelVersion.id)).all()) + 1
        existing = set(s.scalars(select(ModelVersion.version)))
        while f"v{n}" in existing:
            n += 1
        version = f"v{n}"
        meta = {**ckpt.meta, "version": version}
        dest = version_path(version)
        atomic_write_bytes(dest, Checkpoint(ckpt.state_dict, meta).to_bytes())
        s.add(ModelVersion(
            version=version, path=str(dest), created_at=utcnow(),
            feature_names=list(meta["feature_names"]), params=dict(meta.get("train_params", {})),
            metrics=dict(meta.get("metrics", {})), data_hash=meta.get("data_hash"), is_active=False,
        ))
        audit(s, "model_register", {"version": version, "source": str(checkpoint)}, actor)
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
        if version != RULE:
            _version_row(s, version)  # unknown versions are refused, naming the known ones
            load_checkpoint(version_path(version))  # never activate a file that cannot be served
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
    except OSError as exc:  # the activation stands; only the tools' copy is stale
        log.warning("activated %s, but could not update %s: %s", version, active_path(), exc)
    fault_point("activate:after_swap")
    return version


def active_file(engine: Engine) -> Path | None:
    """The file of the database's active version (``versions/vN.pth``), or None when the rule
    serves. Tools that read the active model use this, never the ``active.pth`` copy."""
    version = active_version(engine)
    return version_path(version) if version is not None else None


def sync_active_file(engine: Engine) -> str | None:
    """Make ``active.pth`` a copy of the database's active version (remove it when the rule is
    active) and return that version. Run after every activation and whenever serving loads a
    new active version, so a copy left stale by a crash is repaired."""
    version = active_version(engine)
    dest = active_path()
    if version is None:
        dest.unlink(missing_ok=True)
        return None
    data = version_path(version).read_bytes()
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
        _version_row(s, version)
    return load_checkpoint(version_path(version)).scorer()


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
    loaded from its own file (:func:`version_path`): ``get()`` costs one small query and
    one ``os.stat`` when nothing changed, so a version activated by any process is served
    from the next request on, and ``active.pth`` is never trusted. With ``path`` instead,
    the model is that file (a tool serving a given checkpoint).

    A new model that fails to load or validate is logged and never replaces a good model
    already loaded.
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
        self.reason = config.MODEL_NOT_FOUND_MESSAGE
        self._warned_missing = False
        #: Called with the version after each successful (re)load, e.g. to count reloads.
        self.on_load: list[Callable[[str], None]] = []

    def _wanted(self) -> tuple[str | None, Path | None]:
        """(the version the registry makes active, or None in file mode; the file to serve, or
        None when the registry names no version)."""
        if self.engine is None:
            return None, self.path
        with self.engine.connect() as conn:
            version = conn.execute(select(ModelVersion.version).where(ModelVersion.is_active)).scalars().first()
        return version, (version_path(version) if version else None)

    def _rule(self, why: str) -> None:
        if not self._warned_missing:
            log.warning(config.MODEL_NOT_FOUND_MESSAGE)
            self._warned_missing = True
        self.reason = f"{config.MODEL_NOT_FOUND_MESSAGE} ({why})"
        self._scorer, self._sig = None, None

    def get(self) -> NeuralScorer | None:
        """The neural scorer, or None for the rule fallback (see ``reason``)."""
        version, path = self._wanted()
        if path is None:
            self._rule("no active version in the registry; train with `ranker train` or "
                       "`ranker models activate vN`")
            return None
        try:
            st = os.stat(path)
            sig: tuple = (version, path, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            if version is None:
                self._rule(f"no {path}")
                return None
            sig = (version, path, None)  # the registry names a file that is gone: a rejection below
        if sig == self._sig or sig == self._rejected:
            return self._scorer
        with self._lock:
            try:
                ckpt = load_checkpoint(path)
                if version is not None and ckpt.version != version:
                    raise CheckpointError(f"{path} holds {ckpt.version}, not {version}; activate another "
                                          "version with `ranker models activate vN`")
            except CheckpointError as exc:
                self._rejected = sig
                kept = self._scorer.version if self._scorer else "the rule-based ranker"
                log.warning("not loading %s: %s; still serving %s", version or "the new model file", exc, kept)
                if self._scorer is None:
                    self.reason = f"active model rejected: {exc}"
                return self._scorer
            self._scorer, self._sig, self._warned_missing = ckpt.scorer(), sig, False
            self.reason = ""
            log.info("serving ranker model %s", self._scorer.version)
            if self.engine is not None:
                self._repair_active_file()
            for callback in self.on_load:
                callback(self._scorer.version)
            return self._scorer

    def _repair_active_file(self) -> None:
        """Rewrite ``active.pth`` if a crash after an activation's commit left it stale."""
        try:
            sync_active_file(self.engine)
        except OSError as exc:  # a read-only models folder, say: serving does not depend on the copy
            log.debug("could not update %s: %s", active_path(), exc)
