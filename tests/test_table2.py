"""benchmarks/table2.py on a tiny budget (CPU): two backbones and the floor, the table's structure, every
number traced back to the files the stages wrote, resuming, and the affine floor against numpy's polyfit."""

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "table2.py"
# The demo recipe shrunk to one block of width 32 for every backbone (patch 2 as in Table 2), a 2-step
# embedder, 2 training steps of 2 slices and one DPM-Solver step per slice.
TINY = ["--recipe", "demo", "--set", "model.depth=1", "--set", "model.hidden_size=32",
        "--set", "embedder.patch_size=2", "--set", "embedder.embed_dim=32",
        "--set", "embedder.training.steps=2", "--set", "training.global_batch_size=2",
        "--set", "sampling.batch_size=32", "--sample-steps", "1", "--device", "cpu", "--quiet"]
BACKBONES = ["diffma-latent", "dit"]
CALIBRATION = ["constant", "other-patient", "affine", "oracle", "vae-ceiling"]


def load_script():
    spec = importlib.util.spec_from_file_location("table2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table2():
    return load_script()


@pytest.fixture(scope="module")
def tiny_tree(small_brain_data):
    """Four small synthetic brain cases: 1 train, 1 val, 2 test (two, so that a std exists)."""
    data, src = small_brain_data("table2", 4, (0.25, 0.25, 0.5))
    return data, src, data.parent / "out"


def test_tiny_table_end_to_end(table2, tiny_tree, capsys):
    """One run of the script (the expensive part), then every check on what it left; one test function so
    that `pytest -n 2` does not run the pipeline once per worker."""
    data, src, out = tiny_tree
    args = [str(data), str(src), "-o", str(out), "--backbones", ",".join(BACKBONES), "--steps", "2", *TINY]
    assert table2.main(args) == 0
    assert "| DiffMa-B/2, latent |" in capsys.readouterr().out  # the final table is printed
    check_rows_come_from_the_files_each_stage_wrote(table2, out)
    check_markdown_cells_are_the_metrics_files_rounded(table2, out)
    check_paired_differences_against_scipy(out)
    check_calibration_rows_against_numpy(out, src, data)
    check_a_second_call_skips_finished_stages_and_redoes_a_missing_one(table2, args, out, capsys)
    check_a_stopped_training_resumes_from_its_checkpoint(table2, args, out, capsys)
    check_tta_and_ensemble_rows(table2, args, out, capsys)


def check_rows_come_from_the_files_each_stage_wrote(table2, out):
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    assert [row["key"] for row in table["rows"]] == [*BACKBONES, *CALIBRATION]
    assert table["plan"]["steps"] == 2 and table["plan"]["images"] == 4
    from diffma_cli.runs import load_run

    for row in table["rows"]:
        folder = out / row["key"]
        # The files the row names, relative to the table's folder, are the ones it was read from.
        assert (out / row["files"]["metrics"]).resolve() == (folder / "metrics.json").resolve()
        assert (out / row["files"]["convert"]).resolve() == (folder / "convert.json").resolve()
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        converted = json.loads((folder / "convert.json").read_text(encoding="utf-8"))
        assert row["cases"] == len(metrics["cases"]) == 2
        for name, _, _ in table2.METRICS:
            assert row["metrics"][name] == metrics["summary"][name]
            values = [case[name] for case in metrics["cases"]]  # the summary is over these cases
            if row["key"] == "constant" and name == "pearson":
                assert values == [None, None] and row["metrics"][name]["mean"] is None  # undefined
                continue
            assert row["metrics"][name]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert row["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        seconds = list(converted["seconds_per_volume"].values())
        assert sorted(converted["seconds_per_volume"]) == sorted(case["case"] for case in metrics["cases"])
        assert row["seconds_per_volume"]["mean"] == pytest.approx(np.mean(seconds), rel=1e-12)
        assert row["parameters"] == converted["parameters"]
        if row["key"] in CALIBRATION:
            assert row["train_images"] is None
            assert row["parameters"] == {"constant": 1, "affine": 2}.get(row["key"], 0)
            continue
        assert (out / row["files"]["run"]).resolve() == (folder / "run" / "run.json").resolve()
        run = load_run(folder / "run")
        assert row["parameters"] == sum(p.numel() for p in run.backbone.parameters())
        assert row["train_images_per_second"] == run.info["images_per_second"]
        assert row["train_images"] == run.info["steps"] * run.recipe.training.global_batch_size == 4
        # The same recipe for both, but each its own backbone.
        assert run.backbone.config["depth"] == 1 and run.backbone.config["hidden_size"] == 32
        assert row["model"] == {"diffma-latent": "DiffMa-B/2", "dit": "DiT-B/2"}[row["key"]]
    diffma = load_run(out / "diffma-latent" / "run").backbone.config
    assert (diffma["scan"], diffma["condition"]) == ("spiral", "latent")
    # the baseline takes the recipe's condition (the demo recipe's) and its label says which
    assert load_run(out / "dit" / "run").backbone.config["condition"] == "latent+tokens"
    assert table["rows"][1]["label"] == "DiT-B/2, latent+tokens"


def check_markdown_cells_are_the_metrics_files_rounded(table2, out):
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    text = (out / "table.md").read_text(encoding="utf-8")
    first_table = text.split("\n\n")[0]  # the paired-differences table follows after a blank line
    lines = [line for line in first_table.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert header.count("|") == 5 + len(table2.METRICS) + 1
    assert len(rows) == len(BACKBONES) + len(CALIBRATION)
    for line, row in zip(rows, table["rows"], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        metrics = json.loads((out / row["key"] / "metrics.json").read_text(encoding="utf-8"))["summary"]
        for cell, (name, _, decimals) in zip(cells[5:], table2.METRICS, strict=True):
            if row["key"] == "constant" and name == "pearson":
                assert cell == "–"  # a constant has no correlation
                continue
            mean, std = (float(part) for part in cell.split("±"))
            assert mean == round(metrics[name]["mean"], decimals)
            assert std == round(metrics[name]["std"], decimals)
        assert cells[0] == row["label"]


def check_a_second_call_skips_finished_stages_and_redoes_a_missing_one(table2, args, out, capsys):
    kept = {path: path.stat().st_mtime_ns for path in [out / "diffma-latent" / "run" / "run.json",
                                                        out / "diffma-latent" / "metrics.json",
                                                        out / "dit" / "run" / "backbone.safetensors",
                                                        out / "dit" / "convert.json"]}
    old_table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    (out / "dit" / "metrics.json").unlink()
    capsys.readouterr()
    assert table2.main(args) == 0
    printed = capsys.readouterr().out
    assert "diffma-latent: training finished before, skipped" in printed
    assert "dit: conversion finished before, skipped" in printed
    assert "dit: scoring" in printed and "diffma-latent: scoring" not in printed
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())
    # the same predictions, the same scores:
    assert json.loads((out / "table.json").read_text(encoding="utf-8")) == old_table
    # A different budget for the same folder would make rows incomparable: refused, exit 2.
    assert table2.main([*args[:-len(TINY) - 2], "--steps", "3", *TINY]) == 2


def check_a_stopped_training_resumes_from_its_checkpoint(table2, args, out, capsys):
    run = out / "dit" / "run"
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    (run / "run.json").write_text(json.dumps({**info, "finished": False}), encoding="utf-8")
    (run / "backbone.safetensors").unlink()
    for stage in ("convert.json", "metrics.json"):
        (out / "dit" / stage).unlink()
    capsys.readouterr()
    assert table2.main(args) == 0
    assert "dit: resuming DiT-B/2" in capsys.readouterr().out
    resumed = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert resumed["finished"] and resumed["steps"] == 2 and resumed["resumed"]


def test_a_time_budget_splits_the_minutes_by_the_probed_speeds(table2, tiny_tree, monkeypatch, tmp_path):
    data, src, _ = tiny_tree
    speeds = {"diffma-latent": 10.0, "dit": 40.0}  # images/s
    monkeypatch.setattr(table2, "probe_speed", lambda args, out, recipe, key, embedder: speeds[key])
    args = table2.parse_args([str(data), str(src), "-o", str(tmp_path), "--train-minutes", "2", *TINY])
    recipe = table2.base_recipe(args)
    plan = table2.plan_budget(args, tmp_path, recipe, list(speeds), tmp_path / "embedder")
    # 120 s shared so that both see the same images: images / 10 + images / 40 = 120 -> 960 images.
    assert plan["images"] == 960 and plan["steps"] == 480 and plan["global_batch_size"] == 2
    assert json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))["steps"] == 480
    assert math.isclose(plan["images"] / speeds["diffma-latent"] + plan["images"] / speeds["dit"], 120)


def test_unknown_backbone_is_one_line_with_the_choices(table2, tiny_tree, tmp_path, capsys):
    data, src, _ = tiny_tree
    assert table2.main([str(data), str(src), "-o", str(tmp_path), "--backbones", "unet", *TINY]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("table2: error:") and "diffma-latent" in message and "\n" not in message


def check_paired_differences_against_scipy(out):
    """The paired block: per-case differences to the constant row, their mean and scipy's paired t."""
    from scipy.stats import ttest_rel

    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    paired = table["paired"]
    assert paired["reference"] == "constant"
    assert set(paired["rows"]) == {row["key"] for row in table["rows"]} - {"constant"}

    def per_case(key):
        cases = json.loads((out / key / "metrics.json").read_text(encoding="utf-8"))["cases"]
        return {case["case"]: case for case in cases}

    reference = per_case("constant")
    for key, differences in paired["rows"].items():
        row = per_case(key)
        cases = sorted(reference)
        assert sorted(row) == cases and len(cases) == 2
        for name in ("mae", "ssim", "paper_ssim", "paper_mse"):
            mine = np.array([row[case][name] for case in cases])
            base = np.array([reference[case][name] for case in cases])
            got = differences[name]
            assert got["n"] == 2 and got["mean"] == pytest.approx(float(np.mean(mine - base)), abs=1e-12)
            assert got["t"] == pytest.approx(float(ttest_rel(mine, base).statistic), rel=1e-9)
    text = (out / "table.md").read_text(encoding="utf-8")
    assert "| row − constant: mean training MR inside the mask | Δ MAE |" in text
    mae = paired["rows"]["dit"]["mae"]
    assert f"| DiT-B/2, latent+tokens | {mae['mean']:+.4f} (t {mae['t']:+.1f}) |" in text


def _normalised_mr(folder):
    """A case's MR on eval's scale, written out with numpy alone: the 0.5th/99.5th percentiles inside the
    mask map to -1/+1, clipped."""
    import SimpleITK as sitk

    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mr.nii.gz"))).astype(np.float64)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz"))) > 0
    low, high = np.percentile(mr[mask], [0.5, 99.5])
    return np.clip(2 * (mr - low) / (high - low) - 1, -1, 1), mask, (low, high)


def check_calibration_rows_against_numpy(out, src, data):
    import SimpleITK as sitk

    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    cases = {folder.name: folder for folder in (src / "brain").iterdir() if folder.name.startswith("1B")}
    train = [_normalised_mr(cases[case]) for case in manifest["splits"]["train"]]
    constant = np.concatenate([mr[mask] for mr, mask, _ in train]).mean()
    for case in manifest["splits"]["test"]:
        reference, mask, (low, high) = _normalised_mr(cases[case])

        def read(row, case=case):
            return sitk.GetArrayFromImage(sitk.ReadImage(str(out / row / "predictions" / f"{case}.nii.gz")))

        np.testing.assert_allclose(read("constant")[mask], constant, rtol=1e-6)
        assert (read("constant")[~mask] == -1).all()
        clean = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[case] / "truth" / "mr_noise_free.nii.gz")))
        oracle = np.clip(2 * (clean[mask] - low) / (high - low) - 1, -1, 1)
        np.testing.assert_allclose(read("oracle")[mask], oracle, atol=1e-5)
        oracle_metrics = json.loads((out / "oracle" / "metrics.json").read_text(encoding="utf-8"))
        scored = {record["case"]: record for record in oracle_metrics["cases"]}
        expected_mae = np.abs(read("oracle")[mask].astype(np.float64) - reference[mask]).mean()
        assert scored[case]["mae"] == pytest.approx(expected_mae, rel=1e-5)
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[case] / "ct.nii.gz"))).astype(np.float64)
        ct_unit = (np.clip(ct[mask], -1024, 3000) + 1024) / 4024 * 2 - 1  # the recipe's HU window
        slope, intercept = np.polyfit(ct_unit, reference[mask], 1)
        affine = np.clip(slope * ct_unit + intercept, -1, 1)
        np.testing.assert_allclose(read("affine")[mask], affine, atol=1e-5)


def check_tta_and_ensemble_rows(table2, args, out, capsys):
    """--tta-of and --ensemble reuse the trained runs; the ensemble row is the voxelwise mean of its members'
    own predictions (one sample each, the same seed), computed here with numpy."""
    import SimpleITK as sitk

    capsys.readouterr()
    assert table2.main([*args, "--tta-of", "dit", "--tta-samples", "2",
                        "--ensemble", "diffma-latent+dit"]) == 0
    assert "training finished before, skipped" in capsys.readouterr().out
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    ensemble = "ensemble-diffma-latent+dit"
    keys = [row["key"] for row in table["rows"]]
    assert keys == ["diffma-latent", "dit", "dit-tta-mean2", ensemble, *CALIBRATION]
    labels = {row["key"]: row["label"] for row in table["rows"]}
    assert labels["dit-tta-mean2"] == "DiT-B/2, latent+tokens, mean of 2 samples, left-right flip TTA"
    assert labels[ensemble] == "ensemble (mean) of DiffMa-B/2, latent and DiT-B/2, latent+tokens"
    flipped = json.loads((out / "dit-tta-mean2" / "convert.json").read_text(encoding="utf-8"))
    assert (flipped["tta"], flipped["samples"]) == ("flip", 2)
    converted = json.loads((out / ensemble / "convert.json").read_text(encoding="utf-8"))
    assert converted["runs"] == ["diffma-latent/run", "dit/run"]

    def volume(key, case):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out / key / "predictions" / f"{case}.nii.gz")))

    for case in converted["seconds_per_volume"]:
        expected = (volume("diffma-latent", case).astype(np.float64) + volume("dit", case)) / 2
        np.testing.assert_allclose(volume(ensemble, case), expected, atol=1e-4)
        assert not np.allclose(volume("dit-tta-mean2", case), volume("dit", case))  # the mirror image counts
    with pytest.raises(SystemExit, match="every member must be one of --backbones"):
        table2.run(table2.parse_args([*args, "--ensemble", "diffma-latent+zigma"]))
    with pytest.raises(SystemExit, match="every row must be one of --backbones"):
        table2.run(table2.parse_args([*args, "--tta-of", "zigma"]))
    for wrong in ("DiT-B/2", "DiffMa-B/3"):  # a baseline, a size that does not exist
        refusal = f"--diffma-model {re.escape(wrong)}: not a DiffMa model; choose one of .*DiffMa-S/4"
        with pytest.raises(SystemExit, match=refusal):
            table2.run(table2.parse_args([*args, "--diffma-model", wrong]))


def test_diffma_model_replaces_only_the_diffma_rows_model(table2):
    """--diffma-model: the DiffMa rows train that model with the recipe's depth and width; the baselines and
    every other override are untouched."""
    from diffma_cli.config import load_recipe

    recipe = load_recipe("demo")
    for key in ("diffma-latent-tokens", "diffma-latent-tokens-min-snr", "diffma-regression"):
        changed = table2.entry_recipe(recipe, key, 7, "DiffMa-S/4")
        plain = table2.entry_recipe(recipe, key, 7)
        assert (changed.model.name, plain.model.name) == ("DiffMa-S/4", "DiffMa-B/2")
        assert changed.model.depth == plain.model.depth == recipe.model.depth
        assert changed.diffusion == plain.diffusion and changed.training == plain.training
    assert table2.entry_recipe(recipe, "diffma-latent-tokens-min-snr", 7).diffusion.mse_weighting == "min-snr"
    assert table2.entry_recipe(recipe, "dit", 7, "DiffMa-S/4").model.name == "DiT-B/2"
