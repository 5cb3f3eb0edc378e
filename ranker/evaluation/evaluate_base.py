"""Offline evaluation of the base models on a time split of the database.

Train on every interaction before ``T = clock - holdout_days``. The test set of a
user is what they engaged with (a click or an explicit positive) during the
holdout ``[T, clock)`` and had not engaged with before T, restricted to

- users with history before T (the others get the trending list, by design);
- items in the catalogue at T (items created later cannot be known to any model
  fitted at T, including popularity; counting them would only lower every
  figure alike).

Each (user, flow) pair is one ranked list: the model recommends ``k`` items of
the flow's item type, excluding what the user engaged with before T, and we
report Recall@k (hits / test items) and NDCG@``ndcg_k`` (binary gains), per
flow and overall (the mean over all lists), for every model next to popularity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from ranker import config
from ranker.base import MODEL_NAMES, BaseRecommender, TrainingData
from ranker.base.store import fit_models
from ranker.data.clock import serve_now
from ranker.data.db import session_scope
from ranker.data.interactions import load_interactions
from ranker.flows import flow_for, flow_item_type, personalised_flows
from ranker.rank.metrics import mean_ndcg_at_k

OVERALL = "overall"
BASELINE = "popularity"


@dataclass(frozen=True)
class MetricRow:
    model: str
    flow: str  # a flow id, or "overall"
    recall: float  # Recall@k, mean over lists
    ndcg: float  # NDCG@ndcg_k, mean over lists
    n_lists: int  # (user, flow) lists evaluated
    n_test_items: int


@dataclass
class BaseEvaluation:
    """Result of :func:`evaluate_base`."""

    cutoff: datetime
    clock: datetime
    holdout_days: float
    k: int
    ndcg_k: int
    rows: list[MetricRow]
    fit_seconds: dict[str, float] = field(default_factory=dict)

    def get(self, model: str, flow: str = OVERALL) -> MetricRow:
        for row in self.rows:
            if row.model == model and row.flow == flow:
                return row
        raise KeyError(f"no result for model {model!r} on flow {flow!r}")

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "clock": self.clock.isoformat(),
            "holdout_days": self.holdout_days,
            "k": self.k,
            "ndcg_k": self.ndcg_k,
            "fit_seconds": self.fit_seconds,
            "rows": [asdict(r) for r in self.rows],
        }

    def table(self) -> str:
        """A plain-text table: one line per (flow, model)."""
        head = (f"{'flow':<18} {'model':<11} {f'Recall@{self.k}':>10} {f'NDCG@{self.ndcg_k}':>9} "
                f"{'vs pop':>7} {'lists':>6}")
        lines = [head, "-" * len(head)]
        flows = list(dict.fromkeys(r.flow for r in self.rows))
        for flow in flows:
            base = self.get(BASELINE, flow).recall if BASELINE in self.models else float("nan")
            for r in (r for r in self.rows if r.flow == flow):
                lift = f"{r.recall / base - 1:+.0%}" if base > 0 and r.model != BASELINE else ""
                lines.append(f"{flow:<18} {r.model:<11} {r.recall:>10.4f} {r.ndcg:>9.4f} "
                             f"{lift:>7} {r.n_lists:>6}")
        return "\n".join(lines)


def flow_of(role: str, item_type: str) -> str:
    """The flow id that serves ``item_type`` to a user of ``role`` (``user-item`` when none does)."""
    return flow_for(role, item_type)


def holdout_split(
    engine: Engine, holdout_days: float = 14.0, end: datetime | None = None
) -> tuple[TrainingData, pd.DataFrame]:
    """Training data before T and the test pairs of the holdout ``[T, end)``.

    ``end`` defaults to the world clock; an earlier ``end`` gives a validation
    split for tuning that never touches the final holdout.

    Returns
    -------
    data : TrainingData
        History before ``T = clock - holdout_days`` and the catalogue at T.
    test : DataFrame
        Distinct ``user_id, item_id, flow, item_type`` pairs engaged in ``[T, clock)``
        (see the module docstring for which pairs count).
    """
    if holdout_days <= 0:
        raise ValueError(f"holdout_days must be positive, got {holdout_days}")
    if end is None:
        with session_scope(engine) as s:
            end = serve_now(s)
    clock = end
    cutoff = clock - timedelta(days=holdout_days)
    data = TrainingData.from_engine(engine, cutoff)
    data.check()
    held = load_interactions(engine, since=cutoff, until=clock, kinds=config.ENGAGED_KINDS)
    return data, _test_pairs(data, held)


def _test_pairs(data: TrainingData, held: pd.DataFrame) -> pd.DataFrame:
    known_users = np.unique(data.engaged["user_id"].to_numpy())
    catalogue = data.items.set_index("id")["item_type"].astype(str)
    roles = data.users.set_index("id")["role"].astype(str)
    pairs = held[["user_id", "item_id"]].drop_duplicates()
    pairs = pairs[pairs["user_id"].isin(known_users) & pairs["item_id"].isin(catalogue.index)]
    before = data.engaged[["user_id", "item_id"]].drop_duplicates()
    pairs = pairs.merge(before, how="left", indicator=True)
    pairs = pairs[pairs["_merge"] == "left_only"].drop(columns="_merge")
    item_type = catalogue.reindex(pairs["item_id"]).to_numpy()
    role = roles.reindex(pairs["user_id"]).to_numpy()
    flows = [flow_of(r, t) for r, t in zip(role, item_type)]
    return pairs.assign(item_type=item_type, flow=flows).reset_index(drop=True)


def score_models(
    models: Mapping[str, BaseRecommender], test: pd.DataFrame, k: int = 20, ndcg_k: int = 10
) -> list[MetricRow]:
    """Recall@k and NDCG@ndcg_k of each model on ``test``, per flow and overall."""
    if k < 1 or ndcg_k < 1:
        raise ValueError(f"k and ndcg_k must be positive, got {k} and {ndcg_k}")
    depth = max(k, ndcg_k)
    groups = list(test.groupby(["user_id", "flow"], sort=True))
    rows: list[MetricRow] = []
    for name, model in models.items():
        per_list: list[tuple[str, float, float, int]] = []
        y_true, y_score, gid = [], [], []
        for g, ((user_id, flow), pairs) in enumerate(groups):
            item_type = flow_item_type(flow) if flow in personalised_flows() else None
            ids, _ = model.recommend(int(user_id), depth, item_type=item_type)
            truth = pairs["item_id"].to_numpy()
            hit = np.isin(ids, truth)
            recall = float(hit[:k].sum()) / len(truth)
            missed = np.setdiff1d(truth, ids)
            # Ranked list, then the missed positives below it: they count in the ideal DCG only.
            y_true += [hit.astype(float), np.ones(len(missed))]
            y_score += [-np.arange(len(ids), dtype=float), np.full(len(missed), -float(depth + 1))]
            gid.append(np.full(len(ids) + len(missed), g))
            per_list.append((flow, recall, 0.0, len(truth)))
        ndcg = _ndcg_per_group(np.concatenate(y_true), np.concatenate(y_score), np.concatenate(gid),
                               ndcg_k, len(groups))
        frame = pd.DataFrame(per_list, columns=["flow", "recall", "ndcg", "n_test"]).assign(ndcg=ndcg)
        for flow, part in frame.groupby("flow", sort=True):
            rows.append(MetricRow(name, str(flow), float(part["recall"].mean()), float(part["ndcg"].mean()),
                                  len(part), int(part["n_test"].sum())))
        rows.append(MetricRow(name, OVERALL, float(frame["recall"].mean()), float(frame["ndcg"].mean()),
                              len(frame), int(frame["n_test"].sum())))
    return rows


def _ndcg_per_group(y_true: np.ndarray, y_score: np.ndarray, gid: np.ndarray, k: int,
                    n_groups: int) -> np.ndarray:
    """NDCG@k of each group, through :func:`ranker.rank.metrics.mean_ndcg_at_k` one group at a time."""
    order = np.argsort(gid, kind="stable")
    bounds = np.searchsorted(gid[order], np.arange(n_groups + 1))
    return np.array([
        mean_ndcg_at_k(y_true[order[a:b]], y_score[order[a:b]], np.zeros(b - a), k)
        for a, b in zip(bounds[:-1], bounds[1:])
    ])


def evaluate_base(
    engine: Engine,
    holdout_days: float = 14.0,
    k: int = 20,
    ndcg_k: int = 10,
    names: Sequence[str] = MODEL_NAMES,
    seed: int = 42,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[float, str], None] | None = None,
    end: datetime | None = None,
) -> BaseEvaluation:
    """Fit ``names`` (plus popularity) before T and score them on the holdout.

    Parameters
    ----------
    engine : Engine
    holdout_days : float
        Length of the test window that ends at the world clock.
    k, ndcg_k : int
        Cut-offs of Recall and NDCG.
    names : sequence of str
        Models to evaluate; popularity, the baseline, is always included.
    seed : int
        ``random_state`` of the stochastic models.
    params : dict, optional
        Constructor parameters by model name (for tuning).
    progress : callable, optional
        ``progress(fraction, message)``.
    end : datetime, optional
        End of the holdout (default: the world clock).

    Raises
    ------
    ValueError
        Nothing to train on before T, or no test pair in the holdout.
    """
    data, test = _nonempty_holdout(engine, holdout_days, end)
    rows, fit_seconds = _fit_and_score(data, test, names, k, ndcg_k, seed, params, progress)
    clock = data.cutoff + timedelta(days=holdout_days)
    return BaseEvaluation(cutoff=data.cutoff, clock=clock, holdout_days=holdout_days, k=k,
                          ndcg_k=ndcg_k, rows=rows, fit_seconds=fit_seconds)


def _nonempty_holdout(engine: Engine, holdout_days: float, end: datetime | None) -> tuple[TrainingData, pd.DataFrame]:
    """:func:`holdout_split`, refusing a holdout without any test pair."""
    data, test = holdout_split(engine, holdout_days, end)
    if test.empty:
        raise ValueError(
            f"no engaged interaction in the last {holdout_days:g} days by users with earlier history: "
            "nothing to evaluate; use a longer holdout or more data"
        )
    return data, test


def _fit_and_score(data: TrainingData, test: pd.DataFrame, names: Sequence[str], k: int, ndcg_k: int, seed: int,
                   params: Mapping[str, Mapping[str, Any]] | None,
                   progress: Callable[[float, str], None] | None) -> tuple[list[MetricRow], dict[str, float]]:
    """Fit popularity and ``names`` on ``data``, score them on ``test``; returns the rows and fit seconds."""
    wanted = [BASELINE] + [n for n in names if n != BASELINE]
    fit_seconds: dict[str, float] = {}
    models = fit_models(data, wanted, seed=seed, params=params, progress=progress,
                        timings=fit_seconds)
    t0 = time.perf_counter()
    rows = score_models({n: models[n] for n in wanted}, test, k=k, ndcg_k=ndcg_k)
    if progress:
        progress(1.0, f"scored {len(wanted)} models in {time.perf_counter() - t0:.1f}s")
    return rows, fit_seconds
