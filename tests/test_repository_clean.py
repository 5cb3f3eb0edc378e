"""The test suite leaves the checkout as it found it: tests write under tmp_path only.

This module runs after every other test (see ``pytest_collection_modifyitems`` in conftest).
"""

from __future__ import annotations

import pytest

from tests.conftest import BEFORE_KEY, untracked_paths


def test_the_tests_wrote_nothing_into_the_repository(request: pytest.FixtureRequest):
    before = request.config.stash.get(BEFORE_KEY, None)
    after = untracked_paths()
    if before is None or after is None:
        pytest.skip("not a git checkout: nothing to compare")
    assert sorted(after - before) == [], "tests wrote into the repository; write under tmp_path instead"
