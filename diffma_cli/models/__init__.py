"""Diffusion backbones (DiffMa and the paper's baselines), the CT Vision Embedder and their parts.

    from diffma_cli.models import create_model, model_names
    model = create_model("DiffMa-B/2")                       # released size, released scan
    model = create_model("DiffMa-S/2", depth=2, scan="spiral")
    rebuilt = create_model(**model.config)                  # same architecture

Names: `DiffMa-{S,B,L,XL,XXL}/{2,4,7}`, `embedder/{2,4,7}` and the baselines (`DiT-B/2`, `ZigMa-BL/2`, …).
"""

from __future__ import annotations

from typing import Any

from diffma_cli.errors import InputError
from diffma_cli.models.baselines import BASELINE_FACTORIES
from diffma_cli.models.conditioning import CONDITIONS, check_condition
from diffma_cli.models.diffma import build_diffma
from diffma_cli.models.embedder import CTVisionEmbedder
from diffma_cli.models.registry import (
    Factory,
    create_model,
    model_names,
    register_model,
    resolve_settings,
)
from diffma_cli.models.scan_orders import SCAN_MODES

__all__ = ["create_model", "model_names", "register_model", "CONDITIONS", "MODEL_NAMES"]

#: Latent side of a 224² slice through the SD VAE (factor 8) and its channels: the released setting.
LATENT_SIZE, LATENT_CHANNELS = 28, 4
#: Width of every released model; it must equal BiomedCLIP's 512-d embedding, which is added to t.
HIDDEN_SIZE = 512
#: Released DiffMa depths (`model.py`).
DIFFMA_DEPTHS = {"S": 4, "B": 8, "L": 16, "XL": 28, "XXL": 56}
PATCH_SIZES = (2, 4, 7)


def _diffma_factory(name: str, depth: int, patch_size: int) -> Factory:
    defaults = {"input_size": LATENT_SIZE, "patch_size": patch_size, "in_channels": LATENT_CHANNELS,
                "hidden_size": HIDDEN_SIZE, "depth": depth, "learn_sigma": True, "scan": "released",
                "soft_mask": True, "d_state": 16, "condition": "released"}

    def factory(**overrides: Any):
        settings = resolve_settings(name, defaults, overrides)
        check_condition(name, settings["condition"])
        if settings["scan"] not in SCAN_MODES:
            raise InputError(f"{name}: unknown scan {settings['scan']!r}",
                             hint=f"choose one of {', '.join(SCAN_MODES)}")
        if settings["depth"] < 1 or settings["hidden_size"] < 4 or settings["hidden_size"] % 4:
            raise InputError(f"{name}: depth {settings['depth']}, hidden_size {settings['hidden_size']}",
                             hint="depth must be at least 1 and hidden_size a positive multiple of 4 "
                                  "(the 2-D sin-cos positions split it in four)")
        return build_diffma({"name": name, **settings})

    factory.__doc__ = f"{name}: DiffMa, depth {depth}, patch {patch_size}, width {HIDDEN_SIZE} (released)."
    return factory


def _embedder_factory(name: str, patch_size: int) -> Factory:
    defaults = {"input_size": LATENT_SIZE, "patch_size": patch_size, "in_channels": LATENT_CHANNELS,
                "hidden_size": HIDDEN_SIZE}

    def factory(**overrides: Any):
        settings = resolve_settings(name, defaults, overrides)
        return CTVisionEmbedder({"name": name, **settings}, **settings)

    factory.__doc__ = f"{name}: CT Vision Embedder, patch {patch_size}, width {HIDDEN_SIZE} (released)."
    return factory


for _size, _depth in DIFFMA_DEPTHS.items():
    for _patch in PATCH_SIZES:
        _name = f"DiffMa-{_size}/{_patch}"
        register_model(_name, _diffma_factory(_name, _depth, _patch))
for _patch in PATCH_SIZES:
    register_model(f"embedder/{_patch}", _embedder_factory(f"embedder/{_patch}", _patch))
for _name, _factory in BASELINE_FACTORIES.items():
    register_model(_name, _factory)

#: Every registered name at import time (the CLI's choices).
MODEL_NAMES: tuple[str, ...] = tuple(model_names())
