"""The bad-input matrix: every command against the bad inputs a user can give it.

Each case asserts the contract of docs/troubleshooting.md: the documented exit code (2 input, 3 output,
4 environment), exactly one line on stderr that starts with `diffma: error:` and names the file or option
and the problem, no traceback, and nothing half-written (the output folder holds what it held before and no
`.partial-*` temporary is left anywhere).

Cases already tested next to their command are listed in COVERED_ELSEWHERE (and checked to still exist) so
that this file shows the whole picture without repeating them.

"Output folder not writable": the tests run as root here, and root writes through any chmod. An output
path *under a regular file* (`blocker/out/...` where `blocker` is a file) can be created by nobody, root
included, so that is how these cases make an unwritable place.
"""

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from reliability_world import RELEASED_EMBEDDER, World
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.io.atomic import PARTIAL_PREFIX

TESTS = Path(__file__).parents[1]

# Small settings that make the training commands fail or start in well under a second.
TRAIN = ["--recipe", "demo", "--size", "S", "--patch", "7", "--set", "model.hidden_size=32", "--batch-size",
         "2", "--device", "cpu"]
EMBED = ["--recipe", "demo", "--patch", "7", "--set", "embedder.embed_dim=32", "--batch-size", "2",
         "--device", "cpu"]
VAE = ["--recipe", "demo", "--batch-size", "2", "--device", "cpu"]


@dataclass(frozen=True)
class Bad:
    """One cell of the matrix: `args(world, out)` run as `diffma ...` must fail with `code` and a line
    holding every one of `words`. `setup(world, out)` puts things in the output folder first (they must be
    left as they were)."""

    command: str
    problem: str
    args: Callable[[World, Path], list]
    code: int
    words: tuple[str, ...]
    setup: Callable[[World, Path], None] | None = None
    needs_no_cuda: bool = False
    marks: tuple = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return f"{self.command}: {self.problem}"


def existing(name: str) -> Callable[[World, Path], None]:
    """Setup: an earlier result `out/name` (a file, or a folder holding a file) that must survive."""
    def make(world: World, out: Path) -> None:
        target = out / name
        if "." in name:
            target.write_text("an earlier result\n", encoding="utf-8")
        else:
            target.mkdir()
            (target / "result.txt").write_text("an earlier result\n", encoding="utf-8")
    return make


def blocker(world: World, out: Path) -> None:
    """Setup: a regular file `out/blocker`; paths under it cannot be created, not even by root."""
    (out / "blocker").write_text("a file where a folder would have to be\n", encoding="utf-8")


UNDER_A_FILE = ("blocker", "is a file, not a folder")  # the words of every "output folder not writable" line
CASES = [
    # ------------------------------------------------------------------ synth
    Bad("synth", "output exists", lambda w, o: ["synth", o / "synth", "--cases", 1, "--size", "small"], 3,
        ("synth", "already exists", "--overwrite"), setup=existing("synth")),
    Bad("synth", "output folder not writable", lambda w, o: ["synth", o / "blocker" / "synth", "--cases", 1],
        3, UNDER_A_FILE, setup=blocker),
    Bad("synth", "--cases 0", lambda w, o: ["synth", o / "synth", "--cases", 0], 2,
        ("--cases", "equal to 1")),
    Bad("synth", "--workers 0", lambda w, o: ["synth", o / "synth", "--workers", 0], 2, ("--workers",)),
    # ------------------------------------------------------------------ prepare
    *[Bad("prepare", problem, lambda w, o, p=problem: ["prepare", w.trees[p], "-o", o / "data"], 2,
          ("1BA004", *words))
      for problem, words in [("truncated", ("ct.nii.gz", "damaged")), ("2-D", ("ct.nii.gz", "not a 3-D")),
                             ("4-D", ("ct.nii.gz", "not a 3-D")), ("Inf", ("mr.nii.gz", "non-finite")),
                             ("not HU", ("ct.nii.gz", "Hounsfield"))]],
    Bad("prepare", "output folder not writable",
        lambda w, o: ["prepare", w.trees["good"], "-o", o / "blocker" / "data"], 3,
        UNDER_A_FILE, setup=blocker),
    Bad("prepare", "--mr-percentiles out of range",
        lambda w, o: ["prepare", w.trees["good"], "-o", o / "data", "--mr-percentiles", "0.5,150"], 2,
        ("--mr-percentiles", "0..100")),
    Bad("prepare", "--workers 0", lambda w, o: ["prepare", w.trees["good"], "-o", o / "data", "--workers", 0],
        2, ("--workers",)),
    # ------------------------------------------------------------------ train-vae
    Bad("train-vae", "missing data folder", lambda w, o: ["train-vae", w.root / "nowhere", "-o", o / "vae",
                                                          *VAE], 2, ("nowhere",)),
    Bad("train-vae", "output exists", lambda w, o: ["train-vae", w.data, "-o", o / "vae", *VAE], 3,
        ("vae", "already exists", "--overwrite"), setup=existing("vae")),
    Bad("train-vae", "output folder not writable",
        lambda w, o: ["train-vae", w.data, "-o", o / "blocker" / "vae", *VAE], 3, UNDER_A_FILE,
        setup=blocker),
    Bad("train-vae", "--steps 0", lambda w, o: ["train-vae", w.data, "-o", o / "vae", *VAE, "--steps", 0], 2,
        ("--steps", "equal to 1")),
    Bad("train-vae", "unknown recipe key",
        lambda w, o: ["train-vae", w.data, "-o", o / "vae", *VAE, "--set", "vae.training.stepz=3"], 2,
        ("vae.training.stepz",)),
    Bad("train-vae", "recipe value of the wrong type",
        lambda w, o: ["train-vae", w.data, "-o", o / "vae", *VAE, "--set", "vae.training.lr=fast"], 2,
        ("vae.training.lr",)),
    Bad("train-vae", "CUDA where there is none",
        lambda w, o: ["train-vae", w.data, "-o", o / "vae", *VAE, "--device", "cuda"], 4,
        ("CUDA", "diffma doctor"), needs_no_cuda=True),
    # ------------------------------------------------------------------ train-embedder
    Bad("train-embedder", "output exists",
        lambda w, o: ["train-embedder", w.data, "-o", o / "emb", *EMBED], 3, ("emb", "already exists"),
        setup=existing("emb")),
    Bad("train-embedder", "output folder not writable",
        lambda w, o: ["train-embedder", w.data, "-o", o / "blocker" / "emb", *EMBED], 3,
        UNDER_A_FILE, setup=blocker),
    Bad("train-embedder", "--epochs 0",
        lambda w, o: ["train-embedder", w.data, "-o", o / "emb", *EMBED, "--epochs", 0], 2, ("--epochs",)),
    Bad("train-embedder", "batch larger than the data set",
        lambda w, o: ["train-embedder", w.data, "-o", o / "emb", *EMBED, "--batch-size", 64], 2,
        ("64", "--batch-size")),
    Bad("train-embedder", "zero batch size in the recipe",
        lambda w, o: ["train-embedder", w.data, "-o", o / "emb", *EMBED, "--set",
                      "embedder.training.global_batch_size=0"], 2, ("global_batch_size",)),
    Bad("train-embedder", "CUDA where there is none",
        lambda w, o: ["train-embedder", w.data, "-o", o / "emb", *EMBED, "--device", "cuda"], 4,
        ("CUDA", "diffma doctor"), needs_no_cuda=True),
    # ------------------------------------------------------------------ train
    Bad("train", "--steps 0",
        lambda w, o: ["train", w.data, "-o", o / "run", "--embedder", w.embedder, *TRAIN, "--steps", 0], 2,
        ("--steps", "equal to 1")),
    Bad("train", "--batch-size 0",
        lambda w, o: ["train", w.data, "-o", o / "run", "--embedder", w.embedder, *TRAIN, "--batch-size", 0],
        2, ("--batch-size",)),
    Bad("train", "embedder weights truncated",
        lambda w, o: ["train", w.data, "-o", o / "run", "--embedder", w.weights["truncated safetensors"],
                      *TRAIN], 2, ("truncated.safetensors", "damaged or truncated")),
    Bad("train", "embedder of another model size",
        lambda w, o: ["train", w.data, "-o", o / "run", "--embedder", w.weights["other model size"], *TRAIN],
        2, ("wide-embedder.safetensors", "width 64", "does not fit")),
    Bad("train", "embedder is a text file",
        lambda w, o: ["train", w.data, "-o", o / "run", "--embedder", w.weights["text named .pt"], *TRAIN],
        2, ("notes.pt",)),
    Bad("train", "output folder not writable",
        lambda w, o: ["train", w.data, "-o", o / "blocker" / "run", "--embedder", w.embedder, *TRAIN], 3,
        UNDER_A_FILE, setup=blocker),
    Bad("train", "CUDA where there is none",
        lambda w, o: ["train", w.data, "-o", o / "run", "--embedder", w.embedder, *TRAIN, "--device", "cuda"],
        4, ("CUDA", "diffma doctor"), needs_no_cuda=True),
    # ------------------------------------------------------------------ convert
    *[Bad("convert", problem, lambda w, o, p=problem: ["convert", w.volumes[p], "-o", o / "mr.nii.gz",
                                                       "--model", w.run, "--device", "cpu"], 2, words)
      for problem, words in [("missing", ("absent.nii.gz", "no such file")),
                             ("truncated", ("truncated.nii.gz", "is damaged")),
                             ("2-D", ("slice.nii.gz", "2-D")), ("4-D", ("series4d.nii.gz", "4-D")),
                             ("NaN", ("nan.nii.gz", "NaN")), ("Inf", ("inf.nii.gz", "infinite"))]],
    Bad("convert", "empty body mask",
        lambda w, o: ["convert", w.ct, "-o", o / "mr.nii.gz", "--model", w.run, "--device", "cpu",
                      "--body-mask", w.volumes["empty mask"]], 2, ("empty",)),
    Bad("convert", "body mask of another geometry",
        lambda w, o: ["convert", w.ct, "-o", o / "mr.nii.gz", "--model", w.run, "--device", "cpu",
                      "--body-mask", w.volumes["other geometry"]], 2, ("body mask", "grid")),
    Bad("convert", "output folder not writable",
        lambda w, o: ["convert", w.ct, "-o", o / "blocker" / "mr.nii.gz", "--model", w.run, "--device",
                      "cpu"], 3, UNDER_A_FILE, setup=blocker),
    *[Bad("convert", f"{option} {value}",
          lambda w, o, a=(option, value): ["convert", w.ct, "-o", o / "mr.nii.gz", "--model", w.run,
                                           "--device", "cpu", *a], 2, (option.removeprefix("--"),))
      for option, value in [("--steps", 0), ("--steps", -3), ("--samples", 0), ("--batch-size", 0),
                            ("--noise-correlation", 1.5), ("--noise-correlation", -0.1), ("--smooth-z", -1)]],
    Bad("convert", "unfinished run",
        lambda w, o: ["convert", w.ct, "-o", o / "mr.nii.gz", "--model", w.runs["unfinished"], "--device",
                      "cpu"], 2, ("unfinished", "--resume")),
    Bad("convert", "run weights truncated",
        lambda w, o: ["convert", w.ct, "-o", o / "mr.nii.gz", "--model", w.runs["truncated weights"],
                      "--device", "cpu"], 2, ("backbone.safetensors", "damaged or truncated")),
    Bad("convert", "run weights of another model size",
        lambda w, o: ["convert", w.ct, "-o", o / "mr.nii.gz", "--model", w.runs["other model size"],
                      "--device", "cpu"], 2, ("backbone.safetensors", "width 64", "does not fit")),
    # ------------------------------------------------------------------ eval
    *[Bad("eval", problem, lambda w, o, p=problem: ["eval", w.volumes[p], "--target", w.mr, "--mask", w.mask,
                                                    "-o", o / "metrics.json"], 2, words)
      for problem, words in [("text named .nii.gz", ("notes.nii.gz", "cannot read")),
                             ("truncated", ("truncated.nii.gz", "is damaged")),
                             ("2-D", ("slice.nii.gz", "size 26x20 differs")),
                             ("4-D", ("series4d.nii.gz", "size 26x20x7x2 differs")),
                             ("NaN", ("nan.nii.gz", "NaN"))]],
    Bad("eval", "empty mask",
        lambda w, o: ["eval", w.mr, "--target", w.mr, "--mask", w.volumes["empty mask"], "-o",
                      o / "metrics.json"], 2, ("empty_mask.nii.gz", "empty")),
    Bad("eval", "output folder not writable",
        lambda w, o: ["eval", w.mr, "--target", w.mr, "--mask", w.mask, "-o", o / "blocker" / "metrics.json"],
        3, UNDER_A_FILE, setup=blocker),
    Bad("eval", "report folder not writable",
        lambda w, o: ["eval", w.mr, "--target", w.mr, "--mask", w.mask, "--report", o / "blocker" / "report"],
        3, UNDER_A_FILE, setup=blocker),
    # ------------------------------------------------------------------ import-weights
    Bad("import-weights", "missing path",
        lambda w, o: ["import-weights", w.root / "absent.pt", "-o", o / "e.safetensors"], 2,
        ("absent.pt", "no such file")),
    Bad("import-weights", "text file named .pt",
        lambda w, o: ["import-weights", w.weights["text named .pt"], "-o", o / "e.safetensors"], 2,
        ("notes.pt",)),
    Bad("import-weights", "truncated .pt",
        lambda w, o: ["import-weights", w.weights["truncated .pt"], "-o", o / "e.safetensors"], 2,
        ("truncated.pt", "cut short", "may be truncated")),
    Bad("import-weights", "released .pt with unexpected keys",
        lambda w, o: ["import-weights", w.weights["released .pt with unexpected keys"], "-o",
                      o / "e.safetensors"], 2, ("unexpected_keys.pt", "extra_head.weight")),
    Bad("import-weights", "another model size asked for",
        lambda w, o: ["import-weights", RELEASED_EMBEDDER, "-o", o / "e.safetensors", "--hidden-size", 64], 2,
        ("brain_patch_size_2.pt",)),
    Bad("import-weights", "output folder not writable",
        lambda w, o: ["import-weights", RELEASED_EMBEDDER, "-o", o / "blocker" / "e.safetensors"], 3,
        UNDER_A_FILE, setup=blocker),
    # ------------------------------------------------------------------ info
    Bad("info", "missing path", lambda w, o: ["info", w.root / "absent.safetensors"], 2,
        ("absent.safetensors", "no such file")),
    Bad("info", "truncated .pt", lambda w, o: ["info", w.weights["truncated .pt"]], 2,
        ("truncated.pt", "cut short", "may be truncated")),
    Bad("info", "text file named .pt", lambda w, o: ["info", w.weights["text named .pt"]], 2, ("notes.pt",)),
    # ------------------------------------------------------------------ demo
    Bad("demo", "output exists", lambda w, o: ["demo", "-o", o / "demo"], 3, ("demo", "already exists"),
        setup=existing("demo")),
    Bad("demo", "output folder not writable", lambda w, o: ["demo", "-o", o / "blocker" / "demo"], 3,
        UNDER_A_FILE, setup=blocker),
    Bad("demo", "--cases 2", lambda w, o: ["demo", "-o", o / "demo", "--cases", 2], 2, ("--cases",)),
    Bad("demo", "CUDA where there is none", lambda w, o: ["demo", "-o", o / "demo", "--device", "cuda"], 4,
        ("CUDA", "diffma doctor"), needs_no_cuda=True),
]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with a file's content (None for a folder)."""
    return {str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None)
            for path in sorted(folder.rglob("*"))}


def partials(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.startswith(PARTIAL_PREFIX)]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=case.marks) for case in CASES])
def test_bad_input_is_one_line_with_its_exit_code_and_writes_nothing(case: Bad, world: World, tmp_path):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    out.mkdir()
    if case.setup is not None:
        case.setup(world, out)
    before, world_before = snapshot(out), partials(world.root)
    result = CliRunner().invoke(app, [str(arg) for arg in case.args(world, out)])
    # stderr may hold progress bars and stage lines before the error; the error is one line, the last.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("diffma: ")]
    assert errors == [lines[-1]] and errors[0].startswith("diffma: error: "), result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == case.code, result.output
    for word in case.words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert snapshot(out) == before, "the command left something in the output folder"
    assert partials(world.root) == world_before and not partials(tmp_path)


def test_the_matrix_covers_every_command():
    from diffma_cli.commands import COMMANDS

    covered = {case.command for case in CASES} | {command for command, _ in COVERED_ELSEWHERE}
    assert covered >= {name for name, _ in COMMANDS if name != "doctor"}


# (command, bad input) -> the test that checks it next to its command (file::function).
COVERED_ELSEWHERE = {
    ("synth", "output exists"): "data_pipeline/test_data_prepare.py::test_synth_is_deterministic_and_refuses_"
                                "existing_output",
    ("prepare", "missing path"): "data_pipeline/test_data_prepare.py::test_existing_output_and_bad_options_"
                                 "fail_cleanly",
    ("prepare", "output exists"): "data_pipeline/test_data_prepare.py::test_existing_output_and_bad_options_"
                                  "fail_cleanly",
    ("prepare", "text file named .nii.gz, NaN, empty mask, mismatched geometry, missing file"):
        "data_pipeline/test_data_prepare.py::test_bad_case_stops_with_one_line_and_nothing_written",
    ("train", "unknown recipe key, wrong type, unknown --backbone/--size/--scan, missing recipe"):
        "train/test_train_cli.py::test_bad_options_are_one_line_errors",
    ("train", "output exists (not a run), no --embedder, not data, embedder of another patch size"):
        "train/test_train_cli.py::test_errors_before_training",
    ("convert", "text file named .nii.gz, CT not in HU"):
        "convert/test_convert_cli.py::test_unreadable_and_non_hu_inputs_write_nothing",
    ("convert", "output exists"): "convert/test_convert_cli.py::test_one_volume_keeps_the_grid_and_needs_"
                                  "overwrite",
    ("convert", "bad --noise, not a run folder, output without suffix, CUDA where there is none"):
        "convert/test_convert_cli.py::test_bad_options_model_and_device_are_one_line",
    ("eval", "mismatched geometry"): "evaluation/test_eval_cli.py::test_geometry_mismatch_is_one_line",
    ("eval", "missing files, bad options"):
        "evaluation/test_eval_cli.py::test_missing_files_and_bad_options_are_one_line",
    ("eval", "output exists"): "evaluation/test_eval_cli.py::test_existing_outputs_need_overwrite",
    ("import-weights", "output exists"): "weights/test_weights_cli.py::test_existing_output_needs_overwrite",
    ("import-weights", "malicious pickle"):
        "weights/test_weights_cli.py::test_malicious_checkpoint_is_refused_and_nothing_runs",
    ("import-weights", "weights of another patch size"):
        "weights/test_weights_cli.py::test_wrong_patch_size_is_one_clear_line",
    ("info", "truncated or foreign safetensors"):
        "weights/test_weights_cli.py::test_info_on_foreign_and_truncated_safetensors",
}


def test_cases_covered_elsewhere_still_exist():
    """The tests COVERED_ELSEWHERE points to are still there (so this picture cannot go stale)."""
    for where in COVERED_ELSEWHERE.values():
        file, function = where.split("::")
        tree = ast.parse((TESTS / file).read_text(encoding="utf-8"))
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert function in names, where


def test_debug_shows_the_traceback_of_a_known_error(world: World, tmp_path):
    args = ["convert", world.volumes["NaN"], "-o", tmp_path / "mr.nii.gz", "--model", world.run, "--device",
            "cpu"]
    plain = CliRunner().invoke(app, [str(arg) for arg in args])
    debug = CliRunner().invoke(app, ["--debug", *[str(arg) for arg in args]])
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]


def test_a_folder_without_write_permission_is_named(tmp_path, monkeypatch):
    """The permission branch of check_output (root, as here, writes anywhere: permissions are faked)."""
    from diffma_cli.errors import OutputError
    from diffma_cli.io import atomic

    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=f"the folder {tmp_path} is not writable"):
        atomic.check_output(tmp_path / "new" / "out.nii.gz", overwrite=False)
