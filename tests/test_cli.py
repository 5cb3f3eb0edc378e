"""The ranker CLI: demo init, db info, db upgrade, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ranker.cli import main


@pytest.fixture
def cli_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("RANKER_DATABASE_URL", url)
    from ranker.data.db import _cached_engine

    _cached_engine.cache_clear()
    yield url
    _cached_engine.cache_clear()


def test_demo_init_then_db_info_reports_counts(cli_db, capsys):
    assert main(["demo", "init", "--scale", "small", "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["db", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["users"] == 160 and info["counts"]["items"] == 440
    assert info["counts"]["interactions"] > 5000
    assert info["schema_revision"] == info["head_revision"]


def test_demo_init_refuses_non_empty_database(cli_db, capsys):
    assert main(["demo", "init", "--scale", "small"]) == 0
    capsys.readouterr()
    assert main(["demo", "init", "--scale", "small"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--force" in err and len(err.splitlines()) == 1


def test_bad_url_is_one_line_error_with_masked_password(monkeypatch, capsys):
    monkeypatch.setenv("RANKER_DATABASE_URL", "oracle://scott:tiger@db/x")
    from ranker.data.db import _cached_engine

    _cached_engine.cache_clear()
    assert main(["db", "info"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tiger" not in err and "oracle" in err and len(err.splitlines()) == 1
    _cached_engine.cache_clear()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_zero_or_negative_sizes_are_rejected(value, capsys):
    import argparse

    from ranker.cli import positive_int

    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(value)


def test_python_dash_m_ranker_runs(cli_db):
    out = subprocess.run([sys.executable, "-m", "ranker", "db", "info"], capture_output=True,
                         text=True, env={**os.environ, "RANKER_DATABASE_URL": cli_db})
    assert out.returncode == 0, out.stderr
    assert "users" in out.stdout


def test_weights_show_and_set_with_bad_input_saving_nothing(cli_db, capsys):
    assert main(["demo", "init", "--scale", "small"]) == 0
    capsys.readouterr()
    assert main(["weights", "set", "recency=0.3", "--freshness-boost", "1.5"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "rule weights: model_score 0.5, recency 0.3, popularity 0.2, diversity 0.1",
        "freshness boost (neural ranker): 1.5",
        "candidates per slot: 2 (the base model proposes that many × k)"]
    for argv, message in (
        (["recency=0.9", "--freshness-boost", "9"], "freshness boost 9.0 is outside [0, 5]"),
        (["recency=lots"], "'recency=lots' is not NAME=WEIGHT"),
        (["recency=0.9", "novelty=0.1"], "unknown rule weight(s) ['novelty']"),
        (["model_score=1.5"], "rule weight model_score=1.5 is outside [0, 1]"),
        ([], "nothing to set"),
    ):
        assert main(["weights", "set", *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["weights", "show"]) == 0  # nothing above was saved
    assert "recency 0.3" in capsys.readouterr().out
