"""CLI: dataset, train, models, recommend, retrain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ranker import config, keys
from ranker.cli import CLIError, positive_float, positive_int  # noqa: E402
from ranker.cli.main import add_features_arg, use_features
from ranker.flows import personalised_flows
from ranker.rank.spec import ARCHS

D = config.DEFAULTS  # every default flag value comes from here


def cmd_dataset(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.rank.dataset import DatasetConfig, build_dataset

    for flag, path in (("--output", args.output), ("--val-output", args.val_output)):
        if path is not None and path.is_dir() and path.suffix != ".parquet":  # say so now, not after the build
            raise CLIError(f"{flag} {path} is a folder; give a file path such as {path / 'ranker_train.csv'}")
    cfg = DatasetConfig(output=args.output, neg_ratio=args.neg_ratio, source=args.source,
                        window_days=args.window_days, base_model=args.base_model, refit_days=args.refit_days,
                        val_output=args.val_output, val_fraction=args.val_fraction, seed=args.seed,
                        engine=args.engine or DatasetConfig.engine, format=args.format,
                        spark_master=args.master, spark_input=args.from_parquet)
    engine = ensure_schema(get_engine())
    chosen = use_features(args, engine)
    summary = build_dataset(engine, cfg, show_bar=True)
    print(f"wrote {summary.rows:,} rows ({summary.positives:,} positives, {summary.groups:,} lists; "
          f"{chosen} features) to {summary.path}")
    if summary.val_path:
        print(f"wrote {summary.val_rows:,} validation rows ({summary.val_positives:,} positives; the latest "
              f"lists) to {summary.val_path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.ops.pipeline import train_and_register
    from ranker.rank.train import TrainConfig

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, arch=args.arch,
                      seed=args.seed, max_pairs_per_positive=args.max_pairs_per_positive,
                      max_memory=args.max_memory, loss=args.loss, **_position_args(args))
    bar = tqdm(total=cfg.epochs, desc="train", unit="epoch", file=sys.stderr)

    def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
        bar.update(1)
        val = f"{val_loss:.4f}" if val_loss is not None else "-"
        bar.write(f"epoch {epoch:3d}  train loss {train_loss:.4f}  val loss {val}", file=sys.stderr)

    engine = ensure_schema(get_engine())
    use_features(args, engine)
    try:
        outcome = train_and_register(
            engine, args.data, cfg, val=args.val, val_split=args.val_split, output_dir=args.output_dir,
            activate=True if args.activate else (False if args.no_activate else None),
            min_positives=args.min_positives, on_epoch=on_epoch, split_by=args.split_by,
            stream=True if args.stream else (False if args.no_stream else None), stream_rows=args.stream_rows)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(outcome.__dict__, default=str))
        return 0
    print()
    _print_sets(outcome.sets)
    m = outcome.metrics
    print(f"\nevaluated on {m['evaluated_on']} data: {m['rows']:,} rows, {m['groups']:,} lists")
    print(f"{'':8} {'NDCG@10':>8} {'AUC':>8} {'pair acc':>9}")
    for name in ("model", "rule", "base"):
        r = m[name]
        print(f"{name:8} {_f(r[keys.NDCG_AT_10]):>8} {_f(r[keys.AUC]):>8} {_f(r[keys.PAIRWISE_ACCURACY]):>9}")
    for kind, path in outcome.paths.items():
        print(f"saved {kind}: {path}")
    state = "active" if outcome.activated else "registered (not active)"
    print(f"version {outcome.version}: {state}")
    for note in outcome.notes:
        print(f"note: {note}")
    return 0


def _position_args(args: argparse.Namespace) -> dict:
    """TrainConfig's position-correction fields from the flags (a --propensities file is read now)."""
    from ranker.rank.propensity import read_curve

    if args.propensities is not None and args.position_correction == "none":
        raise CLIError("--propensities is for --position-correction ipw or auto; drop one of them")
    curve = read_curve(args.propensities) if args.propensities is not None else None
    return {"position_correction": args.position_correction, "propensities": curve}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _print_sets(sets: dict[str, dict]) -> None:
    """One line per data set: its size, its time span and what it was used for."""
    for name, d in sets.items():
        span = f"{d['from']} .. {d['to']}" if d.get("from") else "(no event_time)"
        how = f", {d['split']} split" if d.get("split") in ("time", "random") else ""
        print(f"{name:10} {d['rows']:>8,} rows {d['lists']:>7,} lists  {span}  ({d['role']}{how})  {d['path']}")


def cmd_models(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.rank import registry

    engine = ensure_schema(get_engine())
    if args.models_command == "list":
        rows = registry.list_versions(engine)
        if args.json:
            print(json.dumps([{"version": r.version, "active": r.is_active, "created_at": str(r.created_at),
                               "metrics": r.metrics, "path": r.path} for r in rows]))
            return 0
        if not rows:
            print(f"no model versions; serving the rule-based ranker. Train with "
                  f"`ranker train --data {config.DATA_DIR / 'ranker_train.csv'}`")
            return 0
        print(f"{'':2}{'version':8} {'created':19} {'NDCG@10':>8} {'rule':>8} {'AUC':>7}  path")
        for r in rows:
            m = r.metrics or {}
            model, rule = m.get("model") or {}, m.get("rule") or {}
            print(f"{'*' if r.is_active else ' '} {r.version:8} {r.created_at:%Y-%m-%d %H:%M:%S} "
                  f"{_f(model.get(keys.NDCG_AT_10)):>8} {_f(rule.get(keys.NDCG_AT_10)):>8} "
                  f"{_f(model.get(keys.AUC)):>7}  {r.path}")
        if registry.active_version(engine) is None:
            print("(no active version: serving the rule-based ranker)")
        return 0
    if args.models_command == "activate":
        changed = registry.activate_version(engine, args.version)
        print(f"active: {args.version}" + ("" if changed else " (it already was; nothing recorded)"))
        return 0
    if args.models_command == "rollback":
        print(f"rolled back; active: {registry.rollback(engine)}")
        return 0
    raise AssertionError(args.models_command)


def cmd_recommend(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.serving.service import recommend

    rec = recommend(args.user_id, args.flow, args.k, engine=ensure_schema(get_engine()), source="cli")
    if args.json:
        print(json.dumps(rec.to_dict()))
        return 0
    how = f"reranked by {rec.model_version}" if rec.reranked else f"{rec.model_version} (not reranked)"
    print(f"user {rec.user_id}, flow {rec.flow}: {how}; candidates from {rec.base_model}")
    if rec.fallback_reason:
        print(f"note: {rec.fallback_reason}")
    names = list(rec.items[0].features) if rec.items else []
    print(f"{'pos':>3} {'item':>7} {'score':>8} {'base#':>5} " + " ".join(f"{n[:10]:>10}" for n in names))
    for it in rec.items:
        score = "-" if it.score is None else f"{it.score:.4f}"
        print(f"{it.position + 1:>3} {it.item_id:>7} {score:>8} {it.base_rank + 1:>5} "
              + " ".join(f"{it.features[n]:>10.3f}" for n in names))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.ops.pipeline import retrain
    from ranker.rank.dataset import DatasetConfig
    from ranker.rank.train import TrainConfig

    out = Path(args.output)
    dcfg = DatasetConfig(output=out, val_output=out.with_name(out.stem + "_val.csv"),
                         neg_ratio=args.neg_ratio, window_days=args.window_days, source=args.source)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, arch=args.arch,
                       seed=args.seed, max_pairs_per_positive=args.max_pairs_per_positive,
                       max_memory=args.max_memory, loss=args.loss, **_position_args(args))
    engine = ensure_schema(get_engine())
    use_features(args, engine)
    report = retrain(engine, dcfg, tcfg, args.output_dir, show_bar=True,
                     val_split=args.val_split, holdout_split=args.holdout_split)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print(f"lists split by time: train on the earliest, pick the epoch on the next {args.val_split:g}, "
          f"gate promotion on the latest {args.holdout_split:g}")
    _print_sets(report["sets"])
    h = report["sets"]["holdout"]
    print(f"\npromotion gate, NDCG@10 on the holdout ({h['lists']:,} lists, never used in training):")
    print(f"candidate {report['candidate']}: {report['candidate_ndcg@10']:.4f} "
          f"(validation: {_f(report['candidate_val_ndcg@10'])})")
    if report["active_before"]:
        print(f"active {report['active_before']}: {_f(report['active_ndcg@10'])}")
    print(f"rule-based ranker: {_f(report['rule_ndcg@10'])}")
    print(f"base order: {_f(report['base_ndcg@10'])}; {report['vs_base']['sentence']}")
    print(f"train/serve parity: {report['parity']['reason']}")
    print(f"{report['candidate']} {report['verdict']}")
    if report.get("base_order_hold"):
        print(f"do no harm: {report['base_order_hold']['reason']}; the treatment arm serves it until a model "
              "passes this gate or one is activated (`ranker models activate`)")
    if report["backup"]:
        print(f"backup of the previous active file: {report['backup']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_dataset(sub)
    _add_train(sub)
    _add_models(sub)
    _add_recommend(sub)
    _add_retrain(sub)


def _add_dataset(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("dataset", help="build ranker training data (leak-free, point in time)")
    ds.add_argument("--output", type=Path, default=config.DATA_DIR / "ranker_train.csv")
    ds.add_argument("--neg-ratio", type=positive_float, default=D.neg_ratio,
                    help="negatives sampled per positive within the same list (default %(default)s)")
    ds.add_argument("--source", choices=("feedback", "impressions"), default="feedback")
    ds.add_argument("--window-days", type=positive_float, default=D.window_days,
                    help="feedback: use lists from the last N days; the base model sees only earlier data")
    ds.add_argument("--base-model", default=D.base_model, help="base model that gives model_score")
    ds.add_argument("--refit-days", type=positive_float, default=D.refit_days,
                    help="feedback: model_score comes from the base model refitted this often over the window, "
                         "as serving would have had it (default %(default)s)")
    ds.add_argument("--val-output", type=Path, default=None,
                    help="also write the latest --val-fraction of lists here (a time split)")
    ds.add_argument("--val-fraction", type=float, default=D.val_fraction)
    ds.add_argument("--seed", type=int, default=D.seed)
    ds.add_argument("--engine", choices=("polars", "python", "spark"), default=None,
                    help="feedback: compute the rows column by column (polars, the default), list by list (python) "
                         "or with PySpark (spark; see docs/scaling.md#spark)")
    ds.add_argument("--master", default=None,
                    help="--engine spark: the Spark master URL (local[2], spark://host:7077, yarn; default local[*])")
    ds.add_argument("--from-parquet", type=Path, default=None, metavar="DIR",
                    help="--engine spark: read the log from Parquet exports in DIR (interactions.parquet, "
                         "impressions.parquet, outcomes.parquet, served_lists.parquet) instead of the database")
    ds.add_argument("--format", choices=("csv", "parquet"), default=None,
                    help="csv, or parquet: a folder of files partitioned by day, for `ranker train --data FOLDER` "
                         "(default: parquet when --output ends in .parquet, else csv)")
    add_features_arg(ds)
    ds.set_defaults(handler=cmd_dataset)


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train the neural ranker (pairwise or listwise loss)")
    _train_args(tr)
    tr.add_argument("--data", type=Path, default=config.DATA_DIR / "ranker_train.csv")
    tr.add_argument("--val", type=Path, default=None, help="validation CSV (writes ranker_v1_best.pth)")
    tr.add_argument("--val-split", type=share, default=D.val_split,
                    help="without --val: hold out this share of the lists for validation, the latest by "
                         "event_time (see --split-by)")
    tr.add_argument("--split-by", default=D.split_by, metavar="time|random",
                    help="--val-split holds out the latest lists (time, the default) or random ones (random)")
    tr.add_argument("--min-positives", type=positive_int, default=D.min_positives)
    how = tr.add_mutually_exclusive_group()
    how.add_argument("--stream", action="store_true",
                     help="read the Parquet --data in chunks of whole lists, so memory follows --stream-rows and "
                          f"not the data (default: Parquet of {D.stream_min_rows:,} rows or more streams)")
    how.add_argument("--no-stream", action="store_true", help="load the data whole, however large")
    tr.add_argument("--stream-rows", type=positive_int, default=D.stream_rows, metavar="N",
                    help="streaming: rows read at a time, whole lists (default %(default)s)")
    act = tr.add_mutually_exclusive_group()
    act.add_argument("--activate", action="store_true", help="serve the new version at once")
    act.add_argument("--no-activate", action="store_true", help="only register the new version")
    tr.add_argument("--json", action="store_true")
    add_features_arg(tr)
    tr.set_defaults(handler=cmd_train)


def _add_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="model registry").add_subparsers(
        dest="models_command", required=True, metavar="ACTION")
    ls = models.add_parser("list", help="versions with metrics; * marks the active one")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=cmd_models)
    a = models.add_parser("activate", help="serve VERSION (or 'rule' for the rule-based ranker)")
    a.add_argument("version")
    a.set_defaults(handler=cmd_models)
    models.add_parser("rollback", help="re-activate the previously active version").set_defaults(
        handler=cmd_models)


def _add_recommend(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recommend", help="one served list")
    rec.add_argument("--user-id", type=int, required=True)
    rec.add_argument("--flow", required=True,
                     help=", ".join(personalised_flows()) + "; or trending[-ITEM_TYPE] (never reranked)")
    rec.add_argument("--k", type=positive_int, default=config.DEFAULT_K)
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(handler=cmd_recommend)


def _add_retrain(sub: argparse._SubParsersAction) -> None:
    rt = sub.add_parser("retrain", help="dataset + train + evaluate; promote only if no worse")
    _train_args(rt)
    rt.add_argument("--output", type=Path, default=config.DATA_DIR / "ranker_train.csv")
    rt.add_argument("--neg-ratio", type=positive_float, default=D.neg_ratio)
    rt.add_argument("--window-days", type=positive_float, default=D.window_days)
    rt.add_argument("--source", choices=("feedback", "impressions"), default="feedback")
    rt.add_argument("--val-split", type=float, default=D.retrain_val_split,
                    help="share of the lists, after the training ones by time, that picks the best epoch "
                         "(default %(default)s)")
    rt.add_argument("--holdout-split", type=float, default=D.holdout_split,
                    help="share of the lists, the latest, that the promotion gate compares on "
                         "(default %(default)s)")
    rt.add_argument("--json", action="store_true")
    add_features_arg(rt)
    rt.set_defaults(handler=cmd_retrain)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=positive_int, default=D.epochs)
    p.add_argument("--batch-size", type=positive_int, default=D.batch_size)
    p.add_argument("--lr", type=positive_float, default=D.lr)
    p.add_argument("--output-dir", type=Path, default=config.MODELS_DIR)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--arch", choices=tuple(ARCHS), default=D.arch)
    p.add_argument("--max-pairs-per-positive", type=positive_int, default=D.max_pairs_per_positive,
                   help="each epoch pairs a positive with at most this many negatives of its list, sampled; "
                        "lists with fewer keep all their pairs (default %(default)s)")
    p.add_argument("--loss", choices=config.LOSSES, default=D.loss,
                   help="pairwise (RankNet over sampled pairs), or listwise over whole lists: listnet, "
                        "lambdaloss (NDCG-Loss2++; lists over 128 rows are cut into random pieces) "
                        "(default %(default)s)")
    p.add_argument("--position-correction", choices=("auto", "ipw", "none"), default=D.position_correction,
                   help="ipw: weight each pair by 1/p(position of its positive), p from --propensities, the saved "
                        "estimate (`ranker propensity estimate`) or the logged swaps; auto: ipw when p can be had, "
                        "else none (default %(default)s)")
    p.add_argument("--propensities", type=Path, default=None, metavar="FILE",
                   help="ipw: p(k)/p(1) from this JSON file (a list, or `ranker propensity estimate --json`)")
    p.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE",
                   help="refuse to train when the estimated memory exceeds SIZE, e.g. 2G, 512M or bytes "
                        f"(default: {D.max_memory_fraction:.0%} of this machine's RAM)")


def share(text: str) -> float:
    """argparse type: a share of the lists, 0 <= x < 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a share of the lists, at least 0 and below 1 (e.g. 0.2), "
                                         f"got {text}")
    return value


def memory_size(text: str) -> int:
    """argparse type: bytes, from e.g. ``2G``, ``512M`` or a number of bytes."""
    from ranker.rank.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
