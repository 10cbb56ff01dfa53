"""One registry of model names -> factories; the CLI's choices and `create_model` come from it.

A factory is `factory(**overrides) -> nn.Module` and must set `model.config`, a JSON-serialisable dict
{"name": registry name, every setting fully resolved}, so that `create_model(**model.config)` rebuilds
the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from diffma_cli.errors import InputError

Factory = Callable[..., nn.Module]

_FACTORIES: dict[str, Factory] = {}


def register_model(name: str, factory: Factory) -> None:
    """Add `name`; registering the same factory again is a no-op, a different one for a taken name fails."""
    if _FACTORIES.get(name, factory) is not factory:
        raise ValueError(f"model name {name!r} is already registered")
    _FACTORIES[name] = factory


def model_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_FACTORIES)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build registered model `name` with its released settings updated by `overrides`."""
    factory = _FACTORIES.get(name)
    if factory is None:
        family = name.split("-")[0].split("/")[0]
        close = [known for known in model_names() if known.startswith(family)] or model_names()
        raise InputError(f"unknown model {name!r}", hint=f"choose one of {', '.join(close)}")
    return factory(**overrides)


def resolve_settings(name: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """defaults updated by overrides; unknown keys are refused with the valid ones listed."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise InputError(f"{name} has no setting {', '.join(unknown)}",
                         hint=f"valid overrides: {', '.join(sorted(defaults))}")
    settings = {**defaults, **overrides}
    if settings["input_size"] % settings["patch_size"]:
        raise InputError(f"{name}: input_size {settings['input_size']} is not a multiple of "
                         f"patch_size {settings['patch_size']}")
    return settings
