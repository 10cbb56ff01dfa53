"""A run trained with diffusion.objective=regression converts in one deterministic pass."""

import numpy as np
import SimpleITK as sitk
import torch
from convert_cases import LATENT, as_image, ct_array, tiny_run

from diffma_cli.config import apply_overrides, load_recipe, save_recipe
from diffma_cli.models import create_model
from diffma_cli.runs import BACKBONE, RECIPE
from diffma_cli.weights import save_model


def regression_run(path):
    """tiny_run's folder with a `latent` backbone and the regression objective in its recipe."""
    run = tiny_run(path)
    recipe = apply_overrides(load_recipe(run / RECIPE), {"diffusion.objective": "regression",
                                                         "model.condition": "latent"})
    save_recipe(recipe, run / RECIPE)
    torch.manual_seed(1)
    backbone = create_model("DiffMa-S/2", input_size=LATENT, depth=1, hidden_size=32, condition="latent")
    for parameter in backbone.final_layer.parameters():
        parameter.data.normal_(0, 0.02)
    (run / BACKBONE).unlink()
    save_model(backbone, run / BACKBONE)
    return run


def test_regression_run_converts_deterministically_and_follows_the_ct(tmp_path):
    from diffma_cli.convert import SamplingOptions, convert_volume, load_models

    models = load_models(regression_run(tmp_path / "run"), "cpu")
    assert models.recipe.diffusion.objective == "regression"
    ct = as_image(ct_array())
    first, std = convert_volume(ct, models, SamplingOptions(samples=2, seed=0, smooth_z=0.0), progress=False)
    second, _ = convert_volume(ct, models, SamplingOptions(samples=1, seed=5, smooth_z=0.0), progress=False)
    # No noise enters: any seed and any number of samples give the same volume, with zero spread.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))
    assert float(np.abs(sitk.GetArrayFromImage(std)).max()) == 0.0
    # The CT is the input: another CT gives another MR.
    other, _ = convert_volume(as_image(ct_array()[:, :, ::-1].copy()), models, SamplingOptions(smooth_z=0.0),
                              progress=False)
    assert np.abs(sitk.GetArrayFromImage(other) - sitk.GetArrayFromImage(first)).max() > 1e-4
