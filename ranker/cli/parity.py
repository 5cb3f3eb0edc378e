"""CLI: ``ranker parity``, each feature's distribution in the training data against serving's."""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime
from pathlib import Path


def iso_time(text: str) -> datetime:
    """argparse type: an ISO 8601 time on the serve clock (naive UTC), e.g. 2026-01-01T00:00."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-01-01T00:00)") from None


def cmd_parity(args: argparse.Namespace) -> int:
    from ranker.data.db import ensure_schema, get_engine
    from ranker.evaluation.parity import latest_training_csv, parity_gate, parity_report

    engine = ensure_schema(get_engine())
    data = args.data or latest_training_csv(engine)
    report = parity_report(engine, data, start=args.start, end=args.end,
                           looked_at=False if args.every_impression else None)
    ok, reason = parity_gate(report)
    if args.json:
        print(json.dumps({**report.as_dict(), "gate": {"ok": ok, "reason": reason}}))
        return 0
    period = f"{_time(report.start, 'the first')} to {_time(report.end, 'the last')}"
    print(f"train/serve parity of {report.train_path} ({report.n_train:,} of its {report.train_rows:,} rows) "
          f"with {report.n_sampled:,} of {report.n_served:,} impressions served from {period}")
    print(f"period: {report.period}")
    print(f"impressions: {report.population}")
    print(f"  {'feature':14} {'PSI':>7} {'KS':>6} {'KS p':>8} {'n train':>8} {'n serving':>9} "
          f"{'mean train':>10} {'mean serving':>12}  verdict")
    for f in report.features:
        print(f"  {f.feature:14} {_num(f.psi, '.3f'):>7} {_num(f.ks, '.3f'):>6} {_num(f.ks_pvalue, '.2g'):>8} "
              f"{f.n_train:>8,} {f.n_serving:>9,} {_num(f.train_mean, '.3f'):>10} {_num(f.serving_mean, '.3f'):>12}"
              f"  {f.verdict}")
    print(f"promotion gate: {'passes' if ok else 'fails'}: {reason}")
    return 0


def _num(v: float, fmt: str) -> str:
    return "-" if math.isnan(v) else format(v, fmt)


def _time(t: datetime | None, missing: str) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}" if t else missing


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "parity", help="train/serve parity: PSI and KS per feature, training data against served impressions",
        description="Compares each feature of the training data with the features serving logged with its "
                    "impressions over the same period. PSI < 0.1 ok, 0.1-0.2 watch, > 0.2 skewed (the "
                    "promotion gate's limit). See docs/datasets.md#trainserve-parity.")
    p.add_argument("--data", type=Path, default=None,
                   help="training CSV (default: the file the last `ranker dataset` wrote)")
    p.add_argument("--start", type=iso_time, default=None,
                   help="compare with impressions served from this time (default: the training data's span)")
    p.add_argument("--end", type=iso_time, default=None, help="... up to this time, excluded")
    p.add_argument("--every-impression", action="store_true",
                   help="compare with every served impression, not only those someone looked at (adds "
                        "position bias: which items get looked at is not how features are computed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_parity)
