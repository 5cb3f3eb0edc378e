"""Scorers and the greedy reranker.

A scorer maps an (m, F) feature matrix to m scores. The greedy reranker fills the
list one position at a time: it recomputes the dynamic features (diversity) of every
remaining candidate against the items already placed, scores all of them with one
scorer call, and takes the best.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ranker import config
from ranker.rank.features import ListContext, feature_names, fill_dynamic, static_matrix

log = logging.getLogger(__name__)


class Scorer(Protocol):
    version: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def contributions(self, x: np.ndarray) -> np.ndarray: ...


def validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Rule weights for every registered feature (missing ones are 0).

    Raises ValueError for an unknown feature name or a weight outside [0, 1].
    """
    names = feature_names()
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"unknown rule weight(s) {unknown}; features are {names}")
    out = {}
    for name in names:
        w = float(weights.get(name, 0.0))
        if not (0.0 <= w <= 1.0) or not np.isfinite(w):
            raise ValueError(f"rule weight {name}={w} is outside [0, 1]")
        out[name] = w
    return out


_warned: set[tuple] = set()


def _warn_once(key: tuple, message: str, *args: object) -> None:
    """Log a warning about saved settings once per process, not on every request."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def saved_weights(stored: Mapping[str, float] | None) -> dict[str, float]:
    """Validated rule weights from settings. Weights of features no longer registered (an
    optional feature switched off) are dropped with a warning, so serving goes on."""
    weights = dict(stored or config.DEFAULT_RULE_WEIGHTS)
    gone = sorted(set(weights) - set(feature_names()))
    if gone:
        _warn_once(("weights", *gone), "ignoring saved rule weight(s) %s: no such feature is registered now",
                   gone)
    return validate_weights({k: v for k, v in weights.items() if k not in gone})


class RuleScorer:
    """``score = Σ w_f · x_f`` (the guide's fallback: 0.5/0.2/0.2/0.1)."""

    version = "rule"

    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = validate_weights(weights or config.DEFAULT_RULE_WEIGHTS)
        self._w = np.array([self.weights[n] for n in feature_names()])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self._w

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return x * self._w


class NeuralScorer:
    """A trained :class:`~ranker.rank.model.RankerMLP`, evaluated in numpy (eval mode).

    The MLP is three small matrix products; numpy avoids torch's per-call overhead,
    which dominates at 20 candidates.
    """

    def __init__(self, state_dict: Mapping[str, object], version: str, meta: dict | None = None):
        from ranker.rank.spec import linear_layers

        def arr(key: str) -> np.ndarray:
            return np.asarray(state_dict[key], dtype=np.float64)

        self.version = version
        self.meta = meta or {}
        self._layers = linear_layers(state_dict)
        # Fold the input standardisation into the first layer (absent from checkpoints that
        # predate it: identity): ((x - m) / s) @ W + b == x @ (W / s[:, None]) + (b - (m / s) @ W).
        w1, b1 = self._layers[0]
        mean = arr("x_mean") if "x_mean" in state_dict else np.zeros(w1.shape[0])
        scale = arr("x_scale") if "x_scale" in state_dict else np.ones(w1.shape[0])
        self._layers[0] = (w1 / scale[:, None], b1 - (mean / scale) @ w1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (w1, b1), (w2, b2), (w3, b3) = self._layers
        h = np.maximum(x @ w1 + b1, 0.0)
        h = np.maximum(h @ w2 + b2, 0.0)
        return (h @ w3 + b3)[:, 0]

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contributions by integrated gradients from an all-zero baseline.

        They sum (up to the integration error) to ``score(x) - score(0)``.
        """
        steps = 32
        alphas = (np.arange(steps) + 0.5) / steps
        grads = np.zeros_like(x)
        (w1, b1), (w2, b2), (w3, _) = self._layers
        for a in alphas:
            z1 = (a * x) @ w1 + b1
            h1 = np.maximum(z1, 0.0)
            z2 = h1 @ w2 + b2
            g2 = (z2 > 0) * w3[:, 0]  # d out / d z2
            g1 = (g2 @ w2.T) * (z1 > 0)  # d out / d z1
            grads += g1 @ w1.T
        return x * grads / steps


class BaseOrderScorer:
    """The base order as a scorer: its ``model_score`` feature alone.

    Served when the reranker was significantly worse than the base order on a retrain's
    holdout (do no harm). The greedy rerank then places the candidates in base order.
    """

    version = "base"

    def __init__(self) -> None:
        self._j = feature_names().index("model_score")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x[:, self._j]

    def contributions(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x, dtype=np.float64)
        out[:, self._j] = x[:, self._j]
        return out


#: Largest freshness boost an operator may set (score units: the neural ranker's logit).
MAX_FRESHNESS_BOOST = 5.0
#: The settings key it is saved under.


def validate_freshness_boost(value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= MAX_FRESHNESS_BOOST):  # NaN fails too
        raise ValueError(f"freshness boost {value} is outside [0, {MAX_FRESHNESS_BOOST:g}]")
    return value


def saved_freshness_boost(stored: object) -> float:
    """The boost saved in settings, or 0 (with a warning) when the saved value is not valid."""
    try:
        return validate_freshness_boost(0.0 if stored is None else stored)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        _warn_once(("boost", repr(stored)), "ignoring the saved freshness boost: %s", exc)
        return 0.0


def validate_fetch_multiplier(value: object) -> int:
    """Candidates per served slot: a whole number from 1 (the base order's top k only, nothing to
    rerank from below) to ``config.MAX_FETCH_MULTIPLIER``."""
    try:
        m = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"candidates per slot must be a whole number, got {value!r}") from None
    if not m.is_integer() or not 1 <= m <= config.MAX_FETCH_MULTIPLIER:
        raise ValueError(f"candidates per slot must be a whole number from 1 to {config.MAX_FETCH_MULTIPLIER}, "
                         f"got {value!r}")
    return int(m)


def saved_fetch_multiplier(stored: object) -> int:
    """The saved candidates per slot, or the guide's 2 (with a warning, once) when nothing valid is saved."""
    if stored is None:
        return config.FETCH_MULTIPLIER
    try:
        return validate_fetch_multiplier(stored)
    except ValueError as exc:
        _warn_once(("fetch", repr(stored)), "ignoring the saved candidates per slot: %s", exc)
        return config.FETCH_MULTIPLIER


class FreshnessBoosted:
    """A scorer plus ``boost × recency``: the operator's explicit freshness objective.

    A click-trained ranker serves what gets clicked, and that can be older than the base
    order (see the README's quality section). The boost trades some of that CTR for
    fresher lists, in the scorer's own units (a logit for the neural ranker: a brand-new
    item gains ``boost``, a 30-day-old one ``0.37 × boost``). Contributions stay additive:
    the boost adds to the recency column.
    """

    def __init__(self, inner: Scorer, boost: float):
        self.inner = inner
        self.boost = validate_freshness_boost(boost)
        self.version = f"{inner.version}+fresh{self.boost:g}"
        self._j = feature_names().index("recency")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.inner(x) + self.boost * x[:, self._j]

    def contributions(self, x: np.ndarray) -> np.ndarray:
        out = np.array(self.inner.contributions(x), dtype=np.float64)
        out[:, self._j] += self.boost * x[:, self._j]
        return out


@dataclass
class Reranked:
    order: np.ndarray  # (k,) positions into the candidate list, best first
    scores: np.ndarray  # (k,) scorer output when each item was placed
    features: np.ndarray  # (k, F) features as served (diversity at placement time)


def greedy_rerank(ctx: ListContext, scorer: Scorer, k: int) -> Reranked:
    """Fill ``k`` positions greedily with dynamic diversity. One scorer call per position."""
    n = len(ctx)
    k = min(k, n)
    x = static_matrix(ctx)
    sim = ctx.similarity()
    maxsim = np.full(n, -np.inf)
    remaining = np.ones(n, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    scores = np.empty(k)
    served = np.empty((k, x.shape[1]))
    for pos in range(k):
        fill_dynamic(x, ctx, maxsim)
        idx = np.flatnonzero(remaining)
        s = scorer(x[idx])
        best = int(np.argmax(s))
        j = idx[best]
        order[pos], scores[pos], served[pos] = j, s[best], x[j]
        remaining[j] = False
        maxsim = np.maximum(maxsim, sim[:, j])
    return Reranked(order, scores, served)
