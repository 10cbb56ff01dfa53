"""Score predictions: one function per use, all returning plain, JSON-able result records.

- `evaluate_arrays`: arrays already on the metric scale -> {metric: value} (no I/O; for benchmarks).
- `evaluate_case`: one `CasePaths` -> {"case": id, "prediction": path, ..., metric: value}.
- `evaluate_cases`: many cases with a progress bar, optionally writing metrics.json/CSV and a visual report
  -> {"modality", "protocol", "scale", "cases": [...], "summary": {...}} (the content of metrics.json).

Metric keys (docs/metrics.md, docs/consistency.md): synthrad `mae`, `psnr`, `ssim`, `ms_ssim`; paper
`paper_ssim` (%), `paper_psnr`, `paper_mse`, `paper_slices`; always `pearson` (voxelwise correlation inside
the mask) and the consistency measures `sagittal_ssim`, `sagittal_psnr`, `coronal_ssim`, `coronal_psnr`,
`roughness_ratio`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from diffma_cli import __version__
from diffma_cli.errors import InputError
from diffma_cli.evaluation.consistency import consistency_metrics
from diffma_cli.evaluation.metrics import masked_pearson, paper_metrics, synthrad_metrics
from diffma_cli.evaluation.ms_ssim import masked_ms_ssim, ms_ssim_range
from diffma_cli.evaluation.pairing import CasePaths, check_pairs, load_case_volumes
from diffma_cli.evaluation.results import check_result_outputs, summarise, write_results
from diffma_cli.evaluation.scales import metric_range, off_scale_problem

PROTOCOLS = ("synthrad", "paper", "both")


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}", hint=f"use one of {', '.join(PROTOCOLS)}")


def evaluate_arrays(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray, *, modality: str = "mr",
                    protocol: str = "both") -> dict[str, float]:
    """Metrics of one volume pair (z, y, x) already on the metric scale of `modality` (HU for CT, prepare's
    normalised [-1, 1] for MR); `mask` non-zero inside the body. Consistency measures are always included."""
    check_protocol(protocol)
    scale = metric_range(modality)
    result: dict[str, float] = {}
    if protocol in ("synthrad", "both"):
        result.update(synthrad_metrics(prediction, reference, mask, scale))
        result["ms_ssim"] = masked_ms_ssim(prediction, reference, mask, ms_ssim_range(modality))
    if protocol in ("paper", "both"):
        result.update(paper_metrics(prediction, reference, mask, scale))
    result["pearson"] = masked_pearson(prediction, reference, mask)
    result.update(consistency_metrics(prediction, reference, mask, scale))
    return result


def evaluate_case(paths: CasePaths, *, modality: str = "mr", protocol: str = "both",
                  report_folder: Path | None = None, allow_off_scale: bool = False,
                  mr_percentiles: tuple[float, float] | None = None) -> dict:
    """Read, check and score one case (a reference MR normalised with `mr_percentiles`, None for prepare's
    default); with `report_folder`, also write its montages there.

    A prediction that is mostly off the modality's scale inside the mask (`scales.off_scale_problem`) is an
    InputError, or with `allow_off_scale` a warning on stderr and scored anyway.
    """
    volumes = load_case_volumes(paths, modality, mr_percentiles)
    problem = off_scale_problem(volumes.prediction, volumes.mask, modality)
    if problem is not None:
        hint = ("`diffma convert` writes MR on [-1, 1] and CT in HU; check --modality and that this is a "
                "prediction, or pass --allow-off-scale to score it anyway")
        if not allow_off_scale:
            raise InputError(problem, path=paths.prediction, hint=hint)
        from tqdm import tqdm

        tqdm.write(f"diffma: warning: {paths.prediction}: {problem}", file=sys.stderr)
    record = {"case": paths.case, "prediction": str(paths.prediction), "reference": str(paths.reference),
              "mask": str(paths.mask)}
    record.update(evaluate_arrays(volumes.prediction, volumes.reference, volumes.mask, modality=modality,
                                  protocol=protocol))
    if report_folder is not None:
        from diffma_cli.evaluation.report import write_case_montages

        write_case_montages(report_folder, volumes, metric_range(modality), modality)
    return record


def score_in_processes(score, pairs: Sequence[CasePaths], workers: int, done) -> list[dict]:
    """score(pair) for every pair in `workers` fresh processes, in the order of `pairs`; done() after each.

    "spawn", not fork: the caller may hold CUDA or threads (a training script that scores its rows), which a
    forked child must not inherit. The first case to fail raises its error here; the cases not yet started
    are cancelled.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(score, pair) for pair in pairs]
        try:
            for future in as_completed(futures):
                future.result()  # the first failure ends the wait
                done()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]


def evaluate_cases(pairs: Sequence[CasePaths], *, modality: str = "mr", protocol: str = "both",
                   output: str | Path | None = None, report: str | Path | None = None,
                   overwrite: bool = False, progress: bool = True, allow_off_scale: bool = False,
                   mr_percentiles: tuple[float, float] | None = None, workers: int = 1) -> dict:
    """Score every case and summarise: the content of metrics.json.

    First, before any long work: existing outputs are refused unless `overwrite`, and every case is checked
    from its file headers (`check_pairs`). Then each case is scored (tqdm progress bar). `output` is the
    metrics.json to write (with a CSV beside it, `results.write_results`); `report` a folder for montages and
    index.html, written atomically. `mr_percentiles` normalise reference MRs (None: prepare's default; see
    `scales.recorded_mr_percentiles`) and are recorded in the header. `workers` > 1 scores that many cases
    at once in separate processes (each holds one case's volumes and their float64 SSIM maps, a few GiB
    for a large pelvis scan); the records keep the order of `pairs` either way.
    """
    from tqdm import tqdm

    from diffma_cli.io.atomic import atomic_dir, check_output

    check_protocol(protocol)
    scale = metric_range(modality)
    if output is not None:
        check_result_outputs(output, overwrite)
    if report is not None:
        check_output(report, overwrite)
    check_pairs(list(pairs))
    header = {"diffma": __version__, "modality": modality, "protocol": protocol,
              "scale": {"low": scale.low, "high": scale.high}}
    if modality == "mr":
        from diffma_cli.data.normalise import MR_PERCENTILES

        header["mr_percentiles"] = list(mr_percentiles or MR_PERCENTILES)

    if workers < 1:
        raise InputError(f"workers must be at least 1, not {workers}")

    def run(report_folder: Path | None) -> dict:
        score = partial(evaluate_case, modality=modality, protocol=protocol, report_folder=report_folder,
                        allow_off_scale=allow_off_scale, mr_percentiles=mr_percentiles)
        # A context manager, so that an error mid-way ends the bar's line before the message.
        with tqdm(total=len(pairs), desc="eval", unit="case", disable=not progress) as bar:
            if workers > 1 and len(pairs) > 1:
                records = score_in_processes(score, pairs, min(workers, len(pairs)), bar.update)
            else:
                records = []
                for pair in pairs:
                    records.append(score(pair))
                    bar.update()
        results = {**header, "cases": records, "summary": summarise(records)}
        if report_folder is not None:
            from diffma_cli.evaluation.report import write_index

            write_index(report_folder, results)
        return results

    if report is None:
        results = run(None)
    else:
        with atomic_dir(report, overwrite=overwrite) as folder:
            results = run(folder)
    if output is not None:
        write_results(results, output, overwrite=overwrite)
    return results
