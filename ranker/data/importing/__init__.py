"""Import real data sets into the database (R-IMPORT): MovieLens, RecBole atomic files, CSV.

Readers turn files into a :class:`SourceData` (users, items and rating-level events
under their external ids), checking every value. A bad id, user, item, timestamp or
rating raises, naming the file and the line; a bad optional value (an attribute of an
item or a user) is read as missing and counted in the data set's ``warnings``.
:func:`plan_rows` maps it to rows without any I/O, and :func:`write_import` writes them
in one transaction, so the database gets all of the data or none of it.
``docs/importing.md`` describes the mapping::

    summary = import_movielens(engine, "ml-100k/")           # read + write
    data = read_movielens("ml-100k/"); rows = plan_rows(data)  # inspect first
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ranker.data.importing.csv_export import read_csv_export
from ranker.data.importing.dirty import FieldWarning
from ranker.data.importing.mapping import (
    DEFAULT_POSITIVE_MIN,
    IMPORT_ITEM_TYPE,
    IMPORT_ROLE,
    ImportRows,
    SourceData,
    age_band,
    decade,
    expand_events,
    genre_attributes,
    plan_rows,
    title_year,
)
from ranker.data.importing.movielens import ML100K_GENRES, detect_movielens, read_movielens
from ranker.data.importing.recbole import read_recbole
from ranker.data.importing.records import ImportDataError
from ranker.data.importing.writer import ImportSummary, write_import


def import_movielens(engine: Engine, path: str | Path, **write: Any) -> ImportSummary:
    """Read ml-100k or ml-1m from the folder ``path`` and write it (``write``: see :func:`write_import`)."""
    return write_import(engine, read_movielens(path), **write)


def import_recbole(engine: Engine, path: str | Path, name: str | None = None, **write: Any) -> ImportSummary:
    """Read RecBole atomic files (a folder or a ``.inter`` file) and write them (see :func:`write_import`)."""
    return write_import(engine, read_recbole(path, name), **write)


def import_csv(engine: Engine, interactions: str | Path, items: str | Path, users: str | Path | None = None,
               **write: Any) -> ImportSummary:
    """Read a CSV export and write it (see :func:`write_import`)."""
    return write_import(engine, read_csv_export(interactions, items, users), **write)


__all__ = [
    "DEFAULT_POSITIVE_MIN",
    "FieldWarning",
    "IMPORT_ITEM_TYPE",
    "IMPORT_ROLE",
    "ML100K_GENRES",
    "ImportDataError",
    "ImportRows",
    "ImportSummary",
    "SourceData",
    "age_band",
    "decade",
    "detect_movielens",
    "expand_events",
    "genre_attributes",
    "import_csv",
    "import_movielens",
    "import_recbole",
    "plan_rows",
    "read_csv_export",
    "read_movielens",
    "read_recbole",
    "title_year",
    "write_import",
]
