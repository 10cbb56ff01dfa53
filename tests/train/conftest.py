"""Fixtures for the training tests: one tiny prepared data set per session (one torch thread per test
comes from tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def prepared_data(small_brain_data):
    """Three small synthetic brain cases prepared into train / val / test (one case each, ~45 slices)."""
    data, _ = small_brain_data("training-data", 3, (0.34, 0.33, 0.33))
    return data
