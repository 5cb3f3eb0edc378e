"""Train/serve parity: PSI and KS per feature, training data against the features serving logged."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, update

from ranker import config, keys
from ranker.data.db import make_engine, put_setting, session_scope
from ranker.data.schema import Impression, Outcome
from ranker.evaluation.parity import (
    EPSILON,
    MIN_SAMPLE,
    parity_gate,
    parity_report,
    psi,
    verdict,
)
from ranker.rank.features import REGISTRY

# --- psi: known answers and the definition -------------------------------------------


def test_psi_matches_a_hand_computed_answer():
    # Two bins cut at the training median 4.5: training 50% / 50%, serving 80% / 20%.
    expected = np.arange(10)
    actual = np.array([0, 1, 2, 3, 4, 0, 1, 2, 8, 9])
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert by_hand == pytest.approx(0.415888, abs=1e-6)
    assert psi(expected, actual, bins=2) == pytest.approx(by_hand, rel=1e-12)


def test_an_empty_bin_is_floored_at_epsilon_so_psi_stays_finite():
    # Every serving value above the training maximum: bin 1 is empty for serving, bin 2 holds all.
    value = psi(np.arange(10), np.full(5, 100.0), bins=2)
    by_hand = (EPSILON - 0.5) * math.log(EPSILON / 0.5) + (1.0 - 0.5) * math.log(1.0 / 0.5)
    assert value == pytest.approx(by_hand, rel=1e-12)


def test_psi_is_the_sum_over_training_decile_bins_of_share_gap_times_log_ratio():
    rng = np.random.default_rng(0)
    expected, actual = rng.normal(0.0, 1.0, 20_000), rng.normal(0.3, 1.2, 7_000)
    edges = np.concatenate([[-np.inf], np.quantile(expected, np.arange(1, 10) / 10), [np.inf]])
    e = np.histogram(expected, edges)[0] / len(expected)
    a = np.histogram(actual, edges)[0] / len(actual)
    assert psi(expected, actual) == pytest.approx(np.sum((a - e) * np.log(a / e)), rel=1e-9)
    assert psi(np.exp(expected), np.exp(actual)) == pytest.approx(psi(expected, actual), rel=1e-12)


def test_identical_samples_have_zero_psi_and_same_distribution_samples_nearly_zero():
    rng = np.random.default_rng(1)
    x = rng.beta(2, 5, 30_000)
    assert psi(x, x) == 0.0
    assert psi(x, rng.beta(2, 5, 30_000)) < 0.005


def test_ties_merge_bins_so_a_discrete_feature_is_binned_by_its_values():
    # diversity takes 0, 1/3, 2/3 or 1: deciles collapse to those values.
    train = np.repeat([0.0, 1 / 3, 2 / 3, 1.0], [100, 200, 300, 400])
    assert psi(train, train[::-1]) == 0.0
    assert psi(train, np.repeat([0.0, 1 / 3, 2 / 3, 1.0], [400, 300, 200, 100])) > 0.5


@pytest.mark.parametrize("value,n,expected", [
    (0.0, MIN_SAMPLE, "ok"), (0.099, MIN_SAMPLE, "ok"), (0.1, MIN_SAMPLE, "watch"), (0.2, MIN_SAMPLE, "watch"),
    (0.2001, MIN_SAMPLE, "skewed"), (3.0, MIN_SAMPLE - 1, "too few"), (float("nan"), MIN_SAMPLE, "too few"),
])
def test_verdict_reads_psi_with_the_usual_thresholds(value, n, expected):
    assert verdict(value, n) == expected


# --- parity_report on a small real world with simulated traffic -------------------------


@pytest.fixture(scope="module")
def logged_world(trained_world, tmp_path_factory) -> Path:
    """A copy of ``trained_world`` after one simulated day of A/B traffic (built once per module)."""
    from ranker.base import store
    from ranker.serving.service import _SERVICES
    from ranker.sim.simulate import simulate

    root = tmp_path_factory.mktemp("logged")
    shutil.copy(trained_world["db"], root / "world.db")
    for name in ("models", "data"):
        shutil.copytree(trained_world[name], root / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "DATA_DIR", root / "data")
        mp.setattr(config, "MODELS_DIR", root / "models")
        store.clear_cache()
        _SERVICES.clear()
        engine = make_engine(f"sqlite:///{root / 'world.db'}")
        try:
            simulate(engine, days=1, requests_per_day=150, seed=4, refit_base=False)
        finally:
            engine.dispose()
            _SERVICES.clear()
            store.clear_cache()
    return root / "world.db"


@pytest.fixture
def logged(served, logged_world):
    """``served`` (a private copy of the trained small world, config pointed at it) holding the
    simulated traffic of ``logged_world``."""
    src, dst = sqlite3.connect(logged_world), sqlite3.connect(served.url.database)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return served


def _served_rows(engine, looked_at: bool = True) -> pd.DataFrame:
    """The impressions parity compares with, one column per feature: lists the ranker served (no
    trending or legacy list) and, when ``looked_at``, only impressions with an outcome logged."""
    stmt = (select(Impression.id, Impression.user_id, Impression.item_id, Impression.position,
                   Impression.features, Impression.request_id, Impression.served_at)
            .where(Impression.model_version.not_in([config.TRENDING_FLOW, config.LEGACY])))
    if looked_at:
        stmt = stmt.join(Outcome, Outcome.impression_id == Impression.id).distinct()
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(Impression.id)).all()
    return pd.DataFrame({
        "user_id": [r.user_id for r in rows], "item_id": [r.item_id for r in rows],
        **{f.column: [r.features[name] for r in rows] for name, f in REGISTRY.items()},
        "label": [int(r.position == 0) for r in rows], "group_id": [r.request_id for r in rows],
        "event_time": [r.served_at.isoformat(timespec="seconds") for r in rows],
    })


def _write(df: pd.DataFrame, path: Path, **shift: float) -> Path:
    """Write ``df`` as a training CSV (6 decimals, as ``ranker dataset`` does), adding ``shift`` to
    the named feature columns (clipped to [0, 1])."""
    df = df.copy()
    for column, by in shift.items():
        df[column] = (df[column] + by).clip(0.0, 1.0)
    df.to_csv(path, index=False, float_format="%.6f")
    return path


def test_training_data_equal_to_what_serving_logged_has_zero_psi(logged, tmp_path):
    rows = _served_rows(logged)
    report = parity_report(logged, _write(rows, tmp_path / "train.csv"))

    assert report.period == "the training data's event_time span, where serving logged features"
    assert report.population.startswith("served impressions someone looked at")
    assert report.n_served == report.n_sampled == report.n_train == report.train_rows == len(rows) >= MIN_SAMPLE
    assert [f.feature for f in report.features] == list(REGISTRY)
    for f in report.features:
        assert (f.psi, f.ks, f.verdict) == (pytest.approx(0.0, abs=1e-12), pytest.approx(0.0, abs=1e-12), "ok")
        assert f.ks_pvalue == pytest.approx(1.0)
        assert f.train_mean == pytest.approx(f.serving_mean, abs=1e-6)
    ok, reason = parity_gate(report)
    assert ok and reason.startswith("train/serve parity: highest PSI 0.000")


def test_a_shifted_model_score_in_the_training_data_is_skewed_and_fails_the_gate(logged, tmp_path):
    report = parity_report(logged, _write(_served_rows(logged), tmp_path / "train.csv", model_score=0.3))

    by_name = {f.feature: f for f in report.features}
    assert by_name["model_score"].psi > 0.2
    assert by_name["model_score"].verdict == "skewed"
    assert by_name["model_score"].ks > 0.2 and by_name["model_score"].ks_pvalue < 1e-6
    assert by_name["model_score"].train_mean > by_name["model_score"].serving_mean + 0.1
    assert {name: f.verdict for name, f in by_name.items() if name != "model_score"} == {
        name: "ok" for name in REGISTRY if name != "model_score"}
    ok, reason = parity_gate(report)
    assert not ok
    assert "model_score" in reason and "diversity" not in reason and "ranker parity" in reason


def test_a_skew_in_what_serving_logged_is_found_too(logged, tmp_path):
    train = _write(_served_rows(logged), tmp_path / "train.csv")
    with logged.begin() as conn:  # serving "computed" diversity as 0 for every second impression
        for imp_id, feats in conn.execute(select(Impression.id, Impression.features)).all():
            if imp_id % 2 == 0 and feats:
                conn.execute(update(Impression).where(Impression.id == imp_id)
                             .values(features={**feats, "diversity": 0.0}))

    report = parity_report(logged, train)
    verdicts = {f.feature: f.verdict for f in report.features}
    assert verdicts["diversity"] == "skewed"
    assert verdicts["model_score"] == verdicts["recency"] == "ok"
    assert parity_gate(report, threshold=10.0)[0]  # the threshold is the caller's


def test_at_most_limit_impressions_are_read_drawn_over_all_positions(logged, tmp_path):
    rows = _served_rows(logged)
    limit = len(rows) // 2
    report = parity_report(logged, _write(rows, tmp_path / "train.csv"), limit=limit)

    assert report.n_served == len(rows)
    assert report.n_sampled == limit
    assert all(f.n_serving == limit for f in report.features)
    # a random draw, not a stride over ids that would pick the same positions of every list
    assert max(f.psi for f in report.features) < 0.1


def test_without_event_time_the_recorded_dataset_window_is_the_period(logged, tmp_path):
    rows = _served_rows(logged)
    train = _write(rows.drop(columns="event_time"), tmp_path / "train.csv")
    times = pd.to_datetime(rows["event_time"]).sort_values()
    first, cut = times.iloc[0].to_pydatetime(), times.iloc[int(0.6 * len(times))].to_pydatetime()
    window = {"window_start": first.isoformat(), "window_end": cut.isoformat()}  # the first 60 % of the traffic
    with session_scope(logged) as s:
        put_setting(s, keys.LAST_DATASET, {"path": str(train), **window})

    report = parity_report(logged, train)
    assert report.period == "the window the last `ranker dataset` recorded; the file has no event_time"
    assert (report.start, report.end) == (first, cut + timedelta(seconds=1))
    assert report.n_served == int((times < cut + timedelta(seconds=1)).sum())
    assert MIN_SAMPLE <= report.n_served < len(rows)

    with session_scope(logged) as s:  # a window recorded for another file says nothing about this one
        put_setting(s, keys.LAST_DATASET, {"path": str(tmp_path / "other.csv"), **window})
    report = parity_report(logged, train)
    assert report.period.startswith("all impressions")
    assert (report.start, report.end, report.n_served) == (None, None, len(rows))


def test_training_rows_outside_the_served_span_are_left_out(logged, tmp_path):
    """A feedback dataset's window mostly holds lists no ranker served: only the part of its span in
    which serving logged features is compared, on both sides."""
    served = _served_rows(logged)
    older = served.assign(event_time=(pd.to_datetime(served["event_time"]) - timedelta(days=30))
                          .dt.strftime("%Y-%m-%dT%H:%M:%S"))
    train = _write(pd.concat([older, served]), tmp_path / "train.csv")
    train_skewed_early = _write(pd.concat([older.assign(model_score=0.0), served]), tmp_path / "skewed_early.csv")

    report = parity_report(logged, train)
    assert report.period == "the training data's event_time span, where serving logged features"
    assert (report.train_rows, report.n_train) == (2 * len(served), len(served))
    assert report.start == pd.Timestamp(served["event_time"].min()).to_pydatetime()
    assert max(f.psi for f in parity_report(logged, train_skewed_early).features) == pytest.approx(0.0, abs=1e-12)


def test_training_rows_that_predate_serving_leave_parity_unchecked(logged):
    """The fixture's own feedback dataset was built before the simulated traffic."""
    report = parity_report(logged, config.DATA_DIR / "ranker_train.csv")

    assert report.period == "the training data's event_time span; serving logged no features in it"
    assert report.n_served == 0 and report.n_train == report.train_rows > 0
    assert {f.verdict for f in report.features} == {"too few"}
    ok, reason = parity_gate(report)
    assert ok and reason.startswith("parity not checked")


def test_a_dataset_built_from_the_served_impressions_has_parity_with_serving(logged, tmp_path):
    from sqlalchemy import delete

    from ranker.rank.dataset import DatasetConfig, build_dataset

    # The world logs a view at every rendered position; a list whose client lost its views was not looked at.
    with logged.begin() as conn:
        unseen = conn.execute(select(Impression.request_id).where(
            Impression.model_version.not_in([config.TRENDING_FLOW, config.LEGACY]))
            .order_by(Impression.served_at).offset(500).limit(1)).scalar()  # mid-period
        conn.execute(delete(Outcome).where(Outcome.impression_id.in_(
            select(Impression.id).where(Impression.request_id == unseen))))
    cfg = DatasetConfig(output=tmp_path / "impressions.csv", source="impressions")
    build_dataset(logged, cfg)
    report = parity_report(logged, cfg.output)

    assert {f.feature: f.verdict for f in report.features} == {name: "ok" for name in REGISTRY}
    assert parity_gate(report)[0]
    everything = parity_report(logged, cfg.output, looked_at=False)
    assert everything.population == "served impressions, looked at or not"
    assert everything.n_served == len(_served_rows(logged, looked_at=False)) > report.n_served


def test_legacy_history_and_no_traffic_leave_parity_unchecked_and_the_gate_open(served):
    with served.connect() as conn:
        assert conn.execute(select(Impression.id).where(Impression.model_version == config.LEGACY).limit(1)).first()

    report = parity_report(served, config.DATA_DIR / "ranker_train.csv")
    assert report.n_served == report.n_sampled == 0
    assert {f.verdict for f in report.features} == {"too few"}
    assert all(math.isnan(f.psi) for f in report.features)
    ok, reason = parity_gate(report)
    assert ok and reason.startswith("parity not checked: 0 served impressions, looked at or not")


def test_limit_must_be_positive(served):
    with pytest.raises(ValueError, match="positive"):
        parity_report(served, config.DATA_DIR / "ranker_train.csv", limit=0)


# --- the command line -----------------------------------------------------------------


def test_cli_prints_a_table_and_json_with_the_gate(logged, tmp_path, capsys):
    from ranker.cli.main import main

    train = _write(_served_rows(logged), tmp_path / "train.csv", model_score=0.3)
    assert main(["parity", "--data", str(train)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("model_score"))
    assert line.rstrip().endswith("skewed")
    assert "promotion gate: fails" in out

    assert main(["parity", "--data", str(train), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["feature"] for f in doc["features"]] == list(REGISTRY)
    assert doc["features"][0]["verdict"] == "skewed" and doc["features"][0]["psi"] > 0.2
    assert doc["gate"]["ok"] is False
    assert doc["period"] == "the training data's event_time span, where serving logged features"


def test_cli_defaults_to_the_last_dataset_and_says_how_to_build_a_missing_one(served, tmp_path, capsys):
    from ranker.cli.main import main

    with session_scope(served) as s:
        put_setting(s, keys.LAST_DATASET, {"path": str(tmp_path / "nowhere.csv")})
    assert main(["parity", "--json"]) == 2
    err = capsys.readouterr().err
    assert "nowhere.csv does not exist" in err and "ranker dataset" in err

    assert main(["parity", "--data", str(config.DATA_DIR / "ranker_train.csv"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_served"] == 0 and doc["features"][0]["psi"] is None and doc["gate"]["ok"] is True
