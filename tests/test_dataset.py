"""The dataset builder: no label leak, point-in-time features, both sources, bad input."""

from __future__ import annotations

import json
import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from ranker import config
from ranker.rank.dataset import DatasetConfig, build_dataset
from ranker.rank.features import feature_columns
from ranker.rank.metrics import auc
from ranker.rank.train import Dataset, TrainConfig, load_dataset, train


@pytest.fixture(scope="module")
def frame(trained_world) -> pd.DataFrame:
    return pd.read_csv(trained_world["data"] / "ranker_train.csv")


def test_dataset_has_the_guides_columns_and_both_labels(frame):
    assert list(frame.columns[:7]) == ["user_id", "item_id", *feature_columns(), "label"]
    assert set(frame["label"]) == {0, 1}
    assert frame[feature_columns()].to_numpy().min() >= 0 and frame[feature_columns()].to_numpy().max() <= 1
    # about neg_ratio=2 negatives per positive, never more
    per_group = frame.groupby("group_id")["label"].agg(["sum", "count"])
    assert ((per_group["count"] - per_group["sum"]) <= np.ceil(2 * per_group["sum"])).all()


def test_no_single_feature_separates_the_labels(frame):
    for col in feature_columns():
        a = auc(frame["label"].to_numpy(), frame[col].to_numpy())
        assert 0.05 < a < 0.95, f"{col} separates the labels (AUC {a:.3f}): a leak"


def test_rows_carry_the_position_their_item_was_shown_at(frame):
    """Lists logged by serving and view sessions alike: 0-based positions, distinct within a list."""
    assert (frame["position"] >= 0).all()
    assert not frame.duplicated(["group_id", "position"]).any()


def test_model_score_is_a_base_score_not_the_interaction_weight(frame):
    pos = frame[frame.label == 1]["model_score"]
    neg = frame[frame.label == 0]["model_score"]
    assert neg.max() > 0.5 and pos.min() < 0.5  # the guide's leak would give neg == 0, pos > 0


def test_shuffled_labels_teach_nothing_that_real_labels_do(trained_world):
    """Nothing reaches the model but the labels: trained on shuffled labels, it stays far below the
    model trained on the real ones. (Its AUC need not be 0.5: the features carry signal, so even an
    untrained net ranks validation rows better or worse than chance.)"""
    data = load_dataset(trained_world["data"] / "ranker_train.csv", min_positives=1)
    val = load_dataset(trained_world["data"] / "ranker_val.csv", min_positives=1)
    shuffled = []
    for seed in range(3):
        y = data.y.copy()
        np.random.default_rng(seed).shuffle(y)
        cfg = TrainConfig(epochs=10, seed=seed)
        fake = train(Dataset(data.x, y, data.groups, data.user_ids, data.item_ids), cfg, val=val)
        real = train(data, cfg, val=val)
        assert fake.metrics["model"]["auc"] < real.metrics["model"]["auc"] - 0.05
        shuffled.append(fake.metrics["model"]["auc"])
    assert abs(np.mean(shuffled) - 0.5) < 0.15


def test_popularity_is_taken_as_of_the_event_over_organic_interactions(trained_world, frame, small_world_engine):
    row = frame.iloc[len(frame) // 2]
    at = datetime.fromisoformat(row["event_time"])
    with small_world_engine.connect() as conn:
        views, other = conn.execute(text(
            "SELECT sum(kind = 'view'), sum(kind != 'view') FROM interactions "
            "WHERE item_id = :i AND created_at < :t AND origin = 'organic'"), {"i": int(row["item_id"]), "t": at}).one()
        max_views = conn.execute(text("SELECT value FROM settings WHERE key='popularity_max_views'")).scalar()
    expected = math.log((views or 0) + 3 * (other or 0) + 1) / math.log(json.loads(max_views)["v"])
    # event_time is rounded to the second in the CSV; counts come from the exact moment
    assert row["popularity_score"] == pytest.approx(min(expected, 1.0), abs=0.02)


def test_window_without_feedback_is_refused(world_copy, isolated_dirs):
    with world_copy.begin() as conn:
        conn.execute(text("DELETE FROM interactions WHERE kind IN ('click','like','favorite','apply','interest') "
                          "AND created_at >= '2025-12-01'"))
    cfg = DatasetConfig(output=isolated_dirs["data"] / "d.csv", window_days=30)
    with pytest.raises(ValueError, match="no engagement"):
        build_dataset(world_copy, cfg)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="neg-ratio"):
        DatasetConfig(output=tmp_path / "x.csv", neg_ratio=0)
    with pytest.raises(ValueError, match="source"):
        DatasetConfig(output=tmp_path / "x.csv", source="clicks")


def test_impressions_source_uses_features_as_logged(served, isolated_dirs):
    from ranker.sim.simulate import simulate

    simulate(served, days=1, requests_per_day=120, seed=3, refit_base=False)
    out = config.DATA_DIR / "imp.csv"
    summary = build_dataset(served, DatasetConfig(output=out, source="impressions"))
    df = pd.read_csv(out)
    assert summary.rows == len(df) and summary.positives == int(df.label.sum()) > 0
    with served.connect() as conn:
        rid, item = df.iloc[0][["group_id", "item_id"]]
        logged = conn.execute(text("SELECT features FROM impressions WHERE request_id = :r AND item_id = :i"),
                              {"r": rid, "i": int(item)}).scalar_one()
        shown_at = dict(conn.execute(text("SELECT request_id || ':' || item_id, position FROM impressions")).all())
    logged = json.loads(logged) if isinstance(logged, str) else logged
    assert df.iloc[0]["recency_score"] == pytest.approx(logged["recency"], abs=1e-6)
    # every row says where its item was shown, for position-bias correction
    assert [shown_at[f"{r}:{i}"] for r, i in zip(df["group_id"], df["item_id"])] == df["position"].tolist()
    assert df["position"].nunique() > 1


def test_empty_impressions_say_what_to_run(world_copy, isolated_dirs):
    with pytest.raises(ValueError, match="ranker simulate"):
        build_dataset(world_copy, DatasetConfig(output=isolated_dirs["data"] / "x.csv", source="impressions"))


def test_the_base_schedule_fits_each_period_once_when_lists_come_out_of_time_order(small_world_engine, monkeypatch):
    """View sessions are read user by user, so their times jump back and forth; each 7-day
    cutoff must still be fitted once, not once per jump."""
    from datetime import timedelta

    from ranker.rank import dataset

    fits: list[datetime] = []
    real_fit = dataset._fit_base

    def counted(engine, base_model, cutoff, progress):
        fits.append(cutoff)
        return real_fit(engine, base_model, cutoff, progress)

    monkeypatch.setattr(dataset, "_fit_base", counted)
    with small_world_engine.connect() as conn:
        last = pd.Timestamp(conn.execute(text("SELECT max(created_at) FROM interactions")).scalar()).to_pydatetime()
    start = last - timedelta(days=21)
    schedule = dataset._BaseSchedule(small_world_engine, "popularity", 7, start, None)
    jumps = [start + timedelta(days=d) for d in (1, 15, 2, 9, 16, 3, 10, 20)]
    models = [schedule.at(when) for when in jumps]
    assert sorted(fits) == [start, start + timedelta(days=7), start + timedelta(days=14)]
    assert models[0] is models[2] is models[5] and models[1] is models[4] and models[3] is models[6]
