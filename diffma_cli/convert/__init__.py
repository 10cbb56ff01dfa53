"""CT volume -> synthetic MR volume (or MR -> CT), the job `diffma convert` does (docs/convert.md).

    options.py   `SamplingOptions`: sampler, steps, seed, samples, slice consistency, TTA and combination
    models.py    `load_models`: a run folder's models and frozen encoders on one device
    pipeline.py  one volume: check, normalise, slice, sample, put back on the input grid, combine members
    files.py     files, DICOM series and folders of cases (resumable), written atomically
    cohort.py    a folder of cases shared among the processes `torchrun` starts

It needs a run folder (diffma_cli.runs) and the models, never the training code.
"""

from diffma_cli.convert.files import convert_path
from diffma_cli.convert.models import ConversionModels, load_models
from diffma_cli.convert.options import SamplingOptions
from diffma_cli.convert.pipeline import combine_volumes, convert_array, convert_volume, sample_slices

__all__ = ["ConversionModels", "SamplingOptions", "combine_volumes", "convert_array", "convert_path",
           "convert_volume", "load_models", "sample_slices"]
