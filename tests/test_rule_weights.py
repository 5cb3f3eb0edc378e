"""All rule weights zero is allowed and means the base order: every candidate scores 0 and the
greedy rerank takes the first remaining candidate at each position (docs/configuration.md)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ranker.rank import features as F
from ranker.rank.rerank import RuleScorer, greedy_rerank

ALL_ZERO = dict.fromkeys(F.feature_names(), 0.0)
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def candidates(seed: int, n: int = 20) -> F.ListContext:
    """``n`` candidates in base order (base scores falling), with random features."""
    rng = np.random.default_rng(seed)
    pick = lambda options: np.array(rng.choice(options, size=n), dtype=object)  # noqa: E731
    return F.ListContext(
        as_of=datetime(2026, 1, 1), user_id=1, user_category="c0", user_field="f0",
        item_ids=rng.permutation(1000)[:n], base_scores=np.sort(rng.random(n))[::-1],
        age_days=rng.uniform(0, 60, n), views=rng.integers(0, 500, n).astype(float),
        interactions=rng.integers(0, 20, n).astype(float), category=pick(["c0", "c1", "c2"]),
        field=pick(["f0", "f1"]), type=pick(["t0", "t1"]), max_views=1000.0)


@pytest.mark.parametrize("seed", range(5))
def test_all_zero_weights_rerank_to_the_base_order(seed):
    ranked = greedy_rerank(candidates(seed), RuleScorer(ALL_ZERO), k=10)
    assert ranked.order.tolist() == list(range(10))
    assert (ranked.scores == 0).all()


def test_one_nonzero_weight_does_reorder():
    """The check above can fail: a rule that scores anything moves candidates."""
    moved = [greedy_rerank(candidates(seed), RuleScorer({**ALL_ZERO, "recency": 1.0}), k=10).order.tolist()
             for seed in range(5)]
    assert all(order != list(range(10)) for order in moved)


def test_served_list_with_all_zero_weights_is_the_control_arms_list(world_copy, isolated_dirs, monkeypatch, capsys):
    from ranker.cli import main
    from ranker.data.db import _cached_engine
    from ranker.serving.service import _SERVICES, recommend
    from ranker.serving.views import recently_active_user

    monkeypatch.setenv("RANKER_DATABASE_URL", world_copy.url.render_as_string(hide_password=False))
    _cached_engine.cache_clear()
    _SERVICES.clear()
    try:
        assert main(["weights", "set", *(f"{name}=0" for name in ALL_ZERO)]) == 0
        assert capsys.readouterr().out.startswith("rule weights: " + ", ".join(f"{n} 0" for n in ALL_ZERO))
        user_id, flow = recently_active_user(world_copy)
        treated = recommend(user_id, flow, engine=world_copy, arm="treatment", log=False)
        control = recommend(user_id, flow, engine=world_copy, arm="control", log=False)
    finally:
        _cached_engine.cache_clear()
        _SERVICES.clear()
    assert treated.reranked and treated.model_version == "rule" and len(treated.items) == 10
    assert treated.item_ids == control.item_ids
    assert [item.base_rank for item in treated.items] == list(range(10))


@pytest.mark.slow
def test_the_rule_weights_page_saves_all_zero_weights_and_says_they_serve_the_base_order(
        world_copy, isolated_dirs, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from ranker.data.db import _cached_engine
    from ranker.rank import tuning
    from ranker.serving.service import _SERVICES

    monkeypatch.setenv("RANKER_DATABASE_URL", world_copy.url.render_as_string(hide_password=False))
    for clear in (_cached_engine.cache_clear, _SERVICES.clear, st.cache_data.clear, st.cache_resource.clear):
        clear()
    at = AppTest.from_file(str(APP), default_timeout=60).switch_page("../pages/rule_weights.py").run()
    assert ("All weights zero serves the base order unchanged: every candidate scores 0 and ties keep the base "
            "order.") in [caption.value for caption in at.caption]
    for name in ALL_ZERO:
        at.slider(key=f"w_{name}").set_value(0.0)
    next(b for b in at.run().button if b.label == "Save").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Saved. Serving uses these weights from the next request."]
    assert tuning.current_weights(world_copy) == ALL_ZERO
