"""Settings and metric keys come from ``ranker.keys`` only: no literal key anywhere else in the code."""

from __future__ import annotations

import ast
from pathlib import Path

from ranker import keys

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("ranker", "dashboard", "pages") for p in sorted((ROOT / d).rglob("*.py"))
           if "migrations" not in p.parts]
SETTINGS_CALLS = {"get_setting", "put_setting"}


def literal_keys(path: Path) -> list[str]:
    """Places in ``path`` that name a settings key with a string literal."""
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in SETTINGS_CALLS and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                found.append(f"{where}:{node.lineno} {name}({node.args[1].value!r})")
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and path.name != "keys.py":
            if node.value.value in keys.SETTING_KEYS and any(
                    isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
                found.append(f"{where}:{node.lineno} a second constant for {node.value.value!r}")
    return found


def test_no_settings_key_is_spelt_out_outside_ranker_keys():
    assert [hit for path in SOURCES for hit in literal_keys(path)] == []


def test_the_check_catches_a_literal_key(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('WORLD_SETTING = "world"\n\ndef f(s):\n    return get_setting(s, "clock")\n')
    assert literal_keys(probe) == ["probe.py:1 a second constant for 'world'", "probe.py:4 get_setting('clock')"]


def literal_metric_keys(path: Path) -> list[str]:
    """String constants in code (docstrings aside) that spell a metric key."""
    metric_keys = set(keys.OFFLINE_METRICS) | set(keys.ONLINE_METRICS)
    tree = ast.parse(path.read_text())
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return [f"{where}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in metric_keys and id(n) not in docstrings]


def test_no_metric_key_is_spelt_out_outside_ranker_keys():
    assert [hit for path in SOURCES if path.name != "keys.py" for hit in literal_metric_keys(path)] == []


def test_the_check_catches_a_literal_metric_key(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""ctr in a docstring is fine."""\nbest = metrics["model"]["ndcg@10"]\n')
    assert literal_metric_keys(probe) == ["probe.py:2 'ndcg@10'"]


def test_keys_are_distinct():
    every = (*keys.SETTING_KEYS, *keys.OFFLINE_METRICS, *keys.ONLINE_METRICS)
    assert len(set(every)) == len(every)
