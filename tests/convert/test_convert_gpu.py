"""convert on CUDA (bf16 autocast): the same volume as on the CPU up to bf16 rounding; stage timer events."""

import numpy as np
import pytest
import SimpleITK as sitk
from convert_cases import BODY_SLICES, as_image, ct_array

from diffma_cli.convert import SamplingOptions, convert_volume, load_models
from diffma_cli.profiling import StageTimer, observe_stages


@pytest.mark.gpu
def test_cuda_conversion_agrees_with_the_cpu(run_dir):
    image = as_image(ct_array())
    ddim = SamplingOptions(sampler="ddim")
    on_cpu, _ = convert_volume(image, load_models(run_dir, "cpu"), ddim, progress=False)
    models = load_models(run_dir, "cuda")
    timer = StageTimer(models.device)
    with observe_stages(timer):
        on_gpu, _ = convert_volume(image, models, ddim, progress=False)
    body = list(BODY_SLICES)
    a, b = sitk.GetArrayFromImage(on_cpu)[body], sitk.GetArrayFromImage(on_gpu)[body]
    assert np.isfinite(b).all()
    # The starting noise is drawn on the CPU from the seed, so only bf16 rounding separates the two.
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95
    seconds = timer.seconds()
    assert seconds["backbone"] > 0 and seconds["vae"] > 0
