"""Ensemble: a weighted blend of the other models' min-max normalised scores.

    score(u, i) = sum_m w_m * minmax_m(score_m(u, ·))[i]

The min-max runs over the items scored together (the request's pool, or the
``item_ids`` given to ``score``), so each model contributes on the same [0, 1]
scale whatever its raw range. The blend is the default serving model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ranker.base.base import BaseRecommender, TrainingData, minmax

DEFAULT_ENSEMBLE_WEIGHTS: dict[str, float] = {"als": 0.3, "two-tower": 0.6, "popularity": 0.1}


class EnsembleRecommender(BaseRecommender):
    """Weighted blend of base models.

    Parameters
    ----------
    weights : dict of str to float, optional
        Model name -> non-negative weight (default ``DEFAULT_ENSEMBLE_WEIGHTS``);
        models with weight 0 are not fitted.
    model_params : dict of str to dict, optional
        Constructor parameters of each member, by name.

    Attributes
    ----------
    models_ : dict of str to BaseRecommender
        The fitted members (sharing the ensemble's cutoff and catalogue).
    weights_ : dict of str to float
        The validated non-zero weights, by member name.
    """

    name = "ensemble"

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        model_params: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.weights = weights
        self.model_params = model_params

    def _weights(self) -> dict[str, float]:
        from ranker.base import MODEL_NAMES

        weights = {k: float(v) for k, v in (self.weights or DEFAULT_ENSEMBLE_WEIGHTS).items() if v}
        bad = [k for k in weights if k not in MODEL_NAMES or k == self.name]
        if bad or not weights or any(v < 0 for v in weights.values()):
            members = [m for m in MODEL_NAMES if m != self.name]
            raise ValueError(
                f"ensemble weights must be non-negative, not all zero, over {', '.join(members)}; "
                f"got {dict(self.weights or {})}"
            )
        return weights

    @classmethod
    def from_fitted(cls, models: Mapping[str, BaseRecommender],
                    weights: Mapping[str, float] | None = None) -> EnsembleRecommender:
        """Blend already fitted members (all fitted on the same data) without refitting them."""
        names = cls(weights=weights)._weights()
        missing = [n for n in names if n not in models]
        if missing:
            raise ValueError(f"ensemble needs fitted {', '.join(missing)} models")
        members = {n: models[n] for n in names}
        ens = cls(weights=dict(weights) if weights is not None else None,
                  model_params={n: m.get_params() for n, m in members.items()})
        first = next(iter(members.values()))
        for n, m in members.items():
            m._check_fitted()
            if (m.cutoff_ != first.cutoff_ or not np.array_equal(m.item_ids_, first.item_ids_)
                    or not np.array_equal(m.user_ids_, first.user_ids_)):
                raise ValueError(f"ensemble members must share one fit's cutoff and catalogue; {n} differs")
        ens._adopt(first, members)
        return ens

    def _adopt(self, like: BaseRecommender, members: dict[str, BaseRecommender]) -> None:
        for attr in ("cutoff_", "item_ids_", "item_types_", "item_type_codes_", "item_created_",
                     "user_ids_", "engaged_indptr_", "engaged_rows_"):
            setattr(self, attr, getattr(like, attr))
        self.models_ = members
        self.weights_ = self._weights()
        self.fitted_at_ = max(m.fitted_at_ for m in members.values())
        digest = hashlib.sha1(json.dumps(
            {"weights": self.weights_, "members": [m.version_ for m in members.values()]}).encode())
        self.version_ = f"{self.name}-{self.cutoff_:%Y%m%dT%H%M%S}-{digest.hexdigest()[:8]}"
        self._build_index()

    def _fit(self, data: TrainingData) -> None:
        from ranker.base import make_base_model

        params = self.model_params or {}
        self.weights_ = self._weights()
        self.models_ = {n: make_base_model(n, **params.get(n, {})).fit(data) for n in self.weights_}

    def _score(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        total = np.zeros(len(item_rows), dtype=np.float32)
        for n, m in self.models_.items():
            total += self.weights_[n] * minmax(m._score(user_row, item_rows))
        return total

    # --- persistence: members are stored inside the ensemble's file ---------------

    def _state(self) -> dict[str, np.ndarray]:
        return {f"{n}/{k}": v for n, m in self.models_.items() for k, v in m._arrays().items()}

    def _extra_meta(self) -> dict[str, Any]:
        members = {}
        for n, m in self.models_.items():
            meta = m.metadata()
            meta["item_types"] = list(m.item_types_)
            members[n] = meta
        return {"members": members}

    def _restore(self, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.weights_ = self._weights()
        self.models_ = {}
        for n, member_meta in meta["members"].items():
            prefix = f"{n}/"
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.models_[n] = BaseRecommender._from_saved(member_meta, sub, f"ensemble member {n}")
