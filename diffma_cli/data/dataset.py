"""Torch datasets over a prepared data folder (`diffma prepare`'s output; layout in docs/data.md).

Public interface (used by training and the latent cache; kept stable):

- `load_manifest(data_dir) -> dict`: the parsed `DATA/manifest.json`, checked to be one of ours;
  raises InputError with a hint to run `diffma prepare` otherwise.
- `PreparedSlices(data_dir, split="train", cases=None)`: a `torch.utils.data.Dataset` over every stored
  slice of the split's cases (or of the listed `cases`), in manifest order. Item i is a dict
  {"ct": float32 (1, S, S) in [-1, 1], "mr": same, "mask": float32 (1, S, S) in {0, 1},
   "case": case id (str), "slice": z index of the slice in the original volume (int)}.
  Arrays are memory-mapped float16 `.npy` files, opened lazily in each DataLoader worker.
  `dataset.index` lists (case id, row) per item; `dataset.case_arrays(case_id)` gives a case's raw
  memory-mapped arrays {"ct", "mr", "mask"} of shape (n, S, S) for bulk reads (latent caches).
S is the prepared slice size (`prepare --image-size`, manifest options.size; 224 by default).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffma_cli.data.prepare import MANIFEST_FORMAT
from diffma_cli.data.splits import SPLITS
from diffma_cli.errors import InputError

MODALITIES = ("ct", "mr", "mask")


def load_manifest(data_dir: str | Path) -> dict:
    """The manifest of a prepared data folder (see the module docstring)."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.json"
    hint = "give the output folder of `diffma prepare SRC -o DATA`"
    if not data_dir.is_dir():
        raise InputError("no such data folder", path=data_dir, hint=hint)
    if not path.is_file():
        raise InputError("is not a prepared data folder (no manifest.json)", path=data_dir, hint=hint)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"is not valid JSON ({error})", path=path, hint="run diffma prepare again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"has format {found!r}; expected {MANIFEST_FORMAT!r}", path=path,
                         hint="run diffma prepare again with this version of diffma")
    return manifest


class PreparedSlices(Dataset):
    """Slices of one split of a prepared data folder (see the module docstring)."""

    def __init__(self, data_dir: str | Path, split: str = "train", cases: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        if split not in SPLITS:
            raise InputError(f"split {split!r} does not exist; choose one of {', '.join(SPLITS)}")
        self.split = split
        records = self.manifest["cases"]
        self.cases = list(self.manifest["splits"][split] if cases is None else cases)
        missing = [case_id for case_id in self.cases if case_id not in records]
        if missing:
            raise InputError(f"case {missing[0]} is not in this prepared data", path=self.data_dir)
        self.index = [(case_id, row) for case_id in self.cases for row in range(records[case_id]["slices"])]
        counts = [records[case_id]["slices"] for case_id in self.cases]
        self._starts = list(np.cumsum([0, *counts[:-1]]))
        self._arrays: dict[str, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # DataLoader workers started with spawn receive a pickled copy: send paths, not memory maps (which
        # would pickle as full in-memory arrays); each worker reopens them lazily.
        return {**self.__dict__, "_arrays": {}}

    def case_arrays(self, case_id: str) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of one case: {"ct", "mr": float16, "mask": uint8}, each (n, 224, 224)."""
        if case_id not in self._arrays:
            files = self.manifest["cases"][case_id]["files"]
            try:
                self._arrays[case_id] = {m: np.load(self.data_dir / files[m], mmap_mode="r")
                                         for m in MODALITIES}
            except (OSError, ValueError) as error:
                raise InputError(f"cannot read the arrays of case {case_id} ({error})", path=self.data_dir,
                                 hint="the folder is damaged: run diffma prepare again") from None
        return self._arrays[case_id]

    def __getitem__(self, item: int) -> dict:
        if not -len(self) <= item < len(self):
            raise IndexError(f"item {item} of {len(self)}")
        item %= len(self)
        position = bisect.bisect_right(self._starts, item) - 1
        case_id = self.cases[position]
        row = item - self._starts[position]
        arrays = self.case_arrays(case_id)
        sample = {m: torch.from_numpy(np.asarray(arrays[m][row], dtype=np.float32)[None]) for m in MODALITIES}
        sample["case"] = case_id
        sample["slice"] = int(self.manifest["cases"][case_id]["slicing"]["slices"][row])
        return sample
