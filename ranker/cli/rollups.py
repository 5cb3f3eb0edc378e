"""CLI: ``ranker rollups refresh``: the daily rollups the dashboard's metric pages read."""

from __future__ import annotations

import argparse
import json


def cmd_rollups(args: argparse.Namespace) -> int:
    from ranker.data import rollups
    from ranker.data.db import ensure_schema, get_engine

    done = rollups.refresh(ensure_schema(get_engine()), full=args.full)
    if args.json:
        print(json.dumps({"days": [d.isoformat() for d in done.days], "full": done.full,
                          "through": None if done.through is None else done.through.isoformat(),
                          "seconds": round(done.seconds, 3)}))
    else:
        print(done.summary())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    roll = sub.add_parser("rollups", help="the daily rollups of the served-traffic log (the dashboard's metrics)"
                          ).add_subparsers(dest="rollups_command", required=True, metavar="ACTION")
    refresh = roll.add_parser(
        "refresh", help="roll up the days completed or changed since the last refresh (simulate and the "
                        "dashboard do it too)")
    refresh.add_argument("--full", action="store_true", help="rebuild every day from the log")
    refresh.add_argument("--json", action="store_true")
    refresh.set_defaults(handler=cmd_rollups)
