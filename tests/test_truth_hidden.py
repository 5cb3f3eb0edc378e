"""The ground truth is hidden from feature, dataset and model code.

Only the world builder, the click simulator and the oracle may read it. Every other
module in ``ranker/`` is checked: it may not import ``ranker.sim.truth`` (directly or via
``from ranker.sim import truth``) nor mention the ``world_truth`` table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ranker

ALLOWED = {"truth.py", "synth.py", "simulate.py", "oracle.py", "report.py"}
PACKAGE = Path(ranker.__file__).parent


def _imports_truth(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("ranker.sim.truth") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if (node.module or "").startswith("ranker.sim.truth"):
                return True
            if node.module == "ranker.sim" and any(a.name == "truth" for a in node.names):
                return True
            if node.level > 0 and (node.module or "") == "truth":
                return True
    return False


def _offenders() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name in ALLOWED or rel.parts[:2] == ("data", "migrations"):
            continue
        source = path.read_text()
        if _imports_truth(ast.parse(source)) or "world_truth" in source:
            bad.append(str(rel))
    return bad


def test_feature_dataset_and_model_code_cannot_see_the_ground_truth():
    assert _offenders() == []


def test_the_check_catches_a_leak(tmp_path, monkeypatch):
    leak = PACKAGE / "_leak_probe.py"
    leak.write_text("from ranker.sim.truth import load_truth\n")
    try:
        assert "_leak_probe.py" in _offenders()
    finally:
        leak.unlink()
