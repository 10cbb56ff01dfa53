"""Small stand-ins shared by the training tests (and their spawned DDP workers)."""

import torch
from torch.utils.data import Dataset

from diffma_cli.config import TrainingConfig
from diffma_cli.models import create_model
from diffma_cli.models.embedder import info_nce_loss
from diffma_cli.train.tasks import EmbedderTask

LATENT = 28  # 224 / 8
EMBEDDER = ("embedder/7", {"hidden_size": 32})  # 4 x 4 = 16 tokens of width 32


class PairsDataset(Dataset):
    """y = x @ w_true + 0.5 with fixed x: 24 samples of 6 features."""

    def __init__(self):
        generator = torch.Generator().manual_seed(123)
        self.x = torch.randn(24, 6, generator=generator)
        self.y = self.x @ torch.linspace(-1, 1, 6) + 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index]}


class RegressionTask:
    """A small MLP regressing y from x plus per-sample input noise (so the per-sample randomness is used)."""

    find_unused_parameters = False

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
        self.dataset = PairsDataset()

    def loss(self, model, batch, randomness):
        noisy = batch["x"] + 0.01 * randomness.randn(6)
        return ((model(noisy).squeeze(-1) - batch["y"]) ** 2).mean()


def regression_settings(**changes):
    values = dict(lr=3e-2, global_batch_size=8, epochs=3, ema_decay=0.5, checkpoint_every=100, log_every=1,
                  seed=7, num_workers=0, precision="fp32")
    values.update(changes)
    return TrainingConfig(**values)


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


def latent_settings(**changes):
    values = dict(lr=1e-3, global_batch_size=4, epochs=1, steps=0, ema_decay=0.9, checkpoint_every=1000,
                  log_every=1, seed=3, num_workers=0, precision="fp32")
    values.update(changes)
    return TrainingConfig(**values)


def embedder_task(count=8, spread=0.02):
    torch.manual_seed(0)
    return EmbedderTask(create_model(EMBEDDER[0], **EMBEDDER[1]), FakeLatents(count, spread=spread), 0.18215,
                        0.07, info_nce_loss)
