"""Cold start for view-only users: what they are shown with and without a profile from their views.

    python bench/cold_start.py [--as-of ISO] [--json]

On the demo world in ``RANKER_DATABASE_URL`` (with a trained, active ranker: ``ranker demo init``,
``ranker dataset``, ``ranker train``, optionally ``ranker simulate``), every user who had viewed but
never engaged strictly before ``--as-of`` (default: the world clock) is asked for every flow of
their role. The base models are fitted twice, in memory, on the history before ``--as-of``: with
views weighing 0 (each such user then gets the trending list, as before cold start) and with
:data:`ranker.base.base.VIEW_WEIGHT` (a personalised list: the base order in the control arm,
reranked by the active model, with the serving diversity method, in the treatment arm). The demo
world's click model gives every list its expected CTR; the oracle orders the same candidates.

Each (user, flow) is one paired list. The difference to trending is given with a bootstrap 95 %
interval over users. Nothing is asserted: it measures and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

import numpy as np

BOOTSTRAP = 2000


def measure(as_of: datetime | None = None, k: int = 10) -> dict:
    from sqlalchemy import select

    import ranker.base.base as base_models
    from ranker import config
    from ranker.base import TrainingData
    from ranker.base.store import fit_models
    from ranker.data.clock import serve_now
    from ranker.data.db import get_engine, session_scope
    from ranker.data.schema import User
    from ranker.flows import own_flows
    from ranker.ops.report import cohorts_at
    from ranker.rank.diversity import rerank
    from ranker.rank.features import make_context
    from ranker.serving.candidates import candidates
    from ranker.serving.service import service
    from ranker.sim.oracle import load_oracle

    engine = get_engine()
    with session_scope(engine) as s:
        oracle, as_of = load_oracle(s), as_of or serve_now(s)
        users = s.execute(select(User.id, User.role, User.category, User.field).order_by(User.id)).all()
    if oracle is None:
        raise SystemExit("no synthetic ground truth in this database: run `ranker demo init` first")
    svc = service(engine)
    catalog, views, other = svc.counts(as_of)
    scorer, reason = svc.scorer()
    method = svc.settings().diversity
    knob = [] if method.knob is None else [method.knob]
    cohort = cohorts_at(engine, as_of)
    viewers = [u for u in users if cohort.get(u.id) == "view_only"]
    data = TrainingData.from_engine(engine, as_of)
    saved = base_models.VIEW_WEIGHT
    try:
        base_models.VIEW_WEIGHT = 0.0
        without = fit_models(data, ["ensemble"])["ensemble"]
    finally:
        base_models.VIEW_WEIGHT = saved
    with_views = fit_models(data, ["ensemble"])["ensemble"]

    def expected(ctx, order) -> float:
        return oracle.show(ctx, order, np.zeros(len(order)), np.ones(len(ctx))).expected_clicks / k

    rows = []
    for u in viewers:
        for flow in own_flows(u.role):
            lists = {}
            for name, model in (("trending", without), ("personalised", with_views)):
                got = candidates(u.id, flow, config.FETCH_MULTIPLIER * k, engine=engine, model=model, as_of=as_of)
                if len(got) < k:
                    break
                idx = catalog.index(got.item_ids)
                ctx = make_context(catalog, idx, views[idx], other[idx], got.scores, as_of, u.id, u.category,
                                   u.field)
                lists[name] = (got.fallback, ctx)
            if len(lists) < 2 or not lists["trending"][0] or lists["personalised"][0]:
                continue
            trend, pers = lists["trending"][1], lists["personalised"][1]
            rows.append({
                "user": u.id, "flow": flow,
                "trending": expected(trend, np.arange(k)),
                "base": expected(pers, np.arange(k)),
                "neural": expected(pers, rerank(pers, scorer, k, method.method, *knob).order),
                "rule": expected(pers, rerank(pers, svc.rule_scorer(), k, method.method, *knob).order),
                "oracle over trending": expected(trend, oracle.best_order(trend, k)),
                "oracle over personalised": expected(pers, oracle.best_order(pers, k)),
            })
    return {"as_of": as_of.isoformat(), "view_weight": saved, "scorer": scorer.version, "scorer_note": reason,
            "diversity": method.label, "users": len({r["user"] for r in rows}), "lists": len(rows),
            "summary": _summary(rows), "rows": rows}


def _summary(rows: list[dict]) -> dict:
    """Mean expected CTR of each list kind, and its difference to trending with a bootstrap 95 %
    interval over users (a user's flows are resampled together)."""
    if not rows:
        return {}
    names = [n for n in rows[0] if n not in ("user", "flow")]
    users = sorted({r["user"] for r in rows})
    by_user = {u: [r for r in rows if r["user"] == u] for u in users}
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(users), size=(BOOTSTRAP, len(users)))
    out = {}
    for name in names:
        mean = float(np.mean([r[name] for r in rows]))
        diffs = []
        for d in draws:
            picked = [r for i in d for r in by_user[users[i]]]
            diffs.append(np.mean([r[name] - r["trending"] for r in picked]))
        out[name] = {"expected_ctr": mean, "vs_trending": mean - float(np.mean([r["trending"] for r in rows])),
                     "vs_trending_ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--as-of", type=datetime.fromisoformat, default=None,
                   help="the request time (default: the world clock)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = measure(args.as_of)
    if args.json:
        print(json.dumps(result, default=str, indent=1))
        return 0
    print(f"view-only users before {result['as_of']}: {result['users']} users, {result['lists']} lists "
          f"(view weight {result['view_weight']:g}, scorer {result['scorer']}, diversity {result['diversity']})")
    for name, s in result["summary"].items():
        low, high = s["vs_trending_ci"]
        print(f"  {name:25} expected CTR {s['expected_ctr']:.4f}  vs trending {s['vs_trending']:+.4f} "
              f"(95% CI {low:+.4f} to {high:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
