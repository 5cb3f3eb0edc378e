"""Simulation runs: the record of each run, one unfinished run at a time, resume and rollback.

A run is a row in ``simulation_runs``. Starting a simulation *claims* a run: a new one, or
the unfinished one whose process is gone, taken over to be resumed or discarded. The
unique index on ``unfinished`` admits one unfinished run, so two processes starting at
once cannot both get a new run; taking a run over bumps its ``lease`` in a conditional
update, and every later write of the run names the lease it holds, so a process that
lost its run stops instead of serving the same day twice.

A day's state is in the database, not in the process: the world clock says which day is
open (it moves, with the run's ``day``, in one transaction at the end of each day), and
the open day's served lists (request ids ``sim-r{run}-d{day}-{i}``) say how far it got.
Discarding a run rolls its open day back as a unit: everything the simulator wrote after
the clock (lists, impressions, outcomes, the interactions those outcomes wrote, the day's
new items).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ranker.data.clock import serve_now, set_clock, utcnow
from ranker.data.db import audit, session_scope, with_retries, write_lock
from ranker.data.rollups import mark_stale
from ranker.data.schema import Impression, Interaction, Item, Outcome, ServedList, SimulationRun

#: What to do about an unfinished run whose process is gone.
AUTO, RESUME, DISCARD = "auto", "resume", "discard"
CHOICES = (AUTO, RESUME, DISCARD)
#: A running run on another host that has not reported for this long counts as gone.
STALE_AFTER = timedelta(minutes=15)
SOURCE = "sim"  # ServedList.source of simulated lists

_HERE: set[tuple[str, int]] = set()  # (database, run id) of the runs this process drives, for its other threads


class RunBusyError(ValueError):
    """Another process is running a simulation on this database."""


class RunLostError(RuntimeError):
    """Another process took this run over; this one must stop."""


@dataclass(frozen=True)
class RunSettings:
    """What decides a run's traffic: two runs with equal settings from the same world serve the same lists."""

    seed: int
    days: int
    requests_per_day: int
    k: int
    refit_base: bool
    new_items_per_day: float

    def flags(self) -> str:
        """The ``ranker simulate`` flags that ask for these settings."""
        return (f"--days {self.days} --requests-per-day {self.requests_per_day} --seed {self.seed}"
                + ("" if self.refit_base else " --no-refit"))


@dataclass
class Run:
    """A claimed run, as the process driving it sees it."""

    id: int
    lease: int
    settings: RunSettings
    start_clock: datetime
    day: int  # the first day not yet finished
    request: int  # the open day's next request index (its earlier ones are served)
    items_day: int | None
    resumed: bool

    def request_prefix(self, day: int) -> str:
        return f"sim-r{self.id}-d{day}-"

    def request_id(self, day: int, i: int) -> str:
        return f"{self.request_prefix(day)}{i}"

    def day_start(self, day: int) -> datetime:
        return self.start_clock + timedelta(days=day)

    def where(self) -> str:
        """Where the run stands, for people: ``day 1 of 2, request 197 of 300``."""
        s = self.settings
        if self.day >= s.days:
            return f"its end (all {s.days} day(s) served)"
        return f"day {self.day + 1} of {s.days}, request {self.request + 1} of {s.requests_per_day}"


def claim(engine: Engine, settings: RunSettings, choice: str = AUTO, actor: str = "cli",
          notice: Callable[[str], None] | None = None) -> Run:
    """The run this process is to drive: the unfinished one resumed, or a new one.

    With ``choice`` ``auto``, an unfinished run whose process is gone is resumed when its
    settings equal ``settings``, and refused otherwise; ``resume`` resumes it whatever its
    settings; ``discard`` rolls its open day back and starts a new run.

    Raises
    ------
    RunBusyError
        The unfinished run's process is alive (or, on another host, reported recently).
    ValueError
        An unfinished run with other settings (``auto``), nothing to resume (``resume``),
        or a world clock that is not where the run left it; each says what to do.
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r} for an unfinished run; use one of: {', '.join(CHOICES)}")
    for _ in range(5):  # another process may win a race; the next pass finds its run alive and refuses
        try:
            with write_lock(engine):
                run, said = with_retries(lambda: _claim_once(engine, settings, choice, actor))
        except (IntegrityError, _Retry):  # another process inserted or took over the unfinished run first
            continue
        if said and notice:
            notice(said)
        if run is not None:
            return run
    raise RunBusyError("another process keeps starting simulation runs on this database; try again when it is done")


class _Retry(Exception):
    """Another process changed the run between our read and our write: read again."""


def _claim_once(engine: Engine, settings: RunSettings, choice: str, actor: str) -> tuple[Run | None, str | None]:
    """One transaction of :func:`claim`: (the run, or None after discarding one; what to tell the user)."""
    claimed: set[tuple[str, int]] = set()
    try:
        with session_scope(engine) as s:
            row = s.scalar(select(SimulationRun).where(SimulationRun.unfinished.is_(True)))
            if row is not None and _alive(row, _key(engine, row.id)):
                raise RunBusyError(_busy_message(row))
            if row is not None:
                row_settings = _settings(row)
                served = next_request(s, row.id, row.day)
                if choice == DISCARD:
                    rolled = rollback_open_day(s, serve_now(s))
                    _take(s, row, status="discarded", unfinished=None, finished_at=utcnow(),
                          error=f"discarded at day {row.day + 1}, request {served + 1} by {actor}")
                    audit(s, "simulate_discard", {"run": row.id, "day": row.day, "request": served, **rolled}, actor)
                    return None, (f"discarded simulation run {row.id} at day {row.day + 1} of {row.days}, request "
                                  f"{served + 1}: rolled back {rolled['lists']} lists and {rolled['items']} new items")
                if choice == AUTO and row_settings != settings:
                    raise ValueError(
                        f"simulation run {row.id} stopped at day {row.day + 1} of {row.days}, request {served + 1} "
                        f"(it ran with {row_settings.flags()}); finish it with `ranker simulate --resume`, or add "
                        "--discard to this command to roll its partial day back and start this run")
                _check_clock(s, row)
                _take(s, row, status="running", error=None)
                claimed.add(_key(engine, row.id))
                _HERE.add(_key(engine, row.id))
                run = Run(row.id, row.lease, row_settings, row.start_clock, row.day, served, row.items_day,
                          resumed=True)
                return run, f"resuming simulation run {run.id} at {run.where()}"
            if choice == RESUME:
                raise ValueError("there is no unfinished simulation run to resume; start one with `ranker simulate`")
            clock = serve_now(s)
            if choice == DISCARD:
                rolled = rollback_open_day(s, clock)
                if rolled["lists"] or rolled["items"]:
                    audit(s, "simulate_discard", {"run": None, **rolled}, actor)
            else:
                _refuse_leftovers(s, clock)
            row = SimulationRun(status="running", unfinished=True, seed=settings.seed, days=settings.days,
                                requests_per_day=settings.requests_per_day, k=settings.k,
                                params={"refit_base": settings.refit_base,
                                        "new_items_per_day": settings.new_items_per_day},
                                start_clock=clock, day=0, request=0, items_day=None, new_items=0, lease=1,
                                actor=actor, started_at=utcnow(), updated_at=utcnow(), **_me())
            s.add(row)
            s.flush()
            claimed.add(_key(engine, row.id))
            _HERE.add(_key(engine, row.id))  # before the commit: once others can see the row, it is ours
            return Run(row.id, row.lease, settings, clock, 0, 0, None, resumed=False), None
    except BaseException:
        _HERE.difference_update(claimed)
        raise


def _take(s: Session, row: SimulationRun, **values) -> None:
    """Take the run over (a new lease, this process), or refuse when someone else just did."""
    taken = s.execute(update(SimulationRun).where(SimulationRun.id == row.id, SimulationRun.lease == row.lease)
                      .values(lease=row.lease + 1, updated_at=utcnow(), **_me(), **values))
    if taken.rowcount != 1:
        raise _Retry
    s.refresh(row)


def _settings(row: SimulationRun) -> RunSettings:
    return RunSettings(int(row.seed), row.days, row.requests_per_day, row.k, bool(row.params["refit_base"]),
                       float(row.params["new_items_per_day"]))


def _check_clock(s: Session, row: SimulationRun) -> None:
    expected = row.start_clock + timedelta(days=row.day)
    now = serve_now(s)
    if now != expected:
        raise ValueError(f"the world clock is at {now.isoformat()}, not at {expected.isoformat()} where simulation run "
                         f"{row.id} left it; roll the run's partial day back with `ranker simulate --discard`")


def _refuse_leftovers(s: Session, clock: datetime) -> None:
    """Simulated lists after the clock without an unfinished run: a crash before runs were recorded."""
    lists = s.scalar(select(func.count()).select_from(ServedList)
                     .where(ServedList.source == SOURCE, ServedList.served_at >= clock))
    if lists:
        raise ValueError(f"{lists} simulated lists lie after the world clock ({clock.isoformat()}), left by a "
                         "simulation that stopped mid-day; roll them back with `ranker simulate --discard`")


@dataclass(frozen=True)
class UnfinishedRun:
    """What an operator needs to decide about an unfinished run: resume it, or discard its partial day."""

    id: int
    status: str
    seed: int
    days: int
    requests_per_day: int
    day: int  # days finished
    request: int  # requests served in the current day (as last reported)
    alive: bool  # its process is still running: neither resume nor discard applies

    def summary(self) -> str:
        return (f"simulation run {self.id} ({self.status}): seed {self.seed}, {self.requests_per_day} requests a day, "
                f"day {self.day + 1} of {self.days}, {self.request} requests into it")


def unfinished_run(engine: Engine) -> UnfinishedRun | None:
    """The unfinished run, if any (for the dashboard's choice between resume and discard)."""
    with session_scope(engine) as s:
        row = s.scalar(select(SimulationRun).where(SimulationRun.unfinished.is_(True)))
        if row is None:
            return None
        return UnfinishedRun(row.id, row.status, int(row.seed), row.days, row.requests_per_day, row.day,
                             row.request, _alive(row, _key(engine, row.id)))


def next_request(s: Session, run_id: int, day: int) -> int:
    """The index of the day's next request: one past the last list served (0 when none is)."""
    prefix = f"sim-r{run_id}-d{day}-"
    ids = s.scalars(select(ServedList.request_id).where(ServedList.request_id.startswith(prefix, autoescape=True)))
    return max((int(r[len(prefix):]) + 1 for r in ids), default=0)


def rollback_open_day(s: Session, clock: datetime) -> dict[str, int]:
    """Delete what the simulator wrote after ``clock``; returns how many lists and new items went.

    The simulated lists served after the clock go with their impressions, their outcomes and
    the interactions those outcomes wrote; so do the items created at or after the clock
    (only the simulator adds items to a demo world after its clock) and their ground truth.
    """
    from ranker.sim.truth import GroundTruth, load_truth, save_truth

    lists = select(ServedList.request_id).where(ServedList.source == SOURCE, ServedList.served_at >= clock)
    shown = select(Impression.id).where(Impression.request_id.in_(lists))
    written = exists().where(Outcome.impression_id == Impression.id, Impression.request_id.in_(lists),
                             Impression.user_id == Interaction.user_id, Impression.item_id == Interaction.item_id,
                             Outcome.kind == Interaction.kind, Outcome.created_at == Interaction.created_at)
    n_lists = s.scalar(select(func.count()).select_from(lists.subquery()))
    mark_stale(s.connection(), clock.date())  # the daily rollups of these days are redone
    s.execute(delete(Interaction).where(Interaction.created_at >= clock, written), execution_options={
        "synchronize_session": False})
    s.execute(delete(Outcome).where(Outcome.impression_id.in_(shown)), execution_options={"synchronize_session": False})
    s.execute(delete(Impression).where(Impression.request_id.in_(lists)),
              execution_options={"synchronize_session": False})
    s.execute(delete(ServedList).where(ServedList.source == SOURCE, ServedList.served_at >= clock),
              execution_options={"synchronize_session": False})
    new_ids = np.array(s.scalars(select(Item.id).where(Item.created_at >= clock)).all(), dtype=np.int64)
    if len(new_ids):
        s.execute(delete(Item).where(Item.id.in_(new_ids.tolist())), execution_options={"synchronize_session": False})
        truth = load_truth(s)
        if truth is not None:
            keep = ~np.isin(truth.item_ids, new_ids)
            save_truth(s, GroundTruth(params=truth.params, user_ids=truth.user_ids, user_vecs=truth.user_vecs,
                                      item_ids=truth.item_ids[keep], item_vecs=truth.item_vecs[keep],
                                      item_quality=truth.item_quality[keep], extra=truth.extra))
    return {"lists": int(n_lists or 0), "items": len(new_ids)}


# --- The run's writes, each under its lease ------------------------------------------


def _own(run: Run):
    return (SimulationRun.id == run.id) & (SimulationRun.lease == run.lease)


def _write(s: Session, run: Run, **values) -> None:
    done = s.execute(update(SimulationRun).where(_own(run)).values(updated_at=utcnow(), **values))
    if done.rowcount != 1:
        raise RunLostError(f"simulation run {run.id} was taken over by another process; this one stops")


def mark_items(s: Session, run: Run, day: int, added: int) -> None:
    """In the transaction that adds ``day``'s new items: note that they are added."""
    _write(s, run, items_day=day, new_items=SimulationRun.new_items + added)
    run.items_day = day


def heartbeat(engine: Engine, run: Run, request: int) -> None:
    """Report the open day's progress (and that this process still holds the run)."""
    def write() -> None:
        with session_scope(engine) as s:
            _write(s, run, request=request)
    with write_lock(engine):
        with_retries(write)
    run.request = request


def end_day(engine: Engine, run: Run, day: int) -> None:
    """Move the world clock past ``day`` and the run to the next day, in one transaction."""
    def write() -> None:
        with session_scope(engine) as s:
            _write(s, run, day=day + 1, request=0)
            set_clock(s, run.day_start(day + 1))
    with write_lock(engine):
        with_retries(write)
    run.day, run.request = day + 1, 0


def finish(engine: Engine, run: Run, actor: str, details: dict) -> None:
    """Close a run whose every day is served (it leaves the one-unfinished-run slot)."""
    def write() -> None:
        with session_scope(engine) as s:
            _write(s, run, status="finished", unfinished=None, finished_at=utcnow())
            audit(s, "simulate", {"run": run.id, **asdict(run.settings), "resumed": run.resumed, **details}, actor)
    with write_lock(engine):
        with_retries(write)
    _HERE.discard(_key(engine, run.id))


def fail(engine: Engine, run: Run, error: BaseException) -> None:
    """Record that the run stopped early; it stays unfinished, to be resumed or discarded."""
    def write() -> None:
        with session_scope(engine) as s:
            _write(s, run, status="failed", error=f"{type(error).__name__}: {error}"[:2000])
    try:
        with write_lock(engine):
            with_retries(write)
    except RunLostError:
        pass
    finally:
        _HERE.discard(_key(engine, run.id))


# --- Is the run's process alive? ------------------------------------------------------


def _me() -> dict:
    pid = os.getpid()
    proc = _process(pid)
    return {"pid": pid, "host": socket.gethostname()[:255], "pid_started": proc[1] if proc else None}


def _key(engine: Engine, run_id: int) -> tuple[str, int]:
    return engine.url.render_as_string(hide_password=True), run_id


def _alive(row: SimulationRun, key: tuple[str, int]) -> bool:
    if row.status != "running" or row.pid is None:
        return False
    if row.host != socket.gethostname()[:255]:
        return utcnow() - row.updated_at < STALE_AFTER
    if row.pid == os.getpid():
        return key in _HERE
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = _process(row.pid)
    if proc is None:
        return True
    state, started = proc
    return state not in ("Z", "X") and (row.pid_started is None or started == row.pid_started)


def _process(pid: int) -> tuple[str, str] | None:
    """(state, start time since boot) of a process from Linux's /proc, or None when it cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _busy_message(row: SimulationRun) -> str:
    where = f"pid {row.pid}" + ("" if row.host == socket.gethostname()[:255] else f" on {row.host}")
    return (f"simulation run {row.id} is running ({where}, day {row.day + 1} of {row.days}); wait for it or cancel "
            "it (Ctrl-C where it runs, or cancel its job on the dashboard)")


__all__ = ["AUTO", "RESUME", "DISCARD", "CHOICES", "Run", "RunSettings", "RunBusyError", "RunLostError", "claim",
           "rollback_open_day", "next_request", "mark_items", "heartbeat", "end_day", "finish", "fail"]
