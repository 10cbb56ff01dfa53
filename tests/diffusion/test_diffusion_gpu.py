"""CUDA paths of the samplers, encoders and latent cache agree with the CPU (skipped without a GPU)."""

import pytest
import torch

from diffma_cli.data.latent_cache import LatentCache, ensure_latent_cache
from diffma_cli.diffusion.samplers import SAMPLERS, draw_noise, sample
from diffma_cli.encoders.clip import load_clip
from diffma_cli.encoders.vae import load_vae

pytestmark = pytest.mark.gpu


def toy_model(x, t):
    s = (t.float() / 1000.0).view(-1, 1, 1, 1)
    return torch.cat([0.3 * x + 0.2 * torch.sin(3 * x + s), torch.tanh(x - s)], dim=1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_on_cuda_match_cpu(sampler):
    noise = draw_noise((4, 4, 28, 28), torch.Generator().manual_seed(0))
    cpu = sample(toy_model, noise.shape, sampler, 20, initial_noise=noise, progress=False,
                 generator=torch.Generator().manual_seed(1))
    cuda = sample(toy_model, noise.shape, sampler, 20, initial_noise=noise, device="cuda", progress=False,
                  generator=torch.Generator("cuda").manual_seed(1))
    assert cuda.device.type == "cuda" and torch.isfinite(cuda).all()
    if sampler != "ddpm":  # ddpm's step noise comes from a CUDA generator: a different stream
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-3, atol=1e-3)


def test_encoders_on_cuda_in_bf16_follow_float32_cpu():
    images = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae_cpu, vae_gpu = load_vae("tiny"), load_vae("tiny", device="cuda", dtype=torch.bfloat16)
    clip_cpu, clip_gpu = load_clip("tiny"), load_clip("tiny", device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(vae_gpu.encode(images).mean.cpu(), vae_cpu.encode(images).mean,
                               rtol=0.05, atol=0.05)
    torch.testing.assert_close(clip_gpu.encode(images).cpu(), clip_cpu.encode(images), rtol=0.05, atol=0.05)
    assert vae_gpu.decode(vae_gpu.encode(images).mean * vae_gpu.scale).device.type == "cuda"


def test_latent_cache_built_on_cuda_matches_cpu(tmp_path):
    class Slices(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"ct": torch.rand(1, 224, 224, generator=g) * 2 - 1,
                    "mr": torch.rand(1, 224, 224, generator=g) * 2 - 1, "case": "1BA001", "slice": i}

    cpu = ensure_latent_cache(Slices(), tmp_path / "cpu.safetensors", load_vae("tiny"), load_clip("tiny"),
                              progress=False)
    gpu = ensure_latent_cache(Slices(), tmp_path / "gpu.safetensors", load_vae("tiny", device="cuda"),
                              load_clip("tiny", device="cuda"), device="cuda", progress=False)
    for key in ("source_mean", "target_std", "clip"):
        torch.testing.assert_close(LatentCache(gpu)[2][key], LatentCache(cpu)[2][key], rtol=1e-3, atol=1e-3)
