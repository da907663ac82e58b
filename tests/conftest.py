"""Fixtures shared by test files."""

import pytest

from tests.trainer_utils import make_run_files


@pytest.fixture(scope="session")
def run_files(tmp_path_factory):
    """(tiny checkpoint, training rows) of the trainer tests, built once per session."""
    return make_run_files(tmp_path_factory.mktemp("trainer"))
