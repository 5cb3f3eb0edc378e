"""Named fault points for the fault-injection suite (``tests/faults``).

Code that must survive a crash calls :func:`fault_point` at the moments where a crash
would hurt most: between writing a file and committing its database row, halfway
through a batch, and so on. In production the call is a dictionary lookup and returns.

A test sets ``RANKER_FAULT`` to one point's name, optionally with ``@N`` to fire at its
N-th passage (default 1), and the process exits at once with status
:data:`FAULT_EXIT_CODE`, as ``kill -9`` would: no ``finally`` blocks, no atexit
handlers, no flushing. Names are ``stage:moment``; :data:`POINTS` lists them, and a name
that is not listed is refused, so a typo in a test cannot pass silently.
"""

from __future__ import annotations

import os
import sys

#: Exit status of a process ended at a fault point (the shell's status for SIGKILL).
FAULT_EXIT_CODE = 137

#: Every named fault point, with what has happened when it fires.
POINTS: dict[str, str] = {
    "train:mid_epoch": "streaming training has stepped through part of an epoch's data; nothing is written yet",
    "train:after_epoch": "an epoch has finished; no checkpoint is written yet",
    "train:before_register": "the checkpoint files are written; the registry row is not",
    "activate:before_commit": "the new active version is staged; the registry has not committed",
    "activate:after_commit": "the registry has committed the activation; the active.pth copy is not rewritten",
    "activate:after_swap": "the active.pth copy is rewritten; the activation is fully done",
    "import:mid_batch": "some batches of an import are written; the rest are not",
    "dataset:mid_write": "part of the dataset file is written under its temporary name",
    "simulate:mid_day": "some of a day's requests are served; the day is not finished",
    "simulate:before_clock": "a day's requests are all served; the world clock has not moved",
    "api:feedback_write": "a feedback request's outcomes are inserted; the transaction has not committed",
    "rollups:before_commit": "a refresh has rewritten days of the daily rollups; its transaction has not committed",
    "demo:mid_history": "a demo world's users, items and some history batches are written; the world is not complete",
}

_ENV = "RANKER_FAULT"
_passages: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    raw = os.environ.get(_ENV, "").strip()
    if not raw:
        return None
    name, _, nth = raw.partition("@")
    if name not in POINTS:
        raise ValueError(f"{_ENV}={raw!r} names no fault point; known points: {', '.join(sorted(POINTS))}")
    return name, int(nth or 1)


def fault_point(name: str) -> None:
    """Exit the process hard here when ``RANKER_FAULT`` names this point (and this passage)."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; add it to ranker.faults.POINTS")
    target = _target()
    if target is None or target[0] != name:
        return
    _passages[name] = _passages.get(name, 0) + 1
    if _passages[name] >= target[1]:
        sys.stderr.write(f"fault injected at {name}\n")
        sys.stderr.flush()
        os._exit(FAULT_EXIT_CODE)


__all__ = ["fault_point", "POINTS", "FAULT_EXIT_CODE"]
