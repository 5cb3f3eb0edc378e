"""The quality study behind the README's figures (SPEC §10, issue "Experiments").

For each preset (default, no-context) on a fresh default-scale world:
1. fit the base models, build the feedback dataset, train and activate the ranker;
2. run the paired offline report (base, rule, neural, LightGBM, oracle);
3. serve simulated A/B traffic through ``recommend()`` and analyse it (delta method,
   for CTR, diversity and freshness);
4. closed loop (``--loops`` rounds): dataset from the logged impressions → retrain →
   report, with the previous round's model on the same requests (``neural_prev``) →
   serve again.

    python bench/quality.py [--days 3] [--requests-per-day 1000] [--seeds 42,1,2,3] [--refit] [--json]

Gap closed is the share of the base→oracle gap in *expected* CTR (the click model's
probabilities, summed), with a bootstrap 95 % CI over the report's requests. The LightGBM
peer trains on the active model's training file with early stopping on its validation
file; its rounds are printed.

The base models stay as fitted on the world as built unless ``--refit`` refits them
every simulated day (as ``ranker simulate`` does). Each round's paired report also
scores the previous round's model (``neural_prev``), i.e. that model on the day its A/B
ended; after the last A/B the report runs once more. ``RANKER_EXTRA_FEATURES=user_affinity``
measures the optional feature. ``--view-logging examined`` builds the world whose views hide
position bias from training; ``--position-correction`` (``auto`` by default, as in
``ranker train``) estimates the bias from the randomised swaps logged so far before each
training round and trains with inverse propensity weights; ``none`` leaves them out.

Takes several minutes. Nothing here is asserted: it measures and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def study(preset: str, days: int, per_day: int, report_requests: int, loops: int = 1,
          train_cfg: dict | None = None, seed: int = 42, refit_base: bool = False,
          freshness_boost: float = 0.0, features: str = "guide", view_logging: str = "rendered",
          position_correction: str = "auto") -> dict:
    from ranker import config
    from ranker.base import store
    from ranker.data.db import make_engine
    from ranker.ops.pipeline import train_and_register
    from ranker.ops.report import lightgbm_peer, paired_simulation
    from ranker.rank.dataset import DatasetConfig, build_dataset
    from ranker.rank.metrics import mean_ndcg_at_k
    from ranker.rank.train import TrainConfig, load_dataset
    from ranker.serving.online import ab_test, guardrail_tests, summary_by_arm
    from ranker.serving.service import _SERVICES, service
    from ranker.sim.simulate import simulate
    from ranker.sim.synth import build_world

    tmp = Path(tempfile.mkdtemp(prefix=f"quality-{preset}-"))
    config.DATA_DIR, config.MODELS_DIR = tmp / "data", tmp / "models"
    store.clear_cache()
    _SERVICES.clear()
    engine = make_engine(f"sqlite:///{tmp / 'world.db'}")
    build_world(engine, seed=seed, preset=preset, scale="default", view_logging=view_logging)
    store.fit_base_models(engine)
    from ranker.rank.features import use_feature_set
    from ranker.rank.tuning import save_feature_set

    save_feature_set(engine, features, actor="bench")  # serving follows the setting; datasets use this process's
    use_feature_set(features)
    if freshness_boost:
        from ranker.rank.tuning import save_freshness_boost

        save_freshness_boost(engine, freshness_boost, actor="bench")
    out: dict = {"preset": preset, "seed": seed, "freshness_boost": freshness_boost, "features": features,
                 "view_logging": view_logging, "position_correction": position_correction}

    previous: dict = {}

    def round_(name: str, data: Path, val: Path, last: bool) -> None:
        if position_correction != "none":  # from every list served with swaps so far (legacy, then A/B)
            from ranker.rank.propensity import PropensityError, estimate_from_log, save_estimate

            try:
                est = estimate_from_log(engine)
            except PropensityError:
                if position_correction == "ipw":
                    raise
            else:
                save_estimate(engine, est)
                out[f"{name}_propensity"] = {k: getattr(est, k) for k in ("curve", "low", "high", "eta", "eta_ci",
                                                                         "lists", "clicks")}
        cfg = TrainConfig(**(train_cfg or {}), position_correction=position_correction)
        trained = train_and_register(engine, data, cfg, val=val, activate=True)
        out[f"{name}_offline_val"] = {k: trained.metrics[k] for k in ("model", "rule", "base")}
        svc = service(engine)
        served, fallback = svc.scorer()
        assert fallback is None, f"the trained model is not serving: {fallback}"
        # The peer: the active model's training file (hash checked), early-stopped on the same validation file.
        peer, out[f"{name}_peer"] = lightgbm_peer(engine, val=val)
        assert peer is not None, out[f"{name}_peer"]["skipped"]
        scorers = {"rule": svc.rule_scorer(), "neural": served, "lightgbm": peer}
        if "neural" in previous:  # does the loop improve the ranker? Same requests, same random numbers.
            scorers["neural_prev"] = previous["neural"]
        previous["neural"] = scorers["neural"]
        v = load_dataset(val, min_positives=1)
        out[f"{name}_offline_val"]["lightgbm"] = {
            "ndcg@10": mean_ndcg_at_k(v.y, scorers["lightgbm"](v.x), v.groups, 10)}
        out[f"{name}_paired"] = paired_simulation(engine, report_requests, seed=7, scorers=scorers)["policies"]
        start = svc_clock(engine)
        simulate(engine, days=days, requests_per_day=per_day, seed=11, refit_base=refit_base)
        ab = ab_test(engine, start=start)
        out[f"{name}_ab"] = ab.__dict__ | {"control": ab.control.__dict__, "treatment": ab.treatment.__dict__}
        out[f"{name}_guardrails"] = [g.verdict for g in guardrail_tests(engine, start=start).values()]
        arms = summary_by_arm(engine, start=start)
        out[f"{name}_arms"] = arms.reset_index().to_dict(orient="records")
        # The A/B moved the clock and the view counts (and, with --refit, the base models):
        # compare again on the day it ended. Before a further round, that round's paired run
        # is this comparison (its neural_prev is this model on the same state and requests).
        if last:
            out[f"{name}_paired_after_ab"] = paired_simulation(engine, report_requests, seed=7,
                                                               scorers=scorers)["policies"]

    feedback = DatasetConfig(output=config.DATA_DIR / "fb.csv", val_output=config.DATA_DIR / "fb_val.csv")
    build_dataset(engine, feedback)
    round_("feedback", feedback.output, feedback.val_output, last=loops == 0)
    for i in range(1, loops + 1):
        loop = DatasetConfig(output=config.DATA_DIR / f"imp{i}.csv", val_output=config.DATA_DIR / f"imp{i}_val.csv",
                             source="impressions")
        build_dataset(engine, loop)
        round_(f"closed_loop_{i}", loop.output, loop.val_output, last=i == loops)
    out["stages"] = ["feedback", *(f"closed_loop_{i}" for i in range(1, loops + 1))]
    return out


def svc_clock(engine):
    from ranker.data.clock import serve_now
    from ranker.data.db import session_scope

    with session_scope(engine) as s:
        return serve_now(s)


def _boost(text: str) -> float:
    from ranker.rank.rerank import validate_freshness_boost

    try:
        return validate_freshness_boost(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--requests-per-day", type=int, default=1000)
    p.add_argument("--report-requests", type=int, default=3000)
    p.add_argument("--presets", default="default,no-context")
    p.add_argument("--loops", type=int, default=1, help="closed-loop rounds after the feedback round")
    p.add_argument("--arch", default="default", help="ranker architecture: small, default or large")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--seeds", default="42", help="world seeds, comma-separated (simulation and report seeds "
                                                "are fixed)")
    p.add_argument("--seed", type=int, default=None, help="one world seed (the same as --seeds N)")
    p.add_argument("--refit", action="store_true",
                   help="refit the base models every simulated day, as `ranker simulate` does by default; "
                        "without it they stay as fitted on the world as built, so every round measures the "
                        "ranker against the same base (and items added while simulating are never candidates)")
    p.add_argument("--freshness-boost", type=_boost, default=0.0,
                   help="serve the neural ranker with this freshness boost (the Rule weights page's setting)")
    p.add_argument("--features", default="guide", help="the feature set: guide or history")
    p.add_argument("--view-logging", default="rendered", choices=("rendered", "examined"),
                   help="how the world logs views: every rendered position, or only the examined ones")
    p.add_argument("--position-correction", default="auto", choices=("auto", "ipw", "none"),
                   help="ipw (auto when an estimate can be made): estimate position bias from the randomised swaps "
                        "before each training round and weight each click by 1 / p(position)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    train_cfg = {"arch": args.arch, "epochs": args.epochs, "lr": args.lr}
    seeds = [args.seed] if args.seed is not None else [int(s) for s in args.seeds.split(",")]
    results = [study(preset, args.days, args.requests_per_day, args.report_requests, args.loops, train_cfg, seed,
                     args.refit, args.freshness_boost, args.features, args.view_logging, args.position_correction)
               for seed in seeds for preset in args.presets.split(",")]
    if args.json:
        print(json.dumps(results, default=str, indent=1))
        return 0
    for r in results:
        print(f"\n=== preset {r['preset']}, world seed {r['seed']}, features {r['features']}, "
              f"freshness boost {r['freshness_boost']:g}, views {r['view_logging']}, "
              f"position correction {r['position_correction']} ===")
        for stage in r["stages"]:
            v = r[f"{stage}_offline_val"]
            print(f"[{stage}] validation NDCG@10: neural {v['model']['ndcg@10']:.4f}  rule {v['rule']['ndcg@10']:.4f}"
                  f"  base {v['base']['ndcg@10']:.4f}  LightGBM {v['lightgbm']['ndcg@10']:.4f}")
            for key, title in ((f"{stage}_paired", "paired offline simulation"),
                               (f"{stage}_paired_after_ab", "paired again when the A/B ended")):
                if key not in r:
                    continue
                print(f"[{stage}] {title}:")
                for name, pol in r[key].items():
                    low, high = pol["gap_closed_ci"]
                    print(f"    {name:11} CTR {pol['ctr']:.4f}  expected {pol['expected_ctr']:.4f}  "
                          f"lift {pol['lift_vs_base']:+.1%}  p {pol.get('p_value_vs_base', float('nan')):.2g}  "
                          f"gap closed {pol['gap_closed']:+.1%} (95% CI {low:+.1%} to {high:+.1%})  "
                          f"ILD {pol['ild']:.3f}  age {pol['mean_age_days']:.1f} d")
            if f"{stage}_propensity" in r:
                est = r[f"{stage}_propensity"]
                low, high = est["eta_ci"] or (float("nan"), float("nan"))
                print(f"[{stage}] position bias: p(k)/p(1) = k^-{est['eta']:.2f} (95% CI {low:.2f} to {high:.2f}) "
                      f"from {est['lists']:,} randomised lists; per position "
                      + " ".join(f"{v:.2f}" for v in est["curve"]))
            peer = r[f"{stage}_peer"]
            print(f"[{stage}] LightGBM peer: {peer['rounds']} rounds (early stopping, at most {peer['max_rounds']}) "
                  f"on {peer['train_rows']:,} rows, {peer['validation']}")
            ab = r[f"{stage}_ab"]
            print(f"[{stage}] A/B (served traffic): {ab['verdict']}")
            for verdict in r[f"{stage}_guardrails"]:
                print(f"    {verdict}")
            for a in r[f"{stage}_arms"]:
                print(f"    {a['arm']:9} CTR {a['ctr']:.4f}  ILD {a['ild']:.3f}  age {a['mean_age_days']:.1f} d")
    return 0


if __name__ == "__main__":
    sys.exit(main())
