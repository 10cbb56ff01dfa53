"""ops.dispatch: an optional package is imported once (success or failure), and a forced backend holds
inside its block only, nested blocks included."""

import pytest

from diffma_cli.models.ops.dispatch import BackendChoice, OptionalImport


def test_an_optional_import_is_tried_once_and_keeps_its_error():
    attempts = []

    def broken():
        attempts.append(1)
        raise OSError("libcudart.so.12: cannot open shared object file")

    optional = OptionalImport(broken)
    assert optional() is None and optional() is None
    assert attempts == [1] and optional.error == "OSError: libcudart.so.12: cannot open shared object file"
    working = OptionalImport(lambda: len)
    assert working() is len and working.error is None


def test_a_forced_backend_holds_inside_its_block_only():
    choice = BackendChoice("demo", ("auto", "fast", "slow"))
    assert choice.requested(None) == "auto" and choice.requested("slow") == "slow"
    with choice.force("fast"):
        assert choice.requested(None) == "fast" and choice.requested("slow") == "slow"
        with choice.force("slow"):
            assert choice.requested(None) == "slow"
        assert choice.requested(None) == "fast"
    assert choice.requested(None) == "auto"
    with pytest.raises(RuntimeError), choice.force("fast"):
        raise RuntimeError("a failing block still restores the choice")
    assert choice.requested(None) == "auto"
    with pytest.raises(ValueError, match="unknown demo backend 'medium'; choose one of auto, fast, slow"):
        choice.force("medium").__enter__()
