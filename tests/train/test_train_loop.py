"""The shared training loop on a tiny stand-in task: learning, exact resume, accumulation, errors."""

import pytest
import torch
from standins import RegressionTask, regression_settings

from diffma_cli.errors import InputError
from diffma_cli.train import run_log
from diffma_cli.train.checkpoint import latest_checkpoint
from diffma_cli.train.distributed import processes
from diffma_cli.train.loop import fit


def run(tmp_path, name, resume=False, **changes):
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    with processes("cpu") as where:
        return fit(RegressionTask(), regression_settings(**changes), run_dir, where, resume=resume,
                   progress=False)


def test_loss_falls_on_a_fixed_batch(tmp_path):
    # One batch of 8 samples seen over and over: the loss must fall clearly.
    result = run(tmp_path, "fixed", global_batch_size=24, epochs=1, steps=30)
    assert len(result.losses) == 30
    assert result.losses[-1] < 0.2 * result.losses[0]


def test_resumed_run_repeats_the_uninterrupted_losses(tmp_path):
    whole = run(tmp_path, "whole")  # 3 epochs x 3 steps = 9 steps
    assert len(whole.losses) == 9
    # Interrupted after 4 steps (mid-epoch), then resumed to the end.
    first = run(tmp_path, "parts", steps=4, checkpoint_every=2)
    assert latest_checkpoint(tmp_path / "parts").name == "step-0000004"
    second = run(tmp_path, "parts", resume=True)
    assert first.losses + second.losses == whole.losses  # bit-identical on the CPU
    for a, b in zip(whole.ema.state_dict().values(), second.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    logged = [record["loss"] for record in run_log.read_records(tmp_path / "parts")]
    assert logged == whole.losses


def test_loader_workers_keep_every_epochs_order_and_resume(tmp_path):
    """The loader lives for the whole run (persistent workers); each epoch must still be read in the order
    set_epoch gives it, exactly as without workers, also when a resume starts mid-epoch."""
    in_process = run(tmp_path, "in-process")  # 3 epochs x 3 steps, no workers
    workers = run(tmp_path, "workers", num_workers=2)
    assert workers.losses == in_process.losses
    first = run(tmp_path, "parts", num_workers=2, steps=4, checkpoint_every=2)
    second = run(tmp_path, "parts", num_workers=2, resume=True)
    assert first.losses + second.losses == in_process.losses


def test_compiled_training_matches_eager_and_keeps_plain_checkpoints(tmp_path):
    """training.compile: the same losses as eager execution (up to the compiler's float reordering), the
    checkpoint and EMA keyed like the plain model (no "_orig_mod." prefix), and a compiled resume."""
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    eager = run(tmp_path, "eager")
    counters.clear()
    compiled = run(tmp_path, "compiled", compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the run did go through torch.compile
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4, abs=1e-6)
    assert list(compiled.ema.state_dict()) == list(eager.ema.state_dict())
    checkpoint = latest_checkpoint(tmp_path / "compiled")
    stored = {name for path in checkpoint.glob("*.safetensors") for name in load_file(path)}
    assert stored and not any("_orig_mod" in name for name in stored)
    first = run(tmp_path, "parts", compile=True, steps=4, checkpoint_every=2)
    second = run(tmp_path, "parts", compile=True, resume=True)
    assert first.losses + second.losses == pytest.approx(eager.losses, rel=1e-4, abs=1e-6)


def test_resume_drops_log_lines_after_the_checkpoint(tmp_path):
    run(tmp_path, "r", steps=5, checkpoint_every=3)  # checkpoints at 3 and 5
    # Pretend the run died after step 5's log line but before its checkpoint.
    (tmp_path / "r" / "checkpoints" / "step-0000005").rename(tmp_path / "r" / "gone")
    resumed = run(tmp_path, "r", resume=True)
    steps = [record["step"] for record in run_log.read_records(tmp_path / "r")]
    assert steps == list(range(1, 10)) and len(resumed.losses) == 6


def test_gradient_accumulation_gives_the_same_steps(tmp_path):
    one = run(tmp_path, "one")
    accumulated = run(tmp_path, "acc", grad_accumulation=4)
    assert accumulated.losses == pytest.approx(one.losses, rel=1e-5)


def test_bad_batch_settings_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not divisible"):
        run(tmp_path, "a", grad_accumulation=3)
    with pytest.raises(InputError, match="fewer than one global batch"):
        run(tmp_path, "b", global_batch_size=32)
    with pytest.raises(InputError, match="no checkpoint"):
        run(tmp_path, "c", resume=True)


def test_precision_is_bf16_autocast_on_cuda_and_fp32_on_cpu():
    from diffma_cli.train.loop import autocast_dtype

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert autocast_dtype("auto", cuda) == torch.bfloat16 and autocast_dtype("auto", cpu) is None
    assert autocast_dtype("fp32", cuda) is None and autocast_dtype("bf16", cpu) == torch.bfloat16


@pytest.mark.gpu
def test_bf16_training_on_cuda_learns_and_resumes(tmp_path):
    def cuda_run(name, resume=False, **changes):
        (tmp_path / name).mkdir(exist_ok=True)
        with processes("cuda") as where:
            return fit(RegressionTask(), regression_settings(precision="auto", **changes), tmp_path / name,
                       where, resume=resume, progress=False)

    whole = cuda_run("whole", global_batch_size=24, epochs=1, steps=30)
    assert all(torch.isfinite(torch.tensor(whole.losses))) and whole.losses[-1] < 0.3 * whole.losses[0]
    assert next(whole.ema.parameters()).device.type == "cuda"
    first = cuda_run("parts", global_batch_size=24, steps=12)
    second = cuda_run("parts", resume=True, global_batch_size=24, steps=30)
    assert first.losses + second.losses == pytest.approx(whole.losses, rel=1e-3)
