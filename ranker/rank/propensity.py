"""Position bias: randomised adjacent swaps, the examination curve estimated from them, IPW weights.

Users look at the top of a list more than at its bottom, so a click says "examined and
liked" and a logged non-click says little about an item shown low. Under the position-based
model, P(click at position k) = p(k) × attraction(item), and p(k)/p(1) is the curve to find.

**Swaps.** In a share of the lists (:data:`ranker.config.DEFAULTS.swap_share`), disjoint
adjacent pairs, positions (1, 2), (3, 4), ... or (2, 3), (4, 5), ... (at random), are each
swapped on a fair coin: :func:`draw_swaps`. The list's ``context`` records them under
:data:`CONTEXT_KEY`. Disjoint pairs leave the items above every pair unchanged, so each pair
is an experiment of its own.

**Estimate.** For the pair at positions (k, k+1), over the randomised lists, the click rate
at k+1 over the click rate at k, each averaged over the swapped and the unswapped half,
is p(k+1)/p(k) (the swap estimator of Joachims et al. 2017, as in Wang et al. 2018's RandPair
and Agarwal et al. 2019): both halves put each item of the pair at each position once. The
ratios multiply into p(k)/p(1), with 95 % intervals from a bootstrap over lists. Pairs of
two items of one category are left out: a user tired of a category finds the lower of two
such items less attractive, whatever its examination, which would read as position bias.

**Weights.** :func:`ipw_weights` gives a click at 0-based position k the weight
1/(p(k)/p(1)), clipped, for inverse propensity weighting in training
(``ranker train --position-correction ipw``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.data.db import get_setting, put_setting, session_scope
from ranker.data.schema import Impression, Item, Outcome, ServedList, Setting
from ranker.errors import RankerError

#: Where a served list's ``context`` records its randomised pairs.
CONTEXT_KEY = "position_swaps"
#: How training can correct for position bias (``--position-correction``): ``auto`` is ``ipw`` when
#: an estimate and the data's positions are at hand, else ``none``.
CORRECTIONS = ("auto", "ipw", "none")
BOOTSTRAP = 1000
#: Positions the fitted curve covers for training (lists are rarely longer).
WEIGHTED_POSITIONS = 100


class PropensityError(RankerError, ValueError):
    """No usable estimate, or a bad share or curve, with what to do about it."""


# --- Swaps --------------------------------------------------------------------------


@dataclass(frozen=True)
class Swaps:
    """The randomised pairs of one list: ``pairs`` holds the 0-based top position p of each pair
    (p, p+1), ``swapped`` the pairs whose items were exchanged."""

    pairs: tuple[int, ...]
    swapped: tuple[int, ...]

    def apply(self, order: np.ndarray) -> np.ndarray:
        """``order`` (n,) with the swapped pairs exchanged."""
        out = np.array(order, copy=True)
        for p in self.swapped:
            out[[p, p + 1]] = out[[p + 1, p]]
        return out

    def to_context(self) -> dict[str, list[int]]:
        return {"pairs": list(self.pairs), "swapped": list(self.swapped)}

    @classmethod
    def from_context(cls, raw: Any) -> Swaps | None:
        """The swaps a served list's context records, or None (none recorded, or unreadable)."""
        try:
            pairs = tuple(int(p) for p in raw["pairs"])
            swapped = tuple(int(p) for p in raw["swapped"])
        except (TypeError, KeyError, ValueError):
            return None
        return cls(pairs, swapped) if set(swapped) <= set(pairs) else None


def draw_swaps(rng: np.random.Generator, n: int) -> Swaps:
    """Randomise a list of ``n`` positions: pairs from position 0 or 1 (one coin), each swapped on a coin."""
    offset = int(rng.integers(2))
    pairs = tuple(range(offset, n - 1, 2))
    coins = rng.random(len(pairs)) < 0.5
    return Swaps(pairs, tuple(p for p, c in zip(pairs, coins) if c))


def maybe_swaps(rng: np.random.Generator, n: int, share: float) -> Swaps | None:
    """:func:`draw_swaps` for a ``share`` of lists (one draw decides), None for the rest and for lists under 2."""
    if share <= 0.0 or n < 2 or not rng.random() < share:
        return None
    return draw_swaps(rng, n)


def request_rng(user_id: int, flow: str, served_at: datetime) -> np.random.Generator:
    """A generator that is a pure function of who asked for which flow when, so a request served
    again (a simulation resumed or rerun with the same seed) is randomised alike."""
    import hashlib

    key = f"{int(user_id)}|{flow}|{served_at.isoformat()}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def validate_share(share: float) -> float:
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise PropensityError(f"the swap share must be between 0 and 1 (e.g. 0.05 for 5% of lists), got {share:g}")
    return share


def saved_swap_share(stored: object) -> float:
    """The share saved in settings (its ``v``), or the default when nothing valid is saved."""
    if stored is None:
        return config.DEFAULTS.swap_share
    try:
        return validate_share(stored)  # type: ignore[arg-type]
    except (PropensityError, TypeError, ValueError):
        return config.DEFAULTS.swap_share


def swap_share(engine: Engine) -> float:
    """The share of treatment lists served with randomised swaps (the saved setting, else the default).
    Serving reads it with its other settings (``ranker.serving.scoring.read_settings``)."""
    with engine.connect() as conn:
        stored = conn.execute(select(Setting.value).where(Setting.key == keys.SWAP_SHARE)).scalar()
    return saved_swap_share((stored or {}).get("v") if isinstance(stored, dict) else None)


def save_swap_share(engine: Engine, share: float) -> float:
    share = validate_share(share)
    with session_scope(engine) as s:
        put_setting(s, keys.SWAP_SHARE, share)
    return share


# --- Estimate -----------------------------------------------------------------------


@dataclass
class PairObservations:
    """One row per randomised pair of a logged list, arrays of shape (m,)."""

    list_index: np.ndarray  # int64: which list (0..lists-1), for the bootstrap
    top: np.ndarray  # int64: the pair's top position p (0-based); the pair is (p, p+1)
    swapped: np.ndarray  # bool
    click_top: np.ndarray  # bool: an engagement at position p
    click_bottom: np.ndarray  # bool: an engagement at position p + 1
    same_category: np.ndarray  # bool: the two items share a category (left out of the estimate)


@dataclass
class PropensityEstimate:
    """p(k)/p(1) for positions k = 1..n (``curve[0]`` is 1), with 95 % bootstrap intervals."""

    curve: list[float]
    low: list[float]
    high: list[float]
    #: Per adjacent pair (k, k+1), 1-based k: randomised lists, of them swapped, clicks at k and at
    #: k+1, and the ratio p(k+1)/p(k).
    pairs: list[dict[str, Any]] = field(default_factory=list)
    lists: int = 0  # randomised lists read
    pairs_used: int = 0
    same_category_left_out: int = 0
    clicks: int = 0  # engagements on the pairs used
    #: The power law p(k)/p(1) = k^-eta fitted to the curve (inverse-variance weights), with its interval.
    eta: float | None = None
    eta_ci: tuple[float, float] | None = None
    estimated_at: str = ""
    source: str = "swaps"  # "swaps" (estimated here) or a file's path

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: the fitted power law with its interval, and what it was estimated from."""
        fit = (f"p(k)/p(1) = k^-{self.eta:.2f}" + (f" (95% CI {self.eta_ci[0]:.2f} to {self.eta_ci[1]:.2f})"
                                                   if self.eta_ci else "")
               if self.eta is not None else f"p(2)/p(1) = {self.curve[1]:.2f}" if len(self.curve) > 1 else "-")
        return f"{fit} from {self.lists:,} randomised lists ({self.clicks:,} clicks), estimated {self.estimated_at}"

    def weighting_curve(self, n: int = WEIGHTED_POSITIONS) -> list[float]:
        """What training weights with: the fitted power law k^-eta for k = 1..n (eta at least 0),
        smoother than the per-position curve, whose intervals are wide at a few hundred lists per
        pair; without a fit, the per-position curve (capped at 1)."""
        if self.eta is not None and np.isfinite(self.eta):
            return [float(v) for v in np.arange(1, n + 1, dtype=np.float64) ** -max(self.eta, 0.0)]
        return [float(min(v, 1.0)) for v in self.curve]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PropensityEstimate:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in raw.items() if k in names})


def estimate(obs: PairObservations, n_boot: int = BOOTSTRAP, seed: int = 0) -> PropensityEstimate:
    """The curve from pair observations (see the module's docstring).

    The curve stops before the first pair with no click at its top position or no list in one
    half (swapped or not): beyond it nothing can be said. Raises :class:`PropensityError`
    when not even the first pair can be estimated.
    """
    use = ~obs.same_category
    n_lists = int(obs.list_index.max()) + 1 if len(obs.list_index) else 0
    if not use.any():
        raise PropensityError("no randomised pair of two categories has been logged yet; serve lists with "
                              "swaps (`ranker propensity share 0.05`) and collect clicks first")
    counts = _pair_counts(obs, use, n_lists)  # (lists, n_pairs, 6)
    point = _ratios(counts.sum(axis=0))
    length = _defined(point)
    if length == 0:
        raise PropensityError("too few clicks on the randomised pairs to estimate even p(2)/p(1); "
                              "collect more traffic or raise the swap share")
    curve = np.cumprod(np.r_[1.0, point[:length]])
    boot = _bootstrap(counts, length, n_boot, seed)
    low, high = np.nanpercentile(boot, [2.5, 97.5], axis=0) if len(boot) else (curve, curve)
    totals = counts.sum(axis=0)
    pairs = [{"positions": [p + 1, p + 2], "lists": int(totals[p, 0] + totals[p, 3]), "swapped": int(totals[p, 3]),
              "clicks_top": int(totals[p, 1] + totals[p, 4]), "clicks_bottom": int(totals[p, 2] + totals[p, 5]),
              "ratio": float(point[p]) if np.isfinite(point[p]) else None} for p in range(counts.shape[1])]
    eta, eta_ci = _power_law(curve, boot)
    return PropensityEstimate(
        curve=[float(v) for v in curve], low=[float(v) for v in low], high=[float(v) for v in high],
        pairs=pairs, lists=n_lists, pairs_used=int(use.sum()),
        same_category_left_out=int((~use).sum()),
        clicks=int(obs.click_top[use].sum() + obs.click_bottom[use].sum()), eta=eta, eta_ci=eta_ci,
        estimated_at=utcnow().isoformat(timespec="seconds"))


def _pair_counts(obs: PairObservations, use: np.ndarray, n_lists: int) -> np.ndarray:
    """(lists, pairs, 6) counts per list and pair top: unswapped (lists, clicks top, clicks bottom),
    then swapped (the same)."""
    n_pairs = int(obs.top.max()) + 1
    out = np.zeros((n_lists, n_pairs, 6), np.float32)
    half = np.where(obs.swapped, 3, 0)
    for offset, value in ((0, np.ones(len(use))), (1, obs.click_top), (2, obs.click_bottom)):
        np.add.at(out, (obs.list_index[use], obs.top[use], half[use] + offset), np.asarray(value, float)[use])
    return out


def _ratios(c: np.ndarray) -> np.ndarray:
    """p(k+1)/p(k) per pair from summed counts (..., pairs, 6): each half's click rates, averaged."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom = c[..., 2] / c[..., 0] + c[..., 5] / c[..., 3]
        top = c[..., 1] / c[..., 0] + c[..., 4] / c[..., 3]
        return bottom / top


def _defined(ratios: np.ndarray) -> int:
    """How many leading pairs have a finite ratio."""
    bad = ~np.isfinite(ratios)
    return int(np.argmax(bad)) if bad.any() else len(ratios)


def _bootstrap(counts: np.ndarray, length: int, n_boot: int, seed: int) -> np.ndarray:
    """(replicates, length + 1) curves from Poisson(1) weights over lists; a replicate with an
    undefined ratio is nan from there (dropped by the percentiles)."""
    if n_boot <= 0:
        return np.empty((0, length + 1))
    rng = np.random.default_rng(seed)
    flat = counts[:, :length].reshape(len(counts), -1)
    out = []
    for start in range(0, n_boot, 100):
        w = rng.poisson(1.0, size=(min(100, n_boot - start), len(counts))).astype(np.float32)
        r = _ratios((w @ flat).reshape(len(w), length, 6))
        r[~np.isfinite(r)] = np.nan
        out.append(np.cumprod(np.c_[np.ones(len(w)), r], axis=1))
    return np.concatenate(out)


def _power_law(curve: np.ndarray, boot: np.ndarray) -> tuple[float | None, tuple[float, float] | None]:
    """eta of curve ≈ k^-eta by weighted least squares on logs (weights: 1 / bootstrap variance of
    log p(k)), and its 95 % interval from the same fit on each bootstrap replicate."""
    if len(curve) < 2:
        return None, None
    x = np.log(np.arange(2, len(curve) + 1))
    logs = np.log(np.clip(boot[:, 1:], 1e-9, None)) if len(boot) else np.empty((0, len(x)))
    var = np.nanvar(logs, axis=0) if len(boot) > 1 else np.ones(len(x))
    w = 1.0 / np.clip(np.nan_to_num(var, nan=np.inf), 1e-6, None)

    def fit(y: np.ndarray) -> float:
        ok = np.isfinite(y) & (w > 0)
        return float(-(w[ok] * x[ok] * y[ok]).sum() / (w[ok] * x[ok] ** 2).sum()) if ok.any() else np.nan

    eta = fit(np.log(np.clip(curve[1:], 1e-9, None)))
    if len(boot) < 2:
        return eta, None
    etas = np.array([fit(y) for y in logs])
    low, high = np.nanpercentile(etas, [2.5, 97.5])
    return eta, (float(low), float(high))


# --- From the serving log -----------------------------------------------------------

_CHUNK = 500  # ids per IN (...) query


def pair_observations(engine: Engine, start: datetime | None = None, end: datetime | None = None) -> PairObservations:
    """Every randomised pair of the lists logged in [start, end) (default: all), with its clicks."""
    stmt = select(ServedList.request_id, ServedList.context).where(ServedList.context.is_not(None))
    if start is not None:
        stmt = stmt.where(ServedList.served_at >= start)
    if end is not None:
        stmt = stmt.where(ServedList.served_at < end)
    with engine.connect() as conn:
        swaps = {}
        for rid, ctx in conn.execute(stmt):
            found = Swaps.from_context(ctx.get(CONTEXT_KEY)) if isinstance(ctx, dict) else None
            if found is not None and found.pairs:
                swaps[rid] = found
        rids = sorted(swaps)
        shown: dict[str, dict[int, tuple[int, str]]] = {}
        engaged: set[int] = set()
        for i in range(0, len(rids), _CHUNK):
            part = rids[i:i + _CHUNK]
            rows = conn.execute(select(Impression.request_id, Impression.position, Impression.id, Item.category)
                                .join(Item, Item.id == Impression.item_id)
                                .where(Impression.request_id.in_(part))).all()
            for rid, pos, imp, cat in rows:
                shown.setdefault(rid, {})[int(pos)] = (int(imp), cat)
            engaged.update(conn.execute(
                select(Outcome.impression_id).join(Impression, Impression.id == Outcome.impression_id)
                .where(Impression.request_id.in_(part), Outcome.kind.in_(config.ENGAGED_KINDS))).scalars())
    cols: dict[str, list] = {k: [] for k in PairObservations.__dataclass_fields__}
    for n, rid in enumerate(r for r in rids if r in shown):
        at = shown[rid]
        for p in swaps[rid].pairs:
            if p not in at or p + 1 not in at:
                continue
            (a, cat_a), (b, cat_b) = at[p], at[p + 1]
            for name, v in (("list_index", n), ("top", p), ("swapped", p in swaps[rid].swapped),
                            ("click_top", a in engaged), ("click_bottom", b in engaged),
                            ("same_category", cat_a == cat_b)):
                cols[name].append(v)
    dtypes = {"list_index": np.int64, "top": np.int64}
    return PairObservations(**{k: np.asarray(v, dtype=dtypes.get(k, bool)) for k, v in cols.items()})


def estimate_from_log(engine: Engine, start: datetime | None = None, end: datetime | None = None,
                      n_boot: int = BOOTSTRAP, seed: int = 0) -> PropensityEstimate:
    obs = pair_observations(engine, start, end)
    if len(obs.top) == 0:
        raise PropensityError("no list with randomised swaps in the log; serve traffic with a swap share "
                              "above 0 (`ranker propensity share 0.05`) first")
    # Re-number the lists that hold pairs, for the bootstrap.
    _, obs.list_index = np.unique(obs.list_index, return_inverse=True)
    return estimate(obs, n_boot, seed)


def save_estimate(engine: Engine, est: PropensityEstimate) -> None:
    with session_scope(engine) as s:
        put_setting(s, keys.PROPENSITIES, est.as_dict())


def saved_estimate(engine: Engine) -> PropensityEstimate | None:
    with session_scope(engine) as s:
        raw = get_setting(s, keys.PROPENSITIES)
    return PropensityEstimate.from_dict(raw) if isinstance(raw, dict) and raw.get("curve") else None


def read_curve(path: str | Path) -> list[float]:
    """A curve from a file: the JSON of ``ranker propensity estimate --json`` (its ``curve``) or a
    JSON list of p(k)/p(1) for k = 1, 2, ..."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PropensityError(f"{path} does not exist; write it with `ranker propensity estimate --json > {path}`")\
            from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PropensityError(f"{path} is not a JSON file of propensities: {exc}") from None
    curve = raw.get("curve") if isinstance(raw, dict) else raw
    return check_curve(curve, str(path))


def check_curve(curve: Any, where: str = "the curve") -> list[float]:
    """``curve`` as a list of floats in (0, 1] starting at 1; PropensityError otherwise."""
    try:
        values = [float(v) for v in curve]
    except (TypeError, ValueError):
        raise PropensityError(f"{where}: propensities must be a list of numbers, p(k)/p(1) for k = 1, 2, ...")\
            from None
    if not values or not all(0.0 < v <= 1.0 + 1e-9 for v in values) or abs(values[0] - 1.0) > 1e-9:
        raise PropensityError(f"{where}: propensities must start at 1 (position 1) and lie in (0, 1], got "
                              f"{values[:5]}{'...' if len(values) > 5 else ''}")
    return values


# --- Inverse propensity weights --------------------------------------------------------


def with_propensities(engine: Engine, cfg: Any) -> Any:
    """The training config ``cfg`` with its ``propensities`` set, when it asks for ``ipw`` or ``auto``
    and has none (a file's curve, passed by the caller, is kept): the saved estimate's fitted curve,
    else one estimated now from the logged swaps (not saved). Without either, ``auto`` keeps
    ``propensities`` None (training then corrects nothing) and ``ipw`` raises PropensityError."""
    from dataclasses import replace

    if cfg.position_correction == "none" or cfg.propensities is not None:
        return cfg
    est = saved_estimate(engine)
    if est is None:
        try:
            est = estimate_from_log(engine, n_boot=200)
        except PropensityError as exc:
            if cfg.position_correction == "auto":
                return cfg
            raise PropensityError(f"--position-correction ipw needs a position-bias estimate and none can be made: "
                                  f"{exc}; or pass --propensities FILE") from None
    return replace(cfg, propensities=est.weighting_curve())


def ipw_weights(positions: np.ndarray, curve: list[float] | np.ndarray,
                clip: float = config.DEFAULTS.propensity_clip) -> np.ndarray:
    """(n,) 1 / (p(k)/p(1)) for 0-based ``positions``, at most ``clip``; 1 where the position is
    unknown (negative). Positions past the curve take its last value."""
    curve = np.asarray(curve, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.int64)
    p = curve[np.clip(pos, 0, len(curve) - 1)]
    return np.where(pos < 0, 1.0, np.minimum(1.0 / p, clip))


__all__ = ["CONTEXT_KEY", "CORRECTIONS", "PairObservations", "PropensityError", "PropensityEstimate", "Swaps",
           "check_curve", "draw_swaps", "estimate", "estimate_from_log", "ipw_weights", "maybe_swaps",
           "pair_observations", "read_curve", "request_rng", "save_estimate", "save_swap_share", "saved_estimate",
           "swap_share", "validate_share", "with_propensities"]
