"""Ensemble: a weighted blend of the other models' min-max normalised scores.

    score(u, i) = sum_m w_m * minmax_m(score_m(u, ·))[i]

The min-max runs over the items scored together (the request's pool, or the
``item_ids`` given to ``score``), so each model contributes on the same [0, 1]
scale whatever its raw range. The blend is the default serving model.

A user with no engagement before the cutoff (cold start: known from a few views
only) gets the cold-start blend: popularity takes ``cold_popularity`` of the total
weight and the personalised members share the rest in the ratio of ``weights``. Their
profile is too thin to carry the list alone (see docs/quality.md, Cold start).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ranker.base.base import BaseRecommender, TrainingData, minmax

DEFAULT_ENSEMBLE_WEIGHTS: dict[str, float] = {"als": 0.3, "two-tower": 0.6, "popularity": 0.1}
#: Popularity's share of the blend for a user known from views only (no engagement before the cutoff).
#: At the default 0.1, their personalised lists have a lower expected CTR than the trending list on the
#: demo worlds; at 0.7 neither arm does worse than trending (docs/quality.md, Cold start).
COLD_START_POPULARITY = 0.7


class EnsembleRecommender(BaseRecommender):
    """Weighted blend of base models.

    Parameters
    ----------
    weights : dict of str to float, optional
        Model name -> non-negative weight (default ``DEFAULT_ENSEMBLE_WEIGHTS``);
        models with weight 0 are not fitted.
    model_params : dict of str to dict, optional
        Constructor parameters of each member, by name.
    cold_popularity : float
        Popularity's share of the total weight for a user with no engagement before the
        cutoff, in [0, 1] (default ``COLD_START_POPULARITY``); the personalised members
        share the rest in the ratio of ``weights``. Popularity is then a member even at
        weight 0.

    Attributes
    ----------
    models_ : dict of str to BaseRecommender
        The fitted members (sharing the ensemble's cutoff and catalogue).
    weights_ : dict of str to float
        The validated non-zero weights, by member name.
    cold_weights_ : dict of str to float
        The blend for users with no engagement before the cutoff; its weights sum to those of ``weights_``.
    """

    name = "ensemble"

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        model_params: Mapping[str, Mapping[str, Any]] | None = None,
        cold_popularity: float = COLD_START_POPULARITY,
    ) -> None:
        self.weights = weights
        self.model_params = model_params
        self.cold_popularity = cold_popularity

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

    def _cold_weights(self, weights: dict[str, float]) -> dict[str, float]:
        """The cold-start blend of ``weights`` (see ``cold_popularity``)."""
        from ranker.base import FALLBACK_MODEL

        share = float(self.cold_popularity)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"cold_popularity must be a share between 0 and 1, got {self.cold_popularity}")
        total = sum(weights.values())
        personal = {n: w for n, w in weights.items() if n != FALLBACK_MODEL}
        mass = sum(personal.values())
        if mass == 0 or share == 0:
            return dict(weights)
        cold = {n: (1 - share) * total * w / mass for n, w in personal.items()}
        cold[FALLBACK_MODEL] = share * total
        return {n: w for n, w in cold.items() if w > 0}

    def _members(self) -> list[str]:
        """The models to fit or adopt: those of either blend."""
        weights = self._weights()
        return list(dict.fromkeys([*weights, *self._cold_weights(weights)]))

    @classmethod
    def from_fitted(cls, models: Mapping[str, BaseRecommender], weights: Mapping[str, float] | None = None,
                    cold_popularity: float = COLD_START_POPULARITY) -> EnsembleRecommender:
        """Blend already fitted members (all fitted on the same data) without refitting them."""
        names = cls(weights=weights, cold_popularity=cold_popularity)._members()
        missing = [n for n in names if n not in models]
        if missing:
            raise ValueError(f"ensemble needs fitted {', '.join(missing)} models")
        members = {n: models[n] for n in names}
        ens = cls(weights=dict(weights) if weights is not None else None,
                  model_params={n: m.get_params() for n, m in members.items()}, cold_popularity=cold_popularity)
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
        self.cold_weights_ = self._cold_weights(self.weights_)
        self.fitted_at_ = max(m.fitted_at_ for m in members.values())
        digest = hashlib.sha1(json.dumps(
            {"weights": self.weights_, "members": [m.version_ for m in members.values()],
             "cold_weights": self.cold_weights_}).encode())
        self.version_ = f"{self.name}-{self.cutoff_:%Y%m%dT%H%M%S}-{digest.hexdigest()[:8]}"
        self._build_index()

    def _fit(self, data: TrainingData) -> None:
        from ranker.base import make_base_model

        params = self.model_params or {}
        self.weights_ = self._weights()
        self.cold_weights_ = self._cold_weights(self.weights_)
        self.models_ = {n: make_base_model(n, **params.get(n, {})).fit(data) for n in self._members()}

    def _score(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        cold = user_row >= 0 and self.engaged_indptr_[user_row + 1] == self.engaged_indptr_[user_row]
        weights = self.cold_weights_ if cold else self.weights_
        total = np.zeros(len(item_rows), dtype=np.float32)
        for n, w in weights.items():
            total += w * minmax(self.models_[n]._score(user_row, item_rows))
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
        self.cold_weights_ = self._cold_weights(self.weights_)
        self.models_ = {}
        for n, member_meta in meta["members"].items():
            prefix = f"{n}/"
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.models_[n] = BaseRecommender._from_saved(member_meta, sub, f"ensemble member {n}")
