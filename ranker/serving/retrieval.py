"""Retrieval: what one request's candidates are, and what is known about them.

The catalogue (reloaded when it changes, checked at most every ``CATALOG_TTL_S``), item
counts strictly before the request (kept current incrementally), the user's row, base
candidates from the base models, and the :class:`ListContext` the features are computed
from. Nothing here scores or orders anything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from ranker.data.catalog import Catalog, counts_as_of, load_catalog
from ranker.data.schema import ORGANIC, Interaction, Item, User
from ranker.flows import UnknownUserError
from ranker.rank.features import ListContext, UserHistory, make_context, needs_history, with_history

CATALOG_TTL_S = 5.0


class ItemCounts:
    """Item counts (views, other interactions) strictly before a moment, kept current incrementally:
    organic events only (the popularity feature's), or every origin (``organic_only=False``, the
    item CTR's)."""

    def __init__(self, organic_only: bool = True) -> None:
        self.organic_only = organic_only
        self.as_of: datetime | None = None
        self.views: np.ndarray | None = None
        self.other: np.ndarray | None = None

    def get(self, engine: Engine, catalog: Catalog, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        if self.as_of is None or as_of < self.as_of or self.views is None or len(self.views) != len(catalog):
            self.views, self.other = counts_as_of(engine, catalog, as_of, self.organic_only)
        elif as_of > self.as_of:
            self._add_between(engine, catalog, self.as_of, as_of)
        self.as_of = as_of
        return self.views, self.other

    def _add_between(self, engine: Engine, catalog: Catalog, start: datetime, end: datetime) -> None:
        """Add the organic interactions in [start, end) to the counts."""
        stmt = select(Interaction.item_id, Interaction.kind).where(
            Interaction.created_at >= start, Interaction.created_at < end,
            *([Interaction.origin == ORGANIC] if self.organic_only else []))
        with engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if rows:
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            is_view = np.array([r[1] == "view" for r in rows])
            pos = catalog.index(ids)
            np.add.at(self.views, pos[is_view], 1.0)
            np.add.at(self.other, pos[~is_view], 1.0)


@dataclass(frozen=True)
class UserRow:
    id: int
    role: str | None
    category: str | None
    field: str | None


class Retrieval:
    """Process-wide retrieval state for one database: the catalogue and the item counts."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.RLock()
        self._catalog: Catalog | None = None
        self._catalog_sig: tuple | None = None
        self._catalog_checked = 0.0
        self._counts = ItemCounts()
        self._all_counts = ItemCounts(organic_only=False)

    def catalog(self) -> Catalog:
        """The catalogue, re-read when its signature (count, max id, max updated_at) changed."""
        now = time.monotonic()
        if self._catalog is not None and now - self._catalog_checked < CATALOG_TTL_S:
            return self._catalog
        with self.engine.connect() as conn:
            stmt = select(func.count(), func.max(Item.id), func.max(Item.updated_at))
            sig = tuple(conn.execute(stmt).one())
        if sig != self._catalog_sig:
            fresh = load_catalog(self.engine)
            if self._catalog is None or not np.array_equal(fresh.ids, self._catalog.ids):
                # counts are per item: kept when only attributes changed
                self._counts, self._all_counts = ItemCounts(), ItemCounts(organic_only=False)
            self._catalog, self._catalog_sig = fresh, sig
        self._catalog_checked = now
        return self._catalog

    def counts(self, as_of: datetime) -> tuple[Catalog, np.ndarray, np.ndarray]:
        """The catalogue and its organic (views, other interactions) strictly before ``as_of``, kept current."""
        with self._lock:
            catalog = self.catalog()
            views, other = self._counts.get(self.engine, catalog, as_of)
            return catalog, views, other

    def reload_catalog(self) -> None:
        """Read the catalogue again on the next request (after an item was written here)."""
        with self._lock:
            self._catalog_sig, self._catalog_checked = None, 0.0

    def invalidate(self) -> None:
        """Forget cached catalogue and counts (after an import or a new world)."""
        with self._lock:
            self._catalog, self._catalog_sig, self._counts = None, None, ItemCounts()
            self._all_counts = ItemCounts(organic_only=False)

    def user(self, user_id: int) -> UserRow | None:
        """The user's (id, role, category, field), or None for an unknown id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(User.id, User.role, User.category, User.field)
                               .where(User.id == int(user_id))).first()
        return UserRow(*row) if row else None

    def known_user(self, user_id: int) -> UserRow:
        user = self.user(user_id)
        if user is None:
            raise UnknownUserError(f"unknown user {user_id}: no such user id in the database")
        return user

    def context(self, user_id: int, user: UserRow | None, item_ids: Any, base_scores: Any,
                as_of: datetime) -> ListContext:
        """The feature context of candidates ``item_ids`` (in base order) for this user at ``as_of``."""
        catalog, views, other = self.counts(as_of)
        rows = catalog.index(np.asarray(item_ids, dtype=np.int64))
        ucat, ufield = (user.category, user.field) if user else (None, None)
        ctx = make_context(catalog, rows, views[rows], other[rows], np.asarray(base_scores, dtype=np.float64),
                           as_of, int(user_id), ucat, ufield)
        if needs_history():
            with self._lock:
                views_all, engaged_all = self._all_counts.get(self.engine, catalog, as_of)
                views_all, engaged_all = views_all[rows], engaged_all[rows]
            with_history(ctx, self.history(catalog, user_id, as_of), views_all, engaged_all)
        return ctx

    def history(self, catalog: Catalog, user_id: int, as_of: datetime) -> UserHistory:
        """The user's events strictly before ``as_of``, every origin (one indexed query)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Interaction.item_id, Interaction.kind, Interaction.created_at).where(
                Interaction.user_id == int(user_id), Interaction.created_at < as_of)).all()
        if not rows:
            return UserHistory.empty()
        items, kinds, times = zip(*rows)
        return UserHistory.from_events(catalog, np.array(items, dtype=np.int64), np.array(kinds),
                                       np.array(times, dtype="datetime64[us]"), as_of)

    def trending(self, user: UserRow, flow: str, k: int, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        """The trending list's item ids and popularity scores for ``flow`` (the user's own item type
        for ``trending``, else the type in ``trending-<item type>``)."""
        from ranker.base.store import serving_models
        from ranker.flows import trending_item_type

        item_type = trending_item_type(flow, user.role, sorted(set(self.catalog().item_type.tolist())))
        popular = serving_models(self.engine, ["popularity"])["popularity"]
        return popular.recommend(user.id, k, item_type=item_type, as_of=as_of, filter_engaged=False)

    def base(self, user_id: int, flow: str, n: int, model: str, as_of: datetime):
        """``n`` base candidates (:class:`ranker.serving.candidates.Candidates`) from the base model."""
        from ranker.serving.candidates import candidates

        return candidates(user_id, flow, n, engine=self.engine, model=model, as_of=as_of)
