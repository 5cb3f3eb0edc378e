"""Does a listwise loss help? Pairwise against ListNet and LambdaLoss on the demo world's data.

    python bench/listwise.py [--scale small|default] [--source feedback|impressions] \
        [--neg-ratio 2] [--seeds 1,2,3,4,5] [--epochs 20] [--data ranker_train.csv] [--json]

Builds the demo world (``--scale``, world seed 42) and its training data (or reads
``--data``), splits its lists by time into train / validation / test (the latest 20 %
for test, the 20 % before for validation), trains each loss once per training seed on
the earliest lists, keeps the epoch with the best validation loss (as ``ranker train``
does), and reports NDCG@10 on the test lists: per loss the median over seeds with the
min..max, and the paired difference from pairwise (same seed). The base order and the
rule are printed for scale. Nothing is asserted: it measures and prints.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_data(scale: str, source: str, neg_ratio: float) -> Path:
    """A fresh demo world in a temp folder and its training CSV (all lists in one file)."""
    from ranker import config
    from ranker.base import store
    from ranker.data.db import make_engine
    from ranker.rank.dataset import DatasetConfig, build_dataset
    from ranker.sim.simulate import simulate
    from ranker.sim.synth import build_world

    tmp = Path(tempfile.mkdtemp(prefix=f"listwise-{scale}-"))
    config.DATA_DIR, config.MODELS_DIR = tmp / "data", tmp / "models"
    store.clear_cache()
    engine = make_engine(f"sqlite:///{tmp / 'world.db'}")
    build_world(engine, seed=42, preset="default", scale=scale)
    store.fit_base_models(engine)
    if source == "impressions":  # served lists need traffic through recommend()
        simulate(engine, days=3, requests_per_day=1000, seed=11)
    out = config.DATA_DIR / f"{source}.csv"
    build_dataset(engine, DatasetConfig(output=out, source=source, neg_ratio=neg_ratio))
    return out


def measure(data_path: Path, losses: list[str], seeds: list[int], epochs: int) -> dict:
    import numpy as np

    from ranker.rank.train import TrainConfig, evaluate_model, list_parts, load_dataset, train

    data = load_dataset(data_path, min_positives=1)
    parts = list_parts(data, (0.2, 0.2))
    tr, va, te = (data.subset(parts == i) for i in range(3))
    sizes = np.bincount(data.groups)
    out: dict = {"data": str(data_path), "rows": len(data), "lists": int(len(sizes)),
                 "mean_list_rows": float(sizes.mean()), "max_list_rows": int(sizes.max()),
                 "test_lists": int(len(np.unique(te.groups))), "epochs": epochs, "seeds": seeds, "losses": {}}
    for loss in losses:
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            result = train(tr, TrainConfig(loss=loss, seed=seed, epochs=epochs), val=va)
            model = result.model
            if result.best_state is not None:
                model.load_state_dict(result.best_state)
            m = evaluate_model(model, te)
            runs.append({"seed": seed, "ndcg@10": m["model"]["ndcg@10"], "best_epoch": result.best_epoch,
                         "seconds": time.perf_counter() - start})
        out["losses"][loss] = runs
    out["base_ndcg@10"], out["rule_ndcg@10"] = m["base"]["ndcg@10"], m["rule"]["ndcg@10"]
    return out


def table(res: dict) -> str:
    lines = [f"{res['data']}: {res['rows']:,} rows, {res['lists']:,} lists (mean {res['mean_list_rows']:.1f} rows, "
             f"max {res['max_list_rows']}), test {res['test_lists']:,} lists; {res['epochs']} epochs, "
             f"seeds {','.join(map(str, res['seeds']))}",
             f"{'loss':11} {'NDCG@10 median':>15} {'min..max':>17} {'vs pairwise (paired) median':>28} "
             f"{'min..max':>17} {'s/run':>6}"]
    pair = [r["ndcg@10"] for r in res["losses"].get("pairwise", [])]
    for loss, runs in res["losses"].items():
        v = [r["ndcg@10"] for r in runs]
        row = f"{loss:11} {statistics.median(v):>15.4f} {min(v):>8.4f}..{max(v):.4f}"
        if pair and loss != "pairwise":
            d = [a - b for a, b in zip(v, pair)]
            row += f" {statistics.median(d):>+28.4f} {min(d):>+8.4f}..{max(d):+.4f}"
        else:
            row += f" {'':>28} {'':>17}"
        row += f" {statistics.median(r['seconds'] for r in runs):>6.1f}"
        lines.append(row)
    lines.append(f"{'base order':11} {res['base_ndcg@10']:>15.4f}")
    lines.append(f"{'rule':11} {res['rule_ndcg@10']:>15.4f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=("small", "default"), default="small")
    p.add_argument("--source", choices=("feedback", "impressions"), default="feedback")
    p.add_argument("--neg-ratio", type=float, default=None,
                   help="negatives sampled per positive in the built data (default: the dataset's, 2); "
                        "more gives longer lists")
    p.add_argument("--data", type=Path, default=None, help="a training CSV to use instead of building a world")
    p.add_argument("--losses", default="pairwise,listnet,lambdaloss")
    p.add_argument("--seeds", default="1,2,3,4,5", help="training seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from ranker import config

    path = args.data or build_data(args.scale, args.source, args.neg_ratio or config.DEFAULTS.neg_ratio)
    res = measure(path, args.losses.split(","), [int(s) for s in args.seeds.split(",")], args.epochs)
    print(json.dumps(res) if args.json else table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
