"""Atomic outputs: nothing under the final name until complete; existing outputs need overwrite."""

import pytest

from diffma_cli.errors import OutputError
from diffma_cli.io.atomic import atomic_dir, atomic_file


def test_atomic_file_appears_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError):
        with atomic_file(target) as temporary:
            temporary.write_text("half", encoding="utf-8")
            raise ValueError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_file(target) as temporary:
        assert temporary.name.endswith("out.txt") and temporary != target
        temporary.write_text("done", encoding="utf-8")
    assert target.read_text(encoding="utf-8") == "done"


def test_existing_output_needs_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match="already exists"):
        with atomic_dir(target):
            pass
    with atomic_dir(target, overwrite=True) as temporary:
        (temporary / "new").write_text("y", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
