"""Every ``ranker`` command ends a user error in one line and exit status 2, never a traceback.

:data:`BAD` holds one bad invocation per command: a missing file, an out-of-range number, an
unknown version, user, flow, job or experiment, an empty database, an unreachable database.
The commands come from the parser itself, so a new command fails
:func:`test_every_command_has_a_bad_invocation` until it has a row here. A bug (any other
exception) ends in one line too, with exit status 1 and its traceback in the error log.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ranker_env

cli = importlib.import_module("ranker.cli.main")  # the module: ``ranker.cli.main`` names the function

#: Nothing listens on port 1: the connection is refused at once.
UNREACHABLE = "postgresql+psycopg://ranker@127.0.0.1:1/ranker"
EMPTY, DOWN, WORLD = "a new, empty SQLite database", "an unreachable PostgreSQL server", "the small demo world"

#: command -> (arguments after it, the database it runs on, what its one error line says).
#: ``{tmp}`` is the test's own temporary folder.
BAD: dict[str, tuple[list[str], str, str]] = {
    "demo init": (["--scale", "small"], DOWN, "cannot connect to postgresql"),
    "db info": ([], DOWN, "cannot connect to postgresql"),
    "db upgrade": ([], DOWN, "cannot connect to postgresql"),
    "base fit": ([], EMPTY, "`ranker demo init`"),
    "base evaluate": ([], EMPTY, "`ranker demo init`"),
    "candidates": (["--user-id", "999999", "--flow", "user-item"], WORLD, "unknown user 999999"),
    "dataset": (["--output", "{tmp}"], EMPTY, "is a folder; give a file path"),
    "train": (["--data", "{tmp}/missing.csv"], EMPTY, "generate it with `ranker dataset"),
    "models list": ([], DOWN, "cannot connect to postgresql"),
    "models activate": (["v999"], EMPTY, "unknown model version 'v999'"),
    "models rollback": ([], EMPTY, "no earlier version to roll back to"),
    "recommend": (["--user-id", "1", "--flow", "nope"], WORLD, "unknown flow 'nope'; valid flows"),
    "retrain": ([], EMPTY, "`ranker demo init`"),
    "import movielens": (["{tmp}/missing"], EMPTY, "no such folder; download ml-100k"),
    "import recbole": (["{tmp}/missing"], EMPTY, "no such file or folder"),
    "import csv": (["--interactions", "{tmp}/missing.csv", "--items", "{tmp}/items.csv"], EMPTY, "no such file"),
    "evaluate": (["--time-split", "0.5,0.6"], EMPTY, "expected three positive fractions"),
    "simulate": (["--days", "1"], EMPTY, "`ranker demo init`"),
    "report": (["--compare", "v999"], EMPTY, "unknown model version 'v999'"),
    "experiment show": ([], DOWN, "cannot connect to postgresql"),
    "experiment list": ([], DOWN, "cannot connect to postgresql"),
    "experiment start": (["--rollout", "150"], EMPTY, "rollout must be between 0 and 100"),
    "experiment stop": ([], EMPTY, "`ranker experiment start"),
    "experiment set": (["--rollout", "-5"], EMPTY, "rollout must be between 0 and 100"),
    "experiment analyse": (["--name", "nope"], EMPTY, "no experiment 'nope'"),
    "weights show": ([], DOWN, "cannot connect to postgresql"),
    "weights set": (["recency=2"], EMPTY, "rule weight recency=2.0 is outside [0, 1]"),
    "diversity show": ([], DOWN, "cannot connect to postgresql"),
    "diversity set": (["--method", "dpp", "--knob", "1"], EMPTY, "the dpp trade-off 1.0 is outside [0, 1)"),
    "features show": ([], DOWN, "cannot connect to postgresql"),
    "features set": ([], EMPTY, "nothing to set: give the set's name, guide or history"),
    "jobs list": (["--limit", "0"], EMPTY, "must be a positive integer, got 0"),
    "jobs run": (["999"], EMPTY, "no job 999; `ranker jobs list`"),
    "jobs cancel": (["999"], EMPTY, "no job 999; `ranker jobs list`"),
    "offline": ([], EMPTY, "widen --days"),
    "parity": (["--data", "{tmp}/missing.csv"], EMPTY, "generate it with `ranker dataset"),
    "propensity estimate": ([], EMPTY, "no list with randomised swaps in the log"),
    "propensity show": ([], EMPTY, "run `ranker propensity estimate`"),
    "propensity share": (["1.5"], EMPTY, "the swap share must be between 0 and 1"),
    "rollups refresh": ([], DOWN, "cannot connect to postgresql"),
    "serve": (["--port", "70000"], EMPTY, "--port must be between 1 and 65535"),
}


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every command as typed: nested subcommands (``models activate``) and the choices of an
    action argument (``experiment start``) each count as one."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if groups:
        return {c for g in groups for name, sub in g.choices.items() for c in commands(sub, (*prefix, name))}
    actions = [a for a in parser._actions if not a.option_strings and a.choices]
    if actions:
        return {" ".join((*prefix, choice)) for choice in actions[0].choices}
    return {" ".join(prefix)}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ranker ARGV`` in this process: (exit status, stdout, stderr). argparse exits by itself."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The last line on stderr (progress bars may come before it), which must be the only error line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert sum("error:" in line for line in lines) == 1, err
    return lines[-1]


@pytest.fixture
def use_database(isolated_dirs, monkeypatch):
    """Point the CLI at a database URL (no engine or service cached from another test)."""
    from ranker.data.db import _cached_engine
    from ranker.serving.service import _SERVICES

    def use(url: str) -> None:
        monkeypatch.setenv("RANKER_DATABASE_URL", url)
        _cached_engine.cache_clear()
        _SERVICES.clear()

    yield use
    _cached_engine.cache_clear()
    _SERVICES.clear()


def database_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == DOWN:
        return UNREACHABLE
    if kind == WORLD:
        return request.getfixturevalue("world_copy").url.render_as_string(hide_password=False)
    return f"sqlite:///{tmp_path / 'empty.db'}"


def test_every_command_has_a_bad_invocation():
    found = commands(cli.build_parser())
    assert found - set(BAD) == set(), "add a bad invocation of each new command to BAD"
    assert set(BAD) - found == set(), "these commands are gone: remove them from BAD"


def test_the_walk_sees_nested_commands_and_actions():
    found = commands(cli.build_parser())
    assert {"models activate", "experiment start", "db info", "import csv", "weights set"} <= found
    assert "models" not in found and "experiment" not in found


@pytest.mark.parametrize("command", sorted(BAD))
def test_bad_invocation_is_one_line_and_exit_status_2(command, tmp_path, use_database, request, capsys):
    rest, database, says = BAD[command]
    use_database(database_url(database, tmp_path, request))
    argv = [*command.split(), *(arg.format(tmp=tmp_path) for arg in rest)]
    rc, out, err = run(argv, capsys)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err + out
    line = error_line(err)
    assert "error:" in line and says in line, line
    assert not cli.error_log_path().exists(), "a user error is not a bug: nothing goes to the error log"


def write_training_csv(path: Path, lists: int = 60) -> Path:
    """A small, valid training file: ``lists`` lists of three rows, one positive each, a minute apart."""
    from ranker.rank.features import feature_columns

    columns = feature_columns()
    rows = ["user_id,item_id," + ",".join(columns) + ",label,group_id,event_time"]
    for g in range(lists):
        for j in range(3):
            values = ",".join(f"{(g * 7 + j * 3 + c) % 10 / 10:.1f}" for c in range(len(columns)))
            rows.append(f"{g % 9 + 1},{g * 3 + j + 1},{values},{int(j == 0)},list-{g},2026-01-01T00:{g:02d}:00")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_train_val_split_out_of_range_is_a_one_line_error(tmp_path, use_database, capsys):
    use_database(f"sqlite:///{tmp_path / 'empty.db'}")
    data = write_training_csv(tmp_path / "train.csv")
    rc, out, err = run(["train", "--data", str(data), "--val-split", "1.5", "--epochs", "1"], capsys)
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "--val-split" in error_line(err)


def test_a_database_that_has_no_tables_yet_is_not_a_traceback(tmp_path, use_database, capsys):
    use_database(f"sqlite:///{tmp_path / 'new.db'}")
    rc, _, err = run(["candidates", "--user-id", "1", "--flow", "user-item"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert error_line(err) == "error: unknown user 1: no such user id in the database"


def test_a_file_that_is_not_a_database_says_what_to_check(tmp_path, use_database, capsys):
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("these are notes, not a database\n" * 100)
    use_database(f"sqlite:///{not_a_database}")
    rc, _, err = run(["db", "info"], capsys)
    assert rc == 2
    assert error_line(err) == (
        f"error: database sqlite:///{not_a_database}: file is not a database. Check that RANKER_DATABASE_URL "
        "names a SQLite file or PostgreSQL database this user may write; `ranker db upgrade` creates or "
        "updates its tables")


def test_jobs_cancel_of_a_finished_job_says_there_is_nothing_to_cancel(world_copy, use_database, capsys):
    from ranker.data.clock import utcnow
    from ranker.data.db import session_scope
    from ranker.data.schema import Job

    with session_scope(world_copy) as s:
        job = Job(kind="dataset", params={}, status="succeeded", created_at=utcnow(), finished_at=utcnow())
        s.add(job)
        s.flush()
        job_id = job.id
    use_database(world_copy.url.render_as_string(hide_password=False))
    rc, _, err = run(["jobs", "cancel", str(job_id)], capsys)
    assert rc == 2
    assert error_line(err) == (f"error: job {job_id} is succeeded: there is nothing to cancel; "
                               "`ranker jobs list` shows the running ones")


@pytest.mark.parametrize("exc,says", [
    (PermissionError(13, "Permission denied", "/srv/ranker/train.csv"),
     "/srv/ranker/train.csv: permission denied; use a path this user may read and write"),
    (IsADirectoryError(21, "Is a directory", "/srv/.train.csv.tmp", None, "/srv/train.csv"),
     "/srv/train.csv is a folder; give the path of a file"),
    (NotADirectoryError(20, "Not a directory", "/srv/file/train.csv"),
     "/srv/file/train.csv: part of the path is a file, not a folder"),
    (FileNotFoundError(2, "No such file or directory", "/srv/missing"), "/srv/missing: no such file or folder"),
    (FileNotFoundError("data/x.csv does not exist; generate it with `ranker dataset`"),
     "data/x.csv does not exist; generate it with `ranker dataset`"),
    (OSError(28, "No space left on device", "/srv/train.csv"),
     "/srv/train.csv: No space left on device; check the path, its permissions and the free disk space"),
])
def test_paths_that_cannot_be_used_are_user_errors(exc, says):
    assert cli.user_message(exc).startswith(says)


def test_bugs_are_not_user_errors():
    from sqlalchemy.exc import IntegrityError

    assert cli.user_message(RuntimeError("oops")) is None
    assert cli.user_message(KeyError("model_score")) is None
    assert cli.user_message(OSError("no file name: not about a path")) is None
    assert cli.user_message(IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))) is None


def test_domain_errors_are_ranker_errors_and_keep_their_old_bases():
    from ranker.data.db import DatabaseError
    from ranker.errors import RankerError
    from ranker.rank.registry import RegistryError
    from ranker.rank.spec import CheckpointError
    from ranker.rank.train import DataError, TrainingError

    for error, old in ((RegistryError, ValueError), (CheckpointError, ValueError), (DataError, ValueError),
                       (TrainingError, RuntimeError), (DatabaseError, RuntimeError), (cli.CLIError, RuntimeError)):
        assert issubclass(error, RankerError) and issubclass(error, old), error


# --- Unexpected errors ------------------------------------------------------------------------


@pytest.fixture
def broken_db_info(monkeypatch, tmp_path, use_database):
    """``ranker db info`` with a bug in it."""
    def cmd_db_info(args: argparse.Namespace) -> int:
        raise RuntimeError("the disk said no")

    use_database(f"sqlite:///{tmp_path / 'db.db'}")
    monkeypatch.setattr(cli, "cmd_db_info", cmd_db_info)


def test_an_unexpected_error_is_one_line_exit_status_1_and_a_logged_traceback(broken_db_info, isolated_dirs,
                                                                               capsys):
    rc, out, err = run(["db", "info"], capsys)
    log = (isolated_dirs["data"] / cli.ERROR_LOG).resolve()
    assert rc == 1 and out == ""
    assert err.splitlines() == [f"error: unexpected RuntimeError: the disk said no; details in {log}; "
                                "rerun with -v to see the traceback"]
    logged = log.read_text()
    assert logged.startswith("--- ") and "ranker db info\n" in logged.splitlines(keepends=True)[0]
    assert "Traceback (most recent call last)" in logged and "in cmd_db_info" in logged
    assert logged.rstrip().endswith("RuntimeError: the disk said no")


def test_the_error_log_keeps_every_unexpected_error(broken_db_info, capsys):
    for _ in range(2):
        assert run(["db", "info"], capsys)[0] == 1
    assert cli.error_log_path().read_text().count("RuntimeError: the disk said no") == 2


@pytest.mark.parametrize("argv", [["-v", "db", "info"], ["db", "info", "-v"]])
def test_verbose_prints_the_traceback_before_or_after_the_command(broken_db_info, argv, capsys):
    rc, _, err = run(argv, capsys)
    assert rc == 1
    assert "Traceback (most recent call last)" in err and "in cmd_db_info" in err
    assert err.splitlines()[-1].endswith("; the traceback is above")
    assert cli.error_log_path().exists()


def test_verbose_prints_the_traceback_of_a_user_error_too(tmp_path, use_database, capsys):
    use_database(f"sqlite:///{tmp_path / 'empty.db'}")
    rc, _, err = run(["models", "activate", "v999", "-v"], capsys)
    assert rc == 2 and "Traceback" in err and "RegistryError" in err
    assert err.splitlines()[-1].startswith("error: unknown model version 'v999'")


def test_an_unwritable_data_folder_logs_to_the_temporary_folder(broken_db_info, tmp_path, monkeypatch, capsys):
    from ranker import config

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(config, "DATA_DIR", blocker / "data")  # its parent is a file: mkdir fails
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rc, _, err = run(["db", "info"], capsys)
    log = (tmp_path / "tmp" / cli.ERROR_LOG).resolve()
    assert rc == 1 and f"details in {log};" in err
    assert "RuntimeError: the disk said no" in log.read_text()


def test_a_long_error_log_starts_afresh_keeping_the_previous_one(broken_db_info, capsys):
    log = cli.error_log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("x" * (cli.ERROR_LOG_MAX_BYTES + 1))
    assert run(["db", "info"], capsys)[0] == 1
    assert log.read_text().startswith("--- ")
    assert log.with_name(log.name + ".1").stat().st_size == cli.ERROR_LOG_MAX_BYTES + 1


# --- The real entry point ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("argv,database,says", [
    (["train", "--data", "{tmp}/missing.csv"], EMPTY, "generate it with `ranker dataset"),
    (["db", "info"], DOWN, "cannot connect to postgresql"),
    (["models", "activate", "v999"], EMPTY, "unknown model version 'v999'"),
    (["import", "movielens", "{tmp}/missing"], EMPTY, "no such folder"),
    (["serve", "--port", "70000"], EMPTY, "--port must be between 1 and 65535"),
    (["jobs", "list", "--limit", "0"], EMPTY, "must be a positive integer, got 0"),
])
def test_python_dash_m_ranker_gives_the_same_one_line_errors(argv, database, says, tmp_path):
    url = UNREACHABLE if database == DOWN else f"sqlite:///{tmp_path / 'empty.db'}"
    out = subprocess.run([sys.executable, "-m", "ranker", *(a.format(tmp=tmp_path) for a in argv)],
                         capture_output=True, text=True, cwd=tmp_path, env=ranker_env(url, tmp_path / "models"))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert says in error_line(out.stderr)
    assert not (tmp_path / "data" / "ranker-errors.log").exists()


@pytest.mark.slow
def test_python_dash_m_ranker_verbose_after_the_command_prints_the_traceback(tmp_path):
    env = ranker_env(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "models")
    out = subprocess.run([sys.executable, "-m", "ranker", "models", "activate", "v999", "-v"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "Traceback (most recent call last)" in out.stderr and "RegistryError" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("error: unknown model version 'v999'")
