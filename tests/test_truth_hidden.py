"""The ground truth is hidden from everything but the simulator.

Only modules under ``ranker/sim/`` (the world builder, the click simulator and the
oracle) may import :mod:`ranker.sim.truth`, plus ``ranker/data/migrations/env.py``,
which registers its table with the schema. Two locks, each tested here:

- a scan of every ``.py`` file of the repository outside ``tests/`` (so ``ranker/``,
  ``dashboard/``, ``pages/`` and ``bench/``, and any folder added later), judged by its
  full relative path, for an import of the truth in any spelling and for the
  ``world_truth`` table's name;
- a runtime guard in :mod:`ranker.sim.truth` that raises ImportError when any other
  module imports it or reads a name from it, for what a scan cannot see (an import
  name built at run time).
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRUTH = "ranker.sim.truth"
#: Who may import the truth, by path relative to the repository (a folder ends in "/").
MAY_IMPORT = ("ranker/sim/", "ranker/data/migrations/env.py")
#: Who may name its table: the simulator and the migrations that create it.
MAY_NAME_TABLE = ("ranker/sim/", "ranker/data/migrations/")
#: Not scanned: tests may read the truth; the rest is not the project's code.
SKIPPED_DIRS = {"tests", "node_modules", "build", "dist"}
#: Calls that import a module, or fetch one, from a name in a string.
IMPORT_CALLS = {"import_module", "__import__", "find_spec", "run_module", "run_path", "resolve_name",
                "spec_from_file_location", "SourceFileLoader", "getattr"}
TRUTH_STRING = re.compile(r"(?:^|[./\\])truth(?:\.py)?(?=$|[:.])")


def python_files(root: Path) -> list[str]:
    """Every .py file under ``root``, as a POSIX path relative to it; hidden folders
    (.venv, .git), ``tests/`` and build output are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                         and not (rel == Path(".") and d in SKIPPED_DIRS))
        found += [(rel / f).as_posix() for f in files if f.endswith(".py")]
    return sorted(found)


def _package(rel: str) -> list[str]:
    """The package a file's relative imports start from: ``ranker/ops/report.py`` → ranker.ops."""
    parts = rel.removesuffix(".py").split("/")
    return parts[:-1]


def _resolve(rel: str, module: str | None, level: int) -> str:
    """The absolute module name of ``from <level dots><module> import ...`` in file ``rel``."""
    if level == 0:
        return module or ""
    base = _package(rel)
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([module] if module else [])])


def _is_truth(name: str) -> bool:
    return name == TRUTH or name.startswith(TRUTH + ".")


def _call_name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def truth_imports(rel: str, source: str) -> list[str]:
    """How file ``rel`` reaches the truth: one line per import, relative import, string import
    (importlib, ``__import__``, getattr) or ``sim.truth`` attribute; empty when it does not."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if _is_truth(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(rel, node.module, node.level)
            if _is_truth(module) or any(_is_truth(f"{module}.{a.name}") for a in node.names):
                found.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import ...")
        elif isinstance(node, ast.Call) and _call_name(node.func) in IMPORT_CALLS:
            strings = [n.value for arg in [*node.args, *(k.value for k in node.keywords)] for n in ast.walk(arg)
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            if any(TRUTH_STRING.search(s) for s in strings):
                found.append(f"line {node.lineno}: {_call_name(node.func)}(...truth...)")
        elif isinstance(node, ast.Attribute) and node.attr == "truth" and _call_name(node.value) == "sim":
            found.append(f"line {node.lineno}: sim.truth")
    return found


def offenders(root: Path = REPO) -> dict[str, list[str]]:
    """{file relative to ``root``: what it does wrong} for every file that reaches the truth or
    names its table without being allowed to."""
    bad: dict[str, list[str]] = {}
    for rel in python_files(root):
        source = (root / rel).read_text(encoding="utf-8")
        why = [] if rel.startswith(MAY_IMPORT) else truth_imports(rel, source)
        if "world_truth" in source and not rel.startswith(MAY_NAME_TABLE):
            why.append("names the world_truth table")
        if why:
            bad[rel] = why
    return bad


# --- The scan ------------------------------------------------------------------------------


def test_no_code_outside_the_simulator_reaches_the_ground_truth():
    assert offenders() == {}


def test_the_scan_covers_the_library_the_dashboard_the_pages_and_the_benchmarks():
    roots = {rel.split("/")[0] for rel in python_files(REPO)}
    assert {"ranker", "dashboard", "pages", "bench"} <= roots
    assert "tests" not in roots and ".venv" not in roots
    assert "ranker/ops/report.py" in python_files(REPO)  # judged by full path, not by basename


#: (file, source) written into a copy of the tree, and whether the scan must flag it.
PROBES = [
    ("ranker/api/report.py", "from ranker.sim.truth import load_truth\n", True),  # basename of an old allowlist entry
    ("ranker/api/oracle.py", "import ranker.sim.truth as t\n", True),
    ("dashboard/_probe.py", "import ranker.sim.truth\n", True),
    ("pages/_probe.py", "import importlib\ntruth = importlib.import_module('ranker.sim.truth')\n", True),
    ("bench/_probe.py", "from ranker.sim import truth\n", True),
    ("bench/_probe_from.py", "from ranker.sim import (synth,\n    truth as t)\n", True),
    ("ranker/ops/_probe.py", "from ..sim.truth import load_truth\n", True),
    ("ranker/ops/_probe_rel.py", "from ..sim import truth\n", True),
    ("ranker/serving/_probe.py", "m = __import__('ranker.sim', fromlist=['truth'])\n", True),
    ("ranker/rank/_probe.py", "import importlib\nm = importlib.import_module('.truth', package='ranker.sim')\n", True),
    ("ranker/evaluation/_probe.py", "from ranker import sim\nx = sim.truth.load_truth\n", True),
    ("ranker/data/_probe.py", "SQL = 'SELECT blob FROM world_truth'\n", True),
    ("ranker/data/migrations/versions/_probe.py", "import ranker.sim.truth\n", True),  # only env.py may
    ("dashboard/ranker/sim/_probe.py", "import ranker.sim.truth\n", True),  # a look-alike folder elsewhere
    ("tools/_probe.py", "import ranker.sim.truth\n", True),  # a new top-level folder is scanned too
    ("ranker/sim/_probe.py", "from .truth import load_truth\nfrom . import truth\n", False),
    ("ranker/data/migrations/versions/_probe_table.py", "TABLE = 'world_truth'\n", False),
    ("ranker/ops/_probe_ok.py", "from ranker.sim.oracle import load_oracle\ntruthy = 'the truth'\n", False),
]


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The repository's scanned files, copied: probes go here, never into the working tree."""
    for rel in python_files(REPO):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, tmp_path / rel)
    return tmp_path


def test_the_scan_catches_every_probe_by_its_full_path(tree_copy):
    for rel, source, _ in PROBES:
        (tree_copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree_copy / rel).write_text(source)
    found = offenders(tree_copy)
    assert {rel for rel, _, bad in PROBES if bad} - set(found) == set(), "probes the scan missed"
    assert {rel for rel, _, bad in PROBES if not bad} & set(found) == set(), "allowed code flagged"
    assert found["pages/_probe.py"] == ["line 2: import_module(...truth...)"]
    assert found["ranker/data/_probe.py"] == ["names the world_truth table"]


@pytest.mark.parametrize(("rel", "module", "level", "expected"), [
    ("ranker/ops/report.py", "sim.truth", 2, "ranker.sim.truth"),
    ("ranker/ops/report.py", None, 1, "ranker.ops"),
    ("ranker/sim/__init__.py", "truth", 1, "ranker.sim.truth"),
    ("ranker/ops/report.py", "numpy", 0, "numpy"),
])
def test_relative_imports_resolve_from_the_files_package(rel, module, level, expected):
    assert _resolve(rel, module, level) == expected


# --- The runtime guard -------------------------------------------------------------------------


RUNTIME_PROBES = {
    "probe_from_import": "from ranker.sim.truth import load_truth\n",
    "probe_import_module": "import importlib\nimportlib.import_module('ranker.sim.' + 'truth').load_truth\n",
    "probe_attribute": "import ranker.sim.truth\nranker.sim.truth.GroundTruth\n",
    "probe_star": "from ranker.sim.truth import *\n",
}


@pytest.mark.parametrize("module", sorted(RUNTIME_PROBES))
def test_a_module_outside_the_simulator_cannot_read_the_truth_once_it_is_loaded(module, tmp_path, monkeypatch):
    import ranker.sim.oracle  # noqa: F401  (loads the truth: the probe finds it in sys.modules)

    (tmp_path / f"{module}.py").write_text(RUNTIME_PROBES[module])
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=rf"^{module} \(.*\) may not import ranker.sim.truth.*ranker.sim.oracle"):
        importlib.import_module(module)


def test_the_first_import_is_refused_outside_the_simulator_and_registers_nothing():
    script = (
        "try:\n"
        "    import ranker.sim.truth\n"
        "except ImportError as exc:\n"
        "    print('refused', 'may not import ranker.sim.truth' in str(exc))\n"
        "from ranker.data.schema import Base\n"
        "print('table', 'world_truth' in Base.metadata.tables)\n"
        "import ranker.sim.oracle\n"  # the simulator's own modules may
        "print('oracle table', 'world_truth' in Base.metadata.tables)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["refused True", "table False", "oracle table True", ""]


def test_the_simulator_and_the_tests_may_read_the_truth():
    from ranker.sim import truth
    from ranker.sim.truth import WorldParams

    assert truth.WorldParams is WorldParams  # this test module is under tests/
    assert truth._refusal(truth._asker(sys._getframe())) is None
