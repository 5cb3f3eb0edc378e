"""One source of truth for defaults: ``ranker.config.DEFAULTS``.

The CLI's flags and the config dataclasses read their defaults from it; a numeric
default written as a literal in a CLI module is a second copy that can drift.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from ranker import config
from ranker.cli.main import build_parser
from ranker.rank.train import TrainConfig

CLI = Path(__file__).resolve().parents[1] / "ranker" / "cli"


def _literal_numeric_defaults(source: str) -> list[tuple[int, object]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for kw in node.keywords:
                value = kw.value.operand if isinstance(kw.value, ast.UnaryOp) else kw.value
                if (kw.arg == "default" and isinstance(value, ast.Constant)
                        and isinstance(value.value, (int, float)) and not isinstance(value.value, bool)):
                    found.append((node.lineno, value.value))
    return found


def test_no_cli_flag_writes_its_numeric_default_as_a_literal():
    offenders = {p.name: hits for p in sorted(CLI.glob("*.py")) if (hits := _literal_numeric_defaults(p.read_text()))}
    assert offenders == {}, f"read these defaults from ranker.config.DEFAULTS: {offenders}"


def test_the_scan_sees_a_literal_default():
    assert _literal_numeric_defaults('p.add_argument("--epochs", type=int, default=20)') == [(1, 20)]
    assert _literal_numeric_defaults('p.add_argument("--lr", default=-1e-3)') == [(1, 1e-3)]
    assert _literal_numeric_defaults('p.add_argument("--epochs", default=D.epochs)') == []


@pytest.mark.parametrize("argv,expected", [
    (["train"], {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "arch": "arch", "seed": "seed",
                 "min_positives": "min_positives", "val_split": "val_split"}),
    (["dataset"], {"neg_ratio": "neg_ratio", "window_days": "window_days", "val_fraction": "val_fraction",
                   "base_model": "base_model", "seed": "seed"}),
    (["simulate"], {"days": "sim_days", "requests_per_day": "sim_requests_per_day", "seed": "sim_seed"}),
    (["report"], {"requests": "report_requests", "seed": "report_seed"}),
    (["serve"], {"host": "api_host", "port": "api_port", "workers": "api_workers"}),
])
def test_cli_defaults_are_the_shared_defaults(argv, expected):
    args = build_parser().parse_args(argv)
    assert {flag: getattr(args, flag) for flag in expected} == {
        flag: getattr(config.DEFAULTS, name) for flag, name in expected.items()}


def test_train_config_defaults_are_the_shared_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in ("epochs", "batch_size", "lr", "arch", "seed"):
        assert fields[name] == getattr(config.DEFAULTS, name), name
