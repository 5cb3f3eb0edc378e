"""Fitted base models kept by what they were fitted on, so the same fit is never paid twice.

``ranker dataset`` refits the base model once per ``--refit-days`` period of its window, each
fit on the history before its cutoff (``ranker.rank.dataset._BaseSchedule``). Rebuilding a
dataset over the same log (another feature set, negative ratio, engine or format) needs
exactly the same fits, and with the ensemble they are most of the build's time
(docs/performance.md). :func:`fit` looks a fit up by a key over everything it depends on:

- the model's name and constructor parameters, and :data:`ranker.base.base.VIEW_WEIGHT`;
- the source code of :mod:`ranker.base` (a change to any model invalidates every entry);
- the training data itself: a hash of the interactions, catalogue and users before the
  cutoff, and the cutoff. New or edited history before the cutoff gives a new key.

Entries are ``.npz`` files (:meth:`BaseRecommender.save`, written atomically) under
``config.MODELS_DIR / "base" / "fits"``; the newest :data:`KEEP` are kept. An unreadable
entry is refitted and overwritten, never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ranker import config
from ranker.base import base as base_module
from ranker.base.base import BaseRecommender, TrainingData

log = logging.getLogger(__name__)

#: How many fitted models the cache keeps (the newest by use); a 45-day window refitted
#: weekly needs 7, so two windows' worth fit.
KEEP = 16


def cache_dir(directory: str | Path | None = None) -> Path:
    """``directory``, or ``config.MODELS_DIR / "base" / "fits"`` (read at call time)."""
    return Path(directory) if directory is not None else Path(config.MODELS_DIR) / "base" / "fits"


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """SHA-256 over the source of every module of :mod:`ranker.base`, in name order."""
    h = hashlib.sha256()
    for path in sorted(Path(base_module.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _frame_digest(h: hashlib._Hash, frame: pd.DataFrame) -> None:
    h.update(json.dumps([str(c) for c in frame.columns]).encode())
    if len(frame):
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())


def fit_key(model: BaseRecommender, data: TrainingData) -> str:
    """The cache key of fitting the unfitted ``model`` on ``data`` (hex, 24 characters)."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": model.name, "params": model.get_params(), "view_weight": base_module.VIEW_WEIGHT,
                         "cutoff": data.cutoff.isoformat(), "code": _code_digest()},
                        sort_keys=True, default=str).encode())
    for frame in (data.interactions, data.items, data.users):
        _frame_digest(h, frame)
    return h.hexdigest()[:24]


def fit(model: BaseRecommender, data: TrainingData, directory: str | Path | None = None) -> BaseRecommender:
    """``model`` fitted on ``data``: loaded from the cache when the same fit was saved before,
    else fitted and saved (a cache that cannot be written only logs a warning)."""
    folder = cache_dir(directory)
    path = folder / f"{model.name}-{data.cutoff:%Y%m%dT%H%M%S}-{fit_key(model, data)}.npz"
    if path.exists():
        try:
            loaded = BaseRecommender.load(path)
        except (ValueError, OSError, KeyError) as exc:
            log.warning("refitting %s: the cached fit %s is unreadable (%s)", model.name, path.name, exc)
        else:
            os.utime(path)
            log.info("reused the %s fit on history before %s from %s", model.name, data.cutoff, path.name)
            return loaded
    fitted = model.fit(data)
    try:
        fitted.save(path)
        _evict(folder)
    except OSError as exc:
        log.warning("could not keep the %s fit in %s: %s", model.name, folder, exc)
    return fitted


def _evict(folder: Path, keep: int = KEEP) -> None:
    """Delete all but the ``keep`` most recently used entries."""
    entries = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


__all__ = ["KEEP", "cache_dir", "fit", "fit_key"]
