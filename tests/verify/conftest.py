"""Fixtures of the verifier's tests (tests/verify): a warm worker pool for the test modules that score."""

from __future__ import annotations

import pytest

from spark.verify import is_correct
from spark.verify.pool import configure, shutdown
from tests.verify.helpers import boxed


@pytest.fixture(scope="module")
def warm_pool():
    """Two workers (the test machine has two busy cores), started before any timed check."""
    configure(2)
    assert is_correct(boxed(r"2\sqrt{2}"), r"\sqrt{8}")
    yield
    shutdown()
