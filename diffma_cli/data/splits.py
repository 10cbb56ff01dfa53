"""Patient-level train/val/test splits (the released code split slices, leaking test patients into training).

- `split_cases(case_ids, fractions=(0.8, 0.1, 0.1), seed=0) -> {"train": [...], "val": [...], "test": [...]}`:
  each centre's ids (SynthRAD centre letter, e.g. the A in 1BA001) are shuffled with `seed` and the centres
  interleaved, so that every split gets a share of every centre; test takes the first round(n * test) ids,
  val the next round(n * val), train the rest. With three or more cases, a split whose fraction is above
  zero gets at least one case. The result depends only on the set of ids, the fractions and the seed.
- `read_split_file(path, case_ids)`: an explicit JSON split `{"train": [...], "val": [...], "test": [...]}`;
  every listed id must exist and appear once; ids found but not listed are left out (returned apart).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffma_cli.data.synthrad import CASE_ID
from diffma_cli.errors import InputError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); three non-negative numbers that sum to 1."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise InputError(f"--split {text!r} is not three fractions train,val,test that sum to 1",
                         hint="e.g. --split 0.8,0.1,0.1")
    return values


def _centre(case_id: str) -> str:
    match = CASE_ID.match(case_id)
    return match["centre"] if match else ""


def split_cases(case_ids, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> dict[str, list[str]]:
    """Split case ids by patient, stratified by centre (see the module docstring)."""
    ids = sorted(set(case_ids))
    rng = np.random.default_rng(seed)
    groups = {}
    for case_id in ids:
        groups.setdefault(_centre(case_id), []).append(case_id)
    shuffled = {centre: [group[i] for i in rng.permutation(len(group))]
                for centre, group in sorted(groups.items())}
    order = []
    for rank in range(max((len(g) for g in shuffled.values()), default=0)):
        order += [group[rank] for group in shuffled.values() if rank < len(group)]
    n = len(order)
    counts = {name: int(round(n * fraction)) for name, fraction in zip(SPLITS, fractions, strict=True)}
    if n >= 3:
        for name, fraction in zip(("val", "test"), fractions[1:], strict=True):
            counts[name] = max(counts[name], 1) if fraction > 0 else 0
    counts["test"] = min(counts["test"], n)
    counts["val"] = min(counts["val"], n - counts["test"])
    if fractions[0] > 0 and n - counts["test"] - counts["val"] == 0 and n >= 3:
        counts["val" if counts["val"] > counts["test"] else "test"] -= 1
    test = order[:counts["test"]]
    val = order[counts["test"]:counts["test"] + counts["val"]]
    train = order[counts["test"] + counts["val"]:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def read_split_file(path: str | Path, case_ids) -> tuple[dict[str, list[str]], list[str]]:
    """An explicit split from JSON; returns (splits, ids found but not listed)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such split file", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"is not valid JSON ({error})", path=path) from None
    if not isinstance(data, dict) or not set(data) <= set(SPLITS) or not all(
            isinstance(v, list) and all(isinstance(i, str) for i in v) for v in data.values()):
        raise InputError('must be a JSON object {"train": [ids], "val": [ids], "test": [ids]}', path=path)
    splits = {name: sorted(data.get(name, [])) for name in SPLITS}
    listed = [case_id for ids in splits.values() for case_id in ids]
    repeated = sorted({case_id for case_id in listed if listed.count(case_id) > 1})
    if repeated:
        raise InputError(f"case {repeated[0]} is listed more than once", path=path,
                         hint="each case belongs to exactly one split")
    unknown = sorted(set(listed) - set(case_ids))
    if unknown:
        raise InputError(f"lists case {unknown[0]}, which is not in the data"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""), path=path)
    return splits, sorted(set(case_ids) - set(listed))
