"""Dataset builds at scale: the python, polars and spark engines on one large world, in the same run.

    python bench/scale.py [--db PATH | --scale large] [--base-model ensemble] [--runs 3]
                          [--engines python,polars,spark] [--spark-master local[*]] [--format csv]
                          [--end-to-end] [--json]

``ranker dataset`` (feedback source) spends its time in two places: fitting the base model
once per refit period (``--refit-days``, 7 by default), which is the same work for every
engine, and turning the window's lists into rows, which is what the engines do differently.
This benchmark times them apart:

1. **fits**: one child process fits ``--base-model`` at every weekly cutoff of the window, as
   the builder would, and saves each model;
2. **builds**: for each engine, ``--runs`` child processes build the dataset with those
   saved models loaded instead of refitted (loading takes well under a second), so the
   figure is the engine's own work: loading the log, scoring each list with the base model,
   features and writing;
3. with ``--end-to-end``, one more build per engine that fits its models itself, as
   ``ranker dataset`` does.

Each child's peak RSS is its ``wait4`` rusage; this process imports only the standard
library, so it does not inflate it. The spark engine runs Spark in local mode
(``--spark-master``, every core by default): its build time counts from a started session (the
JVM's start is reported apart) and includes exporting the SQLite log to Parquet for Spark; the
JVM's peak RSS (``VmHWM``) is reported beside the Python driver's. ``--spark-driver-memory``
sizes the JVM's heap (``PYSPARK_SUBMIT_ARGS``). The world is a copy of ``--db`` (a SQLite file from
``ranker demo init``), or ``ranker demo init --scale SCALE`` into a temporary folder (about
15 minutes for ``large``). ``--fits DIR`` keeps the fitted models (and the fit time) for the
next run over the same world. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Fits every cutoff the builder would fit and saves each; prints fit seconds and the count.
FIT = """
import json, sys, time
from datetime import timedelta
from pathlib import Path
from ranker.data.db import get_engine
from ranker.rank import dataset as ds
engine, out = get_engine(), Path(sys.argv[1])
cfg = ds.DatasetConfig(output=out / 'unused.csv', base_model=sys.argv[2])
start, now, _, _ = ds._feedback_window(engine, cfg)
step, cutoff, fits = timedelta(days=cfg.refit_days), start, []
t = time.perf_counter()
while cutoff < now:
    one = time.perf_counter()
    ds._fit_base(engine, cfg.base_model, cutoff, None).save(out / f'{cutoff:%Y%m%dT%H%M%S}.npz')
    fits.append(time.perf_counter() - one)
    cutoff += step
print(json.dumps({'fit_s': time.perf_counter() - t, 'fits': fits}))
"""

#: One build; with a models folder, each cutoff's model is loaded from it instead of fitted.
BUILD = """
import json, sys, time
from pathlib import Path
from sqlalchemy import func, select
from ranker.base.base import BaseRecommender
from ranker.data.db import get_engine
from ranker.data.schema import Interaction
from ranker.rank import dataset as ds
engine, engine_name, base, output, models, master = get_engine(), *sys.argv[1:6]
if models != '-':
    ds._fit_base = lambda e, m, cutoff, p: BaseRecommender.load(Path(models) / f'{cutoff:%Y%m%dT%H%M%S}.npz')
with engine.connect() as conn:  # counted in SQL, so the peak RSS is the build's own
    n = conn.execute(select(func.count()).select_from(Interaction)).scalar()
extra, spark = {}, None
if engine_name == 'spark':  # the session first: the JVM's start is not the engine's work
    from ranker.rank.dataset_spark import spark_session
    t = time.perf_counter()
    spark = spark_session(master, jdbc=engine.url.get_backend_name() == 'postgresql')
    extra['spark_start_s'] = time.perf_counter() - t
t = time.perf_counter()
s = ds.build_dataset(engine, ds.DatasetConfig(output=output, base_model=base, engine=engine_name,
                                              spark_master=master if spark is not None else None))
took = time.perf_counter() - t
if spark is not None:
    status = Path(f'/proc/{spark.sparkContext._gateway.proc.pid}/status').read_text()
    extra['jvm_rss_mib'] = int(next(l.split()[1] for l in status.splitlines() if l.startswith('VmHWM'))) / 1024
print(json.dumps({'s': took, 'interactions': n, 'rows': s.rows, 'lists': s.groups, **extra}))
"""


def child(code: str, args: list[str], env: dict, work: Path) -> dict:
    """Run ``code`` in a fresh interpreter: its JSON line, wall seconds and peak RSS (MiB)."""
    with open(work / "stdout.txt", "w") as out, open(work / "stderr.txt", "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child failed:\n{(work / 'stderr.txt').read_text()[-3000:]}")
    result = json.loads((work / "stdout.txt").read_text().strip().splitlines()[-1])
    return {**result, "wall_s": wall, "rss_mib": usage.ru_maxrss / 1024}


def world(args: argparse.Namespace, work: Path, env: dict) -> Path:
    db = work / "world.db"
    if args.db:
        shutil.copy(args.db, db)
    else:
        subprocess.run([sys.executable, "-m", "ranker", "demo", "init", "--scale", args.scale],
                       env={**env, "RANKER_DATABASE_URL": f"sqlite:///{db}"}, check=True, capture_output=True)
    return db


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.python_implementation()} {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, help="a SQLite world to copy (default: build one with --scale)")
    p.add_argument("--scale", default="large")
    p.add_argument("--base-model", default="ensemble")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--engines", default="python,polars", help="any of python, polars, spark")
    p.add_argument("--spark-master", default="local[*]", help="the spark engine's master (default %(default)s)")
    p.add_argument("--spark-driver-memory", default="2g", help="the Spark driver's heap (default %(default)s)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--end-to-end", action="store_true", help="also one build per engine that fits its own models")
    p.add_argument("--fits", type=Path, help="keep the fitted models here, and reuse them (and their fit time) "
                   "when it already holds them")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    engines = args.engines.split(",")
    suffix = ".parquet" if args.format == "parquet" else ".csv"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "RANKER_DATA_DIR": str(work / "data"), "RANKER_MODELS_DIR": str(work / "models"),
               "PYTHONPATH": str(ROOT),
               "PYSPARK_SUBMIT_ARGS": f"--driver-memory {args.spark_driver_memory} pyspark-shell"}
        env["RANKER_DATABASE_URL"] = f"sqlite:///{world(args, work, env)}"
        fits = args.fits or work / "fits"
        if (fits / "fits.json").is_file():
            fit = json.loads((fits / "fits.json").read_text())
        else:
            fits.mkdir(parents=True, exist_ok=True)
            fit = child(FIT, [str(fits), args.base_model], env, work)
            (fits / "fits.json").write_text(json.dumps(fit))
        results = {"machine": machine(), "base_model": args.base_model, "format": args.format,
                   "fit_s": fit["fit_s"], "fits": len(fit["fits"]), "fit_rss_mib": fit["rss_mib"], "engines": {}}
        for engine in engines:
            build = [engine, args.base_model, str(work / f"out_{engine}{suffix}"), str(fits), args.spark_master]
            runs = [child(BUILD, build, env, work) for _ in range(args.runs)]
            row = {"build_s": statistics.median(r["s"] for r in runs), "builds": [round(r["s"], 2) for r in runs],
                   "rss_mib": statistics.median(r["rss_mib"] for r in runs), "rows": runs[0]["rows"],
                   "lists": runs[0]["lists"], "interactions": runs[0]["interactions"]}
            for extra in ("spark_start_s", "jvm_rss_mib"):
                if extra in runs[0]:
                    row[extra] = statistics.median(r[extra] for r in runs)
            if args.end_to_end:
                whole = child(BUILD, [engine, args.base_model, str(work / f"e2e_{engine}{suffix}"), "-",
                                      args.spark_master], env, work)
                row.update(end_to_end_s=whole["s"], end_to_end_rss_mib=whole["rss_mib"])
            results["engines"][engine] = row
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"machine: {results['machine']}; base model {args.base_model}; {args.format}")
    print(f"fits: {results['fits']} cutoffs in {results['fit_s']:.1f} s (peak RSS {results['fit_rss_mib']:.0f} MiB)")
    print(f"{'engine':8} {'interactions':>12} {'rows':>9} {'lists':>8} {'build s (median)':>17} {'runs':>22} "
          f"{'RSS MiB':>8} {'fits + build s':>15} {'end to end s':>13}")
    for engine, r in results["engines"].items():
        e2e = f"{r['end_to_end_s']:.1f}" if "end_to_end_s" in r else "-"
        print(f"{engine:8} {r['interactions']:>12,} {r['rows']:>9,} {r['lists']:>8,} {r['build_s']:>17.1f} "
              f"{str(r['builds']):>22} {r['rss_mib']:>8.0f} {results['fit_s'] + r['build_s']:>15.1f} {e2e:>13}")
    if "spark" in results["engines"]:
        r = results["engines"]["spark"]
        print(f"spark ({args.spark_master}, driver heap {args.spark_driver_memory}): the session starts in "
              f"{r['spark_start_s']:.1f} s (not in the build); JVM peak RSS {r['jvm_rss_mib']:.0f} MiB "
              "(besides the Python driver's RSS above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
