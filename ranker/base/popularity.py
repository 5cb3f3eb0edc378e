"""Popularity: the trending list of each item type. It is never reranked.

    score(item) = recent(item) + prior_weight * all_time(item)

where ``recent`` counts engagement (weighted by kind) in the ``window_days``
before the cutoff and ``all_time`` counts it over the whole history. The prior
orders items with no recent engagement and breaks ties among the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ranker.base.base import BaseRecommender, TrainingData, kind_weight_array

#: Engagement weight per interaction kind; views do not count as engagement.
DEFAULT_POPULARITY_WEIGHTS: dict[str, float] = {
    "click": 1.0, "like": 2.0, "favorite": 2.0, "apply": 2.0, "interest": 2.0,
}


class PopularityRecommender(BaseRecommender):
    """Trending items per type: recent engagement plus a small all-time prior.

    Parameters
    ----------
    window_days : float
        Length of the "recent" window before the cutoff, in days.
    prior_weight : float
        Weight of the all-time count relative to the recent one.
    kind_weights : dict of str to float, optional
        Engagement weight per interaction kind (default ``DEFAULT_POPULARITY_WEIGHTS``).

    Attributes
    ----------
    item_scores_ : ndarray of float32, shape (n_items,)
        Trending score of each catalogue item.
    """

    name = "popularity"
    personalised = False

    def __init__(
        self,
        window_days: float = 14.0,
        prior_weight: float = 0.1,
        kind_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.window_days = window_days
        self.prior_weight = prior_weight
        self.kind_weights = kind_weights

    def _fit(self, data: TrainingData) -> None:
        df = data.engaged
        weights = kind_weight_array(df["kind"], self.kind_weights or DEFAULT_POPULARITY_WEIGHTS)
        rows = np.searchsorted(self.item_ids_, df["item_id"].to_numpy(np.int64))
        since = pd.Timestamp(data.cutoff) - pd.Timedelta(days=self.window_days)
        recent = (df["created_at"] >= since).to_numpy()
        n = len(self.item_ids_)
        recent_score = np.bincount(rows[recent], weights=weights[recent], minlength=n)
        all_time = np.bincount(rows, weights=weights, minlength=n)
        self.item_scores_ = (recent_score + self.prior_weight * all_time).astype(np.float32)

    def _score(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        return self.item_scores_[item_rows]

    def trending(self, item_type: str | None = None, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """The trending list of one item type: (item ids, scores), best first."""
        rows = self.pool(item_type)
        return self._top(rows, self.item_scores_[rows], n)

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_scores": self.item_scores_}

    def _restore(self, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.item_scores_ = arrays["item_scores"].astype(np.float32)
