"""ALS: implicit-feedback matrix factorisation with the ``implicit`` library.

The user x item matrix holds, per pair, the summed confidence weights of the
user's interactions with the item (``kind_weights``); ``implicit`` turns it into
confidence ``1 + alpha * r`` (Hu, Koren & Volinsky 2008). Plain views count only
for users with no engagement before the cutoff, at
:data:`ranker.base.base.VIEW_WEIGHT`, well below a click: under the platform's
legacy lists a view mostly says "was shown", not "liked", but it is all such a user
has. Scores are ``user_factors @ item_factors.T``; an item with no interaction has
a zero factor and scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ranker.base.base import BaseRecommender, TrainingData, kind_weight_array, time_decay, with_views

USER_ATTRIBUTES = ("role", "category", "field")
ITEM_ATTRIBUTES = ("category", "field", "type")

#: Confidence weight per engaged interaction kind, before ``alpha``; a view adds
#: :data:`ranker.base.base.VIEW_WEIGHT`.
DEFAULT_ALS_WEIGHTS: dict[str, float] = {
    "click": 1.0, "like": 2.0, "favorite": 2.0, "apply": 2.0, "interest": 2.0,
}


def one_hot(frame: pd.DataFrame, columns: Sequence[str]) -> sp.csr_matrix:
    """Indicator matrix (len(frame), total vocabulary): one column per value of each column; NaN sets none."""
    blocks = []
    for col in columns:
        cat = pd.Categorical(frame[col].astype("string"))
        rows = np.flatnonzero(cat.codes >= 0)
        blocks.append(sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cat.codes[rows])),
                                    shape=(len(frame), len(cat.categories))))
    return sp.hstack(blocks, format="csr")


class ALSRecommender(BaseRecommender):
    """Weighted matrix factorisation by alternating least squares (``implicit.cpu.als``).

    Parameters
    ----------
    factors : int
        Latent dimension.
    regularization : float
        L2 penalty on the factors.
    alpha : float
        Confidence scale: confidence = 1 + alpha * summed kind weight.
    iterations : int
        ALS sweeps.
    kind_weights : dict of str to float, optional
        Weight per interaction kind (default ``DEFAULT_ALS_WEIGHTS`` and a view at
        ``VIEW_WEIGHT``).
    negative_weight : float
        Confidence weight of a pair the user viewed but never engaged with, passed
        to ``implicit`` as a negative entry (preference 0 with confidence
        ``1 + alpha * negative_weight``); 0 treats it like any unseen pair. The views
        of a user who never engaged are their profile (positives), never negatives.
    user_attribute_weight : float
        Side information: each user also "interacts" with one pseudo-item per
        declared attribute (role, category, field) at this weight; 0 turns it off.
    item_attribute_weight : float
        Side information: one pseudo-user per item attribute value (category,
        field, type) "interacts" with every item carrying it at this weight, which
        ties together items that share attributes; 0 turns it off.
    half_life_days : float, optional
        Interactions this many days older than the cutoff weigh half as much
        (tastes and the catalogue drift); None weighs all history alike.
    random_state : int
        Seed of the factor initialisation; fits are deterministic given it.

    Attributes
    ----------
    user_factors_ : ndarray of float32, shape (n_users, factors)
    item_factors_ : ndarray of float32, shape (n_items, factors)
    """

    name = "als"

    def __init__(
        self,
        factors: int = 16,
        regularization: float = 1.0,
        alpha: float = 1.0,
        iterations: int = 15,
        kind_weights: Mapping[str, float] | None = None,
        negative_weight: float = 0.0,
        user_attribute_weight: float = 2.0,
        item_attribute_weight: float = 2.0,
        half_life_days: float | None = None,
        random_state: int = 42,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.kind_weights = kind_weights
        self.negative_weight = negative_weight
        self.user_attribute_weight = user_attribute_weight
        self.item_attribute_weight = item_attribute_weight
        self.half_life_days = half_life_days
        self.random_state = random_state

    def confidence_matrix(self, data: TrainingData) -> sp.csr_matrix:
        """Summed kind weights, shape (n_users, n_items), rows = ``user_ids_``, columns = ``item_ids_``."""
        df = data.profile
        weights = kind_weight_array(df["kind"], self.kind_weights or with_views(DEFAULT_ALS_WEIGHTS))
        if self.half_life_days:
            weights = weights * time_decay(df["created_at"], data.cutoff, self.half_life_days)
        users, items, known = self._rows(df)
        shape = (len(self.user_ids_), len(self.item_ids_))
        keep = known & (weights > 0)
        matrix = sp.csr_matrix((weights[keep], (users[keep], items[keep])), shape=shape, dtype=np.float32)
        matrix.sum_duplicates()
        if self.negative_weight > 0:
            # Viewed, never engaged: a negative entry where the positive matrix has none.
            views = data.interactions[(data.interactions["kind"] == "view").to_numpy()]
            users, items, known = self._rows(views)
            seen = sp.csr_matrix((np.ones(known.sum(), np.float32), (users[known], items[known])), shape=shape)
            seen.sum_duplicates()
            seen.data[:] = 1.0
            negative = seen - seen.multiply(matrix > 0)
            negative.eliminate_zeros()
            matrix = (matrix - self.negative_weight * negative).tocsr()
        return matrix

    def _rows(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of ``df``'s users and items in ``user_ids_`` and ``item_ids_``, and which are in both."""
        users = np.searchsorted(self.user_ids_, df["user_id"].to_numpy(np.int64))
        items = np.searchsorted(self.item_ids_, df["item_id"].to_numpy(np.int64))
        users_c = np.minimum(users, len(self.user_ids_) - 1)
        items_c = np.minimum(items, len(self.item_ids_) - 1)
        known = (
            (self.user_ids_[users_c] == df["user_id"].to_numpy())
            & (self.item_ids_[items_c] == df["item_id"].to_numpy())
        )
        return users, items, known

    def _fit(self, data: TrainingData) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        user_items = self.confidence_matrix(data)
        n_users, n_items = user_items.shape
        if self.user_attribute_weight > 0 or self.item_attribute_weight > 0:
            users = data.users.set_index("id").reindex(self.user_ids_).reset_index()
            u_attr = self.user_attribute_weight * one_hot(users, USER_ATTRIBUTES)
            i_attr = self.item_attribute_weight * one_hot(data.items, ITEM_ATTRIBUTES)
            user_items = sp.bmat([[user_items, u_attr], [i_attr.T, None]], format="csr", dtype=np.float32)
            user_items.eliminate_zeros()
        # implicit's advice: BLAS must not start its own threads under its solver.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
            )
            model.fit(user_items, show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors[:n_users], dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors[:n_items], dtype=np.float32)

    def _score(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        return self.item_factors_[item_rows] @ self.user_factors_[user_row]

    def _state(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors_, "item_factors": self.item_factors_}

    def _restore(self, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.user_factors_ = arrays["user_factors"].astype(np.float32)
        self.item_factors_ = arrays["item_factors"].astype(np.float32)
