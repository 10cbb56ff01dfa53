"""Write a SynthRAD2023-shaped tree of synthetic cases (the library side of `diffma synth`).

    OUT/Task1/brain/1BA001/{ct,mr,mask}.nii.gz     brain: centres A, B, C in turn (1BA001, 1BB001, ...)
    OUT/Task1/brain/1BA001/truth/mr_noise_free.nii.gz  the MR before noise (float32, gain and bias field
    OUT/Task1/brain/1BA001/truth/labels.nii.gz         kept) and the tissue label map (uint8): what only
                                                       a phantom knows, for the oracle row of a benchmark
    OUT/Task1/brain/overview/1_brain_overview.csv  one row per case: centre, MR weighting, shape, spacing, ...
    OUT/Task1/brain/overview/1BA001.png            middle axial slice: CT | MR | mask
    OUT/Task1/pelvis/1PA001/...                     pelvis: centres A and C in turn

Case k of an anatomy depends only on (seed, anatomy, k): adding cases or workers never changes the others.
The tree is written to a temporary folder renamed at the end (nothing half-written under OUT).
"""

from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from diffma_cli.io.atomic import atomic_dir

# SynthRAD2023 Task 1 centres per anatomy (docs/reference.md §5: brain from A/B/C, pelvis from A and C).
CENTRES = {"brain": ("A", "B", "C"), "pelvis": ("A", "C")}
# Subfolder of each case with what only a phantom knows (noise-free MR, label map).
TRUTH = "truth"
# Grid coarsening per --size: "small" makes 4x coarser voxels (about 64x fewer) for tests and the CPU demo.
SIZES = {"full": 1.0, "small": 0.25}


def case_id(anatomy: str, index: int) -> str:
    """SynthRAD-style id of case `index` (0-based): task 1, B|P, centre letter in turn, 3-digit number."""
    centres = CENTRES[anatomy]
    return f"1{anatomy[0].upper()}{centres[index % len(centres)]}{index // len(centres) + 1:03d}"


def _preview(phantom, path: Path) -> None:
    """Middle axial slice as CT (window -200..300 HU) | MR (0..99.5th percentile) | mask, 8-bit PNG."""
    import numpy as np
    from PIL import Image

    z = phantom.ct.shape[0] // 2
    ct = np.clip((phantom.ct[z] + 200.0) / 500.0, 0, 1)
    mr = np.clip(phantom.mr[z] / max(float(np.percentile(phantom.mr, 99.5)), 1.0), 0, 1)
    row = np.concatenate([ct, mr, phantom.mask[z].astype(float)], axis=1)
    Image.fromarray((row * 255).astype(np.uint8)).save(path)


def write_case(folder: Path, anatomy: str, index: int, seed: int, scale: float) -> dict:
    """Make case `index` of `anatomy` and write its three volumes and preview; returns its overview row."""
    import SimpleITK as sitk

    from diffma_cli.data.phantoms import case_rng, make_phantom
    from diffma_cli.io.volumes import write_volume

    identifier = case_id(anatomy, index)
    centre = identifier[2]
    phantom = make_phantom(anatomy, case_rng(seed, anatomy, index), scale=scale, centre=centre)
    case_folder = folder / anatomy / identifier
    case_folder.mkdir(parents=True)
    # The truth lives in a subfolder so that case discovery and prepare see SynthRAD's three files only.
    (case_folder / TRUTH).mkdir()
    volumes = {"ct": phantom.ct, "mr": phantom.mr, "mask": phantom.mask,
               f"{TRUTH}/mr_noise_free": phantom.mr_noise_free, f"{TRUTH}/labels": phantom.labels}
    for name, values in volumes.items():
        image = sitk.GetImageFromArray(values)
        image.SetSpacing(phantom.spacing)
        image.SetOrigin(phantom.origin)
        write_volume(image, case_folder / f"{name}.nii.gz")
    _preview(phantom, folder / anatomy / "overview" / f"{identifier}.png")
    info = phantom.info
    return {"id": identifier, "centre": centre, "mr_weighting": info["mr_weighting"],
            "sex": info.get("sex", ""),
            "shape_xyz": "x".join(str(n) for n in info["shape_zyx"][::-1]),
            "spacing_mm": "x".join(f"{s:g}" for s in info["spacing_xyz"]), "ct_noise_hu": info["ct_noise_hu"],
            "mr_gain": info["mr_gain"], "seed": seed}


def write_synthetic_tree(out: str | Path, anatomies: tuple[str, ...], cases: int, seed: int = 0,
                         size: str = "full", workers: int = 1, overwrite: bool = False,
                         progress: bool = True) -> Path:
    """Write `cases` cases per anatomy under OUT/Task1 (layout in the module docstring); returns OUT."""
    from tqdm import tqdm

    scale = SIZES[size]
    jobs = [(anatomy, index) for anatomy in anatomies for index in range(cases)]
    with atomic_dir(out, overwrite=overwrite) as temporary:
        task = temporary / "Task1"
        for anatomy in anatomies:
            (task / anatomy / "overview").mkdir(parents=True)
        rows = {anatomy: [] for anatomy in anatomies}
        # disable=None: a bar only on a terminal, so logs and captured stderr hold just messages.
        bar = tqdm(total=len(jobs), desc="synth", unit="case", disable=None if progress else True)
        if workers <= 1:
            for anatomy, index in jobs:
                rows[anatomy].append(write_case(task, anatomy, index, seed, scale))
                bar.update()
        else:
            # spawn: workers start clean (no copy of a parent holding torch or open files).
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(write_case, task, anatomy, index, seed, scale): anatomy
                           for anatomy, index in jobs}
                for future in as_completed(futures):
                    rows[futures[future]].append(future.result())
                    bar.update()
        bar.close()
        for anatomy, table in rows.items():
            table.sort(key=lambda row: row["id"])
            if table:
                overview = task / anatomy / "overview" / f"1_{anatomy}_overview.csv"
                with open(overview, "w", newline="", encoding="utf-8") as file:
                    writer = csv.DictWriter(file, fieldnames=list(table[0]))
                    writer.writeheader()
                    writer.writerows(table)
    return Path(out)
