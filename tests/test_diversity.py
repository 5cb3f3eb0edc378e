"""MMR and the fast DPP: known answers, the incremental Cholesky against determinants, the knob."""

from __future__ import annotations

import itertools
from datetime import datetime

import numpy as np
import pytest

from ranker.rank import features as F
from ranker.rank.diversity import check_method, dpp_order, mmr_order, relevance, rerank, served_features
from ranker.rank.metrics import intra_list_diversity
from ranker.rank.rerank import RuleScorer, greedy_rerank


def random_ctx(rng: np.random.Generator, n: int) -> F.ListContext:
    pick = lambda options: np.array(rng.choice(options, size=n), dtype=object)  # noqa: E731
    return F.ListContext(
        as_of=datetime(2026, 1, 1), user_id=1, user_category="c0", user_field="f0",
        item_ids=np.arange(n), base_scores=rng.random(n), age_days=rng.uniform(0, 60, n),
        views=rng.integers(0, 500, n).astype(float), interactions=np.zeros(n),
        category=pick(["c0", "c1", "c2", "c3"]), field=pick(["f0", "f1", "f2"]), type=pick(["t0", "t1"]),
        max_views=1000.0,
    )


def naive_greedy_dpp(rel: np.ndarray, sim: np.ndarray, k: int, theta: float, ridge: float) -> list[int]:
    """Greedy MAP by determinants: each step adds the item maximising det L_Y."""
    q = np.exp(theta / (2 * (1 - theta)) * rel)
    kernel = q[:, None] * (sim + ridge * np.eye(len(rel))) * q[None, :]
    chosen: list[int] = []
    for _ in range(k):
        gains = {i: np.linalg.det(kernel[np.ix_(chosen + [i], chosen + [i])])
                 for i in range(len(rel)) if i not in chosen}
        chosen.append(max(gains, key=gains.get))
    return chosen


@pytest.mark.parametrize("seed", range(8))
def test_incremental_cholesky_picks_what_determinants_pick(seed: int) -> None:
    from ranker.rank.diversity import DPP_RIDGE

    rng = np.random.default_rng(seed)
    ctx = random_ctx(rng, 12)
    rel = rng.random(12)
    theta = float(rng.uniform(0.2, 0.8))
    got = dpp_order(rel, ctx.similarity(), 6, theta)
    assert list(got) == naive_greedy_dpp(rel, ctx.similarity(), 6, theta, DPP_RIDGE)


def test_dpp_near_theta_one_is_the_relevance_order() -> None:
    rng = np.random.default_rng(1)
    ctx = random_ctx(rng, 30)
    rel = rng.permutation(np.linspace(0, 1, 30))
    assert list(dpp_order(rel, ctx.similarity(), 10, 0.999)) == list(np.argsort(-rel)[:10])


def test_dpp_with_identical_items_places_the_duplicate_last() -> None:
    # Items 0 and 1 are the same in every attribute; 2 differs. θ small: diversity decides.
    sim = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=float)
    order = dpp_order(np.array([1.0, 0.9, 0.0]), sim, 3, 0.1)
    assert list(order) == [0, 2, 1]


def test_mmr_known_answers() -> None:
    sim = np.array([[1, 0.9, 0.0], [0.9, 1, 0.1], [0.0, 0.1, 1]])
    rel = np.array([1.0, 0.95, 0.5])
    assert list(mmr_order(rel, sim, 3, 1.0)) == [0, 1, 2]  # relevance only
    # λ = 0.5: after 0, item 1 scores 0.5·0.95 − 0.5·0.9 = 0.025, item 2 scores 0.25 − 0 = 0.25.
    assert list(mmr_order(rel, sim, 3, 0.5)) == [0, 2, 1]


def test_lower_knob_gives_more_diverse_lists_for_both_methods() -> None:
    rng = np.random.default_rng(5)
    contexts = [random_ctx(rng, 40) for _ in range(40)]
    scorer = RuleScorer()

    def mean_ild(method: str, knob: float) -> float:
        lists = [rerank(c, scorer, 10, method, knob).order for c in contexts]
        return float(np.mean([intra_list_diversity(c.category[o], c.field[o], c.type[o])
                              for c, o in zip(contexts, lists)]))

    for method, knobs in (("mmr", (1.0, 0.7, 0.3)), ("dpp", (0.95, 0.7, 0.3))):
        ilds = [mean_ild(method, knob) for knob in knobs]
        assert ilds[0] < ilds[1] < ilds[2], (method, ilds)


def test_rerank_greedy_is_the_guides_reranker_and_served_features_match_it() -> None:
    rng = np.random.default_rng(2)
    ctx = random_ctx(rng, 20)
    scorer = RuleScorer()
    a, b = rerank(ctx, scorer, 10, "greedy"), greedy_rerank(ctx, scorer, 10)
    assert list(a.order) == list(b.order)
    np.testing.assert_allclose(served_features(ctx, b.order), b.features)


def test_mmr_and_dpp_return_k_distinct_items_with_relevance_scores() -> None:
    rng = np.random.default_rng(4)
    ctx = random_ctx(rng, 20)
    raw, scaled = relevance(ctx, RuleScorer())
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    for method, knob in itertools.product(("mmr", "dpp"), (0.0, 0.5, 0.9)):
        out = rerank(ctx, RuleScorer(), 10, method, knob)
        assert len(set(out.order)) == 10
        np.testing.assert_allclose(out.scores, raw[out.order])
        assert out.features.shape == (10, F.input_dim())


@pytest.mark.parametrize("method,knob", [("mmr", 1.5), ("dpp", 1.0), ("dpp", -0.1), ("mmr", float("nan")),
                                         ("swirl", 0.5)])
def test_bad_method_or_knob_is_refused_with_what_is_allowed(method: str, knob: float) -> None:
    with pytest.raises(ValueError, match="choose one of|outside"):
        check_method(method, knob)
