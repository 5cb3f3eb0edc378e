"""Training: bad data is refused, training is deterministic, NaN aborts, checkpoints validate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ranker import config
from ranker.rank.features import feature_columns
from ranker.rank.losses import pairwise_logistic_loss, pairwise_logistic_loss_from_pairs, same_group_pairs
from ranker.rank.train import DataError, Dataset, TrainConfig, TrainingError, evaluate_model, load_dataset, train


def synthetic_frame(n_groups=200, seed=0) -> pd.DataFrame:
    """Lists of 3 (1 positive, 2 negatives); the positive tends to score higher on features."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for pos in range(3):
            label = int(pos == 0)
            x = np.clip(rng.normal(0.6 if label else 0.4, 0.2, size=4), 0, 1)
            rows.append([g % 50, g * 3 + pos, *x, label, f"r{g}"])
    return pd.DataFrame(rows, columns=["user_id", "item_id", *feature_columns(), "label", "group_id"])


@pytest.fixture
def good_csv(tmp_path):
    path = tmp_path / "train.csv"
    synthetic_frame().to_csv(path, index=False)
    return path


def test_guide_header_with_startup_id_is_accepted(tmp_path):
    path = tmp_path / "guide.csv"
    synthetic_frame().rename(columns={"item_id": "startup_id"}).drop(columns="group_id").to_csv(path, index=False)
    data = load_dataset(path)
    assert len(data) == 600 and data.x.shape == (600, 4)
    assert int(data.groups.max()) + 1 == 50  # grouped by user without group_id


@pytest.mark.parametrize("mutate,message", [
    (lambda df: df.drop(columns="recency_score"), "missing column"),
    (lambda df: df.rename(columns={"popularity_score": "popularty_score"}), "popularty_score"),
    (lambda df: df.assign(model_score=df.model_score.where(df.index != 5, np.nan)), "NaN"),
    (lambda df: df.assign(model_score=df.model_score.where(df.index != 5, np.inf)), "NaN/inf"),
    (lambda df: df.astype({"recency_score": object}).assign(
        recency_score=lambda d: d.recency_score.where(d.index != 7, "abc")), "'abc' is not a number"),
    (lambda df: df.assign(label=df.label.where(df.index != 4, 2)), "not 0 or 1"),
    (lambda df: df.assign(diversity_score=df.diversity_score.where(df.index != 9, 1.5)), r"outside \[0, 1\]"),
    (lambda df: df.assign(label=0), "every row is negative"),
    (lambda df: df.iloc[:150], "only 50 positives"),
    (lambda df: df.iloc[:0], "no rows"),
])
def test_bad_csv_is_refused_with_a_clear_message(tmp_path, mutate, message):
    path = tmp_path / "bad.csv"
    mutate(synthetic_frame()).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(path)


def test_bad_line_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    df = synthetic_frame()
    df.loc[10, "label"] = 3
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="line 12"):
        load_dataset(path)


def test_training_is_deterministic_under_a_seed(good_csv):
    data = load_dataset(good_csv)
    a = train(data, TrainConfig(epochs=3, seed=7))
    b = train(data, TrainConfig(epochs=3, seed=7))
    c = train(data, TrainConfig(epochs=3, seed=8))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    assert a.history == b.history
    assert a.history != c.history


def test_training_learns_and_reports_epochs(good_csv):
    data = load_dataset(good_csv)
    seen = []
    result = train(data, TrainConfig(epochs=15, lr=0.01), val=data,
                   on_epoch=lambda e, t, v: seen.append((e, t, v)))
    assert [e for e, _, _ in seen] == list(range(1, 16))
    assert seen[-1][1] < seen[0][1]  # train loss went down
    assert result.metrics["model"]["auc"] > 0.75
    assert result.best_state is not None


def test_nan_loss_aborts_without_saving(good_csv, tmp_path):
    data = load_dataset(good_csv)
    data.x[0, 0] = np.nan  # a NaN slipped past the loader (e.g. an in-memory dataset)
    with pytest.raises(TrainingError, match="nothing was saved"):
        train(data, TrainConfig(epochs=2))


def test_pair_loss_used_in_training_equals_the_reference_loss():
    rng = np.random.default_rng(3)
    scores = torch.tensor(rng.normal(size=40))
    labels = rng.integers(0, 2, size=40)
    groups = rng.integers(0, 6, size=40)
    better, worse = same_group_pairs(labels, groups)
    ref = pairwise_logistic_loss(scores, torch.tensor(labels, dtype=torch.float64), torch.tensor(groups))
    got = pairwise_logistic_loss_from_pairs(scores, torch.from_numpy(better), torch.from_numpy(worse))
    assert float(got) == pytest.approx(float(ref), rel=1e-9)


def test_shuffled_labels_give_chance_auc(good_csv):
    data = load_dataset(good_csv)
    rng = np.random.default_rng(0)
    y = data.y.copy()
    rng.shuffle(y)
    shuffled = Dataset(data.x, y, data.groups, data.user_ids, data.item_ids)
    held = Dataset(*(synthetic_frame_arrays(seed=1)))
    held_y = held.y.copy()
    rng.shuffle(held_y)
    result = train(shuffled, TrainConfig(epochs=10), val=Dataset(held.x, held_y, held.groups, held.user_ids,
                                                                  held.item_ids))
    assert abs(result.metrics["model"]["auc"] - 0.5) < 0.1


def synthetic_frame_arrays(seed):
    df = synthetic_frame(seed=seed)
    return (df[feature_columns()].to_numpy(np.float32), df.label.to_numpy(np.float32),
            pd.factorize(df.group_id)[0], df.user_id.to_numpy(), df.item_id.to_numpy())


def test_unknown_arch_and_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="small, default, large"):
        TrainConfig(arch="huge")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)


@pytest.mark.parametrize("dropout_keep,weighted", [(1.0, False), (0.8, False), (0.8, True)])
def test_hand_written_step_gradients_equal_autograd(dropout_keep, weighted):
    from ranker.rank.model import RankerMLP
    from ranker.rank.train import pairwise_step_grads

    torch.manual_seed(0)
    model = RankerMLP(4).double()
    x = torch.rand(40, 4, dtype=torch.float64) * torch.tensor([1.0, 0.15, 1.0, 0.5]) + torch.tensor([0, 0.8, 0, 0])
    model.fit_input_scaling(x.numpy())  # a non-trivial standardisation, as training sets it
    better, worse = torch.randint(0, 40, (30,)), torch.randint(0, 40, (30,))
    keep = torch.rand(40, 32) < dropout_keep
    weights = torch.rand(30, dtype=torch.float64) * 5 + 1 if weighted else None  # inverse propensities
    loss = pairwise_step_grads(model, model.standardise(x), better, worse, keep, weights)
    manual = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    lin1, lin2, lin3 = model.net[0], model.net[3], model.net[5]
    h1 = torch.relu(lin1((x - model.x_mean) / model.x_scale)) * keep / (1 - model.spec.dropout)
    ref = pairwise_logistic_loss_from_pairs(lin3(torch.relu(lin2(h1)))[:, 0], better, worse, weights)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(manual[name], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # a subprocess, a retrain or a second world: not for the inner loop
def test_retrain_promotes_only_a_model_no_worse_than_the_active_one_and_the_rule(served, capsys):
    """`ranker retrain`: the candidate is compared on the promotion holdout (the latest lists) with
    the active model and the rule; a barely trained candidate is kept out, a trained one goes in."""
    from ranker.ops.pipeline import retrain
    from ranker.rank import registry, tuning
    from ranker.rank.dataset import DatasetConfig

    def cfg():
        return DatasetConfig(output=config.DATA_DIR / "re.csv", val_output=config.DATA_DIR / "re_val.csv")

    active = registry.active_version(served)
    # Unweighted training: the holdout's NDCG reads the logged labels, which carry position bias, so a
    # position-corrected candidate scores lower there than it serves (docs/quality.md, Position bias).
    weak = retrain(served, cfg(), TrainConfig(epochs=1, lr=1e-6, seed=3, position_correction="none"))
    assert weak["candidate_ndcg@10"] < weak["rule_ndcg@10"]
    assert not weak["promoted"] and "below the rule-based ranker" in weak["verdict"]
    assert registry.active_version(served) == active and weak["backup"]

    tuning.save_weights(served, {"diversity": 1.0})  # a weak rule: now the active model is the bar
    medium = retrain(served, cfg(), TrainConfig(epochs=1, lr=1e-3, seed=3, position_correction="none"))
    assert medium["rule_ndcg@10"] < medium["candidate_ndcg@10"] < medium["active_ndcg@10"]
    assert not medium["promoted"] and "below the active model" in medium["verdict"]
    assert registry.active_version(served) == active

    # The fixture's model trained on every list, the holdout's included: no candidate fairly beats it.
    # The bar becomes the medium candidate, trained like the next one but for one epoch only.
    registry.activate_version(served, medium["candidate"])
    good = retrain(served, cfg(), TrainConfig(epochs=3, lr=1e-3, seed=3, position_correction="none"))
    assert good["active_ndcg@10"] == pytest.approx(medium["candidate_ndcg@10"])
    assert good["promoted"] and good["verdict"] == "promoted", good["verdict"]
    assert registry.active_version(served) == good["candidate"]
    # the figure compared is the served checkpoint's, scored afresh on the holdout file
    holdout = load_dataset(config.DATA_DIR / "re_holdout.csv", min_positives=1)
    served_ndcg = evaluate_model(registry.load_checkpoint(registry.active_path()).model(), holdout)["model"]["ndcg@10"]
    assert good["candidate_ndcg@10"] == pytest.approx(served_ndcg)

