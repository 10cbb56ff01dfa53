"""Fixtures of the reliability tests: the world of good and bad inputs (reliability_world.py), built once."""

import pytest
import torch
from reliability_world import World, build_world


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread on the shared machine; the setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """Every input of the matrix, written once per session."""
    return build_world(tmp_path_factory.mktemp("reliability"))
