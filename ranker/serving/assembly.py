"""List assembly: the served list, from a candidate context and a scorer.

:class:`Recommendation` is what every caller gets (the dashboard, the CLI, the API and the
simulator): the items, their scores, their features as served, each feature's
contribution to the score, the model version and the experiment arm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from ranker.rank import diversity
from ranker.rank.diversity import Diversity
from ranker.rank.features import ListContext, feature_names, list_features
from ranker.rank.rerank import Scorer


@dataclass
class RecommendedItem:
    item_id: int
    position: int
    score: float | None
    base_score: float
    base_rank: int  # 0-based position in the base order
    features: dict[str, float]
    contributions: dict[str, float] = field(default_factory=dict)


@dataclass
class Recommendation:
    request_id: str
    user_id: int
    flow: str
    k: int
    reranked: bool
    arm: str
    model_version: str  # a registry version ("v2", or "v2+fresh2" with a freshness boost), "rule", "base" or "trending"
    base_model: str
    served_at: datetime
    fallback_reason: str | None  # why the neural ranker or personalisation was not used (None: it was)
    items: list[RecommendedItem]
    impression_ids: list[int] = field(default_factory=list)  # set when the list was logged

    @property
    def item_ids(self) -> list[int]:
        return [i.item_id for i in self.items]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["served_at"] = self.served_at.isoformat()
        return d


def base_items(ctx: ListContext, k: int) -> list[RecommendedItem]:
    """The base order truncated to ``k``, with the features as served (not reranked).

    Features are those of the whole candidate list in base order, cut to its first ``k``: the
    same candidates scale model_score in both arms, and diversity looks at the items above.
    """
    top = np.arange(min(k, len(ctx)))
    x = list_features(ctx)[: len(top)]
    names = feature_names()
    return [RecommendedItem(int(ctx.item_ids[j]), p, None, float(ctx.base_scores[j]), int(j), named(names, x[p]))
            for p, j in enumerate(top)]


def reranked_items(ctx: ListContext, scorer: Scorer, k: int,
                   method: Diversity | None = None) -> list[RecommendedItem]:
    """The rerank's top ``k`` by the operator's diversity ``method`` (the guide's greedy penalty by
    default), with scores, features as served and each feature's contribution."""
    method = method or Diversity()
    ranked = diversity.rerank(ctx, scorer, k, method.method, *([] if method.knob is None else [method.knob]))
    contrib = scorer.contributions(ranked.features)
    names = feature_names()
    return [RecommendedItem(int(ctx.item_ids[j]), p, float(ranked.scores[p]), float(ctx.base_scores[j]), int(j),
                            named(names, ranked.features[p]), named(names, contrib[p]))
            for p, j in enumerate(ranked.order)]


def caller_candidates(item_ids: list[int], base_scores: list[float] | None,
                      catalogue_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """The caller's candidates in base order: (item ids, base scores, why each left-out id was).

    The base order is ``item_ids`` sorted by ``base_scores``, highest first (without scores:
    the order given, scored 1 down to 1/n). Ids not in the catalogue and repeats are left out.
    """
    ids = np.asarray(item_ids, dtype=np.int64)
    scores = (np.asarray(base_scores, dtype=np.float64) if base_scores is not None
              else (len(ids) - np.arange(len(ids))) / max(len(ids), 1))
    if not np.isfinite(scores).all():
        raise ValueError("base scores must be finite numbers (no NaN or infinity)")
    known = np.isin(ids, catalogue_ids)
    first = np.zeros(len(ids), dtype=bool)
    first[np.unique(ids, return_index=True)[1]] = True
    left_out = {int(i): "unknown item: not in the catalogue" for i in ids[~known]}
    left_out.update({int(i): "duplicate: already a candidate" for i in ids[known & ~first]})
    keep = np.flatnonzero(known & first)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return ids[keep], scores[keep], left_out


def subset(ctx: ListContext, idx: np.ndarray) -> ListContext:
    """The context restricted to candidates ``idx``, in that order."""
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[idx]

    return replace(ctx, item_ids=ctx.item_ids[idx], base_scores=ctx.base_scores[idx],
                   age_days=ctx.age_days[idx], views=ctx.views[idx],
                   interactions=ctx.interactions[idx], category=ctx.category[idx],
                   field=ctx.field[idx], type=ctx.type[idx], item_views_all=cut(ctx.item_views_all),
                   item_engaged_all=cut(ctx.item_engaged_all))


def named(names: list[str], values: np.ndarray) -> dict[str, float]:
    return {n: round(float(v), 6) for n, v in zip(names, values)}
