"""Shared fixtures: the test data shipped in Testing/data."""

from pathlib import Path

import pytest

#: Small real and reference data shipped with the tests (see Testing/data/README.md for the
#: sources, licences and attribution).
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def test_data():
    """The folder Testing/data: ``romeo-small/`` (a real 3-echo scan) and ``head-phantom/labels.csv``."""
    if not (TEST_DATA / "romeo-small" / "Phase.nii.gz").is_file():
        pytest.fail(f"test data not found at {TEST_DATA}; it is part of the repository: restore it with git")
    return TEST_DATA
