"""RecBole atomic files: ``<name>.inter``, ``<name>.item`` and optionally ``<name>.user``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data.importing.dirty import BadValues
from ranker.data.importing.mapping import (
    SourceData,
    age_band,
    items_frame,
    users_frame,
    year_starts,
)
from ranker.data.importing.records import (
    MAX_TIMESTAMP,
    MIN_RELEASE,
    ImportDataError,
    Records,
    check_unique,
    linked_source,
    need_file,
    optional_numbers,
    optional_text,
    parse_ratings,
    parse_tokens,
    parse_unix_times,
    read_lines,
    split_fields,
)

#: RecBole field names read for items (first present wins).
RECBOLE_TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
RECBOLE_GENRE_FIELDS = ("class", "genre", "genres", "categories", "category")
RECBOLE_YEAR_FIELDS = ("release_year", "year")
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_files(path: Path, name: str | None) -> tuple[Path, Path, Path]:
    if path.is_file():
        folder, stem = path.parent, name or path.stem
    elif path.is_dir():
        folder = path
        if name is None:
            found = sorted(path.glob("*.inter"))
            if not found:
                raise FileNotFoundError(f"{path}: no <name>.inter file here (RecBole atomic files)")
            if len(found) > 1:
                raise ValueError(f"{path} holds several .inter files ({', '.join(f.name for f in found)}); "
                                 "pick one with --name")
            stem = found[0].stem
        else:
            stem = name
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    inter = need_file(folder / f"{stem}.inter", "RecBole interactions")
    item = need_file(folder / f"{stem}.item", "RecBole item features, needed next to the .inter file")
    return inter, item, folder / f"{stem}.user"


def _recbole_table(path: Path, required: Sequence[str]) -> tuple[Records, dict[str, tuple[int, str]]]:
    """Records and ``{field name: (column, type)}`` of a RecBole atomic file (UTF-8, tab, typed header)."""
    lines = read_lines(path, "utf-8")
    if not lines:
        raise ImportDataError(f"{path} line 1: the file is empty; expected a header like "
                              "user_id:token\\titem_id:token\\trating:float\\ttimestamp:float")
    header = lines[0].split("\t")
    columns: dict[str, tuple[int, str]] = {}
    for j, spec in enumerate(header):
        name, _, kind = spec.strip().rpartition(":")
        if not name or kind not in RECBOLE_TYPES:
            hint = " (is the file tab-separated?)" if len(header) == 1 else ""
            raise ImportDataError(f"{path} line 1: header field {spec.strip()!r} is not name:type with type "
                                  f"one of {', '.join(RECBOLE_TYPES)}{hint}")
        columns[name] = (j, kind)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ImportDataError(f"{path} line 1: missing field(s) {', '.join(missing)}; found "
                              f"{', '.join(columns) or 'none'}")
    rec = split_fields(path, lines[1:], "\t", len(header), ", ".join(header), first_line=2)
    return rec, columns


def _first_field(columns: dict[str, tuple[int, str]], names: Sequence[str]) -> tuple[int, str] | None:
    return next((columns[n] for n in names if n in columns), None)


def read_recbole(path: str | Path, name: str | None = None) -> SourceData:
    """Read RecBole atomic files ``<name>.inter``, ``<name>.item`` and optionally ``<name>.user``.

    ``path`` is their folder (with one ``.inter`` file, or pick it with ``name``) or the
    ``.inter`` file. Fields read (others are ignored):

    - ``.inter``: ``user_id``, ``item_id``, ``timestamp`` (unix seconds), optional ``rating``;
    - ``.item``: ``item_id``; a title (``movie_title``, ``title``, ``item_name`` or ``name``);
      genres (``class``, ``genre``, ``genres``, ``categories`` or ``category``: a token_seq's
      first token is the category, the second the field); a year (``release_year`` or ``year``);
    - ``.user``: ``user_id``; ``age`` (age band) or else ``gender`` as category; ``occupation`` as field.

    A bad year or age is read as missing and listed in the data set's ``warnings``; bad
    ids, timestamps and ratings raise.

    Raises
    ------
    FileNotFoundError, ImportDataError
    """
    inter_path, item_path, user_path = _recbole_files(Path(path), name)
    ev, cols = _recbole_table(inter_path, ("user_id", "item_id", "timestamp"))
    rating_col = cols.get("rating")
    events = pd.DataFrame({
        "user": parse_tokens(ev, ev.column(cols["user_id"][0]), "user_id"),
        "item": parse_tokens(ev, ev.column(cols["item_id"][0]), "item_id"),
        "time": parse_unix_times(ev, ev.column(cols["timestamp"][0])),
        "rating": (parse_ratings(ev, ev.column(rating_col[0])) if rating_col else np.full(len(ev), np.nan)),
        "kind": "",
    })
    dirty = BadValues()
    items = _recbole_items(item_path, dirty)
    users = _recbole_users(user_path, dirty) if user_path.is_file() else None
    return linked_source("recbole", "rb", ev, events, item_path, items, user_path, users, dirty=dirty)


def _is_year(years: np.ndarray) -> np.ndarray:
    return (years >= MIN_RELEASE.year) & (years <= MAX_TIMESTAMP.year) & (years == np.floor(years))


def _recbole_items(path: Path, dirty: BadValues) -> pd.DataFrame:
    rec, cols = _recbole_table(path, ("item_id",))
    ids = parse_tokens(rec, rec.column(cols["item_id"][0]), "item_id")
    check_unique(rec, ids, "item")
    title = _first_field(cols, RECBOLE_TITLE_FIELDS)
    titles = (rec.column(title[0]).str.strip().to_numpy(dtype=object) if title
              else np.array([""] * len(rec), dtype=object))
    genre = _first_field(cols, RECBOLE_GENRE_FIELDS)
    genres = [f[genre[0]].split() if genre[1] == "token_seq" else [f[genre[0]].strip()]
              for f in rec.fields] if genre else [[] for _ in rec.fields]
    year = next((n for n in RECBOLE_YEAR_FIELDS if n in cols), None)
    years = (optional_numbers(rec, rec.column(cols[year][0]), year, dirty, valid=_is_year) if year
             else np.full(len(rec), np.nan))
    names = np.array([t or f"rb:{i}" for t, i in zip(titles, ids)], dtype=object)
    return items_frame(ids, names, genres, years, year_starts(years))


def _recbole_users(path: Path, dirty: BadValues) -> pd.DataFrame:
    rec, cols = _recbole_table(path, ("user_id",))
    ids = parse_tokens(rec, rec.column(cols["user_id"][0]), "user_id")
    check_unique(rec, ids, "user")
    category = None
    if "age" in cols:
        ages = optional_numbers(rec, rec.column(cols["age"][0]), "age", dirty, valid=lambda a: a >= 0)
        category = np.array([age_band(a) for a in ages], dtype=object)
    elif "gender" in cols:
        category = optional_text(rec, {"gender": cols["gender"][0]}, "gender", None)
    occupation = None
    if "occupation" in cols:
        occupation = optional_text(rec, {"occupation": cols["occupation"][0]},
                                    "occupation", None)
    return users_frame(ids, category, occupation)
