"""The ``ranker`` command line. Every command exits non-zero with a one-line reason on bad input."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable

from ranker import config

Handler = Callable[[argparse.Namespace], int]
#: Subcommand modules; each defines ``add_commands(sub)``, which adds its parsers and sets ``handler``.
MODULES = (
    "ranker.cli.base",
    "ranker.cli.core",
    "ranker.cli.data_import",
    "ranker.cli.experiments",
    "ranker.cli.offline",
    "ranker.cli.parity",
    "ranker.cli.serve",
)


class CLIError(RuntimeError):
    """A bad-input error whose message is shown to the operator as is."""


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# --- demo / db ------------------------------------------------------------------


def cmd_demo_init(args: argparse.Namespace) -> int:
    from ranker.data.db import get_engine, mask_url
    from ranker.sim.synth import build_world

    engine = get_engine()
    if args.if_empty:
        from ranker.data.db import ensure_schema, is_empty

        if not is_empty(ensure_schema(engine)):
            print(f"{mask_url(str(engine.url))} already holds data; keeping it")
            return 0
    counts = build_world(engine, seed=args.seed, preset=args.preset, scale=args.scale,
                         force=args.force, show_bar=True)
    from ranker.serving.experiments import get_experiment

    print(f"demo world built in {mask_url(str(engine.url))} "
          f"(seed {args.seed}, preset {args.preset}, scale {args.scale})")
    _print_counts(counts)
    exp = get_experiment(engine)
    print(f"started the demo A/B experiment {exp.name!r}: {exp.rollout:g}% of users get the ranker, the rest "
          "the base order; `ranker experiment stop` gives everyone the ranker")
    return 0


def cmd_db_info(args: argparse.Namespace) -> int:
    from ranker.data.db import (
        check_connection,
        get_engine,
        head_revision,
        mask_url,
        schema_revision,
        table_counts,
    )

    engine = get_engine()
    check_connection(engine)
    url = mask_url(engine.url.render_as_string(hide_password=False))
    revision = schema_revision(engine)
    counts = table_counts(engine)
    if args.json:
        print(json.dumps({"url": url, "schema_revision": revision,
                          "head_revision": head_revision(), "counts": counts}))
        return 0
    print(f"database: {url}")
    state = "current" if revision == head_revision() else "run `ranker db upgrade`"
    print(f"schema:   {revision or 'not created'} ({state})")
    _print_counts(counts)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ranker.data.db import check_connection, get_engine, mask_url, schema_revision, upgrade

    engine = get_engine()
    check_connection(engine)  # one clear error before Alembic gets to it
    before = schema_revision(engine)
    after = upgrade(engine)
    print(f"{mask_url(engine.url.render_as_string(hide_password=False))}: "
          f"schema {before or 'empty'} -> {after}")
    return 0


def _print_counts(counts: dict[str, int]) -> None:
    width = max(len(k) for k in counts)
    for name, n in counts.items():
        print(f"  {name:<{width}}  {n:>10,}")


# --- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ranker",
        description="Ranker: a lightweight neural reranking layer for recommendations.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the synthetic demo world").add_subparsers(
        dest="demo_command", required=True, metavar="ACTION")
    init = demo.add_parser("init", help="build the demo database (users, items, 90 days of history)")
    init.add_argument("--seed", type=int, default=config.DEFAULTS.seed)
    init.add_argument("--preset", choices=("default", "no-context"), default="default",
                      help="no-context: recency, popularity and diversity carry no signal")
    init.add_argument("--scale", choices=("small", "default", "large"), default="default")
    init.add_argument("--force", action="store_true", help="replace a non-empty database")
    init.add_argument("--if-empty", action="store_true",
                      help="do nothing when the database already holds data (used by `make run`)")
    init.set_defaults(handler=cmd_demo_init)

    db = sub.add_parser("db", help="database information and migrations").add_subparsers(
        dest="db_command", required=True, metavar="ACTION")
    info = db.add_parser("info", help="row counts per table and the (masked) URL")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=cmd_db_info)
    db.add_parser("upgrade", help="migrate the schema in place, keeping data").set_defaults(
        handler=cmd_db_upgrade)

    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        import ranker.rank.features  # noqa: F401  (validates RANKER_EXTRA_FEATURES)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ranker.data.db import DatabaseError, WorldExistsError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (CLIError, DatabaseError, WorldExistsError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "CLIError", "positive_int", "positive_float"]
