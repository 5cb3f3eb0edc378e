"""Impression-write load on PostgreSQL: serving's per-request logging against batched COPY.

    python bench/pg_writes.py [--db-url postgresql+psycopg://postgres@127.0.0.1:5432/ranker_writes]
                              [--lists 2000] [--batch 500] [--runs 3] [--json]

Every reranked list serving answers is logged as one served list and k = 10 impressions. This
benchmark writes ``--lists`` such lists into a scratch database (the small demo world, built
first, so the foreign keys hold) two ways, one after the other in each run:

- **per request**: :func:`ranker.serving.experiments.log_served`, serving's own call, one short
  transaction per list (insert the impressions, insert the list, read back the impression ids);
- **batched**: ``--batch`` lists per transaction through ``COPY .. FROM STDIN``
  (:func:`ranker.sim.synth._copy_rows`, the demo world's bulk load), as a background writer
  that queues lists would.

It prints lists/s and impression rows/s for each (medians over ``--runs``), from one client
process on this machine. The database is dropped at the end. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from ranker.data.db import make_engine  # noqa: E402
from ranker.data.schema import Impression, Item, ServedList, User  # noqa: E402
from ranker.serving.experiments import log_served, served_list_metrics  # noqa: E402
from ranker.sim.synth import _copy_rows, build_world  # noqa: E402

K = 10
FEATURES = {"model_score": 0.5, "recency": 0.5, "popularity": 0.5, "diversity": 0.5}


def _lists(users: list[int], items: list[int], n: int, start: datetime) -> list[SimpleNamespace]:
    """``n`` reranked lists as serving's Recommendation carries them (request id, user, items)."""
    out = []
    for i in range(n):
        shown = [items[(i * 7 + j * 13) % len(items)] for j in range(K)]
        out.append(SimpleNamespace(
            request_id=uuid.uuid4().hex, user_id=users[i % len(users)], flow="developer-startup", arm="treatment",
            reranked=True, model_version="bench", served_at=start + timedelta(milliseconds=i),
            items=[SimpleNamespace(item_id=it, position=j, score=1.0 - j / K, features=FEATURES)
                   for j, it in enumerate(shown)]))
    return out


ATTRS = {"category": ["fintech"] * K, "field": ["ml"] * K, "type": ["startup"] * K, "age_days": [3.0] * K}


def per_request(engine, lists) -> float:  # noqa: ANN001
    t = time.perf_counter()
    for rec in lists:
        log_served(engine, rec, ATTRS, source="bench")
    return time.perf_counter() - t


def batched(engine, lists, batch: int) -> float:  # noqa: ANN001
    metrics = served_list_metrics(ATTRS["category"], ATTRS["field"], ATTRS["type"], ATTRS["age_days"])
    t = time.perf_counter()
    for a in range(0, len(lists), batch):
        part = lists[a:a + batch]
        impressions = [{"request_id": r.request_id, "user_id": r.user_id, "item_id": it.item_id, "flow": r.flow,
                        "arm": r.arm, "position": it.position, "score": it.score, "features": it.features,
                        "model_version": r.model_version, "served_at": r.served_at} for r in part for it in r.items]
        summaries = [{"request_id": r.request_id, "user_id": r.user_id, "flow": r.flow, "arm": r.arm, "k": K,
                      "reranked": True, "model_version": r.model_version, "served_at": r.served_at,
                      "source": "bench", "context": None, **metrics} for r in part]
        with engine.begin() as conn:
            _copy_rows(conn, Impression.__table__, impressions)
            _copy_rows(conn, ServedList.__table__, summaries)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/ranker_writes")
    p.add_argument("--lists", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    url = make_url(args.db_url)
    admin = make_engine(url.set(database="postgres").render_as_string(hide_password=False)) \
        .execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        build_world(engine, seed=1, scale="small")
        with engine.connect() as conn:
            users = list(conn.scalars(select(User.id)))
            items = list(conn.scalars(select(Item.id)))
        start = datetime(2030, 1, 1)
        results: dict[str, list[float]] = {"per request": [], f"batched ({args.batch} lists/transaction)": []}
        for run in range(args.runs):
            results["per request"].append(args.lists / per_request(
                engine, _lists(users, items, args.lists, start + timedelta(days=2 * run))))
            results[f"batched ({args.batch} lists/transaction)"].append(args.lists / batched(
                engine, _lists(users, items, args.lists, start + timedelta(days=2 * run + 1)), args.batch))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        admin.dispose()
    table = {name: {"lists_per_s": statistics.median(v), "impressions_per_s": K * statistics.median(v),
                    "runs": [round(x) for x in v]} for name, v in results.items()}
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{args.lists} lists of {K} impressions per run, {args.runs} runs, one client")
    print(f"{'write':34} {'lists/s':>9} {'impressions/s':>14}  runs (lists/s)")
    for name, r in table.items():
        print(f"{name:34} {r['lists_per_s']:>9,.0f} {r['impressions_per_s']:>14,.0f}  {r['runs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
