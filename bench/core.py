"""Ranker core benchmarks: rerank latency, training speed, dataset generation, recommend()."""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench_rerank(repeats: int = 3000) -> list[dict]:
    """Rerank 20 → 10 with the neural scorer (default arch) and the rule, by each diversity method
    (the guide's greedy penalty, MMR λ = 0.7, the DPP θ = 0.7); and 100 → 50, the DPP's largest k."""
    import torch

    from ranker.rank.diversity import rerank
    from ranker.rank.features import ListContext
    from ranker.rank.model import RankerMLP
    from ranker.rank.rerank import NeuralScorer, RuleScorer

    def context(n: int) -> ListContext:
        rng = np.random.default_rng(0)
        return ListContext(datetime(2026, 1, 1), 1, "ai", "ml", np.arange(n), rng.random(n), rng.random(n) * 90,
                           rng.integers(0, 500, n).astype(float), rng.integers(0, 50, n).astype(float),
                           rng.choice(list("abcdefghij"), n).astype(object),
                           rng.choice(list("uvwxyz"), n).astype(object), rng.choice(list("pqrs"), n).astype(object))

    torch.manual_seed(0)
    neural = NeuralScorer({k: v.numpy() for k, v in RankerMLP(4).eval().state_dict().items()}, "bench")
    rows = []
    for n, k in ((20, 10), (100, 50)):
        ctx = context(n)
        for (name, scorer), (method, knob) in itertools.product((("neural", neural), ("rule", RuleScorer())),
                                                                (("greedy", 0.0), ("mmr", 0.7), ("dpp", 0.7))):
            times = []
            for _ in range(repeats if n == 20 else repeats // 10):
                t = time.perf_counter()
                rerank(ctx, scorer, k, method, knob)
                times.append(time.perf_counter() - t)
            p50, p99 = _percentiles(times)
            guide = n == 20 and name == "neural" and method == "greedy"
            label = "greedy diversity" if method == "greedy" else f"{method} {knob:g}"
            rows.append({"what": f"rerank {n}→{k}, {name}, {label}", "value": f"p50 {p50:.3f} / p99 {p99:.3f}",
                         "unit": "ms", "target": "p99 ≤ 1 ms" if guide else "", "ok": p99 <= 1.0 if guide else None})
    return rows


def _train_rows(n: int, epochs: int = 20, batch_size: int = 128, runs: int = 1) -> float:
    from ranker.rank.train import Dataset, TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.random((n, 4)).astype(np.float32)
    groups = np.arange(n) // 3
    y = (rng.random(n) < 1 / (1 + np.exp(-(3 * x[:, 0] + x[:, 1] - 2.5)))).astype(np.float32)
    data = Dataset(x, y, groups, groups, np.arange(n))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        train(data, TrainConfig(epochs=epochs, batch_size=batch_size))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_train(quick: bool) -> list[dict]:
    small = _train_rows(1000, runs=5)
    rows = [{"what": "train 1,000 rows × 20 epochs (batch 128)", "value": f"{small:.2f}", "unit": "s",
             "target": "≤ 2 s (guide: 1–3 min)", "ok": small <= 2}]
    n = 100_000 if quick else 1_000_000
    for batch in (128, 1024):
        t = _train_rows(n, batch_size=batch)
        label = f"train {n:,} rows × 20 epochs (batch {batch})"
        rows.append({"what": label, "value": f"{t:.1f}", "unit": "s",
                     "target": "≤ 60 s" if n == 1_000_000 else "(quick: 100k rows)",
                     "ok": t <= 60 if n == 1_000_000 else None})
    return rows


def bench_dataset(quick: bool) -> list[dict]:
    """Dataset generation over the large world (≥ 1M interactions), each run in a child process
    for its peak RSS; once with the serving ensemble as the base model, once with ALS alone."""
    import json

    scale = "small" if quick else "large"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {"RANKER_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "RANKER_DATA_DIR": f"{tmp}/data",
               "RANKER_MODELS_DIR": f"{tmp}/models", "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-m", "ranker", "demo", "init", "--scale", scale], env=env, check=True,
                       capture_output=True)
        for base in ("ensemble", "als"):
            code = ("import time,resource,json;from ranker.data.db import get_engine;"
                    "from ranker.rank.dataset import DatasetConfig,build_dataset;"
                    "from ranker.data.interactions import load_interactions;"
                    "e=get_engine();n=len(load_interactions(e));t=time.perf_counter();"
                    f"s=build_dataset(e,DatasetConfig(output='{tmp}/d.csv',base_model='{base}'));"
                    "print(json.dumps({'n':n,'s':time.perf_counter()-t,'rows':s.rows,"
                    "'rss':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rss_mib = r["rss"] / 1024
            rows.append({"what": f"dataset over {r['n']:,} interactions, base model {base} ({r['rows']:,} rows)",
                         "value": f"{r['s']:.1f} s, {rss_mib:.0f} MiB peak RSS", "unit": "",
                         "target": "≤ 30 s, ≤ 1 GiB" if not quick else "(quick: small world)",
                         "ok": (r["s"] <= 30 and rss_mib <= 1024) if not quick else None})
    return rows


def bench_recommend(quick: bool, requests: int = 500) -> list[dict]:
    """recommend() end to end (base candidates + rerank, no logging) on a 20k-item world."""
    scale = "small" if quick else "large"
    with tempfile.TemporaryDirectory() as tmp:
        env = {"RANKER_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "RANKER_DATA_DIR": f"{tmp}/data",
               "RANKER_MODELS_DIR": f"{tmp}/models", "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-m", "ranker", "demo", "init", "--scale", scale], env=env, check=True,
                       capture_output=True)
        code = f"""
import json, time, numpy as np
from sqlalchemy import select, func
from ranker.data.db import get_engine
from ranker.data.schema import User, Item, Interaction
from ranker.serving.service import recommend
from ranker.flows import own_flows
e = get_engine()
with e.connect() as c:
    users = c.execute(select(User.id, User.role).join(Interaction, Interaction.user_id == User.id)
                      .where(Interaction.kind == 'click').group_by(User.id, User.role).limit(2000)).all()
    n_items = c.execute(select(func.count()).select_from(Item)).scalar()
recommend(users[0][0], own_flows(users[0][1])[0], engine=e, arm='treatment', log=False)  # fit/load once
rng = np.random.default_rng(0); times = []
for _ in range({requests}):
    u, role = users[int(rng.integers(len(users)))]
    t = time.perf_counter()
    recommend(u, own_flows(role)[0], 10, engine=e, arm='treatment', log=False)
    times.append(time.perf_counter() - t)
ms = np.array(times) * 1e3
print(json.dumps({{'items': n_items, 'p50': float(np.percentile(ms, 50)), 'p99': float(np.percentile(ms, 99))}}))
"""
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    return [{"what": f"recommend() end to end, {r['items']:,} items (base + rerank)",
             "value": f"p50 {r['p50']:.2f} / p99 {r['p99']:.2f}", "unit": "ms",
             "target": "p99 ≤ 10 ms" if not quick else "(quick: small world)",
             "ok": r["p99"] <= 10 if not quick else None}]


def run(quick: bool = False) -> list[dict]:
    return [*bench_rerank(), *bench_train(quick), *bench_dataset(quick), *bench_recommend(quick)]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
