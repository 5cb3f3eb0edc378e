"""Base-model benchmarks: fit time on the default demo, candidate latency at 20k items.

    python bench/base.py [--quick] [--json]

Rows (``run(quick)`` returns them as dicts ``what / value / unit / target``):

- fit time of each base model on the default demo world (seed 42, ~89k
  interactions; the ensemble row is the blend alone, its members being reused);
- latency of one ``ranker.serving.candidates.candidates()`` request (SQL lookups of the user's
  role and engaged items, the world clock, then the ensemble's scoring of the
  flow's pool) over a 20k-item catalogue, p50 and p99, each the median over
  several runs of random requests across the four flows. Without ``--quick`` the
  catalogue is the large demo world (20k items, 20k users, 1.3M interactions;
  built in ~65 s); with ``--quick`` it is a synthetic catalogue of the same
  20k items and 20k users with 200k random engagements, written straight to
  SQLite, and a two-tower fitted for one epoch (latency does not depend on
  model quality).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ranker import keys

LATENCY_TARGET = "p99 <= 10 ms incl. rerank (SPEC §13)"


def _default_world(folder: Path):  # noqa: ANN202
    from ranker.data.db import make_engine
    from ranker.sim.synth import build_world

    engine = make_engine(f"sqlite:///{folder / 'default.db'}")
    build_world(engine, seed=42, scale="default")
    return engine


def fit_rows(folder: Path) -> list[dict]:
    """Fit time per model on the default demo world."""
    from ranker.base import MODEL_NAMES, TrainingData
    from ranker.base.store import fit_models
    from ranker.data.clock import serve_now
    from ranker.data.db import session_scope

    engine = _default_world(folder)
    with session_scope(engine) as s:
        cutoff = serve_now(s)
    t0 = time.perf_counter()
    data = TrainingData.from_engine(engine, cutoff)
    load = time.perf_counter() - t0
    timings: dict[str, float] = {}
    fit_models(data, MODEL_NAMES, timings=timings)
    n = len(data.interactions)
    rows = [{"what": f"load {n:,} interactions (default demo)", "value": load, "unit": "s", "target": ""}]
    for name in MODEL_NAMES:
        note = " (blend of fitted members)" if name == "ensemble" else ""
        target = "well under 30 s" if name == "two-tower" else ""
        rows.append({"what": f"fit {name}{note}", "value": timings[name], "unit": "s", "target": target})
    rows.append({"what": "fit all base models", "value": sum(timings.values()), "unit": "s",
                 "target": ""})
    engine.dispose()
    return rows


def _synthetic_catalogue(folder: Path, n_engaged: int = 200_000, seed: int = 0):  # noqa: ANN202
    """A 20k-item, 20k-user database with random, popularity-skewed engagements."""
    from sqlalchemy import insert

    from ranker.data.clock import set_clock
    from ranker.data.db import ensure_schema, make_engine, put_setting, session_scope
    from ranker.data.schema import Interaction, Item, User

    rng = np.random.default_rng(seed)
    end = datetime(2026, 1, 1)
    engine = make_engine(f"sqlite:///{folder / 'synthetic20k.db'}")
    ensure_schema(engine)
    roles = {"developer": 8000, "investor": 5000, "founder": 7000}
    types = {"startup": 12000, "developer": 5000, "investor": 3000}
    cats = [f"c{i}" for i in range(10)]
    users = [{"id": i + 1, "name": f"u{i}", "role": r, "category": cats[i % 10], "field": "f",
              "created_at": end - timedelta(days=400)}
             for i, r in enumerate(r for r, n in roles.items() for _ in range(n))]
    item_type = np.array([t for t, n in types.items() for _ in range(n)])
    created = end - timedelta(days=120) + rng.integers(0, 120 * 86400, len(item_type)) * timedelta(seconds=1)
    items = [{"id": i + 1, "item_type": t, "name": f"i{i}", "category": cats[rng.integers(10)],
              "field": "f", "type": "t", "created_at": c, "updated_at": c, "views": 0}
             for i, (t, c) in enumerate(zip(item_type, created))]
    role_type = {"developer": "startup", "investor": "startup", "founder": "developer"}
    pools = {t: np.flatnonzero(item_type == t) + 1 for t in types}
    weights = {t: 1.0 / np.arange(1, len(p) + 1) ** 0.8 for t, p in pools.items()}
    uid = rng.integers(1, len(users) + 1, n_engaged)
    rows = []
    for u in uid:
        t = role_type[users[u - 1]["role"]]
        w = weights[t]
        item = pools[t][min(int(rng.exponential(len(w) / 8)), len(w) - 1)]
        rows.append({"user_id": int(u), "item_id": int(item), "kind": "click",
                     "created_at": end - timedelta(seconds=int(rng.integers(1, 90 * 86400))), "rating": None})
    with session_scope(engine) as s:
        s.execute(insert(User), users)
        s.execute(insert(Item), items)
        s.execute(insert(Interaction), rows)
        put_setting(s, keys.WORLD, {"synthetic": "bench-20k", "seed": seed})
        set_clock(s, end)
    return engine


def _large_world(folder: Path):  # noqa: ANN202
    from ranker.data.db import make_engine
    from ranker.sim.synth import build_world

    engine = make_engine(f"sqlite:///{folder / 'large.db'}")
    build_world(engine, seed=42, scale="large")
    return engine


def latency_rows(folder: Path, quick: bool, runs: int = 5, requests: int = 200, seed: int = 0) -> list[dict]:
    """candidates() latency over a 20k-item catalogue."""
    from sqlalchemy import select

    from ranker.base.store import fit_base_models
    from ranker.data.schema import User
    from ranker.flows import valid_flows
    from ranker.serving.candidates import candidates

    engine = _synthetic_catalogue(folder) if quick else _large_world(folder)
    source = "synthetic 20k-item catalogue" if quick else "large demo world, 20k items"
    params = {"two-tower": {"epochs": 1}} if quick else None
    t0 = time.perf_counter()
    models = fit_base_models(engine, params=params, directory=folder / "models")
    fit_all = time.perf_counter() - t0
    ensemble = models["ensemble"]
    # Users the ensemble personalises for: the scoring path, not the trending fallback.
    with engine.connect() as conn:
        roles = dict(conn.execute(select(User.id, User.role)).all())
    known = [(int(u), roles[int(u)]) for u in ensemble.user_ids_]
    rng = np.random.default_rng(seed)
    p50s, p99s, fallbacks = [], [], 0
    for _ in range(runs):
        times = []
        for j in rng.integers(0, len(known), requests):
            user_id, role = known[j]
            flows = [f for f in valid_flows(role) if f != "user-item"]
            flow = flows[int(rng.integers(len(flows)))]
            t = time.perf_counter()
            got = candidates(int(user_id), flow, 20, engine=engine, model=ensemble)
            times.append(time.perf_counter() - t)
            fallbacks += got.fallback
        p50s.append(np.percentile(times, 50) * 1e3)
        p99s.append(np.percentile(times, 99) * 1e3)
    alone = []
    for j in rng.integers(0, len(known), requests):
        t = time.perf_counter()
        ensemble.recommend(known[j][0], 20, item_type="startup")
        alone.append(time.perf_counter() - t)
    engine.dispose()
    n = f"{runs}x{requests} requests"
    return [
        {"what": f"fit all base models ({source})", "value": fit_all, "unit": "s", "target": ""},
        {"what": f"candidates() p50, ensemble, n=20 ({source}; median of {n})",
         "value": float(np.median(p50s)), "unit": "ms", "target": LATENCY_TARGET},
        {"what": f"candidates() p99, ensemble, n=20 ({source}; median of {n})",
         "value": float(np.median(p99s)), "unit": "ms", "target": LATENCY_TARGET},
        {"what": f"ensemble.recommend() alone, 12k startups, p50 of {requests} calls",
         "value": float(np.percentile(alone, 50) * 1e3), "unit": "ms", "target": ""},
        {"what": "requests that fell back to trending", "value": fallbacks, "unit": "count", "target": "0"},
    ]


def run(quick: bool = False) -> list[dict]:
    """Every base-model figure, as rows ``{"what", "value", "unit", "target"}``."""
    with tempfile.TemporaryDirectory(prefix="ranker-bench-base-") as tmp:
        folder = Path(tmp)
        return fit_rows(folder) + latency_rows(folder, quick)


def _table(rows: list[dict]) -> str:
    width = max(len(r["what"]) for r in rows)
    lines = [f"{'what':<{width}}  {'value':>10}  unit   target", "-" * (width + 40)]
    for r in rows:
        value = f"{r['value']:,.3f}" if isinstance(r["value"], float) else f"{r['value']:,}"
        lines.append(f"{r['what']:<{width}}  {value:>10}  {r['unit']:<5}  {r['target']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a synthetic 20k-item catalogue instead of the large world")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    print(json.dumps(rows) if args.json else _table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
