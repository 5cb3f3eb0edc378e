"""Training rows are computed as serving computes them (issue: train/serve skew).

- The demo world logs its legacy lists, so the feedback dataset rebuilds the real lists.
- model_score is scaled over the request's candidates, in both arms and in training.
- model_score comes from the base model as it would have served then; rows serving could not
  have produced (items unknown to that fit, pairs the user had already engaged with) are absent.
- One label definition for every source.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select

from ranker import config
from ranker.data.schema import Impression, Interaction, Item, ServedList
from ranker.rank import features as F
from ranker.rank.dataset import DatasetConfig, build_dataset
from tests.test_serve import engaged_developer


@pytest.fixture(scope="module")
def feedback_rows(small_world, tmp_path_factory):
    """The feedback dataset of a copy of the small world (popularity as the base model: fast)."""
    import shutil

    from ranker.data.db import make_engine

    folder = tmp_path_factory.mktemp("parity")
    shutil.copy(small_world, folder / "world.db")
    engine = make_engine(f"sqlite:///{folder / 'world.db'}")
    cfg = DatasetConfig(output=folder / "train.csv", base_model="popularity")
    summary = build_dataset(engine, cfg)
    yield pd.read_csv(cfg.output), cfg, summary
    engine.dispose()


def test_the_demo_world_logs_its_legacy_lists_with_their_candidates(small_world_engine):
    with small_world_engine.connect() as conn:
        lists = conn.execute(select(ServedList.request_id, ServedList.k, ServedList.context)
                             .where(ServedList.source == config.LEGACY).limit(50)).all()
        shown = dict(conn.execute(select(Impression.request_id, func.count()).where(
            Impression.request_id.in_([r for r, _, _ in lists])).group_by(Impression.request_id)).all())
    assert len(lists) == 50
    for request_id, k, context in lists:
        assert shown[request_id] == k == 10
        assert k < len(context["candidates"]) <= config.FETCH_MULTIPLIER * k  # fewer when few items exist yet


def test_feedback_rows_come_from_the_logged_lists(feedback_rows):
    rows, _, _ = feedback_rows
    assert rows["group_id"].str.startswith(f"{config.LEGACY}-").all()
    m = rows["model_score"]
    # Scaled over the 2k candidates, few rows sit at exactly 0 or 1 (over the views alone: about 2/3).
    assert ((m == 0) | (m == 1)).mean() < 0.35


def test_no_row_is_one_serving_could_not_have_produced(feedback_rows, small_world_engine):
    rows, cfg, summary = feedback_rows
    with small_world_engine.connect() as conn:
        created = dict(conn.execute(select(Item.id, Item.created_at)).all())
        engaged = conn.execute(select(Interaction.user_id, Interaction.item_id, func.min(Interaction.created_at))
                               .where(Interaction.kind.in_(config.ENGAGED_KINDS))
                               .group_by(Interaction.user_id, Interaction.item_id)).all()
    first_engaged = {(u, i): at for u, i, at in engaged}
    start, step = datetime.fromisoformat(summary.window_start), timedelta(days=cfg.refit_days)
    for user_id, item_id, event_time in rows[["user_id", "item_id", "event_time"]].itertuples(index=False):
        when = datetime.fromisoformat(event_time)
        cutoff = start + int((when - start) / step) * step  # the fit that served this list
        assert created[item_id] <= cutoff, f"item {item_id} did not exist for the base model at {cutoff}"
        engaged_at = first_engaged.get((user_id, item_id))
        assert engaged_at is None or engaged_at >= cutoff, f"user {user_id} had engaged with {item_id}"


def test_both_arms_scale_model_score_over_the_same_candidates(served):
    from ranker.serving.service import service

    svc = service(served)
    uid = engaged_developer(served)
    control = svc.recommend(uid, "developer-startup", 5, arm="control")
    treatment = svc.recommend(uid, "developer-startup", 5, arm="treatment")
    scores = [i.features["model_score"] for i in control.items]
    # The base order's 5th of 10 candidates is not the lowest: scaled over 10, it is above 0.
    assert scores[0] == 1.0 and min(scores) > 0.0
    same = {i.item_id: i.features["model_score"] for i in treatment.items}
    for item in control.items:
        if item.item_id in same:
            assert item.features["model_score"] == pytest.approx(same[item.item_id])


def test_one_label_definition_for_every_source():
    assert F.label({"view"}) == 0
    assert F.label({"view", "click"}) == 1
    assert F.label({"view", "like"}) == 1
    assert F.label(set()) is None
    assert set(F.LABEL_POSITIVE_KINDS) == set(config.ENGAGED_KINDS)


def test_the_impressions_source_reads_only_lists_the_ranker_served(served, isolated_dirs):
    from ranker.serving.service import recommend

    uid = engaged_developer(served)
    for _ in range(3):
        recommend(uid, "trending", 5, engine=served)
    with pytest.raises(ValueError, match="ranker simulate"):  # legacy and trending lists only: nothing to read
        build_dataset(served, DatasetConfig(output=isolated_dirs["data"] / "i.csv", source="impressions"))
