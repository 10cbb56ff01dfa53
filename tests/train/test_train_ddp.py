"""Two processes (DDP over gloo on the CPU) train exactly like one process on the same global batches."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from standins import RegressionTask, embedder_task, latent_settings, regression_settings

from diffma_cli.train import run_log
from diffma_cli.train.checkpoint import latest_checkpoint
from diffma_cli.train.distributed import processes
from diffma_cli.train.loop import fit


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_json(result):
    return {"losses": result.losses, "model": {k: v.tolist() for k, v in result.model.state_dict().items()},
            "ema": {k: v.tolist() for k, v in result.ema.state_dict().items()}}


def _worker(rank, world_size, port, root):
    """One DDP process (as torchrun would start it): the stand-in regression, then the real embedder task."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with processes("cpu") as where:
        regression = fit(RegressionTask(), regression_settings(), root / "ddp-regression", where,
                         progress=False)
        embedder = fit(embedder_task(), latent_settings(epochs=2), root / "ddp-embedder", where,
                       progress=False)
        # 2 processes x 2 accumulation steps x micro-batches of 2 = the same global batch of 8.
        accumulated = fit(RegressionTask(), regression_settings(grad_accumulation=2),
                          root / "ddp-accumulated", where, progress=False)
    (root / f"rank{rank}.json").write_text(json.dumps({"regression": _as_json(regression),
                                                       "embedder": _as_json(embedder),
                                                       "accumulated": _as_json(accumulated)}),
                                           encoding="utf-8")


def _close(weights, reference, tolerance):
    for name, value in reference.state_dict().items():
        assert torch.tensor(weights[name]) == pytest.approx(value, abs=tolerance), name


def test_two_processes_match_one_process(tmp_path):
    with processes("cpu") as where:
        regression = fit(RegressionTask(), regression_settings(), tmp_path / "regression", where,
                         progress=False)
        embedder = fit(embedder_task(), latent_settings(epochs=2), tmp_path / "embedder", where,
                       progress=False)
    mp.spawn(_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]

    # Regression (3 epochs x 3 global batches of 8): each rank takes 4 of every 8, DistributedSampler style.
    assert ranks[0]["regression"]["losses"] == ranks[1]["regression"]["losses"]  # the global mean everywhere
    assert ranks[0]["regression"]["losses"] == pytest.approx(regression.losses, rel=1e-5)
    _close(ranks[0]["regression"]["ema"], regression.ema, 1e-5)
    _close(ranks[1]["regression"]["model"], regression.model, 1e-5)
    # Only rank 0 wrote the log and the checkpoints.
    assert len(run_log.read_records(tmp_path / "ddp-regression")) == 9
    assert latest_checkpoint(tmp_path / "ddp-regression").name == "step-0000009"
    # DDP with gradient accumulation (no gradient sync until the last micro-batch) gives the same steps.
    assert ranks[0]["accumulated"]["losses"] == pytest.approx(regression.losses, rel=1e-5)
    _close(ranks[0]["accumulated"]["model"], regression.model, 1e-5)

    # InfoNCE: negatives are gathered from every rank, so 2 x 2 slices give the loss and gradients of 4.
    assert len(embedder.losses) == 4 and embedder.losses[0] > 0.1  # a loss far from its floor of 0
    assert ranks[0]["embedder"]["losses"] == pytest.approx(embedder.losses, rel=1e-5)
    # Adam divides by the gradient's size: float rounding moves weights by ~1e-5, a wrong gradient by ~lr.
    _close(ranks[1]["embedder"]["model"], embedder.model, 2e-4)
