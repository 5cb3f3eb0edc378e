"""GroupLens MovieLens: ml-100k (``u.data``, ``u.item``, ``u.user``) and ml-1m (``*.dat``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data.importing.dirty import BadValues
from ranker.data.importing.mapping import (
    SourceData,
    age_band,
    items_frame,
    title_year,
    users_frame,
    year_starts,
)
from ranker.data.importing.records import (
    MAX_TIMESTAMP,
    MIN_RELEASE,
    check_unique,
    linked_source,
    need_file,
    optional_numbers,
    optional_values,
    parse_int_ids,
    parse_ratings,
    parse_unix_times,
    read_as_missing,
    read_lines,
    split_fields,
)

#: MovieLens ratings are whole stars in this range.
MOVIELENS_RATING_RANGE = (1.0, 5.0)
#: ml-100k's 19 genre flags, in file order (``u.genre``).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: ml-1m ``users.dat`` occupation codes (its README).
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


def detect_movielens(path: str | Path) -> str:
    """``"ml-100k"`` or ``"ml-1m"`` from the files in ``path`` (a folder, or a file in it).

    Raises
    ------
    FileNotFoundError
        Neither ``u.data`` nor ``ratings.dat`` is there.
    """
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; download ml-100k or ml-1m from "
                                "https://grouplens.org/datasets/movielens/ and unzip it")
    if (folder / "u.data").is_file():
        return "ml-100k"
    if (folder / "ratings.dat").is_file():
        return "ml-1m"
    raise FileNotFoundError(f"{folder}: neither u.data (ml-100k) nor ratings.dat (ml-1m) is here; "
                            "point to the unzipped MovieLens folder")


def read_movielens(path: str | Path) -> SourceData:
    """Read ml-100k (``u.data``, ``u.item``, optional ``u.user``) or ml-1m (``ratings.dat``,
    ``movies.dat``, optional ``users.dat``) from a folder.

    A bad release date, genre flag, age or occupation code is read as missing and listed
    in the data set's ``warnings``; bad ids, ratings and timestamps raise.

    Raises
    ------
    FileNotFoundError
        A required file is missing.
    ImportDataError
        Bad content, naming the file and line.
    """
    variant = detect_movielens(path)
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    layout = _LAYOUTS[variant]
    ratings, users = folder / layout.ratings, folder / layout.users
    items = need_file(folder / layout.items, f"{variant} movies, needed next to {layout.ratings}")
    ev = split_fields(ratings, read_lines(ratings, "latin-1"), layout.ratings_sep, 4, layout.ratings_header)
    dirty = BadValues()
    it = layout.read_items(items, dirty)
    us = layout.read_users(users, dirty) if users.is_file() else None
    events = pd.DataFrame({
        "user": parse_int_ids(ev, 0, "user id"),
        "item": parse_int_ids(ev, 1, "item id"),
        "time": parse_unix_times(ev, ev.column(3)),
        "rating": parse_ratings(ev, ev.column(2), *MOVIELENS_RATING_RANGE),
        "kind": "",
    })
    return linked_source(variant, "ml", ev, events, items, it, users, us, id_names=("user id", "item id"),
                         dirty=dirty)


def _release_date(text: str) -> np.datetime64:
    """``01-Jan-1995`` (ml-100k) as datetime64[us]; raises ValueError or KeyError otherwise."""
    day, month, year = text.split("-")
    date = datetime(int(year), _MONTHS[month.lower()], int(day))
    if not MIN_RELEASE <= date <= MAX_TIMESTAMP:
        raise ValueError(f"{text} is not in {MIN_RELEASE:%Y} .. {MAX_TIMESTAMP:%Y}")
    return np.datetime64(date, "us")


def _ml100k_items(path: Path, dirty: BadValues) -> pd.DataFrame:
    rec = split_fields(path, read_lines(path, "latin-1"), "|", 5 + len(ML100K_GENRES),
                 "id|title|release date|video release|IMDb URL|19 genre flags")
    ids = parse_int_ids(rec, 0, "item id")
    check_unique(rec, ids, "item")
    titles = rec.column(1).str.strip()
    released = optional_values(rec, rec.column(2), "release date", _release_date, np.datetime64("NaT"), dirty,
                               dtype="datetime64[us]")
    on = np.zeros((len(rec), len(ML100K_GENRES)), dtype=bool)
    for col, genre in enumerate(ML100K_GENRES):
        raw = rec.column(5 + col).str.strip()
        on[:, col] = read_as_missing(rec, (raw == "1").to_numpy(), ~raw.isin(["0", "1", ""]).to_numpy(), False,
                                     f"genre flag {genre}", raw, dirty)
    genres = [[g for g, f in zip(ML100K_GENRES, row) if f] for row in on]
    years = np.where(np.isnat(released), [title_year(t) for t in titles],
                     released.astype("datetime64[Y]").astype(np.int64) + 1970)
    return items_frame(ids, titles.to_numpy(dtype=object), genres, years, released)


def _ml1m_items(path: Path, dirty: BadValues) -> pd.DataFrame:
    rec = split_fields(path, read_lines(path, "latin-1"), "::", 3, "MovieID::Title (Year)::Genre1|Genre2")
    ids = parse_int_ids(rec, 0, "movie id")
    check_unique(rec, ids, "movie")
    titles = rec.column(1).str.strip().to_numpy(dtype=object)
    genres = [[g for g in f[2].strip().split("|") if g] for f in rec.fields]
    years = np.array([title_year(t) for t in titles])
    return items_frame(ids, titles, genres, years, year_starts(years))


def _ml_users(path: Path, dirty: BadValues, sep: str, ml1m: bool) -> pd.DataFrame:
    what = "UserID::Gender::Age::Occupation::Zip-code" if ml1m else "user id|age|gender|occupation|zip code"
    rec = split_fields(path, read_lines(path, "latin-1"), sep, 5, what)
    ids = parse_int_ids(rec, 0, "user id")
    check_unique(rec, ids, "user")
    age_col, occ_col = (2, 3) if ml1m else (1, 3)
    ages = optional_numbers(rec, rec.column(age_col), "age", dirty, valid=lambda a: a >= 0)
    occupation = rec.column(occ_col).str.strip()
    occupation = occupation.where(occupation != "", None).to_numpy(dtype=object)
    if ml1m:
        codes = optional_numbers(rec, rec.column(occ_col), "occupation code", dirty, valid=_is_occupation_code)
        occupation = np.array([ML1M_OCCUPATIONS[int(c)] if np.isfinite(c) else None for c in codes], dtype=object)
    return users_frame(ids, np.array([age_band(a) for a in ages], dtype=object), occupation)


def _is_occupation_code(codes: np.ndarray) -> np.ndarray:
    return (codes >= 0) & (codes < len(ML1M_OCCUPATIONS)) & (codes == np.floor(codes))


@dataclass(frozen=True)
class _Layout:
    """The files of one MovieLens variant, in its folder, and how they are separated."""

    ratings: str
    ratings_sep: str
    ratings_header: str  # the fields of a ratings line, for error messages
    items: str
    read_items: Callable[[Path, BadValues], pd.DataFrame]
    users: str
    read_users: Callable[[Path, BadValues], pd.DataFrame]


_LAYOUTS = {
    "ml-100k": _Layout("u.data", "\t", "user id, item id, rating, timestamp", "u.item", _ml100k_items,
                       "u.user", partial(_ml_users, sep="|", ml1m=False)),
    "ml-1m": _Layout("ratings.dat", "::", "UserID::MovieID::Rating::Timestamp", "movies.dat", _ml1m_items,
                     "users.dat", partial(_ml_users, sep="::", ml1m=True)),
}
