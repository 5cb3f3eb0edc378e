"""The xlarge world on PostgreSQL: its build time and peak RSS, then recommend() latency on it.

    python bench/xlarge.py [--db-url postgresql+psycopg://postgres@127.0.0.1:5432/ranker_xlarge]
                           [--scale xlarge] [--skip-build] [--requests 2000] [--warmup 200] [--json]

1. **build**: ``ranker demo init --scale SCALE --force`` in a child process on ``--db-url`` (the
   database is created when missing; the history goes in through COPY). Its wall time and its
   peak RSS (``wait4`` rusage) are reported. ``--skip-build`` measures an existing world instead.
2. **base fit**: ``ranker base fit`` in a child process (the fitted models are what serving loads).
3. **recommend()**: one child process calls :func:`ranker.serving.service.recommend` in-process
   (the treatment arm, no logging) for users with clicks, ``--warmup`` times, then ``--requests``
   times, and reports p50 and p99.

Models and data go to a temporary folder. The database is kept: other benchmarks (the dashboard's)
read the same world. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/ranker_xlarge"

#: recommend() latency in-process, on the world's users with clicks; prints one JSON line.
LATENCY = """
import json, sys, time
import numpy as np
from sqlalchemy import func, select
from ranker.data.db import get_engine
from ranker.data.schema import Interaction, Item, User
from ranker.flows import own_flows
from ranker.serving.service import recommend
warmup, requests = int(sys.argv[1]), int(sys.argv[2])
e = get_engine()
with e.connect() as c:
    users = c.execute(select(User.id, User.role).join(Interaction, Interaction.user_id == User.id)
                      .where(Interaction.kind == 'click').group_by(User.id, User.role).limit(5000)).all()
    n_items = c.execute(select(func.count()).select_from(Item)).scalar()
t = time.perf_counter()
recommend(users[0][0], own_flows(users[0][1])[0], engine=e, arm='treatment', log=False)  # load once
first = time.perf_counter() - t
rng = np.random.default_rng(0)
times = []
for n in range(warmup + requests):
    u, role = users[int(rng.integers(len(users)))]
    t = time.perf_counter()
    recommend(u, own_flows(role)[0], 10, engine=e, arm='treatment', log=False)
    if n >= warmup:
        times.append(time.perf_counter() - t)
ms = np.array(times) * 1e3
print(json.dumps({'items': n_items, 'users': len(users), 'first_s': first, 'requests': len(times),
                  'p50': float(np.percentile(ms, 50)), 'p90': float(np.percentile(ms, 90)),
                  'p99': float(np.percentile(ms, 99)), 'max': float(ms.max())}))
"""


def ensure_database(url: str) -> None:
    """Create the database of ``url`` on its server when it does not exist."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": u.database}).first() is None:
                conn.execute(text(f'CREATE DATABASE "{u.database}"'))
    finally:
        admin.dispose()


def timed(cmd: list[str], env: dict, log: Path | None = None) -> dict:
    """Run ``cmd``; its wall time and CPU time (s, the child's own: the database server's work is not
    in it), peak RSS (MiB) and stdout (its stderr goes to ``log``)."""
    t = time.perf_counter()
    with open(log or os.devnull, "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({status}); see {log}\n{out}")
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "stdout": out}


def counts(env: dict) -> dict[str, int]:
    code = ("import json; from ranker.data.db import get_engine, table_counts; "
            "print(json.dumps(table_counts(get_engine())))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db-url", default=DEFAULT_URL)
    p.add_argument("--scale", default="xlarge")
    p.add_argument("--skip-build", action="store_true", help="measure the world already in --db-url")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "ranker_xlarge_build.log",
                   help="the build's progress bar and messages")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ranker_xlarge_"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RANKER_")},
           "RANKER_DATABASE_URL": args.db_url, "RANKER_DATA_DIR": str(work / "data"),
           "RANKER_MODELS_DIR": str(work / "models")}
    rows: list[tuple[str, str]] = []
    result: dict = {"machine": machine(), "scale": args.scale}
    if not args.skip_build:
        ensure_database(args.db_url)
        build = timed([sys.executable, "-m", "ranker", "demo", "init", "--scale", args.scale, "--force"], env, args.log)
        result["build"] = {k: v for k, v in build.items() if k != "stdout"}
        rows += [(f"demo init --scale {args.scale} (PostgreSQL, COPY)",
                  f"{build['seconds']:.0f} s wall, {build['cpu_seconds']:.0f} s CPU (ranker process)"),
                 ("  peak RSS", f"{build['peak_rss_mib']:,.0f} MiB")]
    result["counts"] = counts(env)
    rows += [(f"  {k}", f"{v:,}") for k, v in result["counts"].items() if v]
    fit = timed([sys.executable, "-m", "ranker", "base", "fit"], env)
    result["base_fit"] = {k: v for k, v in fit.items() if k != "stdout"}
    rows += [("ranker base fit", f"{fit['seconds']:.0f} s, peak RSS {fit['peak_rss_mib']:,.0f} MiB")]
    lat = timed([sys.executable, "-c", LATENCY, str(args.warmup), str(args.requests)], env)
    r = json.loads(lat["stdout"].strip().splitlines()[-1])
    result["recommend"] = {**r, "peak_rss_mib": lat["peak_rss_mib"]}
    rows += [(f"recommend(), {r['items']:,} items, {r['requests']} requests after {args.warmup} warm-up",
              f"p50 {r['p50']:.2f} / p90 {r['p90']:.2f} / p99 {r['p99']:.2f} ms (first call {r['first_s']:.1f} s)")]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"machine: {result['machine']}; database: {args.db_url}")
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
