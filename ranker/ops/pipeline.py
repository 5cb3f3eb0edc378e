"""The guide's pipeline as library calls: train and register; retrain and promote.

The CLI, the dashboard's jobs and cron all go through these two functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.data.db import put_setting, session_scope
from ranker.evaluation.harm import HarmCheck, against_base
from ranker.evaluation.parity import parity_gate, parity_report
from ranker.faults import fault_point
from ranker.rank.dataset import DatasetConfig, DatasetSummary, build_dataset
from ranker.rank.propensity import with_propensities
from ranker.rank.registry import (
    CheckpointError,
    activate_version,
    active_version,
    backup_active,
    data_hash,
    load_checkpoint,
    local_file,
    register,
)
from ranker.rank.train import (
    SPLITS,
    Dataset,
    EpochCallback,
    TrainConfig,
    check_shares,
    evaluate_model,
    list_parts,
    load_dataset,
    split_validation,
    train,
    write_checkpoints,
    write_parts,
)

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    version: str
    activated: bool
    paths: dict[str, str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int | None = None
    notes: list[str] = field(default_factory=list)
    #: What training used: "train" and, with validation, "validation" (see :func:`describe_set`).
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)


def describe_set(data: Dataset, role: str) -> dict[str, Any]:
    """Where a set came from, what it is for, and its size: rows, lists, positives, first and last time."""
    out: dict[str, Any] = {"path": data.source, "role": role, "rows": len(data),
                           "lists": _n_lists(data), "positives": int(data.y.sum()),
                           "from": None, "to": None}
    if data.times is not None and len(data):
        out["from"], out["to"] = str(data.times.min()), str(data.times.max())
    return out


def train_and_register(
    engine: Engine,
    data: str | Path,
    cfg: TrainConfig,
    val: str | Path | None = None,
    val_split: float = 0.0,
    output_dir: str | Path | None = None,
    activate: bool | None = None,
    min_positives: int = 100,
    on_epoch: EpochCallback | None = None,
    should_stop=None,
    actor: str = "cli",
    split_by: str = config.DEFAULTS.split_by,
    stream: bool | None = None,
    stream_rows: int = config.DEFAULTS.stream_rows,
) -> TrainOutcome:
    """Load ``data``, train, write ``ranker_v1.pth`` (+ ``_best``), register a version.

    Validation data picks the best epoch: the file ``val``, or else (``val_split`` > 0) the
    latest ``val_split`` of the lists of ``data`` by event time (``split_by="random"``: a random
    share of them). ``activate``: True activates, False never, None activates only when no model
    is active yet. Bad data or a bad split raises :class:`ranker.rank.train.DataError` before
    anything is written, so the serving model is untouched.

    ``stream``: True trains on the Parquet ``data`` chunk by chunk (:mod:`ranker.rank.stream`,
    ``stream_rows`` rows read at a time), False loads it whole, None streams Parquet of at least
    ``DEFAULTS.stream_min_rows`` rows.
    """
    if split_by not in SPLITS:
        raise ValueError(f"unknown --split-by {split_by!r}; choose one of: {', '.join(SPLITS)}")
    from ranker.rank.stream import should_stream, train_stream  # polars and pyarrow, only when training

    cfg = with_propensities(engine, cfg)  # --position-correction ipw: the saved estimate's curve
    stream_meta = None
    if should_stream(data, stream):
        streamed = train_stream(data, cfg, val=val, val_split=val_split, split_by=split_by,
                                min_positives=min_positives, chunk_rows=stream_rows, on_epoch=on_epoch,
                                should_stop=should_stop)
        result, sets, stream_meta = streamed.result, streamed.sets, streamed.meta
    else:
        dataset = load_dataset(data, min_positives=min_positives)
        if val is not None:
            val_set = load_dataset(val, min_positives=1)
        elif val_split:
            dataset, val_set = split_validation(dataset, val_split, split_by, cfg.seed)
        else:
            val_set = None
        sets = {"train": describe_set(dataset, "fit")}
        if val_set is not None:
            how = "file" if val is not None else split_by
            sets["validation"] = {**describe_set(val_set, "best epoch"), "split": how}
        result = train(dataset, cfg, val=val_set, on_epoch=on_epoch, should_stop=should_stop)
    recorded = {"val_path": str(val), "val_hash": data_hash(Path(val))} if val is not None else None
    if stream_meta is not None:  # how the data was read; train_params records the rest
        recorded = {**(recorded or {}), "stream": stream_meta}
    paths = write_checkpoints(result, Path(output_dir or config.MODELS_DIR), data_hash(Path(data)), str(data),
                              recorded)  # the LightGBM peer stops early on the same validation file
    chosen = paths.get("best", paths["final"])
    notes = []
    if cfg.position_correction == "auto" and result.config.position_correction == "none":
        notes.append("trained without position correction: no position-bias estimate could be made (no randomised "
                     "swaps logged) or the data has no position column")
    if activate is None:
        activate = active_version(engine) is None
        if not activate:
            notes.append("another version is active; activate this one with `ranker models activate`")
    fault_point("train:before_register")  # the checkpoints are on disk; the registry has no row yet
    version = register(engine, chosen, activate=activate, actor=actor)
    # The metrics of the checkpoint registered (the best epoch's, with validation data).
    metrics = load_checkpoint(chosen).meta.get("metrics") or result.metrics
    with session_scope(engine) as s:
        put_setting(s, keys.LAST_TRAINING, {"version": version, "data": str(data),
                                         "metrics": metrics, "at": utcnow().isoformat(),
                                         "epochs": cfg.epochs, "sets": sets})
    return TrainOutcome(version, activate, {k: str(v) for k, v in paths.items()}, metrics,
                        result.history, result.best_epoch, notes, sets)


#: Fewer lists than this in the validation or promotion holdout of a retrain is refused.
MIN_EVAL_LISTS = 20


def retrain(
    engine: Engine,
    dataset_cfg: DatasetConfig | None = None,
    train_cfg: TrainConfig | None = None,
    output_dir: str | Path | None = None,
    show_bar: bool = False,
    on_epoch: EpochCallback | None = None,
    val_split: float = config.DEFAULTS.retrain_val_split,
    holdout_split: float = config.DEFAULTS.holdout_split,
) -> dict[str, Any]:
    """Fresh dataset → split by time → train → evaluate → promote only if no worse than the active
    model and than the rule-based ranker (with the operator's saved weights), which serves otherwise.

    The dataset's lists are split three ways by time: the earliest are trained on, the next
    ``val_split`` pick the best epoch, and the latest ``holdout_split`` are the promotion holdout.
    The gate compares the candidate, the active model and the rule on the holdout only, which
    played no part in training or in choosing the epoch. The three sets are written next to
    ``dataset_cfg.output`` (``output`` itself keeps the training lists; ``val_output``, default
    ``<stem>_val.csv``; ``<stem>_holdout.csv``). The active file is backed up first.
    ``output_dir`` defaults to ``config.MODELS_DIR`` as it is when called.

    Raises
    ------
    ValueError
        A share outside (0, 1), shares that leave nothing to train on, or fewer than
        :data:`MIN_EVAL_LISTS` lists in the validation set or the holdout.
    """
    check_shares(val_split=val_split, holdout_split=holdout_split)
    dataset_cfg = _with_val_output(dataset_cfg)
    backup = backup_active(engine)
    paths = _split_paths(dataset_cfg)
    for stale in (paths["validation"], paths["holdout"]):  # never left to pair with a new training file
        stale.unlink(missing_ok=True)
    summary = build_dataset(engine, replace(dataset_cfg, val_output=None), show_bar=show_bar)
    parity = parity_report(engine, paths["train"])  # the whole fresh dataset, before the time split
    train_set, val_set, holdout = _split_three_ways(paths, val_split, holdout_split)
    summary = _record_split(engine, summary, paths, train_set, val_set, holdout)
    outcome = train_and_register(engine, paths["train"], train_cfg or TrainConfig(), val=paths["validation"],
                                 output_dir=output_dir, activate=False, on_epoch=on_epoch)
    gate = _gate(engine, outcome, holdout, parity)
    if gate["promoted"]:
        activate_version(engine, outcome.version, actor="retrain")  # ends any base-order hold
    else:
        gate["base_order_hold"] = _hold_if_harmful(engine, holdout, gate)
    return {
        "dataset": summary,
        "split_by": "time",
        "sets": {"train": describe_set(train_set, "fit"), "validation": describe_set(val_set, "best epoch"),
                 "holdout": describe_set(holdout, "promotion gate")},
        "gate_on": "holdout",
        "candidate": outcome.version,
        "candidate_val_ndcg@10": outcome.metrics["model"][keys.NDCG_AT_10],
        **gate,
        "backup": str(backup) if backup else None,
        "metrics": outcome.metrics,
    }


def _gate(engine: Engine, outcome: TrainOutcome, holdout, parity) -> dict[str, Any]:
    """The promotion decision on the holdout: the candidate against the base order (do no harm:
    not significantly worse, paired over lists), the active model and the rule (NDCG@10), and
    train/serve parity (no feature's PSI over the gate's threshold)."""
    from ranker.rank.tuning import current_weights, offline_ndcg

    candidate = Path(outcome.paths.get("best", outcome.paths["final"]))
    new_ndcg = _checkpoint_ndcg(candidate, holdout) or 0.0
    vs_base = against_base(load_checkpoint(candidate).scorer()(holdout.x.astype(float)), holdout, outcome.version)
    current = active_version(engine)
    current_ndcg = _active_ndcg(engine, current, holdout) if current is not None else None
    rule_ndcg = offline_ndcg(current_weights(engine), holdout)
    promote, why = _verdict(new_ndcg, rule_ndcg, current_ndcg)
    if promote and vs_base.harmful:
        promote, why = False, f"not promoted: {vs_base.sentence()}"
    parity_ok, parity_why = parity_gate(parity)
    if promote and not parity_ok:  # a model trained on skewed features would be served on other ones
        promote, why = False, f"not promoted: {parity_why}"
    return {"candidate_ndcg@10": new_ndcg, "active_before": current, "active_ndcg@10": current_ndcg,
            "rule_ndcg@10": rule_ndcg, "base_ndcg@10": vs_base.base_ndcg, "vs_base": vs_base.as_dict(),
            "promoted": promote, "verdict": why,
            "parity": {**parity.as_dict(), "ok": parity_ok, "reason": parity_why}}


def _hold_if_harmful(engine: Engine, holdout: Dataset, gate: dict[str, Any]) -> dict[str, Any] | None:
    """With no promotion, what keeps serving (the active model, else the rule with the saved
    weights) is checked against the base order on the same holdout. When it is significantly
    worse, the treatment arm serves the base order (a hold in settings, shown on the dashboard)
    until a model passes this gate or an operator activates one; otherwise any hold is lifted."""
    from ranker.rank.registry import version_scorer
    from ranker.rank.rerank import RuleScorer
    from ranker.rank.tuning import current_weights

    current = gate["active_before"]
    scorer = version_scorer(engine, current) if current is not None else RuleScorer(current_weights(engine))
    check: HarmCheck = against_base(scorer(holdout.x.astype(float)), holdout, current or "the rule-based ranker")
    hold = None
    if check.harmful:
        hold = {"reason": f"serving the base order: {check.sentence()}", "since": utcnow().isoformat(),
                "scorer": check.scorer, "diff": check.diff.value}
    with session_scope(engine) as s:
        put_setting(s, keys.BASE_ORDER_HOLD, hold)
    return hold


def version_vs_base(engine: Engine, version: str) -> HarmCheck | None:
    """``version`` against the base order on the latest retrain's promotion holdout (what an operator
    sees before activating it), or None when no holdout file is on record."""
    from ranker.data.db import get_setting
    from ranker.rank.registry import version_scorer

    with session_scope(engine) as s:
        path = (get_setting(s, keys.LAST_DATASET) or {}).get("holdout_path")
    if not path or not Path(path).is_file():
        return None
    holdout = load_dataset(path, min_positives=1)
    return against_base(version_scorer(engine, version)(holdout.x.astype(float)), holdout, version)


def _with_val_output(dataset_cfg: DatasetConfig | None) -> DatasetConfig:
    """``dataset_cfg`` (default: the train and validation files in ``config.DATA_DIR``), its
    ``val_output`` set next to ``output`` when missing."""
    dataset_cfg = dataset_cfg or DatasetConfig(
        output=config.DATA_DIR / "ranker_train.csv", val_output=config.DATA_DIR / "ranker_val.csv")
    if dataset_cfg.val_output is None:
        out = Path(dataset_cfg.output)
        dataset_cfg.val_output = out.with_name(out.stem + "_val.csv")
    return dataset_cfg


def _split_paths(dataset_cfg: DatasetConfig) -> dict[str, Path]:
    """Where a retrain's three sets go, earliest first: the training, validation and holdout CSVs."""
    out = Path(dataset_cfg.output)
    return {"train": out, "validation": Path(dataset_cfg.val_output),
            "holdout": out.with_name(out.stem + "_holdout.csv")}


def _split_three_ways(paths: dict[str, Path], val_split: float,
                      holdout_split: float) -> tuple[Dataset, Dataset, Dataset]:
    """Split the lists of ``paths["train"]`` by time into the three files of ``paths`` (training
    keeps the earliest, the holdout gets the latest ``holdout_split``, validation the
    ``val_split`` before those) and return the three sets. Too few lists in either held-out
    set raises ValueError before anything is written."""
    data = load_dataset(paths["train"], min_positives=1)
    parts = list_parts(data, (val_split, holdout_split))
    sets = [data.subset(parts == i) for i in range(3)]
    for held, name, flag, share in ((sets[2], "promotion holdout", "--holdout-split", holdout_split),
                                    (sets[1], "validation set", "--val-split", val_split)):
        n = int(len(np.unique(held.groups)))
        if n < MIN_EVAL_LISTS:
            raise ValueError(f"{flag} {share:g} of {_n_lists(data)} lists leaves {n} for the {name}; at least "
                             f"{MIN_EVAL_LISTS} are needed: raise {flag}, or widen --window-days for more lists")
    write_parts(paths["train"], parts, list(paths.values()))
    for part, path in zip(sets, paths.values()):
        part.source = str(path)
    return sets[0], sets[1], sets[2]


def _n_lists(data: Dataset) -> int:
    return int(len(np.unique(data.groups)))


def _record_split(engine: Engine, summary: DatasetSummary, paths: dict[str, Path], train_set: Dataset,
                  val_set: Dataset, holdout: Dataset) -> dict[str, Any]:
    """The dataset summary once split (the training file now holds the earliest lists only),
    also saved as the latest dataset."""
    out = {**summary.as_dict(), "built_rows": summary.rows, "built_groups": summary.groups,
           "rows": len(train_set), "positives": int(train_set.y.sum()), "groups": _n_lists(train_set),
           "val_path": str(paths["validation"]), "val_rows": len(val_set), "val_positives": int(val_set.y.sum()),
           "holdout_path": str(paths["holdout"]), "holdout_rows": len(holdout),
           "holdout_positives": int(holdout.y.sum())}
    with session_scope(engine) as s:
        put_setting(s, keys.LAST_DATASET, {**out, "created_at": utcnow().isoformat()})
    return out


def _checkpoint_ndcg(path: Path, data: Dataset) -> float | None:
    """NDCG@10 of the checkpoint at ``path`` on ``data``."""
    with torch.no_grad():
        return evaluate_model(load_checkpoint(path).model(), data)["model"][keys.NDCG_AT_10]


def _active_ndcg(engine: Engine, version: str, data: Dataset) -> float | None:
    """NDCG@10 of the active model on ``data``, or None when its checkpoint cannot be evaluated."""
    try:  # the registry's file, as served (fetched from the model store on a machine without it)
        return _checkpoint_ndcg(local_file(engine, version), data)
    except (CheckpointError, ValueError) as exc:
        log.warning("active model could not be evaluated (%s); treating it as absent", exc)
        return None


def _verdict(new_ndcg: float, rule_ndcg: float, current_ndcg: float | None) -> tuple[bool, str]:
    """(promote?, why): the candidate must be no worse than the rule-based ranker and the active
    model, on the promotion holdout."""
    if new_ndcg < rule_ndcg:
        return False, f"not promoted: below the rule-based ranker's NDCG@10 {rule_ndcg:.4f} on the holdout"
    if current_ndcg is not None and new_ndcg < current_ndcg:
        return False, f"not promoted: below the active model's NDCG@10 {current_ndcg:.4f} on the holdout"
    return True, "promoted"
