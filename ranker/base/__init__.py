"""Base recommenders: the models that propose candidates for the reranker.

One interface (:class:`BaseRecommender`), four models, one factory::

    model = make_base_model("als", factors=64).fit(TrainingData.from_engine(engine, cutoff))
    ids, scores = model.recommend(user_id, 20, item_type="startup")

Serving goes through :mod:`ranker.base.store` (saved models, loaded once per
process) and :func:`ranker.serving.candidates.candidates`.
"""

from __future__ import annotations

from typing import Any

from ranker.base.als import ALSRecommender
from ranker.base.base import (
    BaseRecommender,
    NotFittedError,
    TrainingData,
    UnknownUserError,
)
from ranker.base.ensemble import EnsembleRecommender
from ranker.base.popularity import PopularityRecommender
from ranker.base.two_tower import TwoTowerRecommender

#: Model name -> class, in the order they are fitted (the ensemble blends the others).
MODELS: dict[str, type[BaseRecommender]] = {
    "popularity": PopularityRecommender,
    "als": ALSRecommender,
    "two-tower": TwoTowerRecommender,
    "ensemble": EnsembleRecommender,
}
MODEL_NAMES = tuple(MODELS)
#: The model ``candidates()`` serves unless told otherwise.
DEFAULT_MODEL = "ensemble"
#: The model users without history get (the trending list, never reranked).
FALLBACK_MODEL = "popularity"


def make_base_model(name: str, **params: Any) -> BaseRecommender:
    """An unfitted model by name, with constructor ``params``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown base model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    return MODELS[name](**params)


__all__ = [
    "ALSRecommender",
    "BaseRecommender",
    "DEFAULT_MODEL",
    "EnsembleRecommender",
    "FALLBACK_MODEL",
    "MODELS",
    "MODEL_NAMES",
    "NotFittedError",
    "PopularityRecommender",
    "TrainingData",
    "TwoTowerRecommender",
    "UnknownUserError",
    "make_base_model",
]
