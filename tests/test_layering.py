"""The subpackages of ``ranker`` import only downward, and ``ranker`` never imports streamlit.

Layers, bottom first: a module may import its own layer and those below it. The
``KNOWN_BREAKS`` are the upward imports that exist today, each to be removed; the
list may only shrink. A new upward import fails here, naming the file and the layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ranker

PACKAGE = Path(ranker.__file__).parent

#: Bottom first. ``ranker/config.py``, ``ranker/errors.py``, ``ranker/faults.py``, ``ranker/keys.py``
#: and the flow router ``ranker/flows.py`` are the foundation.
LAYERS = ["config", "errors", "faults", "keys", "flows",
          "data", "base", "rank", "evaluation", "serving", "sim", "ops", "api", "cli"]

#: (file, imported layer): upward imports to remove, not to add to.
KNOWN_BREAKS = {
    ("data/migrations/env.py", "sim"),  # registers the world_truth table with the schema's metadata
}


def _layer(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(tree: ast.AST) -> set[str]:
    layers = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ranker":
            names = [node.module] if node.module != "ranker" else [f"ranker.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "ranker"]
        layers.update(n.split(".")[1] for n in names if n.count("."))
    return layers


def upward_imports(package: Path = PACKAGE) -> set[tuple[str, str]]:
    found = set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        own = _layer(rel)
        if own not in LAYERS:  # __init__, __main__ and migrations sit outside the layers
            continue
        for layer in _imported_layers(ast.parse(path.read_text())):
            if layer in LAYERS and LAYERS.index(layer) > LAYERS.index(own):
                found.add((rel.as_posix(), layer))
    return found


def test_no_subpackage_imports_a_layer_above_it():
    new = upward_imports() - KNOWN_BREAKS
    assert not new, f"upward imports (file, layer imported): {sorted(new)}"


def test_known_breaks_are_still_there_so_the_list_only_shrinks():
    gone = KNOWN_BREAKS - upward_imports()
    assert not gone, f"fixed: remove these from KNOWN_BREAKS: {sorted(gone)}"


def test_every_subpackage_is_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "leak.py").write_text("from ranker.serving.service import recommend\n")
    assert upward_imports(tmp_path) == {("data/leak.py", "serving")}


def test_the_core_never_imports_streamlit():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any((isinstance(n, ast.Import) and any(a.name.split(".")[0] == "streamlit" for a in n.names))
                        or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "streamlit")
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert offenders == []
