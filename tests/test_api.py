"""The HTTP API through FastAPI's TestClient, on a trained small world (a real model, a real database)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from ranker import config
from ranker.api import create_app, schemas
from ranker.api.auth import Keys
from ranker.data.schema import Impression, Interaction, ModelActivation, Outcome, ServedList, User
from ranker.serving.experiments import assign_arm, get_experiment
from tests.conftest import metric_value

FLOW_OF_ROLE = {"developer": "developer-startup", "investor": "investor-startup", "founder": "founder-developer"}


@pytest.fixture
def client(served):
    with TestClient(create_app(served, keys=Keys())) as c:
        yield c


def _user(engine, arm: str = "treatment", role: str = "developer") -> int:
    """A user of ``role`` with engagement history, in ``arm`` of the running experiment."""
    from ranker.data.interactions import engaged_item_ids

    exp = get_experiment(engine)
    with engine.connect() as conn:
        ids = conn.execute(select(User.id).where(User.role == role).order_by(User.id)).scalars().all()
    for uid in ids:
        if assign_arm(uid, exp) == arm and len(engaged_item_ids(engine, uid)) > 0:
            return int(uid)
    raise AssertionError(f"no {role} with history in {arm}")


def _count(engine, model) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


# --- Schemas -------------------------------------------------------------------------------


def test_schema_bounds_k_and_forbids_unknown_fields():
    assert schemas.RecommendRequest(user_id=1, flow="developer-startup").k == config.DEFAULT_K
    for bad in ({"k": 0}, {"k": 101}, {"user": 1}, {"user_id": -1}, {"user_id": 2**31}, {"flow": "nope"}):
        with pytest.raises(ValidationError):
            schemas.RecommendRequest.model_validate({"user_id": 1, "flow": "developer-startup", **bad})


def test_schema_rank_needs_scores_for_all_items_or_none():
    schemas.RankRequest(user_id=1, items=[{"item_id": 1}, {"item_id": 2}])
    schemas.RankRequest(user_id=1, items=[{"item_id": 1, "base_score": 0.2}, {"item_id": 2, "base_score": 0.1}])
    with pytest.raises(ValidationError, match="every item or for none"):
        schemas.RankRequest(user_id=1, items=[{"item_id": 1, "base_score": 0.2}, {"item_id": 2}])
    with pytest.raises(ValidationError):
        schemas.RankRequest(user_id=1, items=[{"item_id": i} for i in range(schemas.MAX_CANDIDATES + 1)])
    with pytest.raises(ValidationError):
        schemas.RankRequest(user_id=1, items=[{"item_id": 1, "base_score": float("nan")}])


def test_schema_event_time_becomes_naive_utc():
    e = schemas.Event(request_id="r1", item_id=3, type="click", ts="2026-01-01T02:00:00+02:00")
    assert e.ts == datetime(2026, 1, 1, 0, 0)
    with pytest.raises(ValidationError):
        schemas.Event(request_id="r1", item_id=3, type="purchase")
    with pytest.raises(ValidationError):
        schemas.Event(request_id="bad\x00id", item_id=3, type="click")
    with pytest.raises(ValidationError):
        schemas.Event(request_id="r1", item_id=3, type="click", ts="0001-01-01T00:00:00+01:00")


def test_schema_item_refuses_update_before_creation():
    with pytest.raises(ValidationError, match="before created_at"):
        schemas.ItemUpsert(item_type="startup", category="a", field="b", type="c",
                           created_at=datetime(2026, 1, 2), updated_at=datetime(2026, 1, 1))


# --- Recommend --------------------------------------------------------------------------


def test_recommend_reranks_with_the_active_model_and_logs_impressions(client, served):
    uid = _user(served, "treatment")
    r = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": 5,
                                           "context": {"page": "home", "mobile": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reranked"] is True and body["fallback"] is False and body["arm"] == "treatment"
    assert body["model_version"] == "v1"
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    assert all(1 <= i["base_rank"] <= 10 for i in body["items"])  # from the 2×k candidates
    scores = [i["score"] for i in body["items"]]
    assert all(isinstance(s, float) for s in scores)
    with served.connect() as conn:
        logged = conn.execute(select(Impression.item_id, Impression.position, Impression.model_version)
                              .where(Impression.request_id == body["request_id"])
                              .order_by(Impression.position)).all()
        listed = conn.execute(select(ServedList.source, ServedList.context)
                              .where(ServedList.request_id == body["request_id"])).one()
    assert [row.item_id for row in logged] == [i["item_id"] for i in body["items"]]
    assert {row.model_version for row in logged} == {"v1"}
    assert listed.source == "api" and listed.context == {"page": "home", "mobile": True}


def test_recommend_get_serves_the_same_list_as_post(client, served):
    uid = _user(served, "treatment")
    post = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": 4}).json()
    get = client.get("/v1/recommend", params={"user_id": uid, "flow": "developer-startup", "k": 4}).json()
    assert [i["item_id"] for i in get["items"]] == [i["item_id"] for i in post["items"]]
    assert get["request_id"] != post["request_id"]


def test_control_arm_gets_the_base_order(client, served):
    uid = _user(served, "control")
    body = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": 5}).json()
    assert body["arm"] == "control" and body["reranked"] is False and body["model_version"] == "base"
    assert [i["base_rank"] for i in body["items"]] == [1, 2, 3, 4, 5]


def test_trending_is_never_reranked(client, served):
    uid = _user(served, "treatment")
    body = client.get("/v1/recommend", params={"user_id": uid, "flow": "trending", "k": 5}).json()
    assert body["reranked"] is False and body["model_version"] == "trending" and body["fallback"] is True
    assert len(body["items"]) == 5


# --- Rank -----------------------------------------------------------------------------------


def test_rank_reorders_the_callers_candidates_and_reports_unknown_ones(client, served):
    from ranker.serving.experiments import update_experiment

    update_experiment(served, running=False)  # everyone in treatment
    uid = _user(served, "treatment")
    base = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": 20}).json()
    ids = [i["item_id"] for i in base["items"]]
    candidates = [{"item_id": i, "base_score": 1.0 - n / 40} for n, i in enumerate(ids)]
    r = client.post("/v1/rank", json={"user_id": uid, "k": 10,
                                      "items": candidates + [{"item_id": 10**9, "base_score": 0.99},
                                                             {"item_id": ids[0], "base_score": 0.5}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reranked"] is True and body["model_version"] == "v1" and body["flow"] == "developer-startup"
    assert len(body["items"]) == 10 and set(i["item_id"] for i in body["items"]) <= set(ids)
    assert {e["item_id"]: e["error"].split(":")[0] for e in body["errors"]} == {10**9: "unknown item",
                                                                                 ids[0]: "duplicate"}
    assert [i["base_rank"] for i in body["items"]] != list(range(1, 11))  # the ranker moved something
    assert _count(served, Impression) >= 30  # both lists logged


def test_rank_without_scores_takes_the_order_given(client, served):
    from ranker.serving.experiments import update_experiment

    update_experiment(served, rollout=0)  # everyone in control: the caller's order comes back
    uid = _user(served, "control")
    base = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": 6}).json()
    ids = [i["item_id"] for i in base["items"]][::-1]
    body = client.post("/v1/rank", json={"user_id": uid, "items": [{"item_id": i} for i in ids], "k": 6}).json()
    assert [i["item_id"] for i in body["items"]] == ids
    assert [i["base_score"] for i in body["items"]] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


# --- Feedback ---------------------------------------------------------------------------


def _served_list(client, engine, k: int = 5) -> tuple[str, list[int]]:
    uid = _user(engine, "treatment")
    body = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup", "k": k}).json()
    return body["request_id"], [i["item_id"] for i in body["items"]]


def test_feedback_is_idempotent_and_stores_valid_events_beside_invalid_ones(client, served):
    rid, items = _served_list(client, served)
    outcomes, interactions = _count(served, Outcome), _count(served, Interaction)
    events = [{"request_id": rid, "item_id": items[0], "type": "view"},
              {"request_id": rid, "item_id": items[0], "type": "click"},
              {"request_id": rid, "item_id": items[0], "type": "click"},  # the same event again
              {"request_id": "no-such-request", "item_id": items[0], "type": "click"},
              {"request_id": rid, "item_id": 10**9, "type": "click"}]
    r = client.post("/v1/feedback", json={"events": events})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["stored"], body["duplicates"], body["rejected"]) == (2, 1, 2)
    assert [x["status"] for x in body["results"]] == ["stored", "stored", "duplicate", "rejected", "rejected"]
    assert "unknown request_id" in body["results"][3]["error"]
    assert "was not shown" in body["results"][4]["error"]
    assert _count(served, Outcome) == outcomes + 2
    assert _count(served, Interaction) == interactions + 2

    again = client.post("/v1/feedback", json={"events": events[:2]}).json()
    assert (again["stored"], again["duplicates"]) == (0, 2)
    assert _count(served, Outcome) == outcomes + 2


def test_feedback_before_the_list_was_served_is_rejected(client, served):
    rid, items = _served_list(client, served)
    early = (datetime(2000, 1, 1, tzinfo=UTC)).isoformat()
    body = client.post("/v1/feedback", json={"events": [
        {"request_id": rid, "item_id": items[1], "type": "click", "ts": early}]}).json()
    assert body["rejected"] == 1 and "before the list was served" in body["results"][0]["error"]


def test_a_click_sent_over_http_reaches_the_impressions_dataset_and_ctr(client, served, tmp_path):
    import pandas as pd

    from ranker.rank.dataset import DatasetConfig, build_dataset
    from ranker.serving import online

    rid, items = _served_list(client, served, k=8)
    events = [{"request_id": rid, "item_id": i, "type": "view"} for i in items]
    events.append({"request_id": rid, "item_id": items[2], "type": "click"})
    assert client.post("/v1/feedback", json={"events": events}).json()["stored"] == len(items) + 1

    out = tmp_path / "imp.csv"
    build_dataset(served, DatasetConfig(output=out, source="impressions", neg_ratio=100))
    rows = pd.read_csv(out)
    mine = rows[rows.group_id == rid]
    assert set(mine.item_id) == set(items)
    assert mine.set_index("item_id").label.to_dict() == {i: int(i == items[2]) for i in items}

    ctr = online.summary_by_arm(served)
    assert ctr.loc["treatment", "clicks"] >= 1


# --- Catalogue and users ------------------------------------------------------------------


def test_item_upsert_creates_then_updates_and_serving_sees_it(client, served):
    from ranker.serving.experiments import update_experiment

    new = {"item_type": "startup", "category": "climate", "field": "energy", "type": "seed", "name": "Sunbox"}
    r = client.put("/v1/items/90001", json=new)
    assert r.status_code == 201 and r.json()["created"] is True
    r = client.put("/v1/items/90001", json={**new, "category": "fintech"})
    assert r.status_code == 200 and r.json()["row"]["category"] == "fintech" and r.json()["row"]["name"] == "Sunbox"

    update_experiment(served, running=False)
    uid = _user(served, "treatment")
    body = client.post("/v1/rank", json={"user_id": uid, "items": [{"item_id": 90001}, {"item_id": 1}]}).json()
    assert 90001 in [i["item_id"] for i in body["items"]] and body["errors"] == []


def test_a_new_user_gets_the_trending_fallback(client, served):
    r = client.put("/v1/users/90002", json={"role": "investor", "category": "fintech"})
    assert r.status_code == 201
    body = client.post("/v1/recommend", json={"user_id": 90002, "flow": "investor-startup"}).json()
    assert body["fallback"] is True and body["reranked"] is False and len(body["items"]) == config.DEFAULT_K
    assert client.put("/v1/users/90002", json={"role": "founder"}).status_code == 200
    r = client.post("/v1/recommend", json={"user_id": 90002, "flow": "investor-startup"})
    assert r.status_code == 422 and r.json()["field"] == "flow"


# --- Model, health, metrics ---------------------------------------------------------------------------


def test_model_reports_the_active_version_and_the_activation_history(client, served):
    from ranker.rank import registry

    body = client.get("/v1/model").json()
    assert body["active_version"] == "v1" and body["serving"] == "v1" and body["fallback"] is False
    assert body["metrics"]["model"]["ndcg@10"] > 0
    assert body["activated_at"] is not None
    registry.activate_version(served, registry.RULE, actor="ops")
    body = client.get("/v1/model").json()
    assert body["active_version"] is None and body["serving"] == "rule" and body["fallback"] is True
    assert body["history"][0]["version"] == "rule" and body["history"][0]["actor"] == "ops"
    assert _count(served, ModelActivation) >= 2


def test_health_readiness_and_metrics(client, served):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "database": "ok", "scorer": "v1"}
    uid = _user(served, "treatment")
    client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup"})
    client.post("/v1/recommend", json={"user_id": uid, "flow": "nope"})
    text = client.get("/metrics").text
    assert 'ranker_http_requests_total{endpoint="/v1/recommend",flow="developer-startup",status="200"}' in text
    assert 'ranker_http_requests_total{endpoint="/v1/recommend",flow="",status="422"}' in text
    assert 'ranker_http_request_duration_seconds_bucket{endpoint="/v1/recommend"' in text
    assert 'ranker_model_info{version="v1"} 1.0' in text


def test_readiness_fails_when_the_database_is_unreachable(served):
    from ranker.data.db import make_engine

    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    with TestClient(create_app(down, keys=Keys())) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/recommend", json={"user_id": 1, "flow": "developer-startup"})
        assert r.status_code == 503 and "Traceback" not in r.text


# --- Auth ---------------------------------------------------------------------------------------------------------


def test_writes_need_a_write_key(served):
    with TestClient(create_app(served, keys=Keys(write=("w-key",)))) as c:
        rid, items = _served_list(c, served)  # reads stay open
        event = {"events": [{"request_id": rid, "item_id": items[0], "type": "click"}]}
        assert c.post("/v1/feedback", json=event).status_code == 401
        r = c.post("/v1/feedback", json=event, headers={"X-API-Key": "wrong"})
        assert r.status_code == 403 and r.json()["error"]
        assert c.put("/v1/users/90003", json={"role": "developer"}).status_code == 401
        assert c.post("/v1/feedback", json=event, headers={"X-API-Key": "w-key"}).json()["stored"] == 1


def test_read_keys_guard_reads_when_set(served):
    with TestClient(create_app(served, keys=Keys(write=("w",), read=("r",)))) as c:
        params = {"user_id": 1, "flow": "developer-startup"}
        assert c.get("/v1/recommend", params=params).status_code == 401
        assert c.get("/v1/recommend", params=params, headers={"X-API-Key": "r"}).status_code == 200
        assert c.get("/v1/recommend", params=params, headers={"X-API-Key": "w"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "x"}).status_code == 403
        r = c.put("/v1/users/90004", json={"role": "developer"}, headers={"X-API-Key": "r"})
        assert r.status_code == 403  # a read key cannot write
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


# --- Bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"user_id": 1, "flow": "developer-startup", "k": 0}, 422, "k"),
    ({"user_id": 1, "flow": "developer-startup", "k": 101}, 422, "k"),
    ({"user_id": "seven", "flow": "developer-startup"}, 422, "user_id"),
    ({"user_id": 1, "flow": "sideways"}, 422, "flow"),
    ({"user_id": 10**6, "flow": "developer-startup"}, 404, "user_id"),
    ({"user_id": 1, "flow": "founder-investor"}, 422, "flow"),
    ({"user_id": 1, "flow": "developer-startup", "colour": "red"}, 422, "colour"),
    ([1, 2, 3], 422, None),
])
def test_bad_recommend_requests_get_a_4xx_naming_the_field_and_write_nothing(client, served, body, status, field):
    before = _count(served, Impression)
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] and "Traceback" not in r.text
    if field:
        assert err["field"] == field
    assert _count(served, Impression) == before


def test_malformed_json_oversized_bodies_and_too_many_candidates_are_refused(client, served):
    before = _count(served, Impression)
    r = client.post("/v1/recommend", content=b'{"user_id": 1,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body" and "malformed JSON" in r.json()["error"]

    big = b'{"user_id": 1, "flow": "developer-startup", "context": {"x": "' + b"a" * (1 << 20) + b'"}}'
    r = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():  # no Content-Length: the limit still holds while the body streams in
        yield b'{"user_id": 1, "flow": "developer-startup", "context": {"x": "'
        for _ in range(20):
            yield b"a" * 65536
        yield b'"}}'

    r = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413

    r = client.post("/v1/rank", json={"user_id": 1, "items": [{"item_id": i} for i in range(1001)]})
    assert r.status_code == 422 and r.json()["field"] == "items"
    r = client.post("/v1/feedback", json={"events": []})
    assert r.status_code == 422 and r.json()["field"] == "events"
    assert _count(served, Impression) == before


# --- Hot reload --------------------------------------------------------------------------------------------


def test_activation_reaches_serving_during_traffic_without_a_failed_request(client, served):
    from ranker import config as cfg
    from ranker.rank import registry
    from ranker.serving.experiments import update_experiment

    update_experiment(served, running=False)
    uid = _user(served, "treatment")
    v2 = registry.register(served, cfg.MODELS_DIR / "versions" / "v1.pth")
    reloads = metric_value(client.get("/metrics").text, "ranker_model_reloads_total")
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            r = client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup"})
            statuses.append(r.status_code)
            versions.append(r.json().get("model_version", ""))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in (v2, "v1", v2):
            registry.activate_version(served, version)
            # each request stats the active file, so the very next one serves the new version
            assert client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup"}
                               ).json()["model_version"] == version
        # a corrupt file in place of the active one never replaces the good model
        (cfg.MODELS_DIR / "active.pth").write_bytes(b"not a checkpoint")
        assert client.post("/v1/recommend", json={"user_id": uid, "flow": "developer-startup"}
                           ).json()["model_version"] == v2
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}
    assert {"v1", v2} <= set(versions)
    # three activations, three files loaded (the corrupt one is not)
    assert metric_value(client.get("/metrics").text, "ranker_model_reloads_total") >= reloads + 3
