"""The base-model fit cache: the same model on the same history is fitted once, anything else refits."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ranker import config
from ranker.base import fits, make_base_model
from ranker.base.base import BaseRecommender, TrainingData
from ranker.rank import dataset as ds


@pytest.fixture
def cache_on(isolated_dirs, monkeypatch):
    monkeypatch.setattr(config, "FIT_CACHE", True)
    return fits.cache_dir()


@pytest.fixture
def fit_count(monkeypatch) -> list[str]:
    """The names of the models actually fitted (not loaded from the cache)."""
    counted: list[str] = []
    real = BaseRecommender.fit

    def counting(self, data):
        counted.append(self.name)
        return real(self, data)

    monkeypatch.setattr(BaseRecommender, "fit", counting)
    return counted


def _history(engine) -> TrainingData:
    cutoff = pd.Timestamp(pd.read_sql("SELECT max(created_at) AS t FROM interactions", engine)["t"][0])
    return TrainingData.from_engine(engine, (cutoff - pd.Timedelta(days=10)).to_pydatetime())


@pytest.mark.parametrize("name", ["popularity", "als", "two-tower", "ensemble"])
def test_a_cached_fit_scores_exactly_as_the_fit_it_saved(small_world_engine, cache_on, fit_count, name):
    data = _history(small_world_engine)
    first = fits.fit(make_base_model(name), data)
    fitted = list(fit_count)  # the ensemble fits its members too
    again = fits.fit(make_base_model(name), data)
    assert fitted.count(name) == 1 and fit_count == fitted
    assert len(list(cache_on.glob("*.npz"))) == 1
    users = [u for u in first.user_ids_[:20] if first.knows_user(int(u))]
    assert users
    for u in users:
        np.testing.assert_array_equal(first.score(int(u), first.item_ids_), again.score(int(u), first.item_ids_))


def test_other_history_or_parameters_refit(small_world_engine, cache_on, fit_count):
    data = _history(small_world_engine)
    fits.fit(make_base_model("popularity"), data)
    later = TrainingData.from_engine(small_world_engine, data.cutoff + timedelta(days=1))
    fits.fit(make_base_model("popularity"), later)
    fewer = TrainingData(data.interactions.iloc[1:].reset_index(drop=True), data.items, data.users, data.cutoff)
    fits.fit(make_base_model("popularity"), fewer)
    fits.fit(make_base_model("als").set_params(factors=8), data)
    fits.fit(make_base_model("als"), data)
    assert fit_count == ["popularity", "popularity", "popularity", "als", "als"]
    assert len(set(p.name.rsplit("-", 1)[1] for p in cache_on.glob("*.npz"))) == 5


def test_an_unreadable_entry_is_refitted_and_replaced(small_world_engine, cache_on, fit_count):
    data = _history(small_world_engine)
    fits.fit(make_base_model("popularity"), data)
    (entry,) = cache_on.glob("*.npz")
    entry.write_bytes(b"not a model")
    model = fits.fit(make_base_model("popularity"), data)
    assert fit_count == ["popularity", "popularity"]
    assert BaseRecommender.load(entry).version_ == model.version_


def test_the_cache_keeps_the_newest_entries_only(tmp_path):
    for n in range(fits.KEEP + 3):
        path = tmp_path / f"m-{n}.npz"
        path.write_bytes(b"x")
        import os

        os.utime(path, (1_000_000 + n, 1_000_000 + n))
    fits._evict(tmp_path)
    left = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("*.npz"))
    assert left == list(range(3, fits.KEEP + 3))


def test_rebuilding_a_dataset_reuses_every_fit_and_writes_the_same_rows(world_copy, cache_on, fit_count, tmp_path):
    def build(name: str) -> pd.DataFrame:
        cfg = ds.DatasetConfig(output=tmp_path / f"{name}.csv", base_model="als", window_days=21, refit_days=7)
        ds.build_dataset(world_copy, cfg)  # a copy: a build records itself in the world's settings
        return pd.read_csv(cfg.output)

    first = build("first")
    fitted = len(fit_count)
    assert fitted == 3  # one per 7-day period of the 21-day window
    again = build("again")
    assert len(fit_count) == fitted
    pd.testing.assert_frame_equal(first, again)


def test_with_the_cache_off_every_build_fits(world_copy, isolated_dirs, fit_count, tmp_path):
    assert config.FIT_CACHE is False  # the test session's default (conftest)
    for name in ("a", "b"):
        ds.build_dataset(world_copy, ds.DatasetConfig(output=tmp_path / f"{name}.csv", base_model="als",
                                                              window_days=7, refit_days=7))
    assert fit_count == ["als", "als"]
    assert not fits.cache_dir().exists()
