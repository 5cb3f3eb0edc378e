"""The synthetic world: a realistic demo platform, deterministic by seed.

Users of every role, startups plus developer and investor profiles as items, and
90 days of views, clicks and explicit feedback. The history comes from a hidden
ground-truth model (:mod:`ranker.sim.truth`): a user's attraction to an item is true
affinity + freshness + quality - satiation with categories shown higher in the
same list, and positions are examined with decreasing probability.

The lists in the history were served by a plain "legacy" policy (declared-category
match, a new-arrivals boost and a little popularity, with noise), as a platform would
have run before any learned ranker; their outcomes are interactions of origin
``impression``. Views are logged as the world's client logs them (every rendered position by
default, see :attr:`ranker.sim.truth.WorldParams.view_logging`), and a share of the lists
carry randomised adjacent swaps, the platform's position-bias experiment
(:mod:`ranker.rank.propensity`). Besides the feed, users find items by themselves (search, links, word of
mouth): those visits are ``organic`` interactions, drawn from a stream of their own so the
legacy lists do not depend on them. Organic visits favour truly attractive items, so the
popularity feature (organic interactions only) carries signal without the feed's loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import JSON, Connection, Engine, Table, delete, func, insert, select, text, update
from tqdm import tqdm

from ranker import config, keys
from ranker.data.clock import set_clock, utcnow
from ranker.data.db import (
    WorldExistsError,
    audit,
    ensure_schema,
    is_empty,
    put_setting,
    refuse_unfinished_world,
    session_scope,
    table_counts,
)
from ranker.data.schema import (
    IMPRESSION,
    ORGANIC,
    ExperimentRecord,
    Impression,
    Interaction,
    Item,
    Job,
    ModelVersion,
    Outcome,
    ServedList,
    Setting,
    User,
)
from ranker.faults import fault_point
from ranker.flows import flow_item_type, own_flows
from ranker.rank.propensity import CONTEXT_KEY, Swaps, maybe_swaps, validate_share
from ranker.serving.experiments import served_list_metrics, start_experiment
from ranker.sim.truth import (
    GroundTruth,
    WorldParams,
    WorldTruth,
    attraction_logits,
    click_model,
    save_truth,
)

#: The demo history ends here. Fixed, so a seed always gives the same rows.
WORLD_END = datetime(2026, 1, 1)
HISTORY_DAYS = 90
LIST_LENGTH = 10
#: The legacy feed's lists are logged like any served list: arm, source and model version
#: ``legacy``, with the 2k candidates it chose them from (``served_lists.context``).
LEGACY = "legacy"
LATENT_DIM = 8
INSERT_BATCH = 20_000
#: How much of an item's and a user's taste is idiosyncratic (not explained by category/field).
ITEM_TASTE_NOISE = 0.45
USER_TASTE_NOISE = 0.5
#: Share of the catalogue that predates the 90 days of history.
OLD_ITEM_SHARE = 0.3
#: The legacy policy's weights: popularity (log views), declared-category match, editorial quality.
LEGACY_WEIGHTS = (0.1, 1.0, 0.0)
#: The legacy policy's "new arrivals" boost: weight of exp(-age_days / LEGACY_FRESH_DAYS).
#: Without it new items were almost never shown, so the base models never learnt them and
#: under 1 % of their candidates were under 30 days old. Much stronger (3.0) and the feed is
#: all new arrivals: trending then beats every personalised base model.
LEGACY_FRESH_WEIGHT = 1.0
LEGACY_FRESH_DAYS = 14.0
#: Organic visits (a user opens an item found by themselves) per legacy feed session.
ORGANIC_VISITS_PER_SESSION = 0.5
#: An organic visit opens one of this many random eligible items, the more attractive the likelier.
ORGANIC_CHOICES = 20
#: The organic visits' random stream: (seed, this) seeds it, apart from the legacy feed's.
ORGANIC_STREAM = 1
#: The legacy feed's randomised swaps (position-bias experiments) draw from (seed, this).
SWAP_STREAM = 2

CATEGORIES = (
    "ai", "fintech", "health", "climate", "edtech",
    "ecommerce", "security", "gaming", "biotech", "mobility",
)
#: item type -> (field vocabulary, type vocabulary)
VOCAB = {
    "startup": (
        ("b2b-saas", "marketplace", "consumer", "deeptech", "hardware", "services"),
        ("pre-seed", "seed", "series-a", "series-b"),
    ),
    "developer": (
        ("backend", "frontend", "ml", "mobile", "devops", "data"),
        ("junior", "mid", "senior", "lead"),
    ),
    "investor": (
        ("pre-seed", "seed", "series-a", "growth"),
        ("angel", "vc", "corporate", "accelerator"),
    ),
}
#: The field a user of each role declares is drawn from this item type's vocabulary.
ROLE_FIELD_VOCAB = {"developer": "developer", "investor": "investor", "founder": "startup"}
#: Explicit feedback kinds by item type received.
POSITIVE_KIND = {"startup": ("apply", "interest", "favorite"), "developer": ("like", "favorite"),
                 "investor": ("interest", "like")}


@dataclass(frozen=True)
class Scale:
    users: dict[str, int]
    items: dict[str, int]
    sessions_per_user_day: float


SCALES = {
    "small": Scale({"developer": 60, "investor": 40, "founder": 60},
                   {"startup": 240, "developer": 120, "investor": 80}, 0.25),
    "default": Scale({"developer": 800, "investor": 500, "founder": 700},
                     {"startup": 1500, "developer": 800, "investor": 400}, 0.11),
    "large": Scale({"developer": 8000, "investor": 5000, "founder": 7000},
                   {"startup": 12000, "developer": 5000, "investor": 3000}, 0.16),
    # about 10M interactions (some 1,040 per session per user-day over the 90 days), for PostgreSQL
    "xlarge": Scale({"developer": 80000, "investor": 50000, "founder": 70000},
                    {"startup": 60000, "developer": 25000, "investor": 15000}, 0.048),
}


#: The tables of a world, children first. The audit log is not among them.
WORLD_TABLES = (Outcome, Impression, ServedList, Interaction, WorldTruth, Item, User, ModelVersion, Job, Setting,
                ExperimentRecord)


def wipe(engine: Engine) -> None:
    """Delete every world table (:data:`WORLD_TABLES`) in one transaction. The audit log is kept.

    PostgreSQL truncates them (restarting their id sequences, as SQLite's emptied tables
    restart their ids): deleting 10M rows row by row also ran the foreign keys' cascade check
    once per deleted user and item, each a scan of the tables that reference it.
    """
    with session_scope(engine) as s:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{m.__tablename__}"' for m in WORLD_TABLES)
            s.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
            return
        for model in WORLD_TABLES:
            s.execute(delete(model))


#: The A/B experiment a demo world starts with (50% rollout, at the world's clock); `ranker demo init`
#: says so, and `ranker experiment stop` ends it.
DEMO_EXPERIMENT = "demo"


def build_world(
    engine: Engine,
    seed: int = 42,
    preset: str = "default",
    scale: str = "default",
    force: bool = False,
    progress: Callable[[float, str], None] | None = None,
    show_bar: bool = False,
    view_logging: str | None = None,
    viewport: int | None = None,
    swap_share: float = config.DEFAULTS.swap_share,
) -> dict[str, int]:
    """Build the demo world into ``engine``; returns table counts.

    ``view_logging`` and ``viewport`` override the preset's (see
    :meth:`ranker.sim.truth.WorldParams.logged_views`). ``swap_share`` of the legacy feed's lists
    are served with randomised adjacent swaps (:mod:`ranker.rank.propensity`), and serving
    starts with the same share.

    The world is written in many transactions (the history in batches). The setting
    :data:`ranker.keys.WORLD_BUILD` is written with the first rows and deleted as the last step,
    so a build that crashes or is killed halfway leaves a world that ``demo init``, ``demo init
    --if-empty`` and the dashboard refuse, saying to rebuild it with ``--force``.

    Raises
    ------
    WorldExistsError
        The database already holds data and ``force`` is False.
    IncompleteWorldError
        The database holds a world whose build did not finish, and ``force`` is False.
    ValueError
        Unknown preset or scale.
    """
    params = WorldParams.preset(preset)
    params = replace(params, view_logging=params.view_logging if view_logging is None else view_logging,
                     viewport=params.viewport if viewport is None else int(viewport))
    swap_share = validate_share(swap_share)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    _make_room(engine, force)

    rng = np.random.default_rng(seed)
    sc = SCALES[scale]
    start = WORLD_END - timedelta(days=HISTORY_DAYS)

    users = _make_users(rng, sc, start)
    items = _make_items(rng, sc, start)
    building = {"seed": seed, "preset": preset, "scale": scale, "started_at": utcnow().isoformat(timespec="seconds")}
    user_ids, item_ids = _insert_entities(engine, users, items, building)

    truth = _make_truth(rng, params, users, items, user_ids, item_ids)
    with session_scope(engine) as s:
        save_truth(s, truth)

    organic_rng = np.random.default_rng([seed, ORGANIC_STREAM])
    swaps = (np.random.default_rng([seed, SWAP_STREAM]), swap_share)
    views, engaged = _simulate_history(
        engine, rng, organic_rng, sc, truth, users, items, user_ids, item_ids, start, progress, show_bar, swaps
    )
    _record_world(engine, item_ids, views, engaged, start,
                  {"seed": seed, "preset": preset, "scale": scale, "force": force,
                   "view_logging": params.view_logging, "viewport": params.viewport, "swap_share": swap_share})
    start_experiment(engine, DEMO_EXPERIMENT, owner="demo init")
    with session_scope(engine) as s:  # the last step: the world is complete
        s.execute(delete(Setting).where(Setting.key == keys.WORLD_BUILD))
    return table_counts(engine)


def _make_room(engine: Engine, force: bool) -> None:
    """Create the schema; wipe an existing world only when ``force`` (else IncompleteWorldError for
    an unfinished build, WorldExistsError for any other data)."""
    ensure_schema(engine)
    if not is_empty(engine):
        if not force:
            refuse_unfinished_world(engine)
            raise WorldExistsError(
                "the database already holds users, items or interactions; "
                "refusing to mix two worlds. Re-run with --force to replace it."
            )
        wipe(engine)


def _insert_entities(engine: Engine, users: dict, items: dict, building: dict) -> tuple[np.ndarray, np.ndarray]:
    """Insert the user and item rows, and the record of the build under way (``building``, the
    setting :data:`ranker.keys.WORLD_BUILD`) in the same transaction; returns their database ids, sorted."""
    with session_scope(engine) as s:
        put_setting(s, keys.WORLD_BUILD, building)
        s.execute(insert(User), users["rows"])
        s.execute(insert(Item), items["rows"])
    with engine.connect() as conn:
        user_ids = np.array(conn.execute(select(User.id).order_by(User.id)).scalars().all())
        item_ids = np.array(conn.execute(select(Item.id).order_by(Item.id)).scalars().all())
    return user_ids, item_ids


def _record_world(engine: Engine, item_ids: np.ndarray, views: dict[str, np.ndarray],
                  engaged: dict[str, np.ndarray], start: datetime, run: dict) -> None:
    """Item view counts, the popularity scale, the world record, the clock and the audit entry.

    ``views`` and ``engaged`` hold per-item totals by origin; the popularity scale is taken
    over the organic ones, as the popularity feature counts. ``run`` holds the ``build_world``
    arguments to record: seed, preset, scale, force, view logging, viewport and swap share.
    """
    total_views = views[ORGANIC] + views[IMPRESSION]
    with session_scope(engine) as s:
        s.execute(update(Item), [{"id": int(i), "views": int(v)} for i, v in zip(item_ids, total_views)])
        peak = float((views[ORGANIC] + config.INTERACTION_POPULARITY_WEIGHT * engaged[ORGANIC] + 1).max())
        put_setting(s, keys.POPULARITY_MAX_VIEWS, int(np.ceil(peak / 100.0) * 100))
        put_setting(s, keys.WORLD, {"seed": run["seed"], "preset": run["preset"], "scale": run["scale"],
                                 "start": start.isoformat(), "end": WORLD_END.isoformat(),
                                 "view_logging": run["view_logging"], "viewport": run["viewport"]})
        put_setting(s, keys.SWAP_SHARE, run["swap_share"])
        set_clock(s, WORLD_END)
        audit(s, "demo_init", run)


# --- Entities -------------------------------------------------------------------


def _make_users(rng: np.random.Generator, sc: Scale, start: datetime) -> dict:
    roles, cats, fields = [], [], []
    for role, n in sc.users.items():
        vocab = VOCAB[ROLE_FIELD_VOCAB[role]][0]
        roles += [role] * n
        cats += list(rng.choice(CATEGORIES, size=n))
        fields += list(rng.choice(vocab, size=n))
    n = len(roles)
    joined = [start - timedelta(days=int(d)) for d in rng.integers(1, 400, size=n)]
    rows = [
        {"name": f"{r}-{i + 1:05d}", "role": r, "category": c, "field": f, "created_at": t}
        for i, (r, c, f, t) in enumerate(zip(roles, cats, fields, joined))
    ]
    activity = rng.lognormal(mean=0.0, sigma=0.6, size=n)
    return {"rows": rows, "role": np.array(roles), "category": np.array(cats),
            "field": np.array(fields), "activity": activity / activity.mean()}


def _make_items(rng: np.random.Generator, sc: Scale, start: datetime) -> dict:
    kinds, cats, fields, types, created, updated = [], [], [], [], [], []
    span = HISTORY_DAYS * 86400
    for item_type, n in sc.items.items():
        fvocab, tvocab = VOCAB[item_type]
        kinds += [item_type] * n
        cats += list(rng.choice(CATEGORIES, size=n, p=_zipf(len(CATEGORIES), 0.6)))
        fields += list(rng.choice(fvocab, size=n))
        types += list(rng.choice(tvocab, size=n))
        # 30% of the catalogue predates the history; the rest arrives during it.
        old = rng.random(n) < OLD_ITEM_SHARE
        offset = np.where(old, -rng.integers(86400, 365 * 86400, size=n),
                          rng.integers(0, span, size=n))
        c = [start + timedelta(seconds=int(o)) for o in offset]
        # A quarter of the items are edited later (a profile refresh).
        refresh = rng.random(n) < 0.25
        lag = rng.integers(3600, 40 * 86400, size=n)
        u = [ci + timedelta(seconds=int(lg)) if r else ci for ci, r, lg in zip(c, refresh, lag)]
        u = [min(x, WORLD_END) for x in u]
        created += c
        updated += u
    rows = [
        {"item_type": k, "name": f"{k}-{i + 1:05d}", "category": c, "field": f, "type": t,
         "created_at": cr, "updated_at": up, "views": 0}
        for i, (k, c, f, t, cr, up) in enumerate(zip(kinds, cats, fields, types, created, updated))
    ]
    return {"rows": rows, "item_type": np.array(kinds), "category": np.array(cats),
            "field": np.array(fields), "type": np.array(types),
            "created": np.array(created, dtype="datetime64[s]"),
            "updated": np.array(updated, dtype="datetime64[s]")}


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _make_truth(rng, params, users, items, user_ids, item_ids) -> GroundTruth:
    cat_vec = {c: _unit(rng.normal(size=LATENT_DIM)) for c in CATEGORIES}
    all_fields = sorted({f for fv, _ in VOCAB.values() for f in fv})
    field_vec = {f: _unit(rng.normal(size=LATENT_DIM)) for f in all_fields}

    iv = np.stack([cat_vec[c] + 0.5 * field_vec[f] for c, f in zip(items["category"], items["field"])])
    iv = _unit_rows(iv + ITEM_TASTE_NOISE * rng.normal(size=iv.shape))
    # A user likes their declared category, a hidden second one, and some noise.
    hidden = rng.choice(CATEGORIES, size=len(user_ids))
    uv = np.stack([cat_vec[c] + 0.7 * cat_vec[h] + 0.3 * field_vec[f]
                   for c, h, f in zip(users["category"], hidden, users["field"])])
    uv = _unit_rows(uv + USER_TASTE_NOISE * rng.normal(size=uv.shape))
    return GroundTruth(
        params=params,
        user_ids=user_ids.astype(np.int64),
        user_vecs=uv.astype(np.float32),
        item_ids=item_ids.astype(np.int64),
        item_vecs=iv.astype(np.float32),
        item_quality=rng.normal(size=len(item_ids)).astype(np.float32),
        extra={"category_vecs": {c: v.tolist() for c, v in cat_vec.items()},
               "field_vecs": {f: v.tolist() for f, v in field_vec.items()}},
    )


def new_items(rng: np.random.Generator, truth: GroundTruth, counts: dict[str, int],
              created_at: datetime) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows for new items arriving at ``created_at``, with their latent vectors and quality.

    Drawn exactly as the original catalogue was (used by the traffic simulator).
    """
    cat_vec = {c: np.array(v) for c, v in truth.extra["category_vecs"].items()}
    field_vec = {f: np.array(v) for f, v in truth.extra["field_vecs"].items()}
    rows, vecs = [], []
    for item_type, n in counts.items():
        fvocab, tvocab = VOCAB[item_type]
        for _ in range(n):
            c = str(rng.choice(CATEGORIES, p=_zipf(len(CATEGORIES), 0.6)))
            f, t = str(rng.choice(fvocab)), str(rng.choice(tvocab))
            rows.append({"item_type": item_type, "name": f"{item_type}-new", "category": c, "field": f,
                         "type": t, "created_at": created_at, "updated_at": created_at, "views": 0})
            vecs.append(cat_vec[c] + 0.5 * field_vec[f] + ITEM_TASTE_NOISE * rng.normal(size=LATENT_DIM))
    vecs_arr = _unit_rows(np.array(vecs)).astype(np.float32) if vecs else np.zeros((0, LATENT_DIM), np.float32)
    return rows, vecs_arr, rng.normal(size=len(rows)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# --- History --------------------------------------------------------------------


def _simulate_history(engine, rng, organic_rng, sc, truth, users, items, user_ids, item_ids, start,
                      progress, show_bar, swaps) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Serve legacy lists day by day, add the day's organic visits, and write the resulting
    interactions in batches.

    Returns per-item totals (views, engaged interactions) by origin, aligned with ``item_ids``.
    """
    n_items = len(item_ids)
    history = _History(
        rng=rng, truth=truth, users=users, items=items, user_ids=user_ids, item_ids=item_ids,
        views=np.zeros(n_items, dtype=np.int64), engaged=np.zeros(n_items, dtype=np.int64),
        organic_rng=organic_rng, organic_views=np.zeros(n_items, dtype=np.int64),
        organic_engaged=np.zeros(n_items, dtype=np.int64),
        age_ref=np.where(items["updated"] > items["created"], items["updated"], items["created"]),
        pools={t: _Pool(np.flatnonzero(items["item_type"] == t), items["created"]) for t in config.ITEM_TYPES},
        next_impression=_next_ids(engine),
        swap_rng=swaps[0], swap_share=swaps[1],
    )
    buffer: list[dict] = []
    days = range(HISTORY_DAYS)
    bar = tqdm(days, desc="demo history", unit="day", disable=not show_bar)
    for day in bar:
        day_start = start + timedelta(days=day)
        n_sessions = rng.poisson(sc.sessions_per_user_day * users["activity"])
        session_users = np.repeat(np.arange(len(user_ids)), n_sessions)
        rng.shuffle(session_users)
        for u in session_users:
            buffer += _legacy_session(history, u, day_start)
        n_visits = organic_rng.poisson(sc.sessions_per_user_day * ORGANIC_VISITS_PER_SESSION * users["activity"])
        for u in np.repeat(np.arange(len(user_ids)), n_visits):
            buffer += _organic_visit(history, u, day_start)
        if len(buffer) >= INSERT_BATCH:
            _flush(engine, buffer, history.lists)
        if progress:
            progress((day + 1) / HISTORY_DAYS, f"day {day + 1}/{HISTORY_DAYS}")
    _flush(engine, buffer, history.lists)
    _sync_id_sequence(engine)
    return ({IMPRESSION: history.views, ORGANIC: history.organic_views},
            {IMPRESSION: history.engaged, ORGANIC: history.organic_engaged})


@dataclass
class _History:
    """The world the legacy history is drawn from, and the per-item totals so far."""

    rng: np.random.Generator
    truth: GroundTruth
    users: dict  # _make_users' arrays, by user row
    items: dict  # _make_items' arrays, by item row
    user_ids: np.ndarray
    item_ids: np.ndarray
    views: np.ndarray  # (n_items,) int64, views of legacy lists, updated in place
    engaged: np.ndarray  # (n_items,) int64, clicks and explicit positives on legacy lists, updated in place
    age_ref: np.ndarray  # (n_items,) datetime64[s]: the later of creation and last edit
    pools: dict[str, _Pool]  # item type -> its items, and which exist when
    organic_rng: np.random.Generator  # the organic visits' own stream
    organic_views: np.ndarray  # (n_items,) int64, views of organic visits, updated in place
    organic_engaged: np.ndarray  # (n_items,) int64, their clicks and explicit positives
    lists: list[dict] = field(default_factory=list)  # logged legacy lists waiting to be written
    served: int = 0  # legacy lists so far (their request ids)
    next_impression: int = 1  # the id the next logged impression gets
    swap_rng: np.random.Generator | None = None  # the legacy feed's randomised swaps draw from it
    swap_share: float = 0.0  # share of legacy lists served with randomised swaps


def _flush(engine: Engine, buffer: list[dict], lists: list[dict] | None = None) -> None:
    """Insert the buffered interaction rows and logged lists (served list, impressions with the ids
    :func:`_logged_list` gave them, their outcomes) in one transaction, then empty the buffers.

    PostgreSQL bulk-loads them with ``COPY .. FROM STDIN`` (:func:`_copy_rows`); SQLite takes
    Core ``executemany`` inserts. Both give the same rows and the same ids: COPY draws the
    serial ids from the table's sequence in row order, as the inserts do.
    """
    if not buffer and not lists:
        return
    tables = [(Interaction.__table__, buffer)]
    if lists:
        tables += [(ServedList.__table__, [x["served"] for x in lists]),
                   (Impression.__table__, [imp for x in lists for imp in x["impressions"]]),
                   (Outcome.__table__, [o for x in lists for o in x["outcomes"]])]
    copy = engine.dialect.name == "postgresql"
    with engine.begin() as conn:  # Core: the ORM's per-row bookkeeping costs more than the inserts
        for table, rows in tables:
            if not rows:
                continue
            if copy:
                _copy_rows(conn, table, rows)
            else:
                conn.execute(insert(table), rows)
            fault_point("demo:mid_history")
    buffer.clear()
    if lists:
        lists.clear()


def _copy_rows(conn: Connection, table: Table, rows: list[dict]) -> None:
    """Bulk-load ``rows`` (dicts keyed by column name, all with the same keys) into ``table`` with
    PostgreSQL's ``COPY .. FROM STDIN`` on ``conn``'s psycopg connection, inside its transaction.

    JSON columns are written as ``json.dumps`` text, the same text SQLAlchemy's inserts write;
    columns a row does not name take their defaults (the serial id among them).
    """
    columns = list(rows[0])
    as_json = [isinstance(table.c[c].type, JSON) for c in columns]
    names = ", ".join(f'"{c}"' for c in columns)
    cursor = conn.connection.driver_connection.cursor()
    try:
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            if any(as_json):
                for row in rows:
                    copy.write_row([json.dumps(row[c]) if j else row[c] for c, j in zip(columns, as_json)])
            else:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
    finally:
        cursor.close()


def _next_ids(engine: Engine) -> int:
    """The first free impression id (the tables are empty in a new world)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(Impression.id), 0))).scalar_one()) + 1


def _sync_id_sequence(engine: Engine) -> None:
    """After rows with explicit ids, move PostgreSQL's id sequence past them, and gather the loaded
    tables' planner statistics (``ANALYZE``: a fresh 10M-row world has none until autovacuum comes
    round, and the planner guesses meanwhile). SQLite needs neither."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT setval(pg_get_serial_sequence('impressions', 'id'), "
                              "(SELECT COALESCE(MAX(id), 1) FROM impressions))"))
            loaded = (User, Item, Interaction, ServedList, Impression, Outcome)
            names = ", ".join(f'"{m.__tablename__}"' for m in loaded)
            conn.execute(text(f"ANALYZE {names}"))


def _moment(h: _History, rng: np.random.Generator, u: int,
            day_start: datetime) -> tuple[tuple[str, ...], str, datetime, np.datetime64, np.ndarray]:
    """Where and when user row ``u`` looks today: (their flows, the item type of one drawn from
    ``rng``, a random moment of the day as datetime and datetime64, the rows of the items of that
    type that exist by then, as an :class:`_Eligible` view)."""
    flows = own_flows(h.users["role"][u])
    item_type = flow_item_type(flows[rng.integers(len(flows))])
    secs = int(rng.integers(0, 86400))
    t64 = np.datetime64(day_start, "s") + np.timedelta64(secs, "s")
    return flows, item_type, day_start + timedelta(seconds=secs), t64, h.pools[item_type].at(day_start, t64)


class _Pool:
    """The items of one type (rows, in row order) and which of them exist at a moment of a day.

    ``pool[created[pool] <= t]`` costs a pass over the whole pool per session, most of the
    history's time at 100k items. The pool is instead split once per day into the items created
    by the day's start and the few created during it, and :meth:`at` gives an :class:`_Eligible`
    view holding the same items in the same order.
    """

    def __init__(self, rows: np.ndarray, created: np.ndarray) -> None:
        self.rows, self.created = rows, created[rows]  # (n,) int64 item rows, (n,) datetime64[s]
        self.day: datetime | None = None

    def at(self, day_start: datetime, t64: np.datetime64) -> _Eligible:
        """The items created at or before ``t64``, a moment of the day starting at ``day_start``."""
        if self.day != day_start:
            start = np.datetime64(day_start, "s")
            before = self.created <= start
            during = np.flatnonzero(~before & (self.created < start + np.timedelta64(1, "D")))
            by_time = np.argsort(self.created[during], kind="stable")
            self.day, self.base = day_start, np.flatnonzero(before)  # positions in the pool, ascending
            self.new, self.new_created = during[by_time], self.created[during][by_time]
        m = int(np.searchsorted(self.new_created, t64, side="right"))
        return _Eligible(self.rows, self.base, np.sort(self.new[:m]))


class _Eligible:
    """``rows[sorted(base ∪ extra)]`` (positions in a pool, each ascending) without building it:
    its length and its elements at given indices, which is all the history draws from it."""

    def __init__(self, rows: np.ndarray, base: np.ndarray, extra: np.ndarray) -> None:
        self.rows, self.base, self.extra = rows, base, extra
        # where each extra position lands in the merged order
        self.rank = np.searchsorted(base, extra) + np.arange(len(extra))

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def __getitem__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q)
        if len(self.extra) == 0 or len(self.base) == 0:
            return self.rows[self.base[q] if len(self.extra) == 0 else self.extra[q]]
        hit = np.searchsorted(self.rank, q)  # extras ranked before q, or q's own extra
        last = np.minimum(hit, len(self.extra) - 1)
        is_extra = (hit < len(self.extra)) & (self.rank[last] == q)
        return self.rows[np.where(is_extra, self.extra[last], self.base[np.where(is_extra, 0, q - hit)])]


def _legacy_session(h: _History, u: int, day_start: datetime) -> list[dict]:
    """One session of user row ``u`` on the legacy feed at a random time of the day: the
    interactions it produced (none when the flow has fewer than ``LIST_LENGTH`` items yet)."""
    rng, items = h.rng, h.items
    flows, item_type, t, t64, pool = _moment(h, rng, u, day_start)
    if len(pool) < LIST_LENGTH:
        return []
    candidates = _legacy_list(rng, pool, h.users["category"][u], items, h.views, h.truth.item_quality, t64)
    swaps = maybe_swaps(h.swap_rng, LIST_LENGTH, h.swap_share) if h.swap_rng is not None else None
    shown = candidates[:LIST_LENGTH] if swaps is None else swaps.apply(candidates[:LIST_LENGTH])
    # The item's age as of t: the last edit only counts once it has happened.
    ref = np.where(items["updated"][shown] <= t64, h.age_ref[shown], items["created"][shown])
    age_days = (t64 - ref).astype("timedelta64[s]").astype(np.float64) / 86400.0
    draws = (rng.random(LIST_LENGTH), rng.random(LIST_LENGTH), rng.random(LIST_LENGTH))
    seen = click_model(h.truth, int(h.user_ids[u]), h.item_ids[shown], age_days, items["category"][shown], *draws)
    rows = _session_rows(h, int(h.user_ids[u]), shown, seen, POSITIVE_KIND[item_type], t)
    h.lists.append(_logged_list(h, int(h.user_ids[u]), _flow_serving(flows, item_type), candidates, shown, swaps,
                                age_days, rows, t))
    return rows


def _organic_visit(h: _History, u: int, day_start: datetime) -> list[dict]:
    """User row ``u`` opens an item they found by themselves at a random time of the day: of
    ``ORGANIC_CHOICES`` random eligible items of one of their flows' types, one drawn with
    probability softmax(true attraction). Its view (and click, explicit positive) are
    ``organic`` interactions, counted into ``h.organic_views`` and ``h.organic_engaged``."""
    rng, items = h.organic_rng, h.items
    _, item_type, t, t64, pool = _moment(h, rng, u, day_start)
    if len(pool) == 0:
        return []
    found = np.unique(pool[rng.integers(0, len(pool), size=min(ORGANIC_CHOICES, len(pool)))])
    ref = np.where(items["updated"][found] <= t64, h.age_ref[found], items["created"][found])
    age_days = (t64 - ref).astype("timedelta64[s]").astype(np.float64) / 86400.0
    uid = int(h.user_ids[u])
    # Each item is found on its own, so no satiation: distinct labels stand in for the categories.
    logits = attraction_logits(h.truth, uid, h.item_ids[found], age_days, np.arange(len(found)))
    p = np.exp(logits - logits.max())
    pick = int(rng.choice(len(found), p=p / p.sum()))
    i = found[pick]
    draws = (np.zeros(1), rng.random(1), rng.random(1))  # an opened item is always examined
    seen = click_model(h.truth, uid, h.item_ids[[i]], age_days[[pick]], items["category"][[i]], *draws)
    iid, kinds = int(h.item_ids[i]), POSITIVE_KIND[item_type]
    rows = [{"user_id": uid, "item_id": iid, "kind": "view", "created_at": t, "rating": None, "origin": ORGANIC}]
    h.organic_views[i] += 1
    if seen.clicked[0]:
        rows.append({"user_id": uid, "item_id": iid, "kind": "click", "created_at": t + timedelta(seconds=2),
                     "rating": None, "origin": ORGANIC})
        h.organic_engaged[i] += 1
    if seen.positive[0]:
        rows.append({"user_id": uid, "item_id": iid, "kind": kinds[rng.integers(len(kinds))],
                     "created_at": t + timedelta(seconds=30), "rating": None, "origin": ORGANIC})
        h.organic_engaged[i] += 1
    return rows


def _flow_serving(flows: tuple[str, ...], item_type: str) -> str:
    """The user's flow that serves ``item_type``."""
    return next(f for f in flows if flow_item_type(f) == item_type)


def _logged_list(h: _History, uid: int, flow: str, candidates: np.ndarray, shown: np.ndarray,
                 swaps: Swaps | None, age_days: np.ndarray, rows: list[dict], t: datetime) -> dict:
    """The legacy list as the serving log records a list: the served list (with its candidates and
    any randomised swaps in ``context``), one impression per shown item (``shown``, in the order
    shown), and an outcome per view, click and explicit positive."""
    items = h.items
    h.served += 1
    request_id = f"{LEGACY}-{h.served:08d}"
    served = {"request_id": request_id, "user_id": uid, "flow": flow, "arm": LEGACY, "k": LIST_LENGTH,
              "reranked": False, "model_version": LEGACY, "served_at": t, "source": LEGACY,
              "context": {"candidates": h.item_ids[candidates].tolist(),
                          **({CONTEXT_KEY: swaps.to_context()} if swaps is not None else {})},
              **served_list_metrics(list(items["category"][shown]), list(items["field"][shown]),
                                    list(items["type"][shown]), list(age_days))}
    first = h.next_impression
    h.next_impression += len(shown)
    shown_ids = h.item_ids[shown].tolist()  # Python ints
    impressions = [{"id": first + p, "request_id": request_id, "user_id": uid, "item_id": iid,
                    "flow": flow, "arm": LEGACY, "position": p, "score": None, "features": {},
                    "model_version": LEGACY, "served_at": t} for p, iid in enumerate(shown_ids)]
    impression_of = {iid: first + p for p, iid in enumerate(shown_ids)}
    outcomes = [{"impression_id": impression_of[r["item_id"]], "kind": r["kind"], "created_at": r["created_at"]}
                for r in rows]
    return {"served": served, "impressions": impressions, "outcomes": outcomes}


def _session_rows(h: _History, uid: int, shown: np.ndarray, seen, positive_kinds: tuple[str, ...],
                  t: datetime) -> list[dict]:
    """Interaction rows (origin ``impression``) of one list (a view per position the client logs,
    see :meth:`ranker.sim.truth.WorldParams.logged_views`, then its click and explicit positive),
    counted into ``h.views`` and ``h.engaged``."""
    rows = []
    for pos in np.flatnonzero(h.truth.params.logged_views(seen.examined)):
        i = shown[pos]
        iid = int(h.item_ids[i])
        ts = t + timedelta(seconds=int(5 * pos))
        rows.append({"user_id": uid, "item_id": iid, "kind": "view", "created_at": ts, "rating": None,
                     "origin": IMPRESSION})
        h.views[i] += 1
        if seen.clicked[pos]:
            rows.append({"user_id": uid, "item_id": iid, "kind": "click",
                         "created_at": ts + timedelta(seconds=2), "rating": None, "origin": IMPRESSION})
            h.engaged[i] += 1
        if seen.positive[pos]:
            rows.append({"user_id": uid, "item_id": iid,
                         "kind": positive_kinds[h.rng.integers(len(positive_kinds))],
                         "created_at": ts + timedelta(seconds=30), "rating": None, "origin": IMPRESSION})
            h.engaged[i] += 1
    return rows


def _legacy_list(rng, pool, user_category, items, views, quality, t64) -> np.ndarray:
    """The legacy policy's 2k candidates, best first (it shows the first k): 50 random eligible
    items, ordered by popularity, declared-category match, an editorial quality grade (curators
    spot good items) and a new-arrivals boost (age since creation at ``t64``), plus noise."""
    cand = np.unique(pool[rng.integers(0, len(pool), size=min(50, len(pool) * 2))])
    age_days = (t64 - items["created"][cand]).astype("timedelta64[s]").astype(np.float64) / 86400.0
    w_pop, w_cat, w_quality = LEGACY_WEIGHTS
    score = (w_pop * np.log1p(views[cand]) + w_cat * (items["category"][cand] == user_category)
             + w_quality * quality[cand] + LEGACY_FRESH_WEIGHT * np.exp(-age_days / LEGACY_FRESH_DAYS)
             + rng.gumbel(size=len(cand)))
    top = np.argsort(-score, kind="stable")[:config.FETCH_MULTIPLIER * LIST_LENGTH]
    return cand[top]


__all__ = ["build_world", "new_items", "SCALES", "WORLD_END"]
