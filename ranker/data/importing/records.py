"""Lines of a source file, split into fields and parsed column by column, with line numbers.

Every parser is vectorised over a column and raises :class:`ImportDataError` naming the
file and the line of the first bad value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data.importing.mapping import SourceData, users_from_events

#: Interaction times must fall in [1970-01-01, 2100-01-01].
MAX_TIMESTAMP = datetime(2100, 1, 1)
_MAX_SECONDS = (MAX_TIMESTAMP - datetime(1970, 1, 1)).total_seconds()
MAX_DB_ID = 2**31 - 1


class ImportDataError(ValueError):
    """Input that cannot be imported; the message names the file and the line."""


@dataclass
class Records:
    """The non-blank lines of one file, split into fields, with their line numbers."""

    path: Path
    line_no: np.ndarray  # (n,) 1-based line of each record
    fields: list[list[str]]

    def __len__(self) -> int:
        return len(self.fields)

    def column(self, j: int) -> pd.Series:
        return pd.Series([f[j] for f in self.fields], dtype=object)

    def error(self, row: int, message: str) -> ImportDataError:
        return ImportDataError(f"{self.path} line {int(self.line_no[row])}: {message}")


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    return path


def read_lines(path: Path, encoding: str) -> list[str]:
    """Decoded lines of ``path`` without line ends; a bad byte raises with its line number."""
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ImportDataError(
            f"{path} line {line}: byte(s) {raw[exc.start:exc.end]!r} are not valid {encoding}; "
            f"save the file as {encoding.upper()}"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


SEPARATOR_NAMES = {"\t": "tab", "|": "'|'", "::": "'::'", ",": "comma", ";": "semicolon"}


def split_fields(path: Path, lines: Sequence[str], sep: str, n_fields: int, what: str,
           first_line: int = 1) -> Records:
    """Split every non-blank line on ``sep``; each must have exactly ``n_fields`` fields."""
    fields, numbers = [], []
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != n_fields:
            hint = next((f"; it looks {name}-separated" for s, name in SEPARATOR_NAMES.items()
                         if s != sep and s not in sep and line.count(s) >= max(n_fields - 1, 1)), "")
            raise ImportDataError(
                f"{path} line {number}: expected {n_fields} {SEPARATOR_NAMES.get(sep, repr(sep))}-"
                f"separated fields ({what}), found {len(parts)}{hint}"
            )
        fields.append(parts)
        numbers.append(number)
    return Records(path, np.array(numbers, dtype=np.int64), fields)


def parse_numbers(rec: Records, values: pd.Series, name: str, allow_empty: bool = False) -> np.ndarray:
    """Floats of ``values`` (row-aligned with ``rec``); NaN for empty cells when ``allow_empty``."""
    raw = values.astype(str).str.strip()
    out = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    ok = raw.str.lower().isin(["nan"]).to_numpy()
    if allow_empty:
        ok = ok | (raw == "").to_numpy()
    bad = np.isnan(out) & ~ok
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise rec.error(row, f"{name} {raw.iloc[row]!r} is not a number")
    return out


def parse_int_ids(rec: Records, j: int, name: str) -> np.ndarray:
    """Positive integer ids of column ``j``, as canonical strings."""
    raw = rec.column(j).str.strip()
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals) | (vals < 1) | (vals > MAX_DB_ID) | (vals != np.floor(vals))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise rec.error(row, f"{name} {raw.iloc[row]!r} is not a positive integer id")
    return vals.astype(np.int64).astype(str).astype(object)


def parse_tokens(rec: Records, values: pd.Series, name: str) -> np.ndarray:
    """Non-empty external id tokens."""
    raw = values.astype(str).str.strip()
    empty = (raw == "").to_numpy()
    if empty.any():
        raise rec.error(int(np.flatnonzero(empty)[0]), f"{name} is empty")
    return raw.to_numpy(dtype=object)


def parse_ratings(rec: Records, values: pd.Series, lo: float | None = None, hi: float | None = None,
             optional: bool = False) -> np.ndarray:
    """Ratings; NaN for empty cells when ``optional``. Must be finite (and in [lo, hi])."""
    raw = values.astype(str).str.strip()
    out = parse_numbers(rec, raw, "rating", allow_empty=optional)
    check = (raw != "").to_numpy() if optional else np.ones(len(raw), dtype=bool)
    bad = check & ~np.isfinite(out)
    if lo is not None:
        bad |= check & np.isfinite(out) & ((out < lo) | (out > hi))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        span = f" in [{lo:g}, {hi:g}]" if lo is not None else " finite numbers"
        raise rec.error(row, f"rating {raw.iloc[row]!r} is out of range: ratings must be{span}")
    return out


def _check_range(rec: Records, seconds: np.ndarray, raw: pd.Series, before_1970: bool = False) -> None:
    negative = (seconds < 0) & (not before_1970)
    late = seconds > _MAX_SECONDS
    for mask, why in ((negative, "is before 1970 (negative)"),
                      (late, f"is after {MAX_TIMESTAMP:%Y-%m-%d}")):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            raise rec.error(row, f"timestamp {raw.iloc[row]!r} {why}; times must fall in "
                                 f"{'' if before_1970 else '1970-01-01 '}.. {MAX_TIMESTAMP:%Y-%m-%d}")


def _seconds_to_times(seconds: np.ndarray) -> np.ndarray:
    return np.round(seconds * 1e6).astype(np.int64).astype("datetime64[us]")


def parse_unix_times(rec: Records, values: pd.Series) -> np.ndarray:
    """Unix-second timestamps (int or float) as datetime64[us]."""
    raw = values.astype(str).str.strip()
    secs = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(secs)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise rec.error(row, f"timestamp {raw.iloc[row]!r} is not a number of seconds since 1970")
    _check_range(rec, secs, raw)
    return _seconds_to_times(secs)


def parse_times(rec: Records, values: pd.Series, optional: bool = False,
                    before_1970: bool = False) -> np.ndarray:
    """Unix seconds or ISO 8601 (naive = UTC; offsets converted to UTC) as datetime64[us].

    ``optional``: empty cells give NaT; ``before_1970``: allow earlier times (release dates).
    """
    raw = values.astype(str).str.strip()
    secs = np.array(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)  # a writable copy
    empty = (raw == "").to_numpy()
    text = np.isnan(secs) & ~empty
    if text.any():
        parsed = pd.to_datetime(raw[text], format="ISO8601", utc=True, errors="coerce")
        as_secs = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
        unparsed = np.isnan(as_secs)
        if unparsed.any():
            row = int(np.flatnonzero(text)[np.flatnonzero(unparsed)[0]])
            raise rec.error(row, f"timestamp {raw.iloc[row]!r} is neither unix seconds nor an ISO 8601 "
                                 "time (e.g. 2024-05-01T12:00:00Z)")
        secs[text] = as_secs
    if empty.any() and not optional:
        raise rec.error(int(np.flatnonzero(empty)[0]), "timestamp is empty")
    bad = ~np.isfinite(secs) & ~empty
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise rec.error(row, f"timestamp {raw.iloc[row]!r} is not a finite time")
    filled = np.where(empty, 0.0, secs)
    _check_range(rec, filled, raw, before_1970)
    out = _seconds_to_times(filled)
    out[empty] = np.datetime64("NaT")
    return out


def check_unique(rec: Records, ids: np.ndarray, what: str) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise rec.error(row, f"duplicate {what} id {ids[row]!r} (first at line {rec.line_no[first]})")


def check_known(rec: Records, ids: np.ndarray, known: np.ndarray, what: str, where: Path) -> None:
    missing = ~pd.Series(ids, dtype=object).isin(known).to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise rec.error(row, f"{what} {ids[row]!r} is not in {where}")


def check_allowed(rec: Records, values: np.ndarray, allowed: tuple[str, ...], what: str) -> None:
    """Every value is one of ``allowed`` (an empty string, when allowed, means "not given")."""
    bad = ~np.isin(values, allowed)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise rec.error(row, f"{what} {values[row]!r} is not one of {', '.join(a for a in allowed if a)}")


def optional_text(rec: Records, index: dict[str, int], name: str, default: str | None) -> np.ndarray:
    if name not in index:
        return np.full(len(rec), default, dtype=object)
    raw = rec.column(index[name]).str.strip()
    return raw.where(raw != "", default).to_numpy(dtype=object)


def linked_source(source: str, prefix: str, ev: Records, events: pd.DataFrame, item_path: Path,
                  items: pd.DataFrame, user_path: Path | None = None, users: pd.DataFrame | None = None,
                  id_names: tuple[str, str] = ("user_id", "item_id")) -> SourceData:
    """The data set read from the events file ``ev`` and its items (and users) file.

    Every event's item must be in ``items``; with a users file, every event's user must
    be in ``users`` too. Without one, the users are those of the events. ``id_names``
    names the user and item id columns in error messages.

    Raises
    ------
    ImportDataError
        An event names an item (or user) that its file does not list.
    """
    user_id, item_id = id_names
    check_known(ev, events["item"].to_numpy(), items["ext_id"].to_numpy(), item_id, item_path)
    files = [str(ev.path), str(item_path)]
    if users is None or user_path is None:
        return SourceData(source, prefix, users_from_events(events), items, events, files)
    check_known(ev, events["user"].to_numpy(), users["ext_id"].to_numpy(), user_id, user_path)
    return SourceData(source, prefix, users, items, events, [*files, str(user_path)])
