"""Do no harm: is a reranker significantly worse than the base order on a holdout?

A reranker earns its place only where it beats the order it reranks. On a time-later
holdout (lists the model neither trained on nor picked its epoch with), every list is
scored twice, by the reranker and by the base order (its ``model_score`` column), and the
paired difference of their NDCG@10 gets a bootstrap interval over lists. An interval
entirely below zero is harm, not noise: :class:`HarmCheck` says so in one sentence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ranker.evaluation.intervals import CI_LEVEL, Interval, mean_interval
from ranker.rank.features import feature_names
from ranker.rank.metrics import ndcg_per_group
from ranker.rank.train import Dataset

K = 10


@dataclass(frozen=True)
class HarmCheck:
    """A reranker's NDCG@10 against the base order's on the same lists."""

    scorer: str  # "v3", "rule"
    lists: int  # lists with a positive, each scored both ways
    ndcg: float
    base_ndcg: float
    diff: Interval  # scorer − base order, paired over lists

    @property
    def harmful(self) -> bool:
        """Significantly worse than the base order: the whole interval lies below zero."""
        return self.diff.high < 0

    def sentence(self) -> str:
        verdict = ("significantly worse than" if self.harmful else
                   "significantly better than" if self.diff.low > 0 else "not significantly different from")
        return (f"{self.scorer} is {verdict} the base order on the holdout: NDCG@{K} {self.ndcg:.4f} against "
                f"{self.base_ndcg:.4f}, difference {self.diff.value:+.4f} ({CI_LEVEL:.0%} CI {self.diff.low:+.4f} "
                f"to {self.diff.high:+.4f}, {self.lists} lists)")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "harmful": self.harmful, "sentence": self.sentence()}


def base_scores(data: Dataset) -> np.ndarray:
    """The base order's scores of ``data``'s rows: their ``model_score`` feature."""
    return data.x[:, feature_names().index("model_score")].astype(np.float64)


def against_base(scores: np.ndarray, data: Dataset, scorer: str, seed: int = 0) -> HarmCheck:
    """Compare ``scores`` (one per row of ``data``) with the base order, list by list.

    Raises
    ------
    ValueError
        ``data`` has no list with a positive: nothing to compare on.
    """
    ours = ndcg_per_group(data.y, scores, data.groups, K)
    base = ndcg_per_group(data.y, base_scores(data), data.groups, K)
    if len(ours) == 0:
        raise ValueError("the holdout has no list with a positive; widen --holdout-split or --window-days")
    return HarmCheck(scorer, len(ours), float(ours.mean()), float(base.mean()), mean_interval(ours - base, seed=seed))


__all__ = ["HarmCheck", "K", "against_base", "base_scores"]
