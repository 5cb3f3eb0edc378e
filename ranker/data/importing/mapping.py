"""The pure mapping from a source data set to the platform's rows (no I/O).

See ``docs/importing.md`` for the mapping in prose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ranker.data.importing.dirty import FieldWarning

#: Role and item type of imported generic data (the ``user-item`` flow).
IMPORT_ROLE = "user"
IMPORT_ITEM_TYPE = "item"
#: A rating at or above this is an explicit positive (``like``).
DEFAULT_POSITIVE_MIN = 4.0
#: Column widths of the schema; longer source values are cut.
NAME_WIDTH, ATTRIBUTE_WIDTH = 200, 60
NO_FIELD = "none"
UNKNOWN = "unknown"
#: Age bands of ml-1m (lower bound -> label); ml-100k's exact ages are binned the same way.
AGE_BANDS = ((0, "under-18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"),
             (50, "50-55"), (56, "56+"))
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class SourceData:
    """One data set as read from its files, under its external ids (strings).

    Attributes
    ----------
    source : str
        ``ml-100k``, ``ml-1m``, ``recbole`` or ``csv``.
    prefix : str
        Prefix of the names that keep external ids (``"ml"`` gives ``"ml:196"``).
    users : DataFrame
        ``ext_id, category, field, role, created_at`` (None/NaT when unknown).
    items : DataFrame
        ``ext_id, name, category, field, type, item_type, released`` (NaT when unknown).
    events : DataFrame
        ``user, item`` (external ids), ``time`` (datetime64[us], naive UTC),
        ``rating`` (float, NaN when none) and ``kind`` ("" when the rating decides).
    files : list of str
    warnings : list of FieldWarning
        Bad values of optional fields, read as missing (see :mod:`ranker.data.importing.dirty`).
    """

    source: str
    prefix: str
    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    files: list[str] = field(default_factory=list)
    warnings: list[FieldWarning] = field(default_factory=list)


def decade(year: float | int | None) -> str:
    """``1995 -> "1990s"``; ``"unknown"`` for a missing year."""
    if year is None or not np.isfinite(year):
        return UNKNOWN
    return f"{int(year) // 10 * 10}s"


def age_band(age: float | int | None) -> str | None:
    """ml-1m's age bands (``"25-34"``) for an age in years; None when unknown."""
    if age is None or not np.isfinite(age):
        return None
    label = AGE_BANDS[0][1]
    for lower, name in AGE_BANDS:
        if age >= lower:
            label = name
    return label


def genre_attributes(genres: Sequence[str]) -> tuple[str, str]:
    """(category, field): the first genre and the second (``"none"``); ``"unknown"`` without any."""
    real = [g for g in genres if g and g != UNKNOWN]
    if not real:
        return UNKNOWN, NO_FIELD
    return real[0], real[1] if len(real) > 1 else NO_FIELD


def title_year(title: str) -> float:
    """The year in a MovieLens title such as ``"Toy Story (1995)"``; NaN when absent."""
    m = _TITLE_YEAR.search(title)
    return float(m.group(1)) if m else np.nan


def year_starts(years: np.ndarray) -> np.ndarray:
    """January 1st of each year; NaT for NaN."""
    out = np.full(len(years), np.datetime64("NaT"), dtype="datetime64[us]")
    ok = np.isfinite(years)
    out[ok] = (years[ok].astype(np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[us]")
    return out


def expand_events(events: pd.DataFrame, positive_min: float = DEFAULT_POSITIVE_MIN) -> pd.DataFrame:
    """Interactions from rating-level events, in time order.

    - an event with a ``kind`` is that interaction, as is;
    - an event with a rating is a ``view``, plus a ``like`` at the same time when
      ``rating >= positive_min``;
    - an event with neither is an implicit positive: a ``view`` and a ``like``.

    Parameters
    ----------
    events : DataFrame
        ``user, item, time, rating, kind`` as in :class:`SourceData`.
    positive_min : float

    Returns
    -------
    DataFrame
        ``user, item, kind, time, rating``, sorted by time, then source order, with a
        ``view`` before the ``like`` it comes with.
    """
    rating = events["rating"].to_numpy(dtype=np.float64)
    given = events["kind"].to_numpy(dtype=object) != ""
    rated = ~np.isnan(rating)
    like = ~given & (~rated | (rating >= positive_min))
    src = np.arange(len(events))
    parts = [
        (src[given], events["kind"].to_numpy(dtype=object)[given]),
        (src[~given], np.full(int((~given).sum()), "view", dtype=object)),
        (src[like], np.full(int(like.sum()), "like", dtype=object)),
    ]
    rows = np.concatenate([p[0] for p in parts])
    kinds = np.concatenate([p[1] for p in parts])
    times = events["time"].to_numpy("datetime64[us]")[rows]
    kind_rank = (kinds != "view").astype(np.int8)
    order = np.lexsort((kind_rank, rows, times))
    rows, kinds = rows[order], kinds[order]
    return pd.DataFrame({
        "user": events["user"].to_numpy(dtype=object)[rows],
        "item": events["item"].to_numpy(dtype=object)[rows],
        "kind": kinds,
        "time": times[order],
        "rating": rating[rows],
    })


def first_times(ext_ids: np.ndarray, owners: np.ndarray, times: np.ndarray, default: np.datetime64) -> np.ndarray:
    """The earliest of ``times`` per id in ``ext_ids`` (``owners[i]`` owns ``times[i]``); ``default`` if none."""
    first = pd.Series(times).groupby(pd.Series(owners, dtype=object)).min()
    out = np.array(pd.Series(ext_ids, dtype=object).map(first).to_numpy("datetime64[us]"))
    out[np.isnat(out)] = default
    return out


def items_frame(ids: np.ndarray, names: np.ndarray, genres: list[list[str]], years: np.ndarray,
                released: np.ndarray) -> pd.DataFrame:
    """:class:`SourceData` items from genres (category, field) and years (type)."""
    cats, fields = zip(*(genre_attributes(g) for g in genres)) if len(ids) else ((), ())
    return pd.DataFrame({
        "ext_id": ids,
        "name": names,
        "category": np.array(cats, dtype=object),
        "field": np.array(fields, dtype=object),
        "type": np.array([decade(y) for y in years], dtype=object),
        "item_type": IMPORT_ITEM_TYPE,
        "released": released,
    })


def users_frame(ids: np.ndarray, category: np.ndarray | None = None, fields: np.ndarray | None = None,
                roles: np.ndarray | None = None, created: np.ndarray | None = None) -> pd.DataFrame:
    """:class:`SourceData` users; unknown attributes are None, an unknown role is ``user``."""
    n = len(ids)
    none = np.full(n, None, dtype=object)
    return pd.DataFrame({
        "ext_id": ids,
        "category": none if category is None else cut(category, ATTRIBUTE_WIDTH),
        "field": none if fields is None else cut(fields, ATTRIBUTE_WIDTH),
        "role": np.full(n, IMPORT_ROLE, dtype=object) if roles is None else roles,
        "created_at": np.full(n, np.datetime64("NaT"), "datetime64[us]") if created is None else created,
    })


def users_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """The users of ``events``, in order of first appearance, without attributes (no users file)."""
    return users_frame(pd.unique(events["user"].to_numpy(dtype=object)))


def cut(values: np.ndarray, width: int) -> np.ndarray:
    """Strings cut to ``width`` characters (the schema's column width); a missing value (None,
    or the NaN pandas puts in a column of strings) is None."""
    return np.array([None if v is None or v != v else v[:width] for v in values], dtype=object)


@dataclass
class ImportRows:
    """The rows an import writes, still under external ids.

    Attributes
    ----------
    users : DataFrame
        ``ext_id, name, role, category, field, created_at``.
    items : DataFrame
        ``ext_id, name, item_type, category, field, type, created_at, views``
        (``updated_at`` is ``created_at``).
    interactions : DataFrame
        ``user, item, kind, time, rating`` in time order (see :func:`expand_events`).
    """

    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame


def plan_rows(data: SourceData, positive_min: float = DEFAULT_POSITIVE_MIN) -> ImportRows:
    """Map a data set to rows: interactions from ratings, creation times, view totals, names.

    - A user's ``created_at`` is the given one, else their first interaction.
    - An item's ``created_at`` is its release, but never later than its first
      interaction; without a release, its first interaction. Users and items without
      any interaction fall back to the data set's first interaction.
    - ``views`` counts the item's imported views.

    Raises
    ------
    ValueError
        ``data`` holds no events.
    """
    if len(data.events) == 0:
        raise ValueError(f"{data.files[0] if data.files else data.source}: no interactions to import")
    inter = expand_events(data.events, positive_min)
    times = inter["time"].to_numpy("datetime64[us]")
    earliest = times.min()
    users, items = data.users, data.items
    user_ext = users["ext_id"].to_numpy(dtype=object)
    item_ext = items["ext_id"].to_numpy(dtype=object)

    given = users["created_at"].to_numpy("datetime64[us]")
    user_first = first_times(user_ext, inter["user"].to_numpy(dtype=object), times, earliest)
    released = items["released"].to_numpy("datetime64[us]")
    item_first = first_times(item_ext, inter["item"].to_numpy(dtype=object), times, earliest)
    is_view = inter["kind"].to_numpy(dtype=object) == "view"
    views = pd.Series(inter["item"].to_numpy(dtype=object)[is_view]).value_counts()

    return ImportRows(
        users=pd.DataFrame({
            "ext_id": user_ext,
            "name": cut(np.array([f"{data.prefix}:{e}" for e in user_ext], dtype=object), NAME_WIDTH),
            "role": users["role"].to_numpy(dtype=object),
            "category": cut(users["category"].to_numpy(dtype=object), ATTRIBUTE_WIDTH),
            "field": cut(users["field"].to_numpy(dtype=object), ATTRIBUTE_WIDTH),
            "created_at": np.where(np.isnat(given), user_first, given),
        }),
        items=pd.DataFrame({
            "ext_id": item_ext,
            "name": cut(items["name"].astype(str).to_numpy(dtype=object), NAME_WIDTH),
            "item_type": items["item_type"].to_numpy(dtype=object),
            **{c: cut(items[c].to_numpy(dtype=object), ATTRIBUTE_WIDTH) for c in ("category", "field", "type")},
            "created_at": np.where(np.isnat(released), item_first, np.minimum(released, item_first)),
            "views": pd.Series(item_ext, dtype=object).map(views).fillna(0).to_numpy(np.int64),
        }),
        interactions=inter,
    )
