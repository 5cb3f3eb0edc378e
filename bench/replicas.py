"""Replica benchmark: how long an activation takes to reach another serving replica.

    python bench/replicas.py [--activations N] [--postgres URL] [--json]

Builds the small demo world on PostgreSQL (a database of its own on the server at
``--postgres``, default ``$RANKER_TEST_POSTGRES_URL``; dropped afterwards), fits the base
models, stops the A/B experiment (every list is reranked) and starts two ``ranker serve``
processes, a and b, with ``RANKER_MODEL_STORE=db``, each with its own models folder.
This process plays the operator on machine a: N times it registers a new version (an
untrained net, another seed each time) and activates it, then polls b's
``POST /v1/recommend`` back to back. The delay is the time from ``activate_version``
returning (the commit is done) to the first answer from b with the new version: b has
never seen the file, so it includes b reading the active row, fetching the bytes from the
database, checking their SHA-256, validating the checkpoint and serving the request. It
then rolls back N times (b holds those files already). Medians over the N activations.
Not a test: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api import _ranker, serve, wait_ready  # noqa: E402  (bench/api.py: the same server handling)


def _checkpoint(path: Path, seed: int) -> Path:
    import torch

    from ranker.rank import registry
    from ranker.rank.features import feature_names
    from ranker.rank.model import RankerMLP

    torch.manual_seed(seed)
    registry.save_checkpoint(path, RankerMLP(len(feature_names())).eval(), {"feature_names": feature_names()})
    return path


def _until_served(client, body: dict, version: str, timeout: float = 30.0) -> tuple[float, int]:
    """(seconds until b answers with ``version``, requests sent), timed from the call."""
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < timeout:
        n += 1
        served = client.post("/v1/recommend", json=body).json()["model_version"].split("+")[0]
        if served == version:
            return time.perf_counter() - t0, n
    raise RuntimeError(f"replica b did not serve {version} within {timeout} s")


def measure(activations: int, admin_url: str) -> dict:
    import httpx
    from sqlalchemy import select, text
    from sqlalchemy.engine import make_url

    from ranker import config
    from ranker.data.db import make_engine
    from ranker.data.schema import User
    from ranker.rank import registry
    from ranker.serving.experiments import update_experiment

    name = f"ranker_bench_replicas_{os.getpid()}"
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    tmp = Path(tempfile.mkdtemp(prefix="ranker-bench-replicas-"))
    procs: list[subprocess.Popen] = []
    try:
        models = {m: tmp / m / "models" for m in ("a", "b")}
        envs = {m: {**{k: v for k, v in os.environ.items() if not k.startswith(("RANKER_", "PROMETHEUS_"))},
                    "RANKER_DATABASE_URL": url, "RANKER_MODELS_DIR": str(models[m]),
                    "RANKER_DATA_DIR": str(tmp / m / "data"), "RANKER_MODEL_STORE": "db"} for m in models}
        print("  building the small world on PostgreSQL…", file=sys.stderr)
        _ranker(envs["a"], "demo", "init", "--scale", "small")
        _ranker(envs["a"], "base", "fit")
        shutil.copytree(models["a"] / "base", models["b"] / "base")  # base models are fitted per machine
        engine = make_engine(url)
        update_experiment(engine, running=False, actor="bench")
        config.MODELS_DIR, config.MODEL_STORE = models["a"], "db"  # this process is machine a
        registry.register(engine, _checkpoint(tmp / "seed0.pth", 0), activate=True, actor="bench")

        servers = {m: serve(envs[m]) for m in models}
        procs = [proc for proc, _ in servers.values()]
        for proc, base in servers.values():
            wait_ready(base, proc)
        with engine.connect() as conn:
            developers = [int(u) for u in conn.execute(select(User.id).where(User.role == "developer")
                                                       .order_by(User.id)).scalars()]
        with httpx.Client(base_url=servers["b"][1], timeout=60) as client:
            body = next(b for b in ({"user_id": u, "flow": "developer-startup", "k": 10} for u in developers)
                        if client.post("/v1/recommend", json=b).json()["model_version"].startswith("v"))
            steady = []
            for _ in range(50):
                t = time.perf_counter()
                client.post("/v1/recommend", json=body)
                steady.append(time.perf_counter() - t)

            new, back, polls = [], [], []
            for seed in range(1, activations + 1):
                version = registry.register(engine, _checkpoint(tmp / f"seed{seed}.pth", seed), actor="bench")
                registry.activate_version(engine, version, actor="bench")
                delay, n = _until_served(client, body, version)
                new.append(delay)
                polls.append(n)
                print(f"    {version}: served by b after {delay * 1e3:.1f} ms ({n} requests)", file=sys.stderr)
            for _ in range(activations):
                version = registry.rollback(engine, actor="bench")
                delay, _n = _until_served(client, body, version)
                back.append(delay)
        engine.dispose()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    def ms(xs: list[float], q: float = 50) -> float:
        return float(np.percentile(np.array(xs) * 1e3, q))

    return {"activations": activations, "request_p50_ms": ms(steady),
            "new_version_p50_ms": ms(new), "new_version_max_ms": ms(new, 100),
            "new_version_requests_p50": float(np.median(polls)),
            "rollback_p50_ms": ms(back), "rollback_max_ms": ms(back, 100)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activations", type=int, default=9)
    p.add_argument("--postgres", default=os.environ.get("RANKER_TEST_POSTGRES_URL",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = measure(args.activations, args.postgres)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"activation → replica b serves it (median of {r['activations']}, PostgreSQL, RANKER_MODEL_STORE=db)")
    print(f"  {'case':34} {'p50 ms':>8} {'max ms':>8}")
    print(f"  {'new version (b fetches the file)':34} {r['new_version_p50_ms']:8.1f} {r['new_version_max_ms']:8.1f}")
    print(f"  {'rollback (b has the file)':34} {r['rollback_p50_ms']:8.1f} {r['rollback_max_ms']:8.1f}")
    print(f"  {'one request to b, nothing changed':34} {r['request_p50_ms']:8.1f}")


if __name__ == "__main__":
    main()
