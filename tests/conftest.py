"""Test setup: offline, deterministic, GPU tests skipped where there is no CUDA."""

import os

# Nothing may be downloaded during tests: set before diffusers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Under `pytest -n N` every worker is its own process: one intra-op thread each, so N workers on N cores
# do not oversubscribe them (OpenMP threads spinning against each other slow CPU tests down several-fold).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tests' models are tiny: one intra-op thread is faster than two, and much faster than two fighting
    the other test processes for the cores. The previous setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded_global_generators():
    """Each test starts from the same global random state, whatever ran before it in the same process (a
    module's own initialisation draws from torch's global generator: unseeded, a test's weights, and so its
    numerical error, depended on the order of the tests and on how pytest-xdist shared them out)."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_brain_data(tmp_path_factory):
    """Factory: `make(name, cases, fractions, seed=0)` writes `cases` small synthetic brain cases
    (`diffma synth --size small`) and prepares them split by `fractions` (train, val, test); returns
    (prepared data folder, SynthRAD Task1 folder), both under a fresh folder named after `name`."""
    from diffma_cli.data.prepare import PrepareOptions, prepare
    from diffma_cli.data.synth import write_synthetic_tree

    def make(name: str, cases: int, fractions: tuple[float, float, float], seed: int = 0):
        root = tmp_path_factory.mktemp(name)
        write_synthetic_tree(root / "synth", ("brain",), cases, seed=seed, size="small", progress=False)
        prepare(root / "synth" / "Task1", root / "data", PrepareOptions(fractions=fractions), progress=False)
        return root / "data", root / "synth" / "Task1"

    return make

