"""Restricted reading of torch.save files: same tensors as torch.load, options kept, code never run."""

import argparse
import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from fake_omegaconf import write_fake_omegaconf

from diffma_cli.errors import InputError, UnsafeFileError
from diffma_cli.weights.torch_pickle import (
    InertObject,
    StoredTensor,
    load_tensors,
    plain_data,
    read_torch_checkpoint,
)

RELEASED_EMBEDDERS = Path(__file__).parents[1] / "data" / "released-embedder"


@pytest.mark.parametrize("name", ["brain_patch_size_2.pt", "pelvis_patch_size_2.pt"])
def test_released_embedder_checkpoints_read_like_torch_load(name):
    path = RELEASED_EMBEDDERS / name
    content = read_torch_checkpoint(path)
    # Independent reference: torch's own weights-only loader, told that Namespace is harmless.
    with torch.serialization.safe_globals([argparse.Namespace]):
        reference = torch.load(path, map_location="cpu", weights_only=True)
    assert set(content) == {"model", "ema", "opt", "args"}
    for which in ("model", "ema"):
        ours = load_tensors(content[which])
        assert list(ours) == list(reference[which])
        for key, tensor in reference[which].items():
            assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
    assert plain_data(content["args"]) == vars(reference["args"])
    assert plain_data(content["opt"])["param_groups"][0]["lr"] == reference["opt"]["param_groups"][0]["lr"]


def test_dtypes_views_and_shared_storages_match_torch_load(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {
        "float64": torch.randn(3, 2, dtype=torch.float64),
        "bfloat16": torch.randn(5, dtype=torch.bfloat16),
        "half": torch.randn(2, 2, dtype=torch.float16),
        "int64": torch.arange(7),
        "bool": torch.tensor([True, False, True]),
        "transposed_view": base.t(),  # non-contiguous strides
        "row_view": base[2],  # offset into a shared storage
        "base": base,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "nested": [torch.ones(2), {"deep": (torch.zeros(1), 3, "text")}],
    }
    path = tmp_path / "many.pt"
    torch.save(saved, path)
    ours = load_tensors(read_torch_checkpoint(path))
    reference = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("float64", "bfloat16", "half", "int64", "bool", "transposed_view", "row_view", "base",
                "scalar", "empty"):
        assert ours[key].dtype == reference[key].dtype and ours[key].shape == reference[key].shape, key
        assert torch.equal(ours[key], reference[key]), key
    assert torch.equal(ours["nested"][1]["deep"][0], torch.zeros(1))
    assert ours["nested"][1]["deep"][1:] == (3, "text")


def test_tensors_are_read_only_when_asked(tmp_path):
    path = tmp_path / "lazy.pt"
    torch.save({"weight": torch.ones(3, 4)}, path)
    stored = read_torch_checkpoint(path)["weight"]
    assert isinstance(stored, StoredTensor) and stored.shape == (3, 4) and stored.numel() == 12
    assert stored.dtype == torch.float32
    assert torch.equal(stored.load(), torch.ones(3, 4))


class _RunsCommand:
    """A pickle payload: unpickling it would call os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _EvaluatesCode:
    """A payload through a builtin: unpickling it would eval() code that creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.path)!r}).touch()",)


@pytest.mark.parametrize("where", ["args", "inside_state_dict", "top_level"])
def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, where):
    marker = tmp_path / "payload-ran"
    payload = _RunsCommand(f"touch {marker}")
    state = OrderedDict(weight=torch.ones(2))
    content = {"model": state, "ema": state, "opt": {}, "args": argparse.Namespace(epochs=1)}
    if where == "args":
        content["args"] = payload
    elif where == "inside_state_dict":
        content["ema"] = OrderedDict(weight=torch.ones(2), evil=payload)
    else:
        content = payload
    path = tmp_path / "evil.pt"
    torch.save(content, path)
    with pytest.raises(UnsafeFileError) as refused:
        read_torch_checkpoint(path)
    message = str(refused.value)
    assert str(path) in message and "system" in message  # os.system pickles as posix.system
    assert refused.value.exit_code == 2
    assert not marker.exists()
    # Control: the payload is real, an unrestricted unpickle runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_builtin_payload_is_refused(tmp_path):
    marker = tmp_path / "created-by-eval"
    path = tmp_path / "evil-eval.pt"
    torch.save({"model": {}, "args": _EvaluatesCode(marker)}, path)
    with pytest.raises(UnsafeFileError, match="builtins.eval"):
        read_torch_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_dictconfig_args_become_plain_options_without_importing_omegaconf(tmp_path, monkeypatch):
    write_fake_omegaconf(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from omegaconf.dictconfig import DictConfig

    options = {"model": "DiffMa-L/2", "image_size": 224, "lr": 1e-4, "wandb": False, "ckpt": None,
               "betas": [0.9, 0.999], "nested": {"vae": "ema", "steps": [250, 10]}}
    path = tmp_path / "diffusion.pt"
    torch.save({"model": {"w": torch.ones(1)}, "ema": {"w": torch.ones(1)}, "opt": {},
                "args": DictConfig(options)}, path)
    for name in [module for module in sys.modules if module.split(".")[0] == "omegaconf"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(tmp_path)])

    content = read_torch_checkpoint(path)
    assert isinstance(content["args"], InertObject)
    assert content["args"].qualname == "omegaconf.dictconfig.DictConfig"
    assert plain_data(content["args"]) == options
    assert not any(module.split(".")[0] == "omegaconf" for module in sys.modules)


def test_truncated_checkpoint_is_an_input_error(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        truncated = tmp_path / f"cut-{cut}.pt"
        truncated.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated|damaged|not a readable"):
            load_tensors(read_torch_checkpoint(truncated))


def test_legacy_format_is_refused_clearly(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match="legacy"):
        read_torch_checkpoint(path)


def test_other_files_are_refused(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        read_torch_checkpoint(text)
    with pytest.raises(InputError, match="no such file"):
        read_torch_checkpoint(tmp_path / "missing.pt")
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("readme.txt", "hello")
    with pytest.raises(InputError, match="no <name>/data.pkl"):
        read_torch_checkpoint(archive)


def _torch_like_archive(path: Path, payload: bytes, storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as handle:
        handle.writestr("archive/data.pkl", payload)
        for key, data in storages.items():
            handle.writestr(f"archive/data/{key}", data)


class _StorageMarker:
    pass


class _TensorRecord:
    """Pickles like a torch tensor record, with a shape chosen by the test."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_StorageMarker(), 0, self.shape, (1,), False, OrderedDict())


def _pickle_with_storage(obj, numel: int) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = lambda item: (
        ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(item, _StorageMarker) else None)
    pickler.dump(obj)
    return buffer.getvalue()


def test_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "overrun.pt"
    _torch_like_archive(path, _pickle_with_storage({"w": _TensorRecord((1000,))}, numel=4), {"0": bytes(16)})
    with pytest.raises(InputError, match="outside"):
        read_torch_checkpoint(path)
    good = tmp_path / "fits.pt"
    _torch_like_archive(good, _pickle_with_storage({"w": _TensorRecord((4,))}, numel=4), {"0": bytes(16)})
    assert torch.equal(load_tensors(read_torch_checkpoint(good))["w"], torch.zeros(4))


def test_storage_shorter_than_announced_is_refused(tmp_path):
    path = tmp_path / "short.pt"
    _torch_like_archive(path, _pickle_with_storage({"w": _TensorRecord((4,))}, numel=4), {"0": bytes(8)})
    with pytest.raises(InputError, match="shorter"):
        read_torch_checkpoint(path)


class _TensorRecordRewritten(_TensorRecord):
    """A valid tensor record followed by a BUILD that tries to change its shape after the bounds check."""

    def __reduce__(self):
        return (*super().__reduce__(), {"shape": (1000,)})


def test_pickle_cannot_rewrite_a_checked_tensor_record(tmp_path):
    path = tmp_path / "rewrite.pt"
    payload = _pickle_with_storage({"w": _TensorRecordRewritten((4,))}, numel=4)
    _torch_like_archive(path, payload, {"0": bytes(16)})
    with pytest.raises(InputError, match="tries to modify a StoredTensor"):
        read_torch_checkpoint(path)


def test_options_with_cycles_and_exponential_sharing_stay_small(tmp_path):
    options = argparse.Namespace(name="run")
    options.itself = options  # a cycle
    shared = ["leaf"]
    for _ in range(60):  # 2^60 paths if shared lists were expanded naively
        shared = [shared, shared]
    options.tree = shared
    path = tmp_path / "options.pt"
    torch.save({"model": {}, "args": options}, path)
    plain = plain_data(read_torch_checkpoint(path)["args"], max_items=1000)
    assert plain["name"] == "run" and plain["itself"] == "..."
    assert len(repr(plain)) < 100_000


def test_options_holding_bytes_and_sets_are_read(tmp_path):
    path = tmp_path / "bytes.pt"
    options = argparse.Namespace(tag=b"\x00\xffraw", splits={"train", "val"}, shape=(1, 2))
    torch.save({"model": {}, "args": options}, path)  # protocol 2: bytes via _codecs.encode, set via REDUCE
    args = read_torch_checkpoint(path)["args"]
    assert args.state == {"tag": b"\x00\xffraw", "splits": {"train", "val"}, "shape": (1, 2)}

