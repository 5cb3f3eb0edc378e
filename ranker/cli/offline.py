"""CLI: ``ranker offline``, ranking quality over whole candidate lists of a recent period."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from ranker import config
from ranker.cli import positive_float

D = config.DEFAULTS  # every default flag value comes from here


def cmd_offline(args: argparse.Namespace) -> int:
    from ranker.data.clock import serve_now
    from ranker.data.db import ensure_schema, get_engine, session_scope
    from ranker.evaluation.offline import offline_table
    from ranker.rank.dataset import candidate_lists
    from ranker.serving.service import service

    engine = ensure_schema(get_engine())
    with session_scope(engine) as s:
        end = serve_now(s)
    start = end - timedelta(days=args.days)
    svc = service(engine)
    neural, reason = svc.scorer()
    scorers = {"rule": svc.rule_scorer()}
    if reason is None:
        scorers[f"neural {neural.version}"] = neural
    if args.lightgbm:
        scorers.update(_peer(engine))
    lists = candidate_lists(engine, start, end, base_model=args.base_model)
    table = offline_table(lists, scorers)
    if int(table["lists"].iloc[0]) == 0:
        raise ValueError(f"no list served between {start:%Y-%m-%d} and {end:%Y-%m-%d} logged its candidates "
                         "and an engaged one; widen --days (lists served through recommend() do not log "
                         "their candidates)")
    if args.json:
        print(json.dumps({"start": start.isoformat(), "end": end.isoformat(),
                          "policies": table.reset_index(names="policy").to_dict("records")}))
        return 0
    print(f"lists served {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} with logged candidates, "
          f"{int(table['lists'].iloc[0]):,} with an engaged candidate")
    print(table.drop(columns="lists").round(4).to_string())
    if reason is not None:
        print(f"note: no neural ranker is active ({reason})")
    print("note: candidates that were not shown count as not relevant; use a period the models did not train on")
    return 0


def _peer(engine) -> dict:
    """The LightGBM peer of the active model (its training file, hash-checked), or nothing and why."""
    from ranker.ops.report import lightgbm_peer

    scorer, info = lightgbm_peer(engine)
    if scorer is None:
        print(f"note: {info.get('skipped', 'LightGBM peer skipped')}")
        return {}
    return {"lightgbm": scorer}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("offline", help="NDCG@10, MAP@10 and recall@10 of base, rule and neural over whole "
                                       "candidate lists of the latest days")
    p.add_argument("--days", type=positive_float, default=D.holdout_days,
                   help="the period: this many days before the clock (default %(default)s)")
    p.add_argument("--base-model", default=D.base_model, help="the base model that proposes the candidates")
    p.add_argument("--lightgbm", action="store_true",
                   help="also the LightGBM peer, trained on the active model's data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_offline)
