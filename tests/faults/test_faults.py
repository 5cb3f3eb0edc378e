"""Fault injection: every named fault point of :mod:`ranker.faults`, crashed and retried.

For each point, a ``ranker`` process (a command, or ``ranker serve`` taking feedback) runs in a
copy of the small world with ``RANKER_FAULT`` naming the point and exits hard there (status
137, as ``kill -9`` leaves it). Then:

* the database passes its integrity check (SQLite ``PRAGMA integrity_check`` and foreign keys;
  PostgreSQL amcheck) and no served list lacks impressions;
* every file a reader opens under ``models/`` and ``data/`` is as it was before the command or as
  a clean run leaves it: no partial file is picked up;
* an all-or-nothing step has left the database as before the command or as after it;
* the retry (the same command, or the same feedback to a restarted server) succeeds, and the
  world ends exactly as a clean run of the same command on another copy of the same world ends:
  the same row count in every table, the same files (checkpoints by their weights; v1 and v2
  differ) and the same active version. Nothing lost, nothing doubled.

The clean runs are made once per command, on SQLite, and shared with PostgreSQL: the PostgreSQL
world holds the same rows.
"""

from __future__ import annotations

import pytest

from ranker.faults import FAULT_EXIT_CODE, POINTS
from tests.faults.conftest import Command, Feedback, half_done_files

pytestmark = pytest.mark.slow  # real processes, two per point and backend

IMPORT = ("import", "movielens", "{inputs}/ml-100k", "--force", "--json")
DATASET = ("dataset", "--window-days", "7", "--base-model", "popularity")
TRAIN = ("train", "--epochs", "2", "--no-activate")  # the fault fires after epoch 1
ACTIVATE = ("models", "activate", "v2")
SIMULATE = ("simulate", "--days", "1", "--requests-per-day", "10", "--no-refit")

#: What runs for each fault point, and at which passage the fault fires.
SCENARIOS: dict[str, Command | Feedback] = {
    # users, items, then the first of two interaction batches are inserted; the wipe of --force too
    "import:mid_batch": Command(IMPORT, nth=3),
    "dataset:mid_write": Command(DATASET, nth=50),  # of about 100 lists
    "train:mid_epoch": Command(("train", "--data", "data/ranker_train.parquet", "--stream", "--epochs", "2",
                                "--no-activate")),  # the fault fires in epoch 1's first chunk
    "train:after_epoch": Command(TRAIN),
    "train:before_register": Command(TRAIN),
    "activate:before_commit": Command(ACTIVATE),
    "activate:after_commit": Command(ACTIVATE),
    "activate:after_swap": Command(ACTIVATE),
    "simulate:mid_day": Command(SIMULATE, nth=5, all_or_nothing=False),  # resumable, not atomic
    "simulate:before_clock": Command(SIMULATE, all_or_nothing=False),
    "api:feedback_write": Feedback(clicks=3),
    "rollups:before_commit": Command(("rollups", "refresh", "--json")),  # the first refresh: every day
    # users, items and the first history batch are committed; the world is not marked complete
    "demo:mid_history": Command(("demo", "init", "--scale", "small", "--force"), nth=6, all_or_nothing=False),
}


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_crash_at_the_point_leaves_nothing_half_done_and_the_retry_ends_as_a_clean_run(point, backend, trials):
    assert point in SCENARIOS, f"fault point {point!r} has no scenario: add one to SCENARIOS in {__file__}"
    scenario = SCENARIOS[point]
    trial, clean = trials.trial(point, backend), trials.clean(scenario)

    assert trial.crashed.returncode == FAULT_EXIT_CODE, trial.crashed.output
    assert f"fault injected at {point}" in trial.crashed.output
    assert trial.problems_at_crash == []
    assert half_done_files(trial.before, trial.at_crash, clean) == {}
    if scenario.all_or_nothing:
        assert trial.at_crash.counts in ((trial.crashed.before_step or trial.before).counts, clean.counts), \
            "a partial write was committed"

    assert trial.retried.returncode == 0, trial.retried.output
    assert trial.problems_after == []
    assert trial.after.counts == clean.counts
    assert trial.after.files == clean.files
    assert trial.after.active == clean.active
