"""Training memory is bounded: pairs are sampled under a cap, and a run that would not fit is refused.

The figures (peak RSS on 10^6 rows in 271 lists) are in ``bench/train_memory.py``; here
only behaviour: how many pairs, which ones, and the one-line refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ranker.cli import main
from ranker.cli.main import build_parser
from ranker.faults import FAULT_EXIT_CODE
from ranker.rank.features import feature_columns
from ranker.rank.losses import count_sampled_pairs, pairwise_logistic_loss, same_group_pairs, sample_pairs
from ranker.rank.memory import MemoryLimitError, format_size, parse_size
from ranker.rank.train import Dataset, TrainConfig, estimate_memory, train

ROOT = Path(__file__).resolve().parents[1]


def one_list(positives: int, negatives: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and group ids of a single list, positives and negatives interleaved."""
    labels = np.zeros(positives + negatives)
    labels[np.random.default_rng(0).choice(len(labels), positives, replace=False)] = 1
    return labels, np.zeros(len(labels), dtype=np.int64)


def lists_dataset(sizes: list[int], seed: int = 0) -> Dataset:
    """Lists of the given sizes, a third of the rows positive; positives score higher on features."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    y = (rng.random(len(groups)) < 1 / 3).astype(np.float32)
    x = np.clip(rng.normal(0.4 + 0.2 * y[:, None], 0.2, (len(groups), 4)), 0, 1).astype(np.float32)
    return Dataset(x, y, groups, groups, np.arange(len(groups)))


def test_a_list_of_2000_rows_gives_each_positive_cap_distinct_negatives():
    labels, groups = one_list(positives=500, negatives=1500)  # 750,000 pairs in all

    better, worse = sample_pairs(labels, groups, cap=64, rng=1)

    assert len(better) == 500 * 64 == count_sampled_pairs(labels, groups, 64).sum()
    assert (labels[better] == 1).all() and (labels[worse] == 0).all()
    per_positive = pd.Series(worse).groupby(better)
    assert per_positive.size().eq(64).all() and per_positive.nunique().eq(64).all()


def test_small_lists_keep_exactly_all_their_pairs():
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 40, 600) * 3  # about 15 rows a list, ids not contiguous
    labels = rng.integers(0, 2, 600)

    sampled = sample_pairs(labels, groups, cap=64, rng=9)

    for got, want in zip(sampled, same_group_pairs(labels, groups)):
        np.testing.assert_array_equal(got, want)


def test_graded_labels_cap_each_row_and_keep_rows_under_the_cap_whole():
    # One list: a 2, three 1s, five 0s. With cap 4 the 2 has 8 lower rows (capped at 4),
    # each 1 has 5 lower rows (capped at 4); with cap 5 the 1s keep all five.
    labels = np.array([2, 1, 1, 1, 0, 0, 0, 0, 0])
    groups = np.zeros(9, dtype=np.int64)

    for cap, per_row in ((4, [4, 4, 4, 4]), (5, [5, 5, 5, 5]), (8, [8, 5, 5, 5])):
        better, worse = sample_pairs(labels, groups, cap, rng=0)
        assert (labels[better] > labels[worse]).all()
        assert np.bincount(better, minlength=4)[:4].tolist() == per_row
        assert len(set(zip(better, worse))) == len(better)  # no pair twice
        assert count_sampled_pairs(labels, groups, cap).tolist() == [sum(per_row)]


def test_sampling_is_deterministic_under_a_seed_and_varies_with_it():
    labels, groups = one_list(positives=50, negatives=300)

    a, b, c = (sample_pairs(labels, groups, 16, rng=seed) for seed in (5, 5, 6))

    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_each_negative_is_drawn_equally_often():
    labels, groups = one_list(positives=1, negatives=10)
    rng = np.random.default_rng(0)
    drawn = np.zeros(len(labels))
    for _ in range(4000):
        _, worse = sample_pairs(labels, groups, cap=3, rng=rng)
        np.add.at(drawn, worse, 1)

    shares = drawn[labels == 0] / 4000
    np.testing.assert_allclose(shares, 0.3, atol=0.03)  # 3 of 10 each time


def test_reported_loss_on_small_lists_is_the_loss_over_all_pairs():
    data = lists_dataset([3] * 300)

    result = train(data, TrainConfig(epochs=2, seed=3))

    with torch.no_grad():
        scores = result.model.eval()(torch.from_numpy(data.x)).double()
    full = pairwise_logistic_loss(scores, torch.from_numpy(data.y).double(), torch.from_numpy(data.groups))
    assert result.history[-1]["train_loss"] == pytest.approx(float(full), rel=1e-6)


def test_training_on_lists_larger_than_the_cap_still_learns():
    data = lists_dataset([2000] * 3 + [400] * 5)  # 3 lists far over a cap of 8 negatives a positive

    result = train(data, TrainConfig(epochs=3, lr=0.01, max_pairs_per_positive=8), val=lists_dataset([500] * 4, 1))

    assert result.metrics["model"]["auc"] > 0.75
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_the_estimate_counts_pairs_after_the_cap_and_grows_with_the_cap():
    data = lists_dataset([2000, 300])

    small, large = (estimate_memory(data, TrainConfig(max_pairs_per_positive=cap)) for cap in (8, 512))

    assert small.pairs == count_sampled_pairs(data.y, data.groups, 8).sum()
    assert small.pairs < large.pairs <= len(same_group_pairs(data.y, data.groups)[0])
    assert large.bytes > small.bytes


def test_training_over_the_memory_limit_is_refused_before_it_starts():
    data = lists_dataset([200] * 10)
    epochs = []

    with pytest.raises(MemoryLimitError) as refused:
        train(data, TrainConfig(max_memory=1024), on_epoch=lambda *a: epochs.append(a))

    message = str(refused.value)
    assert message.startswith("training needs about ") and "(2,000 rows, " in message
    assert "but --max-memory is 1 KiB; raise --max-memory" in message and "\n" not in message
    assert isinstance(refused.value, ValueError) and epochs == []


def test_cli_refuses_a_tiny_max_memory_with_one_line_and_status_2(isolated_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANKER_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    from ranker.data.db import _cached_engine

    _cached_engine.cache_clear()
    data = lists_dataset([3] * 200)
    csv = tmp_path / "train.csv"
    frame = pd.DataFrame(data.x, columns=feature_columns())
    frame.insert(0, "item_id", data.item_ids)
    frame.insert(0, "user_id", data.groups)
    frame.assign(label=data.y.astype(int), group_id=data.groups).to_csv(csv, index=False)

    status = main(["train", "--data", str(csv), "--epochs", "1", "--max-memory", "1M"])

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2
    assert len(errors) == 1 and "but --max-memory is 1 MiB; raise --max-memory" in errors[0]
    assert not list(isolated_dirs["models"].glob("*.pth"))
    _cached_engine.cache_clear()


@pytest.mark.parametrize("text,size", [("2G", 2 * 1024**3), ("512M", 512 * 1024**2), ("1.5GiB", 3 * 1024**3 // 2),
                                       ("64k", 65536), ("4096", 4096), (" 2 gb ", 2 * 1024**3)])
def test_memory_sizes_read_as_operators_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2X", "", "-1G", "G", "0"])
def test_unreadable_memory_sizes_are_refused(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


def test_sizes_print_in_binary_units():
    assert [format_size(n) for n in (3.1 * 1024**3, 2 * 1024**3, 512 * 1024**2, 1024)] == [
        "3.1 GiB", "2.0 GiB", "512 MiB", "1 KiB"]


@pytest.mark.parametrize("value", ["1.5", "1", "-0.1", "nan", "x"])
def test_val_split_outside_zero_to_one_is_refused_by_the_parser(value, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["train", "--val-split", value])

    assert exited.value.code == 2
    assert "argument --val-split:" in capsys.readouterr().err


def test_val_split_accepts_zero_and_shares_below_one():
    assert build_parser().parse_args(["train", "--val-split", "0"]).val_split == 0.0
    assert build_parser().parse_args(["train", "--val-split", "0.25"]).val_split == 0.25


@pytest.mark.slow  # a subprocess
def test_a_fault_after_an_epoch_ends_the_run_there(tmp_path):
    script = (
        "import numpy as np\n"
        "from ranker.rank.train import Dataset, TrainConfig, train\n"
        "g = np.arange(300) // 3\n"
        "y = (np.arange(300) % 3 == 0).astype(np.float32)\n"
        "x = np.random.default_rng(0).random((300, 4)).astype(np.float32)\n"
        "train(Dataset(x, y, g, g, np.arange(300)), TrainConfig(epochs=5),\n"
        "      on_epoch=lambda e, t, v: print('epoch', e, flush=True))\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RANKER_")},
           "RANKER_FAULT": "train:after_epoch@2"}
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)

    assert run.returncode == FAULT_EXIT_CODE
    assert run.stdout.split() == ["epoch", "1", "epoch", "2"]
    assert "fault injected at train:after_epoch" in run.stderr
