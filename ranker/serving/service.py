"""Serving: ``recommend(user_id, flow, k)``.

Base candidates (``fetch_multiplier × k``) → greedy rerank → top k. Trending lists
(users with no history) are served as they are, with ``reranked: false``. The
result carries the items, their scores, their features as served, each feature's
contribution to the score, the model version and the experiment arm.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from ranker import config, keys
from ranker.data.catalog import Catalog, counts_as_of, load_catalog
from ranker.data.clock import serve_now
from ranker.data.db import get_engine, session_scope
from ranker.data.schema import Interaction, Item, Setting, User
from ranker.flows import is_trending
from ranker.rank.features import ListContext, feature_names, list_features, make_context
from ranker.rank.registry import ActiveModel
from ranker.rank.rerank import (
    FreshnessBoosted,
    RuleScorer,
    Scorer,
    greedy_rerank,
    saved_freshness_boost,
    saved_weights,
)

log = logging.getLogger(__name__)
CATALOG_TTL_S = 5.0


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


class _Counts:
    """Item counts strictly before a moment, kept current incrementally."""

    def __init__(self) -> None:
        self.as_of: datetime | None = None
        self.views: np.ndarray | None = None
        self.other: np.ndarray | None = None

    def get(self, engine: Engine, catalog: Catalog, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        if self.as_of is None or as_of < self.as_of or self.views is None or len(self.views) != len(catalog):
            self.views, self.other = counts_as_of(engine, catalog, as_of)
        elif as_of > self.as_of:
            stmt = select(Interaction.item_id, Interaction.kind).where(
                Interaction.created_at >= self.as_of, Interaction.created_at < as_of)
            with engine.connect() as conn:
                rows = conn.execute(stmt).all()
            if rows:
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                is_view = np.array([r[1] == "view" for r in rows])
                pos = catalog.index(ids)
                np.add.at(self.views, pos[is_view], 1.0)
                np.add.at(self.other, pos[~is_view], 1.0)
        self.as_of = as_of
        return self.views, self.other


@dataclass(frozen=True)
class ServingSettings:
    """The operator's settings one request is served with, read together in one query."""

    now: datetime  # the serve clock (the world's clock setting, else the wall clock)
    experiment: Any  # ranker.serving.experiments.Experiment
    rule_weights: dict[str, float]
    freshness_boost: float


class Service:
    """Process-wide serving state for one database: catalogue, counts, active model."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model = ActiveModel()
        self._lock = threading.RLock()
        self._catalog: Catalog | None = None
        self._catalog_sig: tuple | None = None
        self._catalog_checked = 0.0
        self._counts = _Counts()

    def catalog(self) -> Catalog:
        now = time.monotonic()
        if self._catalog is not None and now - self._catalog_checked < CATALOG_TTL_S:
            return self._catalog
        with self.engine.connect() as conn:
            stmt = select(func.count(), func.max(Item.id), func.max(Item.updated_at))
            sig = tuple(conn.execute(stmt).one())
        if sig != self._catalog_sig:
            fresh = load_catalog(self.engine)
            if self._catalog is None or not np.array_equal(fresh.ids, self._catalog.ids):
                self._counts = _Counts()  # counts are per item: kept when only attributes changed
            self._catalog, self._catalog_sig = fresh, sig
        self._catalog_checked = now
        return self._catalog

    def counts(self, as_of: datetime) -> tuple[Catalog, np.ndarray, np.ndarray]:
        """The catalogue and its (views, other interactions) strictly before ``as_of``, kept current."""
        with self._lock:
            catalog = self.catalog()
            views, other = self._counts.get(self.engine, catalog, as_of)
            return catalog, views, other

    def reload_catalog(self) -> None:
        """Read the catalogue again on the next request (after an item was written here)."""
        with self._lock:
            self._catalog_sig, self._catalog_checked = None, 0.0

    def invalidate(self) -> None:
        """Forget cached catalogue and counts (after an import or a new world)."""
        with self._lock:
            self._catalog, self._catalog_sig, self._counts = None, None, _Counts()

    def settings(self) -> ServingSettings:
        """Clock, experiment, rule weights and freshness boost, as saved now (one query)."""
        from ranker.data.clock import utcnow
        from ranker.serving.experiments import Experiment

        wanted = (keys.CLOCK, keys.EXPERIMENT, keys.RULE_WEIGHTS, keys.FRESHNESS_BOOST)
        with self.engine.connect() as conn:
            rows = conn.execute(select(Setting.key, Setting.value).where(Setting.key.in_(wanted))).all()
        values = {key: (value or {}).get("v") for key, value in rows}
        clock = values.get(keys.CLOCK)
        raw = values.get(keys.EXPERIMENT)
        return ServingSettings(now=datetime.fromisoformat(clock) if clock else utcnow(),
                               experiment=Experiment(**raw) if raw else Experiment(),
                               rule_weights=saved_weights(values.get(keys.RULE_WEIGHTS)),
                               freshness_boost=saved_freshness_boost(values.get(keys.FRESHNESS_BOOST)))

    def scorer(self, settings: ServingSettings | None = None) -> tuple[Scorer, str | None]:
        """The active neural scorer (with the operator's freshness boost, if any), or the rule
        scorer and the reason for the fallback. Settings are read unless given; they are never
        cached, so a save reaches every process on its next request."""
        settings = settings or self.settings()
        neural = self.model.get()
        if neural is not None:
            boost = settings.freshness_boost
            return (FreshnessBoosted(neural, boost) if boost > 0 else neural), None
        return RuleScorer(settings.rule_weights), self.model.reason

    def rule_scorer(self) -> RuleScorer:
        """The rule-based scorer with the operator's saved weights (defaults 0.5/0.2/0.2/0.1)."""
        return RuleScorer(self.settings().rule_weights)

    def _user(self, user_id: int) -> Any:
        """The user's (id, role, category, field), or None for an unknown id."""
        with self.engine.connect() as conn:
            return conn.execute(select(User.id, User.role, User.category, User.field)
                                .where(User.id == int(user_id))).first()

    def warm_up(self) -> str:
        """Load what a first request would: catalogue, item counts, the base models (fitting and
        saving them when none fit this database) and the scorer. Returns the scorer's version."""
        from ranker.base import DEFAULT_MODEL, FALLBACK_MODEL
        from ranker.base.store import serving_models

        with session_scope(self.engine) as s:
            now = serve_now(s)
        self.counts(now)
        serving_models(self.engine, [DEFAULT_MODEL, FALLBACK_MODEL])
        return self.scorer()[0].version

    def rerank_latency(self, repeats: int = 300, n: int = 2 * config.DEFAULT_K, k: int = config.DEFAULT_K,
                       seed: int = 0) -> dict[str, float]:
        """p50/p99 milliseconds of one greedy rerank (n → k) with the serving scorer,
        on real catalogue items with their current features."""
        catalog = self.catalog()
        if len(catalog) < n:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": n, "k": k}
        scorer, _ = self.scorer()
        as_of = catalog.created.max().astype("datetime64[us]").item()
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(catalog), size=n, replace=False)
        ctx = make_context(catalog, rows, np.zeros(n), np.zeros(n), rng.random(n), as_of, 0)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            greedy_rerank(ctx, scorer, k)
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1e3
        return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": n, "k": k,
                "scorer": scorer.version}

    def _trending(self, user: User | None, flow: str, k: int, as_of: datetime, arm: str,
                  request_id: str | None) -> Recommendation:
        """``trending`` (the user's own item type) or ``trending-<item type>``: never reranked."""
        from ranker.base.store import serving_models
        from ranker.flows import UnknownUserError, trending_item_type

        if user is None:
            raise UnknownUserError("unknown user: no such user id in the database")
        item_type = trending_item_type(flow, user.role, sorted(set(self.catalog().item_type.tolist())))
        popular = serving_models(self.engine, ["popularity"])["popularity"]
        ids, scores = popular.recommend(user.id, k, item_type=item_type, as_of=as_of, filter_engaged=False)
        catalog, views, other = self.counts(as_of)
        rows = catalog.index(ids)
        ctx = make_context(catalog, rows, views[rows], other[rows], scores, as_of, user.id, user.category,
                           user.field)
        x = list_features(ctx)
        names = feature_names()
        items = [RecommendedItem(int(i), p, None, float(s), p, _named(names, x[p]))
                 for p, (i, s) in enumerate(zip(ids, scores))]
        return Recommendation(request_id or uuid.uuid4().hex, int(user.id), flow, k, False, arm, "trending",
                              "popularity", as_of, "trending lists are never reranked", items)

    def recommend(self, user_id: int, flow: str, k: int = config.DEFAULT_K, *,
                  as_of: datetime | None = None, arm: str = "treatment",
                  base_model: str = "ensemble", scorer: Scorer | None = None,
                  request_id: str | None = None, settings: ServingSettings | None = None) -> Recommendation:
        from ranker.serving.candidates import candidates

        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if arm not in config.ARMS:
            raise ValueError(f"unknown arm {arm!r}; choose one of: {', '.join(config.ARMS)}")
        if as_of is None:
            settings = settings or self.settings()
            as_of = settings.now
        user = self._user(user_id)
        ucat, ufield = (user.category, user.field) if user else (None, None)
        if is_trending(flow):
            return self._trending(user, flow, k, as_of, arm, request_id)
        cands = candidates(user_id, flow, config.FETCH_MULTIPLIER * k, engine=self.engine,
                           model=base_model, as_of=as_of)
        catalog, views, other = self.counts(as_of)
        rows = catalog.index(cands.item_ids)
        ctx = make_context(catalog, rows, views[rows], other[rows], cands.scores, as_of, user_id,
                           ucat, ufield)
        request_id = request_id or uuid.uuid4().hex
        if cands.fallback or arm == "control" or len(rows) == 0:
            version = "trending" if cands.fallback else "base"
            reason = "no history for this user: trending list (not reranked)" if cands.fallback else None
            return Recommendation(request_id, int(user_id), flow, k, False, arm, version, cands.source,
                                  as_of, reason, _base_items(ctx, k))
        chosen, reason = (scorer, None) if scorer is not None else self.scorer(settings)
        return Recommendation(request_id, int(user_id), flow, k, True, arm, chosen.version,
                              cands.source, as_of, reason, _reranked_items(ctx, chosen, k))

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
        from ranker.flows import UnknownUserError, check_flow, valid_flows

        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if arm not in config.ARMS:
            raise ValueError(f"unknown arm {arm!r}; choose one of: {', '.join(config.ARMS)}")
        if base_scores is not None and len(base_scores) != len(item_ids):
            raise ValueError(f"{len(base_scores)} base scores for {len(item_ids)} items; give one per item or none")
        if as_of is None:
            settings = settings or self.settings()
            as_of = settings.now
        user = self._user(user_id)
        if user is None:
            raise UnknownUserError(f"unknown user {user_id}: no such user id in the database")
        role, ucat, ufield = user.role, user.category, user.field
        flow = flow or valid_flows(role)[0]
        check_flow(role, flow, user_id)
        catalog, views, other = self.counts(as_of)

        ids = np.asarray(item_ids, dtype=np.int64)
        scores = (np.asarray(base_scores, dtype=np.float64) if base_scores is not None
                  else (len(ids) - np.arange(len(ids))) / max(len(ids), 1))
        if not np.isfinite(scores).all():
            raise ValueError("base scores must be finite numbers (no NaN or infinity)")
        known = np.isin(ids, catalog.ids)
        first = np.zeros(len(ids), dtype=bool)
        first[np.unique(ids, return_index=True)[1]] = True
        left_out = {int(i): "unknown item: not in the catalogue" for i in ids[~known]}
        left_out.update({int(i): "duplicate: already a candidate" for i in ids[known & ~first]})
        keep = np.flatnonzero(known & first)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        rows = catalog.index(ids[keep])
        ctx = make_context(catalog, rows, views[rows], other[rows], scores[keep], as_of, user_id, ucat, ufield)
        request_id = request_id or uuid.uuid4().hex
        if arm == "control" or len(rows) == 0:
            rec = Recommendation(request_id, int(user_id), flow, k, False, arm, "base", "caller", as_of, None,
                                 _base_items(ctx, k))
        else:
            chosen, reason = (scorer, None) if scorer is not None else self.scorer(settings)
            rec = Recommendation(request_id, int(user_id), flow, k, True, arm, chosen.version, "caller", as_of,
                                 reason, _reranked_items(ctx, chosen, k))
        return rec, left_out


def _base_items(ctx: ListContext, k: int) -> list[RecommendedItem]:
    """The base order truncated to ``k``, with the features as served (not reranked)."""
    top = np.arange(min(k, len(ctx)))
    x = list_features(_subset(ctx, top))
    names = feature_names()
    return [RecommendedItem(int(ctx.item_ids[j]), p, None, float(ctx.base_scores[j]), int(j), _named(names, x[p]))
            for p, j in enumerate(top)]


def _reranked_items(ctx: ListContext, scorer: Scorer, k: int) -> list[RecommendedItem]:
    """The greedy rerank's top ``k``, with scores, features as served and each feature's contribution."""
    ranked = greedy_rerank(ctx, scorer, k)
    contrib = scorer.contributions(ranked.features)
    names = feature_names()
    return [RecommendedItem(int(ctx.item_ids[j]), p, float(ranked.scores[p]), float(ctx.base_scores[j]), int(j),
                            _named(names, ranked.features[p]), _named(names, contrib[p]))
            for p, j in enumerate(ranked.order)]


def _subset(ctx, idx):
    from dataclasses import replace

    return replace(ctx, item_ids=ctx.item_ids[idx], base_scores=ctx.base_scores[idx],
                   age_days=ctx.age_days[idx], views=ctx.views[idx],
                   interactions=ctx.interactions[idx], category=ctx.category[idx],
                   field=ctx.field[idx], type=ctx.type[idx])


def _named(names: list[str], values: np.ndarray) -> dict[str, float]:
    return {n: round(float(v), 6) for n, v in zip(names, values)}


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
    where the request came from (``api``, ``sim``, ...) and ``context`` is kept with it.
    """
    from ranker.serving.experiments import assign_arm

    svc = service(engine)
    settings = svc.settings()
    if arm is None:
        arm = assign_arm(user_id, settings.experiment)
    rec = svc.recommend(user_id, flow, k, as_of=as_of or settings.now, arm=arm, request_id=request_id,
                        settings=settings)
    if log:
        _log(svc, rec, source, context)
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
        _log(svc, rec, source, context)
    return rec, left_out


def _log(svc: Service, rec: Recommendation, source: str | None, context: dict[str, Any] | None) -> None:
    from ranker.rank.features import age_days
    from ranker.serving.experiments import log_served

    if not rec.items:
        return
    catalog = svc.catalog()
    rows = catalog.index(np.array(rec.item_ids))
    attrs = {"category": list(catalog.category[rows]), "field": list(catalog.field[rows]),
             "type": list(catalog.type[rows]),
             "age_days": list(age_days(rec.served_at, catalog.created[rows], catalog.updated[rows]))}
    rec.impression_ids = log_served(svc.engine, rec, attrs, source=source, context=context)
