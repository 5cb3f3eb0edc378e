"""Job polling: a fragment that reruns on a timer and shows a job's live state."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from sqlalchemy import Engine

from dashboard import cached, charts, common
from ranker.data.schema import Job
from ranker.ops import jobs

POLL_SECONDS = 1.0


def latest(engine: Engine, kind: str) -> Job | None:
    jobs.reap(engine)
    found = jobs.recent(engine, kind=kind, limit=1)
    return found[0] if found else None


def job_status(engine: Engine, kind: str, can_edit: bool = True,
               on_done: Callable[[Job], None] | None = None) -> None:
    """Show the latest job of ``kind``; while it is active, poll it every second.

    ``can_edit`` (the operator gate) enables the Cancel button.
    """
    job = latest(engine, kind)
    if job is None:
        return
    if job.status in jobs.ACTIVE:
        _live(engine, kind, job.id, can_edit)
    else:
        _render(engine, job, can_edit)
        if on_done:
            on_done(job)


@st.fragment(run_every=POLL_SECONDS)
def _live(engine: Engine, kind: str, job_id: int, can_edit: bool) -> None:
    job = jobs.get(engine, job_id)
    _render(engine, job, can_edit)
    if job.status not in jobs.ACTIVE:
        cached.clear()
        st.rerun()  # the whole page, so results below the job appear


def _render(engine: Engine, job: Job, can_edit: bool = True) -> None:
    label = f"{job.kind.capitalize()} job #{job.id}: {job.status}"
    if job.status in jobs.ACTIVE:
        st.progress(float(job.progress or 0.0), text=f"{label} — {job.message or ''}")
        if st.button("Cancel", key=f"cancel_{job.id}", disabled=not can_edit) and can_edit:
            jobs.cancel(engine, job.id, actor=common.ACTOR)
            st.toast(f"Cancelling job #{job.id}…")
    elif job.status == "succeeded":
        st.success(f"{label} (finished {job.finished_at:%Y-%m-%d %H:%M:%S})")
    elif job.status == "failed":
        st.error(f"{label}: {job.error}")
    else:
        st.warning(f"{label}.")
    history = (job.result or {}).get("history")
    if job.kind == "train" and history:
        st.plotly_chart(charts.loss_curves(history), key=f"loss_{job.id}_{len(history)}")
        warn = overfitting_warning(history)
        if warn:
            st.warning(warn)


def overfitting_warning(history: list[dict]) -> str | None:
    """A message when validation loss rises while training loss keeps falling."""
    vals = [h["val_loss"] for h in history if h.get("val_loss") is not None]
    trains = [h["train_loss"] for h in history]
    if len(vals) < 4:
        return None
    best = min(vals)
    if vals[-1] > best * 1.02 and trains[-1] < trains[vals.index(best)]:
        return (f"Validation loss has risen from its best {best:.4f} to {vals[-1]:.4f} while training loss "
                "kept falling: the model is overfitting. Use the best checkpoint, fewer epochs or a lower lr.")
    return None
