"""`diffma doctor`: what it reports on this (CPU) machine, its JSON, the encoder look-up in a Hugging Face
cache built by hand, and the fast-path errors that point to it."""

import json

import pytest
import torch
from typer.testing import CliRunner

from diffma_cli import doctor
from diffma_cli.cli import app
from diffma_cli.errors import EnvironmentProblem

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what doctor says without CUDA")


def fake_hub_cache(root, hub_id: str, files: list[str]):
    """A Hugging Face hub cache holding `files` of `hub_id` (the layout huggingface_hub writes:
    models--owner--name/refs/main -> snapshots/<commit>/<file>)."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    for name in files:
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}", encoding="utf-8")
    return root


@cpu_only
def test_on_a_cpu_it_reports_no_cuda_and_the_torch_scan(tmp_path):
    report = doctor.diagnose("demo", tmp_path)
    assert report["torch"]["version"] == torch.__version__ and not report["torch"]["cuda_available"]
    assert report["gpus"] == []
    # The backend the models would use, asked of the same function they call.
    assert report["scan_backends"] == {"cpu": {"training": "torch", "sampling": "torch"}}
    assert report["conv_backends"] == {"cpu": "torch"}
    assert report["encoders"]["vae"] == {"source": "tiny", "kind": "built in", "available": True}
    assert report["disk"]["folder"] == str(tmp_path.resolve()) and report["disk"]["free_gib"] > 0
    assert [p["what"].split(":")[0] for p in report["problems"]] == ["no CUDA GPU"]
    assert all(problem["fix"] for problem in report["problems"])


@cpu_only
def test_the_command_prints_the_report_and_valid_json(tmp_path):
    text = CliRunner().invoke(app, ["doctor", "--recipe", "demo", "--folder", str(tmp_path)])
    assert text.exit_code == 0, text.output
    assert "scan on cpu" in text.stdout and "training: torch, sampling: torch" in text.stdout
    assert "GPUs" in text.stdout and "none" in text.stdout and "What to do:" in text.stdout
    as_json = CliRunner().invoke(app, ["doctor", "--recipe", "demo", "--folder", str(tmp_path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["torch"]["cuda_available"] is False and report["packages"]["triton"]["used_for"]
    assert set(report["packages"]) == {"mamba-ssm", "triton", "causal-conv1d"}
    assert "conv on cpu" in text.stdout


def test_a_package_that_does_not_import_is_reported_with_its_error():
    found = doctor._package("diffma_no_such_module", "diffma-no-such-module", "nothing")
    assert found == {"importable": False, "version": None, "used_for": "nothing",
                     "error": "ModuleNotFoundError: No module named 'diffma_no_such_module'"}


def gpu_report(packages, cuda_scan, cuda_conv):
    """A report as doctor builds it on a machine with one GPU, the encoders there and plenty of disk."""
    return {"torch": {"cuda_available": True, "cuda_build": "12.8"},
            "packages": packages,
            "scan_backends": {"cpu": {"training": "torch", "sampling": "torch"}, "cuda:0": cuda_scan},
            "conv_backends": {"cpu": "torch", "cuda:0": cuda_conv},
            "encoders": {"recipe": "demo", "vae": {"available": True}, "clip": {"available": True}},
            "disk": {"folder": "/data", "free_gib": 500.0}}


def test_a_gpu_that_falls_back_to_the_torch_scan_is_a_problem_with_the_import_error():
    """The GPU branch of the advice, from a report as doctor builds it on a GPU machine without mamba-ssm."""
    missing = {"importable": False, "version": None, "used_for": "x",
               "error": "ImportError: libcudart.so.12: cannot open shared object file"}
    triton = {"importable": True, "version": "3.6.0", "used_for": "x"}
    report = gpu_report({"mamba-ssm": missing, "triton": triton},
                        cuda_scan={"training": "torch", "sampling": "triton"}, cuda_conv="causal_conv1d")
    (problem,) = doctor._problems(report)
    assert "cuda:0 (training)" in problem["what"] and "cuda:0 (sampling)" not in problem["what"]
    assert "mamba-ssm: ImportError: libcudart.so.12" in problem["what"] and "mamba-ssm" in problem["fix"]
    report["scan_backends"]["cuda:0"]["training"] = "mamba_ssm"  # the kernels run: nothing to fix
    report["disk"]["free_gib"] = 2.0
    (problem,) = doctor._problems(report)
    assert problem["what"] == "only 2.0 GiB free in /data"


def test_a_gpu_with_a_fast_scan_but_the_unfused_convolution_gets_the_optional_advice():
    unfused = {"importable": False, "version": None, "used_for": "x",
               "error": "ModuleNotFoundError: No module named 'causal_conv1d'"}
    report = gpu_report({"mamba-ssm": {"importable": True, "version": "2.3.2", "used_for": "x"},
                         "causal-conv1d": unfused},
                        cuda_scan={"training": "mamba_ssm", "sampling": "mamba_ssm"}, cuda_conv="torch")
    (problem,) = doctor._problems(report)
    assert "unfused convolution will run on cuda:0 (causal-conv1d: ModuleNotFoundError" in problem["what"]
    assert "(optional)" in problem["what"] and problem["fix"].startswith("pip install causal-conv1d")
    # Without the scan kernel the scan's advice installs both: one problem, not two.
    report["scan_backends"]["cuda:0"]["training"] = "torch"
    (problem,) = doctor._problems(report)
    assert "selective scan" in problem["what"] and "mamba-ssm causal-conv1d" in problem["fix"]


def test_hub_weights_are_looked_up_in_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from diffma_cli.encoders.clip import WEIGHTS_FILE

    vae_id, clip_id = "stabilityai/sd-vae-ft-ema", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = doctor.diagnose("brain", tmp_path)
    assert not report["encoders"]["vae"]["available"] and report["encoders"]["hub_offline"]
    problems = {p["what"].split(" weights")[0]: p for p in report["problems"]}
    assert f"hf download {vae_id}" in problems["VAE"]["fix"]
    assert f"hf download {clip_id}" in problems["BiomedCLIP"]["fix"]

    cache = tmp_path / "cache"
    fake_hub_cache(cache, vae_id, ["config.json", "diffusion_pytorch_model.safetensors"])
    fake_hub_cache(cache, clip_id, [WEIGHTS_FILE])  # the config is missing: not usable offline
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    encoders = doctor.diagnose("brain", tmp_path)["encoders"]
    assert encoders["vae"]["available"] and "local Hugging Face cache" in encoders["vae"]["detail"]
    assert not encoders["clip"]["available"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online: a missing file is a download on first use ...
    monkeypatch.setattr(doctor, "hub_reachable", lambda: (True, "huggingface.co:443"))
    encoders = doctor.diagnose("brain", tmp_path)["encoders"]
    assert encoders["clip"]["available"]
    assert "downloaded from the hub on first use" in encoders["clip"]["detail"]
    # ... if the hub can be reached: a GPU node without a route out must not be told "ok"
    monkeypatch.setattr(doctor, "hub_reachable", lambda: (False, "huggingface.co:443"))
    report = doctor.diagnose("brain", tmp_path)
    assert not report["encoders"]["clip"]["available"] and report["encoders"]["vae"]["available"]
    assert "cannot be reached" in report["encoders"]["clip"]["detail"]
    assert any("HF_HUB_OFFLINE=1" in problem["fix"] for problem in report["problems"])


def test_hub_probe_opens_a_connection_to_the_endpoint_host(monkeypatch):
    """Against sockets of this machine (no network): a listening port is reachable, a closed one is not."""
    import socket

    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert doctor.hub_reachable(timeout=2.0) == (True, f"127.0.0.1:{port}")
    # The port is closed now that the server socket is: the connection is refused at once.
    assert doctor.hub_reachable(timeout=2.0) == (False, f"127.0.0.1:{port}")


def test_the_hub_is_probed_once_and_only_when_a_download_is_needed(tmp_path, monkeypatch):
    """A silent firewall costs each probe HUB_PROBE_SECONDS: a recipe of local encoders opens none, a recipe
    with two encoders to download opens one."""
    from huggingface_hub import constants

    from diffma_cli.config import apply_overrides, load_recipe, save_recipe

    calls = []
    monkeypatch.setattr(doctor, "hub_reachable", lambda: calls.append(1) or (False, "huggingface.co:443"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    vae = tmp_path / "vae"
    vae.mkdir()
    local = tmp_path / "local.yaml"
    save_recipe(apply_overrides(load_recipe("demo"), {"encoders.vae": str(vae), "encoders.offline": False}),
                local)
    report = doctor.diagnose(str(local), tmp_path)
    assert calls == [] and not report["encoders"]["hub_offline"]
    assert report["encoders"]["hub_reachable"] is None
    (hub_row,) = [line for line in doctor.report_lines(report) if line.startswith("hub ")]
    assert hub_row.split(maxsplit=1)[1].startswith("online; not probed")

    report = doctor.diagnose("brain", tmp_path)  # the SD VAE and BiomedCLIP, neither cached
    assert calls == [1] and report["encoders"]["hub_reachable"] is False
    (hub_row,) = [line for line in doctor.report_lines(report) if line.startswith("hub ")]
    assert hub_row.split(maxsplit=1)[1] == "online; huggingface.co:443 NOT reachable"


def test_local_encoder_paths_are_checked(tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    recipe = tmp_path / "recipe.yaml"
    from diffma_cli.config import apply_overrides, load_recipe, save_recipe

    save_recipe(apply_overrides(load_recipe("demo"), {"encoders.vae": str(vae),
                                                      "encoders.clip": str(tmp_path / "absent.bin")}), recipe)
    encoders = doctor.diagnose(str(recipe), tmp_path)["encoders"]
    assert encoders["vae"] == {"source": str(vae), "kind": "folder", "available": True,
                               "detail": str(vae.resolve())}
    assert not encoders["clip"]["available"] and "no such encoder" in encoders["clip"]["detail"]


@pytest.mark.skipif(doctor._package("mamba_ssm", "mamba-ssm", "")["importable"],
                    reason="mamba-ssm imports here")
def test_a_fast_path_that_is_not_there_points_to_doctor():
    from diffma_cli.models.ops.selective_scan import resolve_backend

    with pytest.raises(EnvironmentProblem, match="diffma doctor"):
        resolve_backend("mamba_ssm", torch.zeros(1, 1, 1))
