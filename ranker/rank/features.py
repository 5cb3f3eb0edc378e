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

Static features ignore ``maxsim``. A *dynamic* feature (diversity) depends on the
items already placed above: ``maxsim[i]`` is candidate i's highest similarity to any
of them (-inf when none is placed yet). The same functions serve training data and
serving, so there is no train/serve skew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from ranker import config

if TYPE_CHECKING:
    from ranker.data.catalog import Catalog

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
