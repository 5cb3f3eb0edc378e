"""The feature registry: the four ranking features, each computed as of a moment.

A feature is one registered function over a :class:`ListContext` (plain numpy arrays
describing a candidate list). ``input_dim``, the dataset's CSV columns, the rule
weights and the checkpoint metadata all follow from :data:`REGISTRY`, so adding a
fifth feature is one decorated function::

    @register_feature("category_match")
    def category_match(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
        return (ctx.category == ctx.user_category).astype(np.float64)

The guide's own example, ``user_affinity`` (a match with the user's declared profile),
ships as an optional feature: ``RANKER_EXTRA_FEATURES=user_affinity`` registers it
after the four in every process (data, training, serving, dashboard).

Two feature sets (``config.FEATURE_SETS``): ``guide``, the guide's four and the default,
and ``history``, the four plus point-in-time history features (the user's smoothed
affinity to the candidate's category, field and type, the item's Beta-shrunk CTR and the
user's activity recency), computed from the user's events and the item's counts strictly
before the request. :func:`use_feature_set` switches a process between them; the operator's
choice is the ``feature_set`` setting, which serving reads on every request, and a
checkpoint records its set, so a model is never served against another set's features.

Static features ignore ``maxsim``. A *dynamic* feature (diversity) depends on the
items already placed above: ``maxsim[i]`` is candidate i's highest similarity to any
of them (-inf when none is placed yet). The same functions serve training data and
serving, so there is no train/serve skew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from ranker import config

if TYPE_CHECKING:
    from ranker.data.catalog import Catalog

log = logging.getLogger(__name__)
FeatureFn = Callable[["ListContext", np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Feature:
    name: str
    fn: FeatureFn
    dynamic: bool = False

    @property
    def column(self) -> str:
        """The CSV column: ``model_score`` stays, ``recency`` becomes ``recency_score``."""
        return self.name if self.name.endswith("_score") else f"{self.name}_score"


REGISTRY: dict[str, Feature] = {}


def register_feature(name: str, dynamic: bool = False) -> Callable[[FeatureFn], FeatureFn]:
    def wrap(fn: FeatureFn) -> FeatureFn:
        if name in REGISTRY:
            raise ValueError(f"feature {name!r} is already registered")
        REGISTRY[name] = Feature(name, fn, dynamic)
        return fn

    return wrap


def unregister_feature(name: str) -> None:
    REGISTRY.pop(name, None)


def feature_names() -> list[str]:
    return list(REGISTRY)


def feature_columns() -> list[str]:
    return [f.column for f in REGISTRY.values()]


def input_dim() -> int:
    return len(REGISTRY)


@dataclass
class ListContext:
    """Everything the features may know about one candidate list, as of ``as_of``.

    Arrays have shape (n,), one entry per candidate, in candidate order.
    """

    as_of: datetime
    user_id: int
    user_category: str | None
    user_field: str | None
    item_ids: np.ndarray  # int64
    base_scores: np.ndarray  # raw base-model scores, any scale
    age_days: np.ndarray  # days since created_at (or updated_at, if that came first) as of as_of
    views: np.ndarray  # organic view interactions before as_of
    interactions: np.ndarray  # organic non-view interactions before as_of
    category: np.ndarray  # str
    field: np.ndarray
    type: np.ndarray
    max_views: float = config.DEFAULT_POPULARITY_MAX_VIEWS
    #: History features only (None when the feature set does not need them): the user's events
    #: before ``as_of``, and each candidate's views and engagements before it over every origin.
    history: UserHistory | None = None
    item_views_all: np.ndarray | None = None
    item_engaged_all: np.ndarray | None = None
    #: (lowest, highest) base score over the request's candidates, which model_score is scaled
    #: by; None: over the items of this context (the same thing when they are the candidates).
    score_range: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def similarity(self) -> np.ndarray:
        """(n, n) similarity: 1/3 for each match of category, field and type."""
        return (
            (self.category[:, None] == self.category[None, :]).astype(np.float64)
            + (self.field[:, None] == self.field[None, :])
            + (self.type[:, None] == self.type[None, :])
        ) / 3.0


# --- The four features, exactly as the guide defines them ---------------------------


@register_feature("model_score")
def model_score(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """Min-max of the base scores over the request's candidates (``fetch_multiplier × k`` of them),
    in [0, 1] (all 1 if equal). Served lists, the control arm's and every training row use the
    same candidates: ``ctx.score_range`` carries their range when ``ctx`` holds fewer items."""
    s = np.asarray(ctx.base_scores, dtype=np.float64)
    lo, hi = ctx.score_range if ctx.score_range is not None else score_range(s)
    if len(s) == 0 or not hi > lo:
        return np.ones_like(s)
    return np.clip((s - lo) / (hi - lo), 0.0, 1.0)


def score_range(base_scores: np.ndarray) -> tuple[float, float]:
    """(lowest, highest) of a request's candidate base scores: what model_score is scaled by."""
    s = np.asarray(base_scores, dtype=np.float64)
    return float(s.min(initial=np.inf)), float(s.max(initial=-np.inf))


# --- Labels: one definition for every source of training data -------------------------

#: An item the user looked at is a positive when they engaged with it (a click or explicit
#: feedback) and a negative when they did not; an item nobody looked at has no label. The A/B
#: test's CTR counts the same engagement.
LABEL_POSITIVE_KINDS = config.ENGAGED_KINDS


def label(kinds: set[str] | frozenset[str]) -> int | None:
    """The label of one shown item from the outcome kinds logged for it (None: not looked at)."""
    if kinds & set(LABEL_POSITIVE_KINDS):
        return 1
    return 0 if "view" in kinds else None


@register_feature("recency")
def recency(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """``exp(-age_days / 30)``: 1.0 new, 0.37 at 30 days, 0.14 at 60 days."""
    return np.exp(-np.maximum(ctx.age_days, 0.0) / config.RECENCY_DECAY_DAYS)


@register_feature("popularity")
def popularity(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """``log(views + 3*interactions + 1) / log(max_views)``, clipped to [0, 1].

    Views and interactions are organic counts (``interactions.origin``): what users did with
    an item they found themselves, not the outcomes of the lists it was served in, so that
    being recommended does not make an item popular.
    """
    raw = np.log(ctx.views + config.INTERACTION_POPULARITY_WEIGHT * ctx.interactions + 1.0)
    return np.clip(raw / np.log(max(ctx.max_views, 2.0)), 0.0, 1.0)


@register_feature("diversity", dynamic=True)
def diversity(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """``1 - max similarity`` to the items placed above; 1 for the first item."""
    return np.where(np.isneginf(maxsim), 1.0, 1.0 - maxsim)


# --- History features: the ``history`` feature set ------------------------------------


@dataclass(frozen=True)
class UserHistory:
    """What a user did before a moment, summed by item attribute: each engagement weighs 1 and
    each view ``config.HISTORY_VIEW_WEIGHT``.

    Built by :meth:`from_events` from the user's raw events, at serving and in the dataset
    builder alike, so both compute the same features.
    """

    category: dict[str, float]
    field: dict[str, float]
    type: dict[str, float]
    total: float  # the user's summed weight
    days_since_last: float  # since the user's latest event (inf: none)

    @classmethod
    def empty(cls) -> UserHistory:
        return cls({}, {}, {}, 0.0, np.inf)

    @classmethod
    def from_events(cls, catalog: Catalog, item_ids: np.ndarray, kinds: np.ndarray, times: np.ndarray,
                    as_of: datetime) -> UserHistory:
        """The history of one user's events (item ids, kinds, datetime64 times) strictly before
        ``as_of``; events of items not in the catalogue count towards recency only."""
        t = np.asarray(times).astype("datetime64[us]")
        before = t < np.datetime64(as_of, "us")
        if not before.any():
            return cls.empty()
        items, kinds, t = np.asarray(item_ids, dtype=np.int64)[before], np.asarray(kinds)[before], t[before]
        days = float((np.datetime64(as_of, "us") - t.max()).astype("timedelta64[us]").astype(np.int64)) / 86_400e6
        rows = catalog.index(items)
        known = rows >= 0
        weight = np.where(np.isin(kinds, config.ENGAGED_KINDS), 1.0,
                          np.where(kinds == "view", config.HISTORY_VIEW_WEIGHT, 0.0))[known]
        rows = rows[known]

        def by(values: np.ndarray) -> dict[str, float]:
            keys, inverse = np.unique(values[rows].astype(str), return_inverse=True)
            return dict(zip(keys.tolist(), np.bincount(inverse, weights=weight, minlength=len(keys)).tolist()))

        return cls(by(catalog.category), by(catalog.field), by(catalog.type), float(weight.sum()), days)


def _history(ctx: ListContext) -> UserHistory:
    if ctx.history is None:
        raise ValueError("history features need the user's events: build the context with "
                         "ranker.rank.features.with_history (the serving and dataset paths do)")
    return ctx.history


def _affinity(weights: dict[str, float], values: np.ndarray, total: float) -> np.ndarray:
    mass = np.array([weights.get(str(v), 0.0) for v in values], dtype=np.float64)
    return mass / (total + config.AFFINITY_PRIOR_WEIGHT)


def category_affinity(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """The user's weight on the candidate's category over their total weight (plus a prior of
    ``config.AFFINITY_PRIOR_WEIGHT``): 0 with no history, towards the share of their activity."""
    h = _history(ctx)
    return _affinity(h.category, ctx.category, h.total)


def field_affinity(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """As :func:`category_affinity`, for the item's field."""
    h = _history(ctx)
    return _affinity(h.field, ctx.field, h.total)


def type_affinity(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """As :func:`category_affinity`, for the item's type."""
    h = _history(ctx)
    return _affinity(h.type, ctx.type, h.total)


def item_ctr(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """The item's engagements per view before the request, every origin, shrunk by a Beta prior
    (mean ``ITEM_CTR_PRIOR_MEAN``, ``ITEM_CTR_PRIOR_VIEWS`` pseudo-views); clipped to [0, 1]."""
    if ctx.item_views_all is None or ctx.item_engaged_all is None:
        raise ValueError("item_ctr needs the candidates' all-origin counts: build the context with "
                         "ranker.rank.features.with_history (the serving and dataset paths do)")
    a, m = config.ITEM_CTR_PRIOR_VIEWS, config.ITEM_CTR_PRIOR_MEAN
    return np.clip((ctx.item_engaged_all + a * m) / (ctx.item_views_all + a), 0.0, 1.0)


def user_recency(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """``exp(-days since the user's latest event / USER_RECENCY_DAYS)``; 0 for a user with none."""
    days = _history(ctx).days_since_last
    value = 0.0 if not np.isfinite(days) else float(np.exp(-max(days, 0.0) / config.USER_RECENCY_DAYS))
    return np.full(len(ctx), value)


HISTORY: dict[str, Feature] = {f.__name__: Feature(f.__name__, f) for f in
                               (category_affinity, field_affinity, type_affinity, item_ctr, user_recency)}
GUIDE = ("model_score", "recency", "popularity", "diversity")
#: Each set's features after the guide's four.
SET_EXTRAS: dict[str, tuple[str, ...]] = {"guide": (), "history": tuple(HISTORY)}
_current = [config.DEFAULT_FEATURE_SET]


def feature_set() -> str:
    """The feature set this process computes now."""
    return _current[0]


def check_feature_set(name: str) -> str:
    if name not in config.FEATURE_SETS:
        raise ValueError(f"unknown feature set {name!r}; choose one of: {', '.join(config.FEATURE_SETS)}")
    return name


def set_feature_names(name: str) -> list[str]:
    """The features of set ``name``, in column order, as this process would register them."""
    check_feature_set(name)
    current = [n for n in REGISTRY if n not in HISTORY]
    return current[:len(GUIDE)] + list(SET_EXTRAS[name]) + current[len(GUIDE):]


def use_feature_set(name: str) -> None:
    """Compute set ``name`` from now on in this process: the guide's four, the set's features,
    then any optional or custom feature registered (a no-op when it is the current set)."""
    check_feature_set(name)
    if name == _current[0]:
        return
    others = {n: f for n, f in REGISTRY.items() if n not in HISTORY}
    names = set_feature_names(name)
    REGISTRY.clear()
    REGISTRY.update({n: others.get(n) or HISTORY[n] for n in names})
    _current[0] = name


def saved_feature_set(stored: object) -> str:
    """The set saved in the ``feature_set`` setting ({"name": ...}), or the default (with a warning
    in the log) when nothing valid is saved."""
    if stored is None:
        return config.DEFAULT_FEATURE_SET
    name = stored.get("name") if isinstance(stored, dict) else None
    if name in config.FEATURE_SETS:
        return name
    log.warning("ignoring the saved feature set %r; using %s", stored, config.DEFAULT_FEATURE_SET)
    return config.DEFAULT_FEATURE_SET


def needs_history() -> bool:
    """Whether the features computed now read the user's history (see :func:`with_history`)."""
    return any(n in REGISTRY for n in HISTORY)


def with_history(ctx: ListContext, history: UserHistory, views_all: np.ndarray, engaged_all: np.ndarray) -> ListContext:
    """``ctx`` with the user's history and the candidates' all-origin counts set (in place)."""
    ctx.history = history
    ctx.item_views_all = np.asarray(views_all, dtype=np.float64)
    ctx.item_engaged_all = np.asarray(engaged_all, dtype=np.float64)
    return ctx


# --- Optional features: registered only when named in RANKER_EXTRA_FEATURES ---------


def user_affinity(ctx: ListContext, maxsim: np.ndarray) -> np.ndarray:
    """The guide's fifth-feature example, from the user's declared profile: 1 when the item's
    category is the category the user declared, else 0 (0 for every item without one).

    A profile is known before any event, so this cannot leak the future. (A user's declared
    field describes the user, a developer's "backend" say, not what they look for, so it
    is not compared with the item's field.)
    """
    return np.asarray(ctx.category == ctx.user_category, dtype=np.float64)


OPTIONAL: dict[str, Feature] = {"user_affinity": Feature("user_affinity", user_affinity)}


def enable_feature(name: str) -> None:
    """Register an optional feature after the four (idempotent)."""
    if name not in OPTIONAL:
        raise ValueError(f"unknown optional feature {name!r} in {config.EXTRA_FEATURES_ENV}; "
                         f"choose from: {', '.join(OPTIONAL)}")
    REGISTRY.setdefault(name, OPTIONAL[name])


for _name in config.EXTRA_FEATURES:
    enable_feature(_name)


# --- Evaluation helpers shared by serving and the dataset builder ------------------


def static_matrix(ctx: ListContext) -> np.ndarray:
    """(n, F) matrix with every static feature filled and dynamic columns at 0."""
    n = len(ctx)
    x = np.zeros((n, input_dim()), dtype=np.float64)
    none_placed = np.full(n, -np.inf)
    for j, feat in enumerate(REGISTRY.values()):
        if not feat.dynamic:
            x[:, j] = feat.fn(ctx, none_placed)
    return x


def fill_dynamic(x: np.ndarray, ctx: ListContext, maxsim: np.ndarray) -> None:
    """Recompute the dynamic columns of ``x`` in place for the given ``maxsim``."""
    for j, feat in enumerate(REGISTRY.values()):
        if feat.dynamic:
            x[:, j] = feat.fn(ctx, maxsim)


def list_features(ctx: ListContext) -> np.ndarray:
    """(n, F) features of the list *in the order given* (item i below items 0..i-1).

    This is what a served list's features are, and what the dataset builder computes
    for a logged or reconstructed list.
    """
    x = static_matrix(ctx)
    sim = ctx.similarity()
    n = len(ctx)
    maxsim = np.full(n, -np.inf)
    for i in range(1, n):
        maxsim[i] = sim[i, :i].max()
    fill_dynamic(x, ctx, maxsim)
    return x


def age_days(as_of: datetime, created: np.ndarray, updated: np.ndarray) -> np.ndarray:
    """Age in days as of ``as_of``; an edit counts only once it has happened.

    ``created`` and ``updated`` are ``datetime64`` arrays.
    """
    t = np.datetime64(as_of, "us")
    created = created.astype("datetime64[us]")
    updated = updated.astype("datetime64[us]")
    ref = np.where(updated <= t, np.maximum(created, updated), created)
    return (t - ref).astype("timedelta64[us]").astype(np.float64) / 86_400e6


def make_context(
    catalog: Catalog,
    rows: np.ndarray,
    views: np.ndarray,
    interactions: np.ndarray,
    base_scores: np.ndarray,
    as_of: datetime,
    user_id: int,
    user_category: str | None = None,
    user_field: str | None = None,
) -> ListContext:
    """A :class:`ListContext` for catalogue ``rows`` (positions, in list order).

    ``views`` and ``interactions`` are aligned with ``rows``.
    """
    return ListContext(
        as_of=as_of,
        user_id=int(user_id),
        user_category=user_category,
        user_field=user_field,
        item_ids=catalog.ids[rows],
        base_scores=np.asarray(base_scores, dtype=np.float64),
        age_days=age_days(as_of, catalog.created[rows], catalog.updated[rows]),
        views=np.asarray(views, dtype=np.float64),
        interactions=np.asarray(interactions, dtype=np.float64),
        category=catalog.category[rows],
        field=catalog.field[rows],
        type=catalog.type[rows],
        max_views=catalog.max_views,
    )
