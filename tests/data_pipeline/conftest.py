"""Fixtures for the data pipeline tests: tiny SynthRAD-shaped trees written on the fly."""

from pathlib import Path

import pytest
from synthrad_cases import write_case


@pytest.fixture
def tiny_tree(tmp_path) -> Path:
    """Task1/brain/{1BA001,1BB001,1BC001} (.nii.gz), Task1/pelvis/1PA001 (.mha) and overview folders."""
    root = tmp_path / "Task1"
    for case_id in ("1BA001", "1BB001", "1BC001"):
        write_case(root / "brain" / case_id, spacing=(1.0, 1.0, 1.0))
    write_case(root / "pelvis" / "1PA001", suffix=".mha")
    for anatomy in ("brain", "pelvis"):
        (root / anatomy / "overview").mkdir()
        (root / anatomy / "overview" / f"1_{anatomy}_train.xlsx").write_bytes(b"not a volume")
    (root / "brain" / "README.txt").write_text("ignored", encoding="utf-8")
    return root
