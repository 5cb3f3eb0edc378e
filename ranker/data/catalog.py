"""The item catalogue and item counts, as of a moment.

Serving and the dataset builder both describe items through this module, so that a
feature computed for a served list and recomputed later for the same moment agree:

- :func:`load_catalog` reads the items' attributes once (a small table).
- :func:`counts_as_of` counts views and other interactions strictly before a moment
  with one SQL ``GROUP BY`` (serving).
- :class:`CountIndex` answers the same question for many (item, moment) pairs at once
  from interaction arrays (training data, point-in-time).

Both count organic interactions only (``interactions.origin``): the outcomes of served
lists are left out, so an item does not become popular by being recommended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, case, func, select

from ranker import config, keys
from ranker.data.db import get_setting, session_scope
from ranker.data.schema import ORGANIC, Interaction, Item


@dataclass
class Catalog:
    """Item attributes, one row per item, sorted by id."""

    ids: np.ndarray  # int64, sorted
    item_type: np.ndarray  # str (object)
    category: np.ndarray
    field: np.ndarray
    type: np.ndarray
    created: np.ndarray  # datetime64[us]
    updated: np.ndarray
    max_views: float = float(config.DEFAULT_POPULARITY_MAX_VIEWS)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, item_ids: np.ndarray) -> np.ndarray:
        """Row positions of ``item_ids``; raises ValueError naming any unknown id."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, item_ids)
        pos = np.minimum(pos, len(self.ids) - 1)
        bad = self.ids[pos] != item_ids if len(self.ids) else np.ones(len(item_ids), bool)
        if bad.any():
            raise ValueError(f"unknown item id(s): {item_ids[bad][:5].tolist()}")
        return pos


def load_catalog(engine: Engine) -> Catalog:
    cols = (Item.id, Item.item_type, Item.category, Item.field, Item.type, Item.created_at,
            Item.updated_at)
    with engine.connect() as conn:
        rows = conn.execute(select(*cols).order_by(Item.id)).all()
    with session_scope(engine) as s:
        max_views = float(get_setting(s, keys.POPULARITY_MAX_VIEWS, config.DEFAULT_POPULARITY_MAX_VIEWS))
    if not rows:
        empty = np.array([], dtype=object)
        return Catalog(np.array([], np.int64), empty, empty, empty, empty,
                       np.array([], "datetime64[us]"), np.array([], "datetime64[us]"), max_views)
    ids, kinds, cats, fields, types, created, updated = zip(*rows)
    return Catalog(
        ids=np.array(ids, dtype=np.int64),
        item_type=np.array(kinds, dtype=object),
        category=np.array(cats, dtype=object),
        field=np.array(fields, dtype=object),
        type=np.array(types, dtype=object),
        created=np.array(created, dtype="datetime64[us]"),
        updated=np.array(updated, dtype="datetime64[us]"),
        max_views=max_views,
    )


def counts_as_of(engine: Engine, catalog: Catalog, as_of: datetime,
                 organic_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(views, other interactions) per catalogue row, counting organic events (every event with
    ``organic_only=False``) strictly before ``as_of``."""
    is_view = case((Interaction.kind == "view", 1), else_=0)
    stmt = (
        select(Interaction.item_id, func.sum(is_view), func.count() - func.sum(is_view))
        .where(Interaction.created_at < as_of, *([Interaction.origin == ORGANIC] if organic_only else []))
        .group_by(Interaction.item_id)
    )
    views = np.zeros(len(catalog), dtype=np.float64)
    inter = np.zeros(len(catalog), dtype=np.float64)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    if rows:
        ids, v, o = (np.array(c, dtype=np.float64) for c in zip(*rows))
        pos = catalog.index(ids.astype(np.int64))
        views[pos], inter[pos] = v, o
    return views, inter


class CountIndex:
    """Point-in-time item counts from interaction arrays.

    Parameters
    ----------
    item_ids : (m,) int64
    times : (m,) datetime64
    is_view : (m,) bool
    counted : (m,) bool, optional
        The events to count (default all); :meth:`from_history` passes the organic ones.
    """

    def __init__(self, item_ids: np.ndarray, times: np.ndarray, is_view: np.ndarray,
                 counted: np.ndarray | None = None):
        t = times.astype("datetime64[us]").astype(np.int64)
        keep = np.ones(len(t), dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
        self._view_keys = self._keys(item_ids[is_view & keep], t[is_view & keep])
        self._other_keys = self._keys(item_ids[~is_view & keep], t[~is_view & keep])

    @classmethod
    def from_history(cls, history: pd.DataFrame) -> CountIndex:
        """The counts serving uses (:func:`counts_as_of`: organic events only) from a
        :func:`ranker.data.interactions.load_interactions` frame."""
        return cls(history["item_id"].to_numpy(), history["created_at"].to_numpy(),
                   (history["kind"] == "view").to_numpy(), (history["origin"] == ORGANIC).to_numpy())

    @staticmethod
    def _keys(items: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        # (item, time) packed into one sortable pair of columns via lexsort
        order = np.lexsort((t_us, items))
        return np.stack([items[order].astype(np.int64), t_us[order]])

    @staticmethod
    def _count(keys: np.ndarray, items: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        key_items, key_times = keys
        order = np.argsort(items, kind="stable")
        sorted_items, sorted_t = items[order], t_us[order]
        uniq, starts = np.unique(sorted_items, return_index=True)
        ends = np.append(starts[1:], len(sorted_items))
        lo = np.searchsorted(key_items, uniq, side="left")
        hi = np.searchsorted(key_items, uniq, side="right")
        counted = np.empty(len(items), dtype=np.float64)
        # One slice per distinct item: its event times are sorted, so count those before t.
        for a, b, klo, khi in zip(starts, ends, lo, hi):
            counted[a:b] = np.searchsorted(key_times[klo:khi], sorted_t[a:b], side="left")
        out = np.empty_like(counted)
        out[order] = counted
        return out

    def counts(self, item_ids: np.ndarray, as_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(views, other interactions) strictly before ``as_of[i]`` for ``item_ids[i]``."""
        items = np.asarray(item_ids, dtype=np.int64)
        t = np.asarray(as_of).astype("datetime64[us]").astype(np.int64)
        return self._count(self._view_keys, items, t), self._count(self._other_keys, items, t)
