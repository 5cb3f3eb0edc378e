"""CLI: ``ranker propensity estimate|show|share``: position bias from randomised swaps."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta

from ranker import config
from ranker.cli import positive_float


def cmd_propensity(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.rank import propensity

    engine = ensure_schema(get_engine())
    if args.propensity_command == "share":
        if args.share is not None:
            propensity.save_swap_share(engine, args.share)
        share = propensity.swap_share(engine)
        print(f"swap share: {share:.1%} of reranked treatment lists are served with randomised adjacent swaps")
        return 0
    if args.propensity_command == "estimate":
        start = end = None
        if args.days is not None:
            from ranker.data.clock import serve_now
            from ranker.data.db import session_scope

            with session_scope(engine) as s:
                end = serve_now(s)
            start = end - timedelta(days=args.days)
        est = propensity.estimate_from_log(engine, start, end, seed=args.seed)
        if not args.no_save:
            propensity.save_estimate(engine, est)
    else:
        est = propensity.saved_estimate(engine)
        if est is None:
            raise propensity.PropensityError("no position-bias estimate saved yet; run `ranker propensity estimate`")
    if args.json:
        print(json.dumps(est.as_dict()))
        return 0
    _print_estimate(est)
    if args.propensity_command == "estimate" and not args.no_save:
        print("saved: `ranker train --position-correction ipw` weights with the fitted curve")
    return 0


def _print_estimate(est) -> None:
    print(f"position bias from {est.lists:,} randomised lists ({est.pairs_used:,} adjacent pairs, {est.clicks:,} "
          f"clicks on them; {est.same_category_left_out:,} pairs of one category left out), {est.estimated_at}")
    fitted = est.weighting_curve(len(est.curve))
    print(f"{'position':>8} {'p(k)/p(1)':>10} {'95% CI':>17} {'fitted':>8}")
    for k, (v, lo, hi, f) in enumerate(zip(est.curve, est.low, est.high, fitted), start=1):
        print(f"{k:>8} {v:>10.3f} {lo:>8.3f} - {hi:<6.3f} {f:>8.3f}")
    print(f"fitted: {est.summary()}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    prop = sub.add_parser("propensity", help="position bias: estimate p(k)/p(1) from randomised swaps, "
                                             "set the swap share").add_subparsers(
        dest="propensity_command", required=True, metavar="ACTION")
    est = prop.add_parser("estimate", help="estimate the examination curve from the lists served with swaps "
                                           "and save it for --position-correction ipw")
    est.add_argument("--days", type=positive_float, default=None,
                     help="only lists of the last N days before the clock (default: every logged list)")
    est.add_argument("--seed", type=int, default=config.DEFAULTS.seed, help="the bootstrap's seed")
    est.add_argument("--no-save", action="store_true", help="print only; keep the saved estimate")
    est.add_argument("--json", action="store_true")
    show = prop.add_parser("show", help="the saved estimate")
    show.add_argument("--json", action="store_true")
    share = prop.add_parser("share", help="show, or set, the share of reranked treatment lists served with "
                                          "randomised adjacent swaps")
    share.add_argument("share", nargs="?", type=float, default=None,
                       help=f"a share from 0 (off) to 1 (default {config.DEFAULTS.swap_share:g})")
    for p in (est, show, share):
        p.set_defaults(handler=cmd_propensity)
