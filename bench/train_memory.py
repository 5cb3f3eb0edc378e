"""Training memory: peak RSS of ``ranker train`` on lists of thousands of rows.

    python bench/train_memory.py [--rows 1000000,100000] [--groups 271] [--repeats 3] [--json]
                                 [-- extra ranker train flags, e.g. --max-memory 2G]

For each row count it writes a training CSV of that many rows in ``--groups`` lists (list
sizes vary, about one row in three positive, one event time per list: the shape that
once drove ``ranker train --epochs 1`` to 23.8 GB), then runs ``python -m ranker train
--data that.csv --epochs 1 --no-activate`` in a subprocess against a fresh SQLite
database, ``--repeats`` times, and reports the median wall time and the median peak RSS
of the child (``ru_maxrss`` of its ``wait4`` rusage, the figure
``resource.getrusage(RUSAGE_CHILDREN)`` reports for one child). The pair columns say
how many pairs an epoch draws under ``--max-pairs-per-positive`` against all
same-list pairs, which is what training once held. Not a test: nothing is asserted.

Linux carries a parent's peak RSS into the ``ru_maxrss`` of a child it starts (exec
records the high-water mark of the memory it replaces), so this process stays small: it
imports only the standard library, and a subprocess writes the CSV.
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


def write_csv(path: Path, rows: int, groups: int, cap: int, seed: int = 0) -> dict:
    """Write ``rows`` rows in ``groups`` lists of varied size to ``path``; return the largest
    list and the pairs per epoch, under ``cap`` and uncapped. Run it in a subprocess."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from ranker.rank.features import feature_columns
    from ranker.rank.losses import count_sampled_pairs

    rng = np.random.default_rng(seed)
    sizes = np.maximum(2, np.round(rng.dirichlet(np.full(groups, 2.0)) * rows)).astype(np.int64)
    sizes[np.argmax(sizes)] += rows - sizes.sum()
    group = np.repeat(np.arange(groups), sizes)
    label = (rng.random(rows) < 1 / 3).astype(np.int8)
    x = np.clip(rng.normal(0.4 + 0.2 * label[:, None], 0.2, (rows, len(feature_columns()))), 0, 1)
    shown = np.datetime64("2025-10-01T00:00:00") + rng.integers(0, 60 * 86400, groups).astype("timedelta64[s]")
    df = pd.DataFrame({"user_id": rng.integers(0, 5000, rows), "item_id": rng.integers(0, 20000, rows)})
    for i, column in enumerate(feature_columns()):
        df[column] = x[:, i]
    df["label"] = label
    df["group_id"] = np.char.add("r", group.astype(str))
    df["event_time"] = np.datetime_as_string(shown[group])
    df.to_csv(path, index=False, float_format="%.4f")
    return {"largest_list": int(np.bincount(group).max()),
            "pairs_sampled": int(count_sampled_pairs(label, group, cap).sum()),
            "pairs_all": int(count_sampled_pairs(label, group, None).sum())}


def run_train(csv: Path, work: Path, extra: list[str]) -> dict:
    """One ``ranker train --epochs 1`` in a subprocess: rc, wall seconds, peak RSS bytes, last stderr line."""
    env = {**os.environ, "RANKER_DATA_DIR": str(work / "data"), "RANKER_MODELS_DIR": str(work / "models"),
           "PYTHONPATH": str(ROOT)}
    env.pop("RANKER_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "ranker", "train", "--data", str(csv), "--epochs", "1", "--no-activate",
           "--output-dir", str(work / "models"), *extra]
    with open(work / "stderr.txt", "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = (work / "stderr.txt").read_text().strip().splitlines()
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss": usage.ru_maxrss * 1024,
            "last_line": lines[-1] if lines else ""}


def bench(rows: int, groups: int, repeats: int, extra: list[str]) -> dict:
    cap = extra[extra.index("--max-pairs-per-positive") + 1] if "--max-pairs-per-positive" in extra else "default"
    with tempfile.TemporaryDirectory(prefix="ranker-train-memory-") as tmp:
        work = Path(tmp)
        csv = work / "train.csv"
        wrote = subprocess.run([sys.executable, __file__, "--write-csv", str(csv), str(rows), str(groups), cap],
                               check=True, capture_output=True, text=True, cwd=ROOT)
        shape = json.loads(wrote.stdout)
        runs = [run_train(csv, work, extra) for _ in range(repeats)]
        size_mb = csv.stat().st_size / 1e6
    return {
        "rows": rows, "groups": groups, "csv_mb": round(size_mb, 1), **shape,
        "rc": [r["rc"] for r in runs],
        "peak_rss_gib": round(statistics.median(r["peak_rss"] for r in runs) / 1024**3, 2),
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 1),
        "runs": runs,
    }


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--write-csv"]:  # the subprocess that writes the data
        path, rows, groups, cap = argv[1:5]
        sys.path.insert(0, str(ROOT))
        from ranker import config

        limit = config.DEFAULTS.max_pairs_per_positive if cap == "default" else int(cap)
        print(json.dumps(write_csv(Path(path), int(rows), int(groups), limit)))
        return 0
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,100000", help="comma-separated row counts")
    parser.add_argument("--groups", type=int, default=271)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        print(f"{rows:,} rows in {args.groups} lists, {args.repeats} run(s)…", file=sys.stderr)
        results.append(bench(rows, args.groups, args.repeats, extra))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'rows':>10} {'lists':>6} {'CSV MB':>7} {'largest list':>12} {'pairs/epoch':>12} {'all pairs':>14} "
          f"{'peak RSS GiB':>12} {'wall s':>7}  rc")
    for r in results:
        print(f"{r['rows']:>10,} {r['groups']:>6} {r['csv_mb']:>7} {r['largest_list']:>12,} {r['pairs_sampled']:>12,} "
              f"{r['pairs_all']:>14,} {r['peak_rss_gib']:>12} {r['wall_s']:>7}  {','.join(map(str, r['rc']))}")
        if any(r["rc"]):
            print(f"{'':>10} {r['runs'][-1]['last_line']}")
    print(f"extra flags: {' '.join(extra) or '(none)'}; median of the runs; the machine is shared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
