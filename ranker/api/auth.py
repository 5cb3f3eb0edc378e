"""API keys: ``X-API-Key`` checked in constant time against the configured keys.

- ``RANKER_API_KEYS`` (comma-separated): keys that may write (feedback, upserts) and read.
- ``RANKER_API_READ_KEYS`` (comma-separated, optional): keys that may only read. When it
  is set, reads (recommend, rank, model) need a read or a write key; otherwise reads are open.

With no write keys configured, writes are open too, and ``ranker serve`` binds to
loopback only (see :func:`ranker.api.server.check_bind`). Health, readiness and
metrics are always open, for probes and scrapers.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

WRITE_KEYS_ENV = "RANKER_API_KEYS"
READ_KEYS_ENV = "RANKER_API_READ_KEYS"
HEADER = "X-API-Key"

api_key_header = APIKeyHeader(name=HEADER, auto_error=False,
                              description=f"a key from {WRITE_KEYS_ENV} (writes) or {READ_KEYS_ENV} (reads)")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (value or "").split(",") if k.strip())


@dataclass(frozen=True)
class Keys:
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Keys:
        env = os.environ if environ is None else environ
        return cls(write=_split(env.get(WRITE_KEYS_ENV)), read=_split(env.get(READ_KEYS_ENV)))

    @property
    def configured(self) -> bool:
        return bool(self.write)


def matches(given: str, keys: tuple[str, ...]) -> bool:
    """True when ``given`` equals one of ``keys``. Every key is compared, in constant time each."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def _check(request: Request, key: str | None, allowed: tuple[str, ...], what: str) -> None:
    if not allowed:
        return
    if not key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            f"{what} need an API key: send it in the {HEADER} header")
    if not matches(key, allowed):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this {HEADER} may not make {what}")


async def require_write(request: Request, key: str | None = Security(api_key_header)) -> None:
    """Dependency of every route that writes (async: no I/O, so no threadpool hop)."""
    keys: Keys = request.app.state.keys
    _check(request, key, keys.write, "writes")


async def require_read(request: Request, key: str | None = Security(api_key_header)) -> None:
    """Dependency of every route that reads: open unless read keys are configured."""
    keys: Keys = request.app.state.keys
    _check(request, key, keys.read + keys.write if keys.read else (), "reads")
