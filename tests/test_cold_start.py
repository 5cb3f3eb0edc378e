"""Cold start for view-only users: a user who has only viewed gets a list personalised from those
views (not the trending list), point in time; and ``ranker report`` splits CTR by what the user
had done strictly before each request."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, delete, insert, select

from ranker import config, keys
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


# --- The report's cohorts -----------------------------------------------------------------------


def test_online_ctr_is_split_by_what_the_user_did_strictly_before_each_request(world_copy, isolated_dirs):
    from ranker.ops.report import ctr_by_cohort
    from ranker.serving.experiments import log_outcomes
    from ranker.serving.service import _SERVICES, recommend

    _SERVICES.clear()
    now = clock(world_copy)
    user = new_developer(world_copy, "newcomer")
    served = {}
    for name, at in [("first", now + timedelta(hours=1)), ("at the view", now + timedelta(hours=1, seconds=5)),
                     ("after the view", now + timedelta(hours=2)), ("after the click", now + timedelta(hours=3))]:
        served[name] = recommend(user, FLOW, 10, engine=world_copy, as_of=at)
        if name == "first":  # the user examines the first item, and clicks nothing
            log_outcomes(world_copy, [(served[name].impression_ids[0], "view", at + timedelta(seconds=5))])
        if name == "after the view":  # one click on the second item
            log_outcomes(world_copy, [(served[name].impression_ids[1], "click", at + timedelta(seconds=7))])
    _SERVICES.clear()

    rows = ctr_by_cohort(world_copy, start=now)
    arm = served["first"].arm
    assert [(r["arm"], r["cohort"]) for r in rows] == [(arm, "engaged"), (arm, "view_only"), (arm, "new")]
    by = {r["cohort"]: r for r in rows}
    # Served at the moment of the view: not strictly after it, so still "no events before".
    assert (by["new"]["lists"], by["new"]["impressions"], by["new"]["clicks"]) == (2, 20, 0)
    assert (by["view_only"]["lists"], by["view_only"]["clicks"], by["view_only"][keys.CTR]) == (1, 1, 0.1)
    assert (by["engaged"]["lists"], by["engaged"]["clicks"]) == (1, 0)
    assert by["new"]["trending_lists"] == 2 and by["view_only"]["label"] == "view-only before"
    assert all(r["users"] == 1 for r in rows)


def test_the_paired_simulation_reports_each_cohort_on_its_own_requests(served):
    from ranker.base.store import fit_base_models
    from ranker.ops.report import COHORTS, cohorts_at, paired_simulation
    from ranker.rank.rerank import RuleScorer

    now = clock(served)
    with served.connect() as conn:
        users = conn.execute(select(User.id).order_by(User.id)).scalars().all()
    viewers, newcomers = users[:40], users[40:45]
    with session_scope(served) as s:  # 40 users keep only their views, 5 lose every event
        s.execute(delete(Interaction).where(Interaction.user_id.in_(viewers),
                                            Interaction.kind.in_(config.ENGAGED_KINDS)))
        s.execute(delete(Interaction).where(Interaction.user_id.in_(newcomers)))
    fit_base_models(served)  # the serving models, fitted on that history

    cohort_of = cohorts_at(served, now)
    with served.connect() as conn:
        active = select(Interaction.user_id).where(Interaction.created_at < now)
        any_event = set(conn.execute(active).scalars())
        engaged = set(conn.execute(active.where(Interaction.kind.in_(config.ENGAGED_KINDS))).scalars())
    assert {u for u, c in cohort_of.items() if c == "view_only"} == any_event - engaged >= set(viewers)
    assert {u for u, c in cohort_of.items() if c == "engaged"} == engaged
    assert not set(newcomers) & set(cohort_of)  # no event before: "new"

    result = paired_simulation(served, 120, scorers={"rule": RuleScorer()}, resamples=10)
    cohorts = result["cohorts"]
    assert list(cohorts) == list(COHORTS)
    assert sum(c["requests"] - c["trending"] for c in cohorts.values()) == 120 - result["skipped_trending"]
    # Users who only viewed are personalised and reranked; users with no event get trending.
    assert cohorts["view_only"]["requests"] > 0 and cohorts["view_only"]["trending"] == 0
    assert cohorts["new"]["requests"] == cohorts["new"]["trending"] > 0
    new = cohorts["new"]["policies"]
    assert new["rule"] == new["base"]  # the trending list is never reranked: every policy shows it
    assert new["oracle"]["expected_ctr"] >= new["base"]["expected_ctr"]
    view_only = cohorts["view_only"]["policies"]
    assert view_only["rule"]["expected_ctr"] != view_only["base"]["expected_ctr"]


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


@pytest.mark.slow  # a whole page run
def test_the_metrics_page_shows_ctr_by_cohort_per_arm(served):
    from pathlib import Path

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from ranker.data import db
    from ranker.ops.report import ctr_by_cohort
    from ranker.serving.online import LATEST
    from ranker.sim.simulate import simulate

    simulate(served, days=1, requests_per_day=60, refit_base=False)
    st.cache_data.clear()
    db._cached_engine.cache_clear()
    try:
        app = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
        at = AppTest.from_file(app, default_timeout=60).switch_page("../pages/metrics_ab.py").run()
    finally:
        st.cache_data.clear()
        db._cached_engine.cache_clear()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "cohort" in d.value.columns)
    expected = ctr_by_cohort(served, experiment=LATEST)
    assert {c["arm"] for c in expected} == {"control", "treatment"}
    assert table[["arm", "cohort", "lists", "impressions"]].values.tolist() == [
        [c["arm"], c["label"], c["lists"], c["impressions"]] for c in expected]
    assert table["CTR"].tolist() == [f"{c[keys.CTR]:.2%}" for c in expected]
