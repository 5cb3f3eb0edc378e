"""CLI: ``ranker import movielens|recbole|csv`` (R-IMPORT) and ``ranker evaluate`` (time-split, end to end)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ranker import config
from ranker.cli import positive_int  # noqa: E402

D = config.DEFAULTS  # every default flag value comes from here


def _rating(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite rating, got {text}")
    return value


def _write_options(args: argparse.Namespace) -> dict:
    return {"append": args.append, "force": args.force, "show_bar": not args.json,
            "positive_min": getattr(args, "positive_min", 4.0)}


from ranker.cli.main import add_features_arg  # noqa: E402


def cmd_import(args: argparse.Namespace) -> int:
    from ranker.data import importing
    from ranker.data.db import get_engine, mask_url

    if args.import_command == "movielens":
        data = importing.read_movielens(args.path)
    elif args.import_command == "recbole":
        data = importing.read_recbole(args.path, args.name)
    else:
        data = importing.read_csv_export(args.interactions, args.items, args.users)
    engine = get_engine()
    summary = importing.write_import(engine, data, **_write_options(args))
    if summary.mode == "force":  # the registry's rows went with the old world; so does the tools' copy
        from ranker.rank.registry import sync_active_file

        sync_active_file(engine)
    for warning in summary.warnings:  # one line per field; --json carries them too
        print(f"warning: {warning.message()}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.as_dict()))
        return 0
    verb = {"new": "imported", "append": "appended", "force": "replaced the database with"}[summary.mode]
    print(f"{verb} {summary.source} into {mask_url(engine.url.render_as_string(hide_password=False))} "
          f"in {summary.seconds:.1f}s")
    print(f"  users         {summary.users:>10,}  (ids: {summary.user_ids})")
    print(f"  items         {summary.items:>10,}  (ids: {summary.item_ids})")
    print(f"  interactions  {summary.interactions:>10,}  ({summary.views:,} views, {summary.positives:,} "
          f"explicit positives, from {summary.ratings:,} ratings)")
    print(f"  history       {summary.first_interaction} .. {summary.last_interaction}; clock set to {summary.clock}")
    print("next: `ranker evaluate --time-split 0.8,0.1,0.1` compares base, rule and neural orders on this data; "
          "serve it with `ranker recommend --flow user-item --user-id ID`")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ranker.cli import CLIError
    from ranker.cli.main import use_features
    from ranker.data.db import ensure_schema, get_engine
    from ranker.evaluation.evaluate import evaluate_end_to_end
    from ranker.rank.train import TrainConfig, TrainingError

    tcfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    engine = ensure_schema(get_engine())
    use_features(args, engine)
    try:
        result = evaluate_end_to_end(engine, split=args.time_split, fetch_multiplier=args.candidates_per_slot,
                                     base_model=args.base_model, k=args.k, train_config=tcfg,
                                     min_positives=args.min_positives, seed=args.seed, show_bar=not args.json)
    except TrainingError as exc:
        raise CLIError(f"training the neural ranker failed: {exc}") from None
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(result.table())
    print(f"took {result.seconds['total']:.1f}s "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in result.seconds.items() if k != 'total')})",
          file=sys.stderr)
    return 0


def _mode_args(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true",
                      help="add to a non-empty database (integer ids must not collide with existing ones)")
    mode.add_argument("--force", action="store_true",
                      help="replace everything in a non-empty database (like `ranker demo init --force`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_import)


def _positive_min_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--positive-min", type=_rating, default=D.positive_min_rating,
                   help="a rating at or above this is also a `like` (default %(default)s)")


EVALUATE_DESCRIPTION = (
    "Fit the base model on the first part of time, train the neural ranker on the "
    "next, and compare the base order, the rule-based rerank and the neural rerank on the last "
    "(NDCG, Recall, ILD, freshness). Nothing is registered or activated.")


def add_commands(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import", help="import real data into an empty database (see docs/importing.md)",
        description="Import real data in one transaction: on any error the database is unchanged. "
                    "A non-empty database is refused unless --append or --force is given.",
    ).add_subparsers(dest="import_command", required=True, metavar="SOURCE")

    ml = imp.add_parser("movielens", help="GroupLens ml-100k (u.data, u.item[, u.user]) or ml-1m "
                                          "(ratings.dat, movies.dat[, users.dat]), detected from the files")
    ml.add_argument("path", type=Path, help="the unzipped MovieLens folder")
    _mode_args(ml)

    rb = imp.add_parser("recbole", help="RecBole atomic files: <name>.inter, <name>.item[, <name>.user]")
    rb.add_argument("path", type=Path, help="their folder, or the .inter file")
    rb.add_argument("--name", default=None, help="the data set name when the folder holds several")
    _positive_min_arg(rb)
    _mode_args(rb)

    cs = imp.add_parser("csv", help="a platform's own export as UTF-8 CSV files with a header row")
    cs.add_argument("--interactions", type=Path, required=True,
                    help="user_id,item_id,timestamp[,rating][,kind]; timestamp in unix seconds or ISO 8601")
    cs.add_argument("--items", type=Path, required=True,
                    help="item_id[,name,category,field,type,created_at,item_type]")
    cs.add_argument("--users", type=Path, default=None, help="user_id[,category,field,created_at,role]")
    _positive_min_arg(cs)
    _mode_args(cs)

    ev = sub.add_parser("evaluate", help="end-to-end offline evaluation on a time split: base vs rule vs "
                                         "neural rerank (base models alone: `ranker base evaluate`)",
                        description=EVALUATE_DESCRIPTION)
    ev.add_argument("--time-split", default=D.time_split,
                    help="fractions of the interactions, by time: base fit, ranker data, test (default %(default)s)")
    ev.add_argument("--base-model", default=D.base_model, help="base model that proposes the candidates")
    ev.add_argument("--k", type=positive_int, default=config.DEFAULT_K,
                    help="list length; candidates are --candidates-per-slot × k")
    ev.add_argument("--epochs", type=positive_int, default=D.epochs, help="ranker training epochs")
    ev.add_argument("--min-positives", type=positive_int, default=D.min_positives,
                    help="positives the ranker's training data needs at least")
    ev.add_argument("--seed", type=int, default=D.seed)
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--candidates-per-slot", type=positive_int, default=config.FETCH_MULTIPLIER, metavar="M",
                    help="the base model proposes M × k candidates per test user (default %(default)s)")
    add_features_arg(ev)
    ev.set_defaults(handler=cmd_evaluate)
