"""Time splits and the promotion holdout: validation lists come after training lists, and
`ranker retrain` decides promotion on a later holdout that neither trained nor picked the epoch.

The data is built by hand: lists of three (one positive), one an hour, written to the CSV in
shuffled order so that file order says nothing about time. Two patterns:

- ``"learnable"``: the positive has recency 1 and model_score 0.2, the negatives recency 0 and
  model_score 0.8. A trained model ranks the positive first (NDCG@10 1); the default rule,
  which weighs model_score most (0.5 against 0.2), scores it 0.1 + 0.2 = 0.3 against
  0.4 + 0 = 0.4 and ranks it last (NDCG@10 = 1 / log2(4) = 0.5).
- ``"rule"``: the reverse. The rule ranks the positive first (0.4 against 0.3), a model
  trained on the learnable pattern ranks it last.
- ``"base"``: only the base order is right. The positive has model_score 0.8, recency and
  popularity 0; the negatives 0.6, 1 and 1. The base order ranks the positive first; the rule
  (0.4 against 0.7) and a model trained on the learnable pattern rank it last.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ranker.data.db import ensure_schema, make_engine
from ranker.ops import pipeline
from ranker.ops.pipeline import retrain, train_and_register
from ranker.rank import registry
from ranker.rank.dataset import DatasetConfig, DatasetSummary
from ranker.rank.features import feature_columns
from ranker.rank.train import DataError, TrainConfig, load_dataset, split_validation, time_parts
from ranker.rank.tuning import current_weights, offline_ndcg

START = datetime(2025, 1, 1)
FAST = TrainConfig(epochs=5, lr=0.01, seed=0)


def lists_frame(patterns: list[str], seed: int = 0) -> pd.DataFrame:
    """List ``i`` shown at START + i hours with pattern ``patterns[i]``, rows in shuffled list order."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, pattern in enumerate(patterns):
        when = (START + timedelta(hours=i)).isoformat(timespec="seconds")
        for pos in range(3):
            positive = pos == 0
            if pattern == "base":
                feats = {"model_score": 0.8 if positive else 0.6, "recency_score": 0.0 if positive else 1.0,
                         "popularity_score": 0.0 if positive else 1.0, "diversity_score": 0.5}
            else:
                recency_high = positive == (pattern == "learnable")
                feats = {"model_score": 0.2 if recency_high else 0.8, "recency_score": 1.0 if recency_high else 0.0,
                         "popularity_score": 0.5, "diversity_score": 0.5}
            noisy = [float(np.clip(feats[c] + rng.uniform(-0.03, 0.03), 0, 1)) for c in feature_columns()]
            rows.append([i % 40, i * 3 + pos, *noisy, int(positive), f"l{i}", when])
    df = pd.DataFrame(rows, columns=["user_id", "item_id", *feature_columns(), "label", "group_id", "event_time"])
    order = rng.permutation(len(patterns))
    return pd.concat([df[df.group_id == f"l{i}"] for i in order], ignore_index=True)


@pytest.fixture
def engine(isolated_dirs, tmp_path):
    eng = ensure_schema(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"))
    yield eng
    eng.dispose()


def fake_builder(frame: pd.DataFrame):
    """A stand-in for ``build_dataset`` that writes ``frame`` as the real builder would: every
    list to ``cfg.output``, or, with ``cfg.val_output``, the lists in the latest
    ``cfg.val_fraction`` of the time span there."""

    def build(engine, cfg: DatasetConfig, progress=None, show_bar=False, fitted_base=None) -> DatasetSummary:
        cfg.output.parent.mkdir(parents=True, exist_ok=True)
        times = pd.to_datetime(frame.event_time)
        late = times >= times.max() - (times.max() - times.min()) * cfg.val_fraction
        if cfg.val_output is None:
            late[:] = False
        else:
            frame[late].to_csv(cfg.val_output, index=False)
        frame[~late].to_csv(cfg.output, index=False)
        return DatasetSummary(path=str(cfg.output), rows=int((~late).sum()), positives=int(frame[~late].label.sum()),
                              groups=int(frame[~late].group_id.nunique()), source="feedback")

    return build


def list_times(path: Path) -> pd.Series:
    """When each list in the CSV at ``path`` was shown, by group_id."""
    df = pd.read_csv(path)
    return pd.to_datetime(df.event_time).groupby(df.group_id).min()


# --- --val-split ------------------------------------------------------------------------


def test_val_split_holds_out_the_latest_lists_by_event_time(engine, tmp_path):
    """The last 50 of 200 lists (by time, not by file order) follow the rule pattern; the time
    split makes exactly those the validation set, where the rule is perfect."""
    path = tmp_path / "lists.csv"
    lists_frame(["learnable"] * 150 + ["rule"] * 50).to_csv(path, index=False)

    outcome = train_and_register(engine, path, FAST, val_split=0.25, min_positives=50)

    assert outcome.metrics["groups"] == 50
    assert outcome.metrics["rule"]["ndcg@10"] == pytest.approx(1.0)  # every validation list is a "rule" list
    train_set, val_set = outcome.sets["train"], outcome.sets["validation"]
    assert (train_set["lists"], val_set["lists"]) == (150, 50)
    assert val_set["from"] > train_set["to"] and val_set["split"] == "time"


def test_every_validation_list_is_later_than_every_training_list(tmp_path):
    path = tmp_path / "lists.csv"
    lists_frame(["learnable"] * 97).to_csv(path, index=False)
    data = load_dataset(path, min_positives=1)

    train_set, val_set = split_validation(data, 0.2)

    assert val_set.times.min() > train_set.times.max()
    assert len(np.unique(val_set.groups)) == round(0.2 * 97)
    assert set(np.unique(val_set.groups)).isdisjoint(np.unique(train_set.groups))


def test_random_split_keeps_the_old_behaviour_and_mixes_times(tmp_path):
    path = tmp_path / "lists.csv"
    lists_frame(["learnable"] * 200).to_csv(path, index=False)
    data = load_dataset(path, min_positives=1)

    train_set, val_set = split_validation(data, 0.25, split_by="random", seed=42)

    rng = np.random.default_rng(42)  # the draw split_by_group has always made
    held = rng.random(200) < 0.25
    assert len(val_set) == 3 * held.sum()
    assert val_set.times.min() < train_set.times.max()  # random lists come from all along the window


def test_lists_shown_at_the_same_moment_stay_on_one_side_of_a_cut():
    times = np.array(["2025-01-01T00", "2025-01-01T01", "2025-01-01T02", "2025-01-01T02", "2025-01-01T03"],
                     dtype="datetime64[s]")
    # 0.4 of 5 lists = the last 2, but the list at 02:00 ties with the 3rd-last one: both go later
    assert time_parts(times, (0.4,)).tolist() == [0, 0, 1, 1, 1]
    # three ways: holdout the last 1, validation the 2 before (a tie), training the rest
    assert time_parts(times, (0.4, 0.2)).tolist() == [0, 0, 1, 1, 2]


def test_a_file_without_event_times_needs_a_random_split(tmp_path):
    path = tmp_path / "guide.csv"
    lists_frame(["learnable"] * 60).drop(columns="event_time").to_csv(path, index=False)
    data = load_dataset(path, min_positives=1)  # old files still load

    with pytest.raises(DataError, match="no event_time column.*--split-by random"):
        split_validation(data, 0.2)
    train_set, val_set = split_validation(data, 0.2, split_by="random")
    assert len(train_set) and len(val_set)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_a_val_split_outside_zero_one_is_refused(tmp_path, share):
    path = tmp_path / "lists.csv"
    lists_frame(["learnable"] * 20).to_csv(path, index=False)
    with pytest.raises(ValueError, match="--val-split must be a share of the lists between 0 and 1"):
        split_validation(load_dataset(path, min_positives=1), share)


# --- ranker retrain: train, validation, promotion holdout ------------------------------------


def run_retrain(engine, monkeypatch, patterns: list[str], **shares) -> dict:
    monkeypatch.setattr(pipeline, "build_dataset", fake_builder(lists_frame(patterns)))
    from ranker import config

    cfg = DatasetConfig(output=config.DATA_DIR / "re.csv", val_output=config.DATA_DIR / "re_val.csv")
    return retrain(engine, cfg, FAST, **shares)


def test_the_promotion_holdout_is_disjoint_from_and_later_than_validation(engine, monkeypatch):
    from ranker import config

    report = run_retrain(engine, monkeypatch, ["learnable"] * 200)

    data = config.DATA_DIR
    train_t, val_t, hold_t = (list_times(data / name) for name in ("re.csv", "re_val.csv", "re_holdout.csv"))
    assert (len(train_t), len(val_t), len(hold_t)) == (120, 40, 40)  # 60 / 20 / 20 % of 200 lists
    train_ids, val_ids, hold_ids = set(train_t.index), set(val_t.index), set(hold_t.index)
    assert train_ids | val_ids | hold_ids == {f"l{i}" for i in range(200)}
    assert not val_ids & hold_ids and not train_ids & (val_ids | hold_ids)
    assert hold_t.min() > val_t.max() and val_t.min() > train_t.max()
    sets = report["sets"]
    assert {k: (v["lists"], v["role"]) for k, v in sets.items()} == {
        "train": (120, "fit"), "validation": (40, "best epoch"), "holdout": (40, "promotion gate")}
    assert report["gate_on"] == "holdout" and sets["holdout"]["path"] == str(data / "re_holdout.csv")


@pytest.mark.parametrize("validation,holdout,promoted", [
    ("learnable", "rule", False),  # validation says promote, the holdout says no
    ("rule", "learnable", True),  # validation says no, the holdout says promote
])
def test_the_promotion_verdict_follows_the_holdout_not_validation(engine, monkeypatch, validation, holdout,
                                                                  promoted):
    """Training lists are learnable; validation and holdout lists disagree about the candidate
    against the rule. The gate goes with the holdout, and its figures are the holdout's."""
    from ranker import config

    report = run_retrain(engine, monkeypatch, ["learnable"] * 120 + [validation] * 40 + [holdout] * 40)

    cand_val, cand_hold, rule_hold = (report["candidate_val_ndcg@10"], report["candidate_ndcg@10"],
                                      report["rule_ndcg@10"])
    hold = load_dataset(config.DATA_DIR / "re_holdout.csv", min_positives=1)
    assert rule_hold == pytest.approx(offline_ndcg(current_weights(engine), hold))
    if promoted:  # worse than the rule on validation, better on the holdout
        assert cand_val < 0.75 and cand_hold > 0.95 and rule_hold == pytest.approx(0.5, abs=0.01)
        assert report["verdict"] == "promoted" and registry.active_version(engine) == report["candidate"]
    else:  # better than the rule on validation, worse on the holdout
        assert cand_val > 0.95 and cand_hold < 0.75 and rule_hold == pytest.approx(1.0)
        assert "below the rule-based ranker" in report["verdict"] and "holdout" in report["verdict"]
        assert registry.active_version(engine) is None
    assert report["promoted"] is promoted


def test_a_candidate_significantly_worse_than_the_base_order_is_not_promoted_and_the_base_order_serves(
        engine, monkeypatch):
    """No harm: the candidate ties the rule on the holdout (both rank the positive last) but the
    base order ranks it first. Neither reranker may serve: the treatment arm gets the base order."""
    from ranker import keys
    from ranker.data.db import get_setting, session_scope
    from ranker.rank.rerank import BaseOrderScorer
    from ranker.serving.scoring import Scoring

    report = run_retrain(engine, monkeypatch, ["learnable"] * 160 + ["base"] * 40)

    assert report["candidate_ndcg@10"] == pytest.approx(report["rule_ndcg@10"], abs=0.01)
    assert report["base_ndcg@10"] == pytest.approx(1.0)
    assert report["promoted"] is False and registry.active_version(engine) is None
    assert "significantly worse than the base order on the holdout" in report["verdict"]
    assert report["vs_base"]["harmful"] and report["vs_base"]["diff"]["high"] < 0
    hold = report["base_order_hold"]
    assert hold["scorer"] == "the rule-based ranker" and hold["reason"].startswith("serving the base order: ")
    scorer, reason = Scoring(engine).scorer()
    assert isinstance(scorer, BaseOrderScorer) and reason == hold["reason"]

    registry.activate_version(engine, report["candidate"])  # an operator's choice ends the hold
    with session_scope(engine) as s:
        assert get_setting(s, keys.BASE_ORDER_HOLD) is None
    assert Scoring(engine).scorer()[0].version == report["candidate"]


def test_a_promoted_candidate_is_not_worse_than_the_base_order_and_sets_no_hold(engine, monkeypatch):
    report = run_retrain(engine, monkeypatch, ["learnable"] * 200)
    assert report["promoted"] and not report["vs_base"]["harmful"]
    assert "significantly better than the base order" in report["vs_base"]["sentence"]
    assert "base_order_hold" not in report


def test_too_few_lists_for_a_holdout_is_refused_before_training(engine, monkeypatch):
    from ranker import config

    with pytest.raises(ValueError, match=r"--holdout-split 0.2 of 60 lists leaves 12 for the promotion holdout; "
                                         r"at least 20 are needed: raise --holdout-split"):
        run_retrain(engine, monkeypatch, ["learnable"] * 60)
    assert not (config.DATA_DIR / "re_holdout.csv").exists() and registry.list_versions(engine) == []


@pytest.mark.parametrize("argv,message", [
    (["--holdout-split", "0"], "--holdout-split must be a share of the lists between 0 and 1"),
    (["--val-split", "1"], "--val-split must be a share of the lists between 0 and 1"),
    (["--val-split", "0.5", "--holdout-split", "0.5"],
     "--val-split 0.5 + --holdout-split 0.5 = 1 leaves no list to train on; make them sum to less than 1"),
])
def test_bad_retrain_shares_are_one_line_errors(isolated_dirs, tmp_path, monkeypatch, capsys, argv, message):
    from ranker.cli import main
    from ranker.data.db import _cached_engine

    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    _cached_engine.cache_clear()
    try:
        assert main(["retrain", *argv]) == 2
    finally:
        _cached_engine.cache_clear()
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1


def test_retrain_json_names_the_sets_and_their_sizes(engine, monkeypatch):
    report = run_retrain(engine, monkeypatch, ["learnable"] * 200, val_split=0.1, holdout_split=0.3)
    assert {k: v["lists"] for k, v in report["sets"].items()} == {"train": 120, "validation": 20, "holdout": 60}
    assert {k: v["rows"] for k, v in report["sets"].items()} == {"train": 360, "validation": 60, "holdout": 180}
    assert report["dataset"]["built_rows"] == 600 and report["dataset"]["holdout_rows"] == 180
    json.dumps(report)  # the CLI's --json prints it as is


def test_split_flags_default_to_the_shared_defaults():
    from ranker import config
    from ranker.cli.main import build_parser

    train_args = build_parser().parse_args(["train"])
    retrain_args = build_parser().parse_args(["retrain"])
    assert (train_args.val_split, train_args.split_by) == (config.DEFAULTS.val_split, "time")
    assert (retrain_args.val_split, retrain_args.holdout_split) == (
        config.DEFAULTS.retrain_val_split, config.DEFAULTS.holdout_split)
