"""The training loop shared by `train-vae`, `train-embedder` and `train`.

One optimiser step consumes one global batch of `global_batch_size` samples: every process (W of them)
runs `grad_accumulation` micro-batches of `global_batch_size / (W * grad_accumulation)` samples; each
micro-batch loss (a mean over its samples) is divided by the number of accumulation steps and DDP averages
gradients over processes, so the gradient is the mean over the whole global batch whatever W is.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from diffma_cli.config import TrainingConfig
from diffma_cli.errors import InputError
from diffma_cli.train import run_log
from diffma_cli.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from diffma_cli.train.data_order import (
    IndexedDataset,
    ResumableDistributedSampler,
    SampleRandomness,
    sample_seeds,
)
from diffma_cli.train.distributed import Processes, barrier, mean_over_processes
from diffma_cli.train.divergence import SkippedSteps
from diffma_cli.train.ema import ema_copy, ema_decay_at, initialisation_share, update_ema


class Task(Protocol):
    """What a training provides to the loop.

    `model` is the module whose parameters are trained (frozen parts it needs live in the task);
    `dataset` yields one sample per index; `loss(model, batch, randomness)` returns the mean loss over a
    micro-batch (a scalar) computed with `model` (possibly DDP-wrapped) and only with the random numbers
    of `randomness` (one generator per sample). `find_unused_parameters` is passed on to DDP.
    """

    model: torch.nn.Module
    dataset: Dataset
    find_unused_parameters: bool

    def loss(self, model: torch.nn.Module, batch, randomness: SampleRandomness) -> torch.Tensor: ...


@dataclass
class FitResult:
    """What `fit` leaves behind: the trained model and its EMA (on the training device), the loss of each
    optimiser step run by this call, the final state and the throughput."""

    model: torch.nn.Module
    ema: torch.nn.Module
    losses: list[float]
    state: TrainState
    images_per_second: float


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default (no loss scaling needed, unlike fp16); fp32 on CPU."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


def batch_sizes(settings: TrainingConfig, where: Processes, dataset_size: int) -> tuple[int, int]:
    """(micro-batch size per process, optimiser steps per epoch), or InputError when they do not fit."""
    per_step = where.world_size * settings.grad_accumulation
    if settings.global_batch_size % per_step:
        raise InputError(f"global batch size {settings.global_batch_size} is not divisible by "
                         f"{where.world_size} process(es) x {settings.grad_accumulation} accumulation steps",
                         hint="change training.global_batch_size or training.grad_accumulation")
    steps_per_epoch = dataset_size // settings.global_batch_size
    if steps_per_epoch < 1:
        raise InputError(f"the data set has {dataset_size} samples, fewer than one global batch "
                         f"({settings.global_batch_size})", hint="lower --batch-size or prepare more data")
    return settings.global_batch_size // per_step, steps_per_epoch


def fit(task: Task, settings: TrainingConfig, run_dir: str | Path, where: Processes, *,
        resume: bool = False, progress: bool = True, description: str = "train",
        after_step: Callable[[int, int, torch.nn.Module], None] | None = None) -> FitResult:
    """Train `task.model` as `settings` say; checkpoints and `log.jsonl` go to `run_dir` (from rank 0).

    With `resume`, training continues from the latest checkpoint in `run_dir` and gives the same losses
    as an uninterrupted run. `settings.steps` (> 0) or `settings.epochs` set where training stops.
    `after_step(step, total_steps, ema)` runs on rank 0 after every optimiser step and its log line (the
    other processes go on and wait for it at the next gradient exchange).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    if where.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = where.device
    micro_batch, steps_per_epoch = batch_sizes(settings, where, len(task.dataset))
    total_steps = settings.steps if settings.steps > 0 else settings.epochs * steps_per_epoch

    untrained = initialisation_share(settings.ema_decay, total_steps, settings.ema_warmup)
    if untrained > 0.5 and where.is_main:
        # The exported weights are the EMA: a run this short would export (mostly) its initialisation.
        print(f"diffma: warning: {description}: after {total_steps} steps at EMA decay {settings.ema_decay} "
              f"without warm-up, {untrained:.0%} of the exported weights are still the initialisation; "
              "set ema_warmup: true, a lower ema_decay or more steps", file=sys.stderr)
    model = task.model.to(device)
    model.train()
    ema = ema_copy(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, betas=tuple(settings.betas),
                                  weight_decay=settings.weight_decay)
    state = TrainState(seed=settings.seed, world_size=where.world_size,
                       global_batch_size=settings.global_batch_size)
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise InputError("has no checkpoint to resume from", path=run_dir,
                             hint="start a new run with --overwrite")
        state = load_checkpoint(checkpoint, model, ema, optimizer)
        if (state.seed, state.global_batch_size) != (settings.seed, settings.global_batch_size):
            raise InputError(f"the checkpoint was trained with seed {state.seed} and global batch "
                             f"{state.global_batch_size}; the recipe now says {settings.seed} and "
                             f"{settings.global_batch_size}", path=checkpoint,
                             hint="resume with the run's own recipe values")
        state.world_size = where.world_size
        if where.is_main:
            run_log.drop_records_after(run_dir, state.step)

    network = model
    if where.distributed:
        network = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False))
    replicas = network  # DDP's no_sync() lives on the wrapper, not on its compiled form
    if settings.compile:
        # Compiled around DDP (as PyTorch recommends, so its bucket hooks stay outside the graphs); the
        # uncompiled `model` keeps the parameters, so checkpoints, EMA and exported weights are unchanged.
        network = torch.compile(network)
    amp_dtype = autocast_dtype(settings.precision, device)
    sampler = ResumableDistributedSampler(task.dataset, where.world_size, where.rank, settings.seed)
    indexed = IndexedDataset(task.dataset)

    losses: list[float] = []
    window_losses: list[float] = []
    window_start, fit_start, fit_images = time.perf_counter(), time.perf_counter(), 0
    bar = tqdm(total=total_steps, initial=state.step, desc=description, unit="step", dynamic_ncols=True,
               disable=not (progress and where.is_main))
    last_saved = state.step if resume else -1
    skipped = SkippedSteps()
    # One loader for the whole run: its workers live across epochs (starting them again at every epoch cost
    # seconds per epoch on small data sets). The sampler is read in this process at each iter(), so
    # set_epoch below still decides the order of every epoch.
    loader = DataLoader(indexed, batch_size=micro_batch, sampler=sampler, drop_last=True,
                        num_workers=settings.num_workers, persistent_workers=settings.num_workers > 0,
                        pin_memory=device.type == "cuda")
    while state.step < total_steps:
        sampler.set_epoch(state.epoch, start=state.batch_in_epoch * settings.grad_accumulation * micro_batch)
        micro_batches = iter(loader)
        while state.batch_in_epoch < steps_per_epoch and state.step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=device)
            for accumulation in range(settings.grad_accumulation):
                indices, batch = next(micro_batches)
                randomness = SampleRandomness(sample_seeds(settings.seed, state.epoch, indices), device)
                last = accumulation == settings.grad_accumulation - 1
                # DDP averages gradients at the last micro-batch only; the others just accumulate.
                sync = contextlib.nullcontext() if last or not where.distributed else replicas.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = task.loss(network, _to_device(batch, device), randomness)
                    (loss / settings.grad_accumulation).backward()
                step_loss += loss.detach().float() / settings.grad_accumulation
            step_loss = mean_over_processes(step_loss, where).item()
            if skipped.record(step_loss):  # a non-finite step leaves the weights as they were
                optimizer.step()
                # The warm-up counts optimiser steps (a resumed run continues where it stopped).
                update_ema(ema, model, ema_decay_at(settings.ema_decay, state.step, settings.ema_warmup))
            state.step += 1
            state.batch_in_epoch += 1
            losses.append(step_loss)
            window_losses.append(step_loss)
            fit_images += settings.global_batch_size

            if state.step % settings.log_every == 0 or state.step == total_steps:
                now = time.perf_counter()
                speed = len(window_losses) * settings.global_batch_size / max(now - window_start, 1e-9)
                finite = [value for value in window_losses if math.isfinite(value)]
                mean_loss = sum(finite) / len(finite) if finite else float("nan")
                if where.is_main:
                    run_log.append_record(run_dir, {
                        "step": state.step, "epoch": state.epoch, "loss": mean_loss,
                        "skipped_steps": len(window_losses) - len(finite), "lr": settings.lr,
                        "images_per_s": round(speed, 3), "time": time.time()})
                bar.set_postfix(loss=f"{mean_loss:.4g}", img_s=f"{speed:.1f}")
                if where.is_main and len(finite) < len(window_losses):
                    bar.write(f"diffma: warning: {len(window_losses) - len(finite)} of the last "
                              f"{len(window_losses)} steps had a non-finite loss and were skipped",
                              file=sys.stderr)
                window_losses, window_start = [], now
            if after_step is not None and where.is_main:
                after_step(state.step, total_steps, ema)
            bar.update(1)

            if state.step % settings.checkpoint_every == 0 or state.step == total_steps:
                _checkpoint(run_dir, model, ema, optimizer, state, where)
                last_saved = state.step
        if state.batch_in_epoch >= steps_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
    if last_saved != state.step:
        _checkpoint(run_dir, model, ema, optimizer, state, where)
    bar.close()
    skipped.check_at_end()
    elapsed = time.perf_counter() - fit_start
    return FitResult(model=model, ema=ema, losses=losses, state=state,
                     images_per_second=fit_images / elapsed if fit_images else 0.0)


def _checkpoint(run_dir: Path, model, ema, optimizer, state: TrainState, where: Processes) -> None:
    if where.is_main:
        save_checkpoint(run_dir, model, ema, optimizer, state)
    barrier(where)
