"""Offline quality over whole candidate lists (NDCG@10, MAP@10, recall@10), per policy."""

from __future__ import annotations

import json
import math
import shutil
from datetime import timedelta

import numpy as np
import pytest

from ranker.data.clock import serve_now
from ranker.data.db import make_engine, session_scope
from ranker.evaluation.offline import offline_table
from ranker.rank.dataset import candidate_lists
from ranker.rank.metrics import ndcg_at_k, ranked_metrics_at_k
from ranker.rank.rerank import RuleScorer


def test_ranked_metrics_known_answers():
    relevant = np.array([0, 1, 0, 1, 0], dtype=bool)
    m = ranked_metrics_at_k(relevant, [1, 0, 3, 2, 4], k=3)
    # hits at ranks 1 and 3: AP = (1/1 + 2/3) / 2, recall 2/2, NDCG = (1 + 1/log2(4)) / (1 + 1/log2(3))
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["recall"] == 1.0
    assert m["ndcg"] == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert ranked_metrics_at_k(relevant, [0, 2, 4], k=3) == {"ndcg": 0.0, "ap": 0.0, "recall": 0.0}
    assert ranked_metrics_at_k(np.zeros(3, bool), [0, 1, 2], k=2)["ndcg"] == 0.0


def test_ranked_ndcg_agrees_with_the_sklearn_checked_one():
    rng = np.random.default_rng(0)
    for _ in range(50):
        relevant = rng.random(20) < 0.2
        scores = rng.random(20)
        order = np.argsort(-scores)
        assert ranked_metrics_at_k(relevant, order, 10)["ndcg"] == pytest.approx(ndcg_at_k(relevant, scores, 10))


def test_offline_table_scores_every_policy_on_the_same_lists(small_world, tmp_path):
    shutil.copy(small_world, tmp_path / "w.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with session_scope(engine) as s:
        now = serve_now(s)
    lists = list(candidate_lists(engine, now - timedelta(days=10), now, base_model="popularity"))
    assert lists and all(cl.relevant.any() for cl in lists)
    assert np.mean([len(cl.context) for cl in lists]) > 10  # whole candidate lists, not the shown k
    table = offline_table(lists, {"rule": RuleScorer(), "base-again": RuleScorer({"model_score": 1.0})})
    assert list(table.index) == ["base", "rule", "base-again"]
    assert (table["lists"] == len(lists)).all()
    # model_score alone reproduces the base order (ties aside), so its figures equal the base's
    assert table.loc["base-again", "recall@10"] == pytest.approx(table.loc["base", "recall@10"], abs=0.02)
    assert table.loc["rule", "ndcg@10"] != table.loc["base", "ndcg@10"]
    engine.dispose()


def test_ranker_offline_prints_every_policy_with_the_peer(served, capsys):
    from ranker.cli import main
    from ranker.data.db import _cached_engine

    _cached_engine.cache_clear()
    try:
        assert main(["offline", "--days", "10", "--base-model", "popularity", "--lightgbm", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [p["policy"] for p in out["policies"]] == ["base", "rule", "neural v1", "lightgbm"]
        assert main(["offline", "--days", "0.0001"]) == 2  # nothing in the period: one line, what to do
        assert "widen --days" in capsys.readouterr().err
    finally:
        _cached_engine.cache_clear()
