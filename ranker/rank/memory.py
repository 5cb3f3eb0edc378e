"""Memory limits: the machine's RAM, this process's resident size, and sizes as operators write them.

Training estimates what it will need before it allocates and refuses with
:class:`MemoryLimitError` when the estimate exceeds the limit (``--max-memory``; by default
``DEFAULTS.max_memory_fraction`` of the RAM this process may use).
"""

from __future__ import annotations

import os
import re
import resource
import sys
from pathlib import Path

from ranker import config
from ranker.errors import RankerError

#: Suffixes ``--max-memory`` accepts, as powers of 1024 (``2G`` is 2 GiB).
UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
#: cgroup files that hold a container's memory limit (v2, then v1).
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


class MemoryLimitError(RankerError, ValueError):
    """The work would need more memory than it may use; the message says which flag to change."""


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional binary suffix, e.g. ``2G``, ``512M``, ``1.5GiB``, ``4096``.

    >>> parse_size("2G"), parse_size("512M"), parse_size("1000")
    (2147483648, 536870912, 1000)
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 2G, 512M or a number of bytes")
    size = int(float(match.group(1)) * 1024 ** UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return size


def format_size(n_bytes: float) -> str:
    """``3.1 GiB``, ``512 MiB``, ``12 KiB``: one decimal from GiB up."""
    for unit, power in (("TiB", 4), ("GiB", 3)):
        if n_bytes >= 1024 ** power:
            return f"{n_bytes / 1024 ** power:.1f} {unit}"
    for unit, power in (("MiB", 2), ("KiB", 1)):
        if n_bytes >= 1024 ** power:
            return f"{n_bytes / 1024 ** power:.0f} {unit}"
    return f"{n_bytes:.0f} B"


def machine_memory() -> int:
    """Bytes of RAM this process may use: the physical memory, or the container's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))  # "max" (v2) or a huge number (v1) means no limit
    return total


def default_limit() -> int:
    """The limit without ``--max-memory``: ``DEFAULTS.max_memory_fraction`` of :func:`machine_memory`."""
    return int(config.DEFAULTS.max_memory_fraction * machine_memory())


def current_rss() -> int:
    """Bytes this process holds in RAM now (its peak so far where /proc is missing)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


__all__ = ["MemoryLimitError", "parse_size", "format_size", "machine_memory", "default_limit", "current_rss"]
