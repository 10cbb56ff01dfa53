"""`diffma import-weights` and `diffma info` from the command line."""

import argparse
import json
import os
from pathlib import Path

import torch
from typer.testing import CliRunner

from diffma_cli.cli import app

RELEASED_EMBEDDERS = Path(__file__).parents[1] / "data" / "released-embedder"
BRAIN = RELEASED_EMBEDDERS / "brain_patch_size_2.pt"


def _run(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _one_error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffma: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_import_weights_then_info(tmp_path):
    output = tmp_path / "embedder-brain.safetensors"
    result = _run("import-weights", BRAIN, "-o", output)
    assert result.exit_code == 0, result.output
    assert "embedder/2" in result.stdout and "15,938 parameters" in result.stdout and "EMA" in result.stdout

    result = _run("info", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "embedder/2" and summary["parameters"] == 15938
    assert summary["config"]["patch_size"] == 2 and summary["dtypes"] == ["F32"]
    assert summary["provenance"]["source"] == BRAIN.name and summary["provenance"]["weights"] == "ema"
    # the sha256 published with the file (tests/data/released-embedder/README.md)
    published = "390d441bf374345eca3e727e0accf1d62e4b7fd33dcfcecd974c9f9bdbb1b27d"
    assert summary["provenance"]["sha256"] == published
    assert summary["provenance"]["args"]["epochs"] == 100  # the released training options travel along

    result = _run("info", output)
    assert result.exit_code == 0
    assert "model: embedder/2" in result.stdout and "parameters: 15,938" in result.stdout


def test_existing_output_needs_overwrite(tmp_path):
    output = tmp_path / "embedder.safetensors"
    assert _run("import-weights", BRAIN, "-o", output).exit_code == 0
    before = output.read_bytes()
    line = _one_error_line(_run("import-weights", BRAIN, "-o", output, "--raw"), 3)
    assert line == f"diffma: error: {output}: already exists (pass --overwrite to replace it)"
    assert output.read_bytes() == before
    result = _run("import-weights", BRAIN, "-o", output, "--raw", "--overwrite")
    assert result.exit_code == 0 and "raw model weights" in result.stdout
    assert output.read_bytes() != before


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "ema": {}, "opt": {}, "args": Payload()}, evil)
    output = tmp_path / "out.safetensors"
    line = _one_error_line(_run("import-weights", evil, "-o", output), 2)
    assert str(evil) in line and "refused" in line and "system" in line
    line = _one_error_line(_run("info", evil), 2)
    assert "refused" in line
    assert not marker.exists() and not output.exists()


def test_output_must_be_safetensors(tmp_path):
    line = _one_error_line(_run("import-weights", BRAIN, "-o", tmp_path / "embedder.pt"), 2)
    assert "weights are written as .safetensors files" in line
    assert not (tmp_path / "embedder.pt").exists()


def test_wrong_patch_size_is_one_clear_line(tmp_path):
    line = _one_error_line(_run("import-weights", BRAIN, "-o", tmp_path / "e.safetensors", "--model",
                                "embedder/4"), 2)
    assert "vision_embedding.proj.weight" in line and "(512, 4, 2, 2)" in line and "(512, 4, 4, 4)" in line
    line = _one_error_line(_run("import-weights", BRAIN, "-o", tmp_path / "e.safetensors", "--model",
                                "NoSuch-B/2"), 2)
    assert "unknown model 'NoSuch-B/2'" in line


def test_info_on_a_released_checkpoint_shows_what_it_holds():
    result = _run("info", BRAIN, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["holds"] == ["model", "ema", "opt", "args"]
    assert summary["ema_weights"]["recognised_as"]["name"] == "embedder/2"
    assert summary["ema_weights"]["parameters"] == 15938
    assert summary["optimizer"]["settings"]["lr"] == 1e-4
    assert summary["args"]["global_batch_size"] == 32


def test_info_on_a_run_folder_and_bad_paths(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("model:\n  name: DiffMa-B/2\ntrain:\n  epochs: 50\n", encoding="utf-8")
    (run / "run.json").write_text('{"kind": "embedder", "finished": true}', encoding="utf-8")
    assert _run("import-weights", BRAIN, "-o", run / "embedder.safetensors").exit_code == 0
    (run / "checkpoints" / "step-0000100").mkdir(parents=True)
    checkpoint_weights = run / "checkpoints" / "step-0000100" / "ema.safetensors"
    assert _run("import-weights", BRAIN, "-o", checkpoint_weights).exit_code == 0
    result = _run("info", run, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == {"kind": "embedder", "finished": True}
    assert summary["recipe"]["train"]["epochs"] == 50
    assert [weights["model"] for weights in summary["weights"]] == ["embedder/2"]  # checkpoints aside
    assert summary["checkpoints"] == ["step-0000100"]
    result = _run("info", run)
    assert result.exit_code == 0
    assert "format: run folder" in result.stdout and "kind: embedder" in result.stdout

    assert "no such file" in _one_error_line(_run("info", tmp_path / "missing.safetensors"), 2)
    assert "not a run folder" in _one_error_line(_run("info", tmp_path / "run" / "checkpoints"), 2)


def test_args_namespace_of_a_bare_options_checkpoint(tmp_path):
    """A DiT checkpoint whose options name the model: recognised without --model."""
    from diffma_cli.models import create_model

    model = create_model("DiT-S/2", depth=2, hidden_size=16, input_size=8)
    path = tmp_path / "dit.pt"
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": {},
                "args": argparse.Namespace(model="DiT-S/2")}, path)
    result = _run("import-weights", path, "-o", tmp_path / "dit.safetensors")
    assert result.exit_code == 0, result.output
    assert "DiT-S/2" in result.stdout


def test_info_on_foreign_and_truncated_safetensors(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)}, str(foreign),
              metadata={"origin": "elsewhere"})
    summary = json.loads(_run("info", foreign, "--json").stdout)
    assert summary["format"] == "safetensors (not written by diffma)"
    assert summary["parameters"] == 17 and summary["dtypes"] == ["F16", "F32"]
    assert summary["metadata"] == {"origin": "elsewhere"}
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(foreign.read_bytes()[:-8])
    assert "damaged or truncated" in _one_error_line(_run("info", truncated), 2)
