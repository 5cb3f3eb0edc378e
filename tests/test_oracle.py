"""The oracle (ranker.sim.oracle): its list and the expected clicks, worked by hand on a tiny world.

The world: a user and items with zero latent vectors and quality, no freshness weight,
so an item's attraction logit is ``bias - satiation × (same-category items above it)``;
position i (1-based) is examined with probability ``i ** -0.75``.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from ranker.rank.features import ListContext
from ranker.sim.oracle import Oracle
from ranker.sim.truth import GroundTruth, WorldParams

BIAS, SATIATION = -1.0, 1.2


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def exam(i: int) -> float:
    return i ** -0.75


def tiny_world(categories: list[str]) -> tuple[Oracle, ListContext]:
    n = len(categories)
    truth = GroundTruth(
        params=WorldParams(affinity=0.0, freshness=0.0, quality=0.0, satiation=SATIATION, bias=BIAS,
                           examination_decay=0.75),
        user_ids=np.array([1]), user_vecs=np.zeros((1, 2), np.float32),
        item_ids=np.arange(10, 10 + n), item_vecs=np.zeros((n, 2), np.float32),
        item_quality=np.zeros(n, np.float32),
    )
    ctx = ListContext(as_of=datetime(2026, 1, 1), user_id=1, user_category=None, user_field=None,
                      item_ids=np.arange(10, 10 + n), base_scores=np.ones(n), age_days=np.full(n, 5.0),
                      views=np.zeros(n), interactions=np.zeros(n), category=np.array(categories, dtype=object),
                      field=np.array(["f"] * n, dtype=object), type=np.array(["t"] * n, dtype=object))
    return Oracle(truth), ctx


def test_the_oracle_interleaves_categories_when_satiation_is_all_that_differs():
    # Equal attraction alone; after an "a", every other "a" is 1.2 lower: a, b, then the second a.
    oracle, ctx = tiny_world(["a", "a", "b"])
    assert oracle.best_order(ctx, 3).tolist() == [0, 2, 1]
    assert oracle.best_order(ctx, 2).tolist() == [0, 2]


def test_expected_clicks_are_the_click_probabilities_summed_over_the_positions():
    oracle, ctx = tiny_world(["a", "a", "b"])
    base = oracle.show(ctx, np.array([0, 1, 2]), np.zeros(3), np.zeros(3))
    best = oracle.show(ctx, np.array([0, 2, 1]), np.zeros(3), np.zeros(3))
    # base order a, a, b: the second a is sated; the oracle's a, b, a sates the last position instead.
    expected_base = sigmoid(BIAS) * exam(1) + sigmoid(BIAS - SATIATION) * exam(2) + sigmoid(BIAS) * exam(3)
    expected_best = sigmoid(BIAS) * exam(1) + sigmoid(BIAS) * exam(2) + sigmoid(BIAS - SATIATION) * exam(3)
    assert math.isclose(base.expected_clicks, expected_base)
    assert math.isclose(best.expected_clicks, expected_best)
    assert best.expected_clicks > base.expected_clicks


def test_expected_clicks_do_not_depend_on_the_random_draws_but_realised_clicks_do():
    oracle, ctx = tiny_world(["a", "b", "a", "c", "b", "a"])
    order = oracle.best_order(ctx, 4)
    rng = np.random.default_rng(0)
    shown = [oracle.show(ctx, order, rng.random(4), rng.random(6)) for _ in range(50)]
    assert len({s.expected_clicks for s in shown}) == 1
    assert len({s.clicked.tobytes() for s in shown}) > 1
    everything = oracle.show(ctx, order, np.zeros(4), np.zeros(6))  # every draw below its probability
    assert everything.clicked.all()
