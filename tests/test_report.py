"""``ranker report``'s figures: gap closed from expected CTR with a bootstrap interval, and the
LightGBM peer trained on exactly the active model's data with early stopping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ranker.ops.report import PEER_MAX_ROUNDS, gap_closed, lightgbm_peer, train_lightgbm
from ranker.rank.registry import active_file, data_hash, load_checkpoint, save_checkpoint
from ranker.rank.train import Dataset, TrainConfig

# --- Gap closed ---------------------------------------------------------------------------------


def expected_clicks(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Expected clicks per request of base, a policy and the oracle: noisy, the policy halfway."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(4.0, 0.05, n)
    oracle = base + rng.gamma(2.0, 0.05, n)
    policy = base + 0.5 * (oracle - base) + rng.normal(0, 0.05, n)
    return {"base": base, "policy": policy, "oracle": oracle}


def test_gap_closed_is_a_ratio_of_sums_over_requests():
    # base 0.1 + 0.3 = 0.4, oracle 0.5 + 0.7 = 1.2, policy 0.3 + 0.3 = 0.6: (0.6 - 0.4) / (1.2 - 0.4) = 0.25
    out = gap_closed({"base": np.array([0.1, 0.3]), "policy": np.array([0.3, 0.3]),
                      "oracle": np.array([0.5, 0.7])}, resamples=50)
    assert math.isclose(out["policy"][0], 0.25)


def test_a_policy_equal_to_base_closes_nothing_and_one_equal_to_the_oracle_closes_all():
    e = expected_clicks(300)
    out = gap_closed({**e, "same as base": e["base"].copy(), "same as oracle": e["oracle"].copy()})
    assert out["base"] == out["same as base"] == (0.0, (0.0, 0.0))
    assert out["oracle"] == out["same as oracle"] == (1.0, (1.0, 1.0))


def test_gap_closed_and_its_interval_are_fixed_by_the_seed_and_contain_the_estimate():
    e = expected_clicks(500)
    first, again, other = gap_closed(e, seed=3), gap_closed(e, seed=3), gap_closed(e, seed=4)
    assert first == again
    point, (low, high) = first["policy"]
    assert other["policy"][0] == point  # the estimate is the sample's; only the interval is resampled
    assert other["policy"][1] != (low, high)
    assert low < point < high
    assert 0.3 < point < 0.7  # the policy sits halfway by construction


def test_the_interval_narrows_with_more_requests():
    width = {}
    for n in (200, 3200):
        _, (low, high) = gap_closed(expected_clicks(n, seed=n))["policy"]
        width[n] = high - low
    # The standard error falls as 1/sqrt(n): 16 times the requests, about a quarter of the width.
    assert width[3200] < width[200] / 2


def test_gap_closed_is_undefined_when_the_oracle_does_not_beat_base():
    flat = np.full(20, 0.2)
    point, (low, high) = gap_closed({"base": flat, "policy": flat * 1.1, "oracle": flat})["policy"]
    assert math.isnan(point) and math.isnan(low) and math.isnan(high)


# --- The LightGBM peer --------------------------------------------------------------------------


def ranking_data(n_groups: int, seed: int) -> Dataset:
    """Lists of 8 rows and 4 features in [0, 1]; the label follows features 0 and 1, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_groups * 8, 4)).astype(np.float32)
    y = x[:, 0] + x[:, 1] ** 2 + 0.6 * rng.standard_normal(len(x)) > 1.2
    groups = np.repeat(np.arange(n_groups), 8)
    return Dataset(x, y.astype(np.float32), groups, groups, np.arange(len(x)))


def test_early_stopping_ends_the_peer_before_its_cap_when_validation_stops_improving():
    # A noisy signal: validation NDCG@10 climbs for a few rounds, then the trees fit noise.
    scorer = train_lightgbm(ranking_data(300, seed=0), ranking_data(150, seed=10), max_rounds=300, patience=10)
    assert 1 < scorer.rounds < 300
    assert scorer.booster.best_iteration == scorer.rounds  # it predicts with the best round


def train_active(engine, rows: Path, out: Path, val: Path | None = None) -> str:
    """Train, register and activate a small model on ``rows``; returns its version."""
    from ranker.ops.pipeline import train_and_register

    return train_and_register(engine, rows, TrainConfig(epochs=2), val=val, output_dir=out, activate=True,
                              min_positives=10).version


def head_of(src: Path, dst: Path, lines: int) -> Path:
    """The header and the first ``lines`` rows of ``src``, written to ``dst``."""
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[: lines + 1]))
    return dst


def rows_in(csv: Path) -> int:
    return len(csv.read_text().splitlines()) - 1


def test_the_peer_trains_on_the_active_models_data_and_reports_its_rounds(served):
    meta = load_checkpoint(active_file(served)).meta
    scorer, info = lightgbm_peer(served)
    assert scorer is not None, info
    assert info["version"] == meta["version"] and info["data_path"] == meta["data_path"]
    assert info["data_hash"] == meta["data_hash"] == data_hash(Path(meta["data_path"]))
    # The model recorded the validation file that picked its best epoch: the peer stops on it too.
    assert meta["val_hash"] == data_hash(Path(meta["val_path"]))
    assert info["train_rows"] == rows_in(Path(meta["data_path"]))
    assert info["val_rows"] == rows_in(Path(meta["val_path"]))
    assert "latest 20% of the lists" not in info["validation"]
    assert info["rounds"] == scorer.rounds < PEER_MAX_ROUNDS == info["max_rounds"]


def test_the_peer_follows_the_active_model_not_the_default_dataset(served, tmp_path):
    from ranker import config

    default = config.DATA_DIR / "ranker_train.csv"
    half = rows_in(default) // 2
    part = head_of(default, tmp_path / "part.csv", half)
    version = train_active(served, part, tmp_path / "models")
    _, info = lightgbm_peer(served)
    assert info["version"] == version and info["data_path"] == str(part)
    assert info["train_rows"] + info["val_rows"] == half


def test_a_changed_training_file_is_refused_with_a_clear_note(served, tmp_path):
    from ranker import config
    from ranker.ops.report import build_report

    default = config.DATA_DIR / "ranker_train.csv"
    part = head_of(default, tmp_path / "part.csv", rows_in(default) // 2)
    version = train_active(served, part, tmp_path / "models")
    part.write_text(part.read_text() + part.read_text().splitlines(keepends=True)[1])  # one more row
    scorer, info = lightgbm_peer(served)
    assert scorer is None
    assert info["skipped"].startswith(f"LightGBM peer skipped: {version}'s training file {part} has changed (hash ")
    assert "retrain (`ranker train`)" in info["skipped"]
    report = build_report(served, requests=20)
    assert info["skipped"] in report["notes"]
    assert "lightgbm" not in report["offline"]["policies"]


def test_the_peer_early_stops_on_the_validation_file_the_model_recorded(served, tmp_path):
    from ranker import config

    val = config.DATA_DIR / "ranker_val.csv"
    ckpt = load_checkpoint(active_file(served))
    model = ckpt.spec.build()
    model.load_state_dict(ckpt.state_dict)
    save_checkpoint(active_file(served), model, {**ckpt.meta, "val_path": str(val), "val_hash": data_hash(val)})
    _, info = lightgbm_peer(served)
    assert info["validation"] == f"the model's validation file {val}"
    assert info["val_rows"] == rows_in(val) and info["train_rows"] == rows_in(Path(ckpt.meta["data_path"]))

    val.write_text(val.read_text() + val.read_text().splitlines(keepends=True)[1])  # changed since training
    _, info = lightgbm_peer(served)
    assert info["validation"].startswith(f"the model's validation file {val} has changed")
    assert "latest 20% of the lists" in info["validation"]


@pytest.mark.parametrize("what", ["gone", "unrecorded"])
def test_a_model_without_its_training_file_gets_no_peer(served, tmp_path, what):
    ckpt = load_checkpoint(active_file(served))
    model = ckpt.spec.build()
    model.load_state_dict(ckpt.state_dict)
    meta = {**ckpt.meta, "data_path": str(tmp_path / "nowhere.csv")} if what == "gone" else \
        {**ckpt.meta, "data_path": None, "data_hash": None}
    save_checkpoint(active_file(served), model, meta)
    scorer, info = lightgbm_peer(served)
    assert scorer is None
    assert ("nowhere.csv is gone" if what == "gone" else "records no training file") in info["skipped"]
