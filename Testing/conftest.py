"""Shared fixtures: the development data folder and small synthetic volumes."""

from pathlib import Path

import pytest

#: ../shared/data beside the repository (development data; never shipped).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f"development data not found at {SHARED_DATA}; the tests need ../shared/data")
    return SHARED_DATA
