"""Exponential moving average of a model's weights (paper "Training strategies": all results use EMA).

The released code starts the EMA at the initial weights and averages with the full decay from the first
step: after n steps the initialisation still holds a share decay^n of the average (0.9999^600 = 94 %), so a
short run exports weights that are mostly untrained. The warm-up (on by default, `ema_warmup`) uses
min(decay, (1 + n) / (10 + n)) at update n (as TensorFlow's ExponentialMovingAverage with num_updates does),
which leaves the initialisation a share of 9! n! / (n + 9)! after n updates: under 1e-11 at n = 100.
"""

from __future__ import annotations

import copy

import torch


def ema_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` in eval mode that starts equal to it (as the released code does)."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema.eval()


def ema_decay_at(decay: float, updates: int, warmup: bool = True) -> float:
    """The decay of EMA update number `updates` (0 for the first): `decay`, capped by the warm-up."""
    return min(decay, (1.0 + updates) / (10.0 + updates)) if warmup else decay


def initialisation_share(decay: float, updates: int, warmup: bool = True) -> float:
    """The weight the initial parameters keep in the EMA after `updates` updates (1 = none trained)."""
    if not warmup:
        return decay**updates
    share = 1.0
    for n in range(updates):
        share *= ema_decay_at(decay, n, warmup)
        if share < 1e-12:
            break
    return share


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; buffers are copied.

    decay 0 makes the EMA an exact copy of the model (used where no averaging is wanted).
    """
    for averaged, current in zip(ema.parameters(), model.parameters(), strict=True):
        averaged.mul_(decay).add_(current.detach(), alpha=1.0 - decay)
    for averaged, current in zip(ema.buffers(), model.buffers(), strict=True):
        averaged.copy_(current)
