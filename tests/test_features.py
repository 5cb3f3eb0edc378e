"""The four features against hand-computed values, and the registry's promise."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import datetime
from itertools import product

import numpy as np
import pytest

from ranker.rank import features as F
from ranker.rank.rerank import RuleScorer, greedy_rerank


def ctx(n=3, **over) -> F.ListContext:
    base = dict(
        as_of=datetime(2026, 1, 1), user_id=1, user_category="ai", user_field="ml",
        item_ids=np.arange(n), base_scores=np.linspace(0, 1, n), age_days=np.zeros(n),
        views=np.zeros(n), interactions=np.zeros(n),
        category=np.array(["a"] * n, dtype=object), field=np.array(["f"] * n, dtype=object),
        type=np.array(["t"] * n, dtype=object), max_views=1000.0,
    )
    base.update(over)
    return F.ListContext(**base)


def test_recency_matches_the_guide_at_0_30_60_days():
    c = ctx(age_days=np.array([0.0, 30.0, 60.0]))
    got = F.recency(c, np.full(3, -np.inf))
    assert got == pytest.approx([1.0, math.exp(-1), math.exp(-2)])
    assert np.round(got, 2).tolist() == [1.0, 0.37, 0.14]


def test_popularity_formula_and_clipping():
    c = ctx(views=np.array([0.0, 10.0, 5000.0]), interactions=np.array([0.0, 2.0, 9000.0]))
    got = F.popularity(c, np.full(3, -np.inf))
    assert got[0] == 0.0
    assert got[1] == pytest.approx(math.log(10 + 3 * 2 + 1) / math.log(1000))
    assert got[2] == 1.0  # clipped


def test_model_score_is_min_max_within_the_list():
    c = ctx(base_scores=np.array([2.0, 4.0, 3.0]))
    assert F.model_score(c, None).tolist() == [0.0, 1.0, 0.5]
    flat = ctx(base_scores=np.array([7.0, 7.0, 7.0]))
    assert F.model_score(flat, None).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("same_cat,same_field,same_type", list(product([0, 1], repeat=3)))
def test_diversity_for_every_combination_of_matches(same_cat, same_field, same_type):
    c = ctx(
        n=2,
        category=np.array(["a", "a" if same_cat else "b"], dtype=object),
        field=np.array(["f", "f" if same_field else "g"], dtype=object),
        type=np.array(["t", "t" if same_type else "u"], dtype=object),
    )
    x = F.list_features(c)
    div = x[:, F.feature_names().index("diversity")]
    assert div[0] == 1.0  # the first item has nothing above it
    assert div[1] == pytest.approx(1 - (same_cat + same_field + same_type) / 3)


def test_diversity_uses_the_most_similar_item_above():
    c = ctx(n=3, category=np.array(["a", "b", "a"], dtype=object),
            field=np.array(["f", "g", "f"], dtype=object), type=np.array(["t", "u", "u"], dtype=object))
    div = F.list_features(c)[:, F.feature_names().index("diversity")]
    assert div.tolist() == pytest.approx([1.0, 1.0, 1 - 2 / 3])


def test_age_counts_an_edit_only_once_it_has_happened():
    created = np.array(["2025-12-01", "2025-12-01"], dtype="datetime64[us]")
    updated = np.array(["2025-12-21", "2026-02-01"], dtype="datetime64[us]")
    got = F.age_days(datetime(2026, 1, 1), created, updated)
    assert got.tolist() == pytest.approx([11.0, 31.0])


def test_greedy_rerank_prefers_diverse_items_when_weights_say_so():
    # two near-identical top items of the same category, one different below them
    c = ctx(n=3, base_scores=np.array([1.0, 0.95, 0.9]),
            category=np.array(["a", "a", "b"], dtype=object), field=np.array(["f", "f", "g"], dtype=object),
            type=np.array(["t", "t", "u"], dtype=object))
    by_score = greedy_rerank(c, RuleScorer({"model_score": 1.0}), 3)
    assert by_score.order.tolist() == [0, 1, 2]
    diverse = greedy_rerank(c, RuleScorer({"model_score": 0.5, "diversity": 0.5}), 3)
    assert diverse.order.tolist() == [0, 2, 1]
    assert diverse.features[:, F.feature_names().index("diversity")].tolist() == [1.0, 1.0, 0.0]


def test_a_fifth_registered_feature_flows_everywhere(tmp_path):
    """Adding user_affinity is one registered function: input_dim, CSV columns,
    rule weights and checkpoints follow."""
    from ranker.rank.dataset import header
    from ranker.rank.model import RankerMLP
    from ranker.rank.registry import load_checkpoint, save_checkpoint

    @F.register_feature("user_affinity")
    def user_affinity(c, maxsim):
        return (c.category == c.user_category).astype(np.float64)

    try:
        assert F.input_dim() == 5
        assert "user_affinity_score" in header()
        x = F.list_features(ctx(category=np.array(["ai", "b", "ai"], dtype=object)))
        assert x.shape == (3, 5) and x[:, 4].tolist() == [1.0, 0.0, 1.0]
        assert RuleScorer({"user_affinity": 1.0})(x).tolist() == [1.0, 0.0, 1.0]
        model = RankerMLP(F.input_dim())
        meta = {"feature_names": F.feature_names(), "input_dim": 5,
                "arch": {"hidden_dim1": 32, "hidden_dim2": 16, "dropout": 0.2}}
        save_checkpoint(tmp_path / "five.pth", model, meta)
        assert load_checkpoint(tmp_path / "five.pth").meta["feature_names"][-1] == "user_affinity"
    finally:
        F.unregister_feature("user_affinity")
    assert F.input_dim() == 4


def test_user_affinity_matches_the_declared_profile():
    c = ctx(category=np.array(["ai", "ai", "bio", "bio"], dtype=object),
            field=np.array(["ml", "web", "ml", "web"], dtype=object), n=4)
    assert F.user_affinity(c, np.full(4, -np.inf)).tolist() == [1.0, 1.0, 0.0, 0.0]
    cats = np.array(["ai", "b", "ai"], dtype=object)
    for missing in (None, float("nan")):  # no declared category (NaN: a null read through pandas)
        no_profile = ctx(user_category=missing, category=cats)
        assert F.user_affinity(no_profile, np.full(3, -np.inf)).tolist() == [0.0, 0.0, 0.0]


def _run(code: str, extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RANKER_EXTRA_FEATURES": extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_extra_features_env_registers_user_affinity_after_the_four():
    got = _run("from ranker.rank.features import feature_columns, input_dim; print(input_dim(), feature_columns())",
               "user_affinity")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split()[0] == "5" and "'user_affinity_score']" in got.stdout


def test_an_unknown_extra_feature_is_a_one_line_cli_error():
    got = _run("import sys; from ranker.cli import main; sys.exit(main(['db', 'info']))", "user_afinity")
    assert got.returncode == 2
    assert got.stderr.strip() == ("error: unknown optional feature 'user_afinity' in RANKER_EXTRA_FEATURES; "
                                  "choose from: user_affinity")


def test_weights_outside_unit_interval_are_refused():
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        RuleScorer({"model_score": 1.5})
    with pytest.raises(ValueError, match="unknown rule weight"):
        RuleScorer({"freshness": 0.3})
