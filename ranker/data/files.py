"""Files written so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: A temporary file untouched this long was left by a writer that died; the next write of its
#: target removes it. A live writer touches its file far more often than this.
STALE_TEMP_SECONDS = 3600.0


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and ``os.replace``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


@contextmanager
def atomic_open(path: Path, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """A file written under a temporary name beside ``path`` (``.<name>.<random>.tmp``) and
    renamed to ``path``, fsynced, when the block ends without an exception; deleted when it raises.
    ``mode`` is ``"w"`` (text) or ``"wb"``.

    A reader of ``path`` sees the previous file or the whole new one, never a part. A process that
    dies inside the block leaves only the temporary file, which no reader looks for and the next
    write of ``path`` removes once it is stale (:func:`sweep_stale_temps`).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    sweep_stale_temps(path)


def sweep_stale_temps(path: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the temporary files of ``path`` (``.<name>.*``) that crashed writers left behind:
    those not modified for ``older_than`` seconds. Returns what was removed."""
    path = Path(path)
    cutoff = time.time() - older_than
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another writer renamed or removed it meanwhile
            continue
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
