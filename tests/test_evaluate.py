"""End-to-end time-split evaluation: base order vs rule rerank vs neural rerank."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from ranker import keys
from ranker.cli import main
from ranker.data.catalog import Catalog
from ranker.data.db import get_setting, make_engine, put_setting, session_scope, table_counts
from ranker.data.importing import ML100K_GENRES, import_movielens
from ranker.evaluation.evaluate import (
    METRICS,
    ORDERS,
    evaluate_end_to_end,
    mean_interval,
    order_intervals,
    parse_time_split,
    split_points,
    top_k_metrics,
)
from ranker.rank.train import TrainConfig

START = datetime(1998, 1, 1)


def simulate_ml100k(folder: Path, n_users: int = 150, n_items: int = 160, per_user: int = 60,
                    sessions: int = 4, days: int = 90, seed: int = 0) -> Path:
    """A latent-factor world written as ml-100k files (``u.data``, ``u.item``).

    Users rate in ``sessions`` bursts spread over ``days``; they pick movies with
    probability growing with affinity, and rate them by affinity plus noise, so about
    half of the ratings are 4 or 5. A movie's first two genres follow its strongest
    latent dimensions.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    dim = 6
    users = rng.normal(size=(n_users, dim))
    items = rng.normal(size=(n_items, dim))
    affinity = users @ items.T / np.sqrt(dim)
    rows = []
    for u in range(n_users):
        starts = np.sort(rng.uniform(0, days * 86400, sessions))
        seen = np.zeros(n_items, dtype=bool)
        for t0 in starts:
            pool = np.flatnonzero(~seen)
            p = np.exp(1.5 * affinity[u, pool])
            chosen = rng.choice(pool, size=per_user // sessions, replace=False, p=p / p.sum())
            seen[chosen] = True
            stars = np.clip(np.round(3.4 + 1.2 * affinity[u, chosen] + rng.normal(0, 0.7, len(chosen))), 1, 5)
            base = int((START - datetime(1970, 1, 1)).total_seconds() + t0)
            rows += [(u + 1, i + 1, int(r), base + 30 * j) for j, (i, r) in enumerate(zip(chosen, stars))]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    lines = []
    for i in range(n_items):
        flags = ["0"] * len(ML100K_GENRES)
        for g in np.argsort(-items[i])[:2]:
            flags[1 + int(g)] = "1"
        released = START - timedelta(days=int(rng.integers(0, 3000)))
        lines.append("|".join([str(i + 1), f"Film {i + 1} ({released.year})", released.strftime("%d-%b-%Y"),
                               "", "", *flags]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A simulated ml-100k-format data set imported once; evaluations only read it."""
    root = tmp_path_factory.mktemp("evaluate")
    engine = make_engine(f"sqlite:///{root / 'ml.db'}")
    import_movielens(engine, simulate_ml100k(root / "ml"))
    yield engine
    engine.dispose()


# --- Pure pieces -----------------------------------------------------------------------


def test_parse_time_split_accepts_three_fractions_summing_to_one() -> None:
    assert parse_time_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert parse_time_split([0.6, 0.2, 0.2]) == (0.6, 0.2, 0.2)


@pytest.mark.parametrize("text", ["0.8,0.1", "0.8,0.2,0", "0.5,0.3,0.3", "a,b,c", "0.8,nan,0.1"])
def test_parse_time_split_rejects_bad_fractions(text: str) -> None:
    with pytest.raises(ValueError, match="--time-split"):
        parse_time_split(text)


def test_split_points_cut_at_quantiles_of_interaction_times() -> None:
    times = np.datetime64("2024-01-01", "us") + np.arange(100) * np.timedelta64(3600, "s")
    first, t_fit, t_test, last = split_points(times[::-1], (0.8, 0.1, 0.1))
    assert first == datetime(2024, 1, 1)
    assert t_fit == datetime(2024, 1, 1) + timedelta(hours=80)
    assert t_test == datetime(2024, 1, 1) + timedelta(hours=90)
    assert last == datetime(2024, 1, 1) + timedelta(hours=99)


def test_split_points_refuse_data_with_too_few_distinct_times() -> None:
    with pytest.raises(ValueError, match="too few distinct timestamps"):
        split_points(np.full(50, np.datetime64("2024-01-01", "us")), (0.8, 0.1, 0.1))


def _catalog() -> Catalog:
    def strs(*values: str) -> np.ndarray:
        return np.array(values, dtype=object)

    created = np.array(["2024-01-01", "2024-01-11", "2024-01-21", "2024-01-31"], dtype="datetime64[us]")
    return Catalog(ids=np.arange(1, 5), item_type=strs("item", "item", "item", "item"),
                   category=strs("a", "a", "b", "b"), field=strs("x", "y", "x", "y"),
                   type=strs("t", "t", "t", "t"), created=created, updated=created)


def test_list_metrics_scores_hits_against_all_test_positives() -> None:
    # List rows 2, 0, 1 (k=3); positives rows 0 and 3: one hit at rank 2, row 3 missed.
    ndcg, recall, ild, freshness = top_k_metrics(np.array([2, 0, 1]), np.array([0, 3]), _catalog(),
                                                datetime(2024, 2, 10), k=3)
    assert ndcg == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert recall == 0.5
    # pairs (2,0): field equal + type equal -> 1 - 2/3; (2,1): type -> 1 - 1/3; (0,1): cat + type -> 1 - 2/3
    assert ild == pytest.approx((1 / 3 + 2 / 3 + 1 / 3) / 3)
    assert freshness == pytest.approx((20 + 40 + 30) / 3)  # ages at 2024-02-10 of rows 2, 0, 1


def test_list_metrics_count_only_the_top_k() -> None:
    ndcg, recall, *_ = top_k_metrics(np.array([1, 2, 0]), np.array([0]), _catalog(), datetime(2024, 2, 10), k=2)
    assert (ndcg, recall) == (0.0, 0.0)


# --- End to end ----------------------------------------------------------------------------


def test_end_to_end_evaluation_gives_finite_metrics_for_all_three_orders(imported: Engine) -> None:
    before = table_counts(imported)
    with session_scope(imported) as s:
        put_setting(s, keys.LAST_DATASET, {"path": "data/ranker_train.csv"})

    result = evaluate_end_to_end(imported, split="0.8,0.1,0.1", base_model="als",
                                 train_config=TrainConfig(epochs=5, seed=1), seed=1)

    assert set(result.orders) == set(ORDERS)
    for name, m in result.orders.items():
        values = (m.ndcg, m.recall, m.ild, m.freshness_days)
        assert all(math.isfinite(v) for v in values), (name, values)
        assert 0.0 <= m.ndcg <= 1.0 and 0.0 <= m.recall <= 1.0 and 0.0 <= m.ild <= 1.0
        assert m.freshness_days > 0
    assert result.dataset["positives"] >= 100
    assert result.n_users >= 20 and result.n_positives >= result.n_users
    assert result.t_fit < result.t_test < result.last
    # Every order's means have intervals around them; rule and neural a paired difference from base.
    for name in ORDERS:
        for metric in METRICS:
            ci = result.intervals[name][metric]
            assert ci.low <= getattr(result.orders[name], metric) <= ci.high, (name, metric, ci)
    assert set(result.vs_base) == {"rule", "neural"}
    for name, by_metric in result.vs_base.items():
        d = by_metric["ndcg"]
        assert d.value == pytest.approx(result.orders[name].ndcg - result.orders["base"].ndcg)
        assert d.low <= d.value <= d.high
        assert result.verdict(name) in ("better", "worse", "no significant difference")
    assert "paired difference from base" in result.table()
    # The learned base model finds test positives far above chance (20 candidates of ~150 items).
    assert result.orders["base"].recall > 0.2
    # Nothing is registered, and the operator's last dataset is left as it was.
    assert table_counts(imported) == {**before, "settings": before["settings"] + 1}
    with session_scope(imported) as s:
        assert get_setting(s, keys.LAST_DATASET) == {"path": "data/ranker_train.csv"}


def test_end_to_end_evaluation_is_deterministic_for_a_seed(imported: Engine) -> None:
    run = [evaluate_end_to_end(imported, base_model="als", train_config=TrainConfig(epochs=3, seed=7), seed=7)
           for _ in range(2)]
    assert run[0].orders == run[1].orders


def test_evaluation_refuses_too_little_ranker_data(imported: Engine) -> None:
    from ranker.rank.train import DataError

    with pytest.raises(DataError, match="positives"):
        evaluate_end_to_end(imported, base_model="als", min_positives=10**6,
                            train_config=TrainConfig(epochs=1))


# --- Intervals ---------------------------------------------------------------------------------


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for trial in range(200):
        ci = mean_interval(rng.exponential(1.0, size=60), resamples=400, seed=trial)
        covered += ci.low <= 1.0 <= ci.high
    # Binomial(200, 0.95) lies in [180, 199] with probability > 0.999; percentile intervals of a
    # skewed mean undercover a little at n = 60, never this far.
    assert 175 <= covered <= 200, covered


def test_paired_difference_of_identical_orders_is_exactly_zero_and_a_shift_is_significant() -> None:
    rng = np.random.default_rng(0)
    base = rng.random((80, len(METRICS)))
    means, diffs = order_intervals({"base": base, "rule": base.copy(), "neural": base + 0.05})
    assert (diffs["rule"]["ndcg"].low, diffs["rule"]["ndcg"].high) == (0.0, 0.0)
    assert not diffs["rule"]["ndcg"].excludes_zero
    shifted = diffs["neural"]["ndcg"]
    assert shifted.value == pytest.approx(0.05) and shifted.excludes_zero
    # Unpaired, the same shift hides in the spread of the users: the two means' intervals overlap.
    assert means["neural"]["ndcg"].low < means["base"]["ndcg"].high


def test_mean_interval_of_too_few_values_is_nan_not_an_error() -> None:
    ci = mean_interval(np.array([0.3]))
    assert ci.value == 0.3 and math.isnan(ci.low) and math.isnan(ci.high)
    assert math.isnan(mean_interval(np.array([])).value)


@pytest.mark.slow  # a subprocess, a retrain or a second world: not for the inner loop
def test_cli_evaluate_prints_json_with_the_three_orders(imported: Engine, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANKER_DATABASE_URL", imported.url.render_as_string(hide_password=False))

    assert main(["evaluate", "--time-split", "0.8,0.1,0.1", "--base-model", "ensemble", "--epochs", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["orders"]) == {"base", "rule", "neural"}
    assert all(math.isfinite(out["orders"][o]["ndcg"]) for o in ORDERS)
    assert out["base_model"] == "ensemble" and out["split"] == [0.8, 0.1, 0.1]
    assert set(out["vs_base"]) == {"rule", "neural"} and set(out["vs_base"]["neural"]["ndcg"]) == {
        "value", "low", "high"}


def test_cli_evaluate_rejects_a_bad_split_on_one_line(imported: Engine, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANKER_DATABASE_URL", imported.url.render_as_string(hide_password=False))

    assert main(["evaluate", "--time-split", "0.9,0.2,0.1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --time-split")
