"""Model registry: checkpoints, versions, the active pointer, rollback and hot reload.

Layout under ``config.MODELS_DIR``::

    versions/v1.pth, v2.pth, ...   every registered version (the backups)
    active.pth                     a copy of the active version; serving watches it

Every file is written to a temporary path, fsynced and ``os.replace``d, so a reader
never sees half a file. The database records each version, its metrics and which one
is active; the ``active_history`` setting makes rollback possible.
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
from ranker.rank.features import feature_names
from ranker.rank.model import RankerMLP
from ranker.rank.rerank import NeuralScorer
from ranker.rank.spec import CHECKPOINT_FORMAT, Checkpoint, CheckpointError, ModelSpec

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointError", "ActiveModel", "RegistryError",
           "activate_version", "active_path", "atomic_write_bytes", "load_checkpoint", "register",
           "rollback", "save_checkpoint"]

log = logging.getLogger(__name__)
RULE = "rule"


class RegistryError(RankerError, ValueError):
    pass


def models_dir() -> Path:
    """``config.MODELS_DIR`` (set by ``RANKER_MODELS_DIR``), read at call time."""
    return Path(config.MODELS_DIR)


def versions_dir() -> Path:
    return models_dir() / "versions"


def active_path() -> Path:
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
        dest = versions_dir() / f"{version}.pth"
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


def activate_version(engine: Engine, version: str, actor: str = "cli") -> None:
    """Make ``version`` (or ``rule``) the served model. The file is validated first."""
    with session_scope(engine) as s:
        history = list(get_setting(s, keys.ACTIVE_HISTORY, []))
        if version == RULE:
            active_path().unlink(missing_ok=True)
            s.execute(update(ModelVersion).values(is_active=False))
        else:
            row = _version_row(s, version)
            ckpt = load_checkpoint(Path(row.path))  # never activate a bad file
            del ckpt
            with open(row.path, "rb") as fh:
                atomic_write_bytes(active_path(), fh.read())
            s.execute(update(ModelVersion).values(is_active=False))
            row.is_active = True
        if not history or history[-1] != version:
            history.append(version)
        put_setting(s, keys.ACTIVE_HISTORY, history[-50:])
        s.add(ModelActivation(version=version, activated_at=utcnow(), actor=actor))
        audit(s, "model_activate", {"version": version}, actor)


def activations(engine: Engine, limit: int = 50) -> list[ModelActivation]:
    """The latest model activations, newest first: which model served from when, and who made it so."""
    with session_scope(engine) as s:
        return list(s.scalars(select(ModelActivation).order_by(ModelActivation.id.desc()).limit(limit)))


def version_scorer(engine: Engine, version: str) -> NeuralScorer:
    """The scorer of a registered version (active or not), e.g. to compare it with the active one."""
    with session_scope(engine) as s:
        path = Path(_version_row(s, version).path)
    return load_checkpoint(path).scorer()


def rollback(engine: Engine, actor: str = "cli") -> str:
    """Re-activate the version that was active before the current one."""
    with session_scope(engine) as s:
        history = list(get_setting(s, keys.ACTIVE_HISTORY, []))
    if len(history) < 2:
        raise RegistryError("no earlier version to roll back to; see `ranker models list`")
    previous = history[-2]
    activate_version(engine, previous, actor=actor)
    with session_scope(engine) as s:
        put_setting(s, keys.ACTIVE_HISTORY, history[:-1])
    return previous


def backup_active(dest_dir: Path | None = None) -> Path | None:
    """Copy the active file to ``models/backups/`` with a timestamp; None if no model is active."""
    src = active_path()
    if not src.exists():
        return None
    dest_dir = dest_dir or models_dir() / "backups"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"active-{utcnow():%Y%m%dT%H%M%S}.pth"
    shutil.copy2(src, dest)
    return dest


# --- Hot reload ---------------------------------------------------------------------


class ActiveModel:
    """The serving model, reloaded when the active file changes.

    ``get()`` costs one ``os.stat`` when nothing changed. A new file that fails to
    load or validate is logged and never replaces a good model already loaded.
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._sig: tuple | None = None
        self._scorer: NeuralScorer | None = None
        self._rejected: tuple | None = None
        self.reason = config.MODEL_NOT_FOUND_MESSAGE
        self._warned_missing = False
        #: Called with the version after each successful (re)load, e.g. to count reloads.
        self.on_load: list[Callable[[str], None]] = []

    def _path(self) -> Path:
        return self.path or active_path()

    def get(self) -> NeuralScorer | None:
        """The neural scorer, or None for the rule fallback (see ``reason``)."""
        path = self._path()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not self._warned_missing:
                log.warning(config.MODEL_NOT_FOUND_MESSAGE)
                self._warned_missing = True
            self.reason = f"{config.MODEL_NOT_FOUND_MESSAGE} (no {path})"
            self._scorer, self._sig = None, None
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig == self._sig or sig == self._rejected:
            return self._scorer
        with self._lock:
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError as exc:
                self._rejected = sig
                kept = self._scorer.version if self._scorer else "the rule-based ranker"
                log.warning("not loading new model file: %s; still serving %s", exc, kept)
                if self._scorer is None:
                    self.reason = f"active model file rejected: {exc}"
                return self._scorer
            self._scorer, self._sig, self._warned_missing = ckpt.scorer(), sig, False
            self.reason = ""
            log.info("serving ranker model %s", self._scorer.version)
            for callback in self.on_load:
                callback(self._scorer.version)
            return self._scorer
