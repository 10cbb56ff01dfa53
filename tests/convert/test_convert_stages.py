"""convert marks its pipeline stages (diffma_cli.profiling) without any parameter for it."""

import contextlib

from convert_cases import as_image, ct_array

from diffma_cli.convert import SamplingOptions, convert_volume
from diffma_cli.profiling import observe_stages


def test_conversion_passes_through_every_stage(models):
    entered = []

    def observer(name):
        entered.append(name)
        return contextlib.nullcontext()

    with observe_stages(observer):
        convert_volume(as_image(ct_array()), models, SamplingOptions(sampler="ddim", steps=2), progress=False)
    assert set(entered) == {"prepare", "vae", "clip", "embedder", "backbone", "finish"}
    assert entered[0] == "prepare" and entered[-1] == "finish"
    assert entered.count("backbone") >= 2  # one network evaluation per sampler step
    assert entered.count("vae") >= 2  # encode before sampling, decode after
