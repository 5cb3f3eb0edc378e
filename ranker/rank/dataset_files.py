"""The training and validation CSVs under ``data/``: where they are, a first look at one, and the
held-out data that offline checks score on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ranker import config
from ranker.rank.features import feature_columns
from ranker.rank.train import DataError, Dataset, load_dataset

#: Rows read for a preview (seconds for the table and label balance, however big the file).
PREVIEW_ROWS = 200_000
#: Rows sampled from those for feature histograms (the browser gets every value plotted).
SAMPLE_ROWS = 20_000
HEAD_ROWS = 20


def train_csv() -> Path:
    """Where ``ranker dataset`` and the dashboard write training rows (under ``config.DATA_DIR`` now)."""
    return Path(config.DATA_DIR) / "ranker_train.csv"


def val_csv() -> Path:
    """Where the held-out validation rows go, next to :func:`train_csv`."""
    return Path(config.DATA_DIR) / "ranker_val.csv"


@dataclass(frozen=True)
class DatasetPreview:
    """The first :data:`PREVIEW_ROWS` rows of a training CSV, summarised."""

    path: Path
    size_bytes: int
    rows: int  # rows read
    complete: bool  # False when the file has more rows than were read
    positives: int  # rows labelled 1 among those read (0 without a label column)
    missing: list[str]  # required columns (features, label) the file lacks; training on it would fail
    head: pd.DataFrame  # the first HEAD_ROWS rows
    sample: pd.DataFrame  # up to SAMPLE_ROWS rows drawn at random (seed 0), for histograms

    @property
    def positive_share(self) -> float:
        return self.positives / self.rows if self.rows else float("nan")


def preview_dataset(path: str | Path, rows: int = PREVIEW_ROWS, sample: int = SAMPLE_ROWS) -> DatasetPreview | None:
    """A first look at the CSV at ``path`` without reading more than ``rows`` rows; None when there is
    no file."""
    path = Path(path)
    if not path.exists():
        return None
    df = pd.read_csv(path, nrows=rows + 1)
    complete = len(df) <= rows
    df = df.iloc[:rows]
    missing = [c for c in (*feature_columns(), "label") if c not in df.columns]
    positives = int((df["label"] == 1).sum()) if "label" in df.columns else 0
    return DatasetPreview(path, path.stat().st_size, len(df), complete, positives, missing,
                          df.head(HEAD_ROWS), df.sample(min(len(df), sample), random_state=0))


@dataclass(frozen=True)
class HeldOut:
    """Rows to score offline, the file they came from and how many lists (groups) they hold."""

    data: Dataset
    path: Path
    lists: int


def load_held_out(paths: list[Path] | None = None) -> HeldOut | None:
    """The first readable file of ``paths`` (default: the validation CSV, else the training CSV);
    None when none exists or none is a valid dataset."""
    for path in paths if paths is not None else [val_csv(), train_csv()]:
        if not path.exists():
            continue
        try:
            data = load_dataset(path, min_positives=1)
        except DataError:
            continue
        return HeldOut(data, path, len(set(data.groups.tolist())))
    return None
