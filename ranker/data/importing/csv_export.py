"""A platform's own export as CSV: interactions, items and optionally users."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ranker import config
from ranker.data.importing.dirty import BadValues
from ranker.data.importing.mapping import (
    IMPORT_ITEM_TYPE,
    IMPORT_ROLE,
    NO_FIELD,
    UNKNOWN,
    SourceData,
    users_frame,
)
from ranker.data.importing.records import (
    ImportDataError,
    Records,
    check_allowed,
    check_unique,
    linked_source,
    need_file,
    optional_choice,
    optional_text,
    optional_times,
    parse_ratings,
    parse_times,
    parse_tokens,
    read_lines,
)

CSV_INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
CSV_ITEM_COLUMNS = ("item_id",)
CSV_USER_COLUMNS = ("user_id",)


def _csv_table(path: Path, required: Sequence[str], optional: Sequence[str]) -> tuple[Records, dict[str, int]]:
    """Records and ``{column: index}`` of a UTF-8, comma-separated file with a header row."""
    need_file(path, "CSV file")
    text = "\n".join(read_lines(path, "utf-8"))
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ImportDataError(f"{path} line 1: the file is empty; expected a header with "
                              f"{', '.join(required)}") from None
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "'|'")):
            if len(header) == 1 and sep in header[0]:
                hint = f"; the header looks {name}-separated, but the file must be comma-separated"
        raise ImportDataError(f"{path} line 1: missing column(s) {', '.join(missing)}; found "
                              f"{', '.join(repr(h) for h in header)}{hint}. Columns: {', '.join(required)} "
                              f"and optionally {', '.join(optional)}")
    index = {h: j for j, h in enumerate(header) if h in (*required, *optional)}
    fields, numbers = [], []
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ImportDataError(f"{path} line {reader.line_num}: expected {len(header)} comma-separated "
                                  f"fields ({', '.join(header)}), found {len(row)}")
        fields.append(row)
        numbers.append(reader.line_num)
    return Records(path, np.array(numbers, dtype=np.int64), fields), index


def read_csv_export(interactions: str | Path, items: str | Path, users: str | Path | None = None) -> SourceData:
    """Read a platform's export as CSV (UTF-8, comma-separated, header row).

    - interactions: ``user_id, item_id, timestamp`` (unix seconds or ISO 8601), optional
      ``rating`` (finite) and ``kind`` (one of ``config.INTERACTION_KINDS``);
    - items: ``item_id``, optional ``name, category, field, type, created_at, item_type``;
    - users (optional): ``user_id``, optional ``category, field, created_at, role``.

    A bad ``created_at``, ``item_type`` or ``role`` is read as missing and listed in the
    data set's ``warnings``; bad ids, timestamps, ratings and kinds raise.

    Raises
    ------
    FileNotFoundError, ImportDataError
    """
    inter_path, item_path = Path(interactions), Path(items)
    ev, idx = _csv_table(inter_path, CSV_INTERACTION_COLUMNS, ("rating", "kind"))
    kinds = optional_text(ev, idx, "kind", "")
    check_allowed(ev, kinds, ("", *config.INTERACTION_KINDS), "kind")
    events = pd.DataFrame({
        "user": parse_tokens(ev, ev.column(idx["user_id"]), "user_id"),
        "item": parse_tokens(ev, ev.column(idx["item_id"]), "item_id"),
        "time": parse_times(ev, ev.column(idx["timestamp"])),
        "rating": (parse_ratings(ev, ev.column(idx["rating"]), optional=True) if "rating" in idx
                   else np.full(len(ev), np.nan)),
        "kind": kinds,
    })
    dirty = BadValues()
    item_frame = _csv_items(item_path, dirty)
    user_path = Path(users) if users is not None else None
    user_frame = _csv_users(user_path, dirty) if user_path is not None else None
    return linked_source("csv", "csv", ev, events, item_path, item_frame, user_path, user_frame, dirty=dirty)


def _created_at(rec: Records, idx: dict[str, int], dirty: BadValues) -> np.ndarray:
    if "created_at" not in idx:
        return np.full(len(rec), np.datetime64("NaT"), "datetime64[us]")
    return optional_times(rec, rec.column(idx["created_at"]), "created_at", dirty)


def _csv_items(path: Path, dirty: BadValues) -> pd.DataFrame:
    optional = ("name", "category", "field", "type", "created_at", "item_type")
    rec, idx = _csv_table(path, CSV_ITEM_COLUMNS, optional)
    ids = parse_tokens(rec, rec.column(idx["item_id"]), "item_id")
    check_unique(rec, ids, "item")
    item_type = optional_choice(rec, idx, "item_type", (IMPORT_ITEM_TYPE, *config.ITEM_TYPES), IMPORT_ITEM_TYPE,
                                dirty)
    names = optional_text(rec, idx, "name", None)
    return pd.DataFrame({
        "ext_id": ids,
        "name": np.array([n or f"csv:{i}" for n, i in zip(names, ids)], dtype=object),
        "category": optional_text(rec, idx, "category", UNKNOWN),
        "field": optional_text(rec, idx, "field", NO_FIELD),
        "type": optional_text(rec, idx, "type", UNKNOWN),
        "item_type": item_type,
        "released": _created_at(rec, idx, dirty),
    })


def _csv_users(path: Path, dirty: BadValues) -> pd.DataFrame:
    rec, idx = _csv_table(path, CSV_USER_COLUMNS, ("category", "field", "created_at", "role"))
    ids = parse_tokens(rec, rec.column(idx["user_id"]), "user_id")
    check_unique(rec, ids, "user")
    roles = optional_choice(rec, idx, "role", (IMPORT_ROLE, *config.ROLES), IMPORT_ROLE, dirty)
    return users_frame(ids, optional_text(rec, idx, "category", None), optional_text(rec, idx, "field", None),
                       roles, _created_at(rec, idx, dirty))
