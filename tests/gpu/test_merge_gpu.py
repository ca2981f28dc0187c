"""hbi_ops.merge_tokens on CUDA tensors: the `cuda` and `triton` backends against the oracle, forward and backward,
at several sizes (full sizes included) and dtypes; out-of-range idx (a device-side assertion, in a child process);
streams; no host synchronisation (gradcheck, opcheck: tests/ops/test_operators.py). Skipped without a GPU."""

import subprocess
import sys

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch
from hbi_ops.reference.merge import merge_tokens as oracle
from hbi_ops.testing import FLOAT_DTYPES, TOLERANCE

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["cuda", "triton"]


def _need(backend):
    reason = _dispatch.why_not(backend, "merge_tokens", torch.device("cuda"))
    if reason is not None:
        pytest.fail(f"{backend} backend unavailable on the GPU: {reason}")


def inputs(batch, n, width, num_clusters, dtype, device="cuda"):
    x = torch.randn(batch, n, width).to(dtype)
    idx = torch.randint(0, num_clusters, (batch, n))
    weight = torch.randn(batch, n).exp().to(dtype)  # token importance, as exp(score)
    return x.to(device), idx.to(device), weight.to(device)


SIZES = [  # batch, n, width, num_clusters
    (3, 11, 6, 4),
    (4, 30, 24, 7),
    (2, 50, 200, 50),  # K = N
    (3, 17, 33, 40),  # K > N: empty clusters
    (2, 64, 1, 3),
    pytest.param((128, 32, 512, 16), id="spec_size-text"),
    pytest.param((128, 12, 512, 6), id="spec_size-frames"),
    pytest.param((32, 3136, 64, 784), id="spec_size-image"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else None)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_matches_oracle_forward_and_gradients(backend, size, dtype):
    _need(backend)
    batch, n, width, num_clusters = size
    x, idx, weight = inputs(batch, n, width, num_clusters, dtype)
    grad = torch.randn(batch, num_clusters, width, device="cuda").to(dtype)
    results = []
    for name in ("torch", backend):
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = hbi_ops.merge_tokens(xr, idx, num_clusters, wr, backend=name)
        assert out.dtype == dtype and out.shape == (batch, num_clusters, width) and out.is_cuda
        out.backward(grad)
        assert xr.grad.dtype == dtype and wr.grad.dtype == dtype
        results.append((out.detach(), xr.grad, wr.grad))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got.double(), expected.double(), **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_forward_is_the_cpu_kernels_sum(backend):
    # Both sum tokens in ascending order in float32; the cuda kernel without FMA contraction is bitwise the
    # cpu kernel on x86 hosts. Allow one ulp-level difference for the triton backend / FMA hosts.
    _need(backend)
    x, idx, weight = inputs(16, 40, 48, 9, torch.float32, device="cpu")
    expected = hbi_ops.merge_tokens(x, idx, 9, weight, backend="cpu")
    got = hbi_ops.merge_tokens(x.cuda(), idx.cuda(), 9, weight.cuda(), backend=backend).cpu()
    tolerance = 1e-6 if backend == "cuda" else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_empty_clusters_empty_batch_and_non_contiguous(backend):
    _need(backend)
    x, idx, weight = inputs(3, 11, 6, 3, torch.float32)
    out = hbi_ops.merge_tokens(x, idx, 6, weight, backend=backend)
    assert torch.equal(out[:, 3:], torch.zeros(3, 3, 6, device="cuda"))
    empty = torch.randn(0, 5, 4, device="cuda", requires_grad=True)
    out = hbi_ops.merge_tokens(empty, torch.zeros(0, 5, dtype=torch.int64, device="cuda"), 3, backend=backend)
    assert out.shape == (0, 3, 4)
    out.sum().backward()
    assert empty.grad.shape == empty.shape
    xt = torch.randn(3, 6, 20, dtype=torch.float64, device="cuda").transpose(1, 2)
    it = torch.randint(0, 5, (20, 3), device="cuda").t()
    wt = torch.rand(20, 3, dtype=torch.float64, device="cuda").t() + 0.1
    torch.testing.assert_close(
        hbi_ops.merge_tokens(xt, it, 5, wt, backend=backend),
        oracle(xt.contiguous(), it.contiguous(), wt.contiguous(), 5),
        rtol=1e-12,
        atol=1e-12,
    )


_OUT_OF_RANGE_SCRIPT = """
import sys, torch, hbi_ops
backend, bad, via = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x, idx, weight = torch.randn(3, 11, 6, device="cuda"), torch.randint(0, 4, (3, 11), device="cuda"), None
idx[2, 7] = bad
weight = torch.rand(3, 11, device="cuda")
if via == "api":
    hbi_ops.merge_tokens(x, idx, 4, weight, backend=backend)
elif backend == "cuda":
    torch.ops.hbi_ops.merge_tokens(x, idx, weight, 4)
else:
    torch.ops.hbi_ops_triton.merge_tokens(x, idx, weight, 4)
torch.cuda.synchronize()
print("NO ERROR")
"""


@pytest.mark.parametrize("via", ["api", "raw_op"])
@pytest.mark.parametrize("bad", [-1, 4, 1 << 40])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_out_of_range_idx_fails_a_device_assertion(backend, bad, via):
    # Checking idx on the host would synchronise: the kernels fail a device-side assertion instead, which
    # ends the CUDA context, so the call runs in a child process.
    _need(backend)
    child = subprocess.run(
        [sys.executable, "-c", _OUT_OF_RANGE_SCRIPT, backend, str(bad), via],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = child.stdout + child.stderr
    assert child.returncode != 0 and "NO ERROR" not in output, output[-2000:]
    assert "device-side assert" in output or "Assertion" in output, output[-2000:]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_stream_device_and_no_sync(backend):
    _need(backend)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    x, idx, weight = inputs(8, 40, 64, 10, torch.float32, device=device)
    grad = torch.randn(8, 10, 64, device=device)

    def run():
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        out = hbi_ops.merge_tokens(xr, idx, 10, wr, backend=backend)
        out.backward(grad)
        return out.detach(), xr.grad, wr.grad

    reference = run()  # also compiles / warms up
    torch.cuda.synchronize(device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.device(device), torch.cuda.stream(stream):
        torch.cuda.set_sync_debug_mode("error")
        try:
            result = run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    for got, expected in zip(result, reference):
        assert torch.equal(got, expected)  # deterministic: no value atomics
