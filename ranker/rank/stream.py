"""Streaming training over Parquet: memory bounded by the rows read at a time, not by the data.

``ranker train --data FOLDER --stream`` (and, without the flag, any Parquet dataset of at least
``DEFAULTS.stream_min_rows`` rows) trains here instead of loading the data whole
(:func:`ranker.rank.train.load_dataset`). The data is read with a ``pyarrow.dataset`` scanner in
record batches, gathered into chunks of about ``chunk_rows`` rows that end on a list boundary: a
list never straddles two chunks (the rows after the last boundary are carried into the next
chunk), so each chunk is trained on exactly as the in-memory path trains on the whole data.

Passes over the data:

1. **Survey** (once): checks every row as :func:`~ranker.rank.train.load_dataset` does (NaN,
   labels 0/1, features in [0, 1], positions, event times), checks that each list's rows are
   contiguous, and sums what training needs up front: rows, positives, lists and pairs, the
   features' mean and variance (the model's input scaling), the IPW weights' mean over the
   positives, per day of the lists (so a time split can hold out the latest days).
2. **Epochs**: the files in a new random order each epoch (when no list spans two files), the
   lists of each chunk in a new random order, the same optimiser steps as in memory
   (:func:`ranker.rank.train._train_epoch`). The reported training loss is the mean of the
   epoch's step losses (the in-memory path re-scores a fixed sample of pairs instead); the
   validation loss is the in-memory path's, summed over the validation chunks.
3. **Evaluation**: NDCG@10 and pairwise accuracy summed over lists chunk by chunk; AUC from
   counts of the scores binned on their float32 bits (2^20 bins, about three significant
   digits), so it needs no row's score to be kept.

What grows with the data: 16 bytes a list (its group id's hash and its day), for the
contiguity check and the split. Everything else is bounded by the chunk.

Validation: ``--val FILE`` (Parquet, streamed; or a CSV, loaded), or ``--val-split S``: with
``--split-by time`` (the default) the latest whole days of lists that hold at least the share
S (the in-memory path cuts at the list, not the day); ``--split-by random`` a share S of the
lists drawn by a hash of their ``group_id`` and ``--seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from ranker import config
from ranker.faults import fault_point
from ranker.rank import memory
from ranker.rank.features import feature_columns, feature_names
from ranker.rank.losses import count_sampled_pairs
from ranker.rank.metrics import _concordant_pairs, ndcg_per_group
from ranker.rank.model import RankerMLP
from ranker.rank.rerank import RuleScorer
from ranker.rank.spec import ModelSpec
from ranker.rank.train import (
    BYTES_FIXED,
    BYTES_PER_PAIR,
    BYTES_PER_ROW,
    CHUNK_ROWS,
    GROUP_COLUMN,
    ITEM_COLUMN_ALIASES,
    SPLITS,
    TIME_COLUMN,
    DataError,
    Dataset,
    EpochCallback,
    MemoryEstimate,
    TrainConfig,
    TrainingError,
    TrainResult,
    _train_epoch,
    _train_epoch_listwise,
    check_shares,
    list_loss_sums,
    pair_loss_sums,
    seed_everything,
    time_parts,
)

#: Bins of the streamed AUC: the top 20 bits of a score's order-preserving float32 key.
AUC_BITS = 20
#: Bytes a list costs for the whole run (its hash and its day), beside the chunk.
BYTES_PER_LIST = 16
_NO_DAY = np.iinfo(np.int64).min


def is_parquet(path: str | Path) -> bool:
    """A ``.parquet`` file or a folder (as ``ranker dataset --format parquet`` writes)."""
    path = Path(path)
    return path.suffix == ".parquet" or path.is_dir()


def open_training_parquet(path: str | Path) -> pads.Dataset:
    """The Parquet dataset at ``path`` (a file, or a folder partitioned by day), its columns checked.

    Raises
    ------
    DataError
        Missing or unreadable, a column training needs is missing, or a column has the wrong type;
        one line that says how to rebuild it.
    """
    from ranker.rank.dataset_columnar import _expected_types

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; generate it with `ranker dataset --format parquet --output {path}`")
    try:
        data = pads.dataset(path, format="parquet", partitioning="hive")
        schema = data.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet dataset: {str(exc).splitlines()[0]}") from None
    item = next((c for c in ITEM_COLUMN_ALIASES if c in schema.names), "item_id")
    missing = [c for c in ("user_id", item, *feature_columns(), "label") if c not in schema.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; rebuild it with "
                        f"`ranker dataset --format parquet --output {path}`")
    for name, (what, ok) in _expected_types().items():
        if name in schema.names and not ok(schema.field(name).type):
            raise DataError(f"{path}: column {name} is {schema.field(name).type}, expected {what}; "
                            f"rebuild it with `ranker dataset --format parquet --output {path}`")
    return data


def should_stream(path: str | Path, stream: bool | None,
                  min_rows: int = config.DEFAULTS.stream_min_rows) -> bool:
    """Whether ``ranker train --data path`` streams: ``stream`` when given (True needs Parquet),
    else when ``path`` is Parquet holding at least ``min_rows`` rows (read from its metadata)."""
    if stream is False:
        return False
    if not is_parquet(path):
        if stream:
            raise DataError(f"--stream reads Parquet, and {path} is not; build it with `ranker dataset "
                            "--format parquet`, or train without --stream")
        return False
    if stream:
        return True
    return open_training_parquet(path).count_rows() >= min_rows


# --- Reading in chunks of whole lists ---------------------------------------------------


@dataclass
class Chunk:
    """Rows of whole lists, in the file's order."""

    data: Dataset  # groups: 0..g-1, one code per run of rows of one list
    list_hash: np.ndarray  # (g,) uint64, each list's group id hashed
    list_day: np.ndarray  # (g,) int64 days since 1970 of the list's earliest row; _NO_DAY without times


def _hash(column: pa.Array) -> np.ndarray:
    return pl.Series(values=column).hash(seed=0).to_numpy().astype(np.uint64)


class ParquetStream:
    """A Parquet training dataset read in chunks of about ``chunk_rows`` rows of whole lists.

    Every chunk is checked as it is read, so the first pass (:func:`survey`) refuses bad data
    before training starts; a DataError names the file and its row.
    """

    def __init__(self, path: str | Path, chunk_rows: int = config.DEFAULTS.stream_rows):
        if chunk_rows <= 0:
            raise ValueError(f"--stream-rows must be a positive number of rows, got {chunk_rows}")
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        self.dataset = open_training_parquet(path)
        names = self.dataset.schema.names
        self.item_col = next((c for c in ITEM_COLUMN_ALIASES if c in names), "item_id")
        self.group_col = GROUP_COLUMN if GROUP_COLUMN in names else "user_id"
        self.has_time = TIME_COLUMN in names
        from ranker.rank.dataset import POSITION_COLUMN

        self.position_col = POSITION_COLUMN if POSITION_COLUMN in names else None
        self.columns = list(dict.fromkeys(
            ["user_id", self.item_col, *feature_columns(), "label", self.group_col]
            + ([TIME_COLUMN] if self.has_time else []) + ([self.position_col] if self.position_col else [])))
        self.fragments = list(self.dataset.get_fragments())
        #: Whether a list runs from one file into the next (then the files keep their order).
        self.lists_span_files = False

    def chunks(self, order: list[int] | np.ndarray | None = None) -> Iterator[Chunk]:
        """The chunks, reading the files in ``order`` (indices into ``self.fragments``; None: as listed)."""
        natural = order is None
        order = range(len(self.fragments)) if natural else order
        pending: list[dict[str, np.ndarray]] = []
        pending_rows = 0
        last_hash = None
        for i in order:
            fragment = self.fragments[int(i)]
            row = 0
            try:
                scanner = pads.Scanner.from_fragment(fragment, schema=self.dataset.schema, columns=self.columns,
                                                     batch_size=self.chunk_rows)
                batches = scanner.to_batches()
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    arrays = self._arrays(batch, fragment.path, row)
                    if natural and row == 0 and last_hash is not None and arrays["hash"][0] == last_hash:
                        self.lists_span_files = True
                    row += batch.num_rows
                    last_hash = arrays["hash"][-1]
                    pending.append(arrays)
                    pending_rows += batch.num_rows
                    if pending_rows < self.chunk_rows:
                        continue
                    merged = _concat(pending)
                    h = merged["hash"]
                    starts = np.flatnonzero(h[1:] != h[:-1]) + 1
                    if len(starts) == 0:  # one list so far: read on
                        pending = [merged]
                        continue
                    cut = int(starts[-1])
                    yield self._chunk({k: v[:cut] for k, v in merged.items()})
                    pending = [{k: v[cut:] for k, v in merged.items()}]
                    pending_rows = len(h) - cut
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{fragment.path} could not be read as training data: "
                                f"{str(exc).splitlines()[0]}; rebuild it with `ranker dataset --format parquet`"
                                ) from None
        if pending_rows:
            yield self._chunk(_concat(pending))

    def _arrays(self, batch: pa.RecordBatch, where: str, row0: int) -> dict[str, np.ndarray]:
        """One record batch as numpy arrays, checked; errors name the file and its 1-based row."""
        def numbers(name: str) -> np.ndarray:
            values = batch.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values)
            if bad.any():
                raise DataError(f"{where}: {name} has {int(bad.sum())} NaN/inf/empty value(s) in a batch, first at "
                                f"row {row0 + int(np.flatnonzero(bad)[0]) + 1:,} of that file; drop or fix those rows")
            return values

        x = np.column_stack([numbers(c) for c in feature_columns()])
        y = numbers("label")
        bad_label = ~np.isin(y, (0.0, 1.0))
        if bad_label.any():
            r = int(np.flatnonzero(bad_label)[0])
            raise DataError(f"{where} row {row0 + r + 1:,}: label {y[r]:g} is not 0 or 1")
        outside = (x < 0.0) | (x > 1.0)
        if outside.any():
            r, c = map(int, np.argwhere(outside)[0])
            raise DataError(f"{where} row {row0 + r + 1:,}: {feature_columns()[c]}={x[r, c]:g} is outside [0, 1]; "
                            "features must be normalised")
        group = batch.column(self.group_col)
        if group.null_count:
            raise DataError(f"{where}: {self.group_col} has {group.null_count} empty value(s); every row needs "
                            "its list's id")
        out = {"x": x.astype(np.float32), "y": y.astype(np.float32), "hash": _hash(group),
               "user": batch.column("user_id").to_numpy(zero_copy_only=False),
               "item": batch.column(self.item_col).to_numpy(zero_copy_only=False)}
        if self.position_col is not None:
            pos = numbers(self.position_col)
            bad = (pos != np.round(pos)) | (pos < -1)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where} row {row0 + r + 1:,}: {self.position_col}={pos[r]:g} is not a 0-based "
                                "position (or -1 for unknown)")
            out["pos"] = pos.astype(np.int64)
        if self.has_time:
            out["time"] = self._times(batch.column(TIME_COLUMN), where, row0)
        return out

    @staticmethod
    def _times(col: pa.Array, where: str, row0: int) -> np.ndarray:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            parsed = pd.to_datetime(pd.Series(col.to_numpy(zero_copy_only=False)).str.strip(), errors="coerce",
                                    format="ISO8601", utc=True).dt.tz_localize(None)
            times = parsed.to_numpy().astype("datetime64[s]")
        else:
            times = col.to_numpy(zero_copy_only=False).astype("datetime64[s]")
        bad = np.isnat(times)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where} row {row0 + r + 1:,}: {TIME_COLUMN}={col[r].as_py()!r} is not a date and time "
                            "(ISO 8601, e.g. 2025-12-01T09:30:00)")
        return times

    def _chunk(self, a: dict[str, np.ndarray]) -> Chunk:
        h = a["hash"]
        starts = np.r_[0, np.flatnonzero(h[1:] != h[:-1]) + 1]
        groups = np.zeros(len(h), dtype=np.int64)
        groups[starts[1:]] = 1
        groups = np.cumsum(groups)
        if "time" in a:
            first = np.minimum.reduceat(a["time"].astype(np.int64), starts)
            day = np.floor_divide(first, 86_400)
        else:
            day = np.full(len(starts), _NO_DAY, dtype=np.int64)
        data = Dataset(a["x"], a["y"], groups, a["user"], a["item"], str(self.path), a.get("time"), a.get("pos"))
        return Chunk(data, h[starts], day)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class MemorySource:
    """A loaded :class:`Dataset` (e.g. a CSV ``--val``) as one chunk, for the streamed loops."""

    def __init__(self, data: Dataset):
        self.data = data
        self.path = Path(data.source)
        self.lists_span_files = False
        self.fragments = [None]

    def chunks(self, order: list[int] | np.ndarray | None = None) -> Iterator[Chunk]:
        codes, groups = np.unique(self.data.groups, return_inverse=True)
        data = Dataset(self.data.x, self.data.y, groups.reshape(-1), self.data.user_ids, self.data.item_ids,
                       self.data.source, self.data.times, self.data.positions)
        yield Chunk(data, codes.astype(np.uint64), np.full(len(codes), _NO_DAY, dtype=np.int64))


# --- The survey: checks and statistics in one pass ----------------------------------------


@dataclass
class Stats:
    """What one pass learns about a set of rows (merged with :meth:`merge`)."""

    rows: int = 0
    positives: int = 0
    lists: int = 0
    pairs: int = 0  # training pairs an epoch, under the cap
    largest_list: int = 0
    largest_pairs: int = 0  # the most pairs one list gives
    mean: np.ndarray | None = None  # (F,) float64
    m2: np.ndarray | None = None  # (F,) sums of squared deviations
    ipw_sum: float = 0.0  # the positives' raw IPW weights, summed
    known_positions: bool = False
    first: np.datetime64 | None = None
    last: np.datetime64 | None = None

    def add(self, data: Dataset, cap: int, ipw: np.ndarray | None) -> None:
        """Count ``data`` (whole lists) in; ``ipw``: (n,) raw weights of its rows, None without IPW."""
        n = len(data)
        if n == 0:
            return
        sizes = np.bincount(data.groups)
        sizes = sizes[sizes > 0]
        per_list = count_sampled_pairs(data.y, data.groups, cap)
        x = data.x.astype(np.float64)
        other = Stats(rows=n, positives=int(data.y.sum()), lists=len(sizes), pairs=int(per_list.sum()),
                      largest_list=int(sizes.max()), largest_pairs=int(per_list.max(initial=0)),
                      mean=x.mean(axis=0), m2=((x - x.mean(axis=0)) ** 2).sum(axis=0),
                      ipw_sum=float(ipw[data.y > 0].sum()) if ipw is not None else 0.0,
                      known_positions=data.positions is not None and bool((data.positions >= 0).any()))
        if data.times is not None:
            other.first, other.last = data.times.min(), data.times.max()
        self.merge(other)

    def merge(self, o: Stats) -> None:
        """Chan et al.'s pairwise update for the mean and variance; sums and extremes for the rest."""
        if o.rows == 0:
            return
        if self.rows == 0:
            self.mean, self.m2 = o.mean.copy(), o.m2.copy()
        else:
            n = self.rows + o.rows
            delta = o.mean - self.mean
            self.mean = self.mean + delta * o.rows / n
            self.m2 = self.m2 + o.m2 + delta**2 * self.rows * o.rows / n
        self.rows += o.rows
        self.positives += o.positives
        self.lists += o.lists
        self.pairs += o.pairs
        self.largest_list = max(self.largest_list, o.largest_list)
        self.largest_pairs = max(self.largest_pairs, o.largest_pairs)
        self.ipw_sum += o.ipw_sum
        self.known_positions |= o.known_positions
        if o.first is not None:
            self.first = o.first if self.first is None else min(self.first, o.first)
            self.last = o.last if self.last is None else max(self.last, o.last)

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.rows, 1))

    def describe(self, path: str | Path, role: str) -> dict[str, Any]:
        """As :func:`ranker.ops.pipeline.describe_set` describes a loaded set."""
        return {"path": str(path), "role": role, "rows": self.rows, "lists": self.lists,
                "positives": self.positives, "from": None if self.first is None else str(self.first),
                "to": None if self.last is None else str(self.last)}


def _random_held(list_hash: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(g,) bool: the lists a random split holds out, from their hash and ``seed`` (splitmix64)."""
    with np.errstate(over="ignore"):
        z = list_hash ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < share


def _ipw_raw(data: Dataset, cfg: TrainConfig) -> np.ndarray | None:
    """(n,) the IPW weight of each row before scaling (1 for negatives), None when not weighting."""
    if cfg.propensities is None or data.positions is None:
        return None
    from ranker.rank.propensity import ipw_weights

    return np.where(data.y > 0, ipw_weights(data.positions, cfg.propensities, cfg.propensity_clip), 1.0)


@dataclass
class Survey:
    """Stats of a source by key: the list's day (time split), its part (random split), or 0."""

    by_key: dict[int, Stats] = field(default_factory=dict)
    lists: int = 0

    def total(self, keys: Callable[[int], bool] = lambda k: True) -> Stats:
        out = Stats()
        for k in sorted(self.by_key):
            if keys(k):
                out.merge(self.by_key[k])
        return out


def survey(source: ParquetStream | MemorySource, cfg: TrainConfig, keyer: Callable[[Chunk], np.ndarray]) -> Survey:
    """One pass over ``source``: every row checked, stats by the key ``keyer`` gives each list,
    and each list's rows checked to be contiguous (DataError otherwise)."""
    out = Survey()
    hashes = []
    for chunk in source.chunks():
        keys = keyer(chunk)
        row_keys = keys[chunk.data.groups]
        ipw = _ipw_raw(chunk.data, cfg)
        for k in np.unique(keys):
            mask = row_keys == k
            part = chunk.data if mask.all() else chunk.data.subset(mask)
            out.by_key.setdefault(int(k), Stats()).add(part, cfg.max_pairs_per_positive,
                                                       None if ipw is None else ipw[mask])
        hashes.append(chunk.list_hash)
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    out.lists = len(all_hashes)
    unique, counts = np.unique(all_hashes, return_counts=True)
    if len(unique) < len(all_hashes) and isinstance(source, ParquetStream):
        raise DataError(f"{source.path}: the rows of {int((counts > 1).sum()):,} list(s) are not together (a "
                        f"{source.group_col} comes back after other lists); streaming needs each list's rows in one "
                        f"run: sort the data by {source.group_col} (ranker dataset writes it so), or pass --no-stream")
    return out


# --- Training -------------------------------------------------------------------------


@dataclass
class StreamResult:
    result: TrainResult
    sets: dict[str, dict[str, Any]]  # as train_and_register's: "train" and, with validation, "validation"
    seen: list[dict[str, int]]  # per epoch: rows, lists and steps trained on
    meta: dict[str, Any]  # recorded in the checkpoint under "stream"


def train_stream(data_path: str | Path, cfg: TrainConfig | None = None, val: str | Path | None = None,
                 val_split: float = 0.0, split_by: str = config.DEFAULTS.split_by,
                 min_positives: int = config.DEFAULTS.min_positives,
                 chunk_rows: int = config.DEFAULTS.stream_rows, on_epoch: EpochCallback | None = None,
                 should_stop: Callable[[], bool] | None = None) -> StreamResult:
    """Train on the Parquet dataset ``data_path`` chunk by chunk (see the module's docstring).

    Validation data picks the best epoch, as in :func:`ranker.rank.train.train`: ``val`` (a
    Parquet dataset, streamed, or a CSV, loaded), or ``val_split`` of the lists (the latest days
    with ``split_by="time"``). Nothing is written here; the caller writes the checkpoints.

    Raises
    ------
    DataError
        Bad data (as :func:`ranker.rank.train.load_dataset`), lists whose rows are not contiguous,
        or a split that leaves one side empty; before any training step.
    MemoryLimitError
        The estimate for a chunk exceeds ``cfg.max_memory``.
    TrainingError
        No pair to learn from, a NaN loss, or a cancelled run.
    """
    cfg = cfg or TrainConfig()
    if split_by not in SPLITS:
        raise ValueError(f"unknown --split-by {split_by!r}; choose one of: {', '.join(SPLITS)}")
    if val_split:
        check_shares(val_split=val_split)
    source = ParquetStream(data_path, chunk_rows)
    if val_split and split_by == "time" and not source.has_time:
        raise DataError(f"{source.path} has no {TIME_COLUMN} column, so it cannot be split by time; rebuild it "
                        "with `ranker dataset`, or pass --split-by random")
    if val is None and val_split and split_by == "random":
        def keyer(c: Chunk) -> np.ndarray:
            return _random_held(c.list_hash, val_split, cfg.seed).astype(np.int64)
    elif val is None and val_split:
        def keyer(c: Chunk) -> np.ndarray:
            return c.list_day
    else:
        def keyer(c: Chunk) -> np.ndarray:
            return np.zeros(len(c.list_hash), dtype=np.int64)
    found = survey(source, cfg, keyer)
    whole = found.total()
    _check_whole(whole, source.path, min_positives)

    held_keys: set[int] = set()
    if val is None and val_split:
        held_keys = _held_keys(found, val_split, split_by)
    held_array = np.array(sorted(held_keys), dtype=np.int64)

    def is_train(list_keys: np.ndarray) -> np.ndarray:
        return np.isin(list_keys, held_array, invert=True)
    train_stats = found.total(lambda k: k not in held_keys)
    val_source: ParquetStream | MemorySource | None = None
    val_stats: Stats | None = None
    if val is not None:
        val_source = _val_source(val, chunk_rows)
        val_found = survey(val_source, cfg, lambda c: np.zeros(len(c.list_hash), dtype=np.int64))
        val_stats = val_found.total()
        _check_whole(val_stats, val_source.path, 1)
    elif held_keys:
        val_stats = found.total(lambda k: k in held_keys)

    cfg = _resolve_correction(cfg, source, train_stats)
    if train_stats.pairs == 0:
        raise TrainingError("no group holds both a positive and a negative, so there is no pair "
                            "to learn from; check the group_id column")
    _estimate(cfg, source, found.lists, train_stats, val_stats).check(cfg.max_memory)

    seed_everything(cfg.seed)
    torch.set_num_threads(1)
    model = _new_model(cfg, train_stats)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    rng = np.random.default_rng(cfg.seed)
    pair_rng = np.random.default_rng([cfg.seed, 1])
    loss_seed = [cfg.seed, 2]
    train_norm = _ipw_norm(cfg, train_stats)
    val_norm = _ipw_norm(cfg, val_stats) if val_stats is not None else None

    def train_chunks(order: np.ndarray | None = None) -> Iterator[Dataset]:
        for chunk in source.chunks(order):
            if not held_keys:
                yield chunk.data
                continue
            keep = is_train(keyer(chunk))[chunk.data.groups]
            if keep.any():
                yield chunk.data if keep.all() else chunk.data.subset(keep)

    def val_chunks() -> Iterator[Dataset]:
        if val_source is not None:
            yield from (c.data for c in val_source.chunks())
            return
        for chunk in source.chunks():
            held = ~is_train(keyer(chunk))[chunk.data.groups]
            if held.any():
                yield chunk.data if held.all() else chunk.data.subset(held)

    has_val = val_stats is not None and val_stats.rows > 0
    result = TrainResult(model=model, best_state=None, config=cfg)
    seen: list[dict[str, int]] = []
    best_val = math.inf
    shuffle_files = not source.lists_span_files and len(source.fragments) > 1
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(len(source.fragments)) if shuffle_files else None
        total, steps, rows, lists = 0.0, 0, 0, 0
        for data in train_chunks(order):
            with torch.no_grad():
                z = model.standardise(torch.from_numpy(data.x))
            if cfg.loss == "pairwise":
                w = _ipw_weights(data, cfg, train_norm)
                s, k = _train_epoch(model, opt, data, z, cfg, rng, pair_rng, epoch, should_stop, w)
            else:
                s, k = _train_epoch_listwise(model, opt, data, z, cfg, rng, pair_rng, epoch, should_stop)
            total, steps = total + s, steps + k
            rows += len(data)
            lists += len(np.unique(data.groups))
            fault_point("train:mid_epoch")
        seen.append({"rows": rows, "lists": lists, "steps": steps})
        train_loss = total / steps if steps else float("nan")
        if not math.isfinite(train_loss):
            raise TrainingError(f"loss became NaN at epoch {epoch}; nothing was saved")
        val_loss = _val_loss(model, val_chunks, cfg, loss_seed, val_norm) if has_val else None
        result.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss is not None and val_loss < best_val:
            best_val = val_loss
            result.best_epoch = epoch
            result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(epoch, train_loss, val_loss)
        fault_point("train:after_epoch")

    model.eval()
    eval_chunks = val_chunks if has_val else train_chunks
    result.evaluate = lambda m: evaluate_stream(m, eval_chunks)
    result.metrics = {**result.evaluate(model), "evaluated_on": "validation" if has_val else "training"}
    sets = {"train": train_stats.describe(source.path, "fit")}
    if val_stats is not None:
        how = "file" if val is not None else split_by
        sets["validation"] = {**val_stats.describe(val if val is not None else source.path, "best epoch"),
                              "split": how}
    meta = {"chunk_rows": chunk_rows, "rows": train_stats.rows, "lists": train_stats.lists,
            "files": len(source.fragments), "files_shuffled": shuffle_files,
            "train_loss": "mean of the epoch's step losses",
            "val_split": None if val is not None or not val_split else f"{split_by}, whole days" if split_by == "time"
            else f"{split_by}, by group_id hash"}
    return StreamResult(result, sets, seen, meta)


def _check_whole(stats: Stats, path: Path, min_positives: int) -> None:
    """load_dataset's checks on the whole file: rows, both classes, enough positives."""
    if stats.rows == 0:
        raise DataError(f"{path} has no rows; generate data with `ranker dataset --format parquet`")
    if stats.positives in (0, stats.rows):
        only = "positive" if stats.positives else "negative"
        raise DataError(f"{path}: every row is {only}; training needs both classes "
                        "(explicit positives and viewed-not-engaged negatives)")
    if stats.positives < min_positives:
        raise DataError(f"{path}: only {stats.positives} positives; at least {min_positives} are needed "
                        "(collect more feedback, or lower --min-positives)")


def _held_keys(found: Survey, share: float, split_by: str) -> set[int]:
    """The keys (days, or the random split's 1) of the lists ``--val-split`` holds out."""
    if split_by == "random":
        held = {1} if 1 in found.by_key else set()
        if not held:
            raise DataError(f"--val-split {share:g} of {found.lists} lists leaves no validation list; raise it")
        if 0 not in found.by_key:
            raise DataError(f"--val-split {share:g} drew every list, so no list is left to train on; "
                            "lower --val-split")
        return held
    days = np.array(sorted(found.by_key), dtype=np.int64)
    lists = np.array([found.by_key[int(d)].lists for d in days])
    per_list_day = np.repeat(days, lists)  # sorted: each list's day
    parts = time_parts(per_list_day, (share,))
    held = {int(d) for d in np.unique(per_list_day[parts == 1])}
    if not held:
        raise DataError(f"--val-split {share:g} of {found.lists} lists leaves no validation list; raise it")
    if len(held) == len(days):
        raise DataError("every list was shown on the same day, so streaming holds out no whole day to validate "
                        "on; pass --val FILE, --split-by random, or --no-stream")
    return held


def _val_source(val: str | Path, chunk_rows: int) -> ParquetStream | MemorySource:
    if is_parquet(val):
        return ParquetStream(val, chunk_rows)
    from ranker.rank.train import load_dataset

    return MemorySource(load_dataset(val, min_positives=1))


def _resolve_correction(cfg: TrainConfig, source: ParquetStream, stats: Stats) -> TrainConfig:
    """As :func:`ranker.rank.train.resolve_position_correction` and the checks of ``ipw_row_weights``."""
    from dataclasses import replace

    has_positions = source.position_col is not None
    if cfg.position_correction == "auto":
        usable = cfg.loss == "pairwise" and cfg.propensities is not None and has_positions and stats.known_positions
        return replace(cfg, position_correction="ipw" if usable else "none",
                       propensities=cfg.propensities if usable else None)
    if cfg.position_correction == "ipw":
        if not has_positions:
            raise DataError(f"{source.path} has no position column, so position bias cannot be corrected; rebuild "
                            "it with `ranker dataset`, or train with --position-correction none")
        if cfg.propensities is None:
            raise DataError("--position-correction ipw needs propensities: estimate them with `ranker propensity "
                            "estimate` or pass --propensities FILE")
    return cfg


def _ipw_norm(cfg: TrainConfig, stats: Stats | None) -> float | None:
    """The positives' mean raw IPW weight over a set (its weights are divided by it), None without IPW."""
    if cfg.position_correction != "ipw" or stats is None or stats.positives == 0:
        return None
    return stats.ipw_sum / stats.positives


def _ipw_weights(data: Dataset, cfg: TrainConfig, norm: float | None) -> np.ndarray | None:
    """(n,) float32 row weights as :func:`ranker.rank.train.ipw_row_weights`, scaled by the whole set's mean."""
    if norm is None:
        return None
    raw = _ipw_raw(data, cfg)
    return np.where(data.y > 0, raw / norm, 1.0).astype(np.float32)


def _estimate(cfg: TrainConfig, source: ParquetStream, lists: int, train: Stats,
              val: Stats | None) -> MemoryEstimate:
    """Peak memory of streamed training: the process now, plus two chunks' rows (the one trained
    on and the batches read for the next), the pairs of a chunk of batches and a byte cost per list."""
    cap = cfg.max_pairs_per_positive
    biggest = max(train.largest_pairs, val.largest_pairs if val is not None else 0)
    largest = max(train.largest_list, val.largest_list if val is not None else 0)
    chunk_pairs = biggest + (CHUNK_ROWS + cfg.batch_size) * cap
    rows = 2 * (source.chunk_rows + largest)
    pair_bytes = BYTES_PER_PAIR * chunk_pairs
    if cfg.loss == "lambdaloss":
        from ranker.rank.train import BYTES_PER_CELL, LAMBDA_MAX_LIST

        longest = min(LAMBDA_MAX_LIST, largest)
        pair_bytes += BYTES_PER_CELL * (cfg.batch_size + longest) * longest**2 // 2
    total = (memory.current_rss() + BYTES_PER_ROW * rows + pair_bytes + BYTES_PER_LIST * lists + BYTES_FIXED
             + 2 * (1 << AUC_BITS) * 8 * 3)
    return MemoryEstimate(int(total), rows, train.pairs, chunk_pairs, pair_bytes)


def _new_model(cfg: TrainConfig, stats: Stats) -> RankerMLP:
    """A fresh net, its input scaling set from the survey's mean and standard deviation (as
    :meth:`RankerMLP.fit_input_scaling` sets it from the whole data)."""
    names = feature_names()
    model = ModelSpec.for_arch(cfg.arch, names if len(names) == len(stats.mean) else None,
                               input_dim=len(stats.mean)).build()
    std = stats.std()
    model.x_mean.copy_(torch.from_numpy(stats.mean))
    model.x_scale.copy_(torch.from_numpy(np.where(std < 1e-3, 1.0, std)))
    return model


def _val_loss(model: RankerMLP, chunks: Callable[[], Iterator[Dataset]], cfg: TrainConfig, seed: list[int],
              norm: float | None) -> float:
    total, count = 0.0, 0
    for data in chunks():
        if cfg.loss == "pairwise":
            s, n = pair_loss_sums(model, data, cfg.max_pairs_per_positive, seed, _ipw_weights(data, cfg, norm))
        else:
            s, n = list_loss_sums(model, data, cfg, seed)
        total, count = total + s, count + n
    return total / count if count else float("nan")


# --- Evaluation over chunks ----------------------------------------------------------------


def _bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin: the top :data:`AUC_BITS` bits of its float32 pattern, made order-preserving."""
    b = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    key = np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000))
    return (key >> np.uint32(32 - AUC_BITS)).astype(np.int64)


def binned_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC from counts of positives and negatives per ordered score bin (ties count half)."""
    p, n = float(pos.sum()), float(neg.sum())
    if p == 0 or n == 0:
        return float("nan")
    below = np.cumsum(neg, dtype=np.float64) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (p * n))


def evaluate_stream(model: RankerMLP, chunks: Callable[[], Iterator[Dataset]], k: int = 10) -> dict[str, Any]:
    """:func:`ranker.rank.train.evaluate_model`'s figures, summed over chunks of whole lists."""
    from ranker import keys

    model.eval()
    names = ("model", "rule", "base")
    ndcg = dict.fromkeys(names, 0.0)
    pairs = {n: [0.0, 0.0] for n in names}
    hist = {n: (np.zeros(1 << AUC_BITS, np.int64), np.zeros(1 << AUC_BITS, np.int64)) for n in names}
    pending: dict[tuple[str, int], list[np.ndarray]] = {(n, c): [] for n in names for c in (0, 1)}

    def flush() -> None:  # one bincount per ~10^6 scores, not one per chunk (each touches every bin)
        for (n, c), parts in pending.items():
            if parts:
                hist[n][c][:] += np.bincount(np.concatenate(parts), minlength=1 << AUC_BITS)
                parts.clear()
    rows = lists = lists_with_positive = flushed = 0
    base_col = feature_names().index("model_score")
    rule = RuleScorer()
    for data in chunks():
        with torch.no_grad():
            neural = np.concatenate([model(torch.from_numpy(data.x[i:i + CHUNK_ROWS])).numpy()
                                     for i in range(0, len(data), CHUNK_ROWS)]).astype(np.float64)
        x = data.x.astype(np.float64)
        scores = {"model": neural, "rule": rule(x), "base": x[:, base_col]}
        per_list = None
        for name, s in scores.items():
            per_list = ndcg_per_group(data.y, s, data.groups, k)
            ndcg[name] += float(per_list.sum())
            correct, n_pairs = _concordant_pairs(data.y, s, data.groups)
            pairs[name][0] += correct
            pairs[name][1] += n_pairs
            b = _bins(s)
            pending[name, 0].append(b[data.y > 0])
            pending[name, 1].append(b[data.y <= 0])
        rows += len(data)
        if rows - flushed >= CHUNK_ROWS * 128:
            flush()
            flushed = rows
        lists += len(np.unique(data.groups))
        lists_with_positive += len(per_list)
    flush()
    out: dict[str, Any] = {"rows": rows, "groups": lists}
    for name in names:
        out[name] = {
            f"ndcg@{k}": _finite(ndcg[name] / lists_with_positive if lists_with_positive else math.nan),
            keys.AUC: _finite(binned_auc(*hist[name])),
            keys.PAIRWISE_ACCURACY: _finite(pairs[name][0] / pairs[name][1] if pairs[name][1] else math.nan),
        }
    return out


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None
