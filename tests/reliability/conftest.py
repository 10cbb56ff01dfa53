"""Fixtures of the reliability tests: the world of good and bad inputs (reliability_world.py), built once."""

import pytest
from reliability_world import World, build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """Every input of the matrix, written once per session."""
    return build_world(tmp_path_factory.mktemp("reliability"))
