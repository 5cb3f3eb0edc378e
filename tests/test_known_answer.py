"""Known answers: tiny worlds where the right reranking is obvious by hand.

In the spirit of ``implicit``'s checkerboard test, each case builds a world small enough
to rank on paper, derives the order in a comment, and asserts that exact order. The
features are the guide's (SPEC §6), scored by the rule ranker ``Σ w_f · x_f``:

- model_score: min-max of the base scores in the list;
- recency: ``exp(-age_days / 30)``;
- diversity: ``1 - max similarity`` to the items placed above (1 for the first), where
  similarity is 1/3 per match of category, field and type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest

from ranker.data.catalog import Catalog
from ranker.rank.features import feature_names, make_context
from ranker.rank.rerank import Reranked, RuleScorer, greedy_rerank

NOW = datetime(2026, 1, 1)


@dataclass(frozen=True)
class Item:
    id: int
    category: str
    field: str
    type: str
    age_days: float


def rerank(items: list[Item], base_scores: list[float], weights: dict[str, float],
           k: int | None = None) -> tuple[list[int], Reranked]:
    """Item ids in reranked order (and the rerank itself) for ``items`` as a candidate list at NOW."""
    created = np.array([np.datetime64(NOW - timedelta(days=i.age_days), "us") for i in items])
    catalog = Catalog(
        ids=np.array([i.id for i in items], dtype=np.int64),
        item_type=np.array(["item"] * len(items), dtype=object),
        category=np.array([i.category for i in items], dtype=object),
        field=np.array([i.field for i in items], dtype=object),
        type=np.array([i.type for i in items], dtype=object),
        created=created,
        updated=created,
    )
    rows = np.arange(len(items))
    none = np.zeros(len(items))
    ctx = make_context(catalog, rows, none, none, np.array(base_scores), NOW, user_id=1)
    ranked = greedy_rerank(ctx, RuleScorer(weights), k or len(items))
    return ctx.item_ids[ranked.order].tolist(), ranked


def column(ranked: Reranked, name: str) -> list[float]:
    """One feature, as served at each position."""
    return ranked.features[:, feature_names().index(name)].tolist()


# Two categories. Inside each, the first item stands alone and the other two are twins:
# fintech 1 ~ fintech 2 share the category only (similarity 1/3), fintech 2 = fintech 3
# on all three attributes (similarity 1); health the same; across categories nothing is
# shared (similarity 0).
TWO_CATEGORIES = [
    Item(1, "fintech", "payments", "seed", age_days=80),
    Item(2, "fintech", "lending", "series-a", age_days=2),
    Item(3, "fintech", "lending", "series-a", age_days=40),
    Item(4, "health", "diagnostics", "pre-seed", age_days=5),
    Item(5, "health", "telehealth", "series-b", age_days=20),
    Item(6, "health", "telehealth", "series-b", age_days=10),
]


def test_with_only_model_score_weighted_the_rerank_is_the_base_order():
    # Base scores 0.3 0.9 0.1 0.7 0.5 0.8 (items 1..6), min-max over [0.1, 0.9]:
    # model_score 0.25 1 0 0.75 0.5 0.875. Age and category carry no weight, so the
    # list is the base order, highest score first: 2 (0.9), 6, 4, 5, 1, 3 (0.1).
    scores = [0.3, 0.9, 0.1, 0.7, 0.5, 0.8]
    order, ranked = rerank(TWO_CATEGORIES, scores, {"model_score": 1.0})
    assert order == [2, 6, 4, 5, 1, 3]
    assert ranked.scores.tolist() == pytest.approx([1.0, 0.875, 0.75, 0.5, 0.25, 0.0])
    top3, _ = rerank(TWO_CATEGORIES, scores, {"model_score": 1.0}, k=3)
    assert top3 == [2, 6, 4]


def test_with_recency_dominant_the_newest_items_come_first():
    # Ages 60 0 30 7 0 days; base scores 1.0 0.8 0.6 0.4 0.2, so model_score 1 .75 .5 .25 0.
    # score = 0.1 * model_score + 1.0 * exp(-age / 30):
    #   item 1: 0.100 + 0.135 = 0.235     item 4: 0.025 + 0.792 = 0.817
    #   item 2: 0.075 + 1.000 = 1.075     item 5: 0.000 + 1.000 = 1.000
    #   item 3: 0.050 + 0.368 = 0.418
    # Recency gaps between distinct ages (>= 0.2) outweigh any model_score gap (<= 0.1),
    # so the newest come first; the two brand-new items tie on recency and the higher
    # base score (item 2) goes first: 2, 5, 4, 3, 1.
    items = [Item(i, "fintech", "payments", "seed", age) for i, age in zip(range(1, 6), [60, 0, 30, 7, 0])]
    order, ranked = rerank(items, [1.0, 0.8, 0.6, 0.4, 0.2], {"model_score": 0.1, "recency": 1.0})
    assert order == [2, 5, 4, 3, 1]
    assert column(ranked, "recency") == pytest.approx([1.0, 1.0, math.exp(-7 / 30), math.exp(-1), math.exp(-2)])
    assert ranked.scores.tolist() == pytest.approx([1.075, 1.0, 0.025 + math.exp(-7 / 30), 0.05 + math.exp(-1),
                                                    0.1 + math.exp(-2)])


def test_the_diversity_penalty_interleaves_two_categories():
    # Base order 1 2 3 (fintech) 4 5 6 (health); base scores 1.0 .9 .8 .7 .6 .5, so
    # model_score 1 .8 .6 .4 .2 0. score = 0.4 * model_score + 0.6 * diversity.
    # pos 1, nothing above (diversity 1 for all):  1: .40+.60 = 1.00 <- best
    # pos 2, above {1}: fintech 2, 3 share only the category with 1 (div 2/3); health 1.
    #   2: .32+.40 = .72   3: .24+.40 = .64   4: .16+.60 = .76 <- best   5: .68   6: .60
    # pos 3, above {1, 4}: 2, 3 are 1/3 like 1; 5, 6 are 1/3 like 4 (all div 2/3).
    #   2: .72 <- best     3: .64             5: .08+.40 = .48          6: .40
    # pos 4, above {1, 4, 2}: 3 is 2's twin (div 0).
    #   3: .24+0 = .24     5: .48 <- best     6: .40
    # pos 5, above {1, 4, 2, 5}: 6 is 5's twin (div 0).
    #   3: .24 <- best     6: .00+0 = .00
    # pos 6: 6.
    # So fintech and health alternate: 1, 4, 2, 5, 3, 6.
    scores = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    order, ranked = rerank(TWO_CATEGORIES, scores, {"model_score": 0.4, "diversity": 0.6})
    assert order == [1, 4, 2, 5, 3, 6]
    assert ranked.scores.tolist() == pytest.approx([1.0, 0.76, 0.72, 0.48, 0.24, 0.0])
    assert column(ranked, "diversity") == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3, 0.0, 0.0])
    # Without the diversity weight the categories stay in two blocks.
    blocks, _ = rerank(TWO_CATEGORIES, scores, {"model_score": 0.4})
    assert blocks == [1, 2, 3, 4, 5, 6]


# --- End to end: a hand-built SQLite world through the service ------------------------------


def _add_world(engine) -> None:
    """Two users and eight items (see the test below); user 2's clicks make popularity."""
    from ranker.data.clock import set_clock
    from ranker.data.db import session_scope
    from ranker.data.schema import Interaction, User
    from ranker.data.schema import Item as ItemRow

    #            id  category  age  user 2's clicks
    catalogue = [(1, "fintech", 80, 6), (2, "fintech", 2, 5), (3, "fintech", 5, 4),
                 (4, "health", 10, 3), (5, "health", 20, 2), (6, "health", 40, 1),
                 (7, "health", 1, 0), (8, "fintech", 3, 7)]
    yesterday = NOW - timedelta(days=1)
    with session_scope(engine) as s:
        set_clock(s, NOW)
        s.add_all([User(id=u, name=f"user-{u}", role="user", created_at=NOW - timedelta(days=100)) for u in (1, 2)])
        for item_id, category, age, _ in catalogue:
            born = NOW - timedelta(days=age)
            s.add(ItemRow(id=item_id, item_type="item", name=f"item-{item_id}", category=category,
                          field=f"{category}-field", type=f"{category}-type", created_at=born, updated_at=born,
                          views=0))
        s.flush()
        s.add_all([Interaction(user_id=2, item_id=item_id, kind="click", created_at=yesterday)
                   for item_id, _, _, clicks in catalogue for _ in range(clicks)])
        s.add(Interaction(user_id=1, item_id=8, kind="click", created_at=yesterday))


def test_the_service_serves_a_hand_built_world_in_the_hand_derived_order(tmp_path, isolated_dirs):
    # The world at NOW: user 1 clicked item 8, so it is never a candidate. Popularity
    # (all clicks fall in its 14-day window: score = 1.1 x clicks) ranks the rest
    # 1 (6 clicks) 2 3 4 5 6 (1 click) 7 (none); k = 3 fetches 2 x 3 = 6 candidates, so
    # item 7, the newest, is cut. Items of one category share category, field and type
    # (similarity 1), items of two share nothing.
    #   item      1     2     3     4     5     6
    #   category  fin   fin   fin   hea   hea   hea
    #   age       80    2     5     10    20    40     recency = exp(-age / 30)
    #   model     1     .8    .6    .4    .2    0      (min-max of 6.6 ... 1.1)
    #   recency   .069  .936  .846  .717  .513  .264
    # Saved rule weights: model 0.2, recency 0.6, diversity 0.4 (popularity 0).
    # pos 1 (div 1): 1: .20+.04+.4 = .64   2: .16+.56+.4 = 1.12 <- best   3: 1.03   4: .91
    # pos 2 (fintech above: fintech div 0, health div 1):
    #   3: .12+.51 = .63   4: .08+.43+.4 = .91 <- best   5: .75   6: .56
    # pos 3 (both above, div 0 for all): 3: .63 <- best   5: .35   1: .24   6: .16
    # Reranked: 2, 4, 3. The control arm gets the base order: 1, 2, 3.
    from ranker.base.store import fit_base_models
    from ranker.data.db import make_engine, upgrade
    from ranker.rank.tuning import save_weights
    from ranker.serving.service import Service

    engine = make_engine(f"sqlite:///{tmp_path / 'world.db'}")
    upgrade(engine)
    _add_world(engine)
    save_weights(engine, {"model_score": 0.2, "recency": 0.6, "popularity": 0.0, "diversity": 0.4})
    fit_base_models(engine, names=["popularity"])
    svc = Service(engine)

    served = svc.recommend(1, "user-item", k=3, base_model="popularity")
    assert served.item_ids == [2, 4, 3]
    assert (served.reranked, served.model_version, served.base_model) == (True, "rule", "popularity")
    assert [i.base_rank for i in served.items] == [1, 3, 2]
    assert [i.features["diversity"] for i in served.items] == [1.0, 1.0, 0.0]
    assert [i.features["recency"] for i in served.items] == pytest.approx(
        [math.exp(-2 / 30), math.exp(-10 / 30), math.exp(-5 / 30)], abs=1e-6)

    control = svc.recommend(1, "user-item", k=3, base_model="popularity", arm="control")
    assert control.item_ids == [1, 2, 3]
    assert control.reranked is False
    engine.dispose()
