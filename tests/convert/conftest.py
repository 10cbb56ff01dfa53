"""Fixtures for the convert tests (helpers in convert_cases.py)."""

from pathlib import Path

import pytest
from convert_cases import ct_array, tiny_run, write


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("convert") / "run")


@pytest.fixture(scope="session")
def mr_to_ct_run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("convert") / "run-mr-ct", direction="mr->ct")


@pytest.fixture(scope="session")
def models(run_dir):
    from diffma_cli.convert import load_models

    return load_models(run_dir, "cpu")


@pytest.fixture
def ct_file(tmp_path) -> Path:
    return write(ct_array(), tmp_path / "ct.nii.gz")
