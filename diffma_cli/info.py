"""What a weights file or a run folder holds (`diffma info`), as JSON-friendly data; reads no tensor data.

- our `.safetensors`: model name, config, parameter count, dtypes, diffma version, provenance;
- another safetensors file: tensors, parameters, dtypes, its metadata;
- a released `.pt` checkpoint: what it holds (model/ema/opt/args), each state dict recognised as a model,
  optimiser settings and the training options (read safely, see `weights/torch_pickle.py`);
- a run folder of `diffma train` (run.json, recipe.yaml): what was trained, its recipe, the weights files in
  it (checkpoints' own files aside), its checkpoints and its training previews (PNG).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffma_cli.errors import InputError
from diffma_cli.weights import is_safetensors, read_safetensors_header, stored_config
from diffma_cli.weights.released import ReleasedCheckpoint, recognise
from diffma_cli.weights.torch_pickle import StoredTensor


def describe(path: str | Path) -> dict[str, Any]:
    """Summary of a weights file or run folder; InputError for anything else."""
    path = Path(path)
    if path.is_dir():
        return describe_run(path)
    if not path.is_file():
        raise InputError("no such file or folder", path=path)
    if is_safetensors(path):
        return describe_safetensors(path)
    return describe_checkpoint(path)


def parameter_count(shapes: list[Any]) -> int:
    """Number of values in all tensors (`.shape` objects or shapes), as docs/reference.md §3.6 counts."""
    total = 0
    for shape in shapes:
        count = 1
        for size in getattr(shape, "shape", shape):
            count *= size
        total += count
    return total


def describe_safetensors(path: Path) -> dict[str, Any]:
    import json

    metadata, tensors = read_safetensors_header(path)
    config = stored_config(metadata, path)
    summary: dict[str, Any] = {"file": str(path), "size_bytes": path.stat().st_size}
    if config:
        summary.update(format="diffma weights (safetensors)", model=config["name"], config=config,
                       diffma_version=metadata.get("diffma_version"))
    else:
        summary["format"] = "safetensors (not written by diffma)"
        if metadata:
            summary["metadata"] = metadata
    summary.update(tensors=len(tensors), parameters=parameter_count([shape for shape, _ in tensors.values()]),
                   dtypes=sorted({dtype for _, dtype in tensors.values()}))
    if config and "provenance" in metadata:
        summary["provenance"] = json.loads(metadata["provenance"])
    return summary


def describe_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = ReleasedCheckpoint.read(path)
    summary: dict[str, Any] = {"file": str(path), "size_bytes": path.stat().st_size}
    args = checkpoint.args()
    released_name = (args or {}).get("model")
    if checkpoint.is_training_checkpoint:
        summary["format"] = "PyTorch checkpoint (released DiffMa layout)"
        summary["holds"] = [str(key) for key in checkpoint.content]
        for label, ema in (("ema", True), ("model", False)):
            if label in checkpoint.content:
                stored = checkpoint.stored_weights(ema)
                summary[f"{label}_weights"] = _describe_state(stored, path, released_name)
        if "opt" in checkpoint.content:
            summary["optimizer"] = _describe_optimizer(checkpoint.content["opt"])
    else:
        summary["format"] = "PyTorch checkpoint (bare state dict)"
        summary["weights"] = _describe_state(checkpoint.stored_weights(), path, released_name)
    if args is not None:
        summary["args"] = args
    return summary


def _describe_state(stored: dict[str, StoredTensor], path: Path, released_name: str | None) -> dict[str, Any]:
    described: dict[str, Any] = {
        "tensors": len(stored), "parameters": parameter_count(list(stored.values())),
        "dtypes": sorted({str(tensor.dtype).removeprefix("torch.") for tensor in stored.values()}),
    }
    try:
        described["recognised_as"] = recognise(stored, path, released_name)
    except InputError as error:
        described["recognised_as"] = f"unknown: {error.problem}"
    return described


def _describe_optimizer(optimizer: Any) -> Any:
    """Settings of the first parameter group and how many entries of state (AdamW: one per parameter)."""
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list)):
        return "present"
    groups = optimizer["param_groups"]
    first = groups[0] if groups and isinstance(groups[0], dict) else {}
    settings = {key: list(value) if isinstance(value, tuple) else value for key, value in first.items()
                if key != "params" and isinstance(value, (int, float, str, bool, type(None), tuple))}
    return {"param_groups": len(groups), "state_entries": len(optimizer.get("state", {})),
            "settings": settings}


def describe_run(folder: Path) -> dict[str, Any]:
    """A run folder of `diffma train` (diffma_cli/runs.py): run.json, recipe, weights files, checkpoints."""
    import yaml

    from diffma_cli.runs import RECIPE, RUN_INFO, read_run_info
    from diffma_cli.train.checkpoint import CHECKPOINTS
    from diffma_cli.train.previews import preview_files

    if not (folder / RUN_INFO).is_file() and not (folder / RECIPE).is_file():
        raise InputError(f"is a folder but not a run folder (it has no {RUN_INFO} or {RECIPE})", path=folder,
                         hint="give a weights file (.safetensors, .pt) or a folder made by diffma train")
    summary: dict[str, Any] = {"folder": str(folder), "format": "run folder"}
    if (folder / RUN_INFO).is_file():
        summary["run"] = read_run_info(folder)
        # The weights of an unfinished run are not final (load_run refuses it): say so first.
        summary["status"] = ("finished" if summary["run"].get("finished") else
                             "UNFINISHED: training stopped before its last step; continue it with --resume")
    if (folder / RECIPE).is_file():
        try:
            summary["recipe"] = yaml.safe_load((folder / RECIPE).read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise InputError(f"unreadable recipe ({error})", path=folder / RECIPE) from None
    summary["weights"] = [describe_safetensors(path) for path in sorted(folder.rglob("*.safetensors"))
                          if CHECKPOINTS not in path.relative_to(folder).parts
                          and not path.name.startswith(".")]
    previews = preview_files(folder)
    if previews:
        summary["previews"] = [str(path.relative_to(folder)) for path in previews]
    checkpoints = folder / CHECKPOINTS
    if checkpoints.is_dir():
        summary["checkpoints"] = sorted(entry.name for entry in checkpoints.iterdir()
                                        if entry.is_dir() and not entry.name.startswith("."))
    return summary
