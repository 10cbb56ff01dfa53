"""Summaries of per-case metric records and the files they go to (metrics.json and a CSV beside it).

JSON has no infinity or NaN: a non-finite value (PSNR of an exact match, a metric of an empty mask) is
written as `null` in JSON and as `inf`/`nan` in the CSV, and is left out of the summary's mean and std (its
`n` says how many cases counted).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from diffma_cli.errors import InputError
from diffma_cli.io.atomic import atomic_file, check_output

# Record keys that describe a case rather than measure it.
DESCRIPTIVE_KEYS = ("case", "prediction", "reference", "mask")
PAPER_KEYS = ("paper_ssim", "paper_psnr", "paper_mse")


def metric_keys(records: list[dict]) -> list[str]:
    """Metric names in first-seen order across records."""
    keys: list[str] = []
    for record in records:
        keys += [key for key in record if key not in DESCRIPTIVE_KEYS and key not in keys]
    return keys


def summarise(records: list[dict]) -> dict:
    """{metric: {"mean", "std" (sample, ddof 1; None for one case), "n"}} over the finite values of the cases;
    with the paper protocol also "paper_pooled": means over all scored slices of all cases (Table 2 style:
    each case's per-slice mean weighted by its number of slices) and the slice count."""
    summary: dict = {}
    for key in metric_keys(records):
        values = np.array([record[key] for record in records if key in record], dtype=np.float64)
        values = values[np.isfinite(values)]
        summary[key] = {"mean": float(values.mean()) if values.size else None,
                        "std": float(values.std(ddof=1)) if values.size > 1 else None,
                        "n": int(values.size)}
    weights = np.array([record.get("paper_slices", 0) for record in records], dtype=np.float64)
    if any("paper_slices" in record for record in records) and weights.sum() > 0:
        scored = [(record, weight) for record, weight in zip(records, weights, strict=True) if weight > 0]
        pooled = {key: float(sum(record[key] * weight for record, weight in scored) / weights.sum())
                  for key in PAPER_KEYS}
        summary["paper_pooled"] = {**pooled, "slices": int(weights.sum())}
    return summary


def json_safe(value):
    """A copy of `value` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def csv_path_for(json_path: str | Path) -> Path:
    """The CSV written beside a metrics JSON: same name, `.csv` suffix."""
    return Path(json_path).with_suffix(".csv")


def check_result_outputs(json_path: str | Path, overwrite: bool) -> None:
    """Refuse existing metrics files up front (before any long computation) unless `overwrite`, and a JSON
    name that would collide with its CSV."""
    if csv_path_for(json_path) == Path(json_path):
        raise InputError("the metrics file would be overwritten by its CSV", path=json_path,
                         hint="name it metrics.json; the CSV is written beside it")
    check_output(json_path, overwrite)
    check_output(csv_path_for(json_path), overwrite)


def write_results(results: dict, json_path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `results` as strict JSON and its per-case rows as CSV beside it; returns both paths."""
    json_path, table_path = Path(json_path), csv_path_for(json_path)
    check_result_outputs(json_path, overwrite)
    with atomic_file(json_path, overwrite=overwrite) as temporary:
        temporary.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n",
            encoding="utf-8")
    columns = ["case", *metric_keys(results["cases"]), "prediction", "reference", "mask"]
    with atomic_file(table_path, overwrite=overwrite) as temporary, \
            temporary.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["cases"])
    return json_path, table_path
