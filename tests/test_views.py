"""ranker.serving.views: what the dashboard's previews show, checked against the tables themselves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from ranker import config, keys
from ranker.base.store import models_dir
from ranker.flows import valid_flows
from ranker.serving import views
from ranker.serving.service import recommend


def table(engine, sql: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(sql), conn)


def an_engaged_developer(engine) -> int:
    """The developer with the most engaged interactions (lowest id on a tie)."""
    return int(table(engine, "SELECT i.user_id FROM interactions i JOIN users u ON u.id = i.user_id "
                             "WHERE u.role = 'developer' AND i.kind != 'view' GROUP BY i.user_id "
                             "ORDER BY COUNT(*) DESC, i.user_id LIMIT 1")["user_id"][0])


# --- Users and their context -----------------------------------------------------------


def test_the_example_user_is_the_most_engaged_in_the_latest_engaged_interactions(small_world_engine):
    inter = table(small_world_engine, "SELECT i.id, i.user_id, i.kind, i.created_at, u.role FROM interactions i "
                                      "JOIN users u ON u.id = i.user_id")
    engaged = inter[inter["kind"].isin(config.ENGAGED_KINDS)]
    latest = engaged.sort_values(["created_at", "id"], ascending=False).head(views.EXAMPLE_WINDOW)
    counts = latest["user_id"].value_counts()
    best = min(counts.index[counts == counts.max()])
    role = inter.loc[inter["user_id"] == best, "role"].iloc[0]

    assert views.recently_active_user(small_world_engine) == (best, valid_flows(role)[0])


def test_without_engagement_there_is_no_example_user(tmp_path):
    from ranker.data import db

    engine = db.ensure_schema(db.make_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    assert views.recently_active_user(engine) is None
    assert views.flows_with_users(engine) == []


def test_flows_with_users_are_those_whose_role_has_users(small_world_engine):
    roles = set(table(small_world_engine, "SELECT DISTINCT role FROM users")["role"])
    expected = [f for f, (role, _) in config.FLOWS.items() if role is None or role in roles]
    assert views.flows_with_users(small_world_engine) == expected
    assert "developer-startup" in expected


def test_users_for_a_flow_are_every_user_of_its_role_by_id(small_world_engine):
    investors = table(small_world_engine, "SELECT id, name, category, field FROM users WHERE role = 'investor' "
                                          "ORDER BY id")
    shown = views.users_for_flow(small_world_engine, "investor-startup")
    assert shown.columns.tolist() == ["id", "name", "category", "field"]
    pd.testing.assert_frame_equal(shown, investors)


def test_recent_interactions_are_the_users_latest_first_with_the_items(small_world_engine):
    user = an_engaged_developer(small_world_engine)
    expected = table(small_world_engine, f"SELECT i.created_at, i.kind, it.name FROM interactions i JOIN items it "
                                         f"ON it.id = i.item_id WHERE i.user_id = {user} ORDER BY i.created_at DESC")

    shown = views.recent_interactions(small_world_engine, user, limit=5)

    assert shown.columns.tolist() == ["created_at", "kind", "name", "category", "field", "type"]
    assert len(expected) > 5 and len(shown) == 5
    assert shown["kind"].tolist() == expected["kind"].head(5).tolist()
    assert shown["name"].tolist() == expected["name"].head(5).tolist()
    assert shown["created_at"].is_monotonic_decreasing


def test_a_user_without_interactions_has_an_empty_table_with_the_same_columns(small_world_engine):
    shown = views.recent_interactions(small_world_engine, 10**9)
    assert shown.empty and shown.columns.tolist() == ["created_at", "kind", "name", "category", "field", "type"]


# --- Served lists ----------------------------------------------------------------------


def test_item_attributes_are_the_catalogue_rows_of_the_ids_that_exist(small_world_engine):
    items = table(small_world_engine, "SELECT id, name, category, field, type FROM items ORDER BY id LIMIT 3")
    ids = items["id"].tolist()

    found = views.item_attributes(small_world_engine, [*ids, 10**9])

    assert sorted(found) == ids
    for row in items.itertuples():
        assert {k: found[row.id][k] for k in ("name", "category", "field", "type")} == \
            {"name": row.name, "category": row.category, "field": row.field, "type": row.type}
    assert views.item_attributes(small_world_engine, []) == {}


@pytest.mark.parametrize("before, after, expected", [
    ([1, 2, 3], [1, 2, 3], ["=", "=", "="]),
    ([1, 2, 3], [3, 1, 2], ["↑2", "↓1", "↓1"]),
    ([1, 2], [2, 9], ["↑1", "new"]),
    ([], [4], ["new"]),
])
def test_moves_say_how_far_each_item_moved(before, after, expected):
    assert views.moves(before, after) == expected


def test_a_reranked_list_frame_joins_items_moves_scores_and_features(served):
    user = an_engaged_developer(served)
    base = recommend(user, "developer-startup", 10, engine=served, arm="control", log=False)
    ranked = recommend(user, "developer-startup", 10, engine=served, arm="treatment", log=False)
    names = table(served, "SELECT id, name FROM items").set_index("id")["name"]

    frame = views.list_frame(served, ranked, base)

    assert frame["position"].tolist() == list(range(1, 11))
    assert frame["item_id"].tolist() == ranked.item_ids
    assert frame["name"].tolist() == names.loc[ranked.item_ids].tolist()
    assert frame["move"].tolist() == views.moves(base.item_ids, ranked.item_ids)
    assert frame["score"].tolist() == pytest.approx([i.score for i in ranked.items])
    for feature in ranked.items[0].features:
        assert frame[feature].tolist() == pytest.approx([i.features[feature] for i in ranked.items])
        assert frame[f"contribution_{feature}"].tolist() == \
            pytest.approx([i.contributions[feature] for i in ranked.items])


def test_a_base_list_frame_has_no_moves_and_no_reranker_score(served):
    base = recommend(an_engaged_developer(served), "developer-startup", 5, engine=served, arm="control", log=False)
    frame = views.list_frame(served, base)
    assert "move" not in frame.columns
    assert frame["base_score"].tolist() == pytest.approx([i.base_score for i in base.items])
    assert frame["score"].isna().all()


def test_a_comparison_frame_pads_the_shorter_list(served):
    user = an_engaged_developer(served)
    before = recommend(user, "developer-startup", 6, engine=served, arm="control", log=False)
    after = recommend(user, "developer-startup", 4, engine=served, arm="treatment", log=False)

    frame = views.comparison_frame(served, before, after)

    assert frame.columns.tolist() == ["position", "before_id", "before_name", "after_id", "after_name", "move"]
    assert frame["position"].tolist() == [1, 2, 3, 4, 5, 6]
    assert frame["before_id"].tolist() == before.item_ids
    assert frame["after_id"].tolist()[:4] == after.item_ids and frame["after_id"].isna().tolist()[4:] == [True] * 2
    assert frame["move"].tolist()[:4] == views.moves(before.item_ids, after.item_ids)


def test_list_quality_equals_the_metrics_logged_when_the_list_was_served(served):
    rec = recommend(an_engaged_developer(served), "developer-startup", 10, engine=served, arm="treatment")
    logged = table(served, f"SELECT ild, mean_age_days FROM served_lists WHERE request_id = '{rec.request_id}'")

    quality = views.list_quality(served, rec)

    assert quality[keys.ILD] == pytest.approx(logged["ild"][0])
    assert quality[keys.MEAN_AGE_DAYS] == pytest.approx(logged["mean_age_days"][0])
    assert 0.0 < quality[keys.ILD] <= 1.0


def test_an_empty_list_has_no_quality(served):
    rec = recommend(an_engaged_developer(served), "developer-startup", 3, engine=served, log=False)
    rec.items = []
    assert all(np.isnan(v) for v in views.list_quality(served, rec).values())


# --- Runs and warm-up --------------------------------------------------------------------


def test_latest_runs_are_the_saved_dataset_and_training_summaries(served, small_world_engine):
    latest = views.latest_runs(served)
    rows = len(pd.read_csv(config.DATA_DIR / "ranker_train.csv"))
    assert latest.dataset["rows"] == rows and latest.dataset["path"].endswith("ranker_train.csv")
    assert latest.training["version"] == "v1"
    assert views.latest_runs(small_world_engine) == views.LatestRuns(None, None)


def test_warm_up_serves_the_example_user_with_the_active_model_and_logs_nothing(served):
    impressions = table(served, "SELECT COUNT(*) AS n FROM impressions")["n"][0]
    assert views.base_models_ready(served)
    assert views.warm_up(served) == "v1"
    assert table(served, "SELECT COUNT(*) AS n FROM impressions")["n"][0] == impressions


def test_warm_up_never_fits_missing_base_models(world_copy, isolated_dirs):
    assert not views.base_models_ready(world_copy)
    assert views.warm_up(world_copy) is None
    assert not models_dir().exists() or not any(models_dir().iterdir())
