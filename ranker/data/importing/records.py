"""Lines of a source file, split into fields and parsed column by column, with line numbers.

Every parser is vectorised over a column. The parsers of required values (ids, users,
items, timestamps, ratings) raise :class:`ImportDataError` naming the file and the line of
the first bad value. The ``optional_*`` parsers, for attributes of items and users, read a
bad value as missing and note it in a :class:`~ranker.data.importing.dirty.BadValues`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ranker.data.importing.dirty import BadValues
from ranker.data.importing.mapping import SourceData, users_from_events
from ranker.errors import RankerError

#: Interaction times must fall in [1970-01-01, 2100-01-01].
MAX_TIMESTAMP = datetime(2100, 1, 1)
_MAX_SECONDS = (MAX_TIMESTAMP - datetime(1970, 1, 1)).total_seconds()
#: Release dates and other optional times may be earlier than 1970, but not before this.
MIN_RELEASE = datetime(1000, 1, 1)
_MIN_RELEASE_SECONDS = (MIN_RELEASE - datetime(1970, 1, 1)).total_seconds()
MAX_DB_ID = 2**31 - 1


class ImportDataError(RankerError, ValueError):
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


def _check_range(rec: Records, seconds: np.ndarray, raw: pd.Series) -> None:
    negative = seconds < 0
    late = seconds > _MAX_SECONDS
    for mask, why in ((negative, "is before 1970 (negative)"),
                      (late, f"is after {MAX_TIMESTAMP:%Y-%m-%d}")):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            raise rec.error(row, f"timestamp {raw.iloc[row]!r} {why}; times must fall in "
                                 f"1970-01-01 .. {MAX_TIMESTAMP:%Y-%m-%d}")


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


def _seconds(raw: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds, empty, unreadable) of stripped cells holding unix seconds or ISO 8601 times
    (naive = UTC; offsets converted to UTC); seconds are NaN where empty or unreadable."""
    secs = np.array(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)  # a writable copy
    empty = (raw == "").to_numpy()
    text = np.isnan(secs) & ~empty
    if text.any():
        parsed = pd.to_datetime(raw[text], format="ISO8601", utc=True, errors="coerce")
        secs[text] = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    return secs, empty, np.isnan(secs) & ~empty


def parse_times(rec: Records, values: pd.Series) -> np.ndarray:
    """Required times, as unix seconds or ISO 8601 (naive = UTC; offsets converted to UTC), as datetime64[us]."""
    raw = values.astype(str).str.strip()
    secs, empty, unreadable = _seconds(raw)
    if unreadable.any():
        row = int(np.flatnonzero(unreadable)[0])
        raise rec.error(row, f"timestamp {raw.iloc[row]!r} is neither unix seconds nor an ISO 8601 "
                             "time (e.g. 2024-05-01T12:00:00Z)")
    if empty.any():
        raise rec.error(int(np.flatnonzero(empty)[0]), "timestamp is empty")
    bad = ~np.isfinite(secs)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise rec.error(row, f"timestamp {raw.iloc[row]!r} is not a finite time")
    _check_range(rec, secs, raw)
    return _seconds_to_times(secs)


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


# --- Optional values: a bad one is read as missing, and noted ---------------------------------


def read_as_missing(rec: Records, values: np.ndarray, bad: np.ndarray, missing: object, field: str,
                    raw: pd.Series, dirty: BadValues) -> np.ndarray:
    """``values`` with the ``bad`` rows set to ``missing``, each noted in ``dirty`` with its
    line and ``raw`` text. Every optional parser ends here: the one policy for bad optional values."""
    if not bad.any():
        return values
    rows = np.flatnonzero(bad)
    dirty.note(rec.path, rec.line_no[rows], field, raw.iloc[rows].tolist())
    out = values.copy()
    out[bad] = missing
    return out


def optional_numbers(rec: Records, values: pd.Series, field: str, dirty: BadValues,
                     valid: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Floats of an optional column; NaN where empty (or ``nan``), and where bad: not a finite
    number, or a number that ``valid`` (elementwise, over finite floats) rejects."""
    raw = values.astype(str).str.strip()
    out = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    given = ~raw.str.lower().isin(["", "nan"]).to_numpy()
    finite = np.isfinite(out)
    bad = given & ~finite
    if valid is not None:
        bad[finite] |= ~valid(out[finite])
    return read_as_missing(rec, out, bad, np.nan, field, raw, dirty)


def optional_values(rec: Records, values: pd.Series, field: str, parse: Callable[[str], object],
                    missing: object, dirty: BadValues, dtype: object = object) -> np.ndarray:
    """``parse`` of each non-empty cell of an optional column (stripped); ``missing`` where empty,
    and where ``parse`` raises ``ValueError``, ``KeyError`` or ``IndexError``."""
    raw = values.astype(str).str.strip()
    out = np.full(len(raw), missing, dtype=dtype)
    bad = np.zeros(len(raw), dtype=bool)
    for row, text in enumerate(raw):
        if text:
            try:
                out[row] = parse(text)
            except (ValueError, KeyError, IndexError):
                bad[row] = True
    return read_as_missing(rec, out, bad, missing, field, raw, dirty)


def optional_times(rec: Records, values: pd.Series, field: str, dirty: BadValues) -> np.ndarray:
    """Times of an optional column (unix seconds or ISO 8601, as :func:`parse_times`) as
    datetime64[us]; NaT where empty, and where unreadable or outside ``MIN_RELEASE .. MAX_TIMESTAMP``."""
    raw = values.astype(str).str.strip()
    secs, empty, _ = _seconds(raw)
    in_range = (secs >= _MIN_RELEASE_SECONDS) & (secs <= _MAX_SECONDS)  # False for NaN
    bad = ~empty & ~in_range
    out = _seconds_to_times(np.where(empty | bad, 0.0, secs))
    out[empty] = np.datetime64("NaT")
    return read_as_missing(rec, out, bad, np.datetime64("NaT"), field, raw, dirty)


def optional_choice(rec: Records, index: dict[str, int], field: str, allowed: tuple[str, ...], default: str,
                    dirty: BadValues) -> np.ndarray:
    """An optional column whose values must be one of ``allowed``; ``default`` where absent, empty or not allowed."""
    if field not in index:
        return np.full(len(rec), default, dtype=object)
    raw = rec.column(index[field]).str.strip()
    values = raw.where(raw != "", default).to_numpy(dtype=object)
    return read_as_missing(rec, values, ~np.isin(values, allowed), default, field, raw, dirty)


def linked_source(source: str, prefix: str, ev: Records, events: pd.DataFrame, item_path: Path,
                  items: pd.DataFrame, user_path: Path | None = None, users: pd.DataFrame | None = None,
                  id_names: tuple[str, str] = ("user_id", "item_id"),
                  dirty: BadValues | None = None) -> SourceData:
    """The data set read from the events file ``ev`` and its items (and users) file.

    Every event's item must be in ``items``; with a users file, every event's user must
    be in ``users`` too. Without one, the users are those of the events. ``id_names``
    names the user and item id columns in error messages. ``dirty`` holds the bad optional
    values met while reading; they become the data set's warnings.

    Raises
    ------
    ImportDataError
        An event names an item (or user) that its file does not list.
    """
    user_id, item_id = id_names
    check_known(ev, events["item"].to_numpy(), items["ext_id"].to_numpy(), item_id, item_path)
    files = [str(ev.path), str(item_path)]
    warnings = dirty.warnings if dirty is not None else []
    if users is None or user_path is None:
        return SourceData(source, prefix, users_from_events(events), items, events, files, warnings)
    check_known(ev, events["user"].to_numpy(), users["ext_id"].to_numpy(), user_id, user_path)
    return SourceData(source, prefix, users, items, events, [*files, str(user_path)], warnings)
