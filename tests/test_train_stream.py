"""Streaming training over Parquet (``ranker train --stream``): chunks of whole lists, every row
once an epoch, the same refusals as loading whole, a model that learns, no partial checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranker.faults import FAULT_EXIT_CODE
from ranker.rank.features import feature_columns
from ranker.rank.metrics import auc, mean_ndcg_at_k
from ranker.rank.stream import ParquetStream, _bins, binned_auc, should_stream, train_stream
from ranker.rank.train import DataError, TrainConfig, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def lists_table(n_lists: int, seed: int = 0, day0: str = "2025-10-01", days: int = 8,
                min_size: int = 4, max_size: int = 30) -> pa.Table:
    """Lists of varied size, one time per list over ``days`` days, rows of a list together.
    recency_score decides the label (above 0.6: positive); the other features are noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_size, max_size + 1, n_lists)
    group = np.repeat(np.arange(n_lists), sizes)
    n = len(group)
    x = rng.random((n, len(feature_columns())))
    recency = feature_columns().index("recency_score")
    y = (x[:, recency] > 0.6).astype(np.int8)
    start = np.datetime64(f"{day0}T00:00:00", "s")
    shown = start + np.sort(rng.integers(0, days * 86_400, n_lists)).astype("timedelta64[s]")
    position = np.concatenate([np.arange(s) for s in sizes])
    return pa.table({
        "user_id": pa.array(rng.integers(0, 500, n), pa.int64()),
        "item_id": pa.array(rng.integers(0, 5000, n), pa.int64()),
        **{c: pa.array(x[:, i]) for i, c in enumerate(feature_columns())},
        "label": pa.array(y, pa.int8()),
        "group_id": pa.array(np.char.add("r", group.astype(str))),
        "event_time": pa.array(shown[group].astype("datetime64[us]"), pa.timestamp("us")),
        "position": pa.array(position, pa.int64()),
    })


def write_by_day(table: pa.Table, folder: Path) -> Path:
    """As ``ranker dataset --format parquet`` writes it: one file per day of event_time."""
    days = table.column("event_time").to_numpy().astype("datetime64[D]")
    for day in np.unique(days):
        part = folder / f"event_date={day}"
        part.mkdir(parents=True)
        pq.write_table(table.filter(pa.array(days == day)), part / "part-0.parquet", row_group_size=97)
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_by_day(lists_table(600), tmp_path / "train.parquet")


def test_chunks_hold_whole_lists_and_together_every_row_once(folder):
    table = pq.read_table(folder)
    stream = ParquetStream(folder, chunk_rows=50)  # lists of up to 30 rows: many carry into the next chunk

    chunks = list(stream.chunks())

    hashes = np.concatenate([c.list_hash for c in chunks])
    assert len(chunks) > 50
    assert len(hashes) == len(np.unique(hashes)) == 600  # no list in two chunks, none missing
    assert sum(len(c.data) for c in chunks) == table.num_rows
    assert sum(float(c.data.y.sum()) for c in chunks) == pa.compute.sum(table.column("label")).as_py()
    assert max(len(c.data) for c in chunks) < 2 * 50  # under a chunk's rows plus one batch read
    assert all(np.all(np.diff(c.data.groups) >= 0) for c in chunks)


def test_streaming_trains_on_every_training_row_exactly_once_an_epoch(folder):
    cfg = TrainConfig(epochs=3, position_correction="none")

    out = train_stream(folder, cfg, val_split=0.25, chunk_rows=64, min_positives=1)

    train, val = out.sets["train"], out.sets["validation"]
    total = pq.read_table(folder).num_rows
    assert train["rows"] + val["rows"] == total and train["lists"] + val["lists"] == 600
    assert out.seen == [{"rows": train["rows"], "lists": train["lists"], "steps": out.seen[0]["steps"]}] * 3
    assert train["to"][:10] < val["from"][:10]  # the latest days are held out, whole


def test_a_streamed_model_learns_the_feature_that_decides_the_label(folder, tmp_path):
    val = write_by_day(lists_table(200, seed=1, day0="2025-10-20", days=2), tmp_path / "val.parquet")

    out = train_stream(folder, TrainConfig(epochs=4, position_correction="none"), val=val, chunk_rows=256,
                       min_positives=1)

    held = load_dataset(val, min_positives=1)
    chance = mean_ndcg_at_k(held.y, np.random.default_rng(0).random(len(held)), held.groups, 10)
    m = out.result.metrics
    assert m["evaluated_on"] == "validation" and m["rows"] == len(held) and m["groups"] == 200
    assert m["model"]["ndcg@10"] > 0.95 > chance + 0.25
    assert m["model"]["auc"] > 0.95 and m["model"]["pairwise_accuracy"] > 0.95
    losses = [h["val_loss"] for h in out.result.history]
    assert losses[-1] < losses[0]


def test_streamed_metrics_equal_the_in_memory_ones_on_the_same_model(folder):
    from ranker.rank.train import evaluate_model

    out = train_stream(folder, TrainConfig(epochs=1, position_correction="none"), chunk_rows=100, min_positives=1)

    whole = evaluate_model(out.result.model, load_dataset(folder, min_positives=1))
    streamed = out.result.metrics
    for name in ("model", "rule", "base"):
        assert streamed[name]["ndcg@10"] == pytest.approx(whole[name]["ndcg@10"], abs=1e-9)
        assert streamed[name]["pairwise_accuracy"] == pytest.approx(whole[name]["pairwise_accuracy"], abs=1e-9)
        assert streamed[name]["auc"] == pytest.approx(whole[name]["auc"], abs=2e-3)


def test_binned_auc_is_the_auc_of_the_scores_to_three_digits():
    rng = np.random.default_rng(5)
    y = rng.random(20_000) < 0.3
    s = rng.normal(y * 0.8, 1.0)
    pos = np.bincount(_bins(s[y]), minlength=1 << 20)
    neg = np.bincount(_bins(s[~y]), minlength=1 << 20)

    assert binned_auc(pos, neg) == pytest.approx(auc(y, s), abs=1e-3)
    assert np.all(np.diff(_bins(np.sort(s))) >= 0)  # the bins keep the scores' order, negatives too


def _change(table: pa.Table, name: str, values: pa.Array | None) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.remove_column(i) if values is None else table.set_column(i, name, values)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: _change(t, "label", None), r"missing column\(s\) label; rebuild it"),
    (lambda t: _change(t, "item_id", pa.array(np.full(t.num_rows, 0.5))),
     "column item_id is double, expected an integer"),
    (lambda t: _change(t, "label", pa.array(np.full(t.num_rows, "yes"))), "column label is string, expected a number"),
    (lambda t: _change(t, "label", pa.array(np.r_[np.zeros(t.num_rows - 1), 2.0])),
     r"row [\d,]+: label 2 is not 0 or 1"),
    (lambda t: _change(t, "recency_score", pa.array(np.r_[np.full(t.num_rows - 1, 0.5), np.nan])),
     "recency_score has 1 NaN/inf/empty value"),
    (lambda t: _change(t, "popularity_score", pa.array(np.r_[np.full(t.num_rows - 1, 0.5), 1.5])),
     r"popularity_score=1.5 is outside \[0, 1\]"),
])
def test_bad_parquet_is_refused_in_one_line_before_training(tmp_path, change, message):
    path = tmp_path / "bad.parquet"
    pq.write_table(change(lists_table(50)), path)
    out = tmp_path / "models"

    with pytest.raises(DataError, match=message) as err:
        train_stream(path, TrainConfig(epochs=1), min_positives=1)
    assert len(str(err.value).splitlines()) == 1
    assert not out.exists()


def test_lists_whose_rows_are_apart_are_refused_with_what_to_do(tmp_path):
    table = lists_table(40)
    path = tmp_path / "shuffled.parquet"
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), path)

    with pytest.raises(DataError, match="not together.*sort the data by group_id.*or pass --no-stream"):
        train_stream(path, TrainConfig(epochs=1), min_positives=1)


def test_too_few_positives_and_one_class_are_refused_as_when_loading_whole(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(lists_table(30), path)
    with pytest.raises(DataError, match=r"only \d+ positives; at least 100000 are needed"):
        train_stream(path, TrainConfig(epochs=1), min_positives=100_000)
    pq.write_table(_change(lists_table(30), "label", pa.array(np.zeros(lists_table(30).num_rows, np.int8))), path)
    with pytest.raises(DataError, match="every row is negative"):
        train_stream(path, TrainConfig(epochs=1), min_positives=1)


def test_parquet_streams_from_the_row_threshold_and_a_csv_never_does(folder, tmp_path):
    rows = pq.read_table(folder).num_rows
    assert should_stream(folder, None, min_rows=rows) and not should_stream(folder, None, min_rows=rows + 1)
    assert should_stream(folder, True, min_rows=10**9) and not should_stream(folder, False, min_rows=1)
    csv = tmp_path / "d.csv"
    csv.write_text("user_id\n")
    assert not should_stream(csv, None, min_rows=1)
    with pytest.raises(DataError, match="--stream reads Parquet"):
        should_stream(csv, True)


def test_ipw_with_positions_weights_the_pairs_and_is_recorded(folder):
    cfg = TrainConfig(epochs=1, position_correction="auto", propensities=[1.0, 0.8, 0.6, 0.5])

    out = train_stream(folder, cfg, chunk_rows=128, min_positives=1)

    assert out.result.config.position_correction == "ipw"
    none = train_stream(folder, TrainConfig(epochs=1, position_correction="auto"), chunk_rows=128, min_positives=1)
    assert none.result.config.position_correction == "none"
    assert out.result.history[0]["train_loss"] != none.result.history[0]["train_loss"]


def _train_cli(data: Path, work: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env.update(RANKER_DATA_DIR=str(work / "data"), RANKER_MODELS_DIR=str(work / "models"), PYTHONPATH=str(ROOT))
    if fault:
        env["RANKER_FAULT"] = fault
    cmd = [sys.executable, "-m", "ranker", "train", "--data", str(data), "--stream", "--stream-rows", "200",
           "--epochs", "2", "--val-split", "0.25", "--min-positives", "1", "--no-activate",
           "--position-correction", "none", "--output-dir", str(work / "models")]
    return subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two subprocesses
def test_a_crash_mid_epoch_leaves_no_checkpoint_and_a_rerun_writes_one(folder, tmp_path):
    from ranker.rank.registry import data_hash, load_checkpoint

    crashed = _train_cli(folder, tmp_path, "train:mid_epoch@5")

    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    assert "fault injected at train:mid_epoch" in crashed.stderr
    models = tmp_path / "models"
    assert not models.exists() or not any(models.iterdir())

    done = _train_cli(folder, tmp_path, None)

    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in models.glob("*.pth")) == ["ranker_v1.pth", "ranker_v1_best.pth"]
    meta = load_checkpoint(models / "ranker_v1_best.pth").meta
    assert meta["data_hash"] == data_hash(folder) and meta["data_path"] == str(folder)
    assert meta["stream"]["chunk_rows"] == 200 and meta["stream"]["rows"] < pq.read_table(folder).num_rows
    assert meta["metrics"]["evaluated_on"] == "validation" and meta["best_epoch"] in (1, 2)
