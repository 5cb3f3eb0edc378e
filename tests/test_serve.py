"""recommend(): reranking, fallbacks, hot reload, logging, and train/serve parity."""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from ranker import config, keys
from ranker.data.catalog import CountIndex, load_catalog
from ranker.data.interactions import load_interactions
from ranker.data.schema import Impression, Interaction, Item, ServedList, User
from ranker.rank import registry, rerank
from ranker.rank.dataset import features_at
from ranker.rank.features import feature_names
from ranker.serving.candidates import candidates
from ranker.serving.service import recommend


def engaged_developer(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(User.id).join(Interaction, Interaction.user_id == User.id)
            .where(User.role == "developer", Interaction.kind.in_(config.POSITIVE_KINDS))
            .group_by(User.id).order_by(func.count().desc(), User.id).limit(1)).scalar_one()


def test_recommend_reranks_2k_candidates_into_top_k(served):
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 10, engine=served, arm="treatment", log=False)
    assert rec.reranked and len(rec.items) == 10
    assert rec.model_version == "v1" and rec.fallback_reason is None
    assert all(set(it.features) == set(feature_names()) for it in rec.items)
    assert max(it.base_rank for it in rec.items) < 2 * 10
    assert [it.position for it in rec.items] == list(range(10))
    scores = [it.score for it in rec.items]
    assert all(np.isfinite(scores))


def test_control_arm_gets_the_base_order_truncated(served):
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 10, engine=served, arm="control", log=False)
    cands = candidates(uid, "developer-startup", 20, engine=served)
    assert not rec.reranked and rec.model_version == "base"
    assert rec.item_ids == cands.item_ids[:10].tolist()


def test_without_a_model_the_rule_fallback_serves_and_says_why(served, caplog):
    registry.activate_version(served, registry.RULE)
    caplog.set_level(logging.WARNING)
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert rec.reranked and rec.model_version == "rule"
    assert "Ranker model not found" in rec.fallback_reason
    assert "Ranker model not found, using rule-based ranker" in caplog.text


def test_user_without_history_gets_trending_unreranked(served):
    with served.begin() as conn:
        uid = conn.execute(User.__table__.insert().values(
            name="newcomer", role="investor", category="ai", field="seed",
            created_at=datetime(2025, 12, 31))).inserted_primary_key[0]
    rec = recommend(uid, "investor-startup", 10, engine=served, arm="treatment", log=False)
    assert rec.reranked is False and rec.model_version == "trending"
    assert len(rec.items) == 10 and "no history" in rec.fallback_reason


def test_unknown_user_or_wrong_flow_lists_the_valid_flows(served):
    uid = engaged_developer(served)
    with pytest.raises(ValueError, match="developer-startup"):
        recommend(uid, "founder-investor", engine=served, log=False)
    with pytest.raises(ValueError, match="unknown flow|valid flows"):
        recommend(uid, "cats-dogs", engine=served, log=False)
    with pytest.raises(ValueError, match="unknown user"):
        recommend(10**9, "developer-startup", engine=served, log=False)


def test_hot_reload_between_two_calls_and_corrupt_file_keeps_serving(served, caplog):
    uid = engaged_developer(served)
    first = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert first.model_version == "v1"
    ckpt = registry.load_checkpoint(registry.version_path("v1"))
    model = ckpt.model()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # a visibly different model
    registry.save_checkpoint(registry.models_dir() / "negated.pth", model, ckpt.meta)
    registry.register(served, registry.models_dir() / "negated.pth", activate=True)
    second = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert second.model_version == "v2"
    registry.version_path("v2").write_bytes(b"not a checkpoint")  # the served version's file goes bad
    caplog.set_level(logging.WARNING)
    third = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert third.model_version == "v2"
    assert "still serving v2" in caplog.text


def test_served_lists_are_logged_as_impressions(served):
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 10, engine=served)
    with served.connect() as conn:
        rows = conn.execute(select(Impression.position, Impression.item_id, Impression.arm, Impression.features)
                            .where(Impression.request_id == rec.request_id).order_by(Impression.position)).all()
        lists = conn.execute(select(func.count()).select_from(ServedList)
                             .where(ServedList.arm != config.LEGACY)).scalar_one()  # the world's own history aside
    assert [r.item_id for r in rows] == rec.item_ids
    assert {r.arm for r in rows} == {rec.arm}
    assert rows[3].features == rec.items[3].features
    assert lists == 1 and len(rec.impression_ids) == 10


def test_features_served_equal_features_recomputed_by_the_dataset_code(served):
    """Parity: the dataset's point-in-time path gives the served features back."""
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 10, engine=served, arm="treatment", log=False)
    cands = candidates(uid, "developer-startup", 20, engine=served, as_of=rec.served_at)
    served_ids = rec.item_ids
    rest = [i for i in cands.item_ids.tolist() if i not in served_ids]
    order = np.array(served_ids + rest)
    score_of = dict(zip(cands.item_ids.tolist(), cands.scores.tolist()))
    history = load_interactions(served, until=rec.served_at)
    counts = CountIndex.from_history(history)
    x = features_at(load_catalog(served), counts, np.array([score_of[i] for i in order]), order,
                    rec.served_at, uid)
    got = np.array([[it.features[n] for n in feature_names()] for it in rec.items])
    np.testing.assert_allclose(got, x[:10], atol=1e-6)


def test_new_items_do_not_force_a_refit_of_the_saved_base_models(served):
    from ranker.base import store
    from ranker.data.schema import Item

    before = {p.name: p.stat().st_mtime_ns for p in store.models_dir().glob("*.npz")}
    with served.begin() as conn:
        conn.execute(Item.__table__.insert().values(
            item_type="startup", name="fresh", category="ai", field="b2b-saas", type="seed",
            created_at=datetime(2025, 12, 31), updated_at=datetime(2025, 12, 31), views=0))
    store.clear_cache()
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 5, engine=served, arm="treatment", log=False)
    assert rec.reranked and not rec.fallback_reason
    after = {p.name: p.stat().st_mtime_ns for p in store.models_dir().glob("*.npz")}
    assert after == before  # loaded, not refitted


def test_trending_lists_are_served_as_they_are(served):
    uid = engaged_developer(served)
    rec = recommend(uid, "trending", 10, engine=served, log=False)
    assert rec.reranked is False and rec.model_version == "trending" and len(rec.items) == 10
    per_type = recommend(uid, "trending-investor", 5, engine=served, log=False)
    with served.connect() as conn:
        kinds = set(conn.execute(select(Item.item_type).where(Item.id.in_(per_type.item_ids))).scalars())
    assert kinds == {"investor"}
    with pytest.raises(ValueError, match="trending-startup"):
        recommend(uid, "trending-robots", engine=served, log=False)


@pytest.fixture
def user_affinity_on():
    from ranker.rank import features

    features.enable_feature("user_affinity")
    yield
    features.unregister_feature("user_affinity")


def test_optional_user_affinity_from_dataset_to_serving(served, user_affinity_on, caplog):
    """RANKER_EXTRA_FEATURES=user_affinity: the 4-feature model is refused with the reason
    (the rule serves meanwhile); a dataset and a model built with the fifth feature serve it."""
    from ranker.ops.pipeline import train_and_register
    from ranker.rank.dataset import DatasetConfig, build_dataset
    from ranker.rank.train import TrainConfig

    uid = engaged_developer(served)
    caplog.set_level(logging.WARNING)
    before = recommend(uid, "developer-startup", 10, engine=served, arm="treatment", log=False)
    assert before.model_version == "rule" and "retrain with `ranker train`" in before.fallback_reason
    assert "'user_affinity']" in caplog.text

    cfg = DatasetConfig(output=config.DATA_DIR / "five.csv", val_output=config.DATA_DIR / "five_val.csv")
    build_dataset(served, cfg)
    assert cfg.output.read_text().splitlines()[0].split(",")[2:7] == [
        "model_score", "recency_score", "popularity_score", "diversity_score", "user_affinity_score"]
    trained = train_and_register(served, cfg.output, TrainConfig(epochs=3), val=cfg.val_output, activate=True,
                                 min_positives=50)
    assert registry.load_checkpoint(registry.active_path()).meta["feature_names"][-1] == "user_affinity"

    with served.connect() as conn:
        users = conn.execute(select(User.id, User.category).join(Interaction, Interaction.user_id == User.id)
                             .where(User.role == "developer").group_by(User.id, User.category)
                             .order_by(User.id).limit(15)).all()
        category = dict(conn.execute(select(Item.id, Item.category)).all())
    matches = 0
    for user, declared in users:
        rec = recommend(user, "developer-startup", 10, engine=served, arm="treatment", log=False)
        if rec.fallback_reason:  # a user the base model does not know gets trending
            continue
        assert rec.model_version == trained.version
        got = [it.features["user_affinity"] for it in rec.items]
        assert got == [float(category[i] == declared) for i in rec.item_ids]
        matches += sum(got)
    assert matches > 0


def test_switching_the_optional_feature_off_keeps_the_rule_serving(served, caplog):
    """Saved rule weights that name a feature no longer registered are dropped with a warning."""
    from ranker.rank import features, tuning

    features.enable_feature("user_affinity")
    try:
        tuning.save_weights(served, {"model_score": 0.5, "user_affinity": 0.4})
    finally:
        features.unregister_feature("user_affinity")
    registry.activate_version(served, registry.RULE)
    caplog.set_level(logging.WARNING)
    rerank._warned.clear()
    for _ in range(3):
        rec = recommend(engaged_developer(served), "developer-startup", 5, engine=served, arm="treatment",
                        log=False)
        assert rec.model_version == "rule" and len(rec.items) == 5
    assert caplog.text.count("ignoring saved rule weight(s) ['user_affinity']") == 1  # once, not per request
    assert tuning.current_weights(served) == {"model_score": 0.5, "recency": 0.0, "popularity": 0.0,
                                              "diversity": 0.0}


def test_freshness_boost_adds_recency_to_the_neural_score_and_serves_younger_lists(served, caplog):
    from ranker.data.db import put_setting, session_scope
    from ranker.rank import tuning
    from ranker.rank.rerank import FreshnessBoosted, RuleScorer
    from ranker.serving.service import service

    x = np.array([[0.2, 1.0, 0.5, 1.0], [0.9, 0.0, 0.5, 1.0]])
    rule = RuleScorer()
    boosted = FreshnessBoosted(rule, 2.0)
    assert boosted(x).tolist() == pytest.approx((rule(x) + 2.0 * x[:, 1]).tolist())
    assert boosted.contributions(x).sum(1).tolist() == pytest.approx(boosted(x).tolist())
    assert boosted.version == "rule+fresh2"
    for bad in (-0.5, 5.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0, 5\]"):
            tuning.save_freshness_boost(served, bad)

    with served.connect() as conn:
        users = conn.execute(select(User.id).join(Interaction, Interaction.user_id == User.id)
                             .where(User.role == "developer").group_by(User.id).order_by(User.id).limit(12)
                             ).scalars().all()

    def mean_recency() -> float:
        values = [it.features["recency"] for u in users
                for it in recommend(u, "developer-startup", 10, engine=served, arm="treatment", log=False).items]
        return float(np.mean(values))

    plain = mean_recency()
    tuning.save_freshness_boost(served, 5.0)
    assert service(served).scorer()[0].version == "v1+fresh5"
    assert mean_recency() > plain  # younger lists

    with session_scope(served) as s:  # a hand-edited, invalid setting is ignored, not fatal
        put_setting(s, keys.FRESHNESS_BOOST, "lots")
    caplog.set_level(logging.WARNING)
    rerank._warned.clear()
    assert service(served).scorer()[0].version == "v1"
    assert tuning.freshness_boost(served) == 0.0  # the Rule weights page reads it the same way
    assert "ignoring the saved freshness boost" in caplog.text


def test_under_a_do_no_harm_hold_the_treatment_arm_serves_the_base_order_and_says_why(served):
    from ranker import keys
    from ranker.data.db import put_setting, session_scope
    from ranker.serving.service import _SERVICES, recommend
    from ranker.serving.views import recently_active_user

    user_id, flow = recently_active_user(served)
    before = recommend(user_id, flow, engine=served, arm="treatment", log=False)
    reason = "serving the base order: v1 is significantly worse than the base order on the holdout: ..."
    with session_scope(served) as s:
        put_setting(s, keys.BASE_ORDER_HOLD, {"reason": reason})
    _SERVICES.clear()
    treated = recommend(user_id, flow, engine=served, arm="treatment", log=False)
    control = recommend(user_id, flow, engine=served, arm="control", log=False)
    assert before.model_version == "v1" and before.item_ids != control.item_ids  # v1 reranks this list
    assert treated.model_version == "base" and treated.fallback_reason == reason
    assert treated.item_ids == control.item_ids
