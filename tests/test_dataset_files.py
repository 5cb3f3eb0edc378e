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
