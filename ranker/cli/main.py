"""The ``ranker`` command line.

Every command ends in one of three ways (docs/cli.md, "Errors and exit codes"):

- done: exit status 0;
- an error the operator can fix (a :class:`~ranker.errors.RankerError`, a ``ValueError``, a
  database that cannot be reached or is not a Ranker database, a path that cannot be read or
  written): one line ``error: ...`` that says what to do, exit status 2, as argparse does for a
  bad flag;
- anything else, a bug: one line naming the log file that keeps its traceback, exit status 1.

``-v`` (before or after the command) logs debug messages and prints the traceback of any error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from ranker import config
from ranker.errors import RankerError

Handler = Callable[[argparse.Namespace], int]
#: Subcommand modules; each defines ``add_commands(sub)``, which adds its parsers and sets ``handler``.
MODULES = (
    "ranker.cli.base",
    "ranker.cli.core",
    "ranker.cli.data_import",
    "ranker.cli.experiments",
    "ranker.cli.offline",
    "ranker.cli.parity",
    "ranker.cli.propensity",
    "ranker.cli.rollups",
    "ranker.cli.serve",
)


#: Exit statuses: an error the operator can fix (argparse's own for a bad flag), a bug, Ctrl-C.
USER_ERROR, UNEXPECTED_ERROR, INTERRUPTED = 2, 1, 130
#: The file, in the data folder (else the system's temporary folder), that keeps the traceback
#: of every unexpected error, newest last.
ERROR_LOG = "ranker-errors.log"
#: Above this size the log starts afresh, keeping one previous file (``.1``).
ERROR_LOG_MAX_BYTES = 1_000_000


class CLIError(RankerError, RuntimeError):
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


def add_features_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", choices=config.FEATURE_SETS, default=None,
                   help="the feature set: guide (the guide's four) or history (plus the user's affinities, the "
                        "item's CTR and the user's activity recency); default: the one chosen with "
                        "`ranker features set`, else guide")


def use_features(args: argparse.Namespace, engine) -> str:
    """Compute ``--features`` in this command, else the operator's saved feature set; returns it."""
    from ranker.rank import tuning
    from ranker.rank.features import use_feature_set

    name = getattr(args, "features", None)
    if name is None:
        return tuning.feature_set(engine)
    use_feature_set(name)
    return name


# --- demo / db ------------------------------------------------------------------


def cmd_demo_init(args: argparse.Namespace) -> int:
    from ranker.data.db import get_engine, mask_url
    from ranker.sim.synth import build_world

    engine = get_engine()
    if args.if_empty:
        from ranker.data.db import ensure_schema, is_empty, refuse_unfinished_world

        if not is_empty(ensure_schema(engine)):
            refuse_unfinished_world(engine)  # a crashed build is no world to keep
            print(f"{mask_url(str(engine.url))} already holds data; keeping it")
            return 0
    counts = build_world(engine, seed=args.seed, preset=args.preset, scale=args.scale,
                         force=args.force, show_bar=True, view_logging=args.view_logging, viewport=args.viewport,
                         swap_share=args.swap_share)
    from ranker.rank.registry import sync_active_file
    from ranker.serving.experiments import get_experiment

    sync_active_file(engine)  # a replaced world has no model versions: no active.pth copy either

    print(f"demo world built in {mask_url(str(engine.url))} "
          f"(seed {args.seed}, preset {args.preset}, scale {args.scale}, views logged: {args.view_logging}, "
          f"swap share {args.swap_share:g})")
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
        interaction_origins,
        mask_url,
        schema_revision,
        table_counts,
    )

    engine = get_engine()
    check_connection(engine)
    url = mask_url(engine.url.render_as_string(hide_password=False))
    revision = schema_revision(engine)
    counts = table_counts(engine)
    origins = interaction_origins(engine)
    if args.json:
        print(json.dumps({"url": url, "schema_revision": revision, "head_revision": head_revision(),
                          "counts": counts, "interaction_origins": origins}))
        return 0
    print(f"database: {url}")
    state = "current" if revision == head_revision() else "run `ranker db upgrade`"
    print(f"schema:   {revision or 'not created'} ({state})")
    _print_counts(counts, {"interactions": origins})
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


def _print_counts(counts: dict[str, int], parts: dict[str, dict[str, int]] | None = None) -> None:
    """One line per table; ``parts`` breaks a table's count down (interactions by origin) below it."""
    width = max(len(k) for k in counts)
    for name, n in counts.items():
        print(f"  {name:<{width}}  {n:>10,}")
        for part, m in (parts or {}).get(name, {}).items():
            print(f"    {part:<{width - 2}}  {m:>10,}")


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
    init.add_argument("--scale", choices=("small", "default", "large", "xlarge"), default="default")
    init.add_argument("--force", action="store_true", help="replace a non-empty database")
    init.add_argument("--view-logging", choices=("rendered", "examined"), default="rendered",
                      help="how the world's client logs a view: every position in the viewport (rendered), or "
                           "only the positions users looked at (examined, which hides position bias from training)")
    init.add_argument("--viewport", type=int, default=None, metavar="N",
                      help="rendered: positions on screen without scrolling; below them a view is logged when the "
                           "user looks (default: the whole list)")
    init.add_argument("--swap-share", type=float, default=config.DEFAULTS.swap_share,
                      help="share of the legacy feed's lists, and of the ranker's treatment lists from then on, "
                           "served with randomised adjacent swaps (position-bias estimation; default %(default)s)")
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
    _accept_verbose_after_the_command(parser)
    return parser


def command_parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command's parser, named as typed (``"models activate"``), in parser order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found = list(command_parsers(sub))
                yield from ((f"{name} {rest}".strip(), p) for rest, p in found) if found else [(name, sub)]


def _accept_verbose_after_the_command(parser: argparse.ArgumentParser) -> None:
    """``ranker models activate v3 -v`` means ``ranker -v models activate v3``."""
    for _, command in command_parsers(parser):
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log debug messages and print the traceback of any error")


def main(argv: list[str] | None = None) -> int:
    try:
        import ranker.rank.features  # noqa: F401  (validates RANKER_EXTRA_FEATURES)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # every error ends in one line; a bug keeps its traceback in the log
        message = user_message(exc)
        if args.verbose:
            traceback.print_exc()
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return USER_ERROR
        log = _log_traceback(exc, sys.argv[1:] if argv is None else argv)
        where = f"details in {log}" if isinstance(log, Path) else f"the traceback could not be saved ({log})"
        then = "the traceback is above" if args.verbose else "rerun with -v to see the traceback"
        print(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc), limit=200)}; {where}; {then}",
              file=sys.stderr)
        return UNEXPECTED_ERROR


def user_message(exc: BaseException) -> str | None:
    """The one line an operator needs for an error they can fix, or None for a bug."""
    from sqlalchemy.exc import DatabaseError as SQLDatabaseError
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, (RankerError, ValueError)):  # plain ValueErrors carry operator messages too
        return _one_line(str(exc))
    if isinstance(exc, OperationalError) or type(exc) is SQLDatabaseError:  # not IntegrityError and the like
        return _database_message(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return _path_message(exc)
    if isinstance(exc, FileNotFoundError):  # raised by our code with its own message
        return _one_line(str(exc))
    return None


def _database_message(exc: Exception) -> str:
    from ranker.data.db import database_url, mask_url

    reason = _one_line(str(getattr(exc, "orig", None) or exc).split("\n")[0])
    return (f"database {mask_url(database_url())}: {reason}. Check that {config.DATABASE_URL_ENV} names a SQLite "
            "file or PostgreSQL database this user may write; `ranker db upgrade` creates or updates its tables")


def _path_message(exc: OSError) -> str:
    path = exc.filename2 or exc.filename  # a failed rename names its destination second
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file or folder; check the path (a new file's folder must exist)"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder; give the path of a file"
    if isinstance(exc, NotADirectoryError):
        return f"{path}: part of the path is a file, not a folder; check the path"
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied; use a path this user may read and write, or change its permissions"
    if isinstance(exc, FileExistsError):
        return f"{path} already exists; remove it or choose another path"
    return f"{path}: {exc.strerror or exc}; check the path, its permissions and the free disk space"


def _one_line(text: str, limit: int | None = None) -> str:
    line = " ".join(part.strip() for part in text.splitlines() if part.strip()) or "(no message)"
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


def error_log_path() -> Path:
    """Where unexpected errors are logged: ``ERROR_LOG`` in the data folder, read at call time."""
    return Path(config.DATA_DIR) / ERROR_LOG


def _log_traceback(exc: BaseException, argv: list[str]) -> Path | str:
    """Append the traceback to the error log, or to the one in the temporary folder when the data
    folder cannot be written. Returns the file written, or why none could be."""
    entry = (f"--- {datetime.now().isoformat(timespec='seconds')} ranker {' '.join(argv)}\n"
             + "".join(traceback.format_exception(exc)))
    reasons = []
    for path in (error_log_path(), Path(tempfile.gettempdir()) / ERROR_LOG):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.stat().st_size > ERROR_LOG_MAX_BYTES:
                path.replace(path.with_name(path.name + ".1"))
            with path.open("a", encoding="utf-8") as out:
                out.write(entry)
            return path.resolve()
        except OSError as err:
            reasons.append(f"{path}: {err.strerror or err}")
    return "; ".join(reasons)


__all__ = ["main", "CLIError", "positive_int", "positive_float", "command_parsers", "user_message",
           "error_log_path"]
