"""Training with a listwise loss (``ranker train --loss listnet|lambdaloss``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranker import config
from ranker.cli.main import build_parser
from ranker.rank.train import (
    LAMBDA_MAX_LIST,
    Dataset,
    TrainConfig,
    _padded_lists,
    checkpoint_meta,
    estimate_memory,
    train,
)


def lists_dataset(n_lists=150, length=8, seed=0) -> Dataset:
    """Lists of ``length`` rows, two positives each; positives tend to score higher on the features."""
    rng = np.random.default_rng(seed)
    n = n_lists * length
    y = np.tile(np.r_[np.ones(2), np.zeros(length - 2)], n_lists).astype(np.float32)
    x = np.clip(rng.normal(0.5 + 0.15 * (2 * y[:, None] - 1), 0.2, size=(n, 4)), 0, 1).astype(np.float32)
    groups = np.repeat(np.arange(n_lists), length)
    return Dataset(x, y, groups, groups % 40, np.arange(n))


@pytest.mark.parametrize("loss", ["listnet", "lambdaloss"])
def test_listwise_training_learns_and_its_loss_goes_down(loss):
    data, val = lists_dataset(seed=0), lists_dataset(seed=1)

    result = train(data, TrainConfig(loss=loss, epochs=10, lr=0.01), val=val)

    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert result.metrics["model"]["ndcg@10"] > 0.9  # an untrained net sits near the random order's 0.6
    assert result.best_state is not None


@pytest.mark.parametrize("loss", ["listnet", "lambdaloss"])
def test_listwise_training_is_deterministic_under_a_seed(loss):
    data = lists_dataset()

    a, b = (train(data, TrainConfig(loss=loss, epochs=2, seed=5)) for _ in range(2))

    assert a.history == b.history
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_the_loss_is_recorded_in_the_checkpoint_meta():
    result = train(lists_dataset(), TrainConfig(loss="listnet", epochs=1))

    assert checkpoint_meta(result, None, None)["train_params"]["loss"] == "listnet"


def test_an_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="pairwise, listnet, lambdaloss"):
        TrainConfig(loss="listmle")


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_loss_flag_defaults_to_pairwise_and_takes_the_listwise_losses(command):
    parser = build_parser()

    assert parser.parse_args([command]).loss == config.DEFAULTS.loss == "pairwise"
    assert parser.parse_args([command, "--loss", "lambdaloss"]).loss == "lambdaloss"
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--loss", "listmle"])


def test_lambdaloss_cuts_long_lists_into_pieces_that_cover_each_row_once():
    n = 3 * LAMBDA_MAX_LIST + 10
    y = (np.arange(n) % 3 == 0).astype(np.float32)
    data = Dataset(np.zeros((n + 4, 4), np.float32), np.r_[y, 1, 0, 1, 1].astype(np.float32),
                   np.r_[np.zeros(n), 1, 1, 2, 2].astype(np.int64), np.zeros(n + 4), np.arange(n + 4))

    lists = _padded_lists(data, np.arange(n + 4), "lambdaloss", np.random.default_rng(0))
    whole = _padded_lists(data, np.arange(n + 4), "listnet", np.random.default_rng(0))

    assert lists.shape[1] <= LAMBDA_MAX_LIST
    assert sorted(lists[lists >= 0].tolist()) == list(range(n + 2))  # the all-positive list 2 is left out
    assert whole.shape == (2, n)  # ListNet keeps the long list whole


def test_lambdaloss_memory_estimate_counts_its_list_matrices():
    data = lists_dataset(length=60)

    pairwise = estimate_memory(data, TrainConfig())
    lambdaloss = estimate_memory(data, TrainConfig(loss="lambdaloss"))

    assert lambdaloss.pair_bytes > pairwise.pair_bytes
