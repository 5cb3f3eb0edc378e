"""Cold start for view-only users: a user who has only viewed gets a list personalised from those
views (not the trending list), point in time."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select

from ranker.base import TrainingData, base
from ranker.base.store import fit_models
from ranker.data.clock import serve_now
from ranker.data.db import session_scope
from ranker.data.schema import Interaction, Item, User
from ranker.serving.candidates import candidates

FLOW = "developer-startup"


def clock(engine: Engine) -> datetime:
    with session_scope(engine) as s:
        return serve_now(s)


def new_developer(engine: Engine, name: str) -> int:
    """A developer with the same declared category and field as every other one made here."""
    with session_scope(engine) as s:
        return s.execute(insert(User).returning(User.id), [{
            "name": name, "role": "developer", "category": "ai", "field": "backend",
            "created_at": datetime(2025, 10, 1)}]).scalar_one()


def startups_of(engine: Engine, category: str | None) -> np.ndarray:
    """Startup ids of ``category`` (None: every startup), sorted."""
    stmt = select(Item.id).where(Item.item_type == "startup").order_by(Item.id)
    if category is not None:
        stmt = stmt.where(Item.category == category)
    with engine.connect() as conn:
        return np.array(conn.execute(stmt).scalars().all(), dtype=np.int64)


def view(engine: Engine, user_id: int, item_ids, at: datetime) -> None:
    with session_scope(engine) as s:
        s.execute(insert(Interaction), [{"user_id": user_id, "item_id": int(i), "kind": "view",
                                         "created_at": at + timedelta(minutes=j)} for j, i in enumerate(item_ids)])


def fit(engine: Engine, cutoff: datetime):
    return fit_models(TrainingData.from_engine(engine, cutoff), ["ensemble"], seed=7)


# --- A profile from views ---------------------------------------------------------------------


def test_a_view_only_user_gets_a_personalised_list_that_follows_their_views(world_copy):
    now = clock(world_copy)
    fintech, climate = startups_of(world_copy, "fintech"), startups_of(world_copy, "climate")
    fan, other = new_developer(world_copy, "fintech viewer"), new_developer(world_copy, "climate viewer")
    view(world_copy, fan, fintech[:10], now - timedelta(days=3))
    view(world_copy, other, climate[:10], now - timedelta(days=3))
    models = fit(world_copy, now)

    assert all(m.knows_user(fan) for m in models.values())  # every member of the ensemble, one user set
    got = candidates(fan, FLOW, 20, engine=world_copy, model=models["ensemble"], as_of=now)
    assert not got.fallback and got.source == "ensemble" and len(got) == 20
    trending = models["popularity"].recommend(fan, 20, item_type="startup", as_of=now)[0]
    assert got.item_ids.tolist() != trending.tolist()
    # Same declared attributes, different views: each user's scores lean towards what they viewed,
    # beyond the items viewed themselves.
    theirs = candidates(other, FLOW, 20, engine=world_copy, model=models["ensemble"], as_of=now)
    assert got.item_ids.tolist() != theirs.item_ids.tolist()
    pool = startups_of(world_copy, None)
    unseen_fintech, unseen_climate = np.isin(pool, fintech[10:]), np.isin(pool, climate[10:])
    for name in ("ensemble", "als", "two-tower"):
        lean = {u: models[name].score(u, pool) for u in (fan, other)}
        lean = {u: x[unseen_fintech].mean() - x[unseen_climate].mean() for u, x in lean.items()}
        assert lean[fan] > lean[other], name
    # Views are not engagement: the viewed items stay recommendable.
    assert models["ensemble"].engaged_item_ids(fan).size == 0


def test_with_view_weight_zero_a_view_only_user_gets_trending_as_before(world_copy, monkeypatch):
    now = clock(world_copy)
    fan = new_developer(world_copy, "fintech viewer")
    view(world_copy, fan, startups_of(world_copy, "fintech")[:10], now - timedelta(days=3))
    monkeypatch.setattr(base, "VIEW_WEIGHT", 0.0)
    models = fit(world_copy, now)
    got = candidates(fan, FLOW, 20, engine=world_copy, model=models["ensemble"], as_of=now)
    assert got.fallback and got.source == "popularity"


def test_views_at_or_after_the_request_do_not_make_a_user_known(world_copy):
    now = clock(world_copy)
    late = new_developer(world_copy, "late viewer")
    view(world_copy, late, startups_of(world_copy, "fintech")[:10], now + timedelta(hours=1))
    # A model fitted before the views does not know the user.
    at_clock = fit(world_copy, now)["ensemble"]
    assert candidates(late, FLOW, 20, engine=world_copy, model=at_clock, as_of=now + timedelta(hours=2)).fallback
    # A model fitted after them does, but a request made before the first view still gets trending:
    # the user had no event strictly before it, whatever the model saw later.
    later = fit(world_copy, now + timedelta(hours=2))["ensemble"]
    assert later.knows_user(late)
    for as_of in (now + timedelta(minutes=30), now + timedelta(hours=1)):  # before, and at, the first view
        assert candidates(late, FLOW, 20, engine=world_copy, model=later, as_of=as_of).fallback
    after = candidates(late, FLOW, 20, engine=world_copy, model=later, as_of=now + timedelta(hours=3))
    assert not after.fallback and after.source == "ensemble"


def test_an_engaged_users_views_stay_out_of_the_models(world_copy):
    """Views count only for users with no engagement: an engaged user's profile is unchanged by
    adding views, so the models fitted for them are the engagement-only ones."""
    now = clock(world_copy)
    data = TrainingData.from_engine(world_copy, now)
    engaged_user = int(data.engaged["user_id"].iloc[0])
    before = fit(world_copy, now)["ensemble"]
    view(world_copy, engaged_user, startups_of(world_copy, "fintech")[:10], now - timedelta(days=1))
    after = fit(world_copy, now)["ensemble"]
    pool = startups_of(world_copy, "climate")
    np.testing.assert_array_equal(after.score(engaged_user, pool), before.score(engaged_user, pool))
    assert after.version_ == before.version_


def test_a_view_only_user_is_scored_with_the_cold_start_blend(world_copy):
    from ranker.base.base import minmax
    from ranker.base.ensemble import COLD_START_POPULARITY

    now = clock(world_copy)
    fan = new_developer(world_copy, "fintech viewer")
    view(world_copy, fan, startups_of(world_copy, "fintech")[:10], now - timedelta(days=3))
    models = fit(world_copy, now)
    ens, pool = models["ensemble"], startups_of(world_copy, None)
    engaged_user = int(ens.user_ids_[np.diff(ens.engaged_indptr_) > 0][0])
    assert sum(ens.cold_weights_.values()) == pytest.approx(sum(ens.weights_.values()))
    assert ens.cold_weights_["popularity"] == pytest.approx(COLD_START_POPULARITY * sum(ens.weights_.values()))
    assert ens.cold_weights_["two-tower"] == pytest.approx(2 * ens.cold_weights_["als"])  # the ratio of weights_
    for user, weights in ((fan, ens.cold_weights_), (engaged_user, ens.weights_)):
        blend = sum(w * minmax(models[n].score(user, pool)) for n, w in weights.items())
        np.testing.assert_allclose(ens.score(user, pool), blend, rtol=1e-5, atol=1e-6)
