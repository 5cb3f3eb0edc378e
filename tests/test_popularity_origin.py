"""The popularity feature counts organic interactions, not the outcomes of served lists.

Serving an item and logging its views (impressions' outcomes, through ``log_outcomes`` or
client feedback) must not raise its popularity; organic views must. Serving, its incremental
counts and the dataset builder's point-in-time counts agree on the new count.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import Engine, func, insert, select

from ranker.data.catalog import CountIndex, counts_as_of, load_catalog
from ranker.data.interactions import load_interactions
from ranker.data.schema import IMPRESSION, ORGANIC, Impression, Interaction, Item, User
from ranker.rank import features as F
from ranker.serving.experiments import FeedbackEvent, log_outcomes, record_feedback
from ranker.serving.retrieval import Retrieval
from ranker.sim.synth import WORLD_END

SERVED_AT = WORLD_END + timedelta(hours=1)
LATER = WORLD_END + timedelta(days=1)


def _quiet_item_and_user(engine: Engine) -> tuple[int, int]:
    """A startup without organic interactions (popularity 0, far from the clip; it may have been
    shown in legacy lists) and a founder."""
    with engine.connect() as conn:
        organic = select(Interaction.item_id).where(Interaction.origin == ORGANIC)
        item = conn.execute(select(Item.id).where(Item.item_type == "startup", Item.id.not_in(organic))
                            .order_by(Item.id).limit(1)).scalar_one()
        user = conn.execute(select(User.id).where(User.role == "founder").order_by(User.id).limit(1)).scalar_one()
    return item, user


def _serve(engine: Engine, user: int, item: int, times: int) -> list[int]:
    """Log ``times`` one-item lists showing ``item`` to ``user``; returns the impression ids."""
    rows = [{"request_id": f"t-{n}", "user_id": user, "item_id": item, "flow": "founder-startup", "arm": "treatment",
             "position": 0, "score": 1.0, "features": {}, "model_version": "rule", "served_at": SERVED_AT}
            for n in range(times)]
    with engine.begin() as conn:
        conn.execute(insert(Impression.__table__), rows)
        return list(conn.scalars(select(Impression.id).where(Impression.request_id.like("t-%"))))


def _popularity(retrieval: Retrieval, user: int, item: int, as_of: datetime) -> float:
    ctx = retrieval.context(user, retrieval.user(user), [item], [1.0], as_of)
    return float(F.popularity(ctx, np.full(1, -np.inf))[0])


def _organic_views(engine: Engine, user: int, item: int, times: int, at: datetime) -> None:
    with engine.begin() as conn:  # no origin given: the platform's own events are organic
        conn.execute(insert(Interaction.__table__), [
            {"user_id": user, "item_id": item, "kind": "view", "created_at": at + timedelta(minutes=n)}
            for n in range(times)])


def test_serving_an_item_does_not_make_it_popular_but_organic_views_do(world_copy):
    item, user = _quiet_item_and_user(world_copy)
    retrieval = Retrieval(world_copy)  # counts kept current incrementally, as in a serving process
    assert _popularity(retrieval, user, item, WORLD_END) == 0.0

    impressions = _serve(world_copy, user, item, 60)
    log_outcomes(world_copy, [(imp, "view", SERVED_AT + timedelta(seconds=1)) for imp in impressions])
    with world_copy.connect() as conn:
        written = conn.execute(select(Interaction.origin, func.count()).where(
            Interaction.item_id == item, Interaction.created_at >= WORLD_END).group_by(Interaction.origin)).all()
    assert dict(written) == {IMPRESSION: 60}  # the base models still see them
    assert _popularity(retrieval, user, item, LATER) == 0.0
    assert _popularity(Retrieval(world_copy), user, item, LATER) == 0.0  # from scratch too

    _organic_views(world_copy, user, item, 60, LATER)
    organic = _popularity(retrieval, user, item, LATER + timedelta(days=1))
    max_views = load_catalog(world_copy).max_views
    assert organic == np.clip(np.log(61) / np.log(max_views), 0, 1) and organic > 0.3
    assert _popularity(Retrieval(world_copy), user, item, LATER + timedelta(days=1)) == organic


def test_client_feedback_is_stored_as_impression_outcomes(world_copy):
    item, user = _quiet_item_and_user(world_copy)
    _serve(world_copy, user, item, 1)
    results = record_feedback(world_copy, [FeedbackEvent("t-0", item, "view", SERVED_AT),
                                           FeedbackEvent("t-0", item, "click", SERVED_AT + timedelta(seconds=3))])
    assert [r.status for r in results] == ["stored", "stored"]
    with world_copy.connect() as conn:
        origins = conn.execute(select(Interaction.origin).where(
            Interaction.item_id == item, Interaction.created_at >= WORLD_END)).scalars().all()
    assert origins == [IMPRESSION, IMPRESSION]
    views, other = counts_as_of(world_copy, load_catalog(world_copy), LATER)
    row = load_catalog(world_copy).index(np.array([item]))
    assert (views[row], other[row]) == (0.0, 0.0)


def test_organic_counts_agree_at_serving_incrementally_and_in_the_dataset_builder(world_copy):
    """Parity of the new count: SQL (serving start-up), incremental (serving) and CountIndex (training data)."""
    item, user = _quiet_item_and_user(world_copy)
    log_outcomes(world_copy, [(imp, "view", SERVED_AT) for imp in _serve(world_copy, user, item, 5)])
    _organic_views(world_copy, user, item, 3, SERVED_AT)
    catalog = load_catalog(world_copy)
    history = load_interactions(world_copy)
    index = CountIndex.from_history(history)
    retrieval = Retrieval(world_copy)
    moments = [WORLD_END - timedelta(days=45), WORLD_END - timedelta(days=1), WORLD_END, SERVED_AT
               + timedelta(seconds=90), LATER]
    for at in moments:
        sql = counts_as_of(world_copy, catalog, at)
        _, views, other = retrieval.counts(at)
        point = index.counts(catalog.ids, np.full(len(catalog), np.datetime64(at, "us")))
        for got in ((views, other), point):
            np.testing.assert_array_equal(got[0], sql[0])
            np.testing.assert_array_equal(got[1], sql[1])
    organic = (history["origin"] == ORGANIC).to_numpy()
    assert 0 < organic.sum() < len(history)  # the demo world holds both origins
    assert sql[0].sum() + sql[1].sum() == organic.sum()
    assert sql[0][catalog.index(np.array([item]))[0]] == 3.0  # the organic views, not the 5 served ones
