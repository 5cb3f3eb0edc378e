"""Candidate generation, the base stage of serving.

:func:`candidates` checks the request with the flow router (:mod:`ranker.flows`), asks a
base model (default: the ensemble) for ``n`` items of the flow's item type
created at or before ``as_of``, minus every item the user engaged with before
``as_of`` (a click or an explicit positive; plain views are not excluded).

A user who has only viewed is personalised from their views (cold start, see
:mod:`ranker.base.base`). A user the model does not know (no view or engagement
before its cutoff, including a brand-new user) gets the trending list instead, with
``fallback=True``; so does a user known to a model fitted after the request who had
no such event strictly before the request (point in time).

Models come from the serving store (:mod:`ranker.base.store`). On a fresh
database with no saved model the first call fits and saves all base models
(seconds on the demo world); ``ranker base fit`` does it ahead of time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from ranker import config
from ranker.base import DEFAULT_MODEL, FALLBACK_MODEL, MODEL_NAMES, BaseRecommender
from ranker.base.base import profile_kinds
from ranker.base.ensemble import EnsembleRecommender
from ranker.base.popularity import PopularityRecommender
from ranker.data.clock import serve_now
from ranker.data.db import get_engine, session_scope
from ranker.data.interactions import engaged_item_ids, user_role
from ranker.data.schema import Interaction
from ranker.flows import UnknownUserError, check_flow


@dataclass(frozen=True)
class Candidates:
    """Base candidates for one request.

    Attributes
    ----------
    user_id : int
    flow : str
    item_ids : ndarray of int64, shape (m,)
        Best first; m <= n when the pool is small.
    scores : ndarray of float32, shape (m,)
        The base model's scores (its own scale; the ensemble's lie in [0, 1]).
    source : str
        Name of the model that produced the list ("popularity" on fallback).
    fallback : bool
        True when the requested model could not personalise for the user (no view or
        engagement before its cutoff and the request) and the trending list was served instead.
    model_version : str
        ``version_`` of the model that produced the list.
    as_of : datetime
        The serve time: only items created at or before it, minus engagements before it.
    """

    user_id: int
    flow: str
    item_ids: np.ndarray
    scores: np.ndarray
    source: str
    fallback: bool
    model_version: str
    as_of: datetime

    def __len__(self) -> int:
        return len(self.item_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "flow": self.flow,
            "item_ids": [int(i) for i in self.item_ids],
            "scores": [float(s) for s in self.scores],
            "source": self.source,
            "fallback": self.fallback,
            "model_version": self.model_version,
            "as_of": self.as_of.isoformat(),
        }


def _fallback_for(model: BaseRecommender, engine: Engine) -> BaseRecommender:
    if isinstance(model, PopularityRecommender):
        return model
    if isinstance(model, EnsembleRecommender) and FALLBACK_MODEL in model.models_:
        return model.models_[FALLBACK_MODEL]
    from ranker.base.store import serving_models

    return serving_models(engine, [FALLBACK_MODEL])[FALLBACK_MODEL]


def candidates(
    user_id: int,
    flow: str,
    n: int = config.FETCH_MULTIPLIER * config.DEFAULT_K,
    *,
    engine: Engine | None = None,
    model: str | BaseRecommender | None = None,
    as_of: datetime | None = None,
) -> Candidates:
    """The ``n`` best unseen items of the flow's item type for ``user_id``.

    Parameters
    ----------
    user_id : int
    flow : str
        A flow id (:mod:`ranker.flows`) that the user's role may request.
    n : int
        How many candidates (the ranker asks for ``FETCH_MULTIPLIER * k``).
    engine : Engine, optional
        Default: ``ranker.data.db.get_engine()``.
    model : str or BaseRecommender, optional
        A model name from the serving store (default ``"ensemble"``), or a fitted model.
    as_of : datetime, optional
        Serve time; default the world clock (``ranker.data.clock.serve_now``).

    Raises
    ------
    FlowError
        Unknown user, unknown flow, or a flow for another role; the message lists
        the user's valid flows.
    ValueError
        ``n`` < 1 or an unknown model name.
    """
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    engine = engine or get_engine()
    item_type = _flow_item_type(engine, user_id, flow)
    if as_of is None:
        as_of = _serve_time(engine)
    chosen, fallback = _serving_model(engine, model, user_id, as_of)
    engaged = engaged_item_ids(engine, user_id, until=as_of)
    ids, scores = chosen.recommend(user_id, n, item_type=item_type, as_of=as_of, exclude=engaged)
    return Candidates(user_id=int(user_id), flow=flow, item_ids=ids, scores=scores, source=chosen.name,
                      fallback=fallback, model_version=chosen.version_, as_of=as_of)


def _flow_item_type(engine: Engine, user_id: int, flow: str) -> str | None:
    """The item type ``flow`` serves, after checking that ``user_id`` exists and may request it."""
    role = user_role(engine, user_id)
    if role is None:
        raise UnknownUserError(f"unknown user {user_id}: no such user id in the database")
    return check_flow(role, flow, user_id)


def _serving_model(engine: Engine, model: str | BaseRecommender | None, user_id: int,
                   as_of: datetime) -> tuple[BaseRecommender, bool]:
    """The model that serves ``user_id`` at ``as_of``, and whether it is the trending fallback (the
    requested model does not know the user, or knows them only from events at or after ``as_of``)."""
    if model is None or isinstance(model, str):
        chosen, fallback_model = _stored_models(engine, model or DEFAULT_MODEL)
    else:
        chosen, fallback_model = model, None
    if chosen.knows_user(user_id) and (not chosen.personalised or as_of >= chosen.cutoff_
                                       or _has_history(engine, user_id, as_of)):
        return chosen, False
    return fallback_model or _fallback_for(chosen, engine), True


def _has_history(engine: Engine, user_id: int, until: datetime) -> bool:
    """Whether ``user_id`` has an event that makes a user known (:func:`ranker.base.base.profile_kinds`)
    strictly before ``until``."""
    t = Interaction.__table__.c
    stmt = select(t.id).where(t.user_id == int(user_id), t.created_at < until,
                              t.kind.in_(profile_kinds())).limit(1)
    with engine.connect() as conn:
        return conn.execute(stmt).first() is not None


def _stored_models(engine: Engine, name: str) -> tuple[BaseRecommender, BaseRecommender]:
    """Model ``name`` and the fallback, from the serving store."""
    from ranker.base.store import serving_models

    if name not in MODEL_NAMES:
        raise ValueError(f"unknown base model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    models = serving_models(engine, [name, FALLBACK_MODEL])
    return models[name], models[FALLBACK_MODEL]


def _serve_time(engine: Engine) -> datetime:
    """The world clock (``ranker.data.clock.serve_now``)."""
    with session_scope(engine) as s:
        return serve_now(s)


__all__ = ["Candidates", "candidates"]
