"""Dataset engines and formats: the polars engine writes the python builder's rows, Parquet
training data round-trips into training, and bad Parquet is refused in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from ranker.rank import dataset as ds
from ranker.rank.dataset import DatasetConfig, build_dataset
from ranker.rank.features import feature_columns, use_feature_set
from ranker.rank.train import DataError, load_dataset

#: Two weekly refits of ALS keep the builds fast; every engine shares the same fits.
QUICK = {"base_model": "als", "window_days": 14}


@pytest.fixture
def shared_fits(monkeypatch):
    """Each base-model cutoff fitted once for the whole test, so both engines score with the same model."""
    fitted, real = {}, ds._fit_base

    def fit_once(engine, base_model, cutoff, progress):
        if (base_model, cutoff) not in fitted:
            fitted[base_model, cutoff] = real(engine, base_model, cutoff, progress)
        return fitted[base_model, cutoff]

    monkeypatch.setattr(ds, "_fit_base", fit_once)
    return fitted


def build_both(engine, folder, **options) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    frames, summaries = {}, {}
    for name in ("python", "polars"):
        cfg = DatasetConfig(output=folder / f"{name}.csv", val_output=folder / f"{name}_val.csv", engine=name,
                            **{**QUICK, **options})
        summaries[name] = build_dataset(engine, cfg).as_dict()
        files = {"train": cfg.output, "val": cfg.val_output}
        frames[name] = pd.concat([pd.read_csv(path, dtype={"group_id": str}).assign(file=part)
                                  for part, path in files.items()], ignore_index=True)
    return frames["python"], frames["polars"], summaries


def assert_same_rows(python: pd.DataFrame, polars: pd.DataFrame) -> None:
    assert list(polars.columns) == list(python.columns)
    assert len(polars) == len(python) > 100
    exact = [c for c in python.columns if c not in feature_columns()]
    pd.testing.assert_frame_equal(polars[exact], python[exact])
    pd.testing.assert_frame_equal(polars[feature_columns()], python[feature_columns()], check_exact=False,
                                  atol=1e-6, rtol=0)


@pytest.mark.parametrize("feature_set", ["guide", "history"])
def test_polars_engine_writes_the_python_builders_rows_from_logged_lists(feature_set, world_copy, isolated_dirs,
                                                                         shared_fits):
    use_feature_set(feature_set)
    python, polars, summaries = build_both(world_copy, isolated_dirs["data"])
    assert_same_rows(python, polars)
    assert python["group_id"].str.startswith("legacy-").all()  # the legacy feed's logged lists
    assert set(python["file"]) == {"train", "val"} and python["label"].nunique() == 2
    assert {k: v for k, v in summaries["polars"].items() if "path" not in k} == \
        {k: v for k, v in summaries["python"].items() if "path" not in k}


@pytest.mark.parametrize("feature_set", ["guide", "history"])
def test_polars_engine_writes_the_python_builders_rows_from_view_sessions(feature_set, world_copy, isolated_dirs,
                                                                          shared_fits):
    """Imported data has no logged lists: a user's views within a session are the list."""
    with world_copy.begin() as conn:
        for table in ("outcomes", "impressions", "served_lists"):
            conn.execute(text(f"DELETE FROM {table}"))
    use_feature_set(feature_set)
    python, polars, _ = build_both(world_copy, isolated_dirs["data"])
    assert_same_rows(python, polars)
    assert python["group_id"].str.match(r"s\d+$").all()


def test_polars_engine_takes_the_features_the_ranker_served(served, isolated_dirs, shared_fits):
    from ranker.sim.simulate import simulate

    simulate(served, days=1, requests_per_day=60, seed=3, refit_base=False)
    python, polars, _ = build_both(served, isolated_dirs["data"], base_model="popularity", window_days=3)
    assert_same_rows(python, polars)
    with served.connect() as conn:
        ranked = set(conn.execute(text("SELECT DISTINCT request_id FROM impressions WHERE features != '{}'")).scalars())
    assert ranked & set(polars["group_id"])  # some rows carry the features as the ranker served them


def test_parquet_dataset_is_partitioned_by_day_and_trains_like_the_csv(world_copy, isolated_dirs, shared_fits):
    folder = isolated_dirs["data"]
    build_dataset(world_copy, DatasetConfig(output=folder / "d.csv", **QUICK))
    summary = build_dataset(world_copy, DatasetConfig(output=folder / "d.parquet", **QUICK))
    days = sorted(p.name for p in (folder / "d.parquet").iterdir())
    assert summary.path == str(folder / "d.parquet") and len(days) >= 10
    assert all(d.startswith("event_date=") and (folder / "d.parquet" / d / "part-0.parquet").is_file() for d in days)
    from_csv = load_dataset(folder / "d.csv", min_positives=1)
    from_parquet = load_dataset(folder / "d.parquet", min_positives=1)  # read day by day: rows come in another order
    assert len(from_parquet) == len(from_csv) == summary.rows
    a, b = by_moment(from_csv), by_moment(from_parquet)
    assert (from_parquet.item_ids[b] == from_csv.item_ids[a]).all() and (from_parquet.y[b] == from_csv.y[a]).all()
    assert (from_parquet.positions[b] == from_csv.positions[a]).all()
    assert abs(from_parquet.x[b] - from_csv.x[a]).max() < 1e-6
    assert from_parquet.groups.max() == from_csv.groups.max()


def by_moment(data) -> np.ndarray:
    """Row order by (event time, user, item): the same for a dataset however its rows are stored."""
    return np.lexsort((data.item_ids, data.user_ids, data.times))


def test_format_parquet_renames_a_csv_output_and_the_python_engine_writes_it_too(world_copy, isolated_dirs,
                                                                                 shared_fits):
    folder = isolated_dirs["data"]
    cfg = DatasetConfig(output=folder / "t.csv", val_output=folder / "t_val.csv", engine="python", format="parquet",
                        **QUICK)
    summary = build_dataset(world_copy, cfg)
    assert (summary.path, summary.val_path) == (str(folder / "t.parquet"), str(folder / "t_val.parquet"))
    assert len(load_dataset(summary.path, min_positives=1)) == summary.rows
    assert len(load_dataset(summary.val_path, min_positives=1)) == summary.val_rows
    assert sorted(p.name for p in folder.iterdir()) == ["t.parquet", "t_val.parquet"]  # no CSV left behind


def test_a_failed_parquet_build_keeps_the_previous_dataset_and_leaves_no_partial_folder(world_copy, isolated_dirs,
                                                                                        shared_fits, monkeypatch):
    from ranker.rank import dataset_columnar

    out = isolated_dirs["data"] / "d.parquet"
    first = build_dataset(world_copy, DatasetConfig(output=out, **QUICK))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    written = []

    def crash_after_two(table, where, **kw):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(where)
        pq.write_table(table, where, **kw)

    monkeypatch.setattr(dataset_columnar.pq, "write_table", crash_after_two)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(world_copy, DatasetConfig(output=out, **QUICK))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.parquet"]
    assert len(load_dataset(out, min_positives=1)) == first.rows


def test_a_folder_that_is_not_a_parquet_dataset_is_never_replaced(world_copy, isolated_dirs):
    folder = isolated_dirs["data"] / "mine.parquet"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="more than a Parquet dataset"):
        build_dataset(world_copy, DatasetConfig(output=folder, **QUICK))
    assert (folder / "notes.txt").read_text() == "keep me"


def _good_table(n: int = 200) -> dict:
    return {"user_id": pa.array(range(n), pa.int64()), "item_id": pa.array(range(n), pa.int64()),
            **{c: pa.array([0.5] * n) for c in feature_columns()},
            "label": pa.array([i % 2 for i in range(n)], pa.int8()),
            "group_id": pa.array([str(i // 4) for i in range(n)])}


def test_a_plain_parquet_file_is_read_as_training_data(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table(_good_table()), path)
    data = load_dataset(path, min_positives=1)
    assert len(data) == 200 and data.y.sum() == 100 and data.groups.max() == 49 and data.times is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.pop("label"), "missing column(s) label"),
    (lambda t: t.pop("recency_score"), "missing column(s) recency_score"),
    (lambda t: t.update(label=pa.array(["yes", "no"] * 100)), "column label is string, expected a number"),
    (lambda t: t.update(item_id=pa.array([0.5] * 200)), "column item_id is double, expected an integer"),
    (lambda t: t.update(event_time=pa.array([1.5] * 200)), "column event_time is double, expected a timestamp"),
])
def test_parquet_with_a_missing_column_or_the_wrong_type_is_refused_in_one_line(tmp_path, change, message):
    table = _good_table()
    change(table)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(table), path)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_dataset(path, min_positives=1)
    assert len(str(err.value).splitlines()) == 1 and "ranker dataset --format parquet" in str(err.value)


def test_a_missing_or_unreadable_parquet_path_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "none.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet"):
        load_dataset(tmp_path / "junk.parquet")


def test_the_cli_builds_parquet_and_refuses_a_bad_engine(world_copy, isolated_dirs, monkeypatch, capsys):
    from ranker.cli import main
    from ranker.data.db import _cached_engine

    monkeypatch.setenv("RANKER_DATABASE_URL", str(world_copy.url))
    _cached_engine.cache_clear()
    try:
        out = isolated_dirs["data"] / "cli.parquet"
        assert main(["dataset", "--output", str(out), "--base-model", "popularity", "--window-days", "7"]) == 0
        assert f"to {out}" in capsys.readouterr().out and any(out.iterdir())
        with pytest.raises(SystemExit):
            main(["dataset", "--engine", "duckdb"])
        assert "invalid choice: 'duckdb'" in capsys.readouterr().err
    finally:
        _cached_engine.cache_clear()
