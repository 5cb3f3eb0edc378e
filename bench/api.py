"""HTTP API benchmark: ``ranker serve`` under load from an asyncio httpx client.

    python bench/api.py [--quick] [--json] [--requests N]

For each world (the default demo world, and the large world's 20k-item catalogue;
``--quick``: the small world only), with 1 and 4 workers, it sends ``POST /v1/recommend``
and ``POST /v1/rank`` (20 candidates with base scores) at 1, 4 and 16 concurrent
clients, and reports client-side p50/p99 latency and throughput. A trained neural
ranker is active and the experiment is stopped, so every request is reranked and
logged as impressions, as in production. In the same run it times in-process
``recommend()`` (with logging) for the HTTP/in-process p50 ratio.

The load generator runs on the same 2-core machine as the server, so the figures
at 4 and 16 clients include the client's own CPU use. Not a test: nothing here is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 4, 16)
WORKERS = (1, 4)

SETUP = """
import json, sys, numpy as np
from sqlalchemy import select
from ranker.rank import registry
from ranker.data.db import get_engine
from ranker.serving.experiments import update_experiment
from ranker.serving.candidates import candidates
from ranker.data.interactions import engaged_item_ids
from ranker.data.schema import Interaction, User
from ranker.flows import own_flows
e = get_engine()
checkpoint = sys.argv[1]
if checkpoint != "-":
    registry.register(e, checkpoint, activate=True, actor="bench")
update_experiment(e, running=False, actor="bench")
with e.connect() as c:
    users = c.execute(select(User.id, User.role).join(Interaction, Interaction.user_id == User.id)
                      .where(Interaction.kind == "click").group_by(User.id, User.role).order_by(User.id)
                      .limit(300)).all()
cases = []
for uid, role in users:
    flow = own_flows(role)[0]
    cand = candidates(uid, flow, 20, engine=e)
    if cand.fallback or len(cand) < 20:
        continue
    cases.append({"user_id": int(uid), "flow": flow,
                  "items": [{"item_id": int(i), "base_score": float(s)} for i, s in zip(cand.item_ids, cand.scores)]})
print(json.dumps(cases[:200]))
"""

IN_PROCESS = """
import json, sys, time, numpy as np
from ranker.data.db import get_engine
from ranker.serving.service import recommend
e = get_engine()
cases = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
recommend(cases[0]["user_id"], cases[0]["flow"], 10, engine=e)
times = []
for i in range(n):
    c = cases[i % len(cases)]
    t = time.perf_counter()
    recommend(c["user_id"], c["flow"], 10, engine=e, source="bench")
    times.append(time.perf_counter() - t)
print(json.dumps({"p50": float(np.percentile(times, 50) * 1e3), "p99": float(np.percentile(times, 99) * 1e3)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranker(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "ranker", *args], env=env, check=True, capture_output=True, cwd=ROOT)


def serve(env: dict, workers: int = 1) -> tuple[subprocess.Popen, str]:
    """A ``ranker serve`` subprocess on a free loopback port, and its base URL (not yet ready)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ranker", "serve", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``/readyz`` until it answers 200; RuntimeError when the server exits or the timeout passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("ranker serve did not start")
        time.sleep(0.2)


def build_world(tmp: Path, scale: str, checkpoint: Path | None) -> tuple[dict, list[dict], Path | None]:
    """A world with fitted base models and an active trained ranker; returns (env, request cases, checkpoint)."""
    env = {**os.environ, "RANKER_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "RANKER_DATA_DIR": f"{tmp}/data",
           "RANKER_MODELS_DIR": f"{tmp}/models"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    print(f"  building the {scale} world…", file=sys.stderr)
    _ranker(env, "demo", "init", "--scale", scale)
    _ranker(env, "base", "fit")
    if checkpoint is None:  # train one on this world (the checkpoint is valid on any world)
        _ranker(env, "dataset", "--val-output", f"{tmp}/data/val.csv")
        _ranker(env, "train", "--data", f"{tmp}/data/ranker_train.csv", "--val", f"{tmp}/data/val.csv",
                "--epochs", "5", "--output-dir", f"{tmp}/models", "--min-positives", "50", "--activate")
        checkpoint = tmp / "models" / "versions" / "v1.pth"
        arg = "-"
    else:
        arg = str(checkpoint)
    out = subprocess.run([sys.executable, "-c", SETUP, arg], env=env, check=True, capture_output=True, text=True,
                         cwd=ROOT)
    return env, json.loads(out.stdout.strip().splitlines()[-1]), checkpoint


def in_process(env: dict, cases_path: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(cases_path), str(n)], env=env, check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _load(base: str, endpoint: str, cases: list[dict], clients: int, total: int) -> dict:
    import httpx

    bodies = ([{"user_id": c["user_id"], "flow": c["flow"], "k": 10} for c in cases] if endpoint == "recommend"
              else [{"user_id": c["user_id"], "items": c["items"], "k": 10} for c in cases])
    latencies: list[float] = []
    inside: list[float] = []  # the service's own latency_ms, as the server reports it
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        for body in bodies[:clients]:  # open the connections and warm the caches
            await client.post(f"/v1/{endpoint}", json=body)

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                t = time.perf_counter()
                r = await client.post(f"/v1/{endpoint}", json=bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200
                if r.status_code == 200:
                    inside.append(r.json()["latency_ms"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    ms = np.array(latencies) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "service_p50": float(np.percentile(inside, 50)) if inside else float("nan"),
            "rps": len(latencies) / elapsed, "errors": errors, "n": len(latencies)}


def bench_server(env: dict, cases: list[dict], workers: int, requests: int) -> list[dict]:
    proc, base = serve(env, workers)
    try:
        wait_ready(base, proc)
        results = []
        for endpoint in ("recommend", "rank"):
            for clients in CONCURRENCY:
                r = asyncio.run(_load(base, endpoint, cases, clients, requests))
                results.append({"endpoint": endpoint, "workers": workers, "clients": clients, **r})
                print(f"    {endpoint:9} workers {workers} clients {clients:2}: p50 {r['p50']:.2f} ms, "
                      f"p99 {r['p99']:.2f} ms (in the service: p50 {r['service_p50']:.2f} ms), "
                      f"{r['rps']:.0f} req/s, errors {r['errors']}", file=sys.stderr)
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def measure(quick: bool = False, requests: int | None = None) -> dict:
    requests = requests or (200 if quick else 1000)
    worlds = ("small",) if quick else ("default", "large")
    out: dict = {"requests_per_cell": requests, "worlds": []}
    checkpoint: Path | None = None
    keep = Path(tempfile.mkdtemp(prefix="ranker-bench-ckpt-"))
    try:
        for scale in worlds:
            with tempfile.TemporaryDirectory() as tmp:
                env, cases, ckpt = build_world(Path(tmp), scale, checkpoint)
                if checkpoint is None:
                    checkpoint = keep / "ranker.pth"
                    shutil.copy(ckpt, checkpoint)
                cases_path = Path(tmp) / "cases.json"
                cases_path.write_text(json.dumps(cases))
                items = subprocess.run([sys.executable, "-m", "ranker", "db", "info", "--json"], env=env, check=True,
                                       capture_output=True, text=True, cwd=ROOT)
                n_items = json.loads(items.stdout)["counts"]["items"]
                print(f"  {scale}: {n_items:,} items, {len(cases)} request cases", file=sys.stderr)
                local = in_process(env, cases_path, requests)
                cells = [c for w in WORKERS for c in bench_server(env, cases, w, requests)]
                out["worlds"].append({"scale": scale, "items": n_items, "in_process_recommend": local,
                                      "cells": cells})
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    return out


def rows(result: dict, quick: bool) -> list[dict]:
    """The figures as rows of ``bench/run.py``'s table."""
    table = []
    for world in result["worlds"]:
        where = f"{world['items']:,} items"
        cell = {(c["endpoint"], c["workers"], c["clients"]): c for c in world["cells"]}
        for (endpoint, workers, clients), c in cell.items():
            target = ""
            ok = None
            if workers == 1 and clients == 1 and not quick:
                limit = 10.0 if endpoint == "recommend" else 5.0
                target, ok = f"p99 ≤ {limit:g} ms", c["p99"] <= limit
            table.append({"what": f"HTTP /v1/{endpoint}, {where}, {workers} worker(s), {clients} client(s)",
                          "value": f"p50 {c['p50']:.2f} / p99 {c['p99']:.2f} ms, {c['rps']:.0f} req/s",
                          "unit": "", "target": target, "ok": ok})
        local = world["in_process_recommend"]
        http = cell[("recommend", 1, 1)]
        table.append({"what": f"HTTP p50 / in-process recommend() p50, {where}",
                      "value": f"{http['p50'] / local['p50']:.2f}× ({http['p50']:.2f} / {local['p50']:.2f} ms; "
                               f"in the server's service {http['service_p50']:.2f} ms)",
                      "unit": "", "target": "", "ok": None})
        for endpoint in ("recommend", "rank"):
            one, four = cell[(endpoint, 1, 16)], cell[(endpoint, 4, 16)]
            table.append({"what": f"throughput 1 → 4 workers, /v1/{endpoint}, {where}, 16 clients",
                          "value": f"{one['rps']:.0f} → {four['rps']:.0f} req/s ({four['rps'] / one['rps']:.2f}×)",
                          "unit": "", "target": "", "ok": None})
    return table


def run(quick: bool = False) -> list[dict]:
    return rows(measure(quick), quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small world, 200 requests per cell")
    parser.add_argument("--requests", type=int, default=None, help="requests per cell (default 1000)")
    parser.add_argument("--json", action="store_true", help="print every cell as JSON")
    args = parser.parse_args()
    result = measure(args.quick, args.requests)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for row in rows(result, args.quick):
        mark = {True: "yes", False: "NO", None: ""}[row["ok"]]
        print(f"{row['what']:<72} {row['value']:<44} {row['target']:<14} {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
