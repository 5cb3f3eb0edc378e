"""``pages/`` and ``dashboard/`` only lay out what ``ranker/`` returns, already aggregated.

The check reads their source with ``ast`` and fails, naming file and line, on:

- an import of sqlalchemy in a page;
- SQL: a call of ``select``/``text`` or of anything imported from sqlalchemy, or ``.execute(...)``;
- a pandas aggregation or reduction: ``.groupby``, ``.pivot_table``, ``.agg``, ``.merge``, ``.sum``,
  ``.mean``, ``.unique``, ``.value_counts`` and the like (:data:`AGGREGATIONS`);
- ``st.cache_data``/``st.cache_resource`` anywhere but ``dashboard/cached.py``, the one place
  the dashboard caches.

Queries and aggregations belong in core functions under ``ranker/`` with tests of their own.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_MODULE = Path("dashboard") / "cached.py"
SQL_CALLS = {"select", "text"}
SQL_METHODS = {"execute"}
AGGREGATIONS = {"groupby", "pivot_table", "pivot", "agg", "aggregate", "resample", "crosstab", "merge",
                "sum", "mean", "median", "std", "min", "max", "unique", "nunique", "value_counts", "describe"}
CACHES = {"cache_data", "cache_resource"}


def offences(source: str, rel: Path) -> list[str]:
    """What in ``source`` (the file at ``rel``, relative to the repository) is more than layout, by line."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    sa_names: set[str] = set()
    for node in ast.walk(tree):
        bound = []
        if isinstance(node, ast.Import):
            bound = [a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "sqlalchemy"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            bound = [a.asname or a.name for a in node.names]
        sa_names.update(bound)
        if bound and rel.parts[0] == "pages":
            found.append((node.lineno, "imports sqlalchemy"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and (func.id in SQL_CALLS or func.id in sa_names):
                found.append((node.lineno, f"SQL {func.id}()"))
            elif isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else None
                if owner in sa_names or func.attr in SQL_METHODS:
                    found.append((node.lineno, f"SQL .{func.attr}()"))
                elif func.attr in AGGREGATIONS:
                    found.append((node.lineno, f"aggregation .{func.attr}()"))
        if isinstance(node, ast.Attribute) and node.attr in CACHES and rel != CACHE_MODULE:
            found.append((node.lineno, f"{node.attr} outside {CACHE_MODULE.as_posix()}"))
    return [f"{rel.as_posix()}:{line} {what}" for line, what in sorted(found)]


def layout_offences(root: Path = ROOT) -> list[str]:
    return [hit for folder in ("dashboard", "pages") for path in sorted((root / folder).rglob("*.py"))
            for hit in offences(path.read_text(), path.relative_to(root))]


def test_pages_and_dashboard_only_lay_out_what_the_core_returns():
    found = layout_offences()
    assert found == [], "move these into core functions under ranker/ (or caches into dashboard/cached.py):\n" \
        + "\n".join(found)


def test_the_check_catches_sql_aggregations_and_caches_in_a_page():
    page = '''
import sqlalchemy as sa
from sqlalchemy import func, select
import streamlit as st

@st.cache_data(ttl=5)
def rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(func.count())).all()

counts = df.groupby("arm").agg(n=("x", "sum"))
wide = df.pivot_table(index="day", columns="arm")
share = f"{df['label'].mean():.1%}"
raw = sa.text("SELECT 1")
st.text("text() of streamlit is fine")
'''
    assert offences(page, Path("pages/probe.py")) == [
        "pages/probe.py:2 imports sqlalchemy",
        "pages/probe.py:3 imports sqlalchemy",
        "pages/probe.py:6 cache_data outside dashboard/cached.py",
        "pages/probe.py:9 SQL .count()",
        "pages/probe.py:9 SQL .execute()",
        "pages/probe.py:9 SQL select()",
        "pages/probe.py:11 aggregation .agg()",
        "pages/probe.py:11 aggregation .groupby()",
        "pages/probe.py:12 aggregation .pivot_table()",
        "pages/probe.py:13 aggregation .mean()",
        "pages/probe.py:14 SQL .text()",
    ]


def test_the_dashboard_may_name_an_engine_type_and_cache_in_one_module():
    helper = "from sqlalchemy import Engine\nimport streamlit as st\n\n@st.cache_data\ndef f(e: Engine): ...\n"
    assert offences(helper, Path("dashboard/cached.py")) == []
    assert offences(helper, Path("dashboard/common.py")) == ["dashboard/common.py:4 cache_data outside "
                                                             "dashboard/cached.py"]
