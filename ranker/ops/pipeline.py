"""The guide's pipeline as library calls: train and register; retrain and promote.

The CLI, the dashboard's jobs and cron all go through these two functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine

from ranker import config, keys
from ranker.data.clock import utcnow
from ranker.data.db import put_setting, session_scope
from ranker.rank.dataset import DatasetConfig, build_dataset
from ranker.rank.registry import (
    CheckpointError,
    activate_version,
    active_path,
    active_version,
    backup_active,
    data_hash,
    load_checkpoint,
    register,
)
from ranker.rank.train import (
    Dataset,
    EpochCallback,
    TrainConfig,
    evaluate_model,
    load_dataset,
    split_by_group,
    train,
    write_checkpoints,
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
) -> TrainOutcome:
    """Load ``data``, train, write ``ranker_v1.pth`` (+ ``_best``), register a version.

    ``activate``: True activates, False never, None activates only when no model is
    active yet. Bad data raises :class:`ranker.rank.train.DataError` before anything is
    written, so the serving model is untouched.
    """
    dataset = load_dataset(data, min_positives=min_positives)
    if val is not None:
        val_set = load_dataset(val, min_positives=1)
    elif val_split > 0:
        dataset, val_set = split_by_group(dataset, val_split, cfg.seed)
    else:
        val_set = None
    result = train(dataset, cfg, val=val_set, on_epoch=on_epoch, should_stop=should_stop)
    paths = write_checkpoints(result, Path(output_dir or config.MODELS_DIR), data_hash(Path(data)), str(data))
    chosen = paths.get("best", paths["final"])
    notes = []
    if activate is None:
        activate = active_version(engine) is None
        if not activate:
            notes.append("another version is active; activate this one with `ranker models activate`")
    version = register(engine, chosen, activate=activate, actor=actor)
    # The metrics of the checkpoint registered (the best epoch's, with validation data).
    metrics = load_checkpoint(chosen).meta.get("metrics") or result.metrics
    with session_scope(engine) as s:
        put_setting(s, keys.LAST_TRAINING, {"version": version, "data": str(data),
                                         "metrics": metrics, "at": utcnow().isoformat(),
                                         "epochs": cfg.epochs})
    return TrainOutcome(version, activate, {k: str(v) for k, v in paths.items()}, metrics,
                        result.history, result.best_epoch, notes)


def retrain(
    engine: Engine,
    dataset_cfg: DatasetConfig | None = None,
    train_cfg: TrainConfig | None = None,
    output_dir: str | Path | None = None,
    show_bar: bool = False,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Fresh dataset → train → evaluate → promote only if no worse than the active model
    and than the rule-based ranker (with the operator's saved weights), which serves otherwise.

    The comparison is fair: the active model and the rule are scored on the *new*
    validation data. The active file is backed up first. ``output_dir`` defaults to
    ``config.MODELS_DIR`` as it is when called.
    """
    from ranker.rank.tuning import current_weights, offline_ndcg

    dataset_cfg = _with_val_output(dataset_cfg)
    train_cfg = train_cfg or TrainConfig()
    backup = backup_active()
    summary = build_dataset(engine, dataset_cfg, show_bar=show_bar)
    outcome = train_and_register(engine, dataset_cfg.output, train_cfg, val=dataset_cfg.val_output,
                                 output_dir=output_dir, activate=False, on_epoch=on_epoch)
    new_ndcg = outcome.metrics["model"][keys.NDCG_AT_10] or 0.0
    val_set = load_dataset(dataset_cfg.val_output, min_positives=1)  # training loaded it fine already
    current = active_version(engine)
    current_ndcg = _active_ndcg(val_set) if current is not None else None
    rule_ndcg = offline_ndcg(current_weights(engine), val_set)
    promote, why = _verdict(new_ndcg, rule_ndcg, current_ndcg)
    if promote:
        activate_version(engine, outcome.version, actor="retrain")
    return {
        "dataset": summary.as_dict(),
        "candidate": outcome.version,
        "candidate_ndcg@10": new_ndcg,
        "active_before": current,
        "active_ndcg@10_on_new_val": current_ndcg,
        "rule_ndcg@10_on_new_val": rule_ndcg,
        "promoted": promote,
        "verdict": why,
        "backup": str(backup) if backup else None,
        "metrics": outcome.metrics,
    }


def _with_val_output(dataset_cfg: DatasetConfig | None) -> DatasetConfig:
    """``dataset_cfg`` (default: the train and validation files in ``config.DATA_DIR``), its
    ``val_output`` set next to ``output`` when missing."""
    dataset_cfg = dataset_cfg or DatasetConfig(
        output=config.DATA_DIR / "ranker_train.csv", val_output=config.DATA_DIR / "ranker_val.csv")
    if dataset_cfg.val_output is None:
        out = Path(dataset_cfg.output)
        dataset_cfg.val_output = out.with_name(out.stem + "_val.csv")
    return dataset_cfg


def _active_ndcg(val_set: Dataset) -> float | None:
    """NDCG@10 of the active model on ``val_set``, or None when its checkpoint cannot be evaluated."""
    try:
        ckpt = load_checkpoint(active_path())
        with torch.no_grad():
            return evaluate_model(ckpt.model(), val_set)["model"][keys.NDCG_AT_10]
    except (CheckpointError, ValueError) as exc:
        log.warning("active model could not be evaluated (%s); treating it as absent", exc)
        return None


def _verdict(new_ndcg: float, rule_ndcg: float, current_ndcg: float | None) -> tuple[bool, str]:
    """(promote?, why): the candidate must be no worse than the rule-based ranker and the active model."""
    if new_ndcg < rule_ndcg:
        return False, f"not promoted: below the rule-based ranker's NDCG@10 {rule_ndcg:.4f}"
    if current_ndcg is not None and new_ndcg < current_ndcg:
        return False, f"not promoted: below the active model's NDCG@10 {current_ndcg:.4f}"
    return True, "promoted"
