"""CLI: simulate, report, experiment."""

from __future__ import annotations

import argparse
import json
import math

from ranker import config, keys
from ranker.cli import CLIError

D = config.DEFAULTS  # every default flag value comes from here


def cmd_simulate(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.sim.simulate import simulate

    unfinished = "resume" if args.resume else "discard" if args.discard else "auto"
    s = simulate(ensure_schema(get_engine()), days=args.days, requests_per_day=args.requests_per_day,
                 seed=args.seed, refit_base=not args.no_refit, show_bar=True, unfinished=unfinished,
                 notice=lambda message: print(message, flush=True))
    print(f"simulation run {s.run_id}: simulated {s.requests:,} requests over {s.days} day(s) ({s.start} → {s.end}): "
          f"{s.impressions:,} impressions, {s.clicks:,} clicks, {s.positives:,} explicit positives, "
          f"{s.new_items:,} new items")
    for arm, a in sorted(s.by_arm.items()):
        ctr = a["clicks"] / a["impressions"] if a["impressions"] else float("nan")
        print(f"  {arm:9} {a['requests']:>6,} requests  CTR {ctr:.4f}")
    return 0


def _fmt(v, pct=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.1%}" if pct else f"{v:.4f}"


def cmd_report(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.ops.report import build_report

    report = build_report(ensure_schema(get_engine()), requests=args.requests, seed=args.seed, show_bar=True,
                          compare=args.compare)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    print("Online (served traffic, per arm)")
    if not report["online"]["arms"]:
        print("  no impressions logged yet: run `ranker simulate`")
    for a in report["online"]["arms"]:
        print(f"  {a['arm']:9} impressions {a['impressions']:>8,}  CTR {_fmt(a[keys.CTR])}  "
              f"ILD {_fmt(a.get(keys.ILD))}  mean age {a.get(keys.MEAN_AGE_DAYS, float('nan')):.1f} d")
    print(f"  A/B: {report['online']['ab']['verdict']}")
    for g in report["online"]["guardrails"].values():
        if g["enough_data"]:
            print(f"  {g['verdict']}")
    if report["online"]["cohorts"]:
        print("  CTR by cohort (what the user had done strictly before each request):")
    for c in report["online"]["cohorts"]:
        print(f"    {c['arm']:9} {c['label']:17} lists {c['lists']:>6,} ({c['trending_lists']:,} trending)  "
              f"impressions {c['impressions']:>8,}  CTR {_fmt(c[keys.CTR])}")
    off = report["offline"]
    if off:
        print(f"\nOffline: paired simulated traffic ({off['requests']:,} requests, same users, candidates and "
              f"random numbers; {off['skipped_trending']} trending requests excluded). Gap closed: the share of "
              "the base→oracle gap in expected CTR, with a bootstrap 95 % CI over requests")
        width = max(9, *(len(name) for name in off["policies"]))
        print(f"  {'policy':{width}} {'CTR':>7} {'exp. CTR':>8} {'lift':>7} {'p':>8} {'gap closed (95% CI)':>28} "
              f"{'ILD':>7} {'age d':>6}")
        for name, p in off["policies"].items():
            low, high = p["gap_closed_ci"]
            gap = f"{_fmt(p['gap_closed'], True)} ({_fmt(low, True)} to {_fmt(high, True)})"
            print(f"  {name:{width}} {_fmt(p[keys.CTR])} {_fmt(p['expected_ctr']):>8} "
                  f"{_fmt(p['lift_vs_base'], True):>7} {p.get('p_value_vs_base', float('nan')):>8.2g} {gap:>28} "
                  f"{_fmt(p[keys.ILD])} {p[keys.MEAN_AGE_DAYS]:>6.1f}")
        print("  Expected CTR by cohort, every request (a trending one shows the trending list under every policy "
              "but the oracle):")
        for c in off["cohorts"].values():
            if c["requests"]:
                print(f"    {c['label']:17} {c['requests']:>6,} requests ({c['trending']:,} trending)  "
                      + "  ".join(f"{name} {_fmt(p['expected_ctr'])}" for name, p in c["policies"].items()))
    peer = report.get("peer") or {}
    if "rounds" in peer:
        print(f"LightGBM peer: {peer['rounds']} rounds (early stopping, at most {peer['max_rounds']}), trained on "
              f"{peer['version']}'s training file {peer['data_path']} (hash {peer['data_hash']}); validation: "
              f"{peer['validation']}")
    for note in report["notes"]:
        print(f"note: {note}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.serving import experiments as ex

    engine = ensure_schema(get_engine())
    if args.action == "list":
        return _list_experiments(ex.list_experiments(engine))
    if args.action == "analyse":
        return _analyse_experiment(engine, args.name)
    if args.action == "start":
        rec = ex.start_experiment(engine, args.name, args.rollout, owner=args.owner)
        print(f"started experiment {rec.name!r} at {rec.started_at:%Y-%m-%d %H:%M} (serve clock): "
              f"{rec.allocation:g}% of users get the ranker, the rest the base order")
        return 0
    if args.action == "stop":
        rec = ex.stop_experiment(engine, owner=args.owner)
        print(f"stopped experiment {rec.name!r} at {rec.ended_at:%Y-%m-%d %H:%M}; everyone gets the ranker. "
              f"Analyse it with `ranker experiment analyse --name {rec.name}`")
        return 0
    if args.action == "set":
        if args.rollout is None:
            raise ValueError("nothing to set: give --rollout PERCENT")
        ex.set_rollout(engine, args.rollout, owner=args.owner)
    exp = ex.get_experiment(engine)
    if exp.running:
        print(f"experiment {exp.name!r}: running since {exp.started_at}, {exp.rollout:g}% of users in treatment")
    else:
        print("no experiment is running: everyone gets the ranker "
              "(start one with `ranker experiment start --name NAME [--rollout PERCENT]`)")
    return 0


def _list_experiments(records) -> int:
    if not records:
        print("no experiments yet; start one with `ranker experiment start --name NAME`")
        return 0
    for r in records:
        end = f"{r.ended_at:%Y-%m-%d %H:%M}" if r.ended_at else "running"
        print(f"{r.id:>3} {r.name:<24} {r.allocation:>5g}%  {r.started_at:%Y-%m-%d %H:%M} → {end:<16} {r.owner}")
    return 0


def _analyse_experiment(engine, name: str | None) -> int:
    from ranker.serving.online import LATEST, ab_test, guardrail_tests

    which = name or LATEST
    res = ab_test(engine, experiment=which)
    print(f"experiment {res.experiment or '(none: all traffic)'}")
    print(res.verdict)
    for guard in guardrail_tests(engine, experiment=which).values():
        print(guard.verdict)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.rank import tuning
    from ranker.rank.rerank import validate_fetch_multiplier, validate_freshness_boost, validate_weights

    engine = ensure_schema(get_engine())
    tuning.feature_set(engine)  # a weight per feature of the operator's set
    if args.action == "set":
        if not args.pairs and args.freshness_boost is None and args.candidates_per_slot is None:
            raise ValueError("nothing to set: give NAME=WEIGHT pairs, --freshness-boost B and/or "
                             "--candidates-per-slot M")
        changes = {}
        for pair in args.pairs:
            name, _, value = pair.partition("=")  # no "=" leaves value empty: float("") fails
            try:
                changes[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"{pair!r} is not NAME=WEIGHT (e.g. recency=0.3)") from None
        # Check everything before saving anything: a bad boost must not leave new weights behind.
        weights = validate_weights({**tuning.current_weights(engine), **changes}) if args.pairs else None
        boost = validate_freshness_boost(args.freshness_boost) if args.freshness_boost is not None else None
        fetch = (validate_fetch_multiplier(args.candidates_per_slot) if args.candidates_per_slot is not None
                 else None)
        if weights is not None:
            tuning.save_weights(engine, weights)
        if boost is not None:
            tuning.save_freshness_boost(engine, boost)
        if fetch is not None:
            tuning.save_fetch_multiplier(engine, fetch)
    weights = tuning.current_weights(engine)
    print("rule weights: " + ", ".join(f"{k} {v:g}" for k, v in weights.items()))
    print(f"freshness boost (neural ranker): {tuning.freshness_boost(engine):g}")
    print(f"candidates per slot: {tuning.fetch_multiplier(engine)} (the base model proposes that many × k)")
    return 0


def cmd_diversity(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.rank import tuning

    engine = ensure_schema(get_engine())
    if args.action == "set":
        if args.method is None:
            raise ValueError("nothing to set: give --method greedy, mmr or dpp (and --knob K for mmr or dpp)")
        chosen = tuning.save_diversity(engine, args.method, args.knob)
        print(f"saved: serving reranks with {chosen.label} from the next request")
    elif args.method is not None or args.knob is not None:
        raise ValueError("`ranker diversity show` changes nothing: use `ranker diversity set --method M [--knob K]`")
    current = tuning.diversity(engine)
    print(f"diversity method: {current.label}"
          + ("" if current.knob is None else " (lower is more diverse; 1 for mmr, or near 1 for dpp, is the "
                                             "relevance order)"))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.rank import tuning
    from ranker.rank.features import feature_names, use_feature_set

    engine = ensure_schema(get_engine())
    if args.action == "set":
        if args.name is None:
            raise ValueError("nothing to set: give the set's name, guide or history")
        tuning.save_feature_set(engine, args.name)
        print(f"saved: datasets, training and serving use the {args.name} features from now on; a model "
              "trained on another set is not served until one is trained on this set (`ranker retrain`)")
    elif args.name is not None:
        raise ValueError(f"`ranker features show` changes nothing: use `ranker features set {args.name}`")
    name = tuning.feature_set(engine)
    use_feature_set(name)
    print(f"feature set: {name} ({', '.join(feature_names())})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from ranker.cli import positive_int as _positive_int

    sim = sub.add_parser("simulate", help="simulated traffic through recommend() on the demo world")
    sim.add_argument("--days", type=_positive_int, default=D.sim_days)
    sim.add_argument("--requests-per-day", type=_positive_int, default=D.sim_requests_per_day)
    sim.add_argument("--seed", type=int, default=D.sim_seed)
    sim.add_argument("--no-refit", action="store_true", help="keep the base models fixed (faster)")
    after_crash = sim.add_mutually_exclusive_group()
    after_crash.add_argument("--resume", action="store_true",
                             help="finish the unfinished run (stopped by a crash) with its own settings")
    after_crash.add_argument("--discard", action="store_true",
                             help="roll the unfinished run's partial day back, then start this run")
    sim.set_defaults(handler=cmd_simulate)

    rep = sub.add_parser("report", help="online metrics per arm, A/B verdict, offline comparison with the oracle")
    rep.add_argument("--requests", type=_positive_int, default=D.report_requests)
    rep.add_argument("--seed", type=int, default=D.report_seed)
    rep.add_argument("--compare", action="append", default=[], metavar="VERSION",
                     help="also score this registered model version on the same requests (repeatable)")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(handler=cmd_report)

    exp = sub.add_parser("experiment", help="A/B experiments: show, start, stop, set rollout, list, analyse")
    exp.add_argument("action", choices=("show", "start", "stop", "set", "list", "analyse"))
    exp.add_argument("--name", default=None,
                     help="start: the new experiment's name (default experiment-N); analyse: which one "
                          "(name or id; default the running or latest)")
    exp.add_argument("--rollout", type=float, default=None, help="percent of users in treatment (0-100)")
    exp.add_argument("--owner", default="cli", help="who starts or stops it (kept in the record)")
    exp.set_defaults(handler=cmd_experiment)

    w = sub.add_parser("weights", help="show or set the rule weights and the neural ranker's freshness boost")
    w.add_argument("action", choices=("show", "set"))
    w.add_argument("pairs", nargs="*", metavar="NAME=WEIGHT", help="rule weights to change, each in [0, 1]")
    w.add_argument("--freshness-boost", type=float, default=None, metavar="B",
                   help="boost × recency added to the neural ranker's score (0 turns it off; at most 5)")
    w.add_argument("--candidates-per-slot", type=float, default=None, metavar="M",
                   help=f"the base model proposes M × k candidates to rerank (default {config.FETCH_MULTIPLIER}, "
                        f"1 to {config.MAX_FETCH_MULTIPLIER})")
    w.set_defaults(handler=cmd_weights)

    div = sub.add_parser("diversity", help="show or set how the reranked lists are diversified: the guide's greedy "
                                           "penalty (default), MMR or DPP, with a trade-off knob")
    div.add_argument("action", choices=("show", "set"))
    div.add_argument("--method", default=None, metavar="METHOD", help="greedy, mmr or dpp")
    div.add_argument("--knob", type=float, default=None, metavar="K",
                     help=f"the trade-off, lower is more diverse: MMR's λ in [0, 1] (default {D.mmr_knob:g}), "
                          f"the DPP's θ in [0, 1) (default {D.dpp_knob:g}); greedy has none")
    div.set_defaults(handler=cmd_diversity)

    feats = sub.add_parser("features", help="show or set the feature set: guide (the guide's four, default) or "
                                            "history (plus point-in-time history features)")
    feats.add_argument("action", choices=("show", "set"))
    feats.add_argument("name", nargs="?", choices=config.FEATURE_SETS, default=None)
    feats.set_defaults(handler=cmd_features)
    add_job_commands(sub)




def cmd_jobs(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.ops import jobs

    engine = ensure_schema(get_engine())
    if args.jobs_command == "run":
        _job(engine, args.job_id)
        return jobs.run(engine, args.job_id)
    if args.jobs_command == "cancel":
        if (job := _job(engine, args.job_id)).status not in jobs.ACTIVE:
            raise CLIError(f"job {job.id} is {job.status}: there is nothing to cancel; "
                           "`ranker jobs list` shows the running ones")
        jobs.cancel(engine, args.job_id, actor="cli")
        print(f"cancel requested for job {args.job_id}")
        return 0
    jobs.reap(engine)
    for j in jobs.recent(engine, limit=args.limit):
        print(f"{j.id:>5} {j.kind:9} {j.status:10} {j.progress or 0:>5.0%}  {j.created_at:%Y-%m-%d %H:%M:%S}  "
              f"{j.error or j.message or ''}")
    return 0


def _job(engine, job_id: int):  # noqa: ANN202
    from ranker.ops import jobs

    try:
        return jobs.get(engine, job_id)
    except ValueError:
        raise CLIError(f"no job {job_id}; `ranker jobs list` shows the recent ones") from None


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    from ranker.cli import positive_int

    jobs = sub.add_parser("jobs", help="background jobs started from the dashboard").add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION")
    ls = jobs.add_parser("list", help="recent jobs")
    ls.add_argument("--limit", type=positive_int, default=D.list_limit)
    ls.set_defaults(handler=cmd_jobs)
    run = jobs.add_parser("run", help="run a queued job in this process (the dashboard's worker)")
    run.add_argument("job_id", type=int)
    run.set_defaults(handler=cmd_jobs)
    cancel = jobs.add_parser("cancel", help="ask a running job to stop")
    cancel.add_argument("job_id", type=int)
    cancel.set_defaults(handler=cmd_jobs)
