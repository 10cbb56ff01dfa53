"""Native resolution: data.image_size other than the paper's 224 from prepare through training to convert
(at 64², tiny models), the size check between prepared data and recipe, the pelvis-512 recipe, and CLIP's
input resized to its own size."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.config import load_recipe, recipe_to_dict
from diffma_cli.runs import load_run

SIZE = 64
EMBEDDER_ARGS = ["--recipe", "demo", "--patch", "2", "--set", "embedder.embed_dim=32", "--batch-size", "4",
                 "--device", "cpu"]
TRAIN_ARGS = ["--recipe", "demo", "--size", "S", "--patch", "2", "--set", "model.hidden_size=32",
              "--set", "model.depth=1", "--batch-size", "2", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_a_64_pixel_run_from_prepare_to_convert(tmp_path):
    from diffma_cli.data.synth import write_synthetic_tree

    write_synthetic_tree(tmp_path / "synth", ("brain",), 3, seed=0, size="small", progress=False)
    data = tmp_path / "data"
    result = invoke("prepare", tmp_path / "synth" / "Task1", "-o", data, "--split", "0.34,0.33,0.33",
                    "--image-size", SIZE)
    assert result.exit_code == 0, result.output
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["options"]["size"] == SIZE
    case = next(iter(manifest["cases"].values()))
    assert np.load(data / case["files"]["ct"]).shape[1:] == (SIZE, SIZE)

    # A recipe of another slice size is refused before any run folder exists.
    wrong = invoke("train-embedder", data, "-o", tmp_path / "wrong", "--steps", "1", *EMBEDDER_ARGS)
    assert wrong.exit_code == 2 and f"{SIZE}²" in wrong.output and "--image-size 224" in wrong.output
    assert not (tmp_path / "wrong").exists()

    size = ["--set", f"data.image_size={SIZE}"]
    embedder = tmp_path / "embedder"
    result = invoke("train-embedder", data, "-o", embedder, "--steps", "2", *EMBEDDER_ARGS, *size)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    result = invoke("train", data, "-o", run, "--embedder", embedder, "--steps", "1", *TRAIN_ARGS, *size)
    assert result.exit_code == 0, result.output
    loaded = load_run(run)
    assert loaded.recipe.data.image_size == SIZE and loaded.backbone.config["input_size"] == SIZE // 8

    test_case = manifest["splits"]["test"][0]
    ct = manifest["cases"][test_case]["source"]["ct"]
    result = invoke("convert", ct, "-o", tmp_path / "mri.nii.gz", "--model", run, "--device", "cpu",
                    "--steps", "2")
    assert result.exit_code == 0, result.output
    source, converted = sitk.ReadImage(ct), sitk.ReadImage(str(tmp_path / "mri.nii.gz"))
    assert converted.GetSize() == source.GetSize() and converted.GetSpacing() == source.GetSpacing()
    assert np.isfinite(sitk.GetArrayFromImage(converted)).all()


def test_pelvis_512_is_pelvis_at_512():
    native, paper = recipe_to_dict(load_recipe("pelvis-512")), recipe_to_dict(load_recipe("pelvis"))
    assert native["data"].pop("image_size") == 512 and paper["data"].pop("image_size") == 224
    assert native == paper


def test_clip_sees_slices_of_any_size_at_its_own_size():
    from diffma_cli.data.latent_cache import clip_embedding
    from diffma_cli.encoders.clip import load_clip

    clip = load_clip("tiny")
    # A constant image resizes to the same constant: the embedding of a 64² slice must be that of 224².
    side = clip.image_size
    small, native = torch.full((2, 1, SIZE, SIZE), 0.3), torch.full((2, 1, side, side), 0.3)
    torch.testing.assert_close(clip_embedding(clip, small), clip.encode(native), atol=1e-5, rtol=1e-5)
    ramp = torch.linspace(-1, 1, SIZE).expand(1, 1, SIZE, SIZE)
    assert not torch.allclose(clip_embedding(clip, ramp), clip.encode(native[:1]), atol=1e-3)
    with pytest.raises(ValueError):  # the tower itself still insists on its size
        clip.encode(small)
