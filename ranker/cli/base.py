"""CLI: ``ranker base fit``, ``ranker base evaluate`` and ``ranker candidates``.

``ranker evaluate`` belongs to :mod:`ranker.cli.data_import` (end-to-end
evaluation, a leaf command), so the base-model evaluation lives under ``base``.
:func:`add_evaluate_base` adds it as ``ranker evaluate base`` too, wherever a
module turns ``evaluate`` into a group of subcommands.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ranker import config
from ranker.cli import positive_float, positive_int  # noqa: E402
from ranker.flows import personalised_flows

D = config.DEFAULTS  # every default flag value comes from here

Progress = Callable[[float, str], None]


def _model_list(text: str) -> list[str]:
    from ranker.base import MODEL_NAMES

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in MODEL_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model {bad[0] if bad else text!r}; valid: {', '.join(MODEL_NAMES)}")
    return names


@contextmanager
def _bar(desc: str, enabled: bool = True) -> Iterator[Progress]:
    """A tqdm bar driven by ``progress(fraction, message)`` callbacks."""
    from tqdm import tqdm

    with tqdm(total=100, desc=desc, unit="%", disable=not enabled,
              bar_format="{l_bar}{bar}| {postfix}") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.update(round(100 * fraction) - bar.n)
            bar.set_postfix_str(message)

        yield progress


def _engine():  # noqa: ANN202
    from ranker.data.db import ensure_schema, get_engine

    return ensure_schema(get_engine())  # a new database gets its tables, then a one-line "empty" error


def cmd_base_fit(args: argparse.Namespace) -> int:
    from ranker.base.store import fit_base_models, models_dir

    engine = _engine()
    with _bar("fitting base models") as progress:
        models = fit_base_models(engine, names=args.models, seed=args.seed, progress=progress)
    for name, model in models.items():
        print(f"{name:<11} {model.version_}  users {len(model.user_ids_):>6,}  "
              f"items {len(model.item_ids_):>6,}")
    print(f"saved to {models_dir()}")
    return 0


def cmd_candidates(args: argparse.Namespace) -> int:
    from ranker.serving.candidates import candidates

    result = candidates(args.user_id, args.flow, args.n, engine=_engine(), model=args.model)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    note = " (fallback: no history, trending list)" if result.fallback else ""
    print(f"user {result.user_id}, flow {result.flow}: {len(result)} candidates from "
          f"{result.source} {result.model_version}{note}")
    for rank, (item, score) in enumerate(zip(result.item_ids, result.scores), start=1):
        print(f"{rank:>4}  item {int(item):>7}  {float(score):.4f}")
    return 0


def cmd_evaluate_base(args: argparse.Namespace) -> int:
    from ranker.evaluation.evaluate_base import evaluate_base

    engine = _engine()
    with _bar("evaluating base models", enabled=not args.json) as progress:
        result = evaluate_base(engine, holdout_days=args.holdout_days, k=args.k, ndcg_k=args.ndcg_k,
                               names=args.models, seed=args.seed, progress=progress)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"train before {result.cutoff:%Y-%m-%d %H:%M}, test {result.cutoff:%Y-%m-%d} .. "
          f"{result.clock:%Y-%m-%d} ({args.holdout_days:g} days)")
    print(result.table())
    return 0


def _evaluate_args(ev: argparse.ArgumentParser) -> None:
    from ranker.base import MODEL_NAMES

    ev.add_argument("--holdout-days", type=positive_float, default=D.holdout_days,
                    help="test window ending at the world clock (default %(default)s)")
    ev.add_argument("--k", type=positive_int, default=D.recall_k, help="Recall cut-off (default %(default)s)")
    ev.add_argument("--ndcg-k", type=positive_int, default=D.ndcg_k, help="NDCG cut-off (default %(default)s)")
    ev.add_argument("--models", type=_model_list, default=list(MODEL_NAMES))
    ev.add_argument("--seed", type=int, default=D.seed)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(handler=cmd_evaluate_base)


EVALUATE_HELP = "time-split Recall@k / NDCG of each base model vs popularity"


def add_evaluate_base(evaluate: argparse._SubParsersAction) -> None:
    """Add ``base`` to the subcommands of an ``evaluate`` group."""
    _evaluate_args(evaluate.add_parser("base", help=EVALUATE_HELP))


def add_commands(sub: argparse._SubParsersAction) -> None:
    from ranker.base import DEFAULT_MODEL, MODEL_NAMES

    base = sub.add_parser("base", help="base recommenders (popularity, ALS, two-tower, ensemble)")
    actions = base.add_subparsers(dest="base_command", required=True, metavar="ACTION")
    fit = actions.add_parser("fit", help="fit base models on all history up to the world clock and save them")
    fit.add_argument("--models", type=_model_list, default=list(MODEL_NAMES),
                     help=f"comma-separated subset of {','.join(MODEL_NAMES)} (popularity and the "
                          "ensemble's members are always included)")
    fit.add_argument("--seed", type=int, default=D.seed)
    fit.set_defaults(handler=cmd_base_fit)
    _evaluate_args(actions.add_parser("evaluate", help=EVALUATE_HELP))

    cand = sub.add_parser("candidates", help="base candidates for one user and flow")
    cand.add_argument("--user-id", type=int, required=True)
    cand.add_argument("--flow", required=True, help="one of: " + ", ".join(personalised_flows()))
    cand.add_argument("--n", type=positive_int, default=D.candidates)
    cand.add_argument("--model", choices=MODEL_NAMES, default=DEFAULT_MODEL)
    cand.add_argument("--json", action="store_true")
    cand.set_defaults(handler=cmd_candidates)
