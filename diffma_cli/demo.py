"""`diffma demo`: the whole pipeline on synthetic data, on a CPU, in minutes.

synth (small brain phantoms) -> prepare (split by patient) -> train-vae (tiny) -> train-embedder ->
train (a tiny DiffMa) -> convert the test cases -> eval (both protocols, report). Every stage is the same
library call the corresponding command makes; the recipe is `recipes/demo.yaml`, sized for six cases (more
cases train proportionally longer, `demo_recipe`). The numbers it prints are those of a tiny model trained
for minutes on synthetic data: a check that everything runs, not a measure of what DiffMa can do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Small brain phantoms (4x coarser voxels): six cases give 4 train / 1 val / 1 test patients.
DEMO_CASES, DEMO_FRACTIONS = 6, (0.67, 0.17, 0.16)


@dataclass
class DemoResult:
    """Where the demo left everything, and the evaluation summary."""

    folder: Path
    run: Path
    predictions: Path
    metrics: Path
    report: Path
    summary: dict
    #: MAE of predicting one constant MR value inside the mask (the training cases' mean), on the same test
    #: cases: a model that does not beat it does not follow the CT.
    constant_mae: float


def demo_recipe(cases: int):
    """The demo recipe for `cases` synthetic patients. Its budgets are sized for DEMO_CASES; with more, every
    trainer runs proportionally more steps, so each training slice is seen about as often (at 18 cases the
    fixed budget trained a model worse than a constant MR value)."""
    from diffma_cli.config import apply_overrides, load_recipe

    recipe = load_recipe("demo")
    if cases <= DEMO_CASES:
        return recipe
    sections = {"vae.training": recipe.vae.training, "embedder.training": recipe.embedder.training,
                "training": recipe.training}
    return apply_overrides(recipe, {f"{name}.steps": math.ceil(section.steps * cases / DEMO_CASES)
                                    for name, section in sections.items()})


def _stage(say: Callable[[str], None], number: int, text: str) -> None:
    say(f"[{number}/7] {text}")


def run_demo(out: str | Path, *, overwrite: bool = False, device: str = "cpu", cases: int = DEMO_CASES,
             seed: int = 0, progress: bool = True, say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage into `out` (refused if it exists, unless `overwrite`); returns where things are."""
    import shutil

    from diffma_cli.config import apply_overrides
    from diffma_cli.convert.files import convert_path
    from diffma_cli.data.dataset import load_manifest
    from diffma_cli.data.prepare import PrepareOptions, prepare
    from diffma_cli.data.synth import write_synthetic_tree
    from diffma_cli.data.synthrad import find_cases
    from diffma_cli.devices import resolve_device
    from diffma_cli.evaluation.evaluate import evaluate_cases
    from diffma_cli.evaluation.pairing import pair_folder
    from diffma_cli.io.atomic import check_output
    from diffma_cli.train.api import train_diffusion, train_embedder, train_vae

    out = check_output(out, overwrite)
    resolve_device(device)  # a device that is not here fails now, not after minutes of synth and prepare
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    source, data, vae_dir = out / "synthrad", out / "data", out / "vae"
    embedder_dir, run_dir, predictions = out / "embedder", out / "run", out / "predictions"
    evaluation = out / "eval"

    _stage(say, 1, f"synth: {cases} synthetic brain cases -> {source}")
    write_synthetic_tree(source, ("brain",), cases, seed=seed, size="small", progress=progress)
    _stage(say, 2, f"prepare: split by patient, normalise, slice to 224² -> {data}")
    prepare(source / "Task1", data, PrepareOptions(anatomy="brain", fractions=DEMO_FRACTIONS, seed=seed),
            progress=progress)
    recipe = demo_recipe(cases)
    _stage(say, 3, f"train-vae: a tiny AutoencoderKL -> {vae_dir}")
    train_vae(data, vae_dir, recipe, device=device, progress=progress)
    recipe = apply_overrides(recipe, {"encoders.vae": str(vae_dir)})
    _stage(say, 4, f"train-embedder: CT Vision Embedder (InfoNCE) -> {embedder_dir}")
    train_embedder(data, embedder_dir, recipe, device=device, progress=progress)
    _stage(say, 5, f"train: a tiny {recipe.model.name} (scan {recipe.model.scan}), {recipe.training.steps} "
                   f"steps -> {run_dir}")
    train_diffusion(data, run_dir, recipe, embedder_dir, device=device, progress=progress)

    split = load_manifest(data)["splits"]
    every_case = find_cases(source / "Task1" / "brain")
    test_cases = [case for case in every_case if case.id in split["test"]]
    _stage(say, 6, f"convert: {len(test_cases)} test CT volume(s) -> {predictions}")
    predictions.mkdir()
    for case in test_cases:
        convert_path(case.ct, predictions / f"{case.id}.nii.gz", run_dir, device=device, progress=progress)
    _stage(say, 7, f"eval: SynthRAD2023 and paper protocols, report -> {evaluation}")
    pairs = pair_folder(predictions, source / "Task1" / "brain", "mr")
    metrics = evaluation / "metrics.json"
    report = evaluation / "report"
    summary = evaluate_cases(pairs, modality="mr", protocol="both", output=metrics, report=report,
                             progress=progress)
    train_cases = [case for case in every_case if case.id in split["train"]]
    return DemoResult(out, run_dir, predictions, metrics, report / "index.html", summary["summary"],
                      constant_mae(train_cases, test_cases))


def constant_mae(train_cases: list, test_cases: list) -> float:
    """Mean over `test_cases` of the MAE inside the mask of the constant predictor (the training cases' mean
    normalised MR inside their masks), on the scale `diffma eval` uses."""
    import numpy as np

    from diffma_cli.evaluation.calibration import normalised_case_mr, pooled_mean
    from diffma_cli.evaluation.metrics import masked_mae

    value = pooled_mean(map(normalised_case_mr, train_cases))
    scores = [masked_mae(np.full(mr.shape, value, np.float32), mr, mask)
              for mr, mask in map(normalised_case_mr, test_cases)]
    return float(np.mean(scores))

