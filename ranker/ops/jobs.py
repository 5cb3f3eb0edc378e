"""Background jobs: dataset generation, training and simulation outside the page script.

A job is a row in ``jobs`` and a worker subprocess (``python -m ranker jobs run ID``)
that writes its progress there. Pages only read the row, so a job survives a page
reload. Only one training job runs at a time; a job can be cancelled (the worker
checks ``cancel_requested`` between steps).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from ranker import config
from ranker.data.clock import utcnow
from ranker.data.db import audit, session_scope, with_retries
from ranker.data.schema import Job

log = logging.getLogger(__name__)
KINDS = ("dataset", "train", "simulate")
ACTIVE = ("queued", "running")
EXCLUSIVE = ("train",)  # at most one of these at a time


class JobCancelled(RuntimeError):
    pass


def submit(engine: Engine, kind: str, params: dict[str, Any], actor: str = "dashboard",
           spawn: bool = True) -> tuple[Job, bool]:
    """Queue a job and start its worker. Returns (job, created).

    For an exclusive kind (training) with one already queued or running, that job is
    returned with ``created=False`` and nothing new starts.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; choose one of: {', '.join(KINDS)}")
    reap(engine)
    with session_scope(engine) as s:
        if kind in EXCLUSIVE:
            running = s.scalar(select(Job).where(Job.kind == kind, Job.status.in_(ACTIVE)).order_by(Job.id))
            if running is not None:
                return running, False
        job = Job(kind=kind, status="queued", progress=0.0, params=params, created_at=utcnow(),
                  message="queued")
        s.add(job)
        s.flush()
        audit(s, f"job_{kind}", {"job_id": job.id, **params}, actor)
        job_id = job.id
    if spawn:
        _spawn(engine, job_id)
    return get(engine, job_id), True


def _spawn(engine: Engine, job_id: int) -> None:
    log_dir = config.DATA_DIR / "jobs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, config.DATABASE_URL_ENV: engine.url.render_as_string(hide_password=False),
           "RANKER_DATA_DIR": str(config.DATA_DIR), "RANKER_MODELS_DIR": str(config.MODELS_DIR)}
    with open(log_dir / f"{job_id}.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ranker", "jobs", "run", str(job_id)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job_id).values(pid=proc.pid))


def get(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job {job_id}")
        return job


def recent(engine: Engine, kind: str | None = None, limit: int = 10) -> list[Job]:
    with session_scope(engine) as s:
        stmt = select(Job).order_by(Job.id.desc()).limit(limit)
        if kind:
            stmt = stmt.where(Job.kind == kind)
        return list(s.scalars(stmt))


def cancel(engine: Engine, job_id: int, actor: str = "dashboard") -> None:
    """Ask a job to stop; a queued job (no worker yet) is cancelled at once."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None or job.status not in ACTIVE:
            return
        job.cancel_requested = True
        if job.status == "queued" and not job.pid:
            job.status, job.finished_at, job.message = "cancelled", utcnow(), "cancelled before it started"
        audit(s, "job_cancel", {"job_id": job_id}, actor)


def reap(engine: Engine) -> None:
    """Mark jobs whose worker process is gone as failed (e.g. after a machine restart)."""
    with session_scope(engine) as s:
        for job in s.scalars(select(Job).where(Job.status == "running")):
            if job.pid and not _alive(job.pid):
                job.status, job.finished_at = "failed", utcnow()
                job.error = job.error or "the worker process exited without reporting (killed or crashed)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


# --- Worker side --------------------------------------------------------------------


class Reporter:
    """Progress and cancellation for a running job, throttled to keep writes short."""

    def __init__(self, engine: Engine, job_id: int, min_interval: float = 0.5):
        self.engine, self.job_id, self.min_interval = engine, job_id, min_interval
        self._last = 0.0
        self._cancel_checked = 0.0
        self.partial: dict[str, Any] = {}

    def progress(self, fraction: float, message: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now

        def write() -> None:
            with session_scope(self.engine) as s:
                s.execute(update(Job).where(Job.id == self.job_id).values(
                    progress=max(0.0, min(1.0, fraction)), message=message,
                    result=dict(self.partial) if self.partial else None))
        with_retries(write)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._cancel_checked < 0.5:
            return False
        self._cancel_checked = now
        with session_scope(self.engine) as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))


def run(engine: Engine, job_id: int) -> int:
    """Run a queued job in this process; returns an exit code."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job {job_id}")
        if job.status != "queued":
            raise ValueError(f"job {job_id} is {job.status}, not queued")
        job.status, job.started_at, job.pid, job.message = "running", utcnow(), os.getpid(), "starting"
        kind, params = job.kind, dict(job.params)
    rep = Reporter(engine, job_id)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        _use_features(engine, params.pop("features", None))
        result = RUNNERS[kind](engine, params, rep)
        status, error, message = "succeeded", None, "done"
    except JobCancelled:
        result, status, error, message = rep.partial or None, "cancelled", None, "cancelled"
    except Exception as exc:  # the page shows this to the operator
        log.error("job %s failed: %s", job_id, traceback.format_exc())
        result, status, error, message = rep.partial or None, "failed", f"{type(exc).__name__}: {exc}", "failed"
        if _cancel_requested(engine, job_id):
            status, error, message = "cancelled", None, "cancelled"
    values = {"status": status, "error": error, "message": message, "result": result, "finished_at": utcnow()}
    if status == "succeeded":
        values["progress"] = 1.0
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))
    return 0 if status == "succeeded" else 1


def _use_features(engine: Engine, name: str | None) -> None:
    """The job computes the feature set it was submitted with, else the operator's saved one."""
    from ranker.rank import tuning
    from ranker.rank.features import use_feature_set

    if name is None:
        tuning.feature_set(engine)
    else:
        use_feature_set(name)


def _terminate(signum: int, frame: object) -> None:
    raise JobCancelled("terminated")


def _cancel_requested(engine: Engine, job_id: int) -> bool:
    with session_scope(engine) as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _stopper(rep: Reporter) -> Callable[[], bool]:
    def stop() -> bool:
        if rep.should_stop():
            raise JobCancelled("cancelled by the operator")
        return False
    return stop


def _run_dataset(engine: Engine, params: dict[str, Any], rep: Reporter) -> dict[str, Any]:
    from ranker.rank.dataset import DatasetConfig, build_dataset

    cfg = DatasetConfig(**params)
    stop = _stopper(rep)

    def progress(f: float, msg: str) -> None:
        stop()
        rep.progress(f, msg)

    return build_dataset(engine, cfg, progress=progress).as_dict()


def _run_train(engine: Engine, params: dict[str, Any], rep: Reporter) -> dict[str, Any]:
    from ranker.ops.pipeline import train_and_register
    from ranker.rank.train import TrainConfig

    cfg = TrainConfig(**params.get("config", {}))
    rep.partial = {"history": []}

    def on_epoch(epoch: int, train_loss: float, val_loss: float | None) -> None:
        rep.partial["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        rep.progress(epoch / cfg.epochs, f"epoch {epoch}/{cfg.epochs}", force=True)

    out = train_and_register(engine, params["data"], cfg, val=params.get("val"),
                             val_split=float(params.get("val_split", 0.0)),
                             split_by=params.get("split_by", config.DEFAULTS.split_by),
                             output_dir=Path(params.get("output_dir", config.MODELS_DIR)),
                             activate=params.get("activate"), on_epoch=on_epoch,
                             min_positives=int(params.get("min_positives", 100)),
                             should_stop=_stopper(rep), actor="dashboard")
    return {"version": out.version, "activated": out.activated, "metrics": out.metrics,
            "history": out.history, "best_epoch": out.best_epoch, "paths": out.paths}


def _run_simulate(engine: Engine, params: dict[str, Any], rep: Reporter) -> dict[str, Any]:
    from ranker.sim.simulate import simulate

    def notice(message: str) -> None:  # e.g. "resuming simulation run 3 at day 2 of 3, request 41 of 300"
        log.info(message)
        rep.partial["notice"] = message
        rep.progress(0.0, message, force=True)

    summary = simulate(engine, progress=rep.progress, should_stop=_stopper(rep), actor="dashboard", notice=notice,
                       **params)
    return {**summary.__dict__, **rep.partial}


RUNNERS: dict[str, Callable[[Engine, dict[str, Any], Reporter], dict[str, Any]]] = {
    "dataset": _run_dataset,
    "train": _run_train,
    "simulate": _run_simulate,
}
