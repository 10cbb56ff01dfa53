"""Exponential moving average of a model's weights (paper "Training strategies": all results use EMA)."""

from __future__ import annotations

import copy

import torch


def ema_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` in eval mode that starts equal to it (as the released code does)."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; buffers are copied.

    decay 0 makes the EMA an exact copy of the model (used where no averaging is wanted).
    """
    for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
        averaged.mul_(decay).add_(current.detach(), alpha=1.0 - decay)
    for averaged, current in zip(ema.buffers(), model.buffers(), strict=True):
        averaged.copy_(current)
