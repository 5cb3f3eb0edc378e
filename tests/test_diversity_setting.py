"""The operator's diversity method: saved, read by serving, set from the CLI and the dashboard, and its
CTR against ILD curves on the paired simulation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from sqlalchemy import select

from ranker import config, keys
from ranker.data.catalog import CountIndex, load_catalog
from ranker.data.db import put_setting, recent_audit, session_scope
from ranker.data.interactions import load_interactions
from ranker.data.schema import Impression
from ranker.ops.report import CURVE_KNOBS, diversity_curves
from ranker.rank import tuning
from ranker.rank.dataset import features_at
from ranker.rank.diversity import Diversity, rerank
from ranker.rank.features import feature_names
from ranker.serving.candidates import candidates
from ranker.serving.scoring import read_settings
from ranker.serving.service import recommend, service
from tests.test_cli_errors import run
from tests.test_dashboard import button, chart_values, click, fresh_caches, open_page, texts  # noqa: F401 (autouse)
from tests.test_serve import engaged_developer

run_cli = run  # ranker ARGV in this process: (exit status, stdout, stderr)


# --- Serving --------------------------------------------------------------------------------


@pytest.mark.parametrize("method,knob", [("mmr", 0.3), ("dpp", 0.5)])
def test_serving_with_mmr_or_dpp_returns_k_distinct_items_logged_with_the_features_as_served(served, method, knob):
    tuning.save_diversity(served, method, knob)
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 10, engine=served, arm="treatment")

    assert len(set(rec.item_ids)) == len(rec.item_ids) == 10
    svc = service(served)
    cands = candidates(uid, "developer-startup", config.FETCH_MULTIPLIER * 10, engine=served, as_of=rec.served_at)
    ctx = svc.retrieval.context(uid, svc.retrieval.user(uid), cands.item_ids, cands.scores, rec.served_at)
    scorer, _ = svc.scorer()
    assert rec.item_ids == ctx.item_ids[rerank(ctx, scorer, 10, method, knob).order].tolist()
    assert rec.item_ids != ctx.item_ids[rerank(ctx, scorer, 10).order].tolist()  # not the greedy list

    with served.connect() as conn:
        rows = conn.execute(select(Impression.item_id, Impression.features)
                            .where(Impression.request_id == rec.request_id).order_by(Impression.position)).all()
    assert [r.item_id for r in rows] == rec.item_ids
    assert [r.features for r in rows] == [it.features for it in rec.items]
    # Features as served: the dataset's point-in-time path, given the served order, gives them back
    # (diversity against the items placed above each).
    rest = [i for i in cands.item_ids.tolist() if i not in rec.item_ids]
    order = np.array(rec.item_ids + rest)
    score_of = dict(zip(cands.item_ids.tolist(), cands.scores.tolist()))
    counts = CountIndex.from_history(load_interactions(served, until=rec.served_at))
    x = features_at(load_catalog(served), counts, np.array([score_of[i] for i in order]), order, rec.served_at, uid)
    got = np.array([[it.features[n] for n in feature_names()] for it in rec.items])
    np.testing.assert_allclose(got, x[:10], atol=1e-6)


def test_the_default_greedy_method_serves_the_guides_greedy_list(served):
    uid = engaged_developer(served)
    rec = recommend(uid, "developer-startup", 10, engine=served, arm="treatment", log=False)
    svc = service(served)
    cands = candidates(uid, "developer-startup", config.FETCH_MULTIPLIER * 10, engine=served, as_of=rec.served_at)
    ctx = svc.retrieval.context(uid, svc.retrieval.user(uid), cands.item_ids, cands.scores, rec.served_at)
    from ranker.rank.rerank import greedy_rerank

    assert read_settings(served).diversity == Diversity("greedy", None)
    assert rec.item_ids == ctx.item_ids[greedy_rerank(ctx, svc.scorer()[0], 10).order].tolist()


def test_a_bad_saved_value_serves_greedy_with_one_warning(served, caplog):
    with session_scope(served) as s:
        put_setting(s, keys.DIVERSITY, {"method": "dpp", "knob": 1.25})
    with caplog.at_level(logging.WARNING):
        first, second = read_settings(served), read_settings(served)
    assert first.diversity == second.diversity == Diversity("greedy", None)
    warned = [r.getMessage() for r in caplog.records if "diversity" in r.getMessage()]
    assert len(warned) == 1 and "the dpp trade-off 1.25 is outside [0, 1)" in warned[0]
    rec = recommend(engaged_developer(served), "developer-startup", 10, engine=served, arm="treatment", log=False)
    assert len(set(rec.item_ids)) == 10


# --- Setting it: the CLI --------------------------------------------------------------------


def test_the_cli_setting_round_trips_to_serving(served, capsys):
    rc, out, _ = run_cli(["diversity", "set", "--method", "mmr", "--knob", "0.4"], capsys)
    assert rc == 0 and "mmr λ=0.4" in out
    assert tuning.diversity(served) == read_settings(served).diversity == Diversity("mmr", 0.4)
    assert recent_audit(served, 1)[0].action == keys.DIVERSITY

    rc, out, _ = run_cli(["diversity", "set", "--method", "dpp"], capsys)  # the method's default knob
    assert rc == 0 and read_settings(served).diversity == Diversity("dpp", config.DEFAULTS.dpp_knob)
    rc, out, _ = run_cli(["diversity", "show"], capsys)
    assert out.splitlines()[0] == f"diversity method: dpp θ={config.DEFAULTS.dpp_knob:g} (lower is more diverse; " \
                                  "1 for mmr, or near 1 for dpp, is the relevance order)"
    rc, out, _ = run_cli(["diversity", "set", "--method", "greedy"], capsys)
    assert rc == 0 and out.splitlines()[-1] == "diversity method: greedy"
    assert read_settings(served).diversity == Diversity("greedy", None)


@pytest.mark.parametrize("argv,says", [
    (["--method", "swirl"], "unknown diversity method 'swirl'; choose one of: greedy, mmr, dpp"),
    (["--method", "mmr", "--knob", "1.5"], "the mmr trade-off 1.5 is outside [0, 1]: lower means more diverse"),
    (["--method", "greedy", "--knob", "0.5"], "the greedy method has no knob"),
    (["--knob", "0.5"], "nothing to set: give --method greedy, mmr or dpp"),
])
def test_a_bad_value_is_refused_in_one_line_and_nothing_is_saved(served, capsys, argv, says):
    tuning.save_diversity(served, "mmr", 0.6)
    rc, out, err = run_cli(["diversity", "set", *argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and says in lines[0], (rc, out, err)
    assert tuning.diversity(served) == Diversity("mmr", 0.6)


# --- The CTR against ILD curves -------------------------------------------------------------


@pytest.mark.slow
def test_curves_give_every_method_and_ild_rises_as_the_knob_falls(served):
    curves = diversity_curves(served, requests=200)
    points = curves["points"]
    assert {p["method"] for p in points} == {"greedy", "mmr", "dpp"}
    assert [(p["method"], p["knob"]) for p in points] == [(m, k) for m, ks in CURVE_KNOBS.items() for k in ks]
    lists = curves["requests"] - curves["skipped_trending"]
    assert lists > 150 and curves["scorer"] == "v1"
    for p in points:
        assert 0 < p["expected_ctr"] < 1 and 0 < p[keys.ILD] <= 1 and p["rerank_ms"] > 0
    for method in ("mmr", "dpp"):
        ild = [p[keys.ILD] for p in points if p["method"] == method]  # knobs falling
        assert np.all(np.diff(ild) > 0), (method, ild)
    # λ = 1 is MMR's relevance order: less diverse than the guide's greedy penalty here, whose
    # scorer rewards diversity; the base order is the reference.
    assert 0 < curves["base"][keys.ILD] < 1


# --- Setting it and seeing it: the dashboard --------------------------------------------------


@pytest.mark.slow
def test_rule_weights_page_saves_the_diversity_method_and_its_knob(served):
    at = open_page("rule_weights")
    assert at.selectbox(key="diversity_method").value == "greedy"
    assert button(at, "Save diversity method").disabled
    at.selectbox(key="diversity_method").set_value("mmr").run()
    assert at.slider(key="knob_mmr").value == config.DEFAULTS.mmr_knob
    at.slider(key="knob_mmr").set_value(0.45).run()
    click(at, "Save diversity method")
    assert texts(at, "success") == ["Saved. Serving reranks with mmr λ=0.45 from the next request."]
    assert read_settings(served).diversity == Diversity("mmr", 0.45)


@pytest.mark.slow
def test_metrics_page_plots_ctr_against_ild_for_the_three_methods(served):
    tuning.save_diversity(served, "dpp", 0.7)
    at = open_page("metrics_ab")
    assert not at.exception, at.exception
    assert not [c for c in at.get("plotly_chart") if "intra-list" in c.proto.spec]  # computed on demand
    click(at, "Compute the curves")
    assert not at.exception, at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    chart = next(c for c in charts if c["layout"].get("title", {}).get("text") == "CTR against intra-list diversity")
    traces = {t["name"]: t for t in chart["data"]}
    assert set(traces) == {"greedy", "mmr", "dpp", "base order", "serving now (dpp θ=0.7)"}

    expected = diversity_curves(served, requests=config.DEFAULTS.diversity_curve_requests)
    for method in ("greedy", "mmr", "dpp"):
        points = [p for p in expected["points"] if p["method"] == method]
        np.testing.assert_allclose(chart_values(traces[method]["x"]), [p[keys.ILD] for p in points])
        np.testing.assert_allclose(chart_values(traces[method]["y"]), [p["expected_ctr"] for p in points])


@pytest.mark.slow
def test_the_report_reranks_with_the_method_serving_now_and_says_so(served):
    from ranker.ops.report import build_report, paired_simulation
    from ranker.rank.rerank import RuleScorer

    greedy = paired_simulation(served, 60, scorers={"rule": RuleScorer()}, resamples=10)["policies"]["rule"]
    spread = paired_simulation(served, 60, scorers={"rule": RuleScorer()}, resamples=10,
                               method=Diversity("mmr", 0.3))["policies"]["rule"]
    assert spread[keys.ILD] > greedy[keys.ILD]

    tuning.save_diversity(served, "mmr", 0.3)
    report = build_report(served, requests=60)
    assert "every scorer reranks with the diversity method serving now: mmr λ=0.3 (`ranker diversity show`)" \
        in report["notes"]
    assert report["offline"]["policies"]["rule"][keys.ILD] == pytest.approx(spread[keys.ILD])
