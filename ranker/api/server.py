"""``ranker serve``: run the API on uvicorn, with N worker processes.

Before any worker starts, the schema is migrated once, the bind address is checked
against the API keys, and with several workers ``PROMETHEUS_MULTIPROC_DIR`` is set so
``/metrics`` merges every worker's samples. The running server is recorded in the
``api_server`` setting, so the dashboard can show its address and status. On SIGTERM
uvicorn stops accepting connections and lets in-flight requests finish (up to
``GRACE_S`` seconds); each request's writes are one transaction, so nothing is
half-written.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import tempfile
from typing import Any

from fastapi import FastAPI

from ranker import keys
from ranker.api.auth import READ_KEYS_ENV, WRITE_KEYS_ENV, Keys
from ranker.errors import RankerError

GRACE_S = 30
LOOPBACK = "127.0.0.1"


class ServeError(RankerError, RuntimeError):
    """A server that cannot start, with what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: Keys) -> str | None:
    """A warning to print, or :class:`ServeError` when ``host`` is reachable from other machines
    and no write keys are set."""
    if keys.configured:
        return None
    if not is_loopback(host):
        raise ServeError(f"refusing to listen on {host} with no API keys: anyone could write feedback and "
                         f"catalogue rows. Set {WRITE_KEYS_ENV}=key1,key2 (and optionally {READ_KEYS_ENV}), "
                         f"or listen on {LOOPBACK}")
    return (f"no API keys set ({WRITE_KEYS_ENV}): writes are open to anyone on this machine, so the server "
            f"listens on loopback only")


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running? "
                             "Choose another port with --port") from None


def app_factory() -> FastAPI:
    """What each uvicorn worker imports: the app over ``RANKER_DATABASE_URL``."""
    from ranker.api.app import create_app

    return create_app()


def _record(engine: Any, value: dict | None) -> None:
    from ranker.data.db import get_setting, put_setting, session_scope

    with session_scope(engine) as s:
        if value is None:
            current = get_setting(s, keys.API_SERVER)
            if current and current.get("pid") == os.getpid():
                put_setting(s, keys.API_SERVER, None)
        else:
            put_setting(s, keys.API_SERVER, value)


def serve(host: str = LOOPBACK, port: int = 8000, workers: int = 1, log_level: str = "info") -> None:
    """Run the API until SIGTERM or Ctrl-C.

    Raises
    ------
    ServeError
        An open bind address without keys, or a port already in use.
    """
    import uvicorn

    from ranker.api import metrics
    from ranker.data.clock import utcnow
    from ranker.data.db import ensure_schema, get_engine, mask_url

    warning = check_bind(host, Keys.from_env())
    if warning:
        print(f"warning: {warning}", flush=True)
    check_port_free(host, port)
    engine = ensure_schema(get_engine())
    own_metrics_dir = None
    if workers > 1 and not os.environ.get(metrics.MULTIPROC_ENV):
        own_metrics_dir = tempfile.mkdtemp(prefix="ranker-metrics-")
        os.environ[metrics.MULTIPROC_ENV] = own_metrics_dir
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    print(f"Ranker API on {url} ({workers} worker{'s' if workers > 1 else ''}, database "
          f"{mask_url(engine.url.render_as_string(hide_password=False))}); docs at {url}/docs", flush=True)
    _record(engine, {"url": url, "pid": os.getpid(), "workers": workers, "started_at": utcnow().isoformat()})
    # uvicorn re-raises SIGTERM after its graceful shutdown; with this handler in place that
    # ends here, so the server's record is cleared and the exit status is 0.
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    try:
        uvicorn.run("ranker.api.server:app_factory", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False, timeout_graceful_shutdown=GRACE_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _record(engine, None)
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
            os.environ.pop(metrics.MULTIPROC_ENV, None)
    print("Ranker API stopped", flush=True)


def running_server(engine: Any) -> dict | None:
    """The server recorded by ``ranker serve`` (url, pid, workers, started_at), if any."""
    from ranker.data.db import get_setting, session_scope

    with session_scope(engine) as s:
        return get_setting(s, keys.API_SERVER)


def probe(url: str, timeout: float = 0.5) -> dict | None:
    """``/readyz`` of a server at ``url`` as a dict, or None when it does not answer."""
    import json
    import urllib.error
    import urllib.request

    host = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    try:
        with urllib.request.urlopen(f"{host}/readyz", timeout=timeout) as resp:  # noqa: S310 (http only)
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
