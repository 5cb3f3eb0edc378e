"""One suite for every base model, after implicit's ``recommender_base_test`` mixin.

Each model (popularity, ALS, two-tower, ensemble) goes through the same checks on
the small demo world: shapes, determinism under a seed, exclusion of engaged
items, unknown users and items, and a save/load round trip. Then the flow layer
(routing, errors, fallback, the serving store) and the offline evaluation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, insert

from ranker import config, keys
from ranker.base import (
    MODEL_NAMES,
    BaseRecommender,
    NotFittedError,
    TrainingData,
    UnknownUserError,
    make_base_model,
    store,
)
from ranker.base.store import fit_models
from ranker.data.clock import serve_now
from ranker.data.db import make_engine, put_setting, session_scope
from ranker.data.schema import Interaction, User
from ranker.evaluation.evaluate_base import BaseEvaluation, evaluate_base, score_models
from ranker.flows import FlowError, valid_flows
from ranker.serving.candidates import candidates

UNKNOWN_USER = 10**9


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(small_world: Path) -> Engine:
    engine = make_engine(f"sqlite:///{small_world}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def data(engine: Engine) -> TrainingData:
    with session_scope(engine) as s:
        clock = serve_now(s)
    return TrainingData.from_engine(engine, clock)


@pytest.fixture(scope="module")
def models(data: TrainingData) -> dict[str, BaseRecommender]:
    return fit_models(data, MODEL_NAMES, seed=7)


@pytest.fixture(params=MODEL_NAMES)
def model(request: pytest.FixtureRequest, models: dict[str, BaseRecommender]) -> BaseRecommender:
    return models[request.param]


def busiest_user(data: TrainingData, role: str = "developer") -> int:
    """The user of ``role`` with the most engaged items."""
    eng = data.engaged.merge(data.users[["id", "role"]], left_on="user_id", right_on="id")
    counts = eng[eng["role"] == role].groupby("user_id")["item_id"].nunique()
    return int(counts.idxmax())


def startup_ids(data: TrainingData) -> np.ndarray:
    return data.items.loc[data.items["item_type"] == "startup", "id"].to_numpy()


# --- the shared suite: every model ------------------------------------------------------


def test_recommend_returns_n_distinct_items_of_the_type_best_first(model, data):
    uid = busiest_user(data)
    ids, scores = model.recommend(uid, 15, item_type="startup")
    assert ids.shape == scores.shape == (15,)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert len(set(ids.tolist())) == 15
    assert np.isin(ids, startup_ids(data)).all()
    assert np.all(np.diff(scores) <= 0)
    assert np.isfinite(scores).all()


def test_recommend_scores_match_score_over_the_pool(model, data):
    uid = busiest_user(data)
    pool = startup_ids(data)
    ids, scores = model.recommend(uid, 10, item_type="startup")
    all_scores = model.score(uid, pool)
    assert all_scores.shape == (len(pool),)
    lookup = dict(zip(pool.tolist(), all_scores.tolist()))
    np.testing.assert_allclose(scores, [lookup[i] for i in ids.tolist()], rtol=1e-6)
    # Nothing left out scores above the last one returned, except the user's engaged items.
    rest = ~np.isin(pool, np.r_[ids, model.engaged_item_ids(uid)])
    assert all_scores[rest].max() <= scores[-1]


def test_two_fits_with_one_seed_give_identical_scores(model, data):
    name = model.name
    again = fit_models(data, [name], seed=7)[name]
    uid = busiest_user(data)
    pool = startup_ids(data)
    np.testing.assert_array_equal(model.score(uid, pool), again.score(uid, pool))
    assert again.version_ == model.version_


def test_engaged_items_are_excluded_but_viewed_ones_are_not(model, data):
    uid = busiest_user(data)
    engaged = model.engaged_item_ids(uid)
    assert len(engaged) >= 3
    ids, _ = model.recommend(uid, len(data.items), item_type=None)
    assert not np.isin(ids, engaged).any()
    assert len(ids) == len(data.items) - len(engaged)
    # Views alone are not engagement: a viewed-not-engaged item stays recommendable.
    mine = data.interactions[data.interactions["user_id"] == uid]
    viewed_only = np.setdiff1d(mine.loc[mine["kind"] == "view", "item_id"].to_numpy(), engaged)
    assert len(viewed_only) and np.isin(viewed_only, ids).all()


def test_exclude_removes_more_items(model, data):
    uid = busiest_user(data)
    ids, _ = model.recommend(uid, 5, item_type="startup")
    after, _ = model.recommend(uid, 5, item_type="startup", exclude=ids[:2])
    assert not np.isin(ids[:2], after).any()
    assert after[:3].tolist() == ids[2:].tolist()


def test_as_of_keeps_only_items_created_by_then(model, data):
    uid = busiest_user(data)
    as_of = data.cutoff - timedelta(days=60)
    ids, _ = model.recommend(uid, 500, item_type="startup", as_of=as_of)
    created = data.items.set_index("id").loc[ids, "created_at"]
    assert 0 < len(ids) < len(startup_ids(data))
    assert (created <= pd.Timestamp(as_of)).all()


def test_unknown_user_behaves_as_documented(model, data):
    assert model.knows_user(busiest_user(data))
    pool = startup_ids(data)
    if model.personalised:
        assert not model.knows_user(UNKNOWN_USER)
        with pytest.raises(UnknownUserError, match="trending"):
            model.score(UNKNOWN_USER, pool)
        with pytest.raises(UnknownUserError):
            model.recommend(UNKNOWN_USER, 5)
    else:  # popularity: the same trending list for everyone
        assert model.knows_user(UNKNOWN_USER)
        ids, _ = model.recommend(UNKNOWN_USER, 5, item_type="startup")
        assert ids.tolist() == model.trending("startup", 5)[0].tolist()


def test_item_without_interactions_is_scorable_and_outside_ids_score_zero(model, data):
    # A new startup nobody has seen yet, present in the catalogue at fit time.
    new_id = int(data.items["id"].max()) + 1
    row = data.items[data.items["item_type"] == "startup"].iloc[[0]].assign(id=new_id)
    items = pd.concat([data.items, row], ignore_index=True)
    fresh = make_base_model(model.name).fit(
        TrainingData.from_frames(data.interactions, items, data.users, data.cutoff))
    uid = busiest_user(data)
    score = fresh.score(uid, [new_id, new_id + 1])
    assert np.isfinite(score).all()
    assert score[1] == 0.0  # not in the catalogue
    ids, _ = fresh.recommend(uid, len(items), item_type="startup")
    assert new_id in ids


def test_an_item_type_nobody_engaged_with_still_scores(model, data):
    startups = data.items.loc[data.items["item_type"] == "startup", "id"]
    only_startups = data.interactions[data.interactions["item_id"].isin(startups)]
    fitted = make_base_model(model.name).fit(
        TrainingData.from_frames(only_startups, data.items, data.users, data.cutoff))
    ids, scores = fitted.recommend(busiest_user(data), 5, item_type="investor")
    assert len(ids) == 5 and np.isfinite(scores).all()


def test_save_load_round_trip_keeps_scores_and_metadata(model, data, tmp_path):
    path = model.save(tmp_path / f"{model.name}.npz")
    loaded = BaseRecommender.load(path)
    assert type(loaded) is type(model)
    assert loaded.version_ == model.version_ and loaded.cutoff_ == model.cutoff_
    meta = BaseRecommender.read_metadata(path)
    assert meta["cutoff"] == data.cutoff.isoformat() and meta["version"] == model.version_
    uid = busiest_user(data)
    pool = startup_ids(data)
    np.testing.assert_allclose(loaded.score(uid, pool), model.score(uid, pool), rtol=1e-6, atol=1e-7)
    assert loaded.recommend(uid, 10)[0].tolist() == model.recommend(uid, 10)[0].tolist()
    assert not list(tmp_path.glob("*.tmp"))  # written via a temporary file, then replaced


# --- model-specific and construction checks --------------------------------------------


def test_make_base_model_refuses_unknown_names_listing_valid_ones():
    with pytest.raises(ValueError, match="popularity, als, two-tower, ensemble"):
        make_base_model("svd")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fit_on_an_empty_history_refuses_and_says_what_is_needed(name, engine):
    empty = TrainingData.from_engine(engine, datetime(2000, 1, 1))
    with pytest.raises(ValueError, match="(no engaged interactions|no items).*ranker demo init"):
        make_base_model(name).fit(empty)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unfitted_model_says_to_fit_first(name):
    with pytest.raises(NotFittedError, match="ranker base fit"):
        make_base_model(name).recommend(1, 5)


# --- scikit-learn estimator conventions ------------------------------------------------------


def test_sklearn_clone_gives_an_unfitted_copy_with_the_same_params(model):
    from sklearn.base import clone

    copy = clone(model)
    assert copy is not model and type(copy) is type(model)
    assert copy.get_params() == model.get_params() and copy.get_params(deep=False) == model.get_params()
    assert model.is_fitted and not copy.is_fitted
    with pytest.raises(NotFittedError):
        copy.recommend(int(model.user_ids_[0]), 5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_set_params_changes_get_params_and_refuses_unknown_names(name):
    m = make_base_model(name)
    first = next(iter(m.get_params()))
    value = m.get_params()[first]
    assert m.set_params(**{first: value}) is m and m.get_params()[first] == value
    with pytest.raises(ValueError, match="no parameter 'colour'.*valid"):
        m.set_params(colour="red")


def test_load_refuses_a_file_that_is_not_a_base_model(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a saved base model"):
        BaseRecommender.load(path)


def test_popularity_ranks_recent_engagement_above_old(data):
    pop = make_base_model("popularity").fit(data)
    recent = data.engaged[data.engaged["created_at"] >= pd.Timestamp(data.cutoff) - pd.Timedelta(days=14)]
    top_recent = recent.groupby("item_id").size().idxmax()
    ids, _ = pop.trending(None, 20)
    assert int(top_recent) in ids.tolist()


def test_ensemble_scores_are_a_weighted_blend_in_unit_range(models, data):
    ens = models["ensemble"]
    uid = busiest_user(data)
    pool = startup_ids(data)
    scores = ens.score(uid, pool)
    assert scores.min() >= 0.0 and scores.max() <= sum(ens.weights_.values()) + 1e-6
    with pytest.raises(ValueError, match="non-negative"):
        make_base_model("ensemble", weights={"als": -1.0}).fit(data)


# --- flows ---------------------------------------------------------------------------


def test_valid_flows_per_role():
    assert valid_flows("developer") == ["developer-startup", "user-item"]
    assert valid_flows("founder") == ["founder-developer", "founder-investor", "user-item"]
    assert valid_flows("user") == ["user-item"]


def user_of_role(engine: Engine, role: str) -> int:
    with engine.connect() as conn:
        return conn.execute(User.__table__.select().where(User.role == role).limit(1)).first().id


def test_role_mismatch_is_refused_listing_the_users_flows(engine, models):
    investor = user_of_role(engine, "investor")
    with pytest.raises(FlowError, match="investor-startup, user-item") as err:
        candidates(investor, "founder-developer", 10, engine=engine, model=models["ensemble"])
    assert isinstance(err.value, ValueError) and "founder" in str(err.value)


def test_unknown_flow_and_unknown_user_are_refused(engine, models):
    dev = user_of_role(engine, "developer")
    with pytest.raises(FlowError, match="valid flows for user .*developer-startup"):
        candidates(dev, "developer-investor", 10, engine=engine, model=models["ensemble"])
    with pytest.raises(FlowError, match="unknown user"):
        candidates(UNKNOWN_USER, "developer-startup", 10, engine=engine, model=models["ensemble"])


def test_candidates_are_of_the_flows_type_and_skip_engagement_logged_after_the_fit(world_copy, data, models):
    ens = models["ensemble"]
    uid = busiest_user(data, "founder")
    first = candidates(uid, "founder-investor", 10, engine=world_copy, model=ens)
    assert not first.fallback and first.source == "ensemble" and len(first) == 10
    investors = data.items.loc[data.items["item_type"] == "investor", "id"]
    assert np.isin(first.item_ids, investors).all()
    # A click logged after the model's cutoff is excluded on the next request.
    with session_scope(world_copy) as s:
        s.execute(insert(Interaction), [{"user_id": uid, "item_id": int(first.item_ids[0]), "kind": "click",
                                         "created_at": data.cutoff + timedelta(hours=1)}])
    later = candidates(uid, "founder-investor", 10, engine=world_copy, model=ens,
                       as_of=data.cutoff + timedelta(hours=2))
    assert first.item_ids[0] not in later.item_ids
    assert later.item_ids[:9].tolist() == first.item_ids[1:].tolist()


def test_user_without_history_falls_back_to_trending_flagged(world_copy, models):
    with session_scope(world_copy) as s:
        new_id = s.execute(insert(User).returning(User.id), [{
            "name": "newcomer", "role": "investor", "category": "ai", "field": "seed",
            "created_at": datetime(2025, 12, 31)}]).scalar_one()
    got = candidates(new_id, "investor-startup", 8, engine=world_copy, model=models["ensemble"])
    assert got.fallback and got.source == "popularity"
    assert got.item_ids.tolist() == models["popularity"].trending("startup", 8)[0].tolist()


def test_fresh_database_fits_models_once_on_first_request_then_reuses_them(world_copy, isolated_dirs, data):
    uid = busiest_user(data)
    first = candidates(uid, "developer-startup", 5, engine=world_copy)
    saved = sorted(p.name for p in (isolated_dirs["models"] / "base").glob("*.npz"))
    assert saved == sorted(f"{n}.npz" for n in MODEL_NAMES)
    assert first.source == "ensemble" and not first.fallback
    mtimes = {p: p.stat().st_mtime_ns for p in (isolated_dirs["models"] / "base").glob("*.npz")}
    again = candidates(uid, "developer-startup", 5, engine=world_copy)
    assert again.item_ids.tolist() == first.item_ids.tolist()
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # no refit


def test_store_reloads_changed_files_keeps_good_models_and_skips_other_data(
        world_copy, isolated_dirs, data, models):
    folder = isolated_dirs["models"] / "base"
    stamp = store.database_fingerprint(world_copy)
    models["popularity"].save(folder / "popularity.npz", extra_meta=stamp)
    assert store.load_base_models(world_copy)["popularity"].version_ == models["popularity"].version_
    other = make_base_model("popularity", window_days=3).fit(data)
    other.save(folder / "popularity.npz", extra_meta=stamp)
    assert store.load_base_models(world_copy)["popularity"].version_ == other.version_
    # A corrupt file never replaces the model already loaded from that name.
    (folder / "popularity.npz").write_bytes(b"not a model")
    assert store.load_base_models(world_copy)["popularity"].version_ == other.version_
    other.save(folder / "popularity.npz", extra_meta=stamp)
    # After a rebuild with another seed the saved file no longer describes this data.
    with session_scope(world_copy) as s:
        put_setting(s, keys.WORLD, {"seed": 7, "preset": "default", "scale": "small"})
    store.clear_cache()
    assert "popularity" not in store.load_base_models(world_copy)


# --- evaluation ------------------------------------------------------------------------


def test_score_models_counts_hits_by_hand():
    items = pd.DataFrame({"id": [1, 2, 3, 4], "item_type": "startup", "category": "ai", "field": "x",
                          "type": "seed", "created_at": pd.Timestamp("2025-01-01"),
                          "updated_at": pd.Timestamp("2025-01-01"), "views": 0})
    users = pd.DataFrame({"id": [10, 11], "role": "developer", "category": "ai", "field": "ml"})
    t = pd.Timestamp("2025-06-01")
    inter = pd.DataFrame({"user_id": [10, 10, 10, 11, 11], "item_id": [1, 1, 2, 1, 3],
                          "kind": pd.Categorical(["click"] * 5, categories=config.INTERACTION_KINDS),
                          "created_at": [t] * 5})
    data = TrainingData.from_frames(inter, items, users, datetime(2025, 6, 2))
    pop = make_base_model("popularity").fit(data)
    # Trending: 1 (3 clicks), then 2 and 3 (one each, by id), then 4. User 10 has seen 1, 2.
    test = pd.DataFrame({"user_id": [10, 11], "item_id": [4, 2], "flow": "developer-startup",
                         "item_type": "startup"})
    rows = {r.flow: r for r in score_models({"popularity": pop}, test, k=1, ndcg_k=2)}
    overall = rows["overall"]
    # User 10 gets [3, 4]: miss at k=1, NDCG@2 = (1/log2 3) / 1. User 11 gets [2, 4]: hit, NDCG 1.
    assert overall.recall == pytest.approx(0.5)
    assert overall.ndcg == pytest.approx((1 / np.log2(3) + 1.0) / 2)
    assert overall.n_lists == 2 and overall.n_test_items == 2


def test_evaluate_base_gives_sane_figures_per_flow(engine):
    result = evaluate_base(engine, holdout_days=14, k=20, names=["als"])
    assert isinstance(result, BaseEvaluation)
    assert result.models == ["popularity", "als"]
    flows = {r.flow for r in result.rows}
    assert {"overall", "developer-startup", "investor-startup"} <= flows
    for row in result.rows:
        assert 0.0 <= row.recall <= 1.0 and 0.0 <= row.ndcg <= 1.0 and row.n_lists > 0
    overall = result.get("popularity")
    assert overall.recall > 0.02  # trending finds something in a popularity-driven world
    assert result.cutoff == result.clock - timedelta(days=14)
    assert "Recall@20" in result.table() and "overall" in result.to_dict()["rows"][-1]["flow"]


@pytest.mark.slow
def test_every_model_beats_popularity_on_the_default_world(tmp_path):
    from ranker.sim.synth import build_world

    engine = make_engine(f"sqlite:///{tmp_path / 'default.db'}")
    build_world(engine, seed=42, scale="default")
    result = evaluate_base(engine, holdout_days=14, k=20)
    pop = result.get("popularity").recall
    for name in ("als", "two-tower", "ensemble"):
        assert result.get(name).recall > pop, result.table()
    engine.dispose()


# --- PostgreSQL ------------------------------------------------------------------------


def _drop_all(engine: Engine) -> None:
    from sqlalchemy import text

    from ranker.data.schema import Base

    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))


@pytest.mark.postgres
def test_loaders_models_and_candidates_work_on_postgres(pg_url):
    from sqlalchemy import func, select

    from ranker.data.interactions import load_interactions
    from ranker.sim.synth import build_world

    engine = make_engine(pg_url)
    _drop_all(engine)  # a clean slate in the shared test database
    try:
        build_world(engine, seed=42, scale="small")
        df = load_interactions(engine)
        with engine.connect() as conn:
            assert len(df) == conn.execute(select(func.count()).select_from(Interaction)).scalar_one()
        assert str(df["created_at"].dtype) == "datetime64[us]" and df["kind"].dtype == "category"
        with session_scope(engine) as s:
            clock = serve_now(s)
        pg_data = TrainingData.from_engine(engine, clock)
        ens = fit_models(pg_data, ["ensemble"])["ensemble"]
        uid = busiest_user(pg_data)
        got = candidates(uid, "developer-startup", 10, engine=engine, model=ens)
        assert len(got) == 10 and not got.fallback
        assert not np.isin(got.item_ids, ens.engaged_item_ids(uid)).any()
    finally:
        _drop_all(engine)
        engine.dispose()


def test_two_tower_sampled_softmax_learns_when_a_type_exceeds_the_exact_limit(data):
    """Item types above ``softmax_items`` train against ``sampled_negatives`` uniform items
    per batch (the large world's path): the loss falls and the model ranks."""
    from ranker.base.two_tower import TwoTowerRecommender

    sampled = TwoTowerRecommender(softmax_items=50, sampled_negatives=40, epochs=8).fit(data)
    assert all(np.isfinite(sampled.train_losses_)) and sampled.train_losses_[-1] < sampled.train_losses_[0]
    uid = busiest_user(data)
    ids, scores = sampled.recommend(uid, 10, item_type="startup")
    assert len(ids) == 10 and np.all(np.diff(scores) <= 0)
