"""Latent cache: equals direct encoding; reused while encoders and data are unchanged, rebuilt otherwise."""

import pytest
import torch
from torch.utils.data import Dataset, Subset

from diffma_cli.data.latent_cache import LatentCache, default_cache_file, ensure_latent_cache
from diffma_cli.encoders.clip import load_clip
from diffma_cli.encoders.vae import load_vae
from diffma_cli.errors import InputError


class StandInSlices(Dataset):
    """Items shaped like diffma_cli.data.dataset.PreparedSlices: (1, 224, 224) images in [-1, 1]."""

    def __init__(self, n=5):
        g = torch.Generator().manual_seed(0)
        self.ct = torch.rand(n, 1, 224, 224, generator=g) * 2 - 1
        self.mr = torch.rand(n, 1, 224, 224, generator=g) * 2 - 1
        self.mask = (torch.rand(n, 1, 224, 224, generator=g) > 0.5).float() * 2 - 1
        self.cases = ["1BA001", "1BA001", "1BA001", "1BC002", "1BC002"][:n]

    def __len__(self):
        return len(self.ct)

    def __getitem__(self, i):
        return {"ct": self.ct[i], "mr": self.mr[i], "mask": self.mask[i], "case": self.cases[i],
                "slice": i % 3}


@pytest.fixture(scope="module")
def encoders():
    return load_vae("tiny"), load_clip("tiny")


def test_cache_equals_direct_encoding(tmp_path, encoders):
    vae, clip = encoders
    slices = StandInSlices()
    path = ensure_latent_cache(slices, default_cache_file(tmp_path, "train"), vae, clip, batch_size=2,
                               progress=False)
    assert path == tmp_path / "latent_cache" / "train.safetensors"
    cache = LatentCache(path, "ct->mr")
    assert len(cache) == 5 and cache.scale == vae.scale
    for i in range(len(slices)):
        item, raw = cache[i], slices[i]
        ct, mr = vae.encode(raw["ct"][None]), vae.encode(raw["mr"][None])
        torch.testing.assert_close(item["source_mean"], ct.mean[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(item["source_std"], ct.std[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(item["target_mean"], mr.mean[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(item["target_std"], mr.std[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(item["clip"], clip.encode(raw["ct"][None])[0], rtol=1e-5, atol=1e-5)
        assert (item["case"], item["slice"]) == (raw["case"], raw["slice"])


def test_direction_mr_to_ct_swaps_source_and_target(tmp_path, encoders):
    vae, clip = encoders
    path = ensure_latent_cache(StandInSlices(3), tmp_path / "c.safetensors", vae, clip, clip_of="mr",
                               progress=False)
    forward = LatentCache(path.parent / "c.safetensors", "mr->ct")
    direct = clip.encode(StandInSlices(3)[1]["mr"][None])[0]
    torch.testing.assert_close(forward[1]["clip"], direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forward[1]["source_mean"], forward.tensors["mr_mean"][1])
    with pytest.raises(InputError, match="CLIP embeddings of mr"):
        LatentCache(path, "ct->mr")


def test_cache_is_reused_until_encoders_or_data_change(tmp_path, encoders):
    vae, clip = encoders
    slices, path = StandInSlices(2), tmp_path / "train.safetensors"
    ensure_latent_cache(slices, path, vae, clip, data_key="a", progress=False)
    built = path.stat().st_mtime_ns
    ensure_latent_cache(slices, path, vae, clip, data_key="a", progress=False)
    assert path.stat().st_mtime_ns == built  # same encoders, same data: reused

    ensure_latent_cache(slices, path, vae, load_clip("none"), data_key="a", progress=False)
    without_clip = LatentCache(path)
    assert "clip" not in without_clip[0] and path.stat().st_mtime_ns != built
    rebuilt = path.stat().st_mtime_ns
    ensure_latent_cache(slices, path, vae, load_clip("none"), data_key="b", progress=False)
    assert path.stat().st_mtime_ns != rebuilt  # the data changed


def test_unreadable_cache_is_rebuilt_and_bad_arguments_are_user_errors(tmp_path, encoders):
    vae, clip = encoders
    path = tmp_path / "train.safetensors"
    path.write_bytes(b"truncated")
    ensure_latent_cache(StandInSlices(1), path, vae, clip, progress=False)
    assert len(LatentCache(path)) == 1
    with pytest.raises(InputError, match="direction"):
        LatentCache(path, "ct->ct")
    with pytest.raises(InputError, match="no latent cache"):
        LatentCache(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="CLIP can encode"):
        ensure_latent_cache(StandInSlices(1), path, vae, clip, clip_of="mask", progress=False)


def test_cache_over_prepared_slices_equals_direct_encoding(encoders, small_brain_data):
    """The real data path: diffma synth -> prepare -> PreparedSlices -> cache."""
    from diffma_cli.data.dataset import PreparedSlices

    vae, clip = encoders
    data, _ = small_brain_data("latent-cache", 3, (0.4, 0.3, 0.3), seed=1)
    prepared = PreparedSlices(data, "val")
    slices = Subset(prepared, range(0, len(prepared), 8))  # every 8th slice keeps the test short
    path = ensure_latent_cache(slices, default_cache_file(data, "val"), vae, clip,
                               batch_size=16, progress=False)
    cache = LatentCache(path)
    assert len(cache) == len(slices) > 0
    for i in (0, len(slices) - 1):
        raw = slices[i]
        torch.testing.assert_close(cache[i]["target_mean"], vae.encode(raw["mr"][None]).mean[0],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache[i]["clip"], clip.encode(raw["ct"][None])[0], rtol=1e-5, atol=1e-5)
        assert (cache[i]["case"], cache[i]["slice"]) == (raw["case"], raw["slice"])
