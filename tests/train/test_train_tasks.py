"""The embedder and diffusion tasks on in-memory latents: learning, InfoNCE over DDP, randomness."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from diffma_cli.config import TrainingConfig
from diffma_cli.diffusion.gaussian import GaussianDiffusion, released_betas
from diffma_cli.models import create_model
from diffma_cli.models.embedder import info_nce_loss
from diffma_cli.train.data_order import SampleRandomness
from diffma_cli.train.distributed import processes
from diffma_cli.train.loop import fit
from diffma_cli.train.tasks import DiffusionTask, EmbedderTask, sample_latents

LATENT = 28  # 224 / 8
EMBEDDER = ("embedder/7", {"hidden_size": 32})  # 4 x 4 = 16 tokens of width 32


class FakeLatents(Dataset):
    """Posteriors in the latent cache's layout: smooth random means, small stds."""

    def __init__(self, count, seed=0, spread=1.0):
        generator = torch.Generator().manual_seed(seed)
        # A common image plus `spread` x an individual one: small spreads make samples hard to tell apart.
        coarse = torch.randn(1, 2, 4, 7, 7, generator=generator) + spread * torch.randn(
            count, 2, 4, 7, 7, generator=generator)
        smooth = torch.nn.functional.interpolate(coarse.flatten(0, 1), size=LATENT)
        self.means = smooth.view(count, 2, 4, LATENT, LATENT)
        self.stds = 0.05 * torch.rand(count, 2, 4, LATENT, LATENT, generator=generator)

    def __len__(self):
        return len(self.means)

    def __getitem__(self, index):
        return {"source_mean": self.means[index, 0] * 5, "source_std": self.stds[index, 0],
                "target_mean": self.means[index, 1] * 5, "target_std": self.stds[index, 1]}


def settings(**changes):
    values = dict(lr=1e-3, global_batch_size=4, epochs=1, steps=0, ema_decay=0.9, checkpoint_every=1000,
                  log_every=1, seed=3, num_workers=0, precision="fp32")
    values.update(changes)
    return TrainingConfig(**values)


def embedder_task(count=8, spread=0.02):
    torch.manual_seed(0)
    return EmbedderTask(create_model(EMBEDDER[0], **EMBEDDER[1]), FakeLatents(count, spread=spread), 0.18215,
                        0.07, info_nce_loss)


def test_sampled_latents_follow_the_posterior_and_the_seeds():
    mean, std = torch.full((3, 4, 2, 2), 2.0), torch.full((3, 4, 2, 2), 0.5)
    first = sample_latents(mean, std, 0.5, SampleRandomness([1, 2, 3]))
    again = sample_latents(mean, std, 0.5, SampleRandomness([1, 2, 3]))
    assert torch.equal(first, again)
    expected = (2.0 + 0.5 * torch.randn((4, 2, 2), generator=torch.Generator().manual_seed(2))) * 0.5
    assert torch.equal(first[1], expected)


def test_embedder_task_loss_falls_and_mask_token_stays(tmp_path):
    task = embedder_task(spread=0.1)
    assert not task.model.vision_embedding.mask_token.requires_grad  # never used in forward
    with processes("cpu") as where:
        result = fit(task, settings(global_batch_size=8, steps=10, lr=1e-2), tmp_path, where, progress=False)
    assert result.losses[-1] < 0.3 * result.losses[0]


class FixedNoiseDiffusionTask(DiffusionTask):
    """The same timesteps and noise at every step: a truly fixed batch, which the model must fit."""

    def loss(self, model, batch, randomness):
        return super().loss(model, batch, SampleRandomness(range(len(randomness))))


def test_diffusion_task_loss_falls_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    embedder = create_model(EMBEDDER[0], **EMBEDDER[1]).requires_grad_(False)
    backbone = create_model("DiffMa-S/7", depth=2, hidden_size=32, scan="spiral")
    task = FixedNoiseDiffusionTask(backbone, embedder, GaussianDiffusion(released_betas()), FakeLatents(2),
                                   0.18215, clip_width=32)
    with processes("cpu") as where:
        result = fit(task, settings(global_batch_size=2, steps=5, lr=1e-2), tmp_path, where, progress=False)
    # Zero-initialised output layer: eps_hat = 0 at first, so the loss starts near E[eps^2] = 1.
    assert 0.8 < result.losses[0] < 1.5
    assert result.losses[-1] < 0.7 * result.losses[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_embedder(rank, world_size, port, run_dir, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with processes("cpu") as where:
        result = fit(embedder_task(), settings(epochs=2), run_dir, where, progress=False)
    weights = {k: v.tolist() for k, v in result.model.state_dict().items()}
    (out_dir / f"rank{rank}.json").write_text(json.dumps({"losses": result.losses, "weights": weights}))


def test_infonce_over_two_processes_matches_one_process(tmp_path):
    """Negatives are gathered from every rank, so 2 x 2 samples give the loss and gradients of 4."""
    with processes("cpu") as where:
        single = fit(embedder_task(), settings(epochs=2), tmp_path / "single", where, progress=False)
    (tmp_path / "ddp").mkdir()
    mp.spawn(_ddp_embedder, args=(2, _free_port(), tmp_path / "ddp", tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(single.losses) == 4 and single.losses[0] > 0.1  # a loss far from its floor of 0
    assert ranks[0]["losses"] == pytest.approx(single.losses, rel=1e-5)
    for name, value in single.model.state_dict().items():
        # Adam divides by the gradient's size: float rounding moves weights by ~1e-5, a wrong gradient by ~lr.
        assert torch.tensor(ranks[1]["weights"][name]) == pytest.approx(value, abs=2e-4)
