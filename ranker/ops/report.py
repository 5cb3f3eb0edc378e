"""The honest quality report: paired simulated traffic for every policy, plus the A/B log.

Every policy reorders the *same* base candidates for the *same* requests, and the
click model uses common random numbers (one examination draw per position and one
click draw per candidate), so the differences between policies are not noise from
different users or seeds. The oracle (:mod:`ranker.sim.oracle`, the only door to the
hidden truth) ranks greedily by true attraction and gives the ceiling.

Quality is the share of the base→oracle gap each policy closes, from the *expected* CTR
the click model gives each list (its click probabilities summed over the positions), not
from the realised clicks, with a bootstrap 95 % interval over requests. The realised CTR
is reported too.

The LightGBM peer is trained on exactly the active model's training file (checked by its
hash), with early stopping on validation data (see :func:`lightgbm_peer`).

Both the served traffic and the paired simulation are also broken down by :data:`COHORTS`:
whether the user had engaged, had only viewed, or had no event at all strictly before
the request (:func:`ctr_by_cohort`, :func:`cohorts_at`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import Engine, case, distinct, exists, func, select

from ranker import config, keys
from ranker.data import rollups
from ranker.data.clock import serve_now
from ranker.data.db import session_scope
from ranker.data.schema import Impression, Interaction, Outcome, User
from ranker.rank.diversity import Diversity, rerank
from ranker.rank.features import ListContext, feature_names
from ranker.rank.metrics import intra_list_diversity
from ranker.rank.registry import CheckpointError, active_file, data_hash, load_checkpoint
from ranker.rank.rerank import FreshnessBoosted, Scorer
from ranker.rank.train import GROUP_COLUMN, Dataset, load_dataset
from ranker.sim.oracle import Oracle, load_oracle

#: Bootstrap resamples of the requests for the gap-closed interval.
BOOTSTRAP_RESAMPLES = 1000
#: The LightGBM peer stops when validation NDCG@10 has not improved for this many rounds ...
PEER_PATIENCE = 30
#: ... and never boosts more rounds than this.
PEER_MAX_ROUNDS = 500
#: Without the model's own validation file: the latest share of the lists (by event time) validates.
PEER_VAL_FRACTION = 0.2
#: What the user had done strictly before a request: a click or an explicit positive, only views
#: (served a list personalised from those views), or nothing (served the trending list).
COHORTS = rollups.COHORTS


# --- The LightGBM peer ------------------------------------------------------------------


class LightGBMScorer:
    """A LightGBM lambdarank model used as a greedy scorer (a peer for comparison).

    ``rounds`` is the boosting round it predicts with: the best one on validation.
    """

    version = "lightgbm"

    def __init__(self, booster: Any):
        self.booster = booster
        self.rounds = int(booster.best_iteration or booster.current_iteration())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(x)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(x, pred_contrib=True)[:, :-1]


def train_lightgbm(train: Dataset, val: Dataset, seed: int = 42, max_rounds: int = PEER_MAX_ROUNDS,
                   patience: int = PEER_PATIENCE) -> LightGBMScorer:
    """Lambdarank on ``train`` (a :class:`ranker.rank.train.Dataset`, the neural ranker's
    features), early-stopped on ``val``'s NDCG@10: at most ``max_rounds`` rounds, stopping
    after ``patience`` rounds without improvement; it predicts with the best round."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise ValueError("LightGBM is not installed: `pip install lightgbm` to include the peer") from None

    def grouped(data, reference=None):
        order = np.argsort(data.groups, kind="stable")  # lambdarank wants each group's rows together
        sizes = np.bincount(data.groups[order])
        return lgb.Dataset(data.x[order], data.y[order], group=sizes[sizes > 0], feature_name=feature_names(),
                           reference=reference)

    ds = grouped(train)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.05,
              "num_leaves": 15, "min_data_in_leaf": 20, "verbose": -1, "seed": seed,
              "deterministic": True, "num_threads": 1}
    booster = lgb.train(params, ds, num_boost_round=max_rounds, valid_sets=[grouped(val, ds)],
                        callbacks=[lgb.early_stopping(patience, first_metric_only=True, verbose=False)])
    return LightGBMScorer(booster)


def lightgbm_peer(engine: Engine, val: Path | None = None,
                  seed: int = 42) -> tuple[LightGBMScorer | None, dict[str, Any]]:
    """The LightGBM peer of the active model: trained on the same file, checked by its hash.

    The data is the active checkpoint's ``data_path``, refused (peer skipped) when the file
    is gone or its hash is no longer the checkpoint's ``data_hash``. Early stopping uses,
    in this order: the checkpoint's ``val_path`` (when recorded, unchanged if it records
    ``val_hash``), the ``val`` file the caller says the model was validated on, or else
    the latest ``PEER_VAL_FRACTION`` of the lists by their ``event_time`` (the peer then
    trains on the earlier rest; a file without ``event_time`` gets a random split of
    whole lists).

    Returns (the scorer, or None when skipped; what it was trained on: ``version``,
    ``data_path``, ``data_hash``, ``validation``, ``train_rows``, ``val_rows``, ``rounds``,
    ``max_rounds``, ``patience``; or ``skipped``, the reason).
    """
    path = active_file(engine)
    if path is None or not path.exists():
        return None, {"skipped": "LightGBM peer skipped: no trained model is active (`ranker train`), so there "
                                 "is no training data to share"}
    try:
        meta = load_checkpoint(path).meta
    except CheckpointError as exc:
        return None, {"skipped": f"LightGBM peer skipped: the active model file is unreadable: {exc}"}
    version = meta.get("version", "the active model")
    data_path, recorded_hash = meta.get("data_path"), meta.get("data_hash")
    info: dict[str, Any] = {"version": version, "data_path": data_path, "data_hash": recorded_hash}
    if not data_path or not recorded_hash:
        return None, {**info, "skipped": f"LightGBM peer skipped: {version}'s checkpoint records no training "
                                         "file and hash; retrain it (`ranker train`) to compare with the peer"}
    problem = _changed(Path(data_path), recorded_hash)
    if problem:
        return None, {**info, "skipped": f"LightGBM peer skipped: {version}'s training file {data_path} {problem}; "
                                         "retrain (`ranker train`) so the model and the peer see the same data"}
    try:
        data = load_dataset(data_path, min_positives=1)
        train, valid, info["validation"] = _peer_split(data, meta, val, seed)
        scorer = train_lightgbm(train, valid, seed=seed)
    except ValueError as exc:  # DataError included
        return None, {**info, "skipped": f"LightGBM peer skipped: {exc}"}
    return scorer, {**info, "train_rows": len(train), "val_rows": len(valid), "rounds": scorer.rounds,
                    "max_rounds": PEER_MAX_ROUNDS, "patience": PEER_PATIENCE}


def _changed(path: Path, expected_hash: str | None) -> str | None:
    """What is wrong with ``path`` ("is gone", "has changed ..."), or None when it is there and,
    given ``expected_hash``, still hashes to it."""
    if not path.is_file():
        return "is gone"
    now = data_hash(path) if expected_hash else None
    if now != expected_hash:
        return f"has changed (hash {now} now, {expected_hash} when the model was trained)"
    return None


def _peer_split(data: Dataset, meta: dict[str, Any], val: Path | None, seed: int) -> tuple[Dataset, Dataset, str]:
    """(train, validation, how the validation was chosen) for the peer; see :func:`lightgbm_peer`."""
    why_not, recorded = "", meta.get("val_path")
    if recorded:
        problem = _changed(Path(recorded), meta.get("val_hash"))
        if problem is None:
            return data, load_dataset(recorded, min_positives=1), f"the model's validation file {recorded}"
        why_not = f"the model's validation file {recorded} {problem}, so "
    if val is not None:
        return data, load_dataset(val, min_positives=1), f"{why_not}the model's validation file {val}"
    held = _latest_groups(Path(meta["data_path"]), int(data.groups.max()) + 1, seed)
    mask = held[data.groups]
    if mask.all() or not mask.any():
        raise ValueError(f"{meta['data_path']} has too few lists to hold some out for early stopping")
    return data.subset(~mask), data.subset(mask), (
        f"{why_not}the latest {PEER_VAL_FRACTION:.0%} of the lists of the training file by event time (the model "
        f"recorded no validation file; the peer trains on the earlier {1 - PEER_VAL_FRACTION:.0%})")


def _latest_groups(path: Path, n_groups: int, seed: int) -> np.ndarray:
    """(n_groups,) bool: the latest ``PEER_VAL_FRACTION`` of the groups by their last event time,
    in the group codes :func:`ranker.rank.train.load_dataset` gives; a random share without
    an ``event_time`` column."""
    import pandas as pd

    head = pd.read_csv(path, nrows=0).columns
    n_held = max(1, round(PEER_VAL_FRACTION * n_groups))
    held = np.zeros(n_groups, dtype=bool)
    if "event_time" not in head:
        held[np.random.default_rng(seed).permutation(n_groups)[:n_held]] = True
        return held
    group_col = GROUP_COLUMN if GROUP_COLUMN in head else "user_id"
    df = pd.read_csv(path, usecols=[group_col, "event_time"], dtype=str, keep_default_na=False)
    codes = pd.factorize(df[group_col])[0]
    last = pd.Series(pd.to_datetime(df["event_time"], format="ISO8601", errors="coerce")).groupby(codes).max()
    latest = np.lexsort((last.index.to_numpy(), last.to_numpy()))[-n_held:]  # by time, ties by first appearance
    held[last.index.to_numpy()[latest]] = True
    return held


# --- Paired simulated traffic ---------------------------------------------------------------


@dataclass
class PolicyStats:
    """One policy's lists over the paired requests (one entry per request in the lists)."""

    clicks: int = 0
    impressions: int = 0
    expected: list[float] = field(default_factory=list)  # expected clicks of each list
    ild: list[float] = field(default_factory=list)
    age: list[float] = field(default_factory=list)
    per_user: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {
            keys.CTR: self.clicks / self.impressions if self.impressions else float("nan"),
            "expected_ctr": float(np.sum(self.expected)) / self.impressions if self.impressions else float("nan"),
            keys.ILD: float(np.mean(self.ild)) if self.ild else float("nan"),
            keys.MEAN_AGE_DAYS: float(np.mean(self.age)) if self.age else float("nan"),
            "impressions": self.impressions,
            "clicks": self.clicks,
            "requests": len(self.expected),
        }


def gap_closed(expected: dict[str, np.ndarray], base: str = "base", oracle: str = "oracle",
               resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
               level: float = 0.95) -> dict[str, tuple[float, tuple[float, float]]]:
    """Each policy's share of the base→oracle gap, with a bootstrap interval over requests.

    ``expected[p]`` is policy ``p``'s expected clicks per request, shape (n,), aligned
    across policies (the same requests, same list length). The share is a ratio of sums,
    (Σ p − Σ base) / (Σ oracle − Σ base), recomputed on ``resamples`` resamples of the n
    requests (the same resample for every policy); the interval is the percentile one at
    ``level``. NaN where the oracle does not beat the base order.

    Returns {policy: (share, (low, high))}.
    """
    names = list(expected)
    e = np.column_stack([np.asarray(expected[p], dtype=np.float64) for p in names])  # (n, P)
    n = len(e)
    ib, io = names.index(base), names.index(oracle)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.bincount((draws + n * np.arange(resamples)[:, None]).ravel(),
                          minlength=resamples * n).reshape(resamples, n)  # how often each request was drawn
    sums = np.vstack([e.sum(axis=0), weights @ e])  # (1 + resamples, P): the sample, then each resample
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = sums[:, io] - sums[:, ib]
        share = np.where(gap[:, None] > 0, (sums - sums[:, [ib]]) / gap[:, None], np.nan)
    tail = (1 - level) / 2 * 100
    out = {}
    for j, name in enumerate(names):
        boot = share[1:, j]
        lo, hi = ((float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail)))
                  if np.isfinite(boot).all() else (float("nan"), float("nan")))
        out[name] = (float(share[0, j]), (lo, hi))
    return out


def paired_simulation(engine, requests: int = 3000, seed: int = 7, k: int = config.DEFAULT_K,
                      scorers: dict[str, Scorer] | None = None, show_bar: bool = False,
                      resamples: int = BOOTSTRAP_RESAMPLES, method: Diversity | None = None) -> dict[str, Any]:
    """CTR, diversity and freshness of each policy on the same requests and random numbers,
    and the share of the base→oracle gap each closes (see :func:`gap_closed`). The scorers rerank
    with ``method`` (default: the guide's greedy penalty). Requests served the trending list are
    left out of that comparison; ``result["cohorts"]`` (one entry per :data:`COHORTS` key: label,
    requests, how many were trending, each policy's CTR and expected CTR) counts every request,
    the trending ones showing the trending list under every policy but the oracle."""
    from tqdm import tqdm


    oracle, as_of, users = _report_world(engine)
    scorers = dict(scorers or {})
    method = method or Diversity()
    knob = [] if method.knob is None else [method.knob]
    out = {p: PolicyStats() for p in ["base", *scorers, "oracle"]}
    cohort_of = cohorts_at(engine, as_of)
    by_cohort = {c: {p: PolicyStats() for p in out} for c in COHORTS}
    trending = dict.fromkeys(COHORTS, 0)
    rng = np.random.default_rng(seed)
    skipped = 0
    for _ in tqdm(range(requests), desc="report", unit="req", disable=not show_bar):
        request = _draw_request(engine, rng, users, k, as_of)
        if request is None or request[3]:
            skipped += 1
        if request is None:
            continue
        ctx, u_exam, u_click, fallback = request
        cohort = cohort_of.get(ctx.user_id, "new")
        orders = {"base": np.arange(k)}
        if fallback:  # the trending list, never reranked: every policy shows it as served
            trending[cohort] += 1
            orders.update({name: np.arange(k) for name in scorers})
        else:
            for name, sc in scorers.items():
                orders[name] = rerank(ctx, sc, k, method.method, *knob).order
        orders["oracle"] = oracle.best_order(ctx, k)
        for name, order in orders.items():  # the same draws for every policy: common random numbers
            if not fallback:
                _observe(out[name], oracle, ctx, order, u_exam, u_click, k)
            _observe(by_cohort[cohort][name], oracle, ctx, order, u_exam, u_click, k)
    result = _compare_policies(out, requests, skipped, k, resamples, seed)
    result["cohorts"] = {c: _cohort_summary(c, by_cohort[c], trending[c]) for c in COHORTS}
    return result


def _cohort_summary(cohort: str, stats_by_policy: dict[str, PolicyStats], trending: int) -> dict[str, Any]:
    """One cohort's label, requests (``trending`` of them served the trending list) and each policy's CTR on them."""
    policies = {}
    for name, st in stats_by_policy.items():
        d = st.as_dict()
        policies[name] = {k: d[k] for k in (keys.CTR, "expected_ctr", "impressions", "clicks")}
    requests = len(next(iter(stats_by_policy.values())).expected)
    return {"label": COHORTS[cohort], "requests": requests, "trending": trending, "policies": policies}


def cohorts_at(engine: Engine, as_of: datetime) -> dict[int, str]:
    """The :data:`COHORTS` key of every user with an event strictly before ``as_of`` (the others: ``new``)."""
    t = Interaction.__table__.c
    engaged = func.max(case((t.kind.in_(config.ENGAGED_KINDS), 1), else_=0))
    stmt = select(t.user_id, engaged).where(t.created_at < as_of).group_by(t.user_id)
    with engine.connect() as conn:
        return {int(u): "engaged" if e else "view_only" for u, e in conn.execute(stmt)}


def ctr_by_cohort(engine: Engine, flow: str | None = None, start=None, end=None, source: str | None = None,
                  experiment: int | str | None = None) -> list[dict[str, Any]]:
    """Online CTR per arm and cohort (:data:`COHORTS`) over the served impressions, the cohort of each
    list decided from the user's interactions strictly before it was served.

    The filters are those of :func:`ranker.serving.online.summary_by_arm` (``experiment``: an id, a
    name or ``online.LATEST``, that experiment's window). Returns one row per (arm, cohort) with
    traffic, arms then cohorts in :data:`COHORTS` order: ``arm, cohort, label, lists, trending_lists``
    (served the trending list), ``users, impressions, clicks`` (impressions with an engagement) and
    ``ctr``.
    """
    from ranker.serving import online

    if experiment is not None:
        sc = online.scope(engine, flow, start, end, source, experiment)
        start, end = sc.start, sc.end
    imp, x = Impression.__table__.c, Interaction.__table__.c

    def before(*kinds: str):
        cond = [x.user_id == imp.user_id, x.created_at < imp.served_at]
        return exists(select(x.id).where(*cond, *([x.kind.in_(kinds)] if kinds else [])))

    clicked = select(Outcome.impression_id).where(Outcome.kind.in_(config.ENGAGED_KINDS)).distinct().subquery()
    rows = (
        select(imp.arm, imp.request_id, imp.user_id, imp.model_version,
               case((before(*config.ENGAGED_KINDS), "engaged"), (before(), "view_only"), else_="new").label("cohort"),
               clicked.c.impression_id.label("clicked"))
        .select_from(Impression.__table__.outerjoin(clicked, clicked.c.impression_id == imp.id))
        .where(online._filters(Impression, flow, start, end, source))
        .subquery()
    )
    stmt = (select(rows.c.arm, rows.c.cohort, func.count(distinct(rows.c.request_id)),
                   func.count(distinct(case((rows.c.model_version == config.TRENDING_FLOW, rows.c.request_id)))),
                   func.count(distinct(rows.c.user_id)), func.count(), func.count(rows.c.clicked))
            .group_by(rows.c.arm, rows.c.cohort))
    with engine.connect() as conn:
        found = conn.execute(stmt).all()
    order = {c: i for i, c in enumerate(COHORTS)}
    return [{"arm": arm, "cohort": cohort, "label": COHORTS[cohort], "lists": lists, "trending_lists": trending,
             "users": n_users, "impressions": n, "clicks": clicks, keys.CTR: clicks / n if n else float("nan")}
            for arm, cohort, lists, trending, n_users, n, clicks in sorted(found, key=lambda r: (r[0], order[r[1]]))]


#: The knob values each diversity method is swept over on the CTR against ILD curves, from the
#: relevance order (MMR's λ = 1, the DPP's θ near 1) to diverse lists; greedy has no knob: one point.
CURVE_KNOBS: dict[str, tuple[float | None, ...]] = {
    "greedy": (None,),
    "mmr": (1.0, 0.9, 0.8, 0.7, 0.5, 0.3),
    "dpp": (0.95, 0.9, 0.8, 0.7, 0.5, 0.3),
}


def diversity_curves(engine, requests: int = config.DEFAULTS.diversity_curve_requests,
                     seed: int = config.DEFAULTS.report_seed, k: int = config.DEFAULT_K,
                     knobs: dict[str, tuple[float | None, ...]] | None = None) -> dict[str, Any]:
    """Expected CTR against mean intra-list diversity for each diversity method and knob.

    The serving scorer (what the treatment arm is served: the active model, else the rule)
    reranks the *same* requests' candidates with every (method, knob) of ``knobs`` (default
    :data:`CURVE_KNOBS`), and the oracle's click model scores each list with the same random
    numbers, as in :func:`paired_simulation`. The base order is a reference point.

    Returns ``{"scorer", "saved" (the diversity method serving now), "requests", "skipped_trending",
    "k", "base": {expected_ctr, ctr, ild}, "points": [{method, knob, label, expected_ctr, ctr, ild,
    rerank_ms}]}``; ``rerank_ms`` is the mean time of one rerank (n = fetch multiplier × k → k).
    """
    import time

    from ranker.serving.service import service

    oracle, as_of, users = _report_world(engine)
    svc = service(engine)
    settings = svc.settings()
    scorer, _ = svc.scorer(settings)
    points = [Diversity(method, knob) for method, values in (knobs or CURVE_KNOBS).items() for knob in values]
    out = {p: PolicyStats() for p in points}
    base, seconds = PolicyStats(), dict.fromkeys(points, 0.0)
    rng = np.random.default_rng(seed)
    skipped = 0
    for _ in range(requests):
        request = _draw_request(engine, rng, users, k, as_of)
        if request is None or request[3]:
            skipped += 1
            continue
        ctx, u_exam, u_click, _ = request
        _observe(base, oracle, ctx, np.arange(k), u_exam, u_click, k)
        for p in points:  # the same draws for every point: common random numbers
            t0 = time.perf_counter()
            order = rerank(ctx, scorer, k, p.method, *([] if p.knob is None else [p.knob])).order
            seconds[p] += time.perf_counter() - t0
            _observe(out[p], oracle, ctx, order, u_exam, u_click, k)

    def summary(st: PolicyStats) -> dict[str, float]:
        d = st.as_dict()
        return {"expected_ctr": d["expected_ctr"], keys.CTR: d[keys.CTR], keys.ILD: d[keys.ILD]}

    lists = requests - skipped
    return {"scorer": scorer.version, "saved": settings.diversity.label, "requests": requests,
            "skipped_trending": skipped, "k": k, "base": summary(base),
            "points": [{"method": p.method, "knob": p.knob, "label": p.label, **summary(out[p]),
                        "rerank_ms": seconds[p] / lists * 1e3 if lists else float("nan")} for p in points]}


def _report_world(engine) -> tuple[Oracle, datetime, list]:
    """(the world's oracle, the world clock, every user's id, role, category and field)."""
    with session_scope(engine) as s:
        oracle = load_oracle(s)
        as_of = serve_now(s)
        users = s.execute(
            select(User.id, User.role, User.category, User.field).order_by(User.id)
        ).all()
    if oracle is None:
        raise ValueError("no synthetic ground truth in this database: the oracle comparison needs the demo "
                         "world (`ranker demo init`)")
    return oracle, as_of, users


def _draw_request(engine, rng: np.random.Generator, users: list, k: int, as_of: datetime):
    """A random user and flow, their base candidates and the click model's random numbers.

    Returns (candidate context, examination draws (k,), click draws per candidate, whether the
    candidates are the trending fallback), or None when there are fewer than ``k`` candidates.
    The context is serving's (:meth:`ranker.serving.retrieval.Retrieval.context`).
    """
    from ranker.flows import own_flows
    from ranker.serving.candidates import candidates
    from ranker.serving.retrieval import UserRow
    from ranker.serving.service import service

    uid, role, ucat, ufield = users[int(rng.integers(len(users)))]
    flows = own_flows(role)
    flow = flows[int(rng.integers(len(flows)))]
    u_exam = rng.random(k)
    cands = candidates(uid, flow, config.FETCH_MULTIPLIER * k, engine=engine, as_of=as_of)
    u_click = rng.random(len(cands.item_ids))
    if len(cands.item_ids) < k:
        return None
    # the features as serving computes them (with the user's history when the feature set needs it)
    ctx = service(engine).retrieval.context(uid, UserRow(uid, role, ucat, ufield), cands.item_ids, cands.scores,
                                            as_of)
    return ctx, u_exam, u_click, cands.fallback


def _observe(st: PolicyStats, oracle: Oracle, ctx: ListContext, order: np.ndarray, u_exam: np.ndarray,
             u_click: np.ndarray, k: int) -> None:
    """Show the candidates in ``order`` to the user through the click model; add the outcome to ``st``."""
    shown = oracle.show(ctx, order, u_exam, u_click)
    clicks = int(shown.clicked.sum())
    st.clicks += clicks
    st.impressions += k
    st.expected.append(shown.expected_clicks)
    st.ild.append(intra_list_diversity(ctx.category[order], ctx.field[order], ctx.type[order]))
    st.age.append(float(ctx.age_days[order].mean()))
    st.per_user[ctx.user_id] = st.per_user.get(ctx.user_id, 0) + clicks


def _compare_policies(out: dict[str, PolicyStats], requests: int, skipped: int, k: int,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Each policy's metrics with its lift over base, the share of the base→oracle gap it closes
    (expected CTR, with its bootstrap interval; and from realised clicks) and, but for base, the
    paired p-value against base."""
    policies = list(out)
    result: dict[str, Any] = {"requests": requests, "skipped_trending": skipped, "k": k,
                              "policies": {p: out[p].as_dict() for p in policies}}
    base_ctr, oracle_ctr = result["policies"]["base"][keys.CTR], result["policies"]["oracle"][keys.CTR]
    shares = (gap_closed({p: np.asarray(out[p].expected) for p in policies}, resamples=resamples, seed=seed)
              if out["base"].expected else {p: (float("nan"), (float("nan"), float("nan"))) for p in policies})
    for name in policies:
        pol = result["policies"][name]
        pol["gap_closed"], ci = shares[name]
        pol["gap_closed_ci"] = list(ci)
        gap = oracle_ctr - base_ctr
        pol["gap_closed_realised"] = (pol[keys.CTR] - base_ctr) / gap if gap > 0 else float("nan")
        pol["lift_vs_base"] = pol[keys.CTR] / base_ctr - 1 if base_ctr > 0 else float("nan")
        if name != "base":
            pol["p_value_vs_base"] = _paired_p(out["base"].per_user, out[name].per_user)
    return result


def _paired_p(base: dict[int, int], other: dict[int, int]) -> float:
    """Two-sided paired t-test over users of the click difference (users are the unit)."""
    users = sorted(base)
    d = np.array([other.get(u, 0) - base[u] for u in users], dtype=float)
    if len(d) < 3 or d.std() == 0:
        return float("nan")
    return float(stats.ttest_1samp(d, 0.0).pvalue)


# --- The report ------------------------------------------------------------------------------


def build_report(engine, requests: int = 3000, seed: int = 7, show_bar: bool = False,
                 compare: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Online metrics per arm with the A/B verdict, and the paired offline comparison.

    ``compare`` names registered model versions to score on the same requests as the
    active one (policies ``neural <version>``): did the last retraining help?
    ``report["peer"]`` says what the LightGBM peer was trained on, and for how many rounds.
    """
    from ranker.rank.registry import version_scorer
    from ranker.serving.online import LATEST, ab_test, guardrail_tests, summary_by_arm
    from ranker.serving.service import service

    report: dict[str, Any] = {}
    arms = summary_by_arm(engine, experiment=LATEST)  # the A/B window: never the world's legacy lists
    report["online"] = {"arms": arms.reset_index().to_dict(orient="records") if not arms.empty else [],
                        "cohorts": ctr_by_cohort(engine, experiment=LATEST),
                        "ab": _plain(ab_test(engine)),
                        "guardrails": {k: _plain(v) for k, v in guardrail_tests(engine).items()}}
    svc = service(engine)
    scorers: dict[str, Scorer] = {"rule": svc.rule_scorer()}
    served, fallback = svc.scorer()  # what treatment is served: the active model, boosted if set
    notes = []
    if fallback is None:
        scorers["neural"] = served
        if isinstance(served, FreshnessBoosted):
            notes.append(f"the neural ranker is scored as served: {served.version} (freshness boost on the "
                         "Rule weights page)")
    else:
        notes.append("no trained model is active: train one (`ranker train`) to include the neural ranker")
    for version in compare:
        scorers[f"neural {version}"] = version_scorer(engine, version)  # RegistryError names the known ones
    peer, report["peer"] = lightgbm_peer(engine)
    if peer is not None:
        scorers["lightgbm"] = peer
    elif fallback is None:  # without a model, the note above says it all
        notes.append(report["peer"]["skipped"])
    method = svc.settings().diversity
    if method.method != "greedy":
        notes.append(f"every scorer reranks with the diversity method serving now: {method.label} "
                     "(`ranker diversity show`)")
    try:
        report["offline"] = paired_simulation(engine, requests, seed, scorers=scorers, show_bar=show_bar,
                                              method=method)
    except ValueError as exc:
        report["offline"] = None
        notes.append(str(exc))
    report["notes"] = notes
    return report


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dict__"):
        return {k: _plain(v) for k, v in obj.__dict__.items()}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj
