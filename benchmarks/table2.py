"""The paper's Table 2 as a command: DiffMa in each conditioning mode and its baselines at one recipe and
one training budget, converted and scored on the test split, read against trivial predictors and ceilings
(docs/quality.md).

    python3 benchmarks/table2.py DATA SRC -o OUT [--backbones diffma-latent,dit] [--recipe brain]
        [--set key=value ...] [--steps N | --images N | --train-minutes M] [--embedder RUN]
        [--sampler dpm] [--sample-steps 25] [--samples K [--samples-of KEY]]
        [--tta-of KEY,... [--tta-samples K]] [--ensemble KEY+KEY] [--calibration ...]
        [--device auto]

DATA is a `diffma prepare` folder, SRC the SynthRAD Task 1 tree it was prepared from (the test split's CT,
MR and mask volumes are read from there). For every chosen backbone (ENTRIES) the script

1. trains it with the library's `train_diffusion` (same recipe, same embedder, same number of optimiser
   steps and global batch, hence the same number of training images) into OUT/<key>/run;
2. converts the CT of every test case with `convert_volume` (the case's mask as the body), timing each
   volume, into OUT/<key>/predictions/ and OUT/<key>/convert.json (parameters, seconds per case);
3. scores the predictions with `evaluate_cases` (SynthRAD2023 protocol on the normalised MR scale and the
   paper's per-slice protocol) into OUT/<key>/metrics.json (+ metrics.csv).

With --samples K, the --samples-of rows are also converted as the mean of K samples (OUT/<key>-mean<K>);
the --tta-of rows also with the left-right mirror image averaged in (OUT/<key>-tta, `convert --tta flip`;
with --tta-samples K, K samples of each image: OUT/<key>-tta-mean<K>);
--ensemble A+B adds the mean of the trained rows A and B (OUT/ensemble-A+B, `convert --model A --model B`).
The calibration rows (CALIBRATION, `diffma_cli.evaluation.calibration`) are written as volumes and scored
the same way: a constant (the training cases' mean MR inside the mask), another test patient's MR, the
per-case affine CT->MR map fitted on the case's own MR, the phantom's noise-free MR (oracle; data from
`diffma synth` only) and the reference through the first row's VAE (ceiling of latent models). The table
(OUT/table.md, OUT/table.json) is then built from those files alone: metrics from metrics.json, images/s
and steps from run/run.json, parameters and seconds per volume from convert.json.

Resumable: a finished stage (run folder finished, convert.json, metrics.json) is skipped; a training that
was stopped continues from its last checkpoint (the trainer's resume). The budget is fixed in OUT/plan.json
at the first call, so later calls (other backbones, a resumed run) train with the same number of images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path


def _diffma(condition: str, soft_mask: bool = True, scan: str = "spiral") -> dict:
    return {"model.name": "DiffMa-B/2", "model.scan": scan, "model.soft_mask": soft_mask,
            "model.condition": condition}


# key -> (label, recipe overrides). DiffMa-B/2 in each conditioning mode (models/conditioning.py), the
# soft-mask ablation and the paper's Table 2 baselines, sizes as in the released code (the Mamba baselines
# at BL/2, 13 blocks, to match DiffMa-B/2's parameter count; docs/baselines.md). The baselines take the
# recipe's model.condition (set it with --set model.condition=...); their label names it.
ENTRIES: dict[str, tuple[str, dict]] = {
    "diffma-released": ("DiffMa-B/2, released condition (as released)", _diffma("released")),
    "diffma-tokens": ("DiffMa-B/2, tokens (paper Eq. 6)", _diffma("tokens")),
    "diffma-latent": ("DiffMa-B/2, latent", _diffma("latent")),
    "diffma-latent-tokens": ("DiffMa-B/2, latent+tokens", _diffma("latent+tokens")),
    # The same with three times the paper's learning rate: at a short budget the row is still improving
    # (the loss falls to the last step), so a larger step is the cheapest way to train it further.
    "diffma-latent-tokens-lr3e-4": ("DiffMa-B/2, latent+tokens, AdamW lr 3e-4",
                                    {**_diffma("latent+tokens"), "training.lr": 3e-4}),
    # The same with the ε loss weighted by min(SNR_t, 5) / SNR_t (Min-SNR-γ, Hang et al. 2023): it takes the
    # weight off the nearly clean timesteps (the authors report 3.4x faster convergence on ImageNet).
    "diffma-latent-tokens-min-snr": ("DiffMa-B/2, latent+tokens, Min-SNR-5 loss weighting",
                                     {**_diffma("latent+tokens"), "diffusion.mse_weighting": "min-snr"}),
    "diffma-latent-no-mask": ("DiffMa-B/2, latent, no soft mask (w = 1)", _diffma("latent", False)),
    "diffma-latent-tokens-no-mask": ("DiffMa-B/2, latent+tokens, no soft mask (w = 1)",
                                     _diffma("latent+tokens", False)),
    "diffma-released-scan": ("DiffMa-B/2, released scan and condition", _diffma("released", scan="released")),
    # The deterministic predictor users would otherwise pick (SynthRAD's winners regress): the same backbone,
    # data and condition, trained to map the CT latent to the MR latent in one pass.
    "diffma-regression": ("DiffMa-B/2 as a one-pass regression, latent+tokens",
                          {**_diffma("latent+tokens"), "diffusion.objective": "regression"}),
    "dit": ("DiT-B/2", {"model.name": "DiT-B/2"}),
    "zigma": ("ZigMa-BL/2", {"model.name": "ZigMa-BL/2"}),
    "vim": ("ViM-BL/2", {"model.name": "ViM-BL/2"}),
    "vmamba": ("VMamba-BL/2", {"model.name": "VMamba-BL/2"}),
    "emamba": ("EMamba-BL/2", {"model.name": "EMamba-BL/2"}),
}
# Rows that need no learning (trivial predictors) and ceilings, in table order (evaluation/calibration.py).
CALIBRATION: dict[str, str] = {
    "constant": "constant: mean training MR inside the mask",
    "other-patient": "other patient: another test case's MR, centres aligned",
    "affine": "affine CT->MR map fitted on each test case's own MR",
    "oracle": "oracle: the phantom's MR before noise (ceiling)",
    "vae-ceiling": "reference MR through the run's VAE (ceiling of latent models)",
}
# (metrics.json key, column title, decimals)
METRICS = (("mae", "MAE", 4), ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("pearson", "ρ", 3),
           ("paper_ssim", "paper SSIM (%)", 2), ("paper_psnr", "paper PSNR (dB)", 2),
           ("paper_mse", "paper MSE", 1))
PLAN, TABLE_JSON, TABLE_MD = "plan.json", "table.json", "table.md"
RUN, PREDICTIONS, CONVERT, METRICS_FILE = "run", "predictions", "convert.json", "metrics.json"
# Rows that combine trained rows: "<entry>-tta" (with the mirror image) and "ensemble-A+B".
TTA_SUFFIX, ENSEMBLE_PREFIX = "-tta", "ensemble-"
# About ten checkpoints per training, so that an interrupted run loses at most a tenth of its steps.
CHECKPOINTS_PER_RUN = 10


def tta_key(key: str, samples: int) -> str:
    """The row of `key` with the mirror image averaged in: "<key>-tta", or "<key>-tta-mean<K>" for K samples
    of each image (row_label reads both back)."""
    return f"{key}{TTA_SUFFIX}" + (f"-mean{samples}" if samples > 1 else "")


def say(text: str) -> None:
    print(f"[table2 {time.strftime('%H:%M:%S')}] {text}", flush=True)


def write_json(path: Path, values: dict, overwrite: bool = False) -> None:
    from diffma_cli.io.atomic import atomic_file

    with atomic_file(path, overwrite=overwrite) as temporary:
        temporary.write_text(json.dumps(values, indent=1, allow_nan=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- inputs

def choose_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated option, stripped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def choose_entries(text: str) -> list[str]:
    """The ENTRIES keys of a comma-separated list; "none" for the calibration rows alone."""
    from diffma_cli.errors import InputError

    if text.strip() == "none":
        return []
    keys = choose_list(text)
    unknown = [key for key in keys if key not in ENTRIES]
    if unknown or not keys:
        raise InputError(f"unknown backbone {unknown[0] if unknown else text!r}",
                         hint=f"choose from: {', '.join(ENTRIES)}")
    return keys


def test_cases(data: Path, src: Path) -> list:
    """The SynthRAD cases of SRC that DATA's manifest puts in the test split (each with CT, MR and mask)."""
    from diffma_cli.data.dataset import load_manifest
    from diffma_cli.data.synthrad import find_cases
    from diffma_cli.errors import InputError

    test_ids = set(load_manifest(data)["splits"]["test"])
    cases = [case for case in find_cases(src) if case.id in test_ids]
    if not cases:
        raise InputError(f"none of the {len(test_ids)} test cases of {data} is in this SynthRAD tree",
                         path=src, hint="give the tree DATA was prepared from")
    missing = [case.id for case in cases if None in (case.ct, case.mr, case.mask)]
    if missing:
        raise InputError(f"test case {missing[0]} lacks its CT, MR or mask", path=src)
    return cases


def base_recipe(args):
    from diffma_cli.config import apply_overrides, load_recipe
    from diffma_cli.errors import InputError

    recipe = apply_overrides(load_recipe(args.recipe), args.set)
    if recipe.data.direction != "ct->mr":
        raise InputError(f"data.direction {recipe.data.direction} is not supported here",
                         hint="the table compares CT -> MR models (data.direction=ct->mr)")
    return recipe


def entry_recipe(recipe, key: str, steps: int, diffma_model: str | None = None):
    """The recipe of row `key`; `diffma_model` replaces the DiffMa rows' DiffMa-B/2 (e.g. the demo's
    DiffMa-S/4 for a table that trains on a CPU), keeping the recipe's model.depth and hidden_size."""
    from diffma_cli.config import apply_overrides

    every = min(recipe.training.checkpoint_every, max(1, steps // CHECKPOINTS_PER_RUN))
    overrides = dict(ENTRIES[key][1])
    if diffma_model and overrides.get("model.name") == "DiffMa-B/2":
        overrides["model.name"] = diffma_model
    return apply_overrides(recipe, {**overrides, "training.steps": steps, "training.checkpoint_every": every})


# ---------------------------------------------------------------- budget

def train_steps_of(recipe, slices: int) -> int:
    """Optimiser steps the recipe's `training` section means on `slices` training slices."""
    training = recipe.training
    if training.steps > 0:
        return training.steps
    return training.epochs * math.ceil(slices / training.global_batch_size)


def plan_budget(args, out: Path, recipe, keys: list[str], embedder: Path) -> dict:
    """The training budget shared by every backbone: OUT/plan.json if it exists, else decided now from
    --steps, --images, --train-minutes (probe runs measure each backbone's images/s) or the recipe."""
    from diffma_cli.data.dataset import load_manifest
    from diffma_cli.errors import InputError

    batch = recipe.training.global_batch_size
    path = out / PLAN
    if path.is_file():
        plan = json.loads(path.read_text(encoding="utf-8"))
        asked = {"steps": args.steps, "images": args.images, "train_minutes": args.train_minutes}
        if plan["global_batch_size"] != batch or any(value is not None and plan["asked"].get(name) != value
                                                     for name, value in asked.items()):
            raise InputError(f"this table was planned with {plan['steps']} steps of "
                             f"{plan['global_batch_size']} images ({plan['asked']}); another budget "
                             "would make the rows incomparable",
                             path=path, hint="drop the budget options to continue it, or use a new -o folder")
        return plan
    if args.steps is not None:
        steps, how = args.steps, "--steps"
    elif args.images is not None:
        steps, how = math.ceil(args.images / batch), "--images"
    elif args.train_minutes is not None:
        speeds = {key: probe_speed(args, out, recipe, key, embedder) for key in keys}
        images = args.train_minutes * 60.0 / sum(1.0 / speed for speed in speeds.values())
        steps, how = max(1, int(images // batch)), f"--train-minutes (probe images/s: {speeds})"
    else:
        steps = train_steps_of(recipe, load_manifest(args.data)["slice_counts"]["train"])
        how = "the recipe's training.steps / epochs"
    if steps < 1:
        raise InputError(f"the budget gives {steps} training steps", hint="give at least one step")
    plan = {"steps": steps, "global_batch_size": batch, "images": steps * batch, "decided_by": how,
            "asked": {"steps": args.steps, "images": args.images, "train_minutes": args.train_minutes}}
    write_json(path, plan)
    say(f"budget: {steps} steps x {batch} images = {steps * batch} training images per backbone ({how})")
    return plan


def probe_speed(args, out: Path, recipe, key: str, embedder: Path) -> float:
    """Training images/s of one backbone: a run of --probe-steps steps logged in three windows; the last
    window's speed (the first holds start-up: data workers, kernel selection, compilation)."""
    from diffma_cli.config import apply_overrides
    from diffma_cli.train.api import train_diffusion
    from diffma_cli.train.run_log import read_records

    folder = out / ".probe" / key
    say(f"{key}: probing training speed over {args.probe_steps} steps")
    probe = apply_overrides(entry_recipe(recipe, key, args.probe_steps, args.diffma_model),
                            {"training.log_every": max(1, args.probe_steps // 3)})
    train_diffusion(args.data, folder, probe, embedder, device=args.device, overwrite=True,
                    progress=not args.quiet)
    speed = float(read_records(folder)[-1]["images_per_s"])
    shutil.rmtree(folder)
    return speed


# ---------------------------------------------------------------- stages

def resumable(run: Path) -> bool:
    """A started run with at least one checkpoint (the trainer resumes from the latest); a run stopped
    before its first checkpoint starts again."""
    return any((run / "checkpoints").glob("step-*"))


def finished_run(run: Path) -> bool:
    from diffma_cli.runs import BACKBONE, RUN_INFO

    if not (run / RUN_INFO).is_file():
        return False
    info = json.loads((run / RUN_INFO).read_text(encoding="utf-8"))
    return bool(info.get("finished")) and (run / BACKBONE).is_file()


def ensure_embedder(args, out: Path, recipe) -> Path:
    """--embedder as given, else OUT/embedder trained once (continued if it was interrupted)."""
    from diffma_cli.runs import EMBEDDER
    from diffma_cli.train.api import train_embedder

    if args.embedder is not None:
        return args.embedder
    run = out / "embedder"
    if (run / EMBEDDER).is_file():
        say(f"embedder: {run} is finished, skipped")
        return run
    say(f"embedder: training -> {run}")
    train_embedder(args.data, run, recipe, device=args.device, resume=resumable(run),
                   overwrite=not resumable(run), progress=not args.quiet)
    return run


def train_entry(args, folder: Path, recipe, embedder: Path) -> Path:
    from diffma_cli.train.api import train_diffusion

    run = folder / RUN
    if finished_run(run):
        say(f"{folder.name}: training finished before, skipped")
        return run
    resume = resumable(run)
    say(f"{folder.name}: {'resuming' if resume else 'training'} {recipe.model.name} "
        f"for {recipe.training.steps} steps -> {run}")
    train_diffusion(args.data, run, recipe, embedder, device=args.device, resume=resume,
                    overwrite=not resume, progress=not args.quiet)
    return run


def convert_entry(args, folder: Path, runs: list[Path], cases: list, samples: int = 1,
                  tta: str = "none") -> None:
    """Every test CT -> OUT/<key>/predictions/<case>.nii.gz: the mean over the runs (an ensemble when more
    than one), `samples` samples and, with tta "flip", the mirror image; convert.json with parameters and
    seconds."""
    from diffma_cli.convert import SamplingOptions, convert_volume, load_models
    from diffma_cli.io.atomic import atomic_dir
    from diffma_cli.io.volumes import read_volume, write_volume

    if (folder / CONVERT).is_file():
        say(f"{folder.name}: conversion finished before, skipped")
        return
    say(f"{folder.name}: converting {len(cases)} test volume(s)")
    ensemble = [load_models(run, args.device) for run in runs]
    for models in ensemble:
        warm_up(args, models, cases[0])
    seconds = {}
    with atomic_dir(folder / PREDICTIONS, overwrite=True) as predictions:
        for case in cases:
            ct, body = read_volume(case.ct), read_volume(case.mask)
            began = time.perf_counter()
            # The output arrives as a SimpleITK image built from a NumPy array: the GPU work is done.
            # smooth_z=0: the rows score each backbone as published, without convert's default through-plane
            # filter (docs/consistency.md), which would flatter every row alike.
            options = SamplingOptions(sampler=args.sampler, steps=args.sample_steps, smooth_z=0.0,
                                      samples=samples, tta=tta)
            generated, _ = convert_volume(ct, ensemble, options, body_mask=body, progress=not args.quiet,
                                          source=case.ct)
            seconds[case.id] = time.perf_counter() - began
            write_volume(generated, predictions / f"{case.id}.nii.gz")
    parameters = sum(parameter.numel() for models in ensemble for parameter in models.backbone.parameters())
    first = ensemble[0]
    write_json(folder / CONVERT, {
        "parameters": parameters, "seconds_per_volume": seconds, "device": str(first.device),
        "samples": samples, "tta": tta, "runs": [str(run.relative_to(folder.parent)) for run in runs],
        "sampler": args.sampler or first.recipe.sampling.sampler,
        "steps": args.sample_steps or first.recipe.sampling.steps}, overwrite=True)


def warm_up(args, models, case) -> None:
    """Convert one batch of body slices of `case` untimed, so that the first timed volume does not pay for
    kernel selection and compilation (seconds per volume would otherwise depend on the case order)."""
    import numpy as np
    import SimpleITK as sitk

    from diffma_cli.convert import SamplingOptions, convert_volume
    from diffma_cli.io.volumes import read_volume

    ct, body = read_volume(case.ct), read_volume(case.mask)
    z = np.flatnonzero(sitk.GetArrayFromImage(body).any(axis=(1, 2)))
    count = min(len(z), models.recipe.sampling.batch_size)
    start = int(z[len(z) // 2 - count // 2])
    options = SamplingOptions(sampler=args.sampler, steps=args.sample_steps, smooth_z=0.0)
    convert_volume(ct[:, :, start:start + count], models, options, body_mask=body[:, :, start:start + count],
                   progress=False, source=case.ct)


def evaluate_entry(args, folder: Path) -> None:
    from diffma_cli.evaluation.evaluate import evaluate_cases
    from diffma_cli.evaluation.pairing import pair_folder

    if (folder / METRICS_FILE).is_file():
        say(f"{folder.name}: evaluation finished before, skipped")
        return
    say(f"{folder.name}: scoring with the SynthRAD2023 and paper protocols")
    evaluate_cases(pair_folder(folder / PREDICTIONS, args.src, "mr"), modality="mr", protocol="both",
                   output=folder / METRICS_FILE, overwrite=True, progress=not args.quiet,
                   workers=args.eval_workers)


def calibration_keys(cases: list) -> list[str]:
    """The calibration rows these cases allow: the oracle needs the phantoms' truth files (`diffma synth`)."""
    has_truth = all(noise_free_mr(case).is_file() for case in cases)
    return [key for key in CALIBRATION if key != "oracle" or has_truth]


def noise_free_mr(case) -> Path:
    from diffma_cli.data.synth import TRUTH

    return case.folder / TRUTH / "mr_noise_free.nii.gz"


def calibration_entry(args, out: Path, key: str, cases: list, ct_window, vae_run: Path | None) -> None:
    """One calibration row's predictions (OUT/<key>/predictions) and convert.json (seconds per case and
    what the row fitted), made by `diffma_cli.evaluation.calibration` on the scales eval uses."""
    import SimpleITK as sitk

    from diffma_cli.data.normalise import ct_to_unit
    from diffma_cli.evaluation import calibration
    from diffma_cli.io.atomic import atomic_dir
    from diffma_cli.io.volumes import read_volume, write_volume

    folder = out / key
    if (folder / CONVERT).is_file():
        say(f"{key}: made before, skipped")
        return
    say(f"{key}: {CALIBRATION[key]} ({len(cases)} test case(s))")
    array = sitk.GetArrayFromImage

    record: dict = {"parameters": 0, "device": "cpu"}
    if key == "constant":
        value = calibration.pooled_mean(map(calibration.normalised_case_mr, training_cases(args)))
        record.update(parameters=1, value=value)
    elif key == "affine":
        record.update(parameters=2, parameters_note="a and b, fitted per test case on its own MR", fits={})
    elif key == "vae-ceiling":
        from diffma_cli.convert import load_models

        models = load_models(vae_run, args.device)
        record.update(device=str(models.device), run=str(vae_run.relative_to(out)))
    seconds = {}
    with atomic_dir(folder / PREDICTIONS, overwrite=True) as predictions:
        for number, case in enumerate(cases):
            ct = read_volume(case.ct)
            mr_unit, mask = calibration.normalised_case_mr(case)
            began = time.perf_counter()
            if key == "constant":
                prediction = calibration.constant_prediction(mask, value)
            elif key == "affine":
                prediction, a, b = calibration.affine_prediction(
                    ct_to_unit(array(ct), ct_window), mr_unit, mask)
                record["fits"][case.id] = {"a": a, "b": b}
            elif key == "other-patient":
                other = cases[(number + 1) % len(cases)]  # the next test case, cyclically
                other_unit, _ = calibration.normalised_case_mr(other)
                image = sitk.GetImageFromArray(other_unit)
                image.CopyInformation(read_volume(other.mr))
                prediction = calibration.other_patient_prediction(image, ct, mask)
                record.setdefault("other", {})[case.id] = other.id
            elif key == "oracle":
                prediction = calibration.oracle_prediction(array(read_volume(noise_free_mr(case))),
                                                           array(read_volume(case.mr)), mask)
            else:
                prediction = calibration.vae_round_trip(mr_unit, ct.GetSpacing(), mask, models)
            seconds[case.id] = time.perf_counter() - began
            image = sitk.GetImageFromArray(prediction)
            image.CopyInformation(ct)
            write_volume(image, predictions / f"{case.id}.nii.gz")
    write_json(folder / CONVERT, {**record, "seconds_per_volume": seconds}, overwrite=True)


def training_cases(args) -> list:
    """The SynthRAD cases of SRC in DATA's training split."""
    from diffma_cli.data.dataset import load_manifest
    from diffma_cli.data.synthrad import find_cases

    train_ids = set(load_manifest(args.data)["splits"]["train"])
    return [case for case in find_cases(args.src) if case.id in train_ids]


# ---------------------------------------------------------------- the table

def mean_std(values: list[float]) -> dict:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else None,
            "n": int(array.size)}


def table_row(out: Path, key: str) -> dict:
    """One row, read from the files the stages wrote (nothing else)."""
    folder = out / key
    metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    converted = json.loads((folder / CONVERT).read_text(encoding="utf-8"))
    row = {"key": key, "label": row_label(out, key),
           "parameters": converted["parameters"], "train_images": None, "train_images_per_second": None,
           "seconds_per_volume": mean_std(list(converted["seconds_per_volume"].values())),
           "cases": len(metrics["cases"]),
           "metrics": {name: metrics["summary"][name] for name, _, _ in METRICS},
           # relative to OUT, so that table.json stays true wherever the folder is copied
           "files": {"metrics": f"{key}/{METRICS_FILE}", "convert": f"{key}/{CONVERT}"}}
    if (folder / RUN).is_dir():
        info = json.loads((folder / RUN / "run.json").read_text(encoding="utf-8"))
        from diffma_cli.config import load_recipe

        batch = load_recipe(folder / RUN / "recipe.yaml").training.global_batch_size
        row.update(train_images=info["steps"] * batch, train_images_per_second=info["images_per_second"],
                   model=info["model"]["name"])
        row["files"]["run"] = f"{key}/{RUN}/run.json"
    return row


def entry_label(key: str, model_name: str) -> str:
    """ENTRIES' label of a row trained with `model_name`: a DiffMa row names the model that actually trained
    (--diffma-model may have replaced DiffMa-B/2)."""
    return ENTRIES[key][0].replace("DiffMa-B/2", model_name)


def row_label(out: Path, key: str) -> str:
    """The row's label: CALIBRATION's, or ENTRIES' (with the condition for a baseline, the sample count for a
    mean-of-K row "<entry>-mean<K>", the mirror image for "<entry>-tta", the members of "ensemble-A+B")."""
    if key in CALIBRATION:
        return CALIBRATION[key]
    if key.startswith(ENSEMBLE_PREFIX):
        members = key.removeprefix(ENSEMBLE_PREFIX).split("+")
        return "ensemble (mean) of " + " and ".join(row_label(out, member) for member in members)
    entry, _, samples = key.partition("-mean")
    tta = entry.endswith(TTA_SUFFIX)
    entry = entry.removesuffix(TTA_SUFFIX)
    from diffma_cli.config import load_recipe

    model = load_recipe(out / entry / RUN / "recipe.yaml").model
    label = entry_label(entry, model.name)
    if not entry.startswith("diffma"):
        label += f", {model.condition}"
    return label + (f", mean of {samples} samples" if samples else "") + (
        ", left-right flip TTA" if tta else "")


# The row every other is compared with case by case: the constant predictor (a model must beat it to
# follow the CT at all), else the first row of the table.
PAIRED_REFERENCE = "constant"


def case_values(out: Path, key: str) -> dict[str, dict]:
    metrics = json.loads((out / key / METRICS_FILE).read_text(encoding="utf-8"))
    return {case["case"]: case for case in metrics["cases"]}


def paired_differences(out: Path, keys: list[str]) -> dict:
    """Each row minus the reference row, case by case over the test cases both scored: for every metric the
    mean and sample std of the differences, their number n and the paired t statistic mean / (std / sqrt n)
    (None when n < 2 or the differences are all equal). Case-to-case spread is large and shared by all
    rows; a paired difference shows whether two rows differ consistently on the same cases."""
    import numpy as np

    reference = PAIRED_REFERENCE if PAIRED_REFERENCE in keys else keys[0]
    base = case_values(out, reference)
    rows = {}
    for key in keys:
        if key == reference:
            continue
        mine = case_values(out, key)
        common = sorted(set(base) & set(mine))
        rows[key] = {}
        for name, _, _ in METRICS:
            pairs = [(mine[case][name], base[case][name]) for case in common]
            finite = np.array([a - b for a, b in pairs if a is not None and b is not None
                               and math.isfinite(a) and math.isfinite(b)], dtype=np.float64)
            n = int(finite.size)
            mean = float(finite.mean()) if n else None
            std = float(finite.std(ddof=1)) if n > 1 else None
            t = mean / (std / math.sqrt(n)) if std else None
            rows[key][name] = {"mean": mean, "std": std, "n": n, "t": t}
    return {"reference": reference, "rows": rows}


def paired_cell(difference: dict, decimals: int) -> str:
    if difference["mean"] is None:
        return "–"
    text = f"{difference['mean']:+.{decimals}f}"
    return text + (f" (t {difference['t']:+.1f})" if difference["t"] is not None else "")


def cell(summary: dict, decimals: int) -> str:
    if summary["mean"] is None:
        return "–"
    text = f"{summary['mean']:.{decimals}f}"
    return text + (f" ± {summary['std']:.{decimals}f}" if summary["std"] is not None else "")


def markdown(table: dict) -> str:
    titles = ["backbone", "parameters (M)", "training images", "training images/s", "s / volume",
              *(title for _, title, _ in METRICS)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in table["rows"]:
        cells = [row["label"],
                 f"{row['parameters'] / 1e6:.3f}" if row["train_images"] is not None else "–",
                 "–" if row["train_images"] is None else str(row["train_images"]),
                 "–" if row["train_images_per_second"] is None else f"{row['train_images_per_second']:.1f}",
                 cell(row["seconds_per_volume"], 2),
                 *(cell(row["metrics"][name], decimals) for name, _, decimals in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    cases = table["rows"][0]["cases"] if table["rows"] else 0
    lines.append("")
    lines.append(f"Mean ± sample std over {cases} test case(s). MAE/PSNR/SSIM: SynthRAD2023 masked 3-D "
                 "protocol on prepare's normalised MR scale [-1, 1]; paper: per-slice 8-bit protocol "
                 "(docs/metrics.md). Sampling: " + table["sampling"] + ".")
    paired = table.get("paired")
    if paired and paired["rows"]:
        labels = {row["key"]: row["label"] for row in table["rows"]}
        lines += ["", "| row − " + labels[paired["reference"]] + " | "
                  + " | ".join(f"Δ {title}" for _, title, _ in METRICS) + " |",
                  "|" + "---|" * (len(METRICS) + 1)]
        for key, differences in paired["rows"].items():
            lines.append("| " + labels[key] + " | " + " | ".join(
                paired_cell(differences[name], decimals) for name, _, decimals in METRICS) + " |")
        lines += ["", "Paired differences over the test cases both rows scored: mean of (row − reference) "
                  "per case, and the paired t statistic mean / (sd / √n). One training seed per row: "
                  "seed-to-seed variation is not in these numbers."]
    return "\n".join(lines) + "\n"


def write_table(out: Path, keys: list[str], plan: dict, sampling: str) -> dict:
    done = [key for key in keys if (out / key / METRICS_FILE).is_file()]
    table = {"plan": plan, "sampling": sampling, "rows": [table_row(out, key) for key in done],
             "paired": paired_differences(out, done) if len(done) > 1 else None}
    write_json(out / TABLE_JSON, table, overwrite=True)
    from diffma_cli.io.atomic import atomic_file

    with atomic_file(out / TABLE_MD, overwrite=True) as temporary:
        temporary.write_text(markdown(table), encoding="utf-8")  # ± and – whatever the locale
    return table


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a `diffma prepare` folder")
    parser.add_argument("src", type=Path, help="the SynthRAD Task 1 tree DATA was prepared from")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--backbones", default=",".join(ENTRIES),
                        help=f"comma-separated subset of: {', '.join(ENTRIES)} (default: all); none: the "
                             "calibration rows alone")
    parser.add_argument("--recipe", default="brain", help="brain, pelvis, demo or a YAML file")
    parser.add_argument("--diffma-model", metavar="NAME",
                        help="the DiffMa rows' model instead of DiffMa-B/2, e.g. DiffMa-S/4 with --recipe "
                             "demo (its depth and width) for a table on a CPU")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every backbone, e.g. --set training.global_batch_size=32")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimiser steps per backbone")
    budget.add_argument("--images", type=int, help="training images per backbone (steps = images / batch)")
    budget.add_argument("--train-minutes", type=float,
                        help="total training time of all chosen backbones; the image count is the largest "
                             "that fits at the images/s of a short probe run of each")
    parser.add_argument("--probe-steps", type=int, default=30,
                        help="steps of each probe run (--train-minutes)")
    parser.add_argument("--embedder", type=Path, help="a train-embedder run folder or weights file "
                                                      "(default: train one into OUT/embedder)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpm"), help="default: the recipe's")
    parser.add_argument("--sample-steps", type=int, help="sampling steps (default: the recipe's)")
    parser.add_argument("--samples", type=int, default=1,
                        help="also score the mean of K samples of the --samples-of rows (rows <key>-mean<K>)")
    parser.add_argument("--samples-of", default="",
                        help="comma-separated rows for --samples (default: the first backbone)")
    parser.add_argument("--tta-of", default="",
                        help="comma-separated rows also converted with the left-right mirror image averaged "
                             "in (rows <key>-tta)")
    parser.add_argument("--tta-samples", type=int, default=1,
                        help="samples of each image (the CT and its mirror image) in the --tta-of rows "
                             "(rows <key>-tta-mean<K> when K > 1)")
    parser.add_argument("--ensemble", default="",
                        help="A+B[+...]: also score the mean of these trained rows (row ensemble-A+B)")
    parser.add_argument("--calibration", default=",".join(CALIBRATION),
                        help=f"calibration rows, a subset of: {', '.join(CALIBRATION)} (the oracle needs "
                             "`diffma synth` data; default: all the data allow)")
    parser.add_argument("--eval-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="test cases scored at once, one process each (default: up to 4)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def run(args) -> dict:
    from diffma_cli.data.dataset import load_manifest

    keys = choose_entries(args.backbones)
    # Rows built from trained rows need those rows: checked before anything is trained.
    members = [member for member in args.ensemble.split("+") if member]
    if members and not set(members) <= set(keys):
        raise SystemExit(f"table2: --ensemble {args.ensemble}: every member must be one of --backbones")
    if not set(choose_list(args.tta_of)) <= set(keys):
        raise SystemExit(f"table2: --tta-of {args.tta_of}: every row must be one of --backbones")
    if args.diffma_model:  # refused now, not after the calibration rows and the first rows have trained
        from diffma_cli.models import model_names

        diffma_names = [name for name in model_names() if name.startswith("DiffMa-")]
        if args.diffma_model not in diffma_names:
            raise SystemExit(f"table2: --diffma-model {args.diffma_model}: not a DiffMa model; choose one of "
                             f"{', '.join(diffma_names)}")
    cases = test_cases(args.data, args.src)
    recipe = base_recipe(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    say(f"{len(keys)} backbone(s), {len(cases)} test case(s) -> {out}")
    # The calibration rows first (cheap; all but the VAE's need no training), so that an interrupted run
    # already has the rows every model is read against.
    window = load_manifest(args.data).get("options", {}).get("ct_window") or recipe.data.ct_window_hu
    wanted = choose_list(args.calibration)
    calibration = [key for key in calibration_keys(cases) if key in wanted and not (key == "vae-ceiling"
                                                                                     and not keys)]
    for key in calibration:
        if key != "vae-ceiling":
            calibration_entry(args, out, key, cases, tuple(window), None)
            evaluate_entry(args, out / key)
    if keys:
        embedder = ensure_embedder(args, out, recipe)
        plan = plan_budget(args, out, recipe, keys, embedder)
    else:
        plan = None
    rows = []
    for number, key in enumerate(keys, 1):
        entry = entry_recipe(recipe, key, plan["steps"], args.diffma_model)
        say(f"[{number}/{len(keys)}] {key}: {entry_label(key, entry.model.name)}")
        folder = out / key
        run_dir = train_entry(args, folder, entry, embedder)
        convert_entry(args, folder, [run_dir], cases)
        evaluate_entry(args, folder)
        rows.append(key)
        if args.samples > 1 and key in (choose_list(args.samples_of) or keys[:1]):
            averaged = out / f"{key}-mean{args.samples}"
            convert_entry(args, averaged, [run_dir], cases, samples=args.samples)
            evaluate_entry(args, averaged)
            rows.append(averaged.name)
        if key in choose_list(args.tta_of):
            flipped = out / tta_key(key, args.tta_samples)
            convert_entry(args, flipped, [run_dir], cases, samples=args.tta_samples, tta="flip")
            evaluate_entry(args, flipped)
            rows.append(flipped.name)
        if members and key == [member for member in keys if member in members][-1]:  # all members trained
            combined = out / f"{ENSEMBLE_PREFIX}{'+'.join(members)}"
            convert_entry(args, combined, [out / member / RUN for member in members], cases)
            evaluate_entry(args, combined)
            rows.append(combined.name)
        if number == 1 and "vae-ceiling" in calibration:  # every row shares the recipe's VAE
            calibration_entry(args, out, "vae-ceiling", cases, tuple(window), run_dir)
            evaluate_entry(args, out / "vae-ceiling")
    rows += calibration
    sampling = (f"{args.sampler or recipe.sampling.sampler}, "
                f"{args.sample_steps or recipe.sampling.steps} steps")
    table = write_table(out, rows, plan, sampling)
    print(markdown(table), flush=True)
    say(f"table: {out / TABLE_MD}, {out / TABLE_JSON}")
    return table


def main(argv: list[str] | None = None) -> int:
    from diffma_cli.errors import DiffmaError

    args = parse_args(argv)
    try:
        run(args)
    except DiffmaError as error:
        print(f"table2: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
