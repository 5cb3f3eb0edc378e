"""End-to-end offline evaluation on a time split: base order vs rule rerank vs neural rerank.

Interactions are sorted by time and cut at two quantiles (``--time-split 0.8,0.1,0.1``)::

    first ───── base models fit ───── t_fit ── ranker data ── t_test ── test ── last

1. The base model is fitted on every interaction before ``t_fit``.
2. The ranker's training data is built by :func:`ranker.rank.dataset.build_dataset` from the
   lists in ``[t_fit, t_test)`` (its own base model is fitted at ``t_fit`` too, so
   ``model_score`` never sees the labels), and the neural ranker is trained in memory
   (nothing is written to the model registry or activated).
3. Test: every user with an explicit positive in ``[t_test, last]`` whom the base model
   knows. Their candidates are the base model's top ``fetch_multiplier × k`` items among
   those not engaged before ``t_test``; features are taken as of ``t_test``. Three orders
   of the same candidates are compared: the base order, the rule-based rerank (default
   weights) and the neural rerank, both greedy with dynamic diversity, as served.

Reported per order, as means over test users: NDCG@k and Recall@k against the user's
test positives (items in the base model's catalogue, not engaged before ``t_test``),
intra-list diversity and freshness (mean item age in days at ``t_test``; lower is fresher).
Each mean has a percentile bootstrap 95 % interval over test users, and each reranked order
its paired difference from the base order (the same users, the same resamples) with its
interval: a difference whose interval lies below zero is harm, not noise.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Engine
from tqdm import tqdm

from ranker import config
from ranker.base import BaseRecommender, TrainingData, make_base_model
from ranker.data.catalog import Catalog
from ranker.data.db import get_setting, put_setting, session_scope
from ranker.data.interactions import load_interactions
from ranker.data.schema import Setting
from ranker.evaluation.intervals import BOOTSTRAP_RESAMPLES, CI_LEVEL, Interval, mean_interval
from ranker.rank.dataset import DatasetConfig, _AsOf, _context_at, build_dataset
from ranker.rank.features import age_days
from ranker.rank.metrics import intra_list_diversity, ndcg_at_k
from ranker.rank.rerank import NeuralScorer, RuleScorer, Scorer, greedy_rerank
from ranker.rank.train import DataError, TrainConfig, load_dataset, train

log = logging.getLogger(__name__)

ORDERS = ("base", "rule", "neural")
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class OrderMetrics:
    """Means over test users of one order of the candidates."""

    ndcg: float  # NDCG@k, binary gains, ideal over all of the user's test positives
    recall: float  # Recall@k = hits in the top k / test positives
    ild: float  # intra-list diversity of the top k, in [0, 1]
    freshness_days: float  # mean age of the top k items in days at t_test (lower is fresher)


#: The per-user metrics, in :class:`OrderMetrics`' order.
METRICS = tuple(f.name for f in fields(OrderMetrics))


def order_intervals(per_order: dict[str, np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, Interval]]]:
    """(each order's metric means with intervals, each non-base order's paired difference from base).

    ``per_order[name]`` is (users, len(METRICS)), rows aligned across orders (the same users).
    """
    means = {name: {m: mean_interval(v[:, j], resamples, seed) for j, m in enumerate(METRICS)}
             for name, v in per_order.items()}
    base = per_order["base"]
    diffs = {name: {m: mean_interval(v[:, j] - base[:, j], resamples, seed) for j, m in enumerate(METRICS)}
             for name, v in per_order.items() if name != "base"}
    return means, diffs


@dataclass
class EndToEndEvaluation:
    """Result of :func:`evaluate_end_to_end`."""

    split: tuple[float, float, float]
    first: datetime
    t_fit: datetime
    t_test: datetime
    last: datetime
    base_model: str
    k: int
    n_candidates: int
    n_users: int  # test users evaluated
    n_positives: int  # their test positives
    dataset: dict[str, Any]  # rows, positives, lists of the ranker's training data
    ranker: dict[str, Any]  # the neural ranker's own validation metrics
    orders: dict[str, OrderMetrics]
    #: {order: {metric: mean with its interval over test users}}
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict)
    #: {rule|neural: {metric: paired difference order − base, with its interval}}
    vs_base: dict[str, dict[str, Interval]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("first", "t_fit", "t_test", "last"):
            out[key] = getattr(self, key).isoformat()
        out["split"] = list(self.split)
        out["ci_level"] = CI_LEVEL
        return out

    def verdict(self, order: str, metric: str = "ndcg") -> str:
        """``better``, ``worse`` or ``no significant difference`` of ``order`` against base."""
        d = self.vs_base[order][metric]
        if not d.excludes_zero:
            return "no significant difference"
        return "better" if d.value > 0 else "worse"

    def table(self) -> str:
        """A plain-text table: one line per order."""
        head = (f"{'order':<7} {f'NDCG@{self.k}':>8} {f'Recall@{self.k}':>10} {'ILD':>6} "
                f"{'freshness (days)':>17}")
        lines = [
            f"time split {'/'.join(f'{f:g}' for f in self.split)}: base fit before {self.t_fit:%Y-%m-%d %H:%M}, "
            f"ranker data until {self.t_test:%Y-%m-%d %H:%M}, test until {self.last:%Y-%m-%d %H:%M}",
            f"{self.n_users:,} test users, {self.n_positives:,} test positives; ranker trained on "
            f"{self.dataset.get('rows', 0):,} rows ({self.dataset.get('positives', 0):,} positives); "
            f"{self.n_candidates} {self.base_model} candidates per user",
            head, "-" * len(head),
        ]
        for name, m in self.orders.items():
            lines.append(f"{name:<7} {m.ndcg:>8.4f} {m.recall:>10.4f} {m.ild:>6.3f} {m.freshness_days:>17.1f}")
        pct = f"{CI_LEVEL:.0%}"
        lines.append(f"{pct} bootstrap intervals over the {self.n_users:,} test users:")
        for name, by_metric in self.intervals.items():
            nd, rc = by_metric["ndcg"], by_metric["recall"]
            lines.append(f"  {name:<7} NDCG@{self.k} [{nd.low:.4f}, {nd.high:.4f}]  "
                         f"Recall@{self.k} [{rc.low:.4f}, {rc.high:.4f}]")
        lines.append(f"paired difference from base (same users), with its {pct} interval:")
        for name, by_metric in self.vs_base.items():
            lines.append(f"  {name:<7} NDCG@{self.k} {by_metric['ndcg']}  Recall@{self.k} {by_metric['recall']}  "
                         f"-> {self.verdict(name)}")
        return "\n".join(lines)


# --- Pure pieces ----------------------------------------------------------------------------


def parse_time_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1): three positive fractions that sum to 1.

    Raises
    ------
    ValueError
        Not three numbers, a non-positive one, or a sum other than 1.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        fractions = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--time-split {text!r}: expected three numbers like 0.8,0.1,0.1") from None
    if len(fractions) != 3 or not all(math.isfinite(f) and f > 0 for f in fractions):
        raise ValueError(f"--time-split {text!r}: expected three positive fractions like 0.8,0.1,0.1 "
                         "(base fit, ranker data, test)")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"--time-split {text!r}: the fractions sum to {sum(fractions):g}, not 1")
    return fractions  # type: ignore[return-value]


def split_points(times: np.ndarray, split: Sequence[float]) -> tuple[datetime, datetime, datetime, datetime]:
    """(first, t_fit, t_test, last) at the quantiles of the interaction times.

    ``t_fit`` is the time of the interaction at rank ``split[0] × n`` (sorted by time), so
    about ``split[0]`` of the interactions happen before it; likewise ``t_test``.

    Raises
    ------
    ValueError
        Too few distinct times for three non-empty parts.
    """
    t = np.sort(np.asarray(times, dtype="datetime64[us]"))
    n = len(t)
    if n == 0:
        raise ValueError("the database has no interactions; import data first (`ranker import movielens PATH`)")
    a = t[min(int(split[0] * n), n - 1)]
    b = t[min(int((split[0] + split[1]) * n), n - 1)]
    if not (t[0] < a < b <= t[-1]):
        raise ValueError(f"cannot cut {n:,} interactions at {split[0]:g}/{split[1]:g}/{split[2]:g} of time: "
                         "too few distinct timestamps; import more data")
    return tuple(pd.Timestamp(x).to_pydatetime() for x in (t[0], a, b, t[-1]))  # type: ignore[return-value]


def top_k_metrics(item_rows: np.ndarray, relevant: np.ndarray, catalog: Catalog, as_of: datetime,
                 k: int) -> tuple[float, float, float, float]:
    """(NDCG@k, Recall@k, ILD, freshness in days) of one ranked list.

    Parameters
    ----------
    item_rows : (m,) int
        Catalogue rows of the list, best first; only the first ``k`` count.
    relevant : (r,) int
        Catalogue rows of the user's test positives, r >= 1.
    catalog : Catalog
    as_of : datetime
        Moment of the ages.
    k : int
    """
    top = np.asarray(item_rows, dtype=np.int64)[:k]
    hits = np.isin(top, relevant).astype(np.float64)
    missed = len(relevant) - int(hits.sum())
    # The list, padded to k, then the missed positives below it: they count in the ideal DCG only.
    y_true = np.r_[hits, np.zeros(k - len(top)), np.ones(missed)]
    y_score = -np.arange(len(y_true), dtype=np.float64)
    ndcg = ndcg_at_k(y_true, y_score, k)
    recall = float(hits.sum()) / len(relevant)
    ild = intra_list_diversity(catalog.category[top], catalog.field[top], catalog.type[top])
    ages = age_days(as_of, catalog.created[top], catalog.updated[top])
    return ndcg, recall, ild, float(ages.mean()) if len(ages) else float("nan")


# --- The run -------------------------------------------------------------------------------------


def evaluate_end_to_end(engine: Engine, split: str | Sequence[float] = DEFAULT_SPLIT, base_model: str = "ensemble",
                        k: int = config.DEFAULT_K, fetch_multiplier: int = config.FETCH_MULTIPLIER,
                        neg_ratio: float = 2.0, train_config: TrainConfig | None = None, min_positives: int = 100,
                        seed: int = 42, progress: Progress | None = None,
                        show_bar: bool = False) -> EndToEndEvaluation:
    """Fit, build, train and compare the three orders on a time split (see the module docstring).

    Parameters
    ----------
    engine : Engine
    split : str or sequence of 3 floats
        Fractions of the interactions (by time) for the base fit, the ranker data and the test.
    base_model : str
        Base model name (``ranker.base.MODEL_NAMES``); fitted with its defaults.
    k : int
        List length evaluated; candidates are ``fetch_multiplier × k``.
    neg_ratio : float
        Negatives per positive in the ranker's training data.
    train_config : TrainConfig, optional
        Ranker training settings (default ``TrainConfig(seed=seed)``).
    min_positives : int
        The ranker needs at least this many positives in its training data.
    seed : int
        Seed of the negative sampling and the ranker's training.
    progress : callable, optional
        ``progress(fraction, message)`` between stages.
    show_bar : bool
        tqdm bars for the dataset and the test users.

    Raises
    ------
    ValueError
        No data, too little data in a part of the split, or no test user to evaluate.
    """
    fractions = parse_time_split(split)
    if k < 1 or fetch_multiplier < 1:
        raise ValueError(f"k and fetch_multiplier must be positive, got {k} and {fetch_multiplier}")
    tcfg = train_config or TrainConfig(seed=seed)
    with _one_torch_thread():
        return _evaluate(engine, fractions, base_model, k, fetch_multiplier, neg_ratio, tcfg, min_positives,
                         seed, progress, show_bar)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread, then restore the previous number.

    Every model here multiplies small matrices: extra threads cost more in synchronisation
    than they save (ten times more on a busy 2-core machine), as in ranker.rank.train.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Laps:
    """Wall-clock seconds of each stage, reported to ``progress`` and the log as each one ends."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str, fraction: float, message: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 2)
        self._clock = now
        if self.progress:
            self.progress(fraction, message)
        log.info("%s (%.1fs)", message, self.seconds[name])


def _evaluate(engine: Engine, fractions: tuple[float, float, float], base_model: str, k: int,
              fetch_multiplier: int, neg_ratio: float, tcfg: TrainConfig, min_positives: int, seed: int,
              progress: Progress | None, show_bar: bool) -> EndToEndEvaluation:
    laps = _Laps(progress)
    history = load_interactions(engine)
    first, t_fit, t_test, last = split_points(history["created_at"].to_numpy(), fractions)
    base = make_base_model(base_model).fit(TrainingData.from_engine(engine, t_fit))
    laps.lap("fit_base", 0.3, f"fitted {base_model} on interactions before {t_fit:%Y-%m-%d %H:%M}")

    neural, dataset_info, ranker_metrics = _train_ranker(
        engine, base, base_model, t_fit, t_test, neg_ratio, tcfg, min_positives, seed, show_bar)
    laps.lap("dataset_and_train", 0.7, f"trained the neural ranker on {dataset_info['rows']:,} rows")

    test = _test_positives(history, base, t_test)
    if not test:
        raise ValueError(f"no user with an explicit positive after {t_test:%Y-%m-%d %H:%M} is known to the "
                         f"base model: nothing to evaluate; give the test part more time (--time-split)")
    n = fetch_multiplier * k
    per_order, n_positives = _score_orders(engine, history, base, neural, test, t_fit, t_test, n, k, show_bar)
    n_users = len(per_order["base"])
    if n_users == 0:
        raise ValueError("the base model returned no candidates for any test user")
    arrays = {name: np.asarray(values, dtype=np.float64) for name, values in per_order.items()}
    metrics = {name: OrderMetrics(*(float(np.nanmean(col)) for col in v.T)) for name, v in arrays.items()}
    intervals, vs_base = order_intervals(arrays, seed=seed)
    laps.lap("test", 1.0, f"evaluated {n_users:,} test users")
    seconds = laps.seconds
    seconds["total"] = round(sum(seconds.values()), 2)
    return EndToEndEvaluation(
        split=fractions, first=first, t_fit=t_fit, t_test=t_test, last=last, base_model=base_model, k=k,
        n_candidates=n, n_users=n_users, n_positives=n_positives, dataset=dataset_info, ranker=ranker_metrics,
        orders=metrics, intervals=intervals, vs_base=vs_base, seconds=seconds,
    )


def _score_orders(engine: Engine, history: pd.DataFrame, base: BaseRecommender, neural: NeuralScorer,
                  test: dict[int, np.ndarray], t_fit: datetime, t_test: datetime, n: int, k: int,
                  show_bar: bool) -> tuple[dict[str, list[tuple[float, float, float, float]]], int]:
    """Top-k metrics of each order for every test user with candidates (``n`` from the base model,
    features as of ``t_test``), and the number of their test positives."""
    as_of = _AsOf.load(engine, history)  # every feature point in time at t_test, as the dataset builder has it
    catalog = as_of.catalog
    engaged_before = _engaged_between(history, t_fit, t_test)
    scorers: dict[str, Scorer] = {"rule": RuleScorer(), "neural": neural}
    per_order: dict[str, list[tuple[float, float, float, float]]] = {o: [] for o in ORDERS}
    n_positives = 0
    for user_id, items in tqdm(test.items(), desc="evaluate", unit="user", disable=not show_bar):
        ids, scores = base.recommend(user_id, n, as_of=t_test, exclude=engaged_before.get(user_id))
        if len(ids) == 0:
            continue
        rows = catalog.index(ids)
        relevant = catalog.index(items)
        n_positives += len(relevant)
        ctx = _context_at(as_of, scores, ids, t_test, user_id)
        orders = {"base": rows}
        for name, scorer in scorers.items():
            orders[name] = rows[greedy_rerank(ctx, scorer, k).order]
        for name, order in orders.items():
            per_order[name].append(top_k_metrics(order, relevant, catalog, t_test, k))
    return per_order, n_positives


def _train_ranker(engine: Engine, base: BaseRecommender, base_model: str, t_fit: datetime, t_test: datetime,
                  neg_ratio: float, tcfg: TrainConfig, min_positives: int, seed: int,
                  show_bar: bool) -> tuple[NeuralScorer, dict[str, Any], dict[str, Any]]:
    """Build the ranker data from ``[t_fit, t_test)`` in a temporary folder (``base`` is the
    ``base_model`` fitted before ``t_fit``, reused) and train in memory."""
    with tempfile.TemporaryDirectory(prefix="ranker-evaluate-") as tmp:
        cfg = DatasetConfig(output=Path(tmp) / "train.csv", val_output=Path(tmp) / "val.csv",
                            base_model=base_model, neg_ratio=neg_ratio, seed=seed,
                            window_start=t_fit, window_end=t_test)
        with _setting_kept(engine, "last_dataset"):  # an evaluation is not the operator's last dataset
            summary = build_dataset(engine, cfg, show_bar=show_bar, fitted_base=base)
        data = load_dataset(cfg.output, min_positives=min_positives)
        val = None
        if summary.val_rows:
            try:
                val = load_dataset(cfg.val_output, min_positives=1)
            except DataError as exc:  # e.g. one class only in the latest lists: train without
                log.info("no validation set for the ranker: %s", exc)
    result = train(data, tcfg, val=val)
    state = result.best_state if result.best_state is not None else result.model.state_dict()
    info = {"rows": len(data), "positives": int(data.y.sum()), "lists": int(len(np.unique(data.groups))),
            "val_rows": len(val) if val is not None else 0}
    return NeuralScorer(state, "evaluation"), info, result.metrics


@contextmanager
def _setting_kept(engine: Engine, key: str) -> Iterator[None]:
    """Restore setting ``key`` to its value before the block (or remove it again)."""
    with session_scope(engine) as s:
        before = get_setting(s, key)
    try:
        yield
    finally:
        with session_scope(engine) as s:
            if before is not None:
                put_setting(s, key, before)
            elif (row := s.get(Setting, key)) is not None:
                s.delete(row)


def _engaged_between(history: pd.DataFrame, since: datetime, until: datetime) -> dict[int, np.ndarray]:
    """Items each user engaged with in ``[since, until)`` (the base model already excludes earlier ones)."""
    t = history["created_at"].to_numpy()
    mask = ((t >= np.datetime64(since, "us")) & (t < np.datetime64(until, "us"))
            & history["kind"].isin(config.ENGAGED_KINDS).to_numpy())
    part = history.loc[mask, ["user_id", "item_id"]]
    return {int(u): g.to_numpy(np.int64) for u, g in part.groupby("user_id")["item_id"]}


def _test_positives(history: pd.DataFrame, base: BaseRecommender, t_test: datetime) -> dict[int, np.ndarray]:
    """Per known user, the distinct items with an explicit positive at or after ``t_test``.

    Only items in the base model's catalogue (no model fitted at ``t_fit`` can propose
    later ones) that the user had not engaged with before ``t_test`` count.
    """
    t = history["created_at"].to_numpy()
    after = t >= np.datetime64(t_test, "us")
    kinds = history["kind"]
    positive = history.loc[after & kinds.isin(config.POSITIVE_KINDS).to_numpy(), ["user_id", "item_id"]]
    before = history.loc[~after & kinds.isin(config.ENGAGED_KINDS).to_numpy(), ["user_id", "item_id"]]
    pairs = positive.drop_duplicates().merge(before.drop_duplicates(), how="left", indicator=True)
    pairs = pairs[(pairs["_merge"] == "left_only") & (base.item_rows(pairs["item_id"].to_numpy()) >= 0)]
    out: dict[int, np.ndarray] = {}
    for user_id, items in pairs.groupby("user_id")["item_id"]:
        if base.knows_user(int(user_id)):
            out[int(user_id)] = np.sort(items.to_numpy(np.int64))
    return out


__all__ = [
    "DEFAULT_SPLIT",
    "EndToEndEvaluation",
    "Interval",
    "mean_interval",
    "order_intervals",
    "ORDERS",
    "OrderMetrics",
    "evaluate_end_to_end",
    "top_k_metrics",
    "parse_time_split",
    "split_points",
]
