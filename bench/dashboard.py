"""Dashboard benchmark: the first render of every page (SPEC §13: ≤ 1.5 s per page).

    python bench/dashboard.py [--quick] [--json] [--runs 3] [--world DIR]

Each page is rendered through ``dashboard/app.py`` with Streamlit's ``AppTest`` in a new
session, in a worker process where every page has been rendered once (modules imported).
Three figures per page, medians over ``--runs``:

- first render (judged against the target): Streamlit's caches and the ranker's serving
  caches (catalogue, item counts, loaded base models) cleared, as for the first page
  someone opens after the server starts;
- after warm-up: the same, but the Overview was opened first and the dashboard's
  background warm-up of the serving state had finished (Streamlit caches still cold):
  any page opened a few seconds after the server started;
- repeat: the page again in a new session, every cache warm.

``--quick``: the small demo world (seconds to build). Otherwise the default-scale demo
world and a ``--scale large`` world (20k users, ~1.3M interactions; several minutes to
build, mostly ``demo init`` and fitting the base models). Each world is a real
database built with the ``ranker`` CLI: demo init, one simulated day of traffic, a
dataset and a short training run, so that every page has something to show.
``--world DIR`` keeps the worlds in DIR and reuses them on the next run.
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
BENCH = Path(__file__).resolve().parent
TARGET_S = 1.5
PAGES = ("overview", "data_training", "models", "rule_weights", "ranking_preview", "metrics_ab")
#: scale -> simulated requests on the one simulated day
WORLDS = {"small": 100, "default": 300, "large": 500}


def _env(world: Path) -> dict[str, str]:
    return {**os.environ, "RANKER_DATABASE_URL": f"sqlite:///{world / 'world.db'}",
            "RANKER_DATA_DIR": str(world / "data"), "RANKER_MODELS_DIR": str(world / "models")}


def build_world(world: Path, scale: str) -> float:
    """Build a demo world with traffic, a dataset and an active model in ``world``; returns seconds."""
    if (world / "ready").exists():
        return 0.0
    world.mkdir(parents=True, exist_ok=True)
    data, t0 = world / "data", time.perf_counter()
    steps = [
        ["demo", "init", "--scale", scale, "--force"],
        # With no saved base models the first served request fits them, on the catalogue as it
        # is after the day's new items, so they stay valid for the dashboard afterwards.
        ["simulate", "--days", "1", "--requests-per-day", str(WORLDS[scale]), "--no-refit"],
        ["dataset", "--output", str(data / "ranker_train.csv"), "--val-output", str(data / "ranker_val.csv")],
        ["train", "--data", str(data / "ranker_train.csv"), "--val", str(data / "ranker_val.csv"),
         "--epochs", "5", "--output-dir", str(world / "models"), "--min-positives", "10", "--activate"],
    ]
    for step in steps:
        print(f"  [{scale}] ranker {' '.join(step[:2])}…", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "ranker", *step], env=_env(world), cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"`ranker {' '.join(step)}` failed: {done.stderr.strip()[-2000:]}")
    (world / "ready").touch()
    return time.perf_counter() - t0


def measure(world: Path, runs: int) -> dict[str, dict[str, list[float] | str]]:
    """Page → {"first": [s, …], "repeat": [s], "error": …}, measured in a fresh worker process."""
    out = subprocess.run([sys.executable, __file__, "--worker", str(world), "--runs", str(runs)],
                         env=_env(world), cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worker(runs: int) -> dict[str, dict]:
    # This file is called dashboard.py too: put the real dashboard package first on the path.
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != BENCH]
    import logging

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from ranker.base import store
    from ranker.serving import service as serve

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    app = str(ROOT / "dashboard" / "app.py")

    def render(page: str) -> tuple[float, str | None]:
        at = AppTest.from_file(app, default_timeout=600).switch_page(f"../pages/{page}.py")
        t = time.perf_counter()
        at.run()
        took = time.perf_counter() - t
        error = at.exception[0].value if at.exception else None
        return took, error

    def restart() -> None:
        """As after a server restart (modules stay imported)."""
        st.cache_data.clear()
        st.cache_resource.clear()
        serve._SERVICES.clear()
        store.clear_cache()

    for page in PAGES:  # import every module a page needs
        render(page)
    result = {}
    for page in PAGES:
        first, after_warm_up, error = [], [], None
        for _ in range(runs):
            restart()
            took, error = render(page)
            first.append(took)
            restart()
            render("overview")  # the first page of a process warms serving up, inside its script run
            st.cache_data.clear()
            after_warm_up.append(render(page)[0])
        repeat, _ = render(page)
        result[page] = {"first": first, "after_warm_up": after_warm_up, "repeat": [repeat], "error": error}
    return result


def run(quick: bool, runs: int = 3, world_dir: Path | None = None) -> list[dict]:
    """Rows {what, value, unit, target, ok}: median first render per page and world."""
    scales = ("small",) if quick else ("default", "large")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ranker-bench-dash-") as tmp:
        base = Path(world_dir) if world_dir else Path(tmp)
        for scale in scales:
            world = base / scale
            built = build_world(world, scale)
            if built:
                print(f"  [{scale}] world built in {built:.0f} s", file=sys.stderr)
            for page, m in measure(world, runs).items():
                first, warm = statistics.median(m["first"]), statistics.median(m["after_warm_up"])
                rows.append({"what": f"dashboard first render, {page} ({scale} world)",
                             "value": f"{first:.2f} (after warm-up {warm:.2f}, repeat {m['repeat'][0]:.2f})",
                             "unit": "s",
                             "target": f"≤ {TARGET_S:g} s", "ok": first <= TARGET_S and not m["error"],
                             **({"error": m["error"]} if m["error"] else {})})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--world", type=Path, help="keep the built worlds here and reuse them")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.runs)))
        return 0
    rows = run(args.quick, args.runs, args.world)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["what"]) for r in rows)
    print(f"{'what':<{width}}  {'result':<46} {'target':<10} ok")
    for r in rows:
        ok = {True: "yes", False: "NO"}[r["ok"]]
        print(f"{r['what']:<{width}}  {r['value'] + ' ' + r['unit']:<46} {r['target']:<10} {ok}"
              + (f"  ({r['error']})" if "error" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
