"""Files written whole or not at all, and what crashed writers leave behind."""

from __future__ import annotations

import os
import time

import pytest

from ranker.data.files import STALE_TEMP_SECONDS, atomic_open, atomic_write_bytes


def _left_by_a_crash(folder, name: str, age: float, tag: str = "abc123"):
    tmp = folder / f".{name}.{tag}.tmp"
    tmp.write_text("half a file")
    old = time.time() - age
    os.utime(tmp, (old, old))
    return tmp


@pytest.mark.parametrize("write", ["bytes", "text"])
def test_a_write_removes_stale_temporaries_of_its_target_and_keeps_a_live_one(tmp_path, write):
    target = tmp_path / "ranker_train.csv"
    stale = _left_by_a_crash(tmp_path, target.name, STALE_TEMP_SECONDS + 60)
    live = _left_by_a_crash(tmp_path, target.name, 5, tag="def456")  # another writer, still at work
    other = _left_by_a_crash(tmp_path, "ranker_val.csv", STALE_TEMP_SECONDS + 60)  # another target's
    if write == "bytes":
        atomic_write_bytes(target, b"a,b\n1,2\n")
    else:
        with atomic_open(target) as fh:
            fh.write("a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    assert not stale.exists() and live.exists() and other.exists()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("new, half")
        raise RuntimeError("the build failed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
