"""benchmarks/table2.py on a tiny budget (CPU): two backbones and the floor, the table's structure, every
number traced back to the files the stages wrote, resuming, and the affine floor against numpy's polyfit."""

import importlib.util
import json
import math
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
BACKBONES = ["diffma-spiral", "dit"]


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
    assert "| DiffMa-B/2, spiral scan |" in capsys.readouterr().out  # the final table is printed
    check_rows_come_from_the_files_each_stage_wrote(table2, out)
    check_markdown_cells_are_the_metrics_files_rounded(table2, out)
    check_paired_differences_against_scipy(out)
    check_a_second_call_skips_finished_stages_and_redoes_a_missing_one(table2, args, out, capsys)
    check_a_stopped_training_resumes_from_its_checkpoint(table2, args, out, capsys)


def check_rows_come_from_the_files_each_stage_wrote(table2, out):
    table = json.loads((out / "table.json").read_text())
    assert [row["key"] for row in table["rows"]] == [*BACKBONES, "affine-floor"]
    assert table["plan"]["steps"] == 2 and table["plan"]["images"] == 4
    from diffma_cli.train.run_folder import load_run

    for row in table["rows"]:
        folder = out / row["key"]
        # The files the row names, relative to the table's folder, are the ones it was read from.
        assert (out / row["files"]["metrics"]).resolve() == (folder / "metrics.json").resolve()
        assert (out / row["files"]["convert"]).resolve() == (folder / "convert.json").resolve()
        metrics = json.loads((folder / "metrics.json").read_text())
        converted = json.loads((folder / "convert.json").read_text())
        assert row["cases"] == len(metrics["cases"]) == 2
        for name, _, _ in table2.METRICS:
            assert row["metrics"][name] == metrics["summary"][name]
            values = [case[name] for case in metrics["cases"]]  # the summary is over these cases
            assert row["metrics"][name]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert row["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        seconds = list(converted["seconds_per_volume"].values())
        assert sorted(converted["seconds_per_volume"]) == sorted(case["case"] for case in metrics["cases"])
        assert row["seconds_per_volume"]["mean"] == pytest.approx(np.mean(seconds), rel=1e-12)
        assert row["parameters"] == converted["parameters"]
        if row["key"] == "affine-floor":
            assert row["train_images"] is None and row["parameters"] == 2
            continue
        assert (out / row["files"]["run"]).resolve() == (folder / "run" / "run.json").resolve()
        run = load_run(folder / "run")
        assert row["parameters"] == sum(p.numel() for p in run.backbone.parameters())
        assert row["train_images_per_second"] == run.info["images_per_second"]
        assert row["train_images"] == run.info["steps"] * run.recipe.training.global_batch_size == 4
        # The same recipe for both, but each its own backbone.
        assert run.backbone.config["depth"] == 1 and run.backbone.config["hidden_size"] == 32
        assert row["model"] == {"diffma-spiral": "DiffMa-B/2", "dit": "DiT-B/2"}[row["key"]]
    assert load_run(out / "diffma-spiral" / "run").backbone.config["scan"] == "spiral"


def check_markdown_cells_are_the_metrics_files_rounded(table2, out):
    table = json.loads((out / "table.json").read_text())
    text = (out / "table.md").read_text(encoding="utf-8")
    first_table = text.split("\n\n")[0]  # the paired-differences table follows after a blank line
    lines = [line for line in first_table.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert header.count("|") == 5 + len(table2.METRICS) + 1
    assert len(rows) == 3
    for line, row in zip(rows, table["rows"], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        metrics = json.loads((out / row["key"] / "metrics.json").read_text())["summary"]
        for cell, (name, _, decimals) in zip(cells[5:], table2.METRICS, strict=True):
            mean, std = (float(part) for part in cell.split("±"))
            assert mean == round(metrics[name]["mean"], decimals)
            assert std == round(metrics[name]["std"], decimals)
        assert cells[0] == row["label"]


def check_a_second_call_skips_finished_stages_and_redoes_a_missing_one(table2, args, out, capsys):
    kept = {path: path.stat().st_mtime_ns for path in [out / "diffma-spiral" / "run" / "run.json",
                                                        out / "diffma-spiral" / "metrics.json",
                                                        out / "dit" / "run" / "backbone.safetensors",
                                                        out / "dit" / "convert.json"]}
    old_table = json.loads((out / "table.json").read_text())
    (out / "dit" / "metrics.json").unlink()
    capsys.readouterr()
    assert table2.main(args) == 0
    printed = capsys.readouterr().out
    assert "diffma-spiral: training finished before, skipped" in printed
    assert "dit: conversion finished before, skipped" in printed
    assert "dit: scoring" in printed and "diffma-spiral: scoring" not in printed
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items())
    assert json.loads((out / "table.json").read_text()) == old_table  # the same predictions, the same scores
    # A different budget for the same folder would make rows incomparable: refused, exit 2.
    assert table2.main([*args[:-len(TINY) - 2], "--steps", "3", *TINY]) == 2


def check_a_stopped_training_resumes_from_its_checkpoint(table2, args, out, capsys):
    run = out / "dit" / "run"
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "finished": False}))
    (run / "backbone.safetensors").unlink()
    for stage in ("convert.json", "metrics.json"):
        (out / "dit" / stage).unlink()
    capsys.readouterr()
    assert table2.main(args) == 0
    assert "dit: resuming DiT-B/2" in capsys.readouterr().out
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["finished"] and resumed["steps"] == 2 and resumed["resumed"]


def test_the_floor_is_the_least_squares_affine_map_inside_the_mask(table2):
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1, 1, (4, 6, 5)).astype(np.float32)
    mask = rng.uniform(size=ct.shape) > 0.3
    mr = (0.6 * ct - 0.1 + rng.normal(0, 0.05, ct.shape)).astype(np.float32)
    mr[~mask] = 5.0  # values outside the mask must not enter the fit
    prediction, a, b = table2.affine_floor(ct, mr, mask)
    slope, intercept = np.polyfit(ct[mask].astype(np.float64), mr[mask].astype(np.float64), 1)
    assert a == pytest.approx(slope, rel=1e-9) and b == pytest.approx(intercept, rel=1e-9)
    np.testing.assert_allclose(prediction[mask], np.clip(slope * ct[mask] + intercept, -1, 1), atol=1e-6)
    assert (prediction[~mask] == -1).all()


def test_a_time_budget_splits_the_minutes_by_the_probed_speeds(table2, tiny_tree, monkeypatch, tmp_path):
    data, src, _ = tiny_tree
    speeds = {"diffma-spiral": 10.0, "dit": 40.0}  # images/s
    monkeypatch.setattr(table2, "probe_speed", lambda args, out, recipe, key, embedder: speeds[key])
    args = table2.parse_args([str(data), str(src), "-o", str(tmp_path), "--train-minutes", "2", *TINY])
    recipe = table2.base_recipe(args)
    plan = table2.plan_budget(args, tmp_path, recipe, list(speeds), tmp_path / "embedder")
    # 120 s shared so that both see the same images: images / 10 + images / 40 = 120 -> 960 images.
    assert plan["images"] == 960 and plan["steps"] == 480 and plan["global_batch_size"] == 2
    assert json.loads((tmp_path / "plan.json").read_text())["steps"] == 480
    assert math.isclose(plan["images"] / speeds["diffma-spiral"] + plan["images"] / speeds["dit"], 120)


def test_unknown_backbone_is_one_line_with_the_choices(table2, tiny_tree, tmp_path, capsys):
    data, src, _ = tiny_tree
    assert table2.main([str(data), str(src), "-o", str(tmp_path), "--backbones", "unet", *TINY]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("table2: error:") and "diffma-spiral" in message and "\n" not in message


def check_paired_differences_against_scipy(out):
    """The paired block: per-case differences to the spiral DiffMa row, their mean and scipy's paired t."""
    from scipy.stats import ttest_rel

    table = json.loads((out / "table.json").read_text())
    paired = table["paired"]
    assert paired["reference"] == "diffma-spiral"
    assert set(paired["rows"]) == {row["key"] for row in table["rows"]} - {"diffma-spiral"}

    def per_case(key):
        cases = json.loads((out / key / "metrics.json").read_text())["cases"]
        return {case["case"]: case for case in cases}

    reference = per_case("diffma-spiral")
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
    assert "| row − DiffMa-B/2, spiral scan | Δ MAE |" in text
    mae = paired["rows"]["dit"]["mae"]
    assert f"| DiT-B/2 | {mae['mean']:+.4f} (t {mae['t']:+.1f}) |" in text
