"""`diffma doctor`: what this machine can run, and what to do about what it cannot.

It reports Python, torch and CUDA versions, the GPUs, whether the optional fast packages (mamba-ssm,
triton, causal-conv1d) import (with the error if not), which selective-scan backend each device will use
for training and for sampling (`models.ops.selective_scan.resolve_backend`, the function the models call)
and which convolution backend (`models.ops.causal_conv.resolve_conv_backend`),
whether a recipe's frozen encoders (VAE, BiomedCLIP) are reachable without a download, and the free disk.
Nothing is downloaded and no model is built: hub weights are looked up in the local Hugging Face cache only,
and, when a recipe's encoder would have to be downloaded and the hub is not off, one TCP connection to the
hub's host tells whether that download could work (a recipe of local or cached encoders opens none).

`diagnose()` returns a JSON-able dict; every problem found is listed under "problems" with what to do.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

# Free disk below which doctor warns: a prepared SynthRAD anatomy (~180 cases of 224² float16 slices) plus
# its latent cache and a few checkpoints take several GiB.
LOW_DISK_GIB = 10.0
# Seconds to wait for the hub's host to accept a connection. Hospital and cluster machines often have no route
# out at all; a connection that neither opens nor fails (a silent firewall) must not hang doctor.
HUB_PROBE_SECONDS = 3.0

# The optional packages of the GPU fast path: import name, distribution name, what uses it.
FAST_PACKAGES = [
    ("mamba_ssm", "mamba-ssm", "the CUDA selective-scan kernel (training on a GPU)"),
    ("triton", "triton", "our Triton selective-scan kernel (opt-in: backend=\"triton\")"),
    ("causal_conv1d", "causal-conv1d", "the fused convolution + SiLU of our mixers on a GPU"),
]
INSTALL_FAST_PATH = ("pip install mamba-ssm causal-conv1d --no-build-isolation (built against this torch "
                     "and CUDA; see docs/troubleshooting.md)")
INSTALL_FUSED_CONV = ("pip install causal-conv1d --no-build-isolation (built against this torch and CUDA; "
                      "see docs/troubleshooting.md)")

# Files a hub source needs in the local cache: the diffusers VAE folder, open_clip's BiomedCLIP repo.
VAE_FILES = ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package(module: str, distribution: str, used_for: str) -> dict[str, Any]:
    """Whether `module` imports; the error text (first line) if it does not."""
    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError; OSError/RuntimeError: an extension built for another torch
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return {"importable": False, "version": _version(distribution), "used_for": used_for,
                "error": f"{type(error).__name__}: {first_line}"}
    return {"importable": True, "version": _version(distribution), "used_for": used_for}


def _gpus(torch) -> list[dict[str, Any]]:
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": properties.name,
                     "memory_gib": round(properties.total_memory / 2**30, 1),
                     "compute_capability": f"{properties.major}.{properties.minor}"})
    return gpus


def _devices(gpus: list[dict]) -> list[str]:
    return ["cpu"] + [f"cuda:{gpu['index']}" for gpu in gpus]


def _scan_backends(torch, gpus: list[dict]) -> dict[str, dict[str, str]]:
    """Backend per device for a training call (needs a backward) and a sampling call (bf16, no grad)."""
    from diffma_cli.models.ops.selective_scan import resolve_backend

    backends = {}
    for device in _devices(gpus):
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        u = torch.zeros(1, 1, 1, device=device, dtype=dtype)
        backends[device] = {"training": resolve_backend(None, u, grad=True),
                            "sampling": resolve_backend(None, u, grad=False)}
    return backends


def _conv_backends(torch, gpus: list[dict]) -> dict[str, str]:
    """The mixers' convolution backend per device (bf16 input on a GPU, as under autocast)."""
    from diffma_cli.models.ops.causal_conv import resolve_conv_backend

    return {device: resolve_conv_backend(None, torch.zeros(1, 1, 1, device=device))
            for device in _devices(gpus)}


def _hub_file(hub_id: str, names: str | tuple[str, ...]) -> str | None:
    """The local cache path of the first of `names` cached for `hub_id`, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in (names,) if isinstance(names, str) else names:
        found = try_to_load_from_cache(hub_id, name)
        if isinstance(found, str):
            return found
    return None


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> tuple[bool, str]:
    """Whether a TCP connection to the hub's host (HF_ENDPOINT, default huggingface.co) opens: (ok, host).

    Only the connection is tried (no request is sent): a machine without a route out is told so here
    instead of by a download that fails mid-training. Proxies set in the environment are not followed.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port}"
    except OSError:
        return False, f"{host}:{port}"


def _encoder(what: str, source: str, files: tuple, offline: bool,
             probe_hub: Callable[[], tuple[bool, str]] | None) -> dict[str, Any]:
    """Where encoder weights `source` would come from and whether they are there without a download;
    `probe_hub` (None when offline) is called only for weights that would have to be downloaded."""
    from diffma_cli.encoders.source import TINY, source_kind
    from diffma_cli.errors import InputError

    if source in (TINY, "none"):
        return {"source": source, "kind": "built in", "available": True}
    try:
        kind = source_kind(source)
    except InputError as error:
        return {"source": source, "kind": "path", "available": False, "detail": error.problem,
                "fix": f"give an existing {what} folder or file, or a hub id (docs/encoders.md)"}
    if kind in ("folder", "file"):
        return {"source": source, "kind": kind, "available": True, "detail": str(Path(source).resolve())}
    cached = [_hub_file(source, name) for name in files]
    if all(cached):
        return {"source": source, "kind": "hub", "available": True,
                "detail": f"in the local Hugging Face cache ({Path(cached[0]).parent})"}
    copy_here = (f"on a machine with internet run `hf download {source} --local-dir DIR`, copy DIR here and "
                 f"pass it instead of the hub id")
    if offline:
        return {"source": source, "kind": "hub", "available": False,
                "detail": "not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)",
                "fix": f"{copy_here} (docs/encoders.md)"}
    reachable = probe_hub() if probe_hub is not None else None
    if reachable is not None and not reachable[0]:
        return {"source": source, "kind": "hub", "available": False,
                "detail": f"not in the local Hugging Face cache and the hub ({reachable[1]}) cannot be "
                          "reached",
                "fix": f"{copy_here}, or set HF_HUB_OFFLINE=1 and use local encoders (docs/encoders.md)"}
    return {"source": source, "kind": "hub", "available": True,
            "detail": "not cached yet: downloaded from the hub on first use (the hub is reachable)"}


def _encoders(recipe_name: str) -> dict[str, Any]:
    from diffma_cli.config import load_recipe
    from diffma_cli.encoders.clip import CONFIG_FILE, WEIGHTS_FILE
    from diffma_cli.encoders.source import offline_requested

    recipe = load_recipe(recipe_name)
    offline = offline_requested(True if recipe.encoders.offline else None)
    # At most one probe (up to HUB_PROBE_SECONDS behind a silent firewall), and only if a download is needed.
    probe = None if offline else cache(lambda: hub_reachable())
    vae = _encoder("VAE", recipe.encoders.vae, VAE_FILES, offline, probe)
    clip = _encoder("BiomedCLIP", recipe.encoders.clip, (WEIGHTS_FILE, CONFIG_FILE), offline, probe)
    reachable = probe() if probe is not None and probe.cache_info().currsize else None
    return {"recipe": recipe_name, "hub_offline": offline,
            "hub_reachable": None if reachable is None else reachable[0],
            "hub_host": None if reachable is None else reachable[1],
            "vae": vae, "clip": clip}


def _problems(report: dict[str, Any]) -> list[dict[str, str]]:
    """What will fail or run slowly here, each with what to do."""
    problems = []
    torch_info, packages = report["torch"], report["packages"]
    if not torch_info["cuda_available"]:
        fix = ("install a CUDA build of PyTorch (https://pytorch.org/get-started/locally/)"
               if torch_info["cuda_build"] is None else
               f"this torch is built for CUDA {torch_info['cuda_build']} but sees no GPU: check the driver "
               "(nvidia-smi) and CUDA_VISIBLE_DEVICES")
        problems.append({"what": "no CUDA GPU: training and convert run on the CPU (slow; fine for the demo)",
                         "fix": fix})
    else:  # a GPU whose scan falls back to the PyTorch loop is many times slower than the kernels
        slow = [f"{device} ({use})" for device, uses in report["scan_backends"].items() if device != "cpu"
                for use, backend in uses.items() if backend == "torch"]
        if slow:
            why = "; ".join(f"{name}: {package['error']}" for name, package in packages.items()
                            if not package["importable"])
            problems.append({"what": f"the slow PyTorch selective scan will run on {', '.join(slow)}"
                                     + (f" ({why})" if why else ""),
                             "fix": INSTALL_FAST_PATH})
        # With a fast scan, the unfused convolution is what is left: about 15 % of a DiffMa-B/2 training
        # step at 512² on an H100 (docs/benchmarks.md). Without one, the advice above installs both.
        unfused = [device for device, backend in report["conv_backends"].items()
                   if device != "cpu" and backend == "torch"]
        conv_package = packages.get("causal-conv1d", {})
        if unfused and not slow:
            why = f" (causal-conv1d: {conv_package['error']})" if conv_package.get("error") else ""
            problems.append({"what": f"PyTorch's unfused convolution will run on {', '.join(unfused)}{why}: "
                                     "DiffMa trains about 15 % slower at 512² (optional)",
                             "fix": INSTALL_FUSED_CONV})
    for what, label in (("vae", "VAE"), ("clip", "BiomedCLIP")):
        encoder = report["encoders"][what]
        if not encoder["available"]:
            problems.append({"what": f"{label} weights '{encoder['source']}' of recipe "
                                     f"{report['encoders']['recipe']}: {encoder['detail']}",
                             "fix": encoder["fix"]})
    if report["disk"]["free_gib"] < LOW_DISK_GIB:
        problems.append({"what": f"only {report['disk']['free_gib']} GiB free in {report['disk']['folder']}",
                         "fix": f"free space or work in another folder (prepared data, latent caches and "
                                f"checkpoints need several GiB; {LOW_DISK_GIB:g} GiB is a comfortable "
                                "minimum)"})
    return problems


def diagnose(recipe: str = "brain", folder: str | Path = ".") -> dict[str, Any]:
    """Everything `diffma doctor` shows, as JSON-able data (see the module docstring)."""
    import torch

    from diffma_cli.errors import InputError

    if not Path(folder).is_dir():
        raise InputError("no such folder" if not Path(folder).exists() else "is not a folder", path=folder,
                         hint="--folder names the folder whose free disk space is shown")

    from diffma_cli import __version__

    gpus = _gpus(torch) if torch.cuda.is_available() else []
    report: dict[str, Any] = {
        "diffma": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": {"version": torch.__version__, "cuda_build": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(),
                  "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None},
        "gpus": gpus,
        "packages": {distribution: _package(module, distribution, used_for)
                     for module, distribution, used_for in FAST_PACKAGES},
        "scan_backends": _scan_backends(torch, gpus),
        "conv_backends": _conv_backends(torch, gpus),
        "encoders": _encoders(recipe),
        "disk": {"folder": str(Path(folder).resolve()),
                 "free_gib": round(shutil.disk_usage(folder).free / 2**30, 1)},
    }
    report["problems"] = _problems(report)
    return report


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as aligned `name  value` lines, then what to do for each problem."""
    torch_info = report["torch"]
    rows = [("diffma", report["diffma"]),
            ("python", f"{report['python']['version']} ({report['python']['executable']})"),
            ("platform", report["platform"]),
            ("torch", f"{torch_info['version']} (CUDA build: {torch_info['cuda_build'] or 'none'}; CUDA "
                      f"available: {'yes' if torch_info['cuda_available'] else 'no'})")]
    rows += [(f"GPU {gpu['index']}", f"{gpu['name']}, {gpu['memory_gib']} GiB, compute capability "
                                     f"{gpu['compute_capability']}") for gpu in report["gpus"]] or \
        [("GPUs", "none")]
    for name, package in report["packages"].items():
        state = (f"{package['version'] or 'imports'}" if package["importable"]
                 else f"does not import ({package['error']})")
        rows.append((name, f"{state}; for {package['used_for']}"))
    for device, backends in report["scan_backends"].items():
        rows.append((f"scan on {device}",
                     f"training: {backends['training']}, sampling: {backends['sampling']}"))
    for device, backend in report["conv_backends"].items():
        rows.append((f"conv on {device}", backend))
    encoders = report["encoders"]
    for what, label in (("vae", "VAE"), ("clip", "BiomedCLIP")):
        encoder = encoders[what]
        state = "ok" if encoder["available"] else "NOT AVAILABLE"
        detail = f": {encoder['detail']}" if encoder.get("detail") else ""
        rows.append((f"{label} ({encoders['recipe']})",
                     f"{encoder['source']} [{encoder['kind']}] {state}{detail}"))
    if encoders["hub_offline"]:
        hub = "offline (HF_HUB_OFFLINE or the recipe)"
    elif encoders["hub_reachable"] is None:
        hub = "online; not probed (the recipe's encoders need no download)"
    else:
        state = "reachable" if encoders["hub_reachable"] else "NOT reachable"
        hub = f"online; {encoders['hub_host']} {state}"
    rows.append(("hub", hub))
    rows.append(("disk", f"{report['disk']['free_gib']} GiB free in {report['disk']['folder']}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if report["problems"]:
        lines += ["", "What to do:"]
        lines += [f"- {problem['what']}\n  -> {problem['fix']}" for problem in report["problems"]]
    else:
        lines += ["", "No problems found."]
    return lines
