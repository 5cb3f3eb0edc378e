"""The model store: where every serving replica finds a registered version's checkpoint bytes.

One small interface, :class:`ModelStore` (``put``, ``get``, ``exists`` of a version's bytes),
and one setting, ``RANKER_MODEL_STORE`` (``config.MODEL_STORE``), that picks the implementation:

=====================  ===========================================================================
setting                store
=====================  ===========================================================================
unset                  :class:`DirStore` on the local ``models/versions`` folder (one machine)
``dir:/PATH``          :class:`DirStore` on a folder every replica mounts (NFS, a shared volume)
``db``                 :class:`DatabaseStore`: the ``model_files`` table of the serving database
``scheme://...``       :class:`UrlStore`: any fsspec URL, e.g. ``s3://bucket/ranker`` (with s3fs)
=====================  ===========================================================================

The registry (:mod:`ranker.rank.registry`) puts each version's bytes here when it registers
them and records their SHA-256 in the version's row. A replica whose own ``models/versions``
folder (a cache) lacks the file gets it from the store; :meth:`ModelStore.get` refuses bytes
whose hash is not the recorded one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, select

from ranker import config
from ranker.data.clock import utcnow
from ranker.data.files import atomic_write_bytes
from ranker.data.schema import ModelFile
from ranker.rank.spec import CheckpointError

__all__ = ["DatabaseStore", "DirStore", "ModelStore", "ModelStoreError", "UrlStore", "open_store", "sha256_hex"]

#: What an operator can do when the store lacks a version or holds other bytes.
FIX = "register the checkpoint again, or activate another version with `ranker models activate vN`"


class ModelStoreError(CheckpointError):
    """The store lacks a version, holds other bytes than the registry recorded, or cannot be used.
    A :class:`CheckpointError`: whatever refuses a checkpoint that cannot be served refuses these too."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelStore(ABC):
    """Checkpoint bytes by version name (``v1``, ``v2``, ...)."""

    @abstractmethod
    def put(self, version: str, data: bytes) -> str:
        """Store ``data`` as ``version`` (replacing what was there); returns its SHA-256 (hex)."""

    @abstractmethod
    def exists(self, version: str) -> bool: ...

    @abstractmethod
    def _read(self, version: str) -> bytes | None:
        """The stored bytes, or None when the store has no such version."""

    @abstractmethod
    def location(self, version: str) -> str:
        """Where ``version`` lives, for people (``ranker models list``)."""

    def get(self, version: str, sha256: str | None = None) -> bytes:
        """The bytes of ``version``, checked against ``sha256`` (the registry's record) when given.

        Raises
        ------
        ModelStoreError
            The store has no ``version``, or its bytes hash to something else.
        """
        data = self._read(version)
        if data is None:
            raise ModelStoreError(f"the model store has no {version} ({self.location(version)}); {FIX}")
        if sha256 is not None and sha256_hex(data) != sha256:
            raise ModelStoreError(f"{self.location(version)} holds other bytes than the registered {version} "
                                  f"(SHA-256 {sha256_hex(data)[:12]}…, registered {sha256[:12]}…); {FIX}")
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location('')!r})"


class DirStore(ModelStore):
    """``<root>/<version>.pth``, each written atomically (a reader never sees half a file)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, version: str) -> Path:
        return self.root / f"{version}.pth"

    def put(self, version: str, data: bytes) -> str:
        atomic_write_bytes(self.path(version), data)
        return sha256_hex(data)

    def exists(self, version: str) -> bool:
        return self.path(version).is_file()

    def _read(self, version: str) -> bytes | None:
        try:
            return self.path(version).read_bytes()
        except FileNotFoundError:
            return None

    def location(self, version: str) -> str:
        return str(self.path(version)) if version else str(self.root)


class DatabaseStore(ModelStore):
    """The ``model_files`` table. ``bind`` is an engine (each call commits on its own) or a
    connection (the caller's transaction, so a registration's row and bytes commit together)."""

    def __init__(self, bind: Engine | Connection):
        self.bind = bind

    @contextmanager
    def _conn(self) -> Iterator[Connection]:
        if isinstance(self.bind, Connection):
            yield self.bind
        else:
            with self.bind.begin() as conn:
                yield conn

    def put(self, version: str, data: bytes) -> str:
        digest = sha256_hex(data)
        with self._conn() as conn:  # a version name reused after a world was wiped replaces the old bytes
            conn.execute(delete(ModelFile).where(ModelFile.version == version))
            conn.execute(ModelFile.__table__.insert().values(
                version=version, sha256=digest, size=len(data), data=data, created_at=utcnow()))
        return digest

    def exists(self, version: str) -> bool:
        with self._conn() as conn:
            return conn.execute(select(ModelFile.version).where(ModelFile.version == version)).first() is not None

    def _read(self, version: str) -> bytes | None:
        with self._conn() as conn:
            row = conn.execute(select(ModelFile.data, ModelFile.sha256).where(ModelFile.version == version)).first()
        if row is None:
            return None
        data = bytes(row.data)
        if sha256_hex(data) != row.sha256:  # damaged at rest: refuse even without the registry's record
            raise ModelStoreError(f"the database's bytes of {version} do not match their own SHA-256; {FIX}")
        return data

    def location(self, version: str) -> str:
        return f"db:model_files/{version}" if version else "db:model_files"


class UrlStore(ModelStore):
    """``<url>/<version>.pth`` through fsspec: ``s3://``, ``gs://``, ``file://``, ... (the
    protocol's package, e.g. s3fs, must be installed). An object store writes each object whole."""

    def __init__(self, url: str):
        try:
            import fsspec
        except ImportError:
            raise ModelStoreError(f"{config.MODEL_STORE_ENV}={url} needs fsspec: pip install fsspec") from None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ModelStoreError(f"{config.MODEL_STORE_ENV}={url} cannot be opened: {exc}".splitlines()[0]) from None
        self.url = url.rstrip("/")

    def _key(self, version: str) -> str:
        return f"{self.root.rstrip('/')}/{version}.pth"

    def put(self, version: str, data: bytes) -> str:
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        if protocols & {"file", "local"}:  # object stores have no folders to make
            self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe_file(self._key(version), data)
        return sha256_hex(data)

    def exists(self, version: str) -> bool:
        return bool(self.fs.exists(self._key(version)))

    def _read(self, version: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._key(version)))
        except FileNotFoundError:
            return None

    def location(self, version: str) -> str:
        return f"{self.url}/{version}.pth" if version else self.url


def open_store(setting: str, bind: Engine | Connection, default_dir: Path) -> ModelStore:
    """The store ``setting`` names (the ``RANKER_MODEL_STORE`` syntax; see the module docstring).

    ``bind`` serves ``db``; ``default_dir`` serves an empty setting.

    Raises
    ------
    ModelStoreError
        A setting that names no store, in one line with the forms that work.
    """
    setting = setting.strip()
    if not setting:
        return DirStore(default_dir)
    if setting == "db":
        return DatabaseStore(bind)
    if setting.startswith("dir:") and setting[4:].strip():
        return DirStore(Path(setting[4:].strip()).expanduser())
    if "://" in setting:
        return UrlStore(setting)
    raise ModelStoreError(f"{config.MODEL_STORE_ENV}={setting!r} names no model store; use `db`, `dir:/shared/path` "
                          "or a URL such as s3://bucket/prefix (unset: the local models/versions folder)")
