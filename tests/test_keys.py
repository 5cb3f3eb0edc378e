"""Settings keys come from ``ranker.keys`` only: no literal key in a settings read or write."""

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


def test_keys_are_distinct():
    assert len(set(keys.SETTING_KEYS)) == len(keys.SETTING_KEYS)
