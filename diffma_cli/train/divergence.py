"""Non-finite training steps: counted, warned about, and a run that mostly skips them stops as failed.

The loop skips an optimiser step whose loss is NaN or infinite (the weights stay as they were). A few such
steps are harmless; a run where most steps are skipped has learnt nothing (a temperature of 0, an absurd
learning rate), and exporting its weights as finished would hand garbage to `convert` without a word.
"""

from __future__ import annotations

import math

from diffma_cli.errors import InputError

#: Consecutive non-finite steps after which training stops at once: a skipped step leaves the weights as
#: they were, so this many in a row means the model or the loss itself is broken.
CONSECUTIVE_LIMIT = 50


class TrainingDiverged(InputError):
    """Most optimiser steps of a run had a non-finite loss; the run was left unfinished."""


class SkippedSteps:
    """Counts the non-finite steps of one `fit` call."""

    def __init__(self) -> None:
        self.steps = 0
        self.skipped = 0
        self.in_a_row = 0

    def record(self, loss: float) -> bool:
        """Count one step; True when its loss is finite (the optimiser may step)."""
        finite = math.isfinite(loss)
        self.steps += 1
        self.skipped += not finite
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.in_a_row >= CONSECUTIVE_LIMIT:
            raise self.error()
        return finite

    def check_at_end(self) -> None:
        """TrainingDiverged when more than half of the steps were skipped."""
        if self.steps and self.skipped * 2 > self.steps:
            raise self.error()

    def error(self) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged: {self.skipped} of {self.steps} steps were non-finite (NaN or infinite loss)",
            hint="the run is left unfinished; lower the learning rate or check the recipe (e.g. "
                 "embedder.tau) and start again with --overwrite")
