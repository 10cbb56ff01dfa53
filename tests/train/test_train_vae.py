"""train-vae: the VAE task learns, and its run folder is a diffusers AutoencoderKL folder with val PSNR."""

import json

import pytest
import torch

from diffma_cli.config import apply_overrides, load_recipe
from diffma_cli.errors import OutputError
from diffma_cli.train import api
from diffma_cli.train.distributed import processes
from diffma_cli.train.loop import fit
from diffma_cli.train.vae import SlicesOfBothModalities, VAETask, reconstruction_psnr

SIZE = 32  # images of 32 x 32 -> latents 4 x 4 x 4: the VAE does not care about the size


def fake_slices(count, seed):
    """Smooth blobs as CT and their inverse as MR, (1, SIZE, SIZE) in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE),
                                      indexing="ij"))
    slices = []
    for index in range(count):
        centre = torch.rand(2, 1, 1, generator=generator) - 0.5
        ct = torch.tanh(3 * (0.5 - ((grid - centre) ** 2).sum(0).sqrt()))[None]
        slices.append({"ct": ct, "mr": -ct * 0.8, "mask": torch.ones_like(ct), "case": f"c{index}",
                       "slice": index})
    return slices


def tiny_recipe(**more):
    overrides = {"data.image_size": SIZE, "vae.block_out_channels": [8, 8, 16, 16], "vae.norm_num_groups": 4,
                 "vae.training.global_batch_size": 4, "vae.training.steps": 6, "vae.training.lr": 2e-3,
                 "vae.training.num_workers": 0, "vae.training.precision": "fp32", "vae.training.log_every": 2}
    overrides.update(more)
    return apply_overrides(load_recipe("demo"), overrides)


def test_vae_loss_falls_on_a_fixed_batch(tmp_path):
    recipe = tiny_recipe(**{"vae.training.global_batch_size": 8, "vae.training.steps": 30,
                          "vae.training.lr": 5e-3})
    task = VAETask(recipe.vae, SlicesOfBothModalities(fake_slices(4, 0)), SIZE)
    with processes("cpu") as where:
        result = fit(task, recipe.vae.training, tmp_path, where, progress=False)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_train_vae_writes_a_diffusers_folder_with_val_psnr(tmp_path, monkeypatch):
    splits = {"train": fake_slices(8, 1), "val": fake_slices(3, 2)}
    monkeypatch.setattr(api, "open_slices", lambda data_dir, split: splits[split])
    monkeypatch.setattr(api, "data_reference", lambda data_dir: {"path": str(data_dir)})
    out = api.train_vae(tmp_path / "data", tmp_path / "vae", tiny_recipe(), device="cpu", progress=False)

    from diffusers import AutoencoderKL

    from diffma_cli.encoders.vae import load_vae

    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["kind"] == "vae" and info["finished"] and info["steps"] == 6
    vae = AutoencoderKL.from_pretrained(out, local_files_only=True)
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 4
    # The stored PSNR is what an independent recomputation on the reloaded folder gives.
    assert reconstruction_psnr(vae, splits["val"], torch.device("cpu")) == pytest.approx(info["val_psnr_db"])
    assert set(info["val_psnr_db"]) == {"ct", "mr"}
    # The VAE loader of the encoders takes the folder, with the measured scale.
    frozen = load_vae(str(out), offline=True)
    assert frozen.scale == pytest.approx(info["scaling_factor"])
    lines = (out / "log.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]

    with pytest.raises(OutputError, match="already exists"):
        api.train_vae(tmp_path / "data", out, tiny_recipe(), device="cpu", progress=False)
