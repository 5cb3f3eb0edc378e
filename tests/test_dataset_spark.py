"""The spark engine (``ranker dataset --engine spark``) writes the polars engine's rows, and so the
python builder's, on the small world, with Spark in local mode (``local[2]``).

One Spark session serves the whole module (the JVM starts once). The tests skip, saying why, when
Java or PySpark is missing; CI installs a JRE (``.ci/run``) and ``requirements-dev.txt`` PySpark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from ranker.rank.dataset import DatasetConfig, build_dataset
from ranker.rank.features import feature_columns, use_feature_set
from ranker.rank.train import load_dataset
from tests.test_dataset_engines import QUICK, assert_same_rows, shared_fits  # noqa: F401 - a fixture

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_fits"),
              pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")]


@pytest.fixture(scope="module")
def spark():
    """A local[2] Spark session for the module: no web UI, 4 shuffle partitions, 1 GiB driver, and
    the PostgreSQL JDBC driver when this machine has its jar."""
    from ranker.rank.dataset_spark import _pg_jars

    if shutil.which("java") is None:
        pytest.skip("the spark engine needs Java 17+ (`java` is not on PATH): apt-get install default-jre-headless")
    sql = pytest.importorskip("pyspark.sql", reason="the spark engine needs PySpark: pip install -r "
                              "requirements-dev.txt")
    session = (sql.SparkSession.builder.master("local[2]").appName("ranker-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4")
               .config("spark.driver.memory", "1g").config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
               .config("spark.jars", ",".join(_pg_jars())).getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def build(engine, folder: Path, name: str, suffix: str = ".csv", **options) -> tuple[pd.DataFrame, dict]:
    """Build with engine ``name`` into ``folder``: (train and val rows, with a ``file`` column; summary)."""
    cfg = DatasetConfig(output=folder / f"{name}{suffix}", val_output=folder / f"{name}_val{suffix}", engine=name,
                        **{**QUICK, **options})
    summary = build_dataset(engine, cfg).as_dict()
    read = (lambda p: pd.read_csv(p, dtype={"group_id": str})) if suffix == ".csv" else \
        (lambda p: pq.read_table(p).to_pandas().drop(columns="event_date"))
    frame = pd.concat([read(path).assign(file=part) for part, path in
                       (("train", cfg.output), ("val", cfg.val_output))], ignore_index=True)
    return frame, {k: v for k, v in summary.items() if "path" not in k}


@pytest.mark.parametrize("feature_set", ["guide", "history"])
def test_spark_engine_writes_the_polars_engines_rows_from_logged_lists(feature_set, spark, world_copy, isolated_dirs):
    use_feature_set(feature_set)
    polars, polars_summary = build(world_copy, isolated_dirs["data"], "polars")
    sparked, spark_summary = build(world_copy, isolated_dirs["data"], "spark")
    assert_same_rows(polars, sparked)
    assert polars["group_id"].str.startswith("legacy-").all()  # the legacy feed's logged lists
    assert set(sparked["file"]) == {"train", "val"} and sparked["label"].nunique() == 2
    assert spark_summary == polars_summary


@pytest.mark.parametrize("feature_set", ["guide", "history"])
def test_spark_engine_writes_the_polars_engines_rows_from_view_sessions(feature_set, spark, world_copy,
                                                                        isolated_dirs):
    """Imported data has no logged lists: a user's views within a session are the list."""
    with world_copy.begin() as conn:
        for table in ("outcomes", "impressions", "served_lists"):
            conn.execute(text(f"DELETE FROM {table}"))
    use_feature_set(feature_set)
    polars, _ = build(world_copy, isolated_dirs["data"], "polars")
    sparked, _ = build(world_copy, isolated_dirs["data"], "spark")
    assert_same_rows(polars, sparked)
    assert sparked["group_id"].str.match(r"s\d+$").all()


def test_spark_parquet_output_matches_the_polars_engines_to_float_precision(spark, world_copy, isolated_dirs):
    polars, _ = build(world_copy, isolated_dirs["data"], "polars", ".parquet")
    sparked, _ = build(world_copy, isolated_dirs["data"], "spark", ".parquet")
    key = ["event_time", "group_id", "item_id"]
    polars, sparked = (f.sort_values(key, ignore_index=True) for f in (polars, sparked))
    exact = [c for c in polars.columns if c not in feature_columns()]
    pd.testing.assert_frame_equal(sparked[exact], polars[exact])
    assert np.abs(sparked[feature_columns()].to_numpy() - polars[feature_columns()].to_numpy()).max() < 1e-9
    days = sorted(p.name for p in (isolated_dirs["data"] / "spark.parquet").iterdir())
    assert len(days) >= 10 and all(d.startswith("event_date=") for d in days)
    trained = load_dataset(isolated_dirs["data"] / "spark.parquet", min_positives=1)
    assert len(trained) == (sparked["file"] == "train").sum()


def test_spark_engine_reads_parquet_exports_with_either_time_type_and_refuses_a_missing_column(
        spark, world_copy, isolated_dirs):
    from ranker.rank.dataset_spark import export_tables

    folder = isolated_dirs["data"]
    exports = export_tables(world_copy, folder / "exports")
    assert sorted(p.name for p in exports.iterdir()) == ["impressions.parquet", "interactions.parquet",
                                                         "outcomes.parquet", "served_lists.parquet"]
    polars, _ = build(world_copy, folder, "polars")
    sparked, _ = build(world_copy, folder, "spark", spark_input=exports)
    assert_same_rows(polars, sparked)
    for name, when in (("interactions", "created_at"), ("impressions", "served_at")):  # times as int64 µs
        table = pq.read_table(exports / f"{name}.parquet")
        micros = table.column(when).cast(pa.int64())
        pq.write_table(table.set_column(table.schema.get_field_index(when), when, micros),
                       exports / f"{name}.parquet")
    sparked, _ = build(world_copy, folder, "spark", spark_input=exports)
    assert_same_rows(polars, sparked)
    table = pq.read_table(exports / "outcomes.parquet")
    pq.write_table(table.drop_columns(["kind"]), exports / "outcomes.parquet")
    with pytest.raises(ValueError, match=r"the outcomes table Spark read lacks column\(s\) kind"):
        build(world_copy, folder, "spark", spark_input=exports)


def test_the_cli_builds_with_spark_and_refuses_the_impressions_source(spark, world_copy, isolated_dirs, monkeypatch,
                                                                      capsys):
    from ranker.cli import main
    from ranker.data.db import _cached_engine

    monkeypatch.setenv("RANKER_DATABASE_URL", str(world_copy.url))
    _cached_engine.cache_clear()
    try:
        out = isolated_dirs["data"] / "cli.parquet"
        assert main(["dataset", "--engine", "spark", "--master", "local[2]", "--output", str(out),
                     "--base-model", "popularity", "--window-days", "7"]) == 0
        assert f"to {out}" in capsys.readouterr().out
        assert len(load_dataset(out, min_positives=1)) > 100
        assert main(["dataset", "--engine", "spark", "--source", "impressions"]) != 0
        assert "--engine polars or python" in capsys.readouterr().err
    finally:
        _cached_engine.cache_clear()


@pytest.mark.postgres
def test_spark_engine_reads_postgresql_over_jdbc_and_writes_the_polars_engines_rows(spark, pg_world, isolated_dirs):
    from ranker.data.db import make_engine
    from ranker.rank.dataset_spark import PG_JDBC_JARS, _pg_jars

    if not _pg_jars():
        pytest.skip(f"no PostgreSQL JDBC jar at {' or '.join(PG_JDBC_JARS)}: apt-get install libpostgresql-jdbc-java")
    engine = make_engine(pg_world[0])
    try:
        polars, polars_summary = build(engine, isolated_dirs["data"], "polars")
        sparked, spark_summary = build(engine, isolated_dirs["data"], "spark")
    finally:
        engine.dispose()
    assert_same_rows(polars, sparked)
    assert spark_summary == polars_summary
