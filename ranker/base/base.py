"""The interface every base recommender implements.

After ``implicit.recommender_base.RecommenderBase``: a small abstract class with
``fit``, ``score``, ``recommend``, ``save`` and ``load``; subclasses fill in three
hooks (``_fit``, ``_score``, and the arrays they persist). Conventions follow
scikit-learn: ``__init__`` only stores parameters, ``fit`` returns ``self``, and
fitted attributes end in ``_``.

What the base class does for every model:

- It keeps the item catalogue seen at fit time (ids, item type, creation time),
  indexed per item type, so a request only scores the items of one type.
- It keeps which items each user *engaged* with before the cutoff (any of
  ``config.ENGAGED_KINDS``: a click or an explicit positive) and never
  recommends them again. Plain views are **not** excluded: a viewed-not-clicked
  item is a soft negative, and showing it again is allowed.
- A user is *known* when they engaged with or viewed a catalogue item at least once
  before the cutoff. The views of a user who never engaged before the cutoff enter
  the personalised models' training signal at :data:`VIEW_WEIGHT`, below a click's
  1.0, so they get a profile from those views (cold start); once a user has engaged,
  their engagement alone is their profile. A personalised model raises
  :class:`UnknownUserError` for anyone else (no event at all before the cutoff); the
  flow layer (:func:`ranker.serving.candidates.candidates`) answers such users with the
  trending list instead. Popularity is not personalised and knows every user.
- Items outside the catalogue (created after the cutoff) score 0.0, like an item
  without any interaction; they are never recommended until the next fit.
- Persistence: one ``.npz`` file per model holding the arrays and a JSON
  metadata record (model name, params, cutoff, version); it is read with
  ``allow_pickle=False`` and written to a temporary file then ``os.replace``\\ d.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from sqlalchemy import Engine

import ranker
from ranker import config
from ranker.data.clock import utcnow
from ranker.data.interactions import load_interactions, load_items, load_users
from ranker.errors import RankerError

#: Bumped when the file layout changes; older files are refused with a message.
FORMAT_VERSION = 1
META_KEY = "__meta__"

#: Weight of a plain view in the personalised models' training signal (ALS's confidence before
#: ``alpha``, the two-tower model's loss weight), against 1.0 for a click and 2.0 for an explicit
#: positive. Only the views of users with no engagement before the cutoff count: they make such a
#: user known to the models, with a profile built from their views (cold start). Kept well below a
#: click because a view of a shown item says "examined", not "liked". 0 restores engagement-only
#: models, and view-only users then get the trending list (see docs/serving.md, Cold start).
VIEW_WEIGHT = 0.1


def profile_kinds() -> tuple[str, ...]:
    """The kinds of event that make a user known to the personalised models: any engagement, and a
    view while :data:`VIEW_WEIGHT` is above 0 (read at call time)."""
    return config.ENGAGED_KINDS + (("view",) if VIEW_WEIGHT > 0 else ())


def with_views(kind_weights: Mapping[str, float]) -> dict[str, float]:
    """``kind_weights`` (engaged kinds) plus a view at :data:`VIEW_WEIGHT` (read at call time)."""
    return {"view": VIEW_WEIGHT, **kind_weights}

class UnknownUserError(RankerError, ValueError):
    """The user has no event (view or engagement) before the model's cutoff, so a personalised model
    cannot score them."""


class NotFittedError(RuntimeError):
    """``score``/``recommend``/``save`` called before ``fit``."""


def to_seconds(moment: datetime | np.datetime64 | pd.Timestamp) -> int:
    """Seconds since the epoch of a naive-UTC moment."""
    return int(np.datetime64(pd.Timestamp(moment).to_datetime64(), "s").astype(np.int64))


@dataclass(frozen=True)
class TrainingData:
    """What a base model learns from: history strictly before ``cutoff``.

    Attributes
    ----------
    interactions : DataFrame
        ``user_id, item_id, kind, created_at`` (see :func:`ranker.data.interactions.load_interactions`),
        all with ``created_at < cutoff``.
    items : DataFrame
        The catalogue as of the cutoff (created at or before it), sorted by id.
    users : DataFrame
        ``id, role, category, field`` of every user.
    cutoff : datetime
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    cutoff: datetime
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Models align their arrays with the catalogue sorted by id.
        for name in ("items", "users"):
            frame = getattr(self, name)
            if not frame["id"].is_monotonic_increasing:
                object.__setattr__(self, name, frame.sort_values("id").reset_index(drop=True))

    @classmethod
    def from_engine(cls, engine: Engine, cutoff: datetime) -> TrainingData:
        """Load the history before ``cutoff`` and the catalogue as of ``cutoff`` from the database."""
        return cls(
            interactions=load_interactions(engine, until=cutoff),
            items=load_items(engine, as_of=cutoff),
            users=load_users(engine),
            cutoff=cutoff,
        )

    @classmethod
    def from_frames(
        cls, interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, cutoff: datetime
    ) -> TrainingData:
        """Build from in-memory frames, dropping rows after the cutoff."""
        ts = pd.Timestamp(cutoff)
        return cls(
            interactions=interactions[interactions["created_at"] < ts].reset_index(drop=True),
            items=items[items["created_at"] <= ts].reset_index(drop=True),
            users=users,
            cutoff=cutoff,
        )

    @property
    def engaged(self) -> pd.DataFrame:
        """Interactions of an engaged kind whose item is in the catalogue."""
        if "engaged" not in self._cache:
            df = self._in_catalogue()
            self._cache["engaged"] = df[df["kind"].isin(config.ENGAGED_KINDS).to_numpy()].reset_index(drop=True)
        return self._cache["engaged"]

    @property
    def profile(self) -> pd.DataFrame:
        """What the personalised models learn users from: :attr:`engaged`, plus the views of users
        with no engagement before the cutoff while :data:`VIEW_WEIGHT` is above 0 (read at call
        time), on catalogue items."""
        key = ("profile", VIEW_WEIGHT > 0)
        if key not in self._cache:
            df = self._in_catalogue()
            keep = df["kind"].isin(config.ENGAGED_KINDS).to_numpy()
            if VIEW_WEIGHT > 0:
                view_only = ~df["user_id"].isin(self.engaged["user_id"].unique()).to_numpy()
                keep = keep | ((df["kind"] == "view").to_numpy() & view_only)
            self._cache[key] = df[keep].reset_index(drop=True)
        return self._cache[key]

    def _in_catalogue(self) -> pd.DataFrame:
        df = self.interactions
        return df[np.isin(df["item_id"].to_numpy(), self.items["id"].to_numpy())]

    def check(self) -> None:
        """Raise ValueError, saying what data is needed, when there is nothing to learn from."""
        if len(self.items) == 0:
            raise ValueError(
                f"no items created before the cutoff {self.cutoff:%Y-%m-%d %H:%M}: base models need a "
                "catalogue. Build the demo world with `ranker demo init` or import data."
            )
        if len(self.engaged) == 0:
            raise ValueError(
                f"no engaged interactions ({', '.join(config.ENGAGED_KINDS)}) before the cutoff "
                f"{self.cutoff:%Y-%m-%d %H:%M}: base models need users who clicked or gave positive "
                "feedback. Build the demo world with `ranker demo init`, import data, or pick a later cutoff."
            )


class BaseRecommender(ABC):
    """A base recommender: scores items for a user from history before a cutoff.

    Subclasses set ``name`` and implement ``_fit`` and ``_score``; models with
    learned arrays also implement ``_state`` and ``_restore``.

    Attributes
    ----------
    cutoff_ : datetime
        Only interactions strictly before this moment were used.
    version_ : str
        ``"<name>-<cutoff>-<hash>"``; the hash covers params and training data.
    item_ids_ : ndarray of int64, shape (n_items,)
        The catalogue, sorted.
    item_types_ : tuple of str
        Item type names; ``item_type_codes_`` indexes into it.
    item_type_codes_ : ndarray of int16, shape (n_items,)
    item_created_ : ndarray of int64, shape (n_items,)
        Creation time of each item, in seconds since the epoch.
    user_ids_ : ndarray of int64, shape (n_users,)
        Known users (engaged with or viewed a catalogue item before the cutoff), sorted.
    engaged_indptr_, engaged_rows_ : ndarray of int64
        CSR lists of the catalogue rows each known user engaged with (empty for a user who only viewed).
    """

    name: ClassVar[str] = ""
    #: False for models that give every user the same scores (popularity).
    personalised: ClassVar[bool] = True

    # --- parameters -----------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters and their current values (scikit-learn style; ``deep`` is
        accepted for compatibility: no parameter is itself an estimator)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters (scikit-learn style); unknown names are refused.

        Raises
        ------
        ValueError
            A name that is not a constructor parameter (the message lists the valid ones).
        """
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {key!r}; valid: {', '.join(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "cutoff_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{self.name} model is not fitted: call fit() or run `ranker base fit` first"
            )

    # --- fitting ----------------------------------------------------------------

    def fit(self, data: TrainingData) -> Self:
        """Learn from ``data`` (history before ``data.cutoff``).

        Raises
        ------
        ValueError
            No catalogue or no engaged interaction to learn from.
        """
        data.check()
        self._set_catalogue(data)
        self._fit(data)
        self.fitted_at_ = utcnow().replace(microsecond=0).isoformat()
        self.version_ = self._make_version(data)
        self._build_index()
        return self

    @abstractmethod
    def _fit(self, data: TrainingData) -> None:
        """Learn the model's own arrays; the catalogue and user index are already set."""

    def _set_catalogue(self, data: TrainingData) -> None:
        items = data.items
        self.cutoff_ = pd.Timestamp(data.cutoff).to_pydatetime()
        self.item_ids_ = items["id"].to_numpy(np.int64)
        types = pd.Categorical(items["item_type"].astype(str))
        self.item_types_ = tuple(str(t) for t in types.categories)
        self.item_type_codes_ = types.codes.astype(np.int16)
        self.item_created_ = (
            items["created_at"].to_numpy("datetime64[s]").astype(np.int64)
        )
        engaged = data.engaged
        self.user_ids_ = np.unique(data.profile["user_id"].to_numpy(np.int64))
        urows = np.searchsorted(self.user_ids_, engaged["user_id"].to_numpy(np.int64))
        irows = np.searchsorted(self.item_ids_, engaged["item_id"].to_numpy(np.int64))
        pairs = np.unique(urows * len(self.item_ids_) + irows)
        pair_users, pair_items = np.divmod(pairs, len(self.item_ids_))
        self.engaged_indptr_ = np.r_[0, np.cumsum(np.bincount(pair_users, minlength=len(self.user_ids_)))]
        self.engaged_rows_ = pair_items.astype(np.int64)

    def _make_version(self, data: TrainingData) -> str:
        h = hashlib.sha1(json.dumps(self.get_params(), sort_keys=True, default=str).encode())
        if VIEW_WEIGHT > 0:  # without views, the same version as before views counted
            h.update(f"view_weight={VIEW_WEIGHT}".encode())
        for col in ("user_id", "item_id", "created_at"):
            h.update(np.ascontiguousarray(data.profile[col].to_numpy()).tobytes())
        h.update(self.item_ids_.tobytes())
        return f"{self.name}-{self.cutoff_:%Y%m%dT%H%M%S}-{h.hexdigest()[:8]}"

    def _build_index(self) -> None:
        """Per-type catalogue rows, cached for serving."""
        self._rows_by_type = {
            t: np.flatnonzero(self.item_type_codes_ == code).astype(np.int64)
            for code, t in enumerate(self.item_types_)
        }
        self._all_rows = np.arange(len(self.item_ids_), dtype=np.int64)

    # --- lookups ------------------------------------------------------------------

    def knows_user(self, user_id: int) -> bool:
        """True when the model can personalise for ``user_id`` (always True for popularity)."""
        self._check_fitted()
        return not self.personalised or self._user_row(user_id) >= 0

    def _user_row(self, user_id: int) -> int:
        """Row of ``user_id`` in ``user_ids_``, or -1."""
        pos = int(np.searchsorted(self.user_ids_, user_id))
        return pos if pos < len(self.user_ids_) and self.user_ids_[pos] == user_id else -1

    def _require_user(self, user_id: int) -> int:
        row = self._user_row(user_id)
        if row < 0 and self.personalised:
            raise UnknownUserError(
                f"user {user_id} has no view or engagement before {self.cutoff_:%Y-%m-%d %H:%M}, so the "
                f"{self.name} model cannot personalise for them; serve the trending list "
                "(ranker.serving.candidates.candidates does this and flags fallback=True)"
            )
        return row

    def item_rows(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Catalogue rows of ``item_ids``; -1 for ids outside the catalogue."""
        self._check_fitted()
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.item_ids_, ids)
        pos_c = np.minimum(pos, max(len(self.item_ids_) - 1, 0))
        known = (pos < len(self.item_ids_)) & (self.item_ids_[pos_c] == ids)
        return np.where(known, pos_c, -1).astype(np.int64)

    def engaged_item_ids(self, user_id: int) -> np.ndarray:
        """Items the user engaged with before the cutoff (sorted int64; empty if unknown)."""
        self._check_fitted()
        row = self._user_row(user_id)
        if row < 0:
            return np.empty(0, dtype=np.int64)
        return self.item_ids_[self.engaged_rows_[self.engaged_indptr_[row]:self.engaged_indptr_[row + 1]]]

    def pool(self, item_type: str | None = None, as_of: datetime | None = None) -> np.ndarray:
        """Catalogue rows of one item type (None: all), created at or before ``as_of``.

        Raises
        ------
        ValueError
            ``item_type`` is neither in the catalogue nor in ``config.ITEM_TYPES``.
        """
        self._check_fitted()
        if item_type is None:
            rows = self._all_rows
        elif item_type in self._rows_by_type:
            rows = self._rows_by_type[item_type]
        elif item_type in config.ITEM_TYPES:
            rows = np.empty(0, dtype=np.int64)
        else:
            valid = sorted(set(self.item_types_) | set(config.ITEM_TYPES))
            raise ValueError(f"unknown item type {item_type!r}; valid: {', '.join(valid)}")
        if as_of is not None:
            rows = rows[self.item_created_[rows] <= to_seconds(as_of)]
        return rows

    # --- scoring -------------------------------------------------------------------

    @abstractmethod
    def _score(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        """Scores, shape (len(item_rows),), of catalogue rows for a user row (-1: not personalised)."""

    def score(self, user_id: int, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Base scores of ``item_ids`` for ``user_id``; higher is better.

        Parameters
        ----------
        user_id : int
        item_ids : array-like of int, shape (n,)

        Returns
        -------
        ndarray of float32, shape (n,)
            Finite scores; ids outside the catalogue score 0.0. Scales differ
            between models (the ensemble min-max normalises over ``item_ids``).

        Raises
        ------
        UnknownUserError
            A personalised model and a user with no engagement before the cutoff.
        """
        self._check_fitted()
        urow = self._require_user(user_id)
        rows = self.item_rows(item_ids)
        out = np.zeros(len(rows), dtype=np.float32)
        known = rows >= 0
        if known.any():
            out[known] = self._score(urow, rows[known])
        return out

    def recommend(self, user_id: int, n: int = 20, *, item_type: str | None = None, as_of: datetime | None = None,
                  exclude: Sequence[int] | np.ndarray | None = None,
                  filter_engaged: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best items for a user, among items of ``item_type`` created at or before ``as_of``.

        Parameters
        ----------
        user_id : int
        n : int
            How many to return (fewer when the pool is smaller).
        item_type : str, optional
            Only this item type (a flow's item type); None for all.
        as_of : datetime, optional
            Only items created at or before this moment.
        exclude : array-like of int, optional
            More item ids to leave out, e.g. engagements logged after the cutoff.
        filter_engaged : bool
            Leave out items the user engaged with before the cutoff (default).

        Returns
        -------
        item_ids : ndarray of int64, shape (m,), m <= n
        scores : ndarray of float32, shape (m,)
            Sorted by score descending, ties by item id.

        Raises
        ------
        UnknownUserError
            A personalised model and a user it does not know.
        """
        self._check_fitted()
        if n < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        urow = self._require_user(user_id)
        rows = self.pool(item_type, as_of)
        if len(rows) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        scores = np.asarray(self._score(urow, rows), dtype=np.float32)
        banned = self._banned_rows(urow, exclude, filter_engaged)
        if len(banned):
            keep = ~np.isin(rows, banned)
            rows, scores = rows[keep], scores[keep]
        return self._top(rows, scores, n)

    def _banned_rows(self, urow: int, exclude: Sequence[int] | np.ndarray | None,
                     filter_engaged: bool) -> np.ndarray:
        """Catalogue rows :meth:`recommend` leaves out: the user's engaged items, then ``exclude``."""
        banned = np.empty(0, dtype=np.int64)
        if filter_engaged and urow >= 0:
            banned = self.engaged_rows_[self.engaged_indptr_[urow]:self.engaged_indptr_[urow + 1]]
        if exclude is not None and len(exclude):
            extra = self.item_rows(exclude)
            banned = np.concatenate([banned, extra[extra >= 0]])
        return banned

    def _top(self, rows: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n best rows by score, ties broken by item id (rows are id-sorted)."""
        if len(rows) > n:
            part = np.argpartition(-scores, n - 1)[:n]
            # Bring in every row tied with the n-th score so ties resolve by id, not by partition order.
            tied = np.flatnonzero(scores == scores[part].min())
            part = np.union1d(part, tied)
            rows, scores = rows[part], scores[part]
        order = np.lexsort((rows, -scores))[:n]
        return self.item_ids_[rows[order]], scores[order]

    # --- persistence ---------------------------------------------------------------

    def _state(self) -> dict[str, np.ndarray]:
        """The model's own learned arrays, to save."""
        return {}

    def _restore(self, arrays: Mapping[str, np.ndarray], meta: dict[str, Any]) -> None:  # noqa: B027
        """Set the model's own learned arrays from :meth:`_state`'s output."""

    def _extra_meta(self) -> dict[str, Any]:
        """Model-specific JSON metadata (e.g. an ensemble's children)."""
        return {}

    def metadata(self) -> dict[str, Any]:
        """What the saved file records about this fit."""
        self._check_fitted()
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "params": self.get_params(),
            "cutoff": self.cutoff_.isoformat(),
            "version": self.version_,
            "fitted_at": self.fitted_at_,
            "n_users": len(self.user_ids_),
            "n_items": len(self.item_ids_),
            "n_engaged_pairs": len(self.engaged_rows_),
            "ranker_version": ranker.__version__,
            **self._extra_meta(),
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "item_ids": self.item_ids_,
            "item_type_codes": self.item_type_codes_,
            "item_created": self.item_created_,
            "user_ids": self.user_ids_,
            "engaged_indptr": self.engaged_indptr_,
            "engaged_rows": self.engaged_rows_,
        }
        arrays.update({f"model/{k}": v for k, v in self._state().items()})
        return arrays

    def save(self, path: str | os.PathLike[str], extra_meta: dict[str, Any] | None = None) -> Path:
        """Write the model to one ``.npz`` file, atomically (temporary file, then ``os.replace``).

        ``extra_meta`` is stored under ``"extra"`` (e.g. which database it was fitted on).
        """
        meta = self.metadata()
        meta["item_types"] = list(self.item_types_)
        if extra_meta:
            meta["extra"] = extra_meta
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **{META_KEY: np.array(json.dumps(meta))}, **self._arrays())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The JSON metadata of a saved model, without loading its arrays."""
        with np.load(path, allow_pickle=False) as npz:
            return _parse_meta(npz, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BaseRecommender:
        """Load a model saved by :meth:`save`; the class comes from the file's metadata.

        Raises
        ------
        ValueError
            Not a base-model file, an unknown model name or an unsupported format version.
        """
        with np.load(path, allow_pickle=False) as npz:
            meta = _parse_meta(npz, path)
            arrays = {k: npz[k] for k in npz.files if k != META_KEY}
        return cls._from_saved(meta, arrays, path)

    @classmethod
    def _from_saved(
        cls, meta: dict[str, Any], arrays: Mapping[str, np.ndarray], path: Any
    ) -> BaseRecommender:
        from ranker.base import MODELS  # the one registry of base models

        name = meta.get("name")
        if name not in MODELS:
            raise ValueError(f"{path}: unknown base model {name!r}; valid: {', '.join(MODELS)}")
        model_cls = MODELS[name]
        if cls is not BaseRecommender and not issubclass(model_cls, cls):
            raise ValueError(f"{path} holds a {name!r} model, not a {cls.name!r} one")
        model = model_cls(**meta["params"])
        model.cutoff_ = datetime.fromisoformat(meta["cutoff"])
        model.version_ = meta["version"]
        model.fitted_at_ = meta["fitted_at"]
        model.item_types_ = tuple(meta["item_types"])
        model.item_ids_ = arrays["item_ids"].astype(np.int64)
        model.item_type_codes_ = arrays["item_type_codes"].astype(np.int16)
        model.item_created_ = arrays["item_created"].astype(np.int64)
        model.user_ids_ = arrays["user_ids"].astype(np.int64)
        model.engaged_indptr_ = arrays["engaged_indptr"].astype(np.int64)
        model.engaged_rows_ = arrays["engaged_rows"].astype(np.int64)
        model._restore({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}, meta)
        model._build_index()
        return model


def _parse_meta(npz: Any, path: Any) -> dict[str, Any]:
    if META_KEY not in npz.files:
        raise ValueError(f"{path} is not a saved base model (no metadata record)")
    meta = json.loads(str(npz[META_KEY]))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {meta.get('format_version')}, this code reads "
            f"{FORMAT_VERSION}: refit with `ranker base fit`"
        )
    return meta


def kind_weight_array(kinds: pd.Categorical | pd.Series, weights: Mapping[str, float]) -> np.ndarray:
    """Per-row weight of each interaction kind (0.0 for kinds not in ``weights``)."""
    cat = pd.Categorical(kinds)
    table = np.array([float(weights.get(str(c), 0.0)) for c in cat.categories] + [0.0])
    return table[cat.codes]  # code -1 (missing) picks the trailing 0.0


def time_decay(times: pd.Series, cutoff: datetime, half_life_days: float) -> np.ndarray:
    """``0.5 ** (age / half_life)`` per row, age being days from each time to ``cutoff``."""
    age = (pd.Timestamp(cutoff) - times).to_numpy("timedelta64[s]").astype(np.float64) / 86400.0
    return np.exp2(-np.maximum(age, 0.0) / half_life_days)


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant array maps to zeros."""
    if len(x) == 0:
        return x.astype(np.float32)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros(len(x), dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)
