"""Scoring: which scorer serves a request, from the operator's settings and the active model.

The settings (serve clock, experiment, rule weights, freshness boost, diversity method, feature set,
candidates per slot) are read together in
one query per request and never cached, so a save reaches every process on its next
request. The neural scorer is the version the registry's active row names (read on each
request too, its file reloaded when the row changes); without one, the rule scorer with the
saved weights serves, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from ranker import config, keys
from ranker.data.schema import Setting
from ranker.rank.diversity import Diversity, saved_diversity
from ranker.rank.features import feature_set, saved_feature_set, use_feature_set
from ranker.rank.propensity import saved_swap_share
from ranker.rank.registry import ActiveModel
from ranker.rank.rerank import (
    BaseOrderScorer,
    FreshnessBoosted,
    RuleScorer,
    Scorer,
    saved_fetch_multiplier,
    saved_freshness_boost,
    saved_weights,
)


@dataclass(frozen=True)
class ServingSettings:
    """The operator's settings one request is served with, read together in one query."""

    now: datetime  # the serve clock (the world's clock setting, else the wall clock)
    experiment: Any  # ranker.serving.experiments.Experiment
    rule_weights: dict[str, float]
    freshness_boost: float
    #: Why the treatment arm serves the base order (do no harm), or None.
    base_order_hold: str | None = None
    #: How the reranked lists are diversified (the guide's greedy penalty unless the operator chose MMR or DPP).
    diversity: Diversity = Diversity()
    #: The feature set lists are scored with (``config.FEATURE_SETS``).
    feature_set: str = config.DEFAULT_FEATURE_SET
    #: Candidates the base model proposes per served slot (``fetch_multiplier × k`` of them).
    fetch_multiplier: int = config.FETCH_MULTIPLIER
    #: Share of reranked treatment lists served with randomised adjacent swaps (position bias).
    swap_share: float = config.DEFAULTS.swap_share


def read_settings(engine: Engine) -> ServingSettings:
    """Clock, experiment, rule weights, freshness boost, hold, diversity method, feature set, candidates per
    slot and swap share, as saved now (one query). The process computes that feature set from then on
    (:func:`ranker.rank.features.use_feature_set`)."""
    from ranker.data.clock import utcnow
    from ranker.serving.experiments import Experiment

    wanted = (keys.CLOCK, keys.EXPERIMENT, keys.RULE_WEIGHTS, keys.FRESHNESS_BOOST, keys.BASE_ORDER_HOLD,
              keys.DIVERSITY, keys.FEATURE_SET, keys.FETCH_MULTIPLIER,
              keys.SWAP_SHARE)
    with engine.connect() as conn:
        rows = conn.execute(select(Setting.key, Setting.value).where(Setting.key.in_(wanted))).all()
    values = {key: (value or {}).get("v") for key, value in rows}
    clock = values.get(keys.CLOCK)
    raw = values.get(keys.EXPERIMENT)
    # Serving computes the operator's feature set; the rule weights are validated against it.
    use_feature_set(saved_feature_set(values.get(keys.FEATURE_SET)))
    return ServingSettings(now=datetime.fromisoformat(clock) if clock else utcnow(),
                           experiment=Experiment(**raw) if raw else Experiment(),
                           rule_weights=saved_weights(values.get(keys.RULE_WEIGHTS)),
                           freshness_boost=saved_freshness_boost(values.get(keys.FRESHNESS_BOOST)),
                           base_order_hold=(values.get(keys.BASE_ORDER_HOLD) or {}).get("reason"),
                           diversity=saved_diversity(values.get(keys.DIVERSITY)),
                           feature_set=feature_set(),
                           fetch_multiplier=saved_fetch_multiplier(values.get(keys.FETCH_MULTIPLIER)),
                           swap_share=saved_swap_share(values.get(keys.SWAP_SHARE)))


class Scoring:
    """Chooses the scorer: the base order while a do-no-harm hold stands (see
    :func:`ranker.ops.pipeline.retrain`), else the active neural model (with the freshness
    boost), else the rule."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.model = ActiveModel(engine=engine)  # the version the registry's active row names
        #: One active-model cache per feature set, so switching sets neither serves a model on the
        #: other set's features nor keeps a model refused under the other set refused. They share
        #: ``on_load`` (e.g. the API's reload counter).
        self._by_set = {feature_set(): self.model}

    def active(self) -> ActiveModel:
        """The active-model cache of the feature set this process computes now."""
        name = feature_set()
        if name not in self._by_set:
            model = ActiveModel(engine=self.engine)
            model.on_load = self.model.on_load
            self._by_set[name] = model
        return self._by_set[name]

    def settings(self) -> ServingSettings:
        return read_settings(self.engine)

    def scorer(self, settings: ServingSettings | None = None) -> tuple[Scorer, str | None]:
        """The active neural scorer (with the operator's freshness boost, if any), or the rule
        scorer and the reason for the fallback. Settings are read unless given."""
        settings = settings or self.settings()
        if settings.base_order_hold:
            return BaseOrderScorer(), settings.base_order_hold
        model = self.active()
        neural = model.get()
        if neural is not None:
            boost = settings.freshness_boost
            return (FreshnessBoosted(neural, boost) if boost > 0 else neural), None
        return RuleScorer(settings.rule_weights), model.reason

    def rule_scorer(self) -> RuleScorer:
        """The rule-based scorer with the operator's saved weights (defaults 0.5/0.2/0.2/0.1)."""
        return RuleScorer(self.settings().rule_weights)
