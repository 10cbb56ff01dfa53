"""Fixtures for the training tests: one tiny prepared data set per session (one torch thread per test
comes from tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory):
    """Three small synthetic brain cases prepared into train / val / test (one case each, ~45 slices)."""
    from diffma_cli.data.prepare import PrepareOptions, prepare
    from diffma_cli.data.synth import write_synthetic_tree

    root = tmp_path_factory.mktemp("training-data")
    write_synthetic_tree(root / "synth", ("brain",), 3, size="small", progress=False)
    prepare(root / "synth" / "Task1", root / "data", PrepareOptions(fractions=(0.34, 0.33, 0.33)),
            progress=False)
    return root / "data"
