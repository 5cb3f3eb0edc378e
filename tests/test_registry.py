"""Model registry and hot reload: atomic files, validation, rollback, keep serving the good model."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from ranker.rank import registry
from ranker.rank.features import feature_names
from ranker.rank.model import RankerMLP


def make_checkpoint(path, seed=0, names=None, version=None):
    torch.manual_seed(seed)
    model = RankerMLP(4).eval()
    meta = {"feature_names": names or feature_names(), "input_dim": 4,
            "arch": {"hidden_dim1": 32, "hidden_dim2": 16, "dropout": 0.2},
            "metrics": {"model": {"ndcg@10": 0.5 + seed / 100}}}
    if version:
        meta["version"] = version
    registry.save_checkpoint(path, model, meta)
    return path


@pytest.fixture
def models_dir(isolated_dirs):
    return isolated_dirs["models"]


def test_hot_reload_picks_up_a_new_active_file(models_dir):
    watcher = registry.ActiveModel(path=registry.active_path())
    assert watcher.get() is None  # no file: rule fallback
    make_checkpoint(registry.active_path(), seed=1, version="v1")
    assert watcher.get().version == "v1"
    make_checkpoint(registry.active_path(), seed=2, version="v2")
    assert watcher.get().version == "v2"


def test_missing_model_logs_the_guides_message(models_dir, caplog):
    caplog.set_level(logging.WARNING)
    watcher = registry.ActiveModel(path=registry.active_path())
    assert watcher.get() is None
    assert "Ranker model not found, using rule-based ranker" in caplog.text
    assert "Ranker model not found" in watcher.reason


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "features"])
def test_bad_new_file_keeps_the_previous_model_serving(models_dir, caplog, damage):
    path = registry.active_path()
    make_checkpoint(path, seed=1, version="v1")
    watcher = registry.ActiveModel(path=path)
    assert watcher.get().version == "v1"
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(3000))
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        make_checkpoint(path, seed=3, names=["model_score", "recency", "popularity", "freshness"], version="v9")
    caplog.set_level(logging.WARNING)
    assert watcher.get().version == "v1"
    assert "still serving v1" in caplog.text


@pytest.mark.parametrize("damage,message", [
    ("truncate", "not a readable ranker checkpoint"),
    ("text", "not a readable ranker checkpoint"),
    ("foreign", "not a ranker checkpoint"),
    ("features", "retrain"),
])
def test_load_checkpoint_explains_what_is_wrong(tmp_path, damage, message):
    path = make_checkpoint(tmp_path / "c.pth")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "text":
        path.write_text("user_id,item_id\n1,2\n")
    elif damage == "foreign":
        torch.save(RankerMLP(4).state_dict(), path)
    else:
        make_checkpoint(path, names=["a", "b", "c", "d"])
    with pytest.raises(registry.CheckpointError, match=message):
        registry.load_checkpoint(path)


def test_register_activate_and_roll_back(models_dir, world_copy):
    v1 = registry.register(world_copy, make_checkpoint(models_dir / "a.pth", seed=1), activate=True)
    v2 = registry.register(world_copy, make_checkpoint(models_dir / "b.pth", seed=2), activate=True)
    assert (v1, v2) == ("v1", "v2")
    assert registry.active_version(world_copy) == "v2"
    assert registry.load_checkpoint(registry.active_path()).version == "v2"
    assert registry.rollback(world_copy) == "v1"
    assert registry.load_checkpoint(registry.active_path()).version == "v1"
    assert [v.version for v in registry.list_versions(world_copy)] == ["v1", "v2"]
    assert (models_dir / "versions" / "v2.pth").exists()  # kept as a backup


def test_activating_a_corrupt_version_is_refused_and_changes_nothing(models_dir, world_copy):
    registry.register(world_copy, make_checkpoint(models_dir / "a.pth", seed=1), activate=True)
    v2 = registry.register(world_copy, make_checkpoint(models_dir / "b.pth", seed=2))
    (models_dir / "versions" / f"{v2}.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(registry.CheckpointError):
        registry.activate_version(world_copy, v2)
    assert registry.active_version(world_copy) == "v1"
    assert registry.load_checkpoint(registry.active_path()).version == "v1"


def test_activating_what_is_already_active_records_nothing_and_repairs_the_copy(models_dir, world_copy):
    v1 = registry.register(world_copy, make_checkpoint(models_dir / "a.pth", seed=1), activate=True)
    before = len(registry.activations(world_copy))
    registry.active_path().unlink()  # as a crash between the commit and the copy leaves it
    assert registry.activate_version(world_copy, v1) is False
    assert len(registry.activations(world_copy)) == before
    assert registry.load_checkpoint(registry.active_path()).version == v1
    assert registry.activate_version(world_copy, registry.RULE) is True
    assert registry.activate_version(world_copy, registry.RULE) is False
    assert len(registry.activations(world_copy)) == before + 1


def test_rollback_without_history_says_so(models_dir, world_copy):
    with pytest.raises(registry.RegistryError, match="no earlier version"):
        registry.rollback(world_copy)


def test_serving_follows_the_active_row_and_its_version_file(models_dir, world_copy):
    watcher = registry.ActiveModel(engine=world_copy)
    assert watcher.get() is None and "no active version" in watcher.reason
    v1 = registry.register(world_copy, make_checkpoint(models_dir / "a.pth", seed=1), activate=True)
    v2 = registry.register(world_copy, make_checkpoint(models_dir / "b.pth", seed=2))
    assert watcher.get().version == v1
    registry.active_path().unlink()  # the tools' copy plays no part in serving
    assert watcher.get().version == v1
    registry.activate_version(world_copy, v2)
    assert watcher.get().version == v2
    assert registry.load_checkpoint(registry.active_path()).version == v2  # rewritten after the commit
    registry.activate_version(world_copy, registry.RULE)
    assert watcher.get() is None and not registry.active_path().exists()


def test_a_version_file_holding_another_version_is_not_served_as_it(models_dir, world_copy, caplog):
    v1 = registry.register(world_copy, make_checkpoint(models_dir / "a.pth", seed=1), activate=True)
    watcher = registry.ActiveModel(engine=world_copy)
    assert watcher.get().version == v1
    make_checkpoint(registry.version_path(v1), seed=5, version="v7")
    caplog.set_level(logging.WARNING)
    assert watcher.get().version == v1
    assert "holds v7, not v1" in caplog.text


def test_rollback_is_one_activation(models_dir, world_copy):
    for seed in (1, 2, 3):
        registry.register(world_copy, make_checkpoint(models_dir / f"{seed}.pth", seed=seed), activate=True)
    assert registry.rollback(world_copy) == "v2"
    assert registry.rollback(world_copy) == "v1"
    assert registry.active_version(world_copy) == "v1"
    with pytest.raises(registry.RegistryError, match="no earlier version"):
        registry.rollback(world_copy)
    assert [a.version for a in registry.activations(world_copy)] == ["v1", "v2", "v3", "v2", "v1"]
