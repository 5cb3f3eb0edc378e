"""A/B serving, logging, online metrics in SQL, the delta-method analysis and the simulator."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import func, select

from ranker import config
from ranker.data import db
from ranker.data.schema import Impression, Outcome, ServedList
from ranker.evaluation.abtest import analyse, arm_stats
from ranker.serving import experiments
from ranker.serving.experiments import Experiment, assign_arm, bucket
from ranker.serving.online import LATEST, ab_test, daily_metrics, guardrail_tests, summary_by_arm


def test_assignment_is_deterministic_and_follows_the_rollout():
    exp = Experiment(rollout=30, salt="s1", running=True)
    arms = [assign_arm(u, exp) for u in range(4000)]
    assert arms == [assign_arm(u, exp) for u in range(4000)]
    share = arms.count("treatment") / len(arms)
    assert 0.27 < share < 0.33
    other = [assign_arm(u, Experiment(rollout=30, salt="s2", running=True)) for u in range(4000)]
    assert other != arms  # a new salt reshuffles users
    assert all(assign_arm(u, Experiment(rollout=30, running=False)) == "treatment" for u in range(50))
    assert 0 <= bucket(123, "x") < 100


@pytest.mark.parametrize("rollout", [-1, 100.5, float("nan")])
def test_rollout_outside_0_100_is_rejected(world_copy, rollout):
    with pytest.raises(ValueError, match="between 0 and 100"):
        experiments.update_experiment(world_copy, rollout=rollout)


def test_experiment_changes_reach_serving_and_are_audited(world_copy):
    experiments.update_experiment(world_copy, rollout=20)
    exp = experiments.get_experiment(world_copy)
    assert (exp.rollout, exp.running, exp.name) == (20, True, "demo")
    assert db.recent_audit(world_copy, 1)[0].action == "experiment_rollout"
    experiments.update_experiment(world_copy, running=False)
    exp = experiments.get_experiment(world_copy)
    assert not exp.running and exp.stopped_at
    assert db.recent_audit(world_copy, 1)[0].action == "experiment_stop"


def test_no_impressions_in_one_arm_says_not_enough_data(world_copy):
    result = ab_test(world_copy)
    assert not result.enough_data and "Not enough data" in result.verdict
    only_control = analyse(arm_stats(np.array([1.0, 2.0]), np.array([10.0, 10.0])), None)
    assert "Not enough data" in only_control.verdict and only_control.lift is None
    for res in guardrail_tests(world_copy).values():
        assert not res.enough_data and "Not enough data" in res.verdict


def test_delta_method_variance_matches_the_spread_of_simulated_experiments():
    rng = np.random.default_rng(0)
    n_users, estimates, variances = 400, [], []
    for _ in range(300):
        n = rng.integers(1, 30, size=n_users)  # impressions per user
        p = rng.beta(2, 8, size=n_users)  # users differ: clicks are clustered by user
        c = rng.binomial(n, p)
        s = arm_stats(c, n)
        estimates.append(s.rate)
        variances.append(s.var)
    assert np.mean(variances) == pytest.approx(np.var(estimates), rel=0.2)


def test_analysis_detects_a_real_lift_and_sizes_the_sample():
    rng = np.random.default_rng(1)
    n = rng.integers(5, 20, size=3000)
    control = arm_stats(rng.binomial(n, 0.10), n)
    treatment = arm_stats(rng.binomial(n, 0.12), n)
    res = analyse(control, treatment, mde=0.05)
    assert res.enough_data and res.p_value < 0.01
    assert res.ci_low < 0.2 < res.ci_high
    assert "significant" in res.verdict
    assert res.users_needed_per_arm > 3000  # a 5% lift needs more users than a 20% one
    null = analyse(control, arm_stats(rng.binomial(n, 0.10), n))
    assert null.p_value > 0.01 and "No significant difference" in null.verdict


def test_outcome_for_unknown_impression_is_rejected_and_logged(world_copy, caplog):
    caplog.set_level(logging.ERROR)
    with world_copy.connect() as conn:
        before = conn.execute(select(func.count()).select_from(Outcome)).scalar_one()
    with pytest.raises(experiments.UnknownImpressionError):
        experiments.log_outcomes(world_copy, [(12_345_678, "click", datetime(2026, 1, 1))])
    assert "unknown impression" in caplog.text
    with world_copy.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Outcome)).scalar_one() == before


def test_simulate_on_an_empty_database_says_to_run_demo_init(tmp_path):
    from ranker.sim.simulate import simulate

    engine = db.ensure_schema(db.make_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    with pytest.raises(ValueError, match="ranker demo init"):
        simulate(engine, days=1, requests_per_day=5)


def test_simulation_is_deterministic_and_metrics_agree_with_the_logs(served, trained_world, tmp_path):
    from ranker.sim.simulate import simulate

    summary = simulate(served, days=1, requests_per_day=80, seed=5, refit_base=False)
    served_now = Impression.arm != config.LEGACY  # the world's own history (the legacy feed's lists) aside
    with served.connect() as conn:
        n_imp = conn.execute(select(func.count()).select_from(Impression).where(served_now)).scalar_one()
        clicked = conn.execute(select(func.count(func.distinct(Outcome.impression_id))).join(Impression)
                               .where(Outcome.kind == "click", served_now)).scalar_one()
        lists = conn.execute(select(func.count()).select_from(ServedList)
                             .where(ServedList.arm != config.LEGACY)).scalar_one()
    assert summary.requests == 80 and n_imp == summary.impressions and lists == 80
    arms = summary_by_arm(served, experiment=LATEST)
    assert int(arms["impressions"].sum()) == n_imp
    assert int(arms["clicks"].sum()) >= clicked  # clicks or explicit feedback
    daily = daily_metrics(served)
    daily = daily[daily["arm"] != config.LEGACY]
    assert set(daily["arm"]) <= {"control", "treatment"} and daily["impressions"].sum() == n_imp
    assert ((daily["ctr"] >= 0) & (daily["ctr"] <= 1)).all()
    treated = arms.loc["treatment"] if "treatment" in arms.index else None
    assert treated is None or 0 <= treated["ild"] <= 1
    # diversity and freshness per arm, per-user delta method: the same means as the SQL summary
    guard = guardrail_tests(served)
    for column, res in guard.items():
        assert res.enough_data, res.verdict
        assert res.control.rate == pytest.approx(arms.loc["control", column])
        assert res.treatment.rate == pytest.approx(arms.loc["treatment", column])
        for arm in ("control", "treatment"):  # users, not lists, are the unit
            stats = getattr(res, arm)
            assert stats.denominator == arms.loc[arm, "lists"]
            with served.connect() as conn:
                assert stats.users == conn.execute(select(func.count(func.distinct(ServedList.user_id)))
                                                   .where(ServedList.arm == arm)).scalar_one()
    assert "diversity (ILD)" in guard["ild"].verdict

    # same seed on a fresh copy of the same world gives the same traffic
    import shutil

    from ranker.base import store
    from ranker.serving.service import _SERVICES

    shutil.copy(trained_world["db"], tmp_path / "again.db")
    again = db.make_engine(f"sqlite:///{tmp_path / 'again.db'}")
    _SERVICES.clear()
    store.clear_cache()
    repeat = simulate(again, days=1, requests_per_day=80, seed=5, refit_base=False)
    assert (repeat.impressions, repeat.clicks, repeat.positives) == (summary.impressions, summary.clicks,
                                                                      summary.positives)


def test_concurrent_writers_lose_no_impressions(served):
    from ranker.serving.service import recommend
    from tests.test_serve import engaged_developer

    uid = engaged_developer(served)
    errors: list[Exception] = []

    def serve_many() -> None:
        try:
            for _ in range(15):
                recommend(uid, "developer-startup", 10, engine=served)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with served.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Impression)
                            .where(Impression.arm != config.LEGACY)).scalar_one() == 4 * 15 * 10
        assert conn.execute(select(func.count()).select_from(ServedList)
                            .where(ServedList.arm != config.LEGACY)).scalar_one() == 60


def test_report_compares_every_policy_on_the_same_requests(served, capsys):
    """``ranker report --json``: online arms with the CTR verdict and the diversity/freshness
    guardrails, then paired simulated traffic where base closes 0 % of the gap and the oracle 100 %."""
    from ranker.cli import main
    from ranker.data.db import _cached_engine
    from ranker.sim.simulate import simulate

    simulate(served, days=1, requests_per_day=60, seed=3, refit_base=False)
    _cached_engine.cache_clear()
    try:
        assert main(["report", "--json", "--requests", "150", "--compare", "v1"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert main(["report", "--requests", "150"]) == 0
        text = capsys.readouterr().out
        assert main(["report", "--requests", "150", "--compare", "v9"]) == 2
        assert "unknown model version 'v9'; registered: v1" in capsys.readouterr().err
    finally:
        _cached_engine.cache_clear()
    assert {a["arm"] for a in report["online"]["arms"]} == {"control", "treatment"}
    assert set(report["online"]["guardrails"]) == {"ild", "mean_age_days"}
    policies = report["offline"]["policies"]
    assert list(policies) == ["base", "rule", "neural", "neural v1", "lightgbm", "oracle"]
    # v1 is the active model: the same policy on the same requests and random numbers
    assert policies["neural v1"] == policies["neural"]
    assert policies["base"]["gap_closed"] == 0 and policies["oracle"]["gap_closed"] == 1
    assert policies["base"]["gap_closed_ci"] == [0, 0] and policies["oracle"]["gap_closed_ci"] == [1, 1]
    assert policies["oracle"]["expected_ctr"] > policies["base"]["expected_ctr"]
    assert all(p["impressions"] == policies["base"]["impressions"] > 0 for p in policies.values())
    compared = 150 - report["offline"]["skipped_trending"]
    base, oracle = policies["base"]["expected_ctr"], policies["oracle"]["expected_ctr"]
    for p in policies.values():  # gap closed from expected CTR, with its interval over the same requests
        low, high = p["gap_closed_ci"]
        assert p["requests"] == compared and low <= p["gap_closed"] <= high
        assert p["gap_closed"] == pytest.approx((p["expected_ctr"] - base) / (oracle - base))
    assert report["peer"]["version"] == "v1" and 1 <= report["peer"]["rounds"] < report["peer"]["max_rounds"]
    assert "A/B:" in text and "mean age of served items" in text and "oracle" in text
    assert "gap closed (95% CI)" in text and f"LightGBM peer: {report['peer']['rounds']} rounds (early stopping" in text
