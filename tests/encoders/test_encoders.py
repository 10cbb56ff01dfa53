"""Frozen encoders: the VAE against diffusers' own AutoencoderKL calls, the CLIP tower against open_clip's
TimmModel, source kinds (tiny, folder, file, hub offline), identities, and clear errors. Nothing downloads."""

import json
import pathlib

import pytest
import torch

from diffma_cli.encoders.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, load_clip
from diffma_cli.encoders.source import identity_key
from diffma_cli.encoders.vae import SD_LATENT_SCALE, load_vae, tiny_autoencoder
from diffma_cli.errors import EnvironmentProblem, InputError, UnsafeFileError

# A core dependency, but a GPU machine given only the wheels it needs may lack it: skip this module there
# instead of stopping the collection of every other test (seen with `pytest -m gpu`).
TimmModel = pytest.importorskip("open_clip.timm_model").TimmModel


def slices(n=2, channels=1, size=224, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- VAE

def test_vae_encode_is_the_autoencoder_posterior_on_replicated_slices():
    vae = load_vae("tiny")
    images = slices()
    posterior = vae.encode(images)
    reference = tiny_autoencoder().encode(torch.cat([images] * 3, dim=1)).latent_dist
    assert posterior.mean.shape == (2, 4, 28, 28)
    torch.testing.assert_close(posterior.mean, reference.mean)
    torch.testing.assert_close(posterior.std, reference.std)


def test_vae_latents_are_scaled_samples_and_decode_unscales():
    vae = load_vae("tiny")
    assert vae.scale == SD_LATENT_SCALE == 0.18215
    posterior = vae.encode(slices())
    latents = vae.latents(posterior, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(latents, (posterior.mean + posterior.std * noise) * 0.18215)
    decoded = vae.decode(latents)
    rescaled = load_vae("tiny", scale=0.5)
    assert rescaled.scale == 0.5 and rescaled.identity == vae.identity
    torch.testing.assert_close(rescaled.decode(latents * 0.5 / 0.18215), decoded, rtol=1e-4, atol=1e-4)
    assert decoded.shape == (2, 3, 224, 224)
    with torch.no_grad():
        expected = tiny_autoencoder().decode(latents / 0.18215).sample
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)


def test_vae_loads_from_diffusers_folder_and_single_file_with_same_identity(tmp_path):
    tiny = load_vae("tiny")
    tiny_autoencoder().save_pretrained(tmp_path / "vae")
    from_folder = load_vae(str(tmp_path / "vae"))
    from_file = load_vae(str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"),
                         config=str(tmp_path / "vae"), offline=True)
    assert identity_key(from_folder.identity) == identity_key(tiny.identity)
    assert identity_key(from_file.identity) == identity_key(tiny.identity)
    images = slices(1)
    torch.testing.assert_close(from_file.encode(images).mean, tiny.encode(images).mean)


def test_vae_identity_changes_with_weights_and_dtype(tmp_path):
    other = tiny_autoencoder(seed=1)
    other.save_pretrained(tmp_path / "other")
    base = identity_key(load_vae("tiny").identity)
    assert identity_key(load_vae(str(tmp_path / "other")).identity) != base
    assert identity_key(load_vae("tiny", dtype=torch.bfloat16).identity) != base


def test_vae_hub_offline_without_cache_says_what_to_download():
    with pytest.raises(EnvironmentProblem, match="hf download stabilityai/sd-vae-ft-ema"):
        load_vae("stabilityai/sd-vae-ft-ema", offline=True)


def test_vae_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such encoder"):
        load_vae(str(tmp_path / "missing.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="AutoencoderKL folder"):
        load_vae(str(tmp_path / "empty"))
    tiny_autoencoder().save_pretrained(tmp_path / "vae")
    with pytest.raises(EnvironmentProblem, match="config"):
        load_vae(str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"), offline=True)


# ---------------------------------------------------------------- CLIP

@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory):
    """An open_clip checkpoint folder whose visual tower is open_clip's own TimmModel (ViT-Ti/16)."""
    torch.manual_seed(0)
    tower = TimmModel("vit_tiny_patch16_224", embed_dim=512, image_size=224, pool="", proj="linear").eval()
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    state["text.proj"] = torch.zeros(3, 3)  # a full CLIP also holds text weights: they must be ignored
    state["logit_scale"] = torch.tensor(4.6)
    folder = tmp_path_factory.mktemp("biomedclip")
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                            "timm_pool": "", "timm_proj": "linear",
                                                            "image_size": 224}},
              "preprocess_cfg": {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder, tower


def test_clip_matches_open_clip_tower_with_released_unnormalised_input(open_clip_folder):
    folder, tower = open_clip_folder
    clip = load_clip(str(folder))
    images = slices(1)
    with torch.no_grad():
        expected = tower(torch.cat([images] * 3, dim=1))
    out = clip.encode(images)
    assert out.shape == (1, 512)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_clip_normalize_option_applies_clip_mean_std(open_clip_folder):
    folder, tower = open_clip_folder
    clip = load_clip(str(folder / "open_clip_pytorch_model.bin"), normalize="clip")
    images = slices(1, channels=3)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tower(((images + 1) / 2 - mean) / std)
    torch.testing.assert_close(clip.encode(images), expected, rtol=1e-5, atol=1e-5)
    assert clip.identity["normalize"] == "clip"


def test_clip_none_gives_zeros_and_tiny_is_a_small_deterministic_tower():
    assert torch.equal(load_clip("none").encode(slices()), torch.zeros(2, 512))
    tiny = load_clip("tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 200_000
    out = tiny.encode(slices())
    assert out.shape == (2, 512) and out.abs().sum() > 0
    assert identity_key(tiny.identity) == identity_key(load_clip("tiny").identity)
    assert identity_key(tiny.identity) != identity_key(load_clip("none").identity)


def test_clip_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"visual.trunk.x": pathlib.PurePosixPath("not a tensor")}, path)
    with pytest.raises(UnsafeFileError, match="more than tensors"):
        load_clip(str(path))


def test_clip_hub_offline_without_cache_says_what_to_download():
    with pytest.raises(EnvironmentProblem, match="hf download microsoft/BiomedCLIP"):
        load_clip("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", offline=True)


def test_clip_weights_that_do_not_fit_are_an_input_error(tmp_path):
    torch.save({"visual.trunk.cls_token": torch.zeros(1, 1, 7)}, tmp_path / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224"}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(InputError, match="do not fit"):
        load_clip(str(tmp_path))
    with pytest.raises(InputError, match="normalisation"):
        load_clip("tiny", normalize="imagenet")

