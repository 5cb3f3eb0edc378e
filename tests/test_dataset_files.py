"""ranker.rank.dataset_files: the dataset preview and the held-out data on real CSV files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranker.rank.dataset_files import load_held_out, preview_dataset, train_csv, val_csv
from ranker.rank.features import feature_columns


def write_dataset(path, lists: int, per_list: int = 4, seed: int = 0) -> pd.DataFrame:
    """A valid training CSV: ``lists`` groups of ``per_list`` rows, one positive in each."""
    rng = np.random.default_rng(seed)
    n = lists * per_list
    df = pd.DataFrame({"user_id": np.repeat(np.arange(lists), per_list), "item_id": np.arange(n),
                       **{c: rng.random(n).round(4) for c in feature_columns()},
                       "label": np.tile([1] + [0] * (per_list - 1), lists),
                       "group_id": np.repeat(np.arange(lists), per_list)})
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


def test_a_preview_reads_the_rows_label_balance_head_and_a_sample(tmp_path):
    df = write_dataset(tmp_path / "train.csv", lists=30)

    shown = preview_dataset(tmp_path / "train.csv")

    assert (shown.rows, shown.complete, shown.positives, shown.missing) == (120, True, 30, [])
    assert shown.positive_share == 0.25
    assert shown.size_bytes == (tmp_path / "train.csv").stat().st_size
    pd.testing.assert_frame_equal(shown.head, df.head(20))
    assert len(shown.sample) == 120 and sorted(shown.sample["item_id"]) == df["item_id"].tolist()


def test_a_preview_of_a_big_file_reads_only_the_first_rows(tmp_path):
    df = write_dataset(tmp_path / "train.csv", lists=30)

    shown = preview_dataset(tmp_path / "train.csv", rows=50, sample=10)

    assert (shown.rows, shown.complete) == (50, False)
    assert shown.positives == int(df["label"].head(50).sum()) == 13
    assert len(shown.sample) == 10 and shown.sample["item_id"].max() < 50


def test_a_preview_names_the_columns_training_would_miss(tmp_path):
    write_dataset(tmp_path / "train.csv", lists=3)
    renamed = pd.read_csv(tmp_path / "train.csv").rename(columns={"label": "clicked"})
    renamed.drop(columns=[feature_columns()[0]]).to_csv(tmp_path / "train.csv", index=False)

    shown = preview_dataset(tmp_path / "train.csv")

    assert shown.missing == [feature_columns()[0], "label"]
    assert shown.positives == 0


def test_there_is_no_preview_without_a_file(tmp_path):
    assert preview_dataset(tmp_path / "none.csv") is None


def test_held_out_data_is_the_validation_file_else_the_training_file(isolated_dirs):
    write_dataset(train_csv(), lists=12, seed=1)
    assert load_held_out().path == train_csv()

    write_dataset(val_csv(), lists=5, seed=2)
    held = load_held_out()

    assert (held.path, held.lists, len(held.data)) == (val_csv(), 5, 20)


def test_an_unreadable_validation_file_falls_back_to_the_training_file(isolated_dirs):
    write_dataset(train_csv(), lists=12)
    val_csv().write_text("user_id,item_id\n1,2\n")
    held = load_held_out()
    assert (held.path, held.lists) == (train_csv(), 12)


@pytest.mark.usefixtures("isolated_dirs")
def test_there_is_no_held_out_data_without_a_dataset():
    assert load_held_out() is None


def write_parquet_dataset(path, lists: int, per_list: int = 4) -> pd.DataFrame:
    """The same rows as :func:`write_dataset`, as a Parquet folder partitioned by day (as
    ``ranker dataset --format parquet`` writes it), two days of lists."""
    import pyarrow as pa

    from ranker.rank.dataset_columnar import _write_parquet_frame

    rows = path.parent / f"{path.stem}-rows.tmp"
    df = write_dataset(rows, lists, per_list)
    rows.unlink()
    days = np.repeat(np.where(np.arange(lists) < lists // 2, "2025-11-01", "2025-11-02"), per_list)
    df["event_time"] = pd.to_datetime(days) + pd.to_timedelta(np.arange(len(df)), unit="s")
    _write_parquet_frame(pa.Table.from_pandas(df, preserve_index=False), path)
    return df


def test_a_preview_reads_a_parquet_folder_and_counts_its_rows_from_the_metadata(tmp_path):
    df = write_parquet_dataset(tmp_path / "train.parquet", lists=30)
    assert sorted(p.name for p in (tmp_path / "train.parquet").iterdir()) == [
        "event_date=2025-11-01", "event_date=2025-11-02"]

    shown = preview_dataset(tmp_path / "train.parquet", rows=50)

    assert (shown.rows, shown.complete, shown.total_rows, shown.missing) == (50, False, 120, [])
    assert "event_date" not in shown.head.columns
    assert shown.size_bytes == sum(p.stat().st_size for p in (tmp_path / "train.parquet").rglob("*.parquet"))
    assert sorted(shown.sample["item_id"]) == sorted(shown.head["item_id"].tolist() + list(range(20, 50)))
    assert shown.positives == int(df["label"].iloc[:50].sum())


def test_an_unreadable_parquet_dataset_says_how_to_rebuild_it(tmp_path):
    from ranker.rank.train import DataError

    (tmp_path / "train.parquet").mkdir()
    (tmp_path / "train.parquet" / "part-0.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="ranker dataset --output"):
        preview_dataset(tmp_path / "train.parquet")


def test_the_latest_built_format_is_the_training_data(isolated_dirs):
    import os

    from ranker.rank.dataset_files import train_path, val_path

    assert train_path() == train_csv()  # nothing built yet
    write_dataset(train_csv(), lists=12)
    write_parquet_dataset(train_path("parquet"), lists=8)
    os.utime(train_csv(), (1_000_000, 1_000_000))
    assert train_path() == train_path("parquet") and val_path() == val_csv().with_suffix(".parquet")
    held = load_held_out()
    assert (held.path, held.lists) == (train_path("parquet"), 8)
    write_dataset(train_csv(), lists=12)  # rebuilt as CSV: newest again
    assert train_path() == train_csv() and val_path() == val_csv()
    with pytest.raises(ValueError, match="csv, parquet"):
        train_path("json")
