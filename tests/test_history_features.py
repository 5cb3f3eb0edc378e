"""The history feature set: point-in-time user affinities, item CTR and user recency.

Each feature has a known-answer test; values are point in time (adding later events changes
nothing); serving and the dataset builder compute the same values; the set is an operator
setting that serving follows, and a model trained on one set is never served on another.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from ranker import config
from ranker.data.interactions import load_interactions
from ranker.data.schema import Interaction
from ranker.rank import features as F
from ranker.rank import tuning
from ranker.rank.dataset import _AsOf, _features
from ranker.serving.candidates import candidates
from ranker.serving.service import recommend, service
from tests.test_serve import engaged_developer

T0 = datetime(2026, 1, 10)


class _Catalog:
    """The catalogue's attribute arrays, as load_catalog gives them, for three items."""

    ids = np.array([1, 2, 3])
    category = np.array(["fintech", "health", "fintech"])
    field = np.array(["backend", "ml", "frontend"])
    type = np.array(["startup", "startup", "startup"])

    def index(self, item_ids):
        pos = {int(i): j for j, i in enumerate(self.ids)}
        return np.array([pos.get(int(i), -1) for i in item_ids])


def test_user_history_weighs_views_below_engagements_and_ignores_the_future():
    times = np.array([T0 - timedelta(days=3), T0 - timedelta(days=2), T0 - timedelta(hours=12), T0 + timedelta(1)],
                     dtype="datetime64[us]")
    h = F.UserHistory.from_events(_Catalog(), np.array([1, 2, 3, 2]), np.array(["click", "view", "like", "click"]),
                                  times, T0)
    assert h.category == {"fintech": 2.0, "health": config.HISTORY_VIEW_WEIGHT}
    assert h.field == {"backend": 1.0, "ml": config.HISTORY_VIEW_WEIGHT, "frontend": 1.0}
    assert h.total == pytest.approx(2.0 + config.HISTORY_VIEW_WEIGHT)
    assert h.days_since_last == pytest.approx(0.5)


def _ctx(history, views_all=(0, 0, 0), engaged_all=(0, 0, 0)):
    cat = _Catalog()
    ctx = F.ListContext(as_of=T0, user_id=1, user_category=None, user_field=None, item_ids=cat.ids,
                        base_scores=np.array([3.0, 2.0, 1.0]), age_days=np.zeros(3), views=np.zeros(3),
                        interactions=np.zeros(3), category=cat.category, field=cat.field, type=cat.type)
    return F.with_history(ctx, history, np.array(views_all, float), np.array(engaged_all, float))


def test_each_history_feature_has_its_known_answer():
    h = F.UserHistory({"fintech": 2.0}, {"backend": 2.0}, {"startup": 2.0}, 2.0, 7.0)
    ctx = _ctx(h, views_all=(90, 0, 10), engaged_all=(9, 0, 10))
    prior = config.AFFINITY_PRIOR_WEIGHT
    nothing = np.full(3, -np.inf)
    np.testing.assert_allclose(F.category_affinity(ctx, nothing), [2 / (2 + prior), 0, 2 / (2 + prior)])
    np.testing.assert_allclose(F.field_affinity(ctx, nothing), [2 / (2 + prior), 0, 0])
    np.testing.assert_allclose(F.type_affinity(ctx, nothing), np.full(3, 2 / (2 + prior)))
    a, m = config.ITEM_CTR_PRIOR_VIEWS, config.ITEM_CTR_PRIOR_MEAN
    # 9 of 90: near the data; none seen: the prior mean; 10 of 10: shrunk well below 1
    np.testing.assert_allclose(F.item_ctr(ctx, nothing), [(9 + a * m) / (90 + a), m, (10 + a * m) / (10 + a)])
    np.testing.assert_allclose(F.user_recency(ctx, nothing), np.full(3, np.exp(-7.0 / config.USER_RECENCY_DAYS)))
    empty = _ctx(F.UserHistory.empty())
    assert F.category_affinity(empty, nothing).tolist() == [0, 0, 0]
    assert F.user_recency(empty, nothing).tolist() == [0, 0, 0]


def test_a_context_without_history_is_refused_by_name():
    ctx = _ctx(F.UserHistory.empty())
    ctx.history = None
    with pytest.raises(ValueError, match="history features need the user's events"):
        F.category_affinity(ctx, np.full(3, -np.inf))
    counted = _ctx(F.UserHistory.empty())
    counted.item_views_all = None
    with pytest.raises(ValueError, match="item_ctr needs the candidates' all-origin counts"):
        F.item_ctr(counted, np.full(3, -np.inf))


def test_the_history_set_adds_its_columns_after_the_guides_four():
    assert F.feature_names() == list(F.GUIDE)
    F.use_feature_set("history")
    assert F.feature_names() == [*F.GUIDE, "category_affinity", "field_affinity", "type_affinity", "item_ctr",
                                 "user_recency"]
    assert F.input_dim() == 9 and F.needs_history()
    F.use_feature_set("guide")
    assert F.feature_names() == list(F.GUIDE) and not F.needs_history()
    with pytest.raises(ValueError, match="choose one of: guide, history"):
        F.use_feature_set("everything")


def _dataset_features(engine, uid, order, scores, when):
    history = load_interactions(engine, until=when + timedelta(days=30))  # later rows too: they must not count
    return _features(_AsOf.load(engine, history), scores, order, when, uid)


def _served_list(engine):
    """A treatment list served with the history set, and its candidates in served-then-rest order."""
    tuning.save_feature_set(engine, "history")
    uid = engaged_developer(engine)
    rec = recommend(uid, "developer-startup", 10, engine=engine, arm="treatment", log=False)
    cands = candidates(uid, "developer-startup", 20, engine=engine, as_of=rec.served_at)
    rest = [i for i in cands.item_ids.tolist() if i not in rec.item_ids]
    order = np.array(rec.item_ids + rest)
    score_of = dict(zip(cands.item_ids.tolist(), cands.scores.tolist()))
    return uid, rec, order, np.array([score_of[i] for i in order])


def test_served_history_features_equal_the_dataset_builders(served):
    """Parity: serving and the dataset builder compute the same history features, with later
    interactions in the database (point in time)."""
    uid, rec, order, scores = _served_list(served)
    assert F.feature_set() == "history" and rec.fallback_reason is not None  # v1 is a guide model: the rule serves
    assert "guide feature set" in rec.fallback_reason
    got = np.array([[it.features[n] for n in F.feature_names()] for it in rec.items])
    assert got[:, F.feature_names().index("category_affinity")].max() > 0  # an engaged user has affinities
    later = [{"user_id": uid, "item_id": int(i), "kind": "click", "created_at": rec.served_at + timedelta(hours=1),
              "origin": "organic"} for i in order[:5]]
    with served.begin() as conn:
        conn.execute(insert(Interaction), later)
    np.testing.assert_allclose(got, _dataset_features(served, uid, order, scores, rec.served_at)[:10], atol=1e-6)
    service(served).invalidate()
    again = recommend(uid, "developer-startup", 10, engine=served, arm="treatment", log=False, as_of=rec.served_at)
    assert [it.features for it in again.items] == [it.features for it in rec.items]


def test_the_feature_set_is_recorded_and_a_model_never_serves_on_another(served, isolated_dirs):
    from ranker.cli import main

    tuning.save_feature_set(served, "history")
    out = isolated_dirs["data"] / "h.csv"
    assert main(["dataset", "--output", str(out), "--base-model", "popularity"]) == 0
    header = pd.read_csv(out, nrows=0).columns
    assert "item_ctr_score" in header and "user_recency_score" in header
    assert main(["train", "--data", str(out), "--epochs", "2", "--activate"]) == 0
    rec = recommend(engaged_developer(served), "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert rec.model_version == "v2" and rec.fallback_reason is None
    from ranker.rank.registry import load_checkpoint, version_path

    assert load_checkpoint(version_path("v2")).meta["feature_set"] == "history"
    tuning.save_feature_set(served, "guide")  # v2 cannot be served on the guide's four: the rule serves, saying why
    rec = recommend(engaged_developer(served), "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert rec.model_version == "rule" and "history feature set" in rec.fallback_reason
    assert list(rec.items[0].features) == list(F.GUIDE)


def test_training_on_a_file_of_the_other_set_says_how_to_rebuild_it(served, capsys):
    from ranker import config
    from ranker.cli import main

    assert main(["train", "--data", str(config.DATA_DIR / "ranker_train.csv"), "--features", "history",
                 "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "built with the guide feature set" in err and "ranker dataset --features history" in err


def test_rerank_latency_with_history_features_on(served):
    tuning.save_feature_set(served, "history")
    lat = service(served).rerank_latency(repeats=20)
    assert lat["p50_ms"] > 0 and lat["scorer"] == "rule"
