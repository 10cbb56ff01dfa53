"""`diffma demo` end to end on the CPU (the smallest case count): every stage leaves what it promises."""

import json
import re

from typer.testing import CliRunner

from diffma_cli.cli import app


def test_demo_runs_every_stage_and_reports_the_evaluated_metrics(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "-o", str(out), "--cases", "3"])
    assert result.exit_code == 0, result.output
    # The run folder is what `diffma convert --model` needs.
    from diffma_cli.runs import load_run

    run = load_run(out / "run")
    assert run.recipe.model.name == "DiffMa-S/4"
    # One synthetic MR volume per test case, scored by eval, with a report that links existing images.
    manifest = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))
    test_cases = manifest["splits"]["test"]
    written = sorted(p.name for p in (out / "predictions").iterdir())
    assert written == sorted(f"{case}.nii.gz" for case in test_cases)
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert [case["case"] for case in metrics["cases"]] == sorted(test_cases)
    index = (out / "eval" / "report" / "index.html").read_text(encoding="utf-8")
    images = re.findall(r'src="([^"]+)"', index)
    assert images and all((out / "eval" / "report" / image).is_file() for image in images)
    # The numbers printed at the end are those of metrics.json.
    shown = re.search(r"SSIM\s+([0-9.]+)", result.stdout)
    assert shown and abs(float(shown.group(1)) - metrics["summary"]["ssim"]["mean"]) < 5e-4
    # The demo's model (CT latent as input, a few hundred CPU steps) follows the CT: on the held-out
    # phantom it beats predicting one constant MR value, whose MAE the demo prints beside its own.
    constant = float(re.search(r"MAE of a constant MR value\s+([0-9.]+)", result.stdout).group(1))
    assert run.recipe.model.condition == "latent+tokens"
    assert metrics["summary"]["mae"]["mean"] < constant
    # Existing output is refused without --overwrite: one line, exit 3.
    again = CliRunner().invoke(app, ["demo", "-o", str(out), "--cases", "3"])
    assert again.exit_code == 3
    assert again.output.strip().splitlines()[-1].startswith("diffma: error:")


def test_demo_budgets_grow_with_the_cases_beyond_six():
    from diffma_cli.config import load_recipe
    from diffma_cli.demo import DEMO_CASES, demo_recipe

    base = load_recipe("demo")
    assert demo_recipe(DEMO_CASES) == base
    assert demo_recipe(3) == base  # fewer cases keep the sized budget (the run is short already)
    tripled = demo_recipe(3 * DEMO_CASES)
    for section in ("vae", "embedder"):
        assert getattr(tripled, section).training.steps == 3 * getattr(base, section).training.steps
    assert tripled.training.steps == 3 * base.training.steps
    assert demo_recipe(DEMO_CASES + 1).training.steps == -(-base.training.steps * 7 // 6)  # rounded up
