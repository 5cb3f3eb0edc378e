"""The training and validation files under ``data/`` (CSV, or Parquet folders partitioned by day):
where they are, a first look at one, and the held-out data that offline checks score on."""

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


#: The dashboard's dataset formats and the suffix of their files under ``data/``.
SUFFIXES = {"csv": ".csv", "parquet": ".parquet"}


def train_path(fmt: str | None = None) -> Path:
    """The training data under ``data/`` in ``fmt`` (``csv`` or ``parquet``); with no ``fmt``, the one
    built last (the newer of the two), else the CSV's path."""
    if fmt is None:
        built = [p for p in (train_csv().with_suffix(s) for s in SUFFIXES.values()) if p.exists()]
        return max(built, key=lambda p: p.stat().st_mtime) if built else train_csv()
    if fmt not in SUFFIXES:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of: {', '.join(SUFFIXES)}")
    return train_csv().with_suffix(SUFFIXES[fmt])


def val_path(train: Path | None = None) -> Path:
    """The validation data built with ``train`` (default :func:`train_path`), in the same format."""
    return val_csv().with_suffix((train or train_path()).suffix)


def data_format(path: Path) -> str:
    """``parquet`` for a ``.parquet`` file or folder, else ``csv``."""
    return "parquet" if Path(path).suffix == ".parquet" else "csv"


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _head(path: Path, rows: int) -> tuple[pd.DataFrame, int]:
    """(the first ``rows + 1`` rows, how many rows the file holds, or -1 when unknown without reading it)."""
    if data_format(path) == "csv":
        return pd.read_csv(path, nrows=rows + 1), -1
    import pyarrow.dataset as pads

    from ranker.rank.dataset_columnar import PARTITION

    data = pads.dataset(path, format="parquet", partitioning="hive")
    columns = [c for c in data.schema.names if c != PARTITION]
    return data.head(rows + 1, columns=columns).to_pandas(), data.count_rows()


@dataclass(frozen=True)
class DatasetPreview:
    """The first :data:`PREVIEW_ROWS` rows of a training file (CSV or Parquet), summarised."""

    path: Path
    size_bytes: int
    rows: int  # rows read
    complete: bool  # False when the file has more rows than were read
    positives: int  # rows labelled 1 among those read (0 without a label column)
    missing: list[str]  # required columns (features, label) the file lacks; training on it would fail
    head: pd.DataFrame  # the first HEAD_ROWS rows
    sample: pd.DataFrame  # up to SAMPLE_ROWS rows drawn at random (seed 0), for histograms
    total_rows: int | None = None  # rows in the whole file when known without reading it (Parquet metadata)

    @property
    def positive_share(self) -> float:
        return self.positives / self.rows if self.rows else float("nan")


def preview_dataset(path: str | Path, rows: int = PREVIEW_ROWS, sample: int = SAMPLE_ROWS) -> DatasetPreview | None:
    """A first look at the CSV file or Parquet dataset at ``path`` without reading more than ``rows``
    rows; None when there is none. A Parquet dataset that cannot be read raises
    :class:`ranker.rank.train.DataError`, saying how to rebuild it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        df, total = _head(path, rows)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path} is not a readable dataset ({str(exc).splitlines()[0]}); generate it again with "
                        f"`ranker dataset --output {path}`") from None
    complete = len(df) <= rows
    df = df.iloc[:rows]
    missing = [c for c in (*feature_columns(), "label") if c not in df.columns]
    positives = int((df["label"] == 1).sum()) if "label" in df.columns else 0
    return DatasetPreview(path, _size(path), len(df), complete, positives, missing, df.head(HEAD_ROWS),
                          df.sample(min(len(df), sample), random_state=0), total if total >= 0 else None)


@dataclass(frozen=True)
class HeldOut:
    """Rows to score offline, the file they came from and how many lists (groups) they hold."""

    data: Dataset
    path: Path
    lists: int


def load_held_out(paths: list[Path] | None = None) -> HeldOut | None:
    """The first readable file of ``paths`` (default: the validation data built with the latest
    training data, else that training data); None when none exists or none is a valid dataset."""
    for path in paths if paths is not None else [val_path(), train_path()]:
        if not path.exists():
            continue
        try:
            data = load_dataset(path, min_positives=1)
        except DataError:
            continue
        return HeldOut(data, path, len(set(data.groups.tolist())))
    return None
