"""Bad values in optional fields: read as missing, counted per field, with example lines.

Real files are dirty: RecBole's ``ml-100k.item`` has a ``release_year`` of ``unkonwn`` at
line 268. A value that cannot be read in an optional field (an attribute of an item or a
user, such as a release year, an age or a ``created_at``) does not stop an import. It is
read as missing, exactly as an empty cell would be, and the import summary counts it
per field with a few example lines. Ids and interaction values (user, item, timestamp,
rating, kind) stay strict: a bad one raises ``ImportDataError`` and nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Example lines kept per field.
EXAMPLES_PER_FIELD = 3
#: Longer bad values are cut to this many characters in the examples.
EXAMPLE_VALUE_WIDTH = 40


@dataclass
class FieldWarning:
    """The bad values of one optional field of one file, each read as missing.

    Attributes
    ----------
    file : str
    field : str
        The field's name in the file (``release_year``), or what it is (``release date``).
    count : int
        Bad values, over the whole file.
    examples : list of str
        The first :data:`EXAMPLES_PER_FIELD`, as ``file:line: field=value``.
    """

    file: str
    field: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def message(self) -> str:
        """One line for the operator: ``release_year: 1 bad value read as missing: ml-100k.item:268: ...``."""
        plural = "" if self.count == 1 else "s"
        lead = ": " if self.count == len(self.examples) else ", e.g. "
        return f"{self.field}: {self.count:,} bad value{plural} read as missing{lead}{'; '.join(self.examples)}"


class BadValues:
    """The bad optional values met while reading one data set, per file and field."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], FieldWarning] = {}

    def note(self, path: Path, lines: np.ndarray, field: str, values: Sequence[str]) -> None:
        """Count the bad ``values`` of ``field`` found at ``lines`` (1-based) of ``path``."""
        if not len(lines):
            return
        found = self._found.setdefault((str(path), field), FieldWarning(str(path), field))
        found.count += len(lines)
        room = EXAMPLES_PER_FIELD - len(found.examples)
        found.examples += [f"{path}:{int(n)}: {field}={_shown(str(v))}"
                           for n, v in zip(lines[:room], list(values)[:room])]

    @property
    def warnings(self) -> list[FieldWarning]:
        """One :class:`FieldWarning` per file and field, in the order first met."""
        return list(self._found.values())


def _shown(value: str) -> str:
    return value if len(value) <= EXAMPLE_VALUE_WIDTH else value[:EXAMPLE_VALUE_WIDTH - 1] + "…"
