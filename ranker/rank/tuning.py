"""Offline previews for rule-weight tuning: NDCG on held-out data and rank agreement."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ranker import config, keys
from ranker.data.db import audit, get_setting, put_setting, session_scope
from ranker.rank.diversity import Diversity, saved_diversity, validate_diversity
from ranker.rank.metrics import mean_ndcg_at_k
from ranker.rank.rerank import (
    RuleScorer,
    saved_fetch_multiplier,
    saved_freshness_boost,
    saved_weights,
    validate_fetch_multiplier,
    validate_freshness_boost,
    validate_weights,
)
from ranker.rank.train import Dataset


def current_weights(engine: Engine) -> dict[str, float]:
    with session_scope(engine) as s:
        return saved_weights(get_setting(s, keys.RULE_WEIGHTS))


def save_weights(engine: Engine, weights: Mapping[str, float], actor: str = "cli") -> dict[str, float]:
    """Validate and persist the rule weights (each in [0, 1]); serving uses them on the next request."""
    clean = validate_weights(weights)
    with session_scope(engine) as s:
        put_setting(s, keys.RULE_WEIGHTS, clean)
        audit(s, "rule_weights", clean, actor)
    return clean


def freshness_boost(engine: Engine) -> float:
    """The operator's freshness boost for the neural ranker (0: none, the default; also 0, with
    a warning, when the saved value is not valid, as serving reads it)."""
    with session_scope(engine) as s:
        return saved_freshness_boost(get_setting(s, keys.FRESHNESS_BOOST))


def save_freshness_boost(engine: Engine, value: float, actor: str = "cli") -> float:
    """Validate and persist the boost. Every serving process uses it from its next request."""
    value = validate_freshness_boost(value)
    with session_scope(engine) as s:
        put_setting(s, keys.FRESHNESS_BOOST, value)
        audit(s, keys.FRESHNESS_BOOST, {"value": value}, actor)
    return value


def diversity(engine: Engine) -> Diversity:
    """The diversity method serving reranks with (greedy, the default; also greedy, with a
    warning, when the saved value is not valid, as serving reads it)."""
    with session_scope(engine) as s:
        return saved_diversity(get_setting(s, keys.DIVERSITY))


def save_diversity(engine: Engine, method: str, knob: float | None = None, actor: str = "cli") -> Diversity:
    """Validate and persist the diversity method and its knob (without one: the method's default).
    Every serving process uses it from its next request."""
    chosen = validate_diversity(method, knob)
    with session_scope(engine) as s:
        put_setting(s, keys.DIVERSITY, chosen.as_setting())
        audit(s, keys.DIVERSITY, chosen.as_setting(), actor)
    return chosen


def feature_set(engine: Engine, apply: bool = True) -> str:
    """The operator's feature set (``guide`` unless chosen otherwise); with ``apply``, this process
    computes it from now on, as serving does on every request."""
    from ranker.rank.features import saved_feature_set, use_feature_set

    try:
        with session_scope(engine) as s:
            name = saved_feature_set(get_setting(s, keys.FEATURE_SET))
    except SQLAlchemyError:  # no database yet: nothing chosen
        name = config.DEFAULT_FEATURE_SET
    if apply:
        use_feature_set(name)
    return name


def save_feature_set(engine: Engine, name: str, actor: str = "cli") -> str:
    """Persist the feature set that datasets, training and serving use. Serving computes it from
    its next request; a model trained on another set is then not served (the rule serves, saying
    so) until one is trained on this set."""
    from ranker.rank.features import check_feature_set

    check_feature_set(name)
    with session_scope(engine) as s:
        put_setting(s, keys.FEATURE_SET, {"name": name})
        audit(s, keys.FEATURE_SET, {"name": name}, actor)
    return name


def fetch_multiplier(engine: Engine) -> int:
    with session_scope(engine) as s:
        return saved_fetch_multiplier(get_setting(s, keys.FETCH_MULTIPLIER))


def save_fetch_multiplier(engine: Engine, value: int, actor: str = "cli") -> int:
    """Persist how many candidates (× k) the base model proposes for each served list; serving uses it
    from its next request."""
    value = validate_fetch_multiplier(value)
    with session_scope(engine) as s:
        put_setting(s, keys.FETCH_MULTIPLIER, value)
        audit(s, keys.FETCH_MULTIPLIER, {"value": value}, actor)
    return value


def offline_ndcg(weights: Mapping[str, float], data: Dataset, k: int = 10) -> float:
    """Mean NDCG@k of the rule with ``weights`` over the lists in ``data``."""
    scores = RuleScorer(weights)(data.x.astype(np.float64))
    return float(mean_ndcg_at_k(data.y, scores, data.groups, k))


def rank_correlation(a: Mapping[str, float], b: Mapping[str, float], data: Dataset,
                     max_groups: int = 500, seed: int = 0) -> float:
    """Mean Kendall tau, per list, between the orders the two weightings give (1 = same order)."""
    x = data.x.astype(np.float64)
    sa, sb = RuleScorer(a)(x), RuleScorer(b)(x)
    groups = np.unique(data.groups)
    rng = np.random.default_rng(seed)
    if len(groups) > max_groups:
        groups = rng.choice(groups, max_groups, replace=False)
    order = np.argsort(data.groups, kind="stable")
    g_sorted = data.groups[order]
    taus = []
    for g in groups:
        lo, hi = np.searchsorted(g_sorted, g), np.searchsorted(g_sorted, g, side="right")
        idx = order[lo:hi]
        if len(idx) < 2:
            continue
        tau = stats.kendalltau(sa[idx], sb[idx]).statistic
        if np.isfinite(tau):
            taus.append(tau)
    return float(np.mean(taus)) if taus else float("nan")
