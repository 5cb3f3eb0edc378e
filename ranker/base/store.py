"""The serving store: fitted base models saved under ``config.MODELS_DIR / "base"``.

One file per model, ``<name>.npz`` (see :meth:`BaseRecommender.save`), written to a
temporary file and then ``os.replace``\\ d, so a reader never sees half a file.

- :func:`fit_base_models` fits on the interactions before a cutoff (default:
  the world clock, ``ranker.data.clock.serve_now``) and saves.
- :func:`load_base_models` loads them once per process and reloads a file when
  its mtime changes. Files fitted on other data (another demo world, another
  import) are skipped with a warning; a copy of the same database is fine.
- :func:`serving_models` is what :func:`ranker.serving.candidates.candidates` calls: when a
  needed model has no saved file it fits all models once, on the fly, and saves
  them, so a fresh demo database just works (the first request then takes the
  fit time, ~10 s on the default demo; run ``ranker base fit`` to pay it up front).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from ranker import config, keys
from ranker.base import FALLBACK_MODEL, MODEL_NAMES, BaseRecommender, make_base_model
from ranker.base.base import TrainingData
from ranker.base.ensemble import DEFAULT_ENSEMBLE_WEIGHTS, EnsembleRecommender
from ranker.data.clock import serve_now
from ranker.data.db import get_setting, session_scope
from ranker.data.schema import Item, User

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

_lock = threading.RLock()
#: (directory, database) -> {name: ((mtime_ns, inode, size), model or None if rejected)}
_cache: dict[tuple[str, str], dict[str, tuple[tuple[int, int, int], BaseRecommender | None]]] = {}


def models_dir(directory: str | Path | None = None) -> Path:
    """Where base models live: ``directory`` or ``config.MODELS_DIR / "base"`` (read at call time)."""
    return Path(directory) if directory is not None else Path(config.MODELS_DIR) / "base"


def model_path(name: str, directory: str | Path | None = None) -> Path:
    return models_dir(directory) / f"{name}.npz"


def database_fingerprint(engine: Engine) -> dict[str, Any]:
    """What ties a saved model to its data: the demo world's settings and the catalogue's size.

    A copy of the database matches its original; a rebuilt world (another seed,
    preset or scale) or another import does not. New interactions do not change it.
    """
    with session_scope(engine) as s:
        world = get_setting(s, keys.WORLD)
        n_items, max_item = s.execute(select(func.count(), func.max(Item.id))).one()
        n_users, max_user = s.execute(select(func.count(), func.max(User.id))).one()
    return {"world": world, "items": [n_items, max_item], "users": [n_users, max_user]}


def fits_database(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> bool:
    """True when a model saved with fingerprint ``saved`` was fitted on (an earlier state of) this data.

    The world must be the same; the catalogue and the user base may only have grown since
    (new items score 0 until the next fit), never shrunk or been replaced.
    """
    if not saved or saved.get("world") != now.get("world"):
        return False
    for key in ("items", "users"):
        (n_then, max_then), (n_now, max_now) = saved.get(key, [None, None]), now[key]
        if n_then is None or n_now < n_then or (max_then or 0) > (max_now or 0):
            return False
    return True


def _expand(names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """``names`` plus popularity (the fallback) and the ensemble's members, in fitting order."""
    bad = [n for n in names if n not in MODEL_NAMES]
    if bad:
        raise ValueError(f"unknown base model {bad[0]!r}; valid: {', '.join(MODEL_NAMES)}")
    wanted = {FALLBACK_MODEL, *names}
    if "ensemble" in wanted:
        weights = (params or {}).get("ensemble", {}).get("weights") or DEFAULT_ENSEMBLE_WEIGHTS
        wanted |= {n for n, w in weights.items() if w}
    return [n for n in MODEL_NAMES if n in wanted]


def fit_models(
    data: TrainingData,
    names: Sequence[str] = MODEL_NAMES,
    seed: int = 42,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, BaseRecommender]:
    """Fit ``names`` (plus what they need) on ``data``; the ensemble reuses the fitted members.

    Parameters
    ----------
    data : TrainingData
    names : sequence of str
        Models to fit. Popularity and the ensemble's members are added.
    seed : int
        ``random_state`` of ALS and the two-tower model (unless ``params`` sets it).
    params : dict, optional
        Constructor parameters by model name.
    progress : callable, optional
        ``progress(fraction, message)`` after each model.
    timings : dict, optional
        Filled with fit seconds per model.
    """
    params = params or {}
    order = _expand(names, params)
    models: dict[str, BaseRecommender] = {}
    for step, name in enumerate(order):
        kwargs = dict(params.get(name, {}))
        if name in ("als", "two-tower"):
            kwargs.setdefault("random_state", seed)
        t0 = time.perf_counter()
        if name == "ensemble":
            models[name] = EnsembleRecommender.from_fitted(models, kwargs.get("weights"))
        else:
            models[name] = make_base_model(name, **kwargs).fit(data)
        seconds = time.perf_counter() - t0
        if timings is not None:
            timings[name] = seconds
        if progress:
            progress((step + 1) / len(order), f"fitted {name} in {seconds:.1f}s")
    return models


def fit_base_models(
    engine: Engine,
    cutoff: datetime | None = None,
    names: Sequence[str] = MODEL_NAMES,
    seed: int = 42,
    progress: Progress | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    directory: str | Path | None = None,
) -> dict[str, BaseRecommender]:
    """Fit on the interactions before ``cutoff`` (default: the world clock) and save every model fitted.

    Returns
    -------
    dict of str to BaseRecommender
        The fitted models, by name (``names`` plus popularity and the ensemble's members).

    Raises
    ------
    ValueError
        Unknown model name, or no data to learn from (the message says what is needed).
    """
    _expand(names, params)  # fail on a bad name before loading any data
    if cutoff is None:
        with session_scope(engine) as s:
            cutoff = serve_now(s)
    data = TrainingData.from_engine(engine, cutoff)
    models = fit_models(data, names, seed=seed, params=params, progress=progress)
    stamp = database_fingerprint(engine)
    with _lock:
        for name, model in models.items():
            model.save(model_path(name, directory), extra_meta=stamp)
            log.info("saved %s (%s) to %s", name, model.version_, model_path(name, directory))
    return models


def load_base_models(engine: Engine, directory: str | Path | None = None) -> dict[str, BaseRecommender]:
    """The saved models fitted on this database, by name; cached, reloaded when a file's mtime changes.

    A file that fails to load, or was fitted on other data, is skipped with one
    warning per file version; a good model already loaded under that name stays in use.
    """
    folder = models_dir(directory)
    stamp = None
    key = (str(folder.resolve()), engine.url.render_as_string(hide_password=True))
    with _lock:
        cached = _cache.setdefault(key, {})
        for name in MODEL_NAMES:
            path = model_path(name, folder)
            try:
                st = path.stat()
            except FileNotFoundError:
                cached.pop(name, None)
                continue
            # os.replace gives every saved version a new inode, so two saves within one
            # mtime tick are still told apart.
            signature = (st.st_mtime_ns, st.st_ino, st.st_size)
            if name in cached and cached[name][0] == signature:
                continue
            previous = cached.get(name, (None, None))[1]
            try:
                meta = BaseRecommender.read_metadata(path)
                stamp = stamp or database_fingerprint(engine)
                if not fits_database(meta.get("extra"), stamp):
                    log.warning("skipping %s: fitted on other data (%s, this database: %s); refit with "
                                "`ranker base fit`", path, meta.get("extra"), stamp)
                    cached[name] = (signature, None)
                    continue
                cached[name] = (signature, BaseRecommender.load(path))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cannot load %s (%s); %s", path, exc,
                            "keeping the loaded version" if previous else "skipping it")
                cached[name] = (signature, previous)
        return {name: model for name, (_, model) in cached.items() if model is not None}


def serving_models(engine: Engine, need: Sequence[str], directory: str | Path | None = None,
                   ) -> dict[str, BaseRecommender]:
    """Loaded models, fitting and saving every model once when one in ``need`` is missing."""
    models = load_base_models(engine, directory)
    if all(n in models for n in need):
        return models
    with _lock:  # one on-the-fly fit per process, however many requests arrive meanwhile
        models = load_base_models(engine, directory)
        missing = [n for n in need if n not in models]
        if missing:
            log.info("no saved base model %s for this database: fitting them now (run "
                     "`ranker base fit` to do this ahead of serving)", ", ".join(missing))
            fit_base_models(engine, directory=directory)
            models = load_base_models(engine, directory)
    return models


def clear_cache() -> None:
    """Forget loaded models (tests, or after deleting files)."""
    with _lock:
        _cache.clear()
