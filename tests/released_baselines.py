"""The released code's tiny baseline reference files (tests/data/released/README.md), read one way for the
model tests and the checkpoint-import tests."""

import json
from pathlib import Path

from safetensors import safe_open

RELEASED = Path(__file__).parent / "data" / "released"


def load_released_baseline(family: str):
    """(config, state dict, inputs x/t/y/y2/w, expected output) of `baselines_<family>.safetensors`."""
    with safe_open(str(RELEASED / f"baselines_{family}.safetensors"), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state = {key.removeprefix("model."): value for key, value in tensors.items() if key.startswith("model.")}
    inputs = [tensors[f"input.{key}"] for key in ("x", "t", "y", "y2", "w")]
    return config, state, inputs, tensors["output"]
