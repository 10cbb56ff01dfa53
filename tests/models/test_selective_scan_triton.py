"""The Triton selective-scan forward against the step-loop reference `selective_scan_ref`.

On any machine the kernel runs in Triton's CPU interpreter. TRITON_INTERPRET=1 must be set before triton is
imported and decides for the whole process, so those runs happen in one worker subprocess (this file run
with --worker) that the tests send inputs to; the reference runs here. On a GPU (`-m gpu`) the compiled
kernel runs in-process on CUDA, and "auto" dispatch is checked there.
"""

import contextlib
import io
import os
import struct
import subprocess
import sys

import pytest
import torch

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models.mamba import MultiOrderMamba
from diffma_cli.models.ops import selective_scan as ops

ALL_OPTIONS = {"D": True, "z": True, "delta_bias": True, "delta_softplus": True}
OPTIONS = [{}, {"D": True}, {"z": True}, {"delta_bias": True, "delta_softplus": True}, ALL_OPTIONS]


def make_inputs(batch, dim, length, state, dtype, options, device="cpu", seed=0):
    """Scan inputs as the mixer passes them: activations in `dtype`, A, D, delta_bias in float32; A as Mamba
    initialises it, -(1 ... N) per channel, jittered by 10 %; delta >= 0 when no softplus follows."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, dtype=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    delta = rand(batch, dim, length, scale=0.5)
    a_init = torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1).to(device)
    args = {
        "u": rand(batch, dim, length),
        "delta": delta if options.get("delta_softplus") else delta.abs(),
        "A": -a_init * (1 + 0.1 * rand(dim, state, dtype=torch.float32)),
        "B": rand(batch, state, length),
        "C": rand(batch, state, length),
        "delta_softplus": options.get("delta_softplus", False),
    }
    if options.get("D"):
        args["D"] = rand(dim, dtype=torch.float32)
    if options.get("z"):
        args["z"] = rand(batch, dim, length)
    if options.get("delta_bias"):
        args["delta_bias"] = rand(dim, scale=0.5, dtype=torch.float32)
    return args


def reference(args):
    """`selective_scan_ref` on the same inputs; its output is rounded to u's dtype, like the kernel's."""
    with torch.no_grad():
        return ops.selective_scan_ref(**args)


def assert_matches(out, expected, rtol):
    """Same dtype and shape, and max |out - expected| <= rtol · max |expected| (plus one unit of the output
    dtype's rounding at that size, since both sides round a float32 result to that dtype)."""
    assert out.dtype == expected.dtype and out.shape == expected.shape
    scale = expected.float().abs().max().item()
    rounding = torch.finfo(expected.dtype).eps * scale if expected.dtype != torch.float32 else 0.0
    error = (out.float() - expected.float()).abs().max().item()
    assert error <= rtol * scale + rounding, f"max error {error:.3g} at scale {scale:.3g}"


# --- the interpreter worker -------------------------------------------------------------------------------

def _send(stream, obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    stream.write(struct.pack("<Q", buffer.tell()) + buffer.getvalue())
    stream.flush()


def _receive(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    (size,) = struct.unpack("<Q", header)
    return torch.load(io.BytesIO(stream.read(size)), weights_only=False)


@contextlib.contextmanager
def interpreter_worker(script: str):
    """ask(request) -> the answer of `script --worker` (its `_worker` loop), a subprocess started with
    TRITON_INTERPRET=1: the flag must be set before triton is imported, and decides for the process."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    worker = subprocess.Popen([sys.executable, script, "--worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)

    def ask(request):
        _send(worker.stdin, request)
        answer = _receive(worker.stdout)
        if answer is None:
            raise RuntimeError("the Triton interpreter worker died (see its stderr above)")
        return answer

    try:
        yield ask
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)


def _worker() -> None:
    """Answer each request: {"mixer", ...} with `mixer_gradients(request, "triton")`; {"args", "tile",
    "grad_out"} with the triton backend's output (or an error text).

    Without tile overrides the call goes through `selective_scan(backend="triton")` (dispatch included).
    With grad_out, every tensor argument requires grad and the answer is {"out", "grads"} after a backward
    of grad_out."""
    while (request := _receive(sys.stdin.buffer)) is not None:
        if "mixer" in request:
            _send(sys.stdout.buffer, mixer_gradients(request, "triton"))
            continue
        args, tile, grad_out = request["args"], request["tile"], request["grad_out"]
        tensors = [k for k, v in args.items() if torch.is_tensor(v)]
        for name in tensors:
            args[name].requires_grad_(grad_out is not None)
        try:
            with torch.set_grad_enabled(grad_out is not None):
                if tile:
                    out = ops.triton_scan_fn()(**args, tile=tile)
                else:
                    out = ops.selective_scan(**args, backend="triton")
            if grad_out is None:
                answer = out
            else:
                out.backward(grad_out)
                answer = {"out": out.detach(), "grads": {name: args[name].grad for name in tensors}}
        except Exception as error:  # returned to the test, which decides whether it was expected
            answer = f"{type(error).__name__}: {error}"
        _send(sys.stdout.buffer, answer)


def mixer_gradients(request, backend):
    """A `MultiOrderMamba` (request["mixer"]: its arguments, request["state"]: its weights) on request["x"]
    with the given scan backend: output, and gradients of <out, request["grad_out"]> for x and weights."""
    mixer = MultiOrderMamba(**request["mixer"])
    mixer.load_state_dict(request["state"])
    x = request["x"].clone().requires_grad_(True)
    with ops.scan_backend(backend):
        out = mixer(x)
    out.backward(request["grad_out"])
    return {"out": out.detach(), "grads": {"x": x.grad, **{n: p.grad for n, p in mixer.named_parameters()}}}


@pytest.fixture(scope="module")
def interpreted():
    """run(args, grad_out=None, **tile) -> the triton backend's output (or output and gradients) computed
    in Triton's interpreter; run.raw(request) sends any request `_worker` answers."""
    with interpreter_worker(__file__) as raw:
        def run(args, grad_out=None, **tile):
            return raw({"args": args, "tile": tile, "grad_out": grad_out})

        run.raw = raw
        yield run


def check(run, args, rtol=1e-5, **tile):
    out = run(args, **tile)
    assert torch.is_tensor(out), out
    assert_matches(out, reference(args), rtol)


# --- CPU (interpreter) ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o) or "plain")
def test_interpreted_kernel_matches_reference_float32(interpreted, options):
    # Di 40: not a multiple of the 64-channel block; L 37: not a multiple of the 8-step chunk; N 5: padded.
    check(interpreted, make_inputs(2, 40, 37, 5, torch.float32, options))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_interpreted_kernel_reads_half_inputs_and_returns_their_dtype(interpreted, dtype):
    check(interpreted, make_inputs(1, 24, 19, 4, dtype, ALL_OPTIONS, seed=1))


@pytest.mark.parametrize("tile", [{"block_d": 16, "chunk": 4}, {"block_d": 8, "chunk": 16}])
def test_interpreted_kernel_with_other_tiles(interpreted, tile):
    # several channel blocks per sequence, several chunks, a partial last chunk; batch 1
    check(interpreted, make_inputs(1, 40, 45, 4, torch.float32, ALL_OPTIONS, seed=2), **tile)


def test_interpreted_kernel_reads_strided_views_as_the_mixer_passes_them(interpreted):
    # As DiffMa's mixer: z is the second half of a (batch, 2Di, L) tensor, B and C transposed views of a
    # token-major (batch, L, R + 2N) projection.
    g = torch.Generator().manual_seed(3)
    batch, dim, length, state, rank = 2, 12, 21, 4, 3
    args = make_inputs(batch, dim, length, state, torch.float32, ALL_OPTIONS, seed=3)
    xz = torch.randn(batch, 2 * dim, length, generator=g)
    projection = torch.randn(batch, length, rank + 2 * state, generator=g)
    _, B, C = projection.split([rank, state, state], dim=-1)
    args.update(z=xz.chunk(2, dim=1)[1], B=B.transpose(1, 2), C=C.transpose(1, 2))
    assert not args["z"].is_contiguous() and args["B"].stride(1) == 1
    check(interpreted, args)


def test_interpreted_kernel_keeps_long_sequences_accurate(interpreted):
    # 25 chunks: the state carried from chunk to chunk must not drift
    check(interpreted, make_inputs(1, 8, 200, 2, torch.float32, ALL_OPTIONS, seed=4), block_d=8)


def float64_gradients(args, grad_out):
    """Output and gradients of `selective_scan_ref` on float64 copies of the inputs (autograd)."""
    leaves = {k: v.detach().double().requires_grad_(True) for k, v in args.items() if torch.is_tensor(v)}
    out = ops.selective_scan_ref(**leaves, delta_softplus=args["delta_softplus"])
    out.backward(grad_out.double())
    return out, {k: v.grad for k, v in leaves.items()}


def check_gradients(run, args, rtol, seed=0, **tile):
    grad_out = torch.randn(args["u"].shape, generator=torch.Generator().manual_seed(seed)).to(args["u"].dtype)
    answer = run(args, grad_out=grad_out, **tile)
    assert isinstance(answer, dict), answer
    expected_out, expected = float64_gradients(args, grad_out)
    assert answer["out"].dtype == args["u"].dtype
    assert set(answer["grads"]) == set(expected)
    for name, grad in answer["grads"].items():
        assert grad.dtype == args[name].dtype and grad.shape == args[name].shape, name
        error = (grad.double() - expected[name]).abs().max() / expected[name].abs().max()
        assert error <= rtol, f"d{name}: relative error {error:.3g}"


@pytest.mark.parametrize("options", [{}, {"z": True}, ALL_OPTIONS], ids=["plain", "z", "all"])
def test_interpreted_gradients_match_float64_autograd(interpreted, options):
    # Di 40 (partial channel block), L 11 (partial last chunk of 4), N 5 (padded to 8), batch 2: dA, dD and
    # d delta_bias sum over the batch, dB and dC over channel blocks.
    check_gradients(interpreted, make_inputs(2, 40, 11, 5, torch.float32, options, seed=5), rtol=2e-6)


@pytest.mark.parametrize("tile", [{"block_d": 16, "chunk": 8, "subchunks": 1},
                                  {"block_d": 32, "chunk": 2, "subchunks": 4}], ids=["8x1", "2x4"])
def test_interpreted_gradients_with_other_tiles(interpreted, tile):
    # L 21: a partial last checkpoint segment (of 8 steps each) and chunk
    args = make_inputs(1, 40, 21, 4, torch.float32, ALL_OPTIONS, seed=6)
    check_gradients(interpreted, args, rtol=2e-6, **tile)


def test_interpreted_gradients_of_bfloat16_inputs(interpreted):
    # gradients are rounded to bfloat16 (relative step 2^-8) before the comparison
    check_gradients(interpreted, make_inputs(1, 12, 9, 4, torch.bfloat16, ALL_OPTIONS, seed=7), rtol=1e-2)


def test_interpreted_kernels_in_the_mixer_match_the_reference_scan(interpreted):
    # The mixer's own call (strided z, B, C views; delta from dt_proj; float32 A, D, bias), forward and
    # backward, 3 orders of 12 tokens stacked on a batch of 2: 6 sequences of Di = 16, N = 16.
    g = torch.Generator().manual_seed(8)
    orders = [list(range(12)), list(range(11, -1, -1)), [(5 * i) % 12 for i in range(12)]]
    config = {"d_model": 8, "orders": orders}
    with torch.random.fork_rng():  # the module's initialisation draws from the global generator
        torch.manual_seed(8)
        mixer = MultiOrderMamba(**config)
    with torch.no_grad():
        for parameter in mixer.parameters():  # away from the zero/one initialisations
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=g))
    request = {"mixer": config, "state": mixer.state_dict(), "x": torch.randn(2, 12, 8, generator=g),
               "grad_out": torch.randn(2, 12, 8, generator=g)}
    answer = interpreted.raw(request)
    assert isinstance(answer, dict), answer
    expected = mixer_gradients(request, "reference")
    assert_matches(answer["out"], expected["out"], rtol=1e-5)
    for name, grad in expected["grads"].items():
        assert_matches(answer["grads"][name], grad, rtol=1e-5)


# --- dispatch (no kernel run) -----------------------------------------------------------------------------

def test_triton_backend_needs_cuda_tensors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    u = torch.zeros(1, 1, 1)
    if ops.triton_scan_fn() is None:
        pytest.skip("triton not installed")
    with pytest.raises(EnvironmentProblem, match="CUDA"):
        ops.resolve_backend("triton", u)
    assert ops.resolve_backend(None, u) == "torch"  # auto on the CPU


def test_triton_is_a_known_backend():
    assert "triton" in ops.BACKENDS
    with ops.scan_backend("triton"):
        pass


# --- GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["plain", "all"])
@pytest.mark.parametrize("shape", [(6, 1024, 196, 16), (3, 200, 1024, 16), (1, 40, 37, 5)])
def test_compiled_kernel_matches_reference_on_cuda(shape, options, dtype):
    args = make_inputs(*shape, dtype, options, device="cuda")
    with torch.no_grad():
        out = ops.selective_scan(**args, backend="triton")
    # ex2.approx and fused multiply-adds: float32 agrees to ~1e-6 of the output's scale
    assert_matches(out, reference(args), rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("tile", [{"chunk": 4}, {"chunk": 16}, {"block_d": 64, "num_warps": 2}])
def test_compiled_kernel_with_other_tiles(tile):
    args = make_inputs(4, 256, 196, 16, torch.float32, ALL_OPTIONS, device="cuda")
    with torch.no_grad():
        out = ops.triton_scan_fn()(**args, tile=tile)
    assert_matches(out, reference(args), rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 1024, 196, 16), (1, 40, 37, 5)])
def test_compiled_gradients_match_float64_autograd_on_cuda(shape, dtype):
    args = make_inputs(*shape, dtype, ALL_OPTIONS, device="cuda")
    grad_out = torch.randn(args["u"].shape, device="cuda").to(dtype)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if torch.is_tensor(v)}
    out = ops.selective_scan(**leaves, delta_softplus=True, backend="triton")
    out.backward(grad_out)
    _, expected = float64_gradients(args, grad_out)
    rtol = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: gradients rounded to 2^-8
    for name, leaf in leaves.items():
        error = (leaf.grad.double() - expected[name]).abs().max() / expected[name].abs().max()
        assert error <= rtol, f"d{name}: relative error {error:.3g}"


@pytest.mark.gpu
def test_auto_picks_triton_on_cuda_only_when_enabled(monkeypatch):
    args = make_inputs(2, 64, 16, 16, torch.float32, ALL_OPTIONS, device="cuda")
    monkeypatch.setattr(ops, "TRITON_IN_AUTO", False)
    assert ops.resolve_backend(None, args["u"], grad=False) != "triton"
    monkeypatch.setattr(ops, "TRITON_IN_AUTO", True)
    assert ops.resolve_backend(None, args["u"], grad=False) == "triton"
    training = ops.resolve_backend(None, args["u"], grad=True)
    assert (training == "triton") == ops.TRITON_FOR_TRAINING
    assert ops.resolve_backend(None, args["u"].double()) != "triton"  # float64 stays on the other backends


@pytest.mark.gpu
def test_diffma_b2_with_triton_scan_agrees_with_torch_scan_on_cuda():
    # The whole model, forward and backward, as benchmarks/gpu_agreement.py compares mamba_ssm (same bounds
    # as tests/gpu/test_fast_path.py).
    import importlib.util
    from pathlib import Path

    from diffma_cli.models import create_model

    path = Path(__file__).parents[2] / "benchmarks" / "gpu_agreement.py"
    spec = importlib.util.spec_from_file_location("gpu_agreement_triton", path)
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = create_model("DiffMa-B/2")
    agreement.randomise(model)
    model = model.cuda()
    batch, tokens = 2, (model.config["input_size"] // model.config["patch_size"]) ** 2
    inputs = (torch.randn(batch, 4, 28, 28, device="cuda"), torch.randint(0, 1000, (batch,), device="cuda"),
              torch.randn(batch, 512, device="cuda"), torch.randn(batch, tokens, 512, device="cuda"),
              torch.rand(batch, tokens, 1, device="cuda"))
    for bf16, (out_bound, grad_bound) in ((False, (1e-4, 1e-3)), (True, (3e-2, 5e-2))):
        out, grads = agreement.forward_backward(model, inputs, "triton", bf16)
        out_ref, grads_ref = agreement.forward_backward(model, inputs, "torch", bf16)
        assert agreement.relative_error(out, out_ref) < out_bound
        assert agreement.relative_error(grads, grads_ref) < grad_bound


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
