"""Streaming training: wall time and peak RSS of ``ranker train --stream`` on 1M against 10M rows.

    python bench/train_stream.py [--rows 1000000,10000000] [--epochs 20] [--epochs-large N]
                                 [--memory-rows 1000000] [--repeats 1] [--json]

For each row count it writes a Parquet training dataset partitioned by day (60 days, one file a
day, lists of 10 to 30 rows as served lists are, a third of the rows positive, features that
lean towards the label) in a subprocess, then runs ``python -m ranker train --data FOLDER
--stream --epochs E --no-activate --position-correction none`` in a subprocess against a fresh
SQLite database, ``--repeats`` times, and reports the median wall time, seconds per epoch and
the median peak RSS of the child (``ru_maxrss`` of its ``wait4`` rusage). ``--memory-rows``
names the row counts also trained in memory (``--no-stream``) for comparison. ``--epochs-large``
trains row counts above 1M for fewer epochs when the full run would take too long (the table
says so). Not a test: nothing is asserted.

Like ``bench/train_memory.py``, this process imports only the standard library, so the child's
``ru_maxrss`` is its own (Linux carries a parent's high-water mark into an exec'd child).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAYS = 60


def write_parquet(folder: Path, rows: int, seed: int = 0) -> dict:
    """``rows`` rows in lists of 10-30 rows over :data:`DAYS` days, one Parquet file a day. Run in a subprocess."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT))
    from ranker.rank.features import feature_columns

    rng = np.random.default_rng(seed)
    per_day = np.full(DAYS, rows // DAYS)
    per_day[: rows % DAYS] += 1
    lists = written = 0
    for day, n in enumerate(per_day):
        sizes = rng.integers(10, 31, n // 10 + 2)
        sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
        sizes[-1] -= sizes.sum() - n
        sizes = sizes[sizes > 0]
        group = np.repeat(np.arange(lists, lists + len(sizes)), sizes)
        label = (rng.random(n) < 1 / 3).astype(np.int8)
        x = np.clip(rng.normal(0.4 + 0.2 * label[:, None], 0.2, (n, len(feature_columns()))), 0, 1)
        date = np.datetime64("2025-10-01", "D") + day
        shown = date.astype("datetime64[s]") + np.sort(rng.integers(0, 86_400, len(sizes))).astype("timedelta64[s]")
        table = pa.table({
            "user_id": pa.array(rng.integers(0, 200_000, n)), "item_id": pa.array(rng.integers(0, 100_000, n)),
            **{c: pa.array(x[:, i]) for i, c in enumerate(feature_columns())},
            "label": pa.array(label), "group_id": pa.array(np.char.add("r", group.astype(str))),
            "event_time": pa.array(shown[group - lists].astype("datetime64[us]")),
            "position": pa.array(np.concatenate([np.arange(s) for s in sizes])),
        })
        part = folder / f"event_date={date}"
        part.mkdir(parents=True)
        pq.write_table(table, part / "part-0.parquet")
        lists += len(sizes)
        written += int(n)
    return {"rows": written, "lists": lists}


def run_train(data: Path, work: Path, epochs: int, stream: bool) -> dict:
    """One ``ranker train`` in a subprocess: rc, wall seconds, peak RSS bytes, last stderr line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env.update(RANKER_DATA_DIR=str(work / "data"), RANKER_MODELS_DIR=str(work / "models"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "ranker", "train", "--data", str(data), "--epochs", str(epochs), "--no-activate",
           "--position-correction", "none", "--output-dir", str(work / "models"),
           "--stream" if stream else "--no-stream"]
    with open(work / "stderr.txt", "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    lines = (work / "stderr.txt").read_text().strip().splitlines()
    return {"rc": os.waitstatus_to_exitcode(status), "wall_s": wall, "peak_rss": usage.ru_maxrss * 1024,
            "last_line": lines[-1] if lines else ""}


def bench(rows: int, epochs: int, repeats: int, in_memory: bool) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory(prefix="ranker-train-stream-") as tmp:
        work = Path(tmp)
        data = work / "train.parquet"
        start = time.perf_counter()
        wrote = subprocess.run([sys.executable, __file__, "--write", str(data), str(rows)], check=True,
                               capture_output=True, text=True, cwd=ROOT)
        shape = {**json.loads(wrote.stdout), "write_s": round(time.perf_counter() - start, 1),
                 "parquet_mb": round(sum(p.stat().st_size for p in data.rglob("*.parquet")) / 1e6, 1)}
        for stream in (True, False) if in_memory else (True,):
            print(f"  {'stream' if stream else 'in memory'}: {rows:,} rows x {epochs} epochs, {repeats} run(s)…",
                  file=sys.stderr)
            runs = [run_train(data, work, epochs, stream) for _ in range(repeats)]
            wall = statistics.median(r["wall_s"] for r in runs)
            out.append({**shape, "mode": "stream" if stream else "in memory", "epochs": epochs,
                        "rc": [r["rc"] for r in runs], "wall_s": round(wall, 1),
                        "s_per_epoch": round(wall / epochs, 2),
                        "peak_rss_mib": round(statistics.median(r["peak_rss"] for r in runs) / 1024**2),
                        "runs": runs})
    return out


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--write"]:  # the subprocess that writes the data
        print(json.dumps(write_parquet(Path(argv[1]), int(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated row counts")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epochs-large", type=int, default=None,
                        help="epochs for row counts above 1M (default: --epochs)")
    parser.add_argument("--memory-rows", default="1000000", help="row counts also trained in memory")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    in_memory = {int(r) for r in args.memory_rows.split(",") if r}
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        epochs = args.epochs_large if args.epochs_large and rows > 1_000_000 else args.epochs
        print(f"{rows:,} rows…", file=sys.stderr)
        results += bench(rows, epochs, args.repeats, rows in in_memory)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'rows':>11} {'lists':>8} {'Parquet MB':>10} {'mode':>10} {'epochs':>6} {'wall s':>7} {'s/epoch':>8} "
          f"{'peak RSS MiB':>12}  rc")
    for r in results:
        print(f"{r['rows']:>11,} {r['lists']:>8,} {r['parquet_mb']:>10} {r['mode']:>10} {r['epochs']:>6} "
              f"{r['wall_s']:>7} {r['s_per_epoch']:>8} {r['peak_rss_mib']:>12}  {','.join(map(str, r['rc']))}")
        if any(r["rc"]):
            print(f"{'':>11} {r['runs'][-1]['last_line']}")
    print(f"median of {args.repeats} run(s); --position-correction none, no validation; the machine is shared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
