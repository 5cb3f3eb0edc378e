"""Checkpoints are validated by value, and activation is atomic with the registry.

A checkpoint whose weights are not finite, whose scores on feature vectors in [0, 1] are
absurd, or whose features are not the server's is refused wherever a model is loaded.
The registry's active row is what serves: a crash at any step of ``ranker models
activate`` leaves ``ranker models list``, the served model and ``rollback`` in agreement.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest
import torch

from ranker.faults import FAULT_EXIT_CODE
from ranker.rank import registry
from ranker.rank.features import feature_names
from ranker.rank.model import RankerMLP
from ranker.rank.spec import MAX_ABS_SCORE
from ranker.serving.service import Service
from tests.conftest import ranker_env
from tests.test_serve import engaged_developer


def good_checkpoint(path, seed=0, version=None):
    torch.manual_seed(seed)
    meta = {"feature_names": feature_names(), "metrics": {}}
    if version:
        meta["version"] = version
    registry.save_checkpoint(path, RankerMLP(len(feature_names())).eval(), meta)
    return path


def damaged_checkpoint(path, damage, version=None):
    """A checkpoint that loads into the right shape but must not be served."""
    torch.manual_seed(0)
    model = RankerMLP(len(feature_names())).eval()
    names = feature_names()
    with torch.no_grad():
        if damage == "nan":
            model.net[3].weight[0, 0] = float("nan")
        elif damage == "inf":
            model.net[5].bias[0] = float("inf")
        elif damage == "huge":  # finite weights, scores around 1e9 on features in [0, 1]
            for layer in (model.net[0], model.net[3], model.net[5]):
                layer.weight.mul_(1e3)
                layer.bias.abs_().add_(1.0).mul_(1e3)
        elif damage == "zero_scale":  # finite, but the standardisation divides by zero
            model.x_scale[0] = 0.0
        elif damage == "reordered":
            names = names[::-1]
        else:
            raise AssertionError(damage)
    meta = {"feature_names": names, "metrics": {}, **({"version": version} if version else {})}
    registry.save_checkpoint(path, model, meta)
    return path


@pytest.mark.parametrize("damage,message", [
    ("nan", "weight(s) that are not finite"),
    ("inf", "weight(s) that are not finite"),
    ("huge", f"outside ±{MAX_ABS_SCORE:g}"),
    ("zero_scale", "non-finite scores"),
    ("reordered", "trained on features"),
])
def test_load_checkpoint_refuses_a_model_that_cannot_be_served(tmp_path, damage, message):
    path = damaged_checkpoint(tmp_path / "bad.pth", damage)
    with pytest.raises(registry.CheckpointError, match=re.escape(message)) as caught:
        registry.load_checkpoint(path)
    text = str(caught.value)
    assert "\n" not in text
    assert "ranker train" in text and "ranker models activate" in text  # says what to do


def test_a_good_checkpoint_scores_the_probe_within_bounds(tmp_path):
    ckpt = registry.load_checkpoint(good_checkpoint(tmp_path / "good.pth"))
    assert ckpt.spec.input_dim == len(feature_names())


def test_register_refuses_a_nan_checkpoint_and_writes_nothing(isolated_dirs, world_copy):
    bad = damaged_checkpoint(isolated_dirs["models"] / "nan.pth", "nan")
    with pytest.raises(registry.CheckpointError, match="not finite"):
        registry.register(world_copy, bad, activate=True)
    assert registry.list_versions(world_copy) == []
    assert not registry.versions_dir().exists() or not any(registry.versions_dir().iterdir())
    assert not registry.active_path().exists()


def test_hot_reload_keeps_the_good_model_when_a_nan_file_appears(tmp_path, caplog):
    path = good_checkpoint(tmp_path / "active.pth", version="v1")
    watcher = registry.ActiveModel(path=path)
    assert watcher.get().version == "v1"
    damaged_checkpoint(path, "nan", version="v2")
    caplog.set_level(logging.WARNING)
    assert watcher.get().version == "v1"
    assert "not finite" in caplog.text and "still serving v1" in caplog.text


def test_server_keeps_its_model_when_the_active_versions_file_turns_bad(served, caplog):
    uid = engaged_developer(served)
    svc = Service(served)
    assert svc.recommend(uid, "developer-startup", 5).model_version == "v1"
    damaged_checkpoint(registry.version_path("v1"), "nan", version="v1")
    caplog.set_level(logging.WARNING)
    assert svc.recommend(uid, "developer-startup", 5).model_version == "v1"
    assert "still serving v1" in caplog.text
    fresh = Service(served)  # a process that starts now has no good model to keep: the rule, and why
    rec = fresh.recommend(uid, "developer-startup", 5)
    assert rec.model_version == "rule" and "not finite" in rec.fallback_reason


def test_the_server_follows_the_registry_row_not_active_pth(served):
    uid = engaged_developer(served)
    v2 = _register_negated_copy(served, "v1")
    registry.activate_version(served, v2)
    registry.active_path().write_bytes(registry.version_path("v1").read_bytes())  # a stale copy
    assert Service(served).recommend(uid, "developer-startup", 5).model_version == v2
    registry.active_path().write_bytes(b"not a checkpoint")
    assert Service(served).recommend(uid, "developer-startup", 5).model_version == v2
    registry.activate_version(served, registry.RULE)
    assert Service(served).recommend(uid, "developer-startup", 5).model_version == "rule"
    assert not registry.active_path().exists()


def test_activation_rewrites_active_pth_after_the_commit(served):
    v2 = _register_negated_copy(served, "v1")
    registry.activate_version(served, v2)
    assert registry.load_checkpoint(registry.active_path()).version == v2
    assert registry.rollback(served) == "v1"
    assert registry.load_checkpoint(registry.active_path()).version == "v1"
    assert registry.active_version(served) == "v1"


# --- The CLI, in processes of its own ------------------------------------------------------


def _register_negated_copy(engine, version: str) -> str:
    """Register a visibly different model (``version``'s weights negated) as the next version."""
    ckpt = registry.load_checkpoint(registry.version_path(version))
    model = ckpt.model()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    src = registry.models_dir() / "negated.pth"
    registry.save_checkpoint(src, model, {k: v for k, v in ckpt.meta.items() if k != "version"})
    return registry.register(engine, src)


def _ranker(env, *args):
    return subprocess.run([sys.executable, "-m", "ranker", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _listed_active(env) -> str | None:
    out = _ranker(env, "models", "list", "--json")
    assert out.returncode == 0, out.stderr
    active = [row["version"] for row in json.loads(out.stdout) if row["active"]]
    assert len(active) <= 1
    return active[0] if active else None


def _served_version(engine, uid: int) -> str:
    """The version a server starting now scores with (a new Service loads the model afresh)."""
    return Service(engine).recommend(uid, "developer-startup", 5).model_version


@pytest.mark.slow
def test_models_activate_refuses_a_nan_version_in_one_line(served, tmp_path):
    uid = engaged_developer(served)
    v2 = _register_negated_copy(served, "v1")
    damaged_checkpoint(registry.version_path(v2), "nan", version=v2)  # the file went bad after registration
    env = ranker_env(str(served.url), registry.models_dir())
    out = _ranker(env, "models", "activate", v2)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "not finite" in out.stderr and "ranker models activate" in out.stderr
    assert _listed_active(env) == "v1"
    assert _served_version(served, uid) == "v1"


@pytest.mark.slow
@pytest.mark.parametrize("point,active_after", [
    ("activate:before_commit", "v1"),
    ("activate:after_commit", "v2"),
    ("activate:after_swap", "v2"),
])
def test_a_crash_while_activating_leaves_list_server_and_rollback_in_agreement(served, point, active_after):
    uid = engaged_developer(served)
    assert _register_negated_copy(served, "v1") == "v2"
    env = ranker_env(str(served.url), registry.models_dir())

    crashed = _ranker({**env, "RANKER_FAULT": point}, "models", "activate", "v2")
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    assert _listed_active(env) == active_after
    assert _served_version(served, uid) == active_after

    back = _ranker(env, "models", "rollback")
    if active_after == "v1":  # the activation never happened: nothing to roll back to
        assert back.returncode == 2 and "no earlier version" in back.stderr
    else:
        assert back.returncode == 0, back.stderr
        assert back.stdout.strip() == "rolled back; active: v1"
    assert registry.active_version(served) == "v1"  # what `models list` marks
    assert _served_version(served, uid) == "v1"


@pytest.mark.slow
def test_a_crash_before_registering_a_trained_model_leaves_the_registry_and_server_as_they_were(served, tmp_path):
    uid = engaged_developer(served)
    env = ranker_env(str(served.url), registry.models_dir())
    out = tmp_path / "out"
    train = ("train", "--data", str(tmp_path / "data" / "ranker_train.csv"), "--epochs", "1",
             "--min-positives", "1", "--output-dir", str(out), "--activate")

    crashed = _ranker({**env, "RANKER_FAULT": "train:before_register"}, *train)
    assert crashed.returncode == FAULT_EXIT_CODE, crashed.stderr
    assert (out / "ranker_v1.pth").is_file()  # written, never registered
    assert [v.version for v in registry.list_versions(served)] == ["v1"]
    assert _served_version(served, uid) == "v1"

    again = _ranker(env, *train)  # the same command, run again, completes
    assert again.returncode == 0, again.stderr
    assert [v.version for v in registry.list_versions(served)] == ["v1", "v2"]
    assert _served_version(served, uid) == "v2"
