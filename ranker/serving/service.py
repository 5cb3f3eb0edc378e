"""Serving: ``recommend(user_id, flow, k)`` and ``rank(user_id, item_ids)``.

One request is three steps, each in its own module:

1. **retrieval** (:mod:`ranker.serving.retrieval`): base candidates (``fetch_multiplier × k``)
   or the caller's, and their feature context (catalogue and item counts as of the request);
2. **scoring** (:mod:`ranker.serving.scoring`): the operator's settings and the scorer they
   choose (the active neural model, else the rule);
3. **assembly** (:mod:`ranker.serving.assembly`): rerank → top k by the operator's diversity
   method (the guide's greedy penalty by default; MMR or DPP), with scores, features as served
   and contributions; or the base order, for the control arm and trending lists.

:class:`Service` holds the process-wide state of the first two for one database and runs
the steps; :func:`recommend` and :func:`rank` add the experiment arm and the impressions log.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine

from ranker import config
from ranker.data.db import get_engine
from ranker.flows import is_trending
from ranker.rank import diversity
from ranker.rank.diversity import Diversity
from ranker.rank.features import UserHistory, make_context, needs_history, with_history
from ranker.rank.rerank import RuleScorer, Scorer
from ranker.serving.assembly import (
    Recommendation,
    RecommendedItem,
    base_items,
    caller_candidates,
    reranked_items,
)
from ranker.serving.retrieval import CATALOG_TTL_S, Retrieval, UserRow
from ranker.serving.scoring import Scoring, ServingSettings

__all__ = ["CATALOG_TTL_S", "Recommendation", "RecommendedItem", "Service", "ServingSettings", "rank",
           "recommend", "service"]


class Service:
    """Process-wide serving state for one database: retrieval (catalogue, counts) and scoring."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.retrieval = Retrieval(engine)
        self.scoring = Scoring(engine)
        self.model = self.scoring.model  # the hot-reloaded active model

    # --- The state, as the dashboard, API and tests read it ------------------------------
    def catalog(self):
        return self.retrieval.catalog()

    def counts(self, as_of: datetime):
        return self.retrieval.counts(as_of)

    def reload_catalog(self) -> None:
        self.retrieval.reload_catalog()

    def invalidate(self) -> None:
        self.retrieval.invalidate()

    def settings(self) -> ServingSettings:
        return self.scoring.settings()

    def scorer(self, settings: ServingSettings | None = None) -> tuple[Scorer, str | None]:
        return self.scoring.scorer(settings)

    def rule_scorer(self) -> RuleScorer:
        return self.scoring.rule_scorer()

    def warm_up(self) -> str:
        """Load what a first request would: catalogue, item counts, the base models (fitting and
        saving them when none fit this database) and the scorer. Returns the scorer's version."""
        from ranker.base import DEFAULT_MODEL, FALLBACK_MODEL
        from ranker.base.store import serving_models

        self.counts(self.settings().now)
        serving_models(self.engine, [DEFAULT_MODEL, FALLBACK_MODEL])
        return self.scorer()[0].version

    def rerank_latency(self, repeats: int = 300, n: int = 2 * config.DEFAULT_K, k: int = config.DEFAULT_K,
                       seed: int = 0, method: Diversity | None = None) -> dict[str, float]:
        """p50/p99 milliseconds of one rerank (n → k) with the serving scorer and ``method``
        (default: the saved diversity method), on real catalogue items with their current features."""
        catalog = self.catalog()
        if len(catalog) < n:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": n, "k": k}
        settings = self.settings()
        scorer, _ = self.scorer(settings)
        method = method or settings.diversity
        knob = [] if method.knob is None else [method.knob]
        as_of = catalog.created.max().astype("datetime64[us]").item()
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(catalog), size=n, replace=False)
        ctx = make_context(catalog, rows, np.zeros(n), np.zeros(n), rng.random(n), as_of, 0)
        if needs_history():  # a user with 50 events, and candidates with views and engagements
            seen = catalog.ids[rng.choice(len(catalog), size=50)]
            events = UserHistory.from_events(catalog, seen, rng.choice(["view", "click"], 50),
                                             np.full(50, np.datetime64(as_of, "us")) - np.timedelta64(1, "D"), as_of)
            views = rng.integers(0, 100, n).astype(float)
            with_history(ctx, events, views, np.floor(views * rng.random(n) * 0.3))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            diversity.rerank(ctx, scorer, k, method.method, *knob)
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1e3
        return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": n, "k": k,
                "scorer": scorer.version, "method": method.label}

    # --- Requests ---------------------------------------------------------------------
    def recommend(self, user_id: int, flow: str, k: int = config.DEFAULT_K, *,
                  as_of: datetime | None = None, arm: str = "treatment",
                  base_model: str = "ensemble", scorer: Scorer | None = None,
                  request_id: str | None = None, settings: ServingSettings | None = None) -> Recommendation:
        """The top ``k`` for ``user_id`` in ``flow``: base candidates, reranked in the treatment arm.

        Trending lists (``trending*`` flows, users with no history) are served as they are.
        """
        _check_request(k, arm)
        settings, as_of = _clock(self, settings, as_of)
        request_id = request_id or uuid.uuid4().hex
        user = self.retrieval.user(user_id)
        if is_trending(flow):
            return self._trending(user or self.retrieval.known_user(user_id), flow, k, as_of, arm, request_id)
        cands = self.retrieval.base(user_id, flow, settings.fetch_multiplier * k, base_model, as_of)
        ctx = self.retrieval.context(user_id, user, cands.item_ids, cands.scores, as_of)
        if cands.fallback or arm == "control" or len(ctx) == 0:
            version = "trending" if cands.fallback else "base"
            reason = "no history for this user: trending list (not reranked)" if cands.fallback else None
            return Recommendation(request_id, int(user_id), flow, k, False, arm, version, cands.source,
                                  as_of, reason, base_items(ctx, k))
        chosen, reason = (scorer, None) if scorer is not None else self.scorer(settings)
        return Recommendation(request_id, int(user_id), flow, k, True, arm, chosen.version,
                              cands.source, as_of, reason, reranked_items(ctx, chosen, k, settings.diversity))

    def rank(self, user_id: int, item_ids: list[int], base_scores: list[float] | None = None,
             k: int = config.DEFAULT_K, *, flow: str | None = None, as_of: datetime | None = None,
             arm: str = "treatment", scorer: Scorer | None = None, request_id: str | None = None,
             settings: ServingSettings | None = None) -> tuple[Recommendation, dict[int, str]]:
        """Rerank candidates the caller supplies (rerank only, as in Metarank).

        The base order is ``item_ids`` sorted by ``base_scores``, highest first (without
        scores: the order given, scored 1 down to 1/n). Returns the list and, per item id
        left out, why: not in the catalogue, or a duplicate. ``flow`` defaults to the
        user's own flow and is checked against the user's role.

        Raises
        ------
        FlowError
            Unknown user, or a flow the user's role cannot request.
        ValueError
            ``k`` < 1, an unknown arm, or ``base_scores`` not aligned with ``item_ids``.
        """
        from ranker.flows import check_flow, valid_flows

        _check_request(k, arm)
        if base_scores is not None and len(base_scores) != len(item_ids):
            raise ValueError(f"{len(base_scores)} base scores for {len(item_ids)} items; give one per item or none")
        settings, as_of = _clock(self, settings, as_of)
        user = self.retrieval.known_user(user_id)
        flow = flow or valid_flows(user.role)[0]
        check_flow(user.role, flow, user_id)
        ids, scores, left_out = caller_candidates(item_ids, base_scores, self.catalog().ids)
        ctx = self.retrieval.context(user_id, user, ids, scores, as_of)
        request_id = request_id or uuid.uuid4().hex
        if arm == "control" or len(ctx) == 0:
            return Recommendation(request_id, int(user_id), flow, k, False, arm, "base", "caller", as_of, None,
                                  base_items(ctx, k)), left_out
        chosen, reason = (scorer, None) if scorer is not None else self.scorer(settings)
        return Recommendation(request_id, int(user_id), flow, k, True, arm, chosen.version, "caller", as_of,
                              reason, reranked_items(ctx, chosen, k, settings.diversity)), left_out

    def _trending(self, user: UserRow, flow: str, k: int, as_of: datetime, arm: str,
                  request_id: str) -> Recommendation:
        """``trending`` (the user's own item type) or ``trending-<item type>``: never reranked."""
        ids, scores = self.retrieval.trending(user, flow, k, as_of)
        ctx = self.retrieval.context(user.id, user, ids, scores, as_of)
        return Recommendation(request_id, int(user.id), flow, k, False, arm, "trending", "popularity", as_of,
                              "trending lists are never reranked", base_items(ctx, k))


def _check_request(k: int, arm: str) -> None:
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if arm not in config.ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of: {', '.join(config.ARMS)}")


def _clock(svc: Service, settings: ServingSettings | None,
           as_of: datetime | None) -> tuple[ServingSettings, datetime]:
    """The request's settings (read once, before the features are computed: they name the feature
    set) and time: ``as_of`` if given, else the serve clock."""
    settings = settings or svc.settings()
    return settings, as_of or settings.now


_SERVICES: dict[str, Service] = {}
_SERVICES_LOCK = threading.Lock()


def service(engine: Engine | None = None) -> Service:
    """The process-wide :class:`Service` for ``engine`` (default: the configured database)."""
    engine = engine or get_engine()
    key = engine.url.render_as_string(hide_password=False)
    with _SERVICES_LOCK:
        if key not in _SERVICES:
            _SERVICES[key] = Service(engine)
        return _SERVICES[key]


def recommend(user_id: int, flow: str, k: int = config.DEFAULT_K, *, engine: Engine | None = None,
              as_of: datetime | None = None, arm: str | None = None, log: bool = True,
              request_id: str | None = None, source: str | None = None,
              context: dict[str, Any] | None = None) -> Recommendation:
    """The top ``k`` items for ``user_id`` in ``flow``: what a user of the platform is served.

    The user's experiment arm decides the list (treatment: reranked; control: the base
    order truncated to k) unless ``arm`` is given. With ``log`` (the default) the list is
    written to the impressions log, so outcomes can be attributed to it; ``source`` says
    where the request came from (``api``, ``sim``, ...) and ``context`` is kept with it. A logged
    reranked treatment list is, in the saved swap share of requests, served with randomised
    adjacent swaps, recorded in its context (the position-bias experiment, :mod:`ranker.rank.propensity`).
    """
    from ranker.serving.experiments import assign_arm

    svc = service(engine)
    settings = svc.settings()
    if arm is None:
        arm = assign_arm(user_id, settings.experiment)
    rec = svc.recommend(user_id, flow, k, as_of=as_of or settings.now, arm=arm, request_id=request_id,
                        settings=settings)
    if log:
        _log(svc, rec, source, context, settings.swap_share)
    return rec


def rank(user_id: int, item_ids: list[int], base_scores: list[float] | None = None,
         k: int = config.DEFAULT_K, *, flow: str | None = None, engine: Engine | None = None,
         as_of: datetime | None = None, arm: str | None = None, log: bool = True,
         request_id: str | None = None, source: str | None = None,
         context: dict[str, Any] | None = None) -> tuple[Recommendation, dict[int, str]]:
    """Rerank the caller's candidates for ``user_id`` (see :meth:`Service.rank`), in the user's
    experiment arm, and log the list as impressions like :func:`recommend` does."""
    from ranker.serving.experiments import assign_arm

    svc = service(engine)
    settings = svc.settings()
    if arm is None:
        arm = assign_arm(user_id, settings.experiment)
    rec, left_out = svc.rank(user_id, item_ids, base_scores, k, flow=flow, as_of=as_of or settings.now, arm=arm,
                             request_id=request_id, settings=settings)
    if log:
        _log(svc, rec, source, context, settings.swap_share)
    return rec, left_out


def _randomise(rec: Recommendation, context: dict[str, Any] | None, share: float) -> dict[str, Any] | None:
    """In the operator's share of reranked treatment lists, swap random adjacent pairs (the
    position-bias experiment, :mod:`ranker.rank.propensity`) and record them in the list's context."""
    from dataclasses import replace

    from ranker.rank.propensity import CONTEXT_KEY, maybe_swaps, request_rng

    if not (rec.reranked and rec.arm == "treatment" and len(rec.items) >= 2):
        return context
    swaps = maybe_swaps(request_rng(rec.user_id, rec.flow, rec.served_at), len(rec.items), share)
    if swaps is None:
        return context
    order = swaps.apply(np.arange(len(rec.items)))
    rec.items = [replace(rec.items[j], position=p) for p, j in enumerate(order)]
    return {**(context or {}), CONTEXT_KEY: swaps.to_context()}


def _log(svc: Service, rec: Recommendation, source: str | None, context: dict[str, Any] | None,
         swap_share: float) -> None:
    from ranker.rank.features import age_days
    from ranker.serving.experiments import log_served

    if not rec.items:
        return
    context = _randomise(rec, context, swap_share)
    catalog = svc.catalog()
    rows = catalog.index(np.array(rec.item_ids))
    attrs = {"category": list(catalog.category[rows]), "field": list(catalog.field[rows]),
             "type": list(catalog.type[rows]),
             "age_days": list(age_days(rec.served_at, catalog.created[rows], catalog.updated[rows]))}
    rec.impression_ids = log_served(svc.engine, rec, attrs, source=source, context=context)
