"""Benchmarks of hbi_ops.wti_similarity: every backend able to run here against the `torch` oracle, same run.

CPU: a CPU-scaled size (A = B = 64 texts / videos, T = 32 words, V = 12 frames, D = 512, float32).
Both with realistic padding and without any. GPU (when bench_device() is "cuda"): also the full size, the
MSR-VTT test set (A = B = 1000, T = 32, V = 12, D = 512, fp16, padded and not; bf16 padded).
"""

import pytest
import torch
import torch.nn.functional as F

import hbi_ops
from hbi_ops.testing import backends_for, bench_device, synchronize

# padded: realistic padding (texts 8..T real words, videos V/2..V real frames); else every token is real.
CPU_SIZES = [
    dict(A=64, B=64, T=32, V=12, D=512, dtype=torch.float32, padded=True),
    dict(A=64, B=64, T=32, V=12, D=512, dtype=torch.float32, padded=False),
]
# The GPU targets (MSR-VTT test set, fp16): forward >= 5x and backward >= 3x the torch backend.
GPU_SIZES = [
    dict(A=1000, B=1000, T=32, V=12, D=512, dtype=torch.float16, padded=True),
    dict(A=1000, B=1000, T=32, V=12, D=512, dtype=torch.float16, padded=False),
    dict(A=1000, B=1000, T=32, V=12, D=512, dtype=torch.bfloat16, padded=True),
]


def _cases():
    device = bench_device()
    sizes = GPU_SIZES + CPU_SIZES if device == "cuda" else CPU_SIZES
    return [
        pytest.param(device, size, padding, backend, id=f"{device}-{_label(size)}-{padding}-{backend}")
        for size in sizes
        for padding in (("ignore", "zero") if size["padded"] else ("ignore",))
        for backend in backends_for("wti_similarity", device)
    ]


def _label(size):
    dtype = str(size["dtype"]).replace("torch.", "")
    padded = "padded" if size["padded"] else "unpadded"
    return f"A{size['A']}-B{size['B']}-T{size['T']}-V{size['V']}-D{size['D']}-{dtype}-{padded}"


def _inputs(device, size, requires_grad=False):
    A, B, T, V, D, dtype = (size[k] for k in ("A", "B", "T", "V", "D", "dtype"))
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(A, T, D, generator=generator), dim=-1)
    y = F.normalize(torch.randn(B, V, D, generator=generator), dim=-1)
    p = torch.softmax(torch.randn(A, T, generator=generator), dim=-1)
    q = torch.softmax(torch.randn(B, V, generator=generator), dim=-1)
    if size["padded"]:  # texts have 8..T real words, videos V//2..V real frames
        words = torch.randint(min(8, T), T + 1, (A,), generator=generator)
        frames = torch.randint(V // 2, V + 1, (B,), generator=generator)
    else:
        words, frames = torch.full((A,), T), torch.full((B,), V)
    mt = torch.arange(T)[None] < words[:, None]
    mv = torch.arange(V)[None] < frames[:, None]
    tensors = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (x, y, p, q)]
    return tensors + [mt.to(device), mv.to(device)]


def _rounds(device, size):
    return 10 if device == "cuda" else 7


@pytest.mark.parametrize("device, size, padding, backend", _cases())
def test_forward(benchmark, device, size, padding, backend):
    benchmark.group = f"wti_similarity forward {device} {_label(size)} {padding}"
    x, y, p, q, mt, mv = _inputs(device, size)

    def run():
        with torch.no_grad():
            out = hbi_ops.wti_similarity(x, y, p, q, mt, mv, padding=padding, backend=backend)
        synchronize(device)
        return out

    run()  # warm-up (and first-call costs) outside the timing
    benchmark.pedantic(run, rounds=_rounds(device, size), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("device, size, padding, backend", _cases())
def test_forward_backward(benchmark, device, size, padding, backend):
    benchmark.group = f"wti_similarity forward+backward {device} {_label(size)} {padding}"
    x, y, p, q, mt, mv = _inputs(device, size, requires_grad=True)
    upstream = torch.randn(size["A"], size["B"], generator=torch.Generator().manual_seed(1))
    upstream = upstream.to(device=device, dtype=size["dtype"])

    def run():
        for t in (x, y, p, q):
            t.grad = None
        out = hbi_ops.wti_similarity(x, y, p, q, mt, mv, padding=padding, backend=backend)
        out.backward(upstream)
        synchronize(device)

    run()
    benchmark.pedantic(run, rounds=_rounds(device, size), iterations=1, warmup_rounds=1)
