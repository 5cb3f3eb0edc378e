"""Training the ranker: load and check a dataset CSV, fit with a ranking loss, report.

Reads in one sitting: :func:`load_dataset` refuses bad data with a message that says
what to fix; :func:`train` runs the loop and returns a :class:`TrainResult`;
:func:`write_checkpoints` saves ``ranker_v1.pth`` (and ``ranker_v1_best.pth``).
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.errors import RankerError
from ranker.faults import fault_point
from ranker.rank import memory
from ranker.rank.features import HISTORY, feature_columns, feature_names, feature_set
from ranker.rank.losses import count_sampled_pairs, listwise_loss, pad_lists, sample_pairs, split_long_lists
from ranker.rank.memory import MemoryLimitError
from ranker.rank.metrics import auc, mean_ndcg_at_k, pairwise_accuracy
from ranker.rank.model import RankerMLP, count_parameters
from ranker.rank.rerank import RuleScorer
from ranker.rank.spec import ARCHS, ModelSpec

#: The guide's CSV names the item column ``startup_id``; both are accepted.
ITEM_COLUMN_ALIASES = ("item_id", "startup_id")
GROUP_COLUMN = "group_id"
#: When the row's list was shown (ISO 8601); optional, and needed for a time split.
TIME_COLUMN = "event_time"
MIN_POSITIVES = 100
#: How ``--val-split`` picks validation lists: the latest ones, or at random (the old way).
SPLITS = ("time", "random")


class DataError(RankerError, ValueError):
    """Training data that cannot be used, with what to do about it."""


class TrainingError(RankerError, RuntimeError):
    pass


@dataclass
class Dataset:
    x: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n,) float32, 0/1
    groups: np.ndarray  # (n,) int64, contiguous codes
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = ""
    times: np.ndarray | None = None  # (n,) datetime64[s], when each row's list was shown; None without event_time
    positions: np.ndarray | None = None  # (n,) int64, 0-based position shown (-1: unknown); None without the column

    def __post_init__(self) -> None:
        self.x = np.require(self.x, np.float32, ["C", "W"])
        self.y = np.require(self.y, np.float32, ["C", "W"])
        self.groups = np.require(self.groups, np.int64, ["C", "W"])

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> Dataset:
        return Dataset(self.x[mask], self.y[mask], self.groups[mask], self.user_ids[mask],
                       self.item_ids[mask], self.source, None if self.times is None else self.times[mask],
                       None if self.positions is None else self.positions[mask])


def load_dataset(path: str | Path, min_positives: int = MIN_POSITIVES) -> Dataset:
    """Read and validate a training CSV (or Parquet: a ``.parquet`` file or a folder of them).

    Columns: ``user_id, item_id`` (or ``startup_id``), one per registered feature
    (``model_score, recency_score, ...``), ``label`` and optionally ``group_id``
    (request or list) and ``event_time`` (when the list was shown; a time split needs it).
    Without ``group_id``, pairs are formed within each user.

    Raises
    ------
    DataError
        Missing or misspelled columns, an empty file, text in a numeric column, NaN or
        inf, a label other than 0/1, a feature outside [0, 1], an unreadable event time,
        fewer than ``min_positives`` positives, or a single class.
    """
    path = Path(path)
    if path.suffix == ".parquet" or path.is_dir():  # `ranker dataset --format parquet`: the same columns
        from ranker.rank.dataset_columnar import read_parquet_frame

        df = read_parquet_frame(path)
    else:
        df = _read_csv(path)
    item_col = next((c for c in ITEM_COLUMN_ALIASES if c in df.columns), "item_id")
    _check_columns(df, path, ["user_id", item_col, *feature_columns(), "label"])
    numeric = {c: _numeric_column(df, c, path) for c in [*feature_columns(), "label"]}
    x = np.column_stack([numeric[c] for c in feature_columns()])
    y = numeric["label"]
    _check_values(x, y, path)
    _check_positives(y, path, min_positives)
    group_key = df[GROUP_COLUMN] if GROUP_COLUMN in df.columns else df["user_id"]
    groups = pd.factorize(group_key)[0].astype(np.int64)
    return Dataset(
        x=x.astype(np.float32), y=y.astype(np.float32), groups=groups,
        user_ids=df["user_id"].to_numpy(), item_ids=df[item_col].to_numpy(), source=str(path),
        times=_time_column(df, path), positions=_position_column(df, path),
    )


def _read_csv(path: Path) -> pd.DataFrame:
    """The file as strings, with stripped column names; a DataError for a missing or unreadable file."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; generate it with `ranker dataset --output {path}`")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; generate data with `ranker dataset`") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    df.columns = [c.strip() for c in df.columns]
    return df


def _check_columns(df: pd.DataFrame, path: Path, required: list[str]) -> None:
    """Every required column present (suggesting a close spelling), and at least one row."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, df.columns, n=1)
            hints.append(f"{c} (found {close[0]!r}?)" if close else c)
        history = {f"{n}_score" for n in HISTORY}
        if set(missing) <= history:
            raise DataError(f"{path} has no {', '.join(missing)} column(s): it was built with the guide feature "
                            f"set and the {feature_set()} set is chosen; rebuild it with `ranker dataset "
                            f"--features {feature_set()}`, or train with `--features guide`")
        raise DataError(f"{path}: missing column(s): {', '.join(hints)}. "
                        f"Expected: {', '.join(required)}")
    if df.empty:
        raise DataError(f"{path} has a header but no rows; generate data with `ranker dataset`")


def _check_values(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Labels are 0 or 1 and features lie in [0, 1]; the first bad line is named."""
    bad_label = ~np.isin(y, (0.0, 1.0))
    if bad_label.any():
        row = int(np.flatnonzero(bad_label)[0])
        raise DataError(f"{path} line {row + 2}: label {y[row]:g} is not 0 or 1")
    outside = (x < 0.0) | (x > 1.0)
    if outside.any():
        row, col = map(int, np.argwhere(outside)[0])
        raise DataError(f"{path} line {row + 2}: {feature_columns()[col]}={x[row, col]:g} is "
                        "outside [0, 1]; features must be normalised")


def _check_positives(y: np.ndarray, path: Path, min_positives: int) -> None:
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        only = "positive" if positives else "negative"
        raise DataError(f"{path}: every row is {only}; training needs both classes "
                        "(explicit positives and viewed-not-engaged negatives)")
    if positives < min_positives:
        raise DataError(f"{path}: only {positives} positives; at least {min_positives} are needed "
                        "(collect more feedback, or lower --min-positives)")


def _numeric_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    raw = df[col].str.strip()
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    text = np.isnan(values) & ~raw.str.lower().isin(["nan", "", "inf", "-inf"]).to_numpy()
    if text.any():
        row = int(np.flatnonzero(text)[0])
        raise DataError(f"{path} line {row + 2}: {col}={raw.iloc[row]!r} is not a number")
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: {col} has {int(bad.sum())} NaN/inf/empty value(s), "
                        f"first at line {row + 2}; drop or fix those rows")
    return values


def _time_column(df: pd.DataFrame, path: Path) -> np.ndarray | None:
    """``event_time`` as datetime64[s] per row, or None when the file has no such column."""
    if TIME_COLUMN not in df.columns:
        return None
    raw = df[TIME_COLUMN].str.strip()
    times = pd.to_datetime(raw, errors="coerce", format="ISO8601")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataError(f"{path} line {row + 2}: {TIME_COLUMN}={raw.iloc[row]!r} is not a date and time "
                        "(ISO 8601, e.g. 2025-12-01T09:30:00)")
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.to_numpy().astype("datetime64[s]")


def _position_column(df: pd.DataFrame, path: Path) -> np.ndarray | None:
    """``position`` (0-based position shown, -1 unknown) per row as int64, or None without the column."""
    from ranker.rank.dataset import POSITION_COLUMN

    if POSITION_COLUMN not in df.columns:
        return None
    values = _numeric_column(df, POSITION_COLUMN, path)
    bad = (values != np.round(values)) | (values < -1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path} line {row + 2}: {POSITION_COLUMN}={values[row]:g} is not a 0-based position "
                        "(or -1 for unknown)")
    return values.astype(np.int64)


# --- Splitting ----------------------------------------------------------------------


def check_shares(**shares: float) -> None:
    """Each held-out share (keyword: the flag it came from) lies in (0, 1), and together they
    leave lists to train on. ValueError naming the flag to change.

    >>> check_shares(val_split=0.2, holdout_split=0.2)
    """
    for name, share in shares.items():
        if not 0.0 < share < 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be a share of the lists between 0 and 1 "
                             f"(e.g. 0.2), got {share:g}")
    total = sum(shares.values())
    if len(shares) > 1 and total >= 1.0:
        names = " + ".join(f"--{n.replace('_', '-')} {v:g}" for n, v in shares.items())
        raise ValueError(f"{names} = {total:g} leaves no list to train on; make them sum to less than 1")


def list_parts(data: Dataset, shares: tuple[float, ...]) -> np.ndarray:
    """(n,) part of each row's list by time (see :func:`time_parts`); a list's time is its earliest row's.

    Raises DataError when ``data`` has no event times.
    """
    if data.times is None:
        raise DataError(f"{data.source or 'the data'} has no {TIME_COLUMN} column, so it cannot be split "
                        "by time; rebuild it with `ranker dataset`, or pass --split-by random")
    codes, row_list = np.unique(data.groups, return_inverse=True)
    first = np.full(len(codes), np.datetime64("9999-12-31T00:00:00", "s"))
    np.minimum.at(first, row_list, data.times)
    return time_parts(first, shares)[row_list]


def time_parts(times: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    """Which part each list falls in, by time: 0 for the earliest, then 1, 2, ... for each share.

    The last part holds the latest ``round(shares[-1] * n)`` lists, the part before it the
    ``round(shares[-2] * n)`` lists before those, and so on. Lists shown at the same moment as
    a cut go to the later part, so every list of a part is strictly later than every list of
    the parts before it.

    Shapes: times (n,); returns (n,) int64 in ``0..len(shares)``.
    """
    n = len(times)
    order = np.argsort(times, kind="stable")
    t = times[order]
    cuts, end = [], n
    for share in reversed(shares):
        cut = max(0, end - int(round(share * n)))
        if cut < n:
            cut = int(np.searchsorted(t, t[cut], side="left"))  # ties join the later part
        cuts.append(cut)
        end = cut
    part_in_order = np.searchsorted(np.array(cuts[::-1]), np.arange(n), side="right")
    parts = np.empty(n, dtype=np.int64)
    parts[order] = part_in_order
    return parts


def split_by_time(data: Dataset, val_fraction: float) -> tuple[Dataset, Dataset]:
    """(train, validation): the latest ``val_fraction`` of the lists are validation (whole lists)."""
    mask = list_parts(data, (val_fraction,)) == 1
    return data.subset(~mask), data.subset(mask)


def split_by_group(data: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out a random ``val_fraction`` of the groups (whole groups, so no list is split)."""
    rng = np.random.default_rng(seed)
    n_groups = int(data.groups.max()) + 1
    held = rng.random(n_groups) < val_fraction
    mask = held[data.groups]
    return data.subset(~mask), data.subset(mask)


def split_validation(data: Dataset, val_split: float, split_by: str = config.DEFAULTS.split_by,
                     seed: int = config.DEFAULTS.seed) -> tuple[Dataset, Dataset]:
    """(train, validation) for ``--val-split``: by default the latest ``val_split`` of the lists
    by ``event_time``; with ``split_by="random"`` a random share of them.

    Raises
    ------
    ValueError
        A share outside (0, 1), an unknown ``split_by``, no time column for a time split, or a
        share that leaves one side without lists; the message says what to change.
    """
    check_shares(val_split=val_split)
    if split_by not in SPLITS:
        raise ValueError(f"unknown --split-by {split_by!r}; choose one of: {', '.join(SPLITS)}")
    train_set, val_set = (split_by_time(data, val_split) if split_by == "time"
                          else split_by_group(data, val_split, seed))
    n_lists = int(len(np.unique(data.groups)))
    if len(val_set) == 0:
        raise DataError(f"--val-split {val_split:g} of {n_lists} lists leaves no validation list; raise it")
    if len(train_set) == 0:
        why = ("every list was shown at the same moment" if split_by == "time"
               else f"--val-split {val_split:g} drew every list")
        raise DataError(f"{why}, so no list is left to train on; lower --val-split"
                        + (" or pass --split-by random" if split_by == "time" else ""))
    return train_set, val_set


def write_parts(path: str | Path, parts: np.ndarray, outputs: list[Path]) -> None:
    """Write row ``i`` of the CSV ``path`` to ``outputs[parts[i]]``, unchanged, header on each.

    ``parts``: (n,) ints, e.g. from :func:`list_parts` on ``load_dataset(path)``. ``path`` is
    read whole before anything is written, so it may be one of ``outputs``.
    """
    raw = _read_csv(Path(path))
    if len(raw) != len(parts):
        raise ValueError(f"{path} has {len(raw)} rows but {len(parts)} parts were given")
    for i, target in enumerate(outputs):
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        raw[parts == i].to_csv(tmp, index=False)
        tmp.replace(target)


# --- Training -----------------------------------------------------------------------

#: Rows (whole lists) whose pairs are drawn at once in training, or scored at once for the
#: per-epoch losses and the final metrics.
CHUNK_ROWS = 8192
#: Peak bytes per pair of the largest chunk: drawing them, then a step's loss and gradients
#: (measured: 52 to 101).
BYTES_PER_PAIR = 112
#: Peak bytes per row beside the data itself: the standardised copy, each epoch's shuffled
#: order, the scores and metrics at the end (measured: 200).
BYTES_PER_ROW = 224
#: Fixed headroom for the chunks, the model and the optimiser.
BYTES_FIXED = 64 * 1024**2
#: ``--loss lambdaloss`` builds (lists, L, L) matrices per batch, so each epoch cuts lists longer
#: than this into random pieces of at most this many rows (ListNet and pairwise take whole lists).
LAMBDA_MAX_LIST = 128
#: Peak bytes per (list, row, row) cell of a LambdaLoss batch: its temporaries and autograd's
#: (measured: 32 for a 128 x 128 x 128 float32 step).
BYTES_PER_CELL = 64


@dataclass
class TrainConfig:
    epochs: int = config.DEFAULTS.epochs
    batch_size: int = config.DEFAULTS.batch_size  # rows per batch; whole groups are kept together
    lr: float = config.DEFAULTS.lr
    arch: str = config.DEFAULTS.arch  # small 16/8, default 32/16, large 64/32
    seed: int = config.DEFAULTS.seed
    weight_decay: float = 0.0
    # each epoch pairs a positive with at most this many negatives of its list, sampled afresh
    max_pairs_per_positive: int = config.DEFAULTS.max_pairs_per_positive
    max_memory: int | None = None  # bytes training may use; None: DEFAULTS.max_memory_fraction of the RAM
    loss: str = config.DEFAULTS.loss  # pairwise (RankNet), listnet or lambdaloss (NDCG-Loss2++)
    # position bias: "ipw" weights each pair by 1 / p(position of its positive), at most propensity_clip;
    # "auto" does when propensities and the data's positions are at hand (train() records which it did)
    position_correction: str = config.DEFAULTS.position_correction
    propensities: list[float] | None = None  # ipw: p(k)/p(1) for k = 1, 2, ... (ranker.rank.propensity)
    propensity_clip: float = config.DEFAULTS.propensity_clip

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        if self.loss not in config.LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of: {', '.join(config.LOSSES)}")
        for name in ("epochs", "batch_size", "max_pairs_per_positive"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {self.max_memory}")
        self._check_position_correction()

    def _check_position_correction(self) -> None:
        from ranker.rank.propensity import CORRECTIONS, check_curve

        if self.position_correction not in CORRECTIONS:
            raise ValueError(f"unknown position correction {self.position_correction!r}; choose one of: "
                             f"{', '.join(CORRECTIONS)}")
        if self.position_correction == "ipw" and self.loss != "pairwise":
            raise ValueError("--position-correction ipw weights the pairwise loss's pairs; train with --loss pairwise")
        if not self.propensity_clip >= 1.0:
            raise ValueError(f"propensity_clip is the largest weight 1 / p, at least 1, got {self.propensity_clip}")
        if self.propensities is not None:
            self.propensities = check_curve(self.propensities, "propensities")


EpochCallback = Callable[[int, float, float | None], None]


@dataclass
class TrainResult:
    model: RankerMLP
    best_state: dict[str, torch.Tensor] | None
    history: list[dict[str, float | None]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: TrainConfig = field(default_factory=TrainConfig)
    best_epoch: int | None = None
    eval_data: Dataset | None = None  # what ``metrics`` were computed on
    # scores a model on the data ``metrics`` came from when that data is not held (streaming training)
    evaluate: Callable[[RankerMLP], dict[str, Any]] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _group_batches(groups: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Row indices in whole-group batches of about ``batch_size`` rows (more when one group is
    larger); the groups in a random order, or in code order when ``rng`` is None."""
    if rng is None:
        order = np.argsort(groups, kind="stable")
    else:
        rank = rng.permutation(int(groups.max()) + 1)
        order = np.argsort(rank[groups], kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # first row of each group
    cuts, next_cut = [], batch_size
    for s in starts[1:]:
        if s >= next_cut:
            cuts.append(s)
            next_cut = s + batch_size
    return np.split(order, cuts)


def _pair_loss(model: RankerMLP, data: Dataset, cap: int, seed: list[int],
               weights: np.ndarray | None = None) -> float:
    """Mean pairwise loss (eval mode) over :func:`sample_pairs` with ``cap``, drawn from ``seed``;
    with row ``weights`` (:func:`ipw_row_weights`), each pair's term weighs its better row's weight.

    The same seed gives the same pairs every epoch, so the figures are comparable across
    epochs; data whose lists all fit under the cap gives the loss over all its pairs.
    Streams lists in chunks of about :data:`CHUNK_ROWS` rows, so memory does not grow
    with the data's pairs. nan when there is no pair.
    """
    total, count = pair_loss_sums(model, data, cap, seed, weights)
    return total / count if count else float("nan")


def pair_loss_sums(model: RankerMLP, data: Dataset, cap: int, seed: list[int],
                   weights: np.ndarray | None = None) -> tuple[float, int]:
    """(sum of the pair terms, number of pairs) behind :func:`_pair_loss`, so that sums over
    chunks of the data (streaming training) make one mean."""
    model.eval()
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    with torch.no_grad():
        for idx in _group_batches(data.groups, CHUNK_ROWS, None):
            better, worse = sample_pairs(data.y[idx], data.groups[idx], cap, rng)
            if len(better) == 0:
                continue
            s = model(torch.from_numpy(data.x[idx]))
            terms = F.softplus(-(s[torch.from_numpy(better)] - s[torch.from_numpy(worse)]))
            if weights is not None:
                terms = terms * torch.from_numpy(weights[idx][better])
            total += float(terms.sum(dtype=torch.float64))
            count += len(better)
    return total, count


def pairwise_step_grads(model: RankerMLP, z: torch.Tensor, better: torch.Tensor, worse: torch.Tensor,
                        keep: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One training step's loss, with every parameter's ``.grad`` set, written out by hand.

    The same maths as ``pairwise_logistic_loss_from_pairs(model(x), better, worse, weights).backward()``
    in train mode, with ``keep`` (B, hidden_dim1) as the dropout mask and ``weights`` (P,) each
    pair's weight (None: 1). For a 705-parameter
    MLP, autograd's bookkeeping costs more than the arithmetic: this halves the time per
    step (``tests/test_train.py`` checks the gradients against autograd).

    ``z`` is the batch as the first layer sees it, ``model.standardise(x)``: the training
    loop standardises the whole dataset once rather than every step.

    Shapes: z (B, F); better, worse (P,) row indices; returns the mean loss, shape ().
    """
    lin1, lin2, lin3 = model.net[0], model.net[3], model.net[5]
    scale = keep / (1.0 - model.spec.dropout)
    with torch.no_grad():
        z1 = torch.addmm(lin1.bias, z, lin1.weight.t())
        h1 = z1.clamp_min(0.0) * scale
        z2 = torch.addmm(lin2.bias, h1, lin2.weight.t())
        h2 = z2.clamp_min(0.0)
        s = torch.addmv(lin3.bias, h2, lin3.weight[0])
        if better.numel() == 0:
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            return torch.zeros(())
        d = s[better] - s[worse]
        w = torch.ones_like(d) if weights is None else weights.to(d.dtype)
        loss = (w * F.softplus(-d)).mean()
        g_d = -w * torch.sigmoid(-d) / d.numel()  # d loss / d (s_better - s_worse)
        g_s = torch.zeros_like(s).index_add_(0, better, g_d).index_add_(0, worse, -g_d)
        lin3.weight.grad, lin3.bias.grad = (g_s @ h2)[None, :], g_s.sum().reshape(1)
        g_z2 = torch.outer(g_s, lin3.weight[0]) * (z2 > 0)
        lin2.weight.grad, lin2.bias.grad = g_z2.t() @ h1, g_z2.sum(0)
        g_z1 = (g_z2 @ lin2.weight) * scale * (z1 > 0)
        lin1.weight.grad, lin1.bias.grad = g_z1.t() @ z, g_z1.sum(0)
    return loss


def train(
    data: Dataset,
    cfg: TrainConfig | None = None,
    val: Dataset | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Fit a :class:`RankerMLP` with ``cfg.loss``: by default the pairwise logistic loss over
    same-group pairs, or a listwise loss over whole lists (ListNet, LambdaLoss).

    Pairwise: each epoch pairs every positive with at most ``cfg.max_pairs_per_positive``
    negatives of its list, drawn afresh per batch; a list with fewer negatives keeps all its
    pairs. The reported losses are means over one fixed sample of such pairs. Listwise: each
    batch's lists are scored whole (LambdaLoss cuts lists longer than :data:`LAMBDA_MAX_LIST`
    into random pieces); the reported losses are the same loss's means over the lists. ``on_epoch(epoch,
    train_loss, val_loss)`` is called after each epoch (1-based); ``should_stop()`` lets a
    caller cancel between batches.

    Raises
    ------
    MemoryLimitError
        The estimate (:func:`estimate_memory`) exceeds ``cfg.max_memory``; raised before
        training allocates anything.
    TrainingError
        No list holds a pair, the loss became NaN or inf (nothing is saved), or the run was
        cancelled.
    DataError
        ``cfg.position_correction`` is ``ipw`` and the data has no position column, or
        ``cfg.propensities`` is not set.
    """
    cfg = resolve_position_correction(cfg or TrainConfig(), data)
    weights = ipw_row_weights(data, cfg)
    need = estimate_memory(data, cfg, val)
    if need.pairs == 0:
        raise TrainingError("no group holds both a positive and a negative, so there is no pair "
                            "to learn from; check the group_id column")
    need.check(cfg.max_memory)
    seed_everything(cfg.seed)
    torch.set_num_threads(1)  # tiny matrices: threads cost more than they save
    model = _new_model(data, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    rng = np.random.default_rng(cfg.seed)  # batch order
    pair_rng = np.random.default_rng([cfg.seed, 1])  # each epoch's pairs
    loss_seed = [cfg.seed, 2]  # the pairs the reported losses are measured on, the same every epoch
    with torch.no_grad():
        z_all = model.standardise(torch.from_numpy(data.x))  # once, not per step
    has_val = val is not None and len(val) > 0
    val_weights = ipw_row_weights(val, cfg) if has_val else None
    cap = cfg.max_pairs_per_positive
    result = TrainResult(model=model, best_state=None, config=cfg)
    best_val = math.inf

    for epoch in range(1, cfg.epochs + 1):
        if cfg.loss == "pairwise":
            _train_epoch(model, opt, data, z_all, cfg, rng, pair_rng, epoch, should_stop, weights)
            train_loss = _pair_loss(model, data, cap, loss_seed, weights)
            val_loss = _pair_loss(model, val, cap, loss_seed, val_weights) if has_val else None
        else:
            _train_epoch_listwise(model, opt, data, z_all, cfg, rng, pair_rng, epoch, should_stop)
            train_loss = _list_loss(model, data, cfg, loss_seed)
            val_loss = _list_loss(model, val, cfg, loss_seed) if has_val else None
        if not math.isfinite(train_loss):
            raise TrainingError(f"loss became NaN at epoch {epoch}; nothing was saved")
        result.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss is not None and val_loss < best_val:
            best_val = val_loss
            result.best_epoch = epoch
            result.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(epoch, train_loss, val_loss)
        fault_point("train:after_epoch")

    model.eval()
    result.eval_data = val if has_val else data
    result.metrics = evaluate_model(model, result.eval_data)
    result.metrics["evaluated_on"] = "validation" if has_val else "training"
    return result


@dataclass
class MemoryEstimate:
    """What :func:`train` will hold at its peak, estimated before it allocates."""

    bytes: int  # this process's resident size now, plus what training adds
    rows: int  # training and validation rows
    pairs: int  # training pairs per epoch, after the cap
    chunk_pairs: int  # pairs drawn at once, at most
    pair_bytes: int  # the part of ``bytes`` that those pairs take

    def check(self, limit: int | None) -> None:
        """Raise :class:`MemoryLimitError` when the estimate exceeds ``limit`` (bytes;
        None: the default share of the machine's RAM); the one-line message names the flag."""
        given = limit is not None
        limit = limit if given else memory.default_limit()
        if self.bytes <= limit:
            return
        what = (f"--max-memory is {memory.format_size(limit)}" if given else
                f"the limit is {memory.format_size(limit)} ({config.DEFAULTS.max_memory_fraction:.0%} "
                f"of this machine's {memory.format_size(memory.machine_memory())})")
        fix = ("lower --max-pairs-per-positive or --batch-size" if self.pair_bytes > self.bytes // 2
               else "train on fewer rows")
        raise MemoryLimitError(
            f"training needs about {memory.format_size(self.bytes)} ({self.rows:,} rows, {_millions(self.pairs)} "
            f"pairs) but {what}; raise --max-memory or {fix}")


def estimate_memory(data: Dataset, cfg: TrainConfig, val: Dataset | None = None) -> MemoryEstimate:
    """Peak memory of ``train(data, cfg, val)``: the process as it stands (the data loaded)
    plus :data:`BYTES_PER_ROW` per row, :data:`BYTES_PER_PAIR` per pair drawn at once and
    :data:`BYTES_FIXED`. A chunk of batches draws at most the largest list's pairs plus
    ``max_pairs_per_positive`` for each of ``CHUNK_ROWS + batch_size`` more rows. LambdaLoss
    adds :data:`BYTES_PER_CELL` per cell of a batch's (lists, L, L) matrices: lists of at least
    two rows, at most ``batch_size + L`` rows a batch, L at most :data:`LAMBDA_MAX_LIST`. The
    pair term stays for the listwise losses too, a margin they do not use."""
    cap = cfg.max_pairs_per_positive
    per_group = count_sampled_pairs(data.y, data.groups, cap)
    biggest = int(per_group.max(initial=0))
    if val is not None and len(val):
        biggest = max(biggest, int(count_sampled_pairs(val.y, val.groups, cap).max(initial=0)))
    chunk_pairs = biggest + (CHUNK_ROWS + cfg.batch_size) * cap
    rows = len(data) + (len(val) if val is not None else 0)
    pair_bytes = BYTES_PER_PAIR * chunk_pairs
    if cfg.loss == "lambdaloss":  # a batch's lists of >= 2 rows, each padded to the longest (<= L)
        longest = min(LAMBDA_MAX_LIST, int(np.bincount(data.groups).max(initial=0)))
        pair_bytes += BYTES_PER_CELL * (cfg.batch_size + longest) * longest**2 // 2
    total = memory.current_rss() + BYTES_PER_ROW * rows + pair_bytes + BYTES_FIXED
    return MemoryEstimate(int(total), rows, int(per_group.sum()), chunk_pairs, pair_bytes)


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def _new_model(data: Dataset, cfg: TrainConfig) -> RankerMLP:
    """A fresh net of ``cfg.arch`` over the data's columns, its input scaling fitted to the data."""
    names = feature_names()
    named = names if len(names) == data.x.shape[1] else None  # unnamed columns: a bare array
    model = ModelSpec.for_arch(cfg.arch, named, input_dim=data.x.shape[1]).build()
    model.fit_input_scaling(data.x)
    return model


def resolve_position_correction(cfg: TrainConfig, data: Dataset) -> TrainConfig:
    """``cfg`` with ``auto`` made ``ipw`` (pairwise loss, propensities given, positions known) or
    ``none`` (its propensities dropped), so the checkpoint records what training did."""
    if cfg.position_correction != "auto":
        return cfg
    usable = (cfg.loss == "pairwise" and cfg.propensities is not None and data.positions is not None
              and bool((data.positions >= 0).any()))
    return replace(cfg, position_correction="ipw" if usable else "none",
                   propensities=cfg.propensities if usable else None)


def ipw_row_weights(data: Dataset, cfg: TrainConfig) -> np.ndarray | None:
    """(n,) float32 weight per row for ``--position-correction ipw``, None without it.

    A positive shown at 0-based position k weighs 1 / (p(k+1)/p(1)) from ``cfg.propensities``,
    at most ``cfg.propensity_clip`` (1 where the position is unknown); a negative weighs 1.
    Scaled so the positives' mean weight is 1, so the loss keeps its scale and learning rate.
    """
    if resolve_position_correction(cfg, data).position_correction != "ipw":
        return None
    from ranker.rank.propensity import ipw_weights

    if data.positions is None:
        raise DataError(f"{data.source or 'the data'} has no position column, so position bias cannot be "
                        "corrected; rebuild it with `ranker dataset`, or train with --position-correction none")
    if cfg.propensities is None:
        raise DataError("--position-correction ipw needs propensities: estimate them with `ranker propensity "
                        "estimate` or pass --propensities FILE")
    w = np.where(data.y > 0, ipw_weights(data.positions, cfg.propensities, cfg.propensity_clip), 1.0)
    positives = data.y > 0
    if positives.any():
        w = np.where(positives, w / w[positives].mean(), 1.0)
    return w.astype(np.float32)


def _train_epoch(model: RankerMLP, opt: torch.optim.Optimizer, data: Dataset, z_all: torch.Tensor,
                 cfg: TrainConfig, rng: np.random.Generator, pair_rng: np.random.Generator, epoch: int,
                 should_stop: Callable[[], bool] | None, weights: np.ndarray | None = None) -> tuple[float, int]:
    """One pass over the groups in shuffled batches, one optimiser step per batch; with row
    ``weights`` (:func:`ipw_row_weights`), each pair weighs its better row's weight. Returns
    (sum of the steps' losses, steps)."""
    model.train()
    total, steps = 0.0, 0
    batches = _group_batches(data.groups, cfg.batch_size, rng)
    for idx, better, worse in _batch_pairs(data, batches, cfg.max_pairs_per_positive, pair_rng):
        if should_stop and should_stop():
            raise TrainingError("training cancelled")
        zb = z_all[torch.from_numpy(idx)]
        keep = torch.rand(len(idx), model.spec.hidden_dim1) >= model.spec.dropout
        pair_w = None if weights is None else torch.from_numpy(weights[idx])[better]
        loss = pairwise_step_grads(model, zb, better, worse, keep, pair_w)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss)} at epoch {epoch}; nothing was saved. "
                                "Lower --lr or check the data for extreme values")
        opt.step()
        total += float(loss)
        steps += 1
    return total, steps


def _batch_pairs(data: Dataset, batches: list[np.ndarray], cap: int, rng: np.random.Generator,
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Each batch's rows with its pairs (indices into those rows), drawn by :func:`sample_pairs`
    for about :data:`CHUNK_ROWS` rows of consecutive batches at a time: an epoch never holds
    all its pairs, and the draws cost little per batch."""
    chunk: list[np.ndarray] = []
    for i, idx in enumerate(batches):
        chunk.append(idx)
        if i + 1 < len(batches) and sum(map(len, chunk)) < CHUNK_ROWS:
            continue
        rows = np.concatenate(chunk)
        better, worse = sample_pairs(data.y[rows], data.groups[rows], cap, rng)  # ordered by better row
        starts = np.cumsum([0] + [len(b) for b in chunk])
        bounds = np.searchsorted(better, starts)
        for b, batch in enumerate(chunk):
            sel = slice(bounds[b], bounds[b + 1])
            yield batch, torch.from_numpy(better[sel] - starts[b]), torch.from_numpy(worse[sel] - starts[b])
        chunk = []


def _train_epoch_listwise(model: RankerMLP, opt: torch.optim.Optimizer, data: Dataset, z_all: torch.Tensor,
                          cfg: TrainConfig, rng: np.random.Generator, list_rng: np.random.Generator, epoch: int,
                          should_stop: Callable[[], bool] | None) -> tuple[float, int]:
    """One pass of ``cfg.loss`` (listnet or lambdaloss) over the lists in shuffled whole-list batches.
    Returns (sum of the steps' losses, steps)."""
    model.train()
    total, steps = 0.0, 0
    for idx in _group_batches(data.groups, cfg.batch_size, rng):
        if should_stop and should_stop():
            raise TrainingError("training cancelled")
        lists = _padded_lists(data, idx, cfg.loss, list_rng)
        if lists is None:
            continue
        at = torch.from_numpy(lists)
        s = model.net(z_all[at.clamp_min(0)].reshape(-1, z_all.shape[1])).reshape(at.shape)
        y = torch.from_numpy(data.y)[at.clamp_min(0)]
        loss = listwise_loss(cfg.loss, s, y, at >= 0)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {float(loss)} at epoch {epoch}; nothing was saved. "
                                "Lower --lr or check the data for extreme values")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        steps += 1
    return total, steps


def _padded_lists(data: Dataset, idx: np.ndarray, loss: str, rng: np.random.Generator) -> np.ndarray | None:
    """(B, L) rows of ``data`` (indices, -1 for padding) of the lists among rows ``idx`` that
    hold two labels; lambdaloss cuts lists longer than :data:`LAMBDA_MAX_LIST`. None: no such list."""
    groups, y = data.groups[idx], data.y[idx]
    _, g = np.unique(groups, return_inverse=True)
    g = g.reshape(-1)
    both = (np.bincount(g, weights=y > 0) > 0) & (np.bincount(g, weights=y <= 0) > 0)
    keep = both[g]
    if not keep.any():
        return None
    idx, g = idx[keep], g[keep]
    if loss == "lambdaloss":
        g = split_long_lists(g, LAMBDA_MAX_LIST, rng)
    lists = pad_lists(g)
    return np.where(lists >= 0, idx[lists.clip(0)], -1)


def _list_loss(model: RankerMLP, data: Dataset, cfg: TrainConfig, seed: list[int]) -> float:
    """Mean ``cfg.loss`` (eval mode) over the lists of ``data`` with two labels; LambdaLoss cuts
    long lists the same way every epoch (from ``seed``), so the figures compare across epochs.
    Streams batches of about ``cfg.batch_size`` rows. nan when no list holds two labels."""
    total, count = list_loss_sums(model, data, cfg, seed)
    return total / count if count else float("nan")


def list_loss_sums(model: RankerMLP, data: Dataset, cfg: TrainConfig, seed: list[int]) -> tuple[float, int]:
    """(sum of the per-list losses, number of lists) behind :func:`_list_loss`."""
    model.eval()
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    x, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    with torch.no_grad():
        for idx in _group_batches(data.groups, cfg.batch_size, None):
            lists = _padded_lists(data, idx, cfg.loss, rng)
            if lists is None:
                continue
            at = torch.from_numpy(lists)
            s = model(x[at.clamp_min(0)].reshape(-1, x.shape[1])).reshape(at.shape)
            y = y_all[at.clamp_min(0)].masked_fill(at < 0, math.nan)
            lists_used = int((y.nan_to_num(-math.inf).amax(1) > y.nan_to_num(math.inf).amin(1)).sum())
            total += float(listwise_loss(cfg.loss, s, y.nan_to_num(0.0), at >= 0)) * lists_used
            count += lists_used
    return total, count


def evaluate_model(model: RankerMLP, data: Dataset, k: int = 10) -> dict[str, Any]:
    """NDCG@k, AUC and pairwise accuracy for the model, the rule and the base order."""
    model.eval()
    with torch.no_grad():  # in chunks: a whole-data forward pass would hold every row's hidden layers
        neural = np.concatenate([model(torch.from_numpy(data.x[i:i + CHUNK_ROWS])).numpy()
                                 for i in range(0, len(data), CHUNK_ROWS)]).astype(np.float64)
    x = data.x.astype(np.float64)
    scorers = {
        "model": neural,
        "rule": RuleScorer()(x),
        "base": x[:, feature_names().index("model_score")],
    }
    out: dict[str, Any] = {"rows": len(data), "groups": int(len(np.unique(data.groups)))}
    for name, s in scorers.items():
        out[name] = {
            f"ndcg@{k}": _finite(mean_ndcg_at_k(data.y, s, data.groups, k)),
            keys.AUC: _finite(auc(data.y, s)),
            keys.PAIRWISE_ACCURACY: _finite(pairwise_accuracy(data.y, s, data.groups)),
        }
    return out


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def checkpoint_meta(result: TrainResult, data_hash: str | None, data_path: str | None,
                    best: bool = False) -> dict[str, Any]:
    cfg = result.config
    return {
        **result.model.spec.to_meta(),
        "params": count_parameters(result.model),
        "data_hash": data_hash,
        "data_path": data_path,
        "metrics": result.metrics,
        "history": result.history,
        "best_epoch": result.best_epoch if best else None,
        "train_params": asdict(cfg),
        "feature_set": feature_set(),  # which set the columns are (ranker.rank.features.use_feature_set)
        "created_at": utcnow().isoformat(),
    }


def write_checkpoints(result: TrainResult, output_dir: Path, data_hash: str | None = None,
                      data_path: str | None = None, extra_meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``ranker_v1.pth`` and, with a validation set, ``ranker_v1_best.pth``; ``extra_meta``
    (e.g. the validation file's ``val_path`` and ``val_hash``) goes into both."""
    from ranker.rank.registry import save_checkpoint

    output_dir = Path(output_dir)
    paths = {"final": output_dir / "ranker_v1.pth"}
    save_checkpoint(paths["final"], result.model, {**checkpoint_meta(result, data_hash, data_path),
                                                   **(extra_meta or {})})
    if result.best_state is not None:
        best = result.model.spec.build()
        best.load_state_dict(result.best_state)
        best.eval()
        meta = {**checkpoint_meta(result, data_hash, data_path, best=True), **(extra_meta or {})}
        if result.evaluate is not None:
            meta["metrics"] = {**result.evaluate(best), "evaluated_on": "validation"}
        elif result.eval_data is not None:
            meta["metrics"] = {**evaluate_model(best, result.eval_data), "evaluated_on": "validation"}
        paths["best"] = output_dir / "ranker_v1_best.pth"
        save_checkpoint(paths["best"], best, meta)
    return paths

