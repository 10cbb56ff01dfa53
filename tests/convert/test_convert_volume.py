"""convert_volume and its parts on small volumes: placement on the input grid, scales, masks, samples,
noise modes and the z filter, checked against hand-computed results, an oracle model and scipy."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from convert_cases import BODY_SLICES, SHAPE, as_image, body_of, ct_array
from scipy.ndimage import gaussian_filter1d
from torch import nn

from diffma_cli.convert import ConversionModels, SamplingOptions, convert_volume
from diffma_cli.convert.pipeline import starting_noise
from diffma_cli.diffusion.gaussian import released_betas
from diffma_cli.encoders.vae import Posterior
from diffma_cli.errors import InputError


class ConstantOracle(nn.Module):
    """A 'backbone' whose epsilon makes the denoised latent x0 equal `value` everywhere:
    eps = (x_t - sqrt(abar_t) * value) / sqrt(1 - abar_t) (DDPM parameterisation); variance output 0."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.in_channels = 4
        self.config = {"hidden_size": 32}
        self.register_buffer("abar", torch.cumprod(1 - released_betas(), 0).float())

    def forward(self, x, t, y, y2, w, source=None):  # source: the CT latent (model.condition)
        abar = self.abar[t].view(-1, 1, 1, 1)
        eps = (x - abar.sqrt() * self.value) / (1 - abar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


class PoolingVAE:
    """Stand-in autoencoder with a known decoder: encode = 8x8 average pooling copied to 4 channels,
    decode = nearest 8x upsampling of the channel mean (so a constant latent decodes to that constant)."""

    downsample, scale, latent_channels = 8, 1.0, 4

    def encode(self, images):
        mean = F.avg_pool2d(images, 8).expand(-1, 4, -1, -1)
        return Posterior(mean, torch.zeros_like(mean))

    def decode(self, latents):
        return F.interpolate(latents.mean(dim=1, keepdim=True), scale_factor=8).expand(-1, 3, -1, -1)


def oracle_models(models, value, direction="ct->mr"):
    from diffma_cli.config import apply_overrides

    recipe = apply_overrides(models.recipe, {"data.direction": direction})
    return ConversionModels(recipe, ConstantOracle(value), models.embedder, PoolingVAE(), models.clip,
                            torch.device("cpu"))


def array(image):
    return sitk.GetArrayFromImage(image)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_oracle_output_lands_on_the_input_grid_on_the_mr_scale(models, sampler):
    image = as_image(ct_array())
    options = SamplingOptions(sampler=sampler, steps=4)
    generated, std = convert_volume(image, oracle_models(models, 0.5), options, progress=False)
    assert std is None
    assert generated.GetSize() == image.GetSize() and generated.GetSpacing() == image.GetSpacing()
    assert generated.GetOrigin() == image.GetOrigin() and generated.GetDirection() == image.GetDirection()
    assert generated.GetPixelID() == sitk.sitkFloat32
    values = array(generated)
    expected = np.full(SHAPE, -1.0, np.float32)  # slices without body: the normalised background
    expected[list(BODY_SLICES)] = 0.5  # every voxel of a body slice, padding included, decodes to 0.5
    np.testing.assert_allclose(values, expected, atol=1e-4)


def test_mask_sets_the_outside_to_the_background_and_mr_to_ct_gives_hu(models):
    body = body_of()
    mask_image = as_image(body.astype(np.uint8))
    generated, _ = convert_volume(as_image(ct_array()), oracle_models(models, 0.5), body_mask=mask_image,
                                  mask=True, progress=False)
    np.testing.assert_allclose(array(generated), np.where(body, 0.5, -1.0), atol=1e-4)

    mr = np.where(body, 300.0 + np.arange(SHAPE[2]), 0.0).astype(np.float32)  # scanner units
    generated, _ = convert_volume(as_image(mr), oracle_models(models, 0.5, "mr->ct"), body_mask=mask_image,
                                  progress=False)
    # Recipe window [-1024, 3000] HU: 0.5 -> -1024 + 1.5 * 2012 = 1994 HU; background -1 -> -1024 HU.
    expected = np.full(SHAPE, -1024.0, np.float32)
    expected[list(BODY_SLICES)] = 1994.0
    np.testing.assert_allclose(array(generated), expected, atol=0.5)


def test_real_models_give_finite_values_on_the_normalised_scale(models):
    generated, _ = convert_volume(as_image(ct_array()), models, progress=False)
    values = array(generated)
    assert np.isfinite(values).all() and values.min() >= -1.0 and values.max() <= 1.0
    assert (values[[0, SHAPE[0] - 1]] == -1.0).all()  # no body there
    assert values[list(BODY_SLICES)].std() > 1e-3  # the model's output, not a fill value


def test_samples_give_the_mean_and_sample_std_of_single_runs(models):
    image = as_image(ct_array())
    mean, std = convert_volume(image, models, SamplingOptions(samples=2, seed=3), progress=False)
    first, _ = convert_volume(image, models, SamplingOptions(seed=3), progress=False)
    second, _ = convert_volume(image, models, SamplingOptions(seed=4), progress=False)
    a, b = array(first).astype(np.float64), array(second).astype(np.float64)
    np.testing.assert_allclose(array(mean), (a + b) / 2, atol=1e-5)
    np.testing.assert_allclose(array(std), np.abs(a - b) / np.sqrt(2), atol=1e-5)  # ddof 1
    assert std.GetDirection() == image.GetDirection() and array(std).max() > 0


def test_shared_noise_with_an_ode_sampler_makes_equal_slices_equal(models):
    ct = ct_array()
    ct[list(BODY_SLICES)] = ct[BODY_SLICES.start]  # the same anatomy on every body slice
    image = as_image(ct)
    shared_noise = SamplingOptions(sampler="ddim", noise="shared", batch_size=2)
    shared, _ = convert_volume(image, models, shared_noise, progress=False)
    independent_noise = SamplingOptions(sampler="ddim", batch_size=2)
    independent, _ = convert_volume(image, models, independent_noise, progress=False)
    body = array(shared)[list(BODY_SLICES)]
    np.testing.assert_allclose(body, np.broadcast_to(body[:1], body.shape), atol=1e-5)
    apart = array(independent)[list(BODY_SLICES)]
    assert np.abs(apart - apart[:1]).max() > 1e-3


def test_starting_noise_modes():
    generator = torch.Generator().manual_seed(0)
    shape = (400, 4, 6, 6)
    correlated = starting_noise(shape, "correlated", 0.8, generator)
    flat = correlated.reshape(shape[0], -1)
    neighbour = torch.corrcoef(torch.stack([flat[:-1].reshape(-1), flat[1:].reshape(-1)]))[0, 1]
    assert abs(float(neighbour) - 0.8) < 0.02 and abs(float(flat.std()) - 1.0) < 0.02
    shared = starting_noise(shape, "shared", 0.8, generator)
    assert torch.equal(shared, shared[:1].expand(shape))
    independent = starting_noise(shape, "independent", 0.8, generator).reshape(shape[0], -1)
    near = torch.corrcoef(torch.stack([independent[:-1].reshape(-1), independent[1:].reshape(-1)]))[0, 1]
    assert abs(float(near)) < 0.02


def test_smooth_z_filters_the_body_slices_along_z_only(models):
    image = as_image(ct_array())
    plain, _ = convert_volume(image, models, SamplingOptions(smooth_z=0.0), progress=False)
    smoothed, _ = convert_volume(image, models, SamplingOptions(smooth_z=1.0), progress=False)
    default, _ = convert_volume(image, models, progress=False)  # the default is this filter (consistency.md)
    np.testing.assert_array_equal(array(default), array(smoothed))
    expected = array(plain).copy()
    body = list(BODY_SLICES)
    expected[body] = gaussian_filter1d(expected[body].astype(np.float64), 1.0, axis=0, mode="nearest")
    np.testing.assert_allclose(array(smoothed), expected, atol=1e-5)


def test_input_problems_are_input_errors(models):
    raw = (ct_array().astype(np.int32) + 1024).astype(np.uint16)  # stored values without the intercept
    with pytest.raises(InputError, match="Hounsfield"):
        convert_volume(as_image(raw), models, progress=False)
    broken = ct_array().astype(np.float32)
    broken[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        convert_volume(as_image(broken), models, progress=False)
    with pytest.raises(InputError, match="no body"):
        convert_volume(as_image(ct_array()), models, body_mask=as_image(np.zeros(SHAPE, np.uint8)),
                       progress=False)
    other_grid = as_image(body_of().astype(np.uint8))
    other_grid.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="grid"):
        convert_volume(as_image(ct_array()), models, body_mask=other_grid, progress=False)
    for bad in ({"noise": "pink"}, {"steps": 0}, {"samples": 0}, {"noise_correlation": 1.5},
                {"smooth_z": -1.0}, {"sampler": "euler"}, {"batch_size": 0}):
        with pytest.raises(InputError):  # refused when the options are made, before any sampling
            convert_volume(as_image(ct_array()), models, SamplingOptions(**bad), progress=False)



def test_encoders_other_than_the_trained_ones_are_refused(tmp_path):
    import json

    from convert_cases import tiny_run

    from diffma_cli.convert import load_models
    from diffma_cli.runs import RUN_INFO

    run = tiny_run(tmp_path / "run")
    assert load_models(run, "cpu").vae.scale == pytest.approx(0.18215)  # recorded scale of the tiny VAE
    info = json.loads((run / RUN_INFO).read_text(encoding="utf-8"))
    info["encoders"]["vae"]["weights_sha256"] = "0" * 64  # trained with another VAE
    (run / RUN_INFO).write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(InputError, match="VAE named by the recipe"):
        load_models(run, "cpu")
