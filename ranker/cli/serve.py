"""CLI: ``ranker serve``, the HTTP API."""

from __future__ import annotations

import argparse

from ranker import config
from ranker.cli import CLIError, positive_int

D = config.DEFAULTS  # every default flag value comes from here


def cmd_serve(args: argparse.Namespace) -> int:
    from ranker.api.server import ServeError, serve

    if not 1 <= args.port <= 65535:
        raise CLIError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        serve(args.host, args.port, args.workers, args.log_level)
    except ServeError as exc:
        raise CLIError(str(exc)) from None
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the ranker over HTTP (FastAPI on uvicorn); see docs/api.md",
                       description="Recommend, rerank, feedback and catalogue upserts over HTTP. Writes need "
                                   "an X-API-Key from RANKER_API_KEYS; without keys the server listens on "
                                   "loopback only.")
    p.add_argument("--host", default=D.api_host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=D.api_port, help="port (default %(default)s)")
    p.add_argument("--workers", type=positive_int, default=D.api_workers,
                   help="worker processes (default %(default)s); use PostgreSQL for more than a few")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    p.set_defaults(handler=cmd_serve)
