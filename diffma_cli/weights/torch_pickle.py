"""Read PyTorch `.pt` checkpoints without running any code from the file.

A `.pt` file written by `torch.save` (PyTorch >= 1.6) is a zip archive: `<prefix>/data.pkl` is a pickle of
the saved object whose tensors refer, through pickle "persistent ids", to raw storages `<prefix>/data/<key>`.
A plain unpickle can call any importable function the file names, so a checkpoint from the internet can run
arbitrary code. We unpickle with `find_class` restricted to an allow-list:

- `collections.OrderedDict`, builtin containers and scalars (`dict`, `list`, `set`, `int`, ...) and the
  latin-1 `_codecs.encode` with which protocol-2 pickles restore `bytes`;
- `torch._utils._rebuild_tensor_v2` and the typed storage names (`torch.FloatStorage`, ...), which we answer
  with our own functions: a tensor becomes a `StoredTensor` that records dtype, shape, strides and storage
  key, and is read from the archive only when asked (so listing a 5 GB checkpoint costs nothing);
- `argparse.Namespace` and everything from `omegaconf` and `typing` (the training options the released code
  stores in `args`): they become `InertObject`s, which keep the pickled data and have no behaviour.

Any other global raises `UnsafeFileError` naming the file and the global, before anything from it is called.

Why not `torch.load(weights_only=True)`: its allow-list is exact names only, while an OmegaConf `DictConfig`
pickles a dozen omegaconf classes (nodes, metadata, enums) that differ between omegaconf versions; a rule
"anything from omegaconf becomes inert data" needs our own `find_class`. Reading tensors ourselves also makes
them lazy, and keeps the security boundary in one short file that does not change with torch versions.

Not read: the legacy (pre-1.6) non-zip format and TorchScript archives; both are refused with an `InputError`.
"""

from __future__ import annotations

import builtins
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from diffma_cli.errors import InputError, UnsafeFileError

# Legacy (pre-1.6, non-zip) torch.save files start with a pickled magic number, 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# Python-2 module names that protocol-2 pickles (torch.save's default protocol) carry.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# Builtins that only build plain data when a pickle calls them.
# (`bytes` is left out: bytes(n) would allocate n bytes; protocol 2 pickles bytes as _codecs.encode instead.)
_SAFE_BUILTINS = {name: getattr(builtins, name) for name in
                  ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bool")}

# Modules whose classes only carry training options: they become InertObjects (see module docstring).
_INERT_PACKAGES = ("omegaconf", "typing")
_INERT_GLOBALS = {("argparse", "Namespace")}


def _storage_dtypes() -> dict[str, Any]:
    """The legacy typed-storage class names torch.save writes, by the dtype of their elements."""
    import torch

    return {
        "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
        "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
        "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
        "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
        "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
    }


class InertObject:
    """Stand-in for an object of an allowed options class (argparse.Namespace, omegaconf.DictConfig, ...).

    It never runs code of the original class: it records the arguments the pickle passed and the state the
    pickle restored (`state`, usually the original `__dict__`). `qualname` is the original "module.Class".
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls)
        instance.args = args
        instance.state = None
        return instance

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname} (inert)>"


class _Sealed:
    """Our own records in the unpickled result: a pickle's BUILD must not rewrite them after their checks."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the pickle tries to modify a {type(self).__name__}")


class StoredTensor(_Sealed):
    """A tensor of the checkpoint, not yet read: dtype, shape and where its data is in the archive."""

    def __init__(self, storage: _StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.stride = stride

    @property
    def dtype(self):
        return self.storage.dtype

    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    def load(self):
        """Read the data: a new contiguous CPU torch.Tensor."""
        import torch

        flat = self.storage.load()
        return torch.as_strided(flat, self.shape, self.stride, self.offset).clone(
            memory_format=torch.contiguous_format)

    def __repr__(self) -> str:
        return f"StoredTensor({tuple(self.shape)}, {self.dtype})"


class _StorageRef(_Sealed):
    """One raw storage `data/<key>` of the archive: `numel` elements of `dtype`."""

    def __init__(self, archive: TorchArchive, key: str, dtype, numel: int):
        self.archive = archive
        self.key = key
        self.dtype = dtype
        self.numel = numel

    def load(self):
        import torch

        raw = self.archive.read_storage(self.key)
        if self.numel == 0:
            return torch.empty(0, dtype=self.dtype)
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        return torch.frombuffer(bytearray(raw[: self.numel * itemsize]), dtype=self.dtype)


def _is_int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(type(item) is int and item >= 0 for item in value)


class TorchArchive:
    """The zip container of a `torch.save` file: finds `data.pkl` and reads storages by key."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            names = self.zip.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise InputError(f"not a readable PyTorch checkpoint ({error})", path=path,
                             hint="the file may be truncated: download or copy it again") from None
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
        if any(name.split("/", 1)[-1].startswith("code/") for name in names):
            raise InputError("is a TorchScript archive, not a checkpoint of weights", path=path)
        if len(pickles) != 1:
            raise InputError("is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl inside)",
                             path=path)
        self.prefix = pickles[0][: -len("data.pkl")]
        self.sizes = {info.filename: info.file_size for info in self.zip.infolist()}
        byteorder = self.prefix + "byteorder"
        if byteorder in self.sizes and self.zip.read(byteorder).strip() != b"little":
            raise InputError("was saved on a big-endian machine, which diffma does not read", path=path)

    def read_pickle(self) -> bytes:
        return self._read(self.prefix + "data.pkl")

    def storage_size(self, key: str) -> int | None:
        return self.sizes.get(f"{self.prefix}data/{key}")

    def read_storage(self, key: str) -> bytes:
        return self._read(f"{self.prefix}data/{key}")

    def _read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
            raise InputError(f"damaged checkpoint: cannot read {name} ({error})", path=self.path,
                             hint="the file may be truncated: download or copy it again") from None


class _StateKeepingOrderedDict(OrderedDict):
    """OrderedDict whose pickled instance state (torch's `_metadata` of module versions) is kept as data."""

    def __setstate__(self, state):
        self.pickled_state = state


def _latin1_bytes(text, encoding="latin1") -> bytes:
    """How protocol-2 pickles restore a bytes object: `_codecs.encode(text, "latin1")`; nothing else."""
    if not (isinstance(text, str) and encoding == "latin1"):
        raise pickle.UnpicklingError("malformed bytes record")
    return text.encode("latin1")


def _plain_dict(*_default_factory) -> dict:
    return {}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals (module docstring); storages come from the archive lazily."""

    def __init__(self, data: bytes, archive: TorchArchive):
        import io

        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.storage_dtypes = _storage_dtypes()
        self.storage_refs: dict[str, _StorageRef] = {}
        self.inert_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if module == "collections" and name == "OrderedDict":
            return _StateKeepingOrderedDict
        if module == "collections" and name == "defaultdict":
            return _plain_dict  # (omegaconf's resolver cache); its default factory is never kept or called
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "_codecs" and name == "encode":
            return _latin1_bytes
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_stored_tensor
        if module == "torch" and name in self.storage_dtypes:
            return _StorageType(self.storage_dtypes[name])
        if (module, name) in _INERT_GLOBALS or module.split(".")[0] in _INERT_PACKAGES:
            return self._inert_class(f"{module}.{name}")
        raise UnsafeFileError(
            f"refused: the checkpoint's pickle asks for `{module}.{name}`, which could run code; "
            "nothing from the file was executed", path=self.archive.path,
            hint="only load checkpoints from sources you trust; diffma reads tensors and plain options only")

    def _inert_class(self, qualname: str) -> type:
        if qualname not in self.inert_classes:
            self.inert_classes[qualname] = type(qualname.rsplit(".", 1)[-1], (InertObject,),
                                                {"qualname": qualname})
        return self.inert_classes[qualname]

    def persistent_load(self, pid):
        # torch.save's persistent id of a storage: ("storage", storage type, key, location, numel).
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and type(pid[4]) is int):
            raise InputError(f"damaged checkpoint: unknown storage reference {pid!r:.80}",
                             path=self.archive.path)
        _, storage_type, key, _location, numel = pid
        if key not in self.storage_refs:
            size = self.archive.storage_size(key)
            itemsize = storage_type.itemsize
            if size is None or size < numel * itemsize:
                raise InputError(f"damaged checkpoint: storage data/{key} is missing or shorter than its "
                                 f"{numel} elements", path=self.archive.path,
                                 hint="the file may be truncated: download or copy it again")
            self.storage_refs[key] = _StorageRef(self.archive, key, storage_type.dtype, numel)
        return self.storage_refs[key]


class _StorageType(_Sealed):
    """What `find_class("torch", "FloatStorage")` gives: only the element dtype."""

    def __init__(self, dtype):
        import torch

        self.dtype = dtype
        self.itemsize = torch.empty(0, dtype=dtype).element_size()


def _rebuild_stored_tensor(storage, offset, shape, stride, *_requires_grad_hooks_metadata) -> StoredTensor:
    """Our answer to `torch._utils._rebuild_tensor_v2`: check the view lies in its storage, read nothing."""
    if not (isinstance(storage, _StorageRef) and type(offset) is int and offset >= 0
            and _is_int_tuple(shape) and _is_int_tuple(stride) and len(shape) == len(stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    if all(shape):  # a tensor with no elements reads nothing
        last = offset + sum((size - 1) * step for size, step in zip(shape, stride, strict=True))
        if last >= storage.numel:
            raise pickle.UnpicklingError(f"tensor of shape {shape} reaches outside data/{storage.key}")
    return StoredTensor(storage, offset, shape, stride)


def _refuse_other_formats(path: Path) -> None:
    """Give a specific message for files that are not zip checkpoints (legacy torch format, other files)."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
        raise InputError("is in the legacy (before PyTorch 1.6) checkpoint format, which diffma does not "
                         "read", path=path,
                         hint="re-save it with torch.save() of PyTorch >= 1.6 from a trusted copy")
    import tarfile

    if tarfile.is_tarfile(path):
        raise InputError("is in the legacy tar checkpoint format of PyTorch < 0.4, which diffma does not "
                         "read", path=path)
    if head.startswith(b"PK\x03\x04"):  # a zip's first entry, but no readable end: the archive was cut short
        raise InputError("is a damaged checkpoint: its zip archive is cut short or corrupt", path=path,
                         hint="the file may be truncated: download or copy it again")
    raise InputError("is not a PyTorch checkpoint (expected a .pt zip archive written by torch.save)",
                     path=path)


def read_torch_checkpoint(path: str | Path) -> Any:
    """Unpickle a `torch.save` file safely: tensors as `StoredTensor`, options classes as `InertObject`.

    Raises `UnsafeFileError` if the pickle asks for any other global (nothing from it runs), `InputError` for
    missing, truncated or unsupported files.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path)
    if not zipfile.is_zipfile(path):
        _refuse_other_formats(path)
    archive = TorchArchive(path)
    unpickler = _RestrictedUnpickler(archive.read_pickle(), archive)
    try:
        return unpickler.load()
    except InputError:
        raise
    except (Exception, RecursionError) as error:  # whatever breaks in a malformed pickle: the file is bad
        raise InputError(f"damaged checkpoint: cannot unpickle it ({type(error).__name__}: {error})",
                         path=path, hint="the file may be truncated: download or copy it again") from None


def load_tensors(value: Any) -> Any:
    """Replace every `StoredTensor` in nested dicts/lists/tuples by the torch.Tensor it describes."""
    if isinstance(value, StoredTensor):
        return value.load()
    if isinstance(value, dict):
        return OrderedDict((key, load_tensors(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(load_tensors(item) for item in value)
    return value


def plain_data(value: Any, max_items: int = 100_000) -> Any:
    """JSON-friendly copy of unpickled options: Namespace -> dict, DictConfig -> dict, ListConfig -> list.

    omegaconf containers keep their entries in `_content` and leaf nodes their value in `_val`; other inert
    objects (typing.Any, enums, metadata) become their class name, tensors a short description. A pickle can
    share and nest objects to build cycles or exponentially large trees: a container met again on its own
    path, or any item beyond `max_items`, becomes "...".
    """
    budget = [max_items]

    def convert(item: Any, path: frozenset[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or id(item) in path:
            return "..."
        inner = path | {id(item)}
        if isinstance(item, type) and issubclass(item, InertObject):
            return item.qualname
        if isinstance(item, InertObject):
            state = item.state if isinstance(item.state, dict) else {}
            if item.qualname == "argparse.Namespace":
                return {str(key): convert(entry, inner) for key, entry in state.items()}
            if "_content" in state:
                return convert(state["_content"], inner)
            if "_val" in state:
                return convert(state["_val"], inner)
            return item.qualname
        if isinstance(item, StoredTensor):
            return f"tensor{list(item.shape)} {str(item.dtype).removeprefix('torch.')}"
        if isinstance(item, dict):
            return {str(key): convert(entry, inner) for key, entry in item.items()}
        if isinstance(item, (list, tuple, set, frozenset)):
            return [convert(entry, inner) for entry in item]
        if item is None or isinstance(item, (bool, int, float, str)):
            return item
        return repr(item)[:200]

    return convert(value, frozenset())
