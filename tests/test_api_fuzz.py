"""Schemathesis over the API's own OpenAPI schema: no 5xx, and every response fits the schema.

For every operation Hypothesis generates valid requests and invalid ones (a bounded
number of each, derandomised, so this stays fast and repeatable) and sends them to the
real app on a trained small world, with a write key so writes are exercised too.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from ranker.api.auth import Keys

KEY = "fuzz-key"
EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.slow  # hundreds of generated requests


def _fuzz(app, mode: GenerationMode, examples: int = EXAMPLES) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9

    for operation in operations:
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            case.call_and_validate(headers={"X-API-Key": KEY}, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # no invalid request exists for an operation without inputs (GET /healthz)
            assert mode is GenerationMode.NEGATIVE and not operation.body and not operation.query, operation.label


MODES = pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])


@MODES
def test_api_never_fails_with_a_server_error_or_breaks_its_schema(served, mode):
    from ranker.api import create_app

    _fuzz(create_app(served, keys=Keys(write=(KEY,))), mode)


@pytest.mark.postgres
@MODES
def test_api_on_postgres_never_fails_with_a_server_error(pg_world, monkeypatch, mode):
    """The same on PostgreSQL, whose types and constraints are stricter than SQLite's."""
    from ranker import config
    from ranker.api import create_app
    from ranker.base import store
    from ranker.data.db import make_engine
    from ranker.serving.service import _SERVICES

    url, models = pg_world
    monkeypatch.setattr(config, "MODELS_DIR", models)
    store.clear_cache()
    _SERVICES.clear()
    engine = make_engine(url)
    try:
        _fuzz(create_app(engine, keys=Keys(write=(KEY,))), mode, examples=20)
    finally:
        engine.dispose()
        _SERVICES.clear()
        store.clear_cache()
