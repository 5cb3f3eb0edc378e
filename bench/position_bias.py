"""What position-bias correction is worth, across training seeds, on one world (docs/quality.md).

On a fresh default-scale world (views logged at every rendered position by default):
fit the base models, estimate position bias from the legacy feed's randomised swaps, build
the feedback dataset once, then train the neural ranker with ``--position-correction none``
and ``ipw`` for each training seed, and score every model in one paired offline report
(the same 3,000 requests and random numbers). Gap closed is the share of the base→oracle
gap in expected CTR, with its bootstrap 95 % CI over requests.

    python bench/position_bias.py [--seed 42] [--train-seeds 1,2,3] [--view-logging rendered] [--json]

bench/quality.py measures the same from feedback and after one closed loop for one
training seed; this separates the correction's effect from training noise. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def study(seed: int, train_seeds: list[int], view_logging: str, requests: int, epochs: int) -> dict:
    from ranker import config
    from ranker.base import store
    from ranker.data.db import make_engine
    from ranker.ops.pipeline import train_and_register
    from ranker.ops.report import paired_simulation
    from ranker.rank.dataset import DatasetConfig, build_dataset
    from ranker.rank.propensity import estimate_from_log, save_estimate
    from ranker.rank.train import TrainConfig
    from ranker.serving.service import _SERVICES, service
    from ranker.sim.synth import build_world

    tmp = Path(tempfile.mkdtemp(prefix="position-bias-"))
    config.DATA_DIR, config.MODELS_DIR = tmp / "data", tmp / "models"
    store.clear_cache()
    _SERVICES.clear()
    engine = make_engine(f"sqlite:///{tmp / 'world.db'}")
    build_world(engine, seed=seed, scale="default", view_logging=view_logging)
    store.fit_base_models(engine)
    est = estimate_from_log(engine)
    save_estimate(engine, est)
    data = DatasetConfig(output=config.DATA_DIR / "fb.csv", val_output=config.DATA_DIR / "fb_val.csv")
    build_dataset(engine, data)
    scorers = {}
    for train_seed in train_seeds:
        for correction in ("none", "ipw"):
            cfg = TrainConfig(epochs=epochs, seed=train_seed, position_correction=correction)
            train_and_register(engine, data.output, cfg, val=data.val_output, activate=True)
            scorers[f"{correction}-{train_seed}"], fallback = service(engine).scorer()
            assert fallback is None, fallback
    policies = paired_simulation(engine, requests, seed=7, scorers=scorers)["policies"]
    return {"seed": seed, "view_logging": view_logging, "train_seeds": train_seeds,
            "propensity": {"eta": est.eta, "eta_ci": est.eta_ci, "lists": est.lists, "curve": est.curve},
            "gap_closed": {name: {"share": p["gap_closed"], "ci": p["gap_closed_ci"]} for name, p in policies.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=42, help="world seed")
    p.add_argument("--train-seeds", default="1,2,3")
    p.add_argument("--view-logging", default="rendered", choices=("rendered", "examined"))
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    seeds = [int(s) for s in args.train_seeds.split(",")]
    r = study(args.seed, seeds, args.view_logging, args.requests, args.epochs)
    if args.json:
        print(json.dumps(r, default=str, indent=1))
        return 0
    est = r["propensity"]
    print(f"world seed {r['seed']}, views {r['view_logging']}; position bias p(k)/p(1) = k^-{est['eta']:.2f} "
          f"(95% CI {est['eta_ci'][0]:.2f} to {est['eta_ci'][1]:.2f}) from {est['lists']:,} randomised lists")
    g = r["gap_closed"]
    print(f"{'training seed':>13} {'none':>22} {'ipw':>22} {'ipw - none':>11}")
    for s in seeds:
        none, ipw = g[f"none-{s}"], g[f"ipw-{s}"]
        print(f"{s:>13} {none['share']:>7.1%} ({none['ci'][0]:.1%}-{none['ci'][1]:.1%}) "
              f"{ipw['share']:>7.1%} ({ipw['ci'][0]:.1%}-{ipw['ci'][1]:.1%}) {ipw['share'] - none['share']:>+10.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
