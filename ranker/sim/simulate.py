"""Simulated traffic: synthetic users served by ``recommend()`` on a simulated clock.

Each simulated day new items arrive, the base models are refitted on the history so
far (a nightly job), and requests are served through the real serving path with the
A/B assignment and impression logging. Clicks and explicit feedback are sampled from
the hidden ground truth with the position-based click model and logged as outcomes
(and as platform interactions of origin ``impression``, so the base models see them;
the popularity feature counts organic interactions only, and the simulator adds none).

Deterministic under a seed, and crash-safe: every random draw comes from a generator
seeded by (seed, date, what it is for, request index), so a run resumed after a crash
(:mod:`ranker.sim.runs` records each run and where it stands) serves exactly the lists
an uninterrupted run would, and the world clock moves with the run's day in one
transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, insert, select

from ranker import config
from ranker.data.db import session_scope
from ranker.data.schema import Impression, Item, Outcome, ServedList, SimulationRun, User
from ranker.faults import fault_point
from ranker.rank.features import age_days
from ranker.serving.experiments import log_outcomes
from ranker.sim import runs
from ranker.sim.truth import GroundTruth, click_model, load_truth, save_truth

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

#: Random streams of a simulated day (the third number of each generator's seed).
_ITEMS, _SCHEDULE, _REQUEST = 0, 1, 2
_HEARTBEAT_EVERY = 50  # requests between progress reports (and the run's heartbeat)


@dataclass
class SimulationSummary:
    """A finished run's traffic, counted from the database (resumed runs included)."""

    days: int
    requests: int
    impressions: int
    clicks: int
    positives: int
    new_items: int
    start: str
    end: str
    by_arm: dict[str, dict[str, int]] = field(default_factory=dict)
    run_id: int = 0
    resumed: bool = False  # the run was resumed after it stopped early


def _require_world(engine: Engine) -> GroundTruth:
    with session_scope(engine) as s:
        n_users = s.scalar(select(func.count()).select_from(User))
        truth = load_truth(s)
    if not n_users:
        raise ValueError("the database is empty; run `ranker demo init` first")
    if truth is None:
        raise ValueError("this database has no synthetic ground truth (imported data?); simulated traffic "
                         "needs the demo world: `ranker demo init`")
    return truth


def simulate(engine: Engine, days: int = 7, requests_per_day: int = 500, seed: int = 0,
             k: int = config.DEFAULT_K, refit_base: bool = True, new_items_per_day: float = 0.01,
             progress: Progress | None = None, show_bar: bool = False,
             should_stop: Callable[[], bool] | None = None, actor: str = "cli",
             unfinished: str = runs.AUTO, notice: Callable[[str], None] | None = None) -> SimulationSummary:
    """Serve ``days × requests_per_day`` simulated requests and log what users do.

    ``new_items_per_day`` is a fraction of each item type's catalogue added per day.
    An unfinished run left by a crash is resumed when its settings are these, and refused
    otherwise; ``unfinished`` ``resume`` resumes it with its own settings, ``discard``
    rolls its partial day back first (see :func:`ranker.sim.runs.claim`). ``notice``
    hears what happened to it ("resuming simulation run 3 at day 1 of 1, request 197 of 300").

    Raises
    ------
    ranker.sim.runs.RunBusyError
        Another process is simulating on this database.
    """
    if days <= 0 or requests_per_day <= 0:
        raise ValueError("--days and --requests-per-day must be positive")
    truth = _require_world(engine)
    settings = runs.RunSettings(int(seed), int(days), int(requests_per_day), int(k), bool(refit_base),
                                float(new_items_per_day))
    run = runs.claim(engine, settings, unfinished, actor, notice)
    try:
        _drive(engine, run, truth, progress, show_bar, should_stop)
        summary = _summary(engine, run)
        lists = sum(arm["requests"] for arm in summary.by_arm.values())
        runs.finish(engine, run, actor, {"requests": summary.requests, "lists": lists})
    except BaseException as exc:
        runs.fail(engine, run, exc)
        raise
    return summary


@dataclass
class _Day:
    """What serving one simulated day needs."""

    engine: Engine
    svc: Any  # ranker.serving.service.Service
    run: runs.Run
    user_ids: np.ndarray
    roles: dict[int, str]
    bar: Any  # tqdm
    progress: Progress | None
    should_stop: Callable[[], bool] | None


def _drive(engine: Engine, run: runs.Run, truth: GroundTruth, progress: Progress | None, show_bar: bool,
           should_stop: Callable[[], bool] | None) -> None:
    """Serve the run's days from where it stands, moving the clock after each."""
    from tqdm import tqdm

    from ranker.base.store import fit_base_models
    from ranker.serving.service import service

    s = run.settings
    user_ids, roles, type_counts = _population(engine, run.start_clock)
    svc = service(engine)
    done = min(run.day, s.days) * s.requests_per_day + run.request
    bar = tqdm(total=s.days * s.requests_per_day, initial=done, desc="simulate", unit="req", disable=not show_bar)
    ctx = _Day(engine, svc, run, user_ids, roles, bar, progress, should_stop)
    try:
        for day in range(run.day, s.days):
            day_start = run.day_start(day)
            if run.items_day != day:
                truth = _add_items(engine, run, truth, type_counts, day)
            if s.refit_base:
                fit_base_models(engine, cutoff=day_start)
            svc.invalidate()
            _serve_day(ctx, truth, day, first=run.request if day == run.day else 0)
            fault_point("simulate:before_clock")
            runs.end_day(engine, run, day)
            _refresh_rollups(engine)
    finally:
        bar.close()


def _refresh_rollups(engine: Engine) -> None:
    """Roll up the day just finished for the dashboard (:func:`ranker.data.rollups.refresh`). A busy
    database only delays it: the next refresh (the dashboard's, the next day's) catches up."""
    from ranker.data.rollups import RollupsBusyError, refresh

    try:
        refresh(engine)
    except RollupsBusyError as exc:
        log.warning("%s", exc)


def _rng(run: runs.Run, day: int, stream: int, *more: int) -> np.random.Generator:
    """The generator of one stream of one simulated day (and request): a pure function of the
    seed, the date and the stream, so a resumed run draws what an uninterrupted one would."""
    date = run.day_start(day).toordinal()
    return np.random.default_rng([run.settings.seed % 2**63, date, stream, *more])


def _population(engine: Engine, start: datetime) -> tuple[np.ndarray, dict[int, str], dict[str, int]]:
    """(user ids, role by user id, item count by item type before ``start``)."""
    with session_scope(engine) as s:
        users = s.execute(select(User.id, User.role).order_by(User.id)).all()
        type_counts = dict(s.execute(select(Item.item_type, func.count()).where(Item.created_at < start)
                                     .group_by(Item.item_type)).all())
    return np.array([u for u, _ in users]), {u: r for u, r in users}, type_counts


def _serve_day(ctx: _Day, truth: GroundTruth, day: int, first: int) -> None:
    """Serve one day's requests from index ``first`` through ``recommend()`` and log what users do.

    A resumed day first writes the response to its last served list again: a crash may have
    come between the list and its outcomes, and outcomes already stored are not stored twice.
    """
    from ranker.serving.service import recommend

    run, n = ctx.run, ctx.run.settings.requests_per_day
    day_start = run.day_start(day)
    schedule = _rng(run, day, _SCHEDULE)
    times = np.sort(schedule.uniform(0, 86400, size=n))
    picks = schedule.choice(ctx.user_ids, size=n)
    if first:
        _respond_again(ctx, truth, day, first - 1, day_start + timedelta(seconds=float(times[first - 1])))
    for i in range(first, n):
        if ctx.should_stop and ctx.should_stop():
            raise RuntimeError("simulation cancelled")
        uid = int(picks[i])
        rng = _rng(run, day, _REQUEST, i)
        flow = _flow(rng, ctx.roles[uid])
        t = day_start + timedelta(seconds=float(times[i]))
        rec = recommend(uid, flow, run.settings.k, engine=ctx.engine, as_of=t, source=runs.SOURCE,
                        request_id=run.request_id(day, i))
        if rec.items:
            _write_response(ctx.engine, rec.impression_ids, _user_response(rng, truth, ctx.svc, rec, t))
        ctx.bar.update(1)
        fault_point("simulate:mid_day")
        if (i + 1) % _HEARTBEAT_EVERY == 0:
            runs.heartbeat(ctx.engine, run, i + 1)
            if ctx.progress:
                ctx.progress((day + (i + 1) / n) / run.settings.days, f"day {day + 1}/{run.settings.days}")


def _flow(rng: np.random.Generator, role: str) -> str:
    from ranker.flows import own_flows

    flows = own_flows(role)
    return flows[int(rng.integers(len(flows)))]


@dataclass
class _Logged:
    """A list as the impressions log holds it: what :func:`_user_response` needs of a served list."""

    user_id: int
    item_ids: list[int]
    impression_ids: list[int]


def _respond_again(ctx: _Day, truth: GroundTruth, day: int, i: int, t: datetime) -> None:
    """Write request ``i``'s response again from the same draws (a no-op when it was written)."""
    rid = ctx.run.request_id(day, i)
    with session_scope(ctx.engine) as s:
        shown = s.execute(select(Impression.id, Impression.user_id, Impression.item_id)
                          .where(Impression.request_id == rid).order_by(Impression.position)).all()
    if not shown:
        return
    rng = _rng(ctx.run, day, _REQUEST, i)
    _flow(rng, ctx.roles[shown[0].user_id])  # the draw the request made before it was served
    logged = _Logged(shown[0].user_id, [r.item_id for r in shown], [r.id for r in shown])
    _write_response(ctx.engine, logged.impression_ids, _user_response(rng, truth, ctx.svc, logged, t))


def _add_items(engine: Engine, run: runs.Run, truth: GroundTruth, type_counts: dict[str, int],
               day: int) -> GroundTruth:
    """Add ``day``'s new items and their truth, and note in the run that they are added, in one transaction."""
    from ranker.sim.synth import new_items

    rng = _rng(run, day, _ITEMS)
    rate = run.settings.new_items_per_day
    counts = {t: int(rng.poisson(rate * n)) for t, n in sorted(type_counts.items())}
    rows, vecs, quality = new_items(rng, truth, counts, run.day_start(day))
    with session_scope(engine) as s:
        if rows:
            ids = np.array(s.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), rows).all())
            truth = GroundTruth(
                params=truth.params,
                user_ids=truth.user_ids, user_vecs=truth.user_vecs,
                item_ids=np.concatenate([truth.item_ids, ids]).astype(np.int64),
                item_vecs=np.concatenate([truth.item_vecs, vecs]),
                item_quality=np.concatenate([truth.item_quality, quality]),
                extra=truth.extra,
            )
            save_truth(s, truth)
        runs.mark_items(s, run, day, len(rows))
    return truth


def _user_response(rng, truth, svc, rec, t: datetime) -> list[tuple[int, str, datetime]]:
    """(position, kind, time) events for one served list, sampled from the ground truth."""
    from ranker.sim.synth import POSITIVE_KIND

    catalog = svc.catalog()
    rows = catalog.index(np.array(rec.item_ids))
    ages = age_days(t, catalog.created[rows], catalog.updated[rows])
    n = len(rows)
    draws = (rng.random(n), rng.random(n), rng.random(n))
    seen = click_model(truth, rec.user_id, catalog.ids[rows], ages, catalog.category[rows], *draws)
    viewed, clicked, positive = truth.params.logged_views(seen.examined), seen.clicked, seen.positive
    events = []
    for pos in range(n):
        ts = t + timedelta(seconds=5 * pos)
        if viewed[pos]:
            events.append((pos, "view", ts))
        if clicked[pos]:
            events.append((pos, "click", ts + timedelta(seconds=2)))
        if positive[pos]:
            kinds = POSITIVE_KIND[catalog.item_type[rows[pos]]]
            events.append((pos, kinds[int(rng.integers(len(kinds)))], ts + timedelta(seconds=30)))
    return events


def _write_response(engine: Engine, impression_ids: list[int], events) -> None:
    """Every event (view, click, feedback) is an outcome of its impression and a platform interaction.

    A ``view`` outcome is what the world's client logs (:meth:`ranker.sim.truth.WorldParams.logged_views`):
    every position in the viewport by default, or only the examined ones.
    An outcome already stored is skipped, so writing a response twice stores it once.
    """
    log_outcomes(engine, [(impression_ids[p], kind, ts) for p, kind, ts in events])


def _summary(engine: Engine, run: runs.Run) -> SimulationSummary:
    """The run's traffic as logged: lists, impressions, clicks and positives, overall and per arm."""
    s = run.settings
    mine = Impression.request_id.startswith(f"sim-r{run.id}-", autoescape=True)
    with session_scope(engine) as db:
        lists = dict(db.execute(select(ServedList.arm, func.count())
                                .where(ServedList.request_id.startswith(f"sim-r{run.id}-", autoescape=True))
                                .group_by(ServedList.arm)).all())
        shown = dict(db.execute(select(Impression.arm, func.count()).where(mine).group_by(Impression.arm)).all())
        outcomes = select(Outcome.kind, Impression.arm).join(Impression, Outcome.impression_id == Impression.id)
        clicks = dict(db.execute(outcomes.with_only_columns(Impression.arm, func.count())
                                 .where(mine, Outcome.kind == "click").group_by(Impression.arm)).all())
        positives = db.scalar(outcomes.with_only_columns(func.count())
                              .where(mine, Outcome.kind.in_(config.POSITIVE_KINDS)))
        new_items = db.scalar(select(SimulationRun.new_items).where(SimulationRun.id == run.id))
    by_arm = {arm: {"requests": int(lists[arm]), "impressions": int(shown.get(arm, 0)),
                    "clicks": int(clicks.get(arm, 0))} for arm in sorted(lists)}
    return SimulationSummary(
        days=s.days, requests=s.days * s.requests_per_day, impressions=sum(shown.values()),
        clicks=sum(clicks.values()), positives=int(positives or 0), new_items=int(new_items or 0),
        start=run.start_clock.isoformat(), end=run.day_start(s.days).isoformat(), by_arm=by_arm, run_id=run.id,
        resumed=run.resumed)


__all__ = ["simulate", "SimulationSummary"]
