"""The released code's tiny baseline reference files (tests/data/released/README.md), read one way for the
model tests and the checkpoint-import tests."""

import json
from pathlib import Path

import torch
from safetensors import safe_open

RELEASED = Path(__file__).parent / "data" / "released"


def load_released_baseline(family: str):
    """(config, state dict, inputs x/t/y/y2/w, float64 expected output) of `baselines_<family>.safetensors`.

    The expected output is the released model's forward pass in float64 on the stored (float32) weights and
    inputs: unlike its float32 output, it does not depend on the CPU that made it (the float32 outputs of two
    CPU families differed by up to 1.7e-4 x max|y|, while either is within 2e-6 x max|y| of float64).
    """
    with safe_open(str(RELEASED / f"baselines_{family}.safetensors"), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state = {key.removeprefix("model."): value for key, value in tensors.items() if key.startswith("model.")}
    inputs = [tensors[f"input.{key}"] for key in ("x", "t", "y", "y2", "w")]
    return config, state, inputs, tensors["output_float64"]


def forward_in_float64(model: torch.nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.double()(*[x.double() if x.is_floating_point() else x for x in inputs])


def assert_matches_float64_reference(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Our float64 forward against the released one: measured within 2e-15 x max|y|; the bound leaves room
    for float64 summation order only."""
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10 * expected.abs().max().item())
