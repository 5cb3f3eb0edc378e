"""Simulated traffic: synthetic users served by ``recommend()`` on a simulated clock.

Each simulated day new items arrive, the base models are refitted on the history so
far (a nightly job), and requests are served through the real serving path with the
A/B assignment and impression logging. Clicks and explicit feedback are sampled from
the hidden ground truth with the position-based click model and logged as outcomes
(and as platform interactions, so popularity moves). Deterministic under a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, insert, select

from ranker import config
from ranker.data.clock import serve_now, set_clock
from ranker.data.db import audit, session_scope
from ranker.data.schema import Item, User
from ranker.rank.features import age_days
from ranker.serving.experiments import log_outcomes
from ranker.sim.truth import GroundTruth, click_model, load_truth, save_truth

Progress = Callable[[float, str], None]


@dataclass
class SimulationSummary:
    days: int
    requests: int
    impressions: int
    clicks: int
    positives: int
    new_items: int
    start: str
    end: str
    by_arm: dict[str, dict[str, int]] = field(default_factory=dict)


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
             should_stop: Callable[[], bool] | None = None, actor: str = "cli") -> SimulationSummary:
    """Serve ``days × requests_per_day`` simulated requests and log what users do.

    ``new_items_per_day`` is a fraction of each item type's catalogue added per day.
    """
    from tqdm import tqdm

    from ranker.base.store import fit_base_models
    from ranker.serving.service import service

    if days <= 0 or requests_per_day <= 0:
        raise ValueError("--days and --requests-per-day must be positive")
    truth = _require_world(engine)
    start, user_ids, roles, type_counts = _population(engine)
    summary = SimulationSummary(days, 0, 0, 0, 0, 0, start.isoformat(), start.isoformat())
    svc = service(engine)
    bar = tqdm(total=days * requests_per_day, desc="simulate", unit="req", disable=not show_bar)
    run = _Run(engine, svc, np.random.default_rng(seed), user_ids, roles, days, requests_per_day, k, seed,
               summary, bar, progress, should_stop)
    try:
        for day in range(days):
            day_start = start + timedelta(days=day)
            truth = _add_items(engine, run.rng, truth, type_counts, new_items_per_day, day_start, summary)
            if refit_base:
                fit_base_models(engine, cutoff=day_start)
            svc.invalidate()
            _serve_day(run, truth, day, day_start)
            summary.end = _end_day(engine, day_start)
    finally:
        bar.close()
    with session_scope(engine) as s:
        audit(s, "simulate", {"days": days, "requests_per_day": requests_per_day, "seed": seed,
                              "requests": summary.requests}, actor)
    return summary


@dataclass
class _Run:
    """One simulation run: its settings, the shared random generator, and what it has counted so far."""

    engine: Engine
    svc: Any  # ranker.serving.service.Service
    rng: np.random.Generator
    user_ids: np.ndarray
    roles: dict[int, str]
    days: int
    requests_per_day: int
    k: int
    seed: int
    summary: SimulationSummary
    bar: Any  # tqdm
    progress: Progress | None
    should_stop: Callable[[], bool] | None


def _population(engine: Engine) -> tuple[datetime, np.ndarray, dict[int, str], dict[str, int]]:
    """(the world clock, user ids, role by user id, item count by item type)."""
    with session_scope(engine) as s:
        start = serve_now(s)
        users = s.execute(select(User.id, User.role).order_by(User.id)).all()
        type_counts = dict(s.execute(select(Item.item_type, func.count()).group_by(Item.item_type)).all())
    return start, np.array([u for u, _ in users]), {u: r for u, r in users}, type_counts


def _serve_day(run: _Run, truth: GroundTruth, day: int, day_start: datetime) -> None:
    """Serve one day's requests at random times through ``recommend()`` and log what users do."""
    from ranker.flows import own_flows
    from ranker.serving.service import recommend
    from ranker.sim.synth import POSITIVE_KIND

    rng, n = run.rng, run.requests_per_day
    times = np.sort(rng.uniform(0, 86400, size=n))
    picks = rng.choice(run.user_ids, size=n)
    for i, (secs, uid) in enumerate(zip(times, picks)):
        if run.should_stop and run.should_stop():
            raise RuntimeError("simulation cancelled")
        flows = own_flows(run.roles[int(uid)])
        flow = flows[int(rng.integers(len(flows)))]
        t = day_start + timedelta(seconds=float(secs))
        rec = recommend(int(uid), flow, run.k, engine=run.engine, as_of=t, source="sim",
                        request_id=f"sim{run.seed}-{day_start:%Y%m%d}-{i}-{rng.integers(1 << 30):x}")
        run.bar.update(1)
        run.summary.requests += 1
        if not rec.items:
            continue
        events = _user_response(rng, truth, run.svc, rec, t, POSITIVE_KIND)
        _write_response(run.engine, rec, events)
        _count_response(run.summary, rec, events)
        if run.progress and i % 50 == 0:
            run.progress((day + (i + 1) / n) / run.days, f"day {day + 1}/{run.days}")


def _count_response(summary: SimulationSummary, rec, events) -> None:
    """Add one served list and its events to the totals, overall and for its arm."""
    clicks = sum(1 for _, kind, _ in events if kind == "click")
    arm = summary.by_arm.setdefault(rec.arm, {"requests": 0, "impressions": 0, "clicks": 0})
    arm["requests"] += 1
    arm["impressions"] += len(rec.items)
    arm["clicks"] += clicks
    summary.impressions += len(rec.items)
    summary.clicks += clicks
    summary.positives += sum(1 for _, kind, _ in events if kind in config.POSITIVE_KINDS)


def _end_day(engine: Engine, day_start: datetime) -> str:
    """Move the world clock to the end of the day; returns that moment in ISO format."""
    day_end = day_start + timedelta(days=1)
    with session_scope(engine) as s:
        set_clock(s, day_end)
    return day_end.isoformat()


def _add_items(engine, rng, truth, type_counts, rate, when, summary) -> GroundTruth:
    from ranker.sim.synth import new_items

    counts = {t: int(rng.poisson(rate * n)) for t, n in sorted(type_counts.items())}
    rows, vecs, quality = new_items(rng, truth, counts, when)
    if not rows:
        return truth
    with session_scope(engine) as s:
        s.execute(insert(Item), rows)
        ids = np.array(s.scalars(select(Item.id).order_by(Item.id.desc()).limit(len(rows))).all()[::-1])
        truth = GroundTruth(
            params=truth.params,
            user_ids=truth.user_ids, user_vecs=truth.user_vecs,
            item_ids=np.concatenate([truth.item_ids, ids]).astype(np.int64),
            item_vecs=np.concatenate([truth.item_vecs, vecs]),
            item_quality=np.concatenate([truth.item_quality, quality]),
            extra=truth.extra,
        )
        save_truth(s, truth)
    summary.new_items += len(rows)
    return truth


def _user_response(rng, truth, svc, rec, t: datetime, positive_kind) -> list[tuple[int, str, datetime]]:
    """(position, kind, time) events for one served list, sampled from the ground truth."""
    catalog = svc.catalog()
    rows = catalog.index(np.array(rec.item_ids))
    ages = age_days(t, catalog.created[rows], catalog.updated[rows])
    n = len(rows)
    draws = (rng.random(n), rng.random(n), rng.random(n))
    seen = click_model(truth, rec.user_id, catalog.ids[rows], ages, catalog.category[rows], *draws)
    examined, clicked, positive = seen.examined, seen.clicked, seen.positive
    events = []
    for pos in range(n):
        ts = t + timedelta(seconds=5 * pos)
        if examined[pos]:
            events.append((pos, "view", ts))
        if clicked[pos]:
            events.append((pos, "click", ts + timedelta(seconds=2)))
        if positive[pos]:
            kinds = positive_kind[catalog.item_type[rows[pos]]]
            events.append((pos, kinds[int(rng.integers(len(kinds)))], ts + timedelta(seconds=30)))
    return events


def _write_response(engine: Engine, rec, events) -> None:
    """Every event (view, click, feedback) is an outcome of its impression and a platform interaction.

    A ``view`` outcome says the user examined the item, as a client's viewport logging would.
    """
    log_outcomes(engine, [(rec.impression_ids[p], kind, ts) for p, kind, ts in events])


__all__ = ["simulate", "SimulationSummary"]
