"""Benchmarks of hbi_ops.dpc_knn + hbi_ops.merge_tokens as the model uses them (cluster the tokens, then
merge each cluster weighted by token importance): every backend able to run here against the `torch`
oracle, same run, same group per size.

Sizes (docs/reference_cost.md), float32:
  text   B=128, N=32,  C=512, K=16,  k=3, masked (8..32 real words)
  frames B=128, N=12,  C=512, K=6,   k=3
  image  B=2,   N=784, C=64,  K=196, k=5    (TCFormer-like, scaled for a small CPU)
  image  B=32,  N=3136, C=64, K=784, k=5    (the full size, GPU only)

GPU targets (dpc_knn + merge_tokens forward, H100/H200): text <= 30 us, frames <= 20 us, image <= 1.5 ms.
"""

import time

import pytest
import torch

import hbi_ops
from hbi_ops.testing import backends_for, bench_device, synchronize

TEXT = dict(name="text", B=128, N=32, C=512, K=16, k=3, masked=True)
FRAMES = dict(name="frames", B=128, N=12, C=512, K=6, k=3, masked=False)
IMAGE_SMALL = dict(name="image", B=2, N=784, C=64, K=196, k=5, masked=False)
IMAGE_FULL = dict(name="image", B=32, N=3136, C=64, K=784, k=5, masked=False)

CPU_SIZES = [TEXT, FRAMES, IMAGE_SMALL]
TRITON_MAX_TOKENS = 16384
GPU_SIZES = [TEXT, FRAMES, IMAGE_FULL]


def _backends(device):
    merge = set(backends_for("merge_tokens", device))
    return [b for b in backends_for("dpc_knn", device) if b in merge]


def _label(size):
    return f"{size['name']} B{size['B']}-N{size['N']}-C{size['C']}-K{size['K']}-k{size['k']}" + (
        "-masked" if size["masked"] else ""
    )


def _cases():
    cases = []
    device = bench_device()
    for size in GPU_SIZES if device == "cuda" else CPU_SIZES:
        for backend in _backends(device):
            if backend == "triton" and size["N"] > TRITON_MAX_TOKENS:
                continue  # the triton dpc_knn declines N > 16384
            cases.append(pytest.param(device, size, backend, id=f"{device}-{_label(size)}-{backend}"))
    return cases


def _inputs(device, size, requires_grad=False):
    B, N, C = size["B"], size["N"], size["C"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, C, generator=generator)
    weight = torch.randn(B, N, generator=generator).exp()  # token importance, as exp(score)
    if size["masked"]:
        lengths = torch.randint(8, N + 1, (B,), generator=generator)
        mask = torch.arange(N)[None] < lengths[:, None]
    else:
        mask = None
    x = x.to(device).requires_grad_(requires_grad)
    weight = weight.to(device).requires_grad_(requires_grad)
    return x, weight, (mask.to(device) if mask is not None else None)


def _time(run):
    """Warm up (first-call costs stay out of the timing), then as many rounds as fit in ~1 s (3 to 50): cheap
    cases get enough rounds for a stable median, the slow oracle cases stay short."""
    run()
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    return max(3, min(50, int(1.0 / max(once, 1e-6))))


@pytest.mark.parametrize("device, size, backend", _cases())
def test_cluster_and_merge(benchmark, device, size, backend):
    benchmark.group = f"dpc_knn+merge_tokens forward {device} {_label(size)}"
    x, weight, mask = _inputs(device, size)

    def run():
        with torch.no_grad():
            idx, _centers = hbi_ops.dpc_knn(x, size["K"], k=size["k"], mask=mask, backend=backend)
            out = hbi_ops.merge_tokens(x, idx, size["K"], weight, backend=backend)
        synchronize(device)
        return out

    benchmark.pedantic(run, rounds=_time(run), iterations=1)


@pytest.mark.parametrize("device, size, backend", _cases())
def test_merge_forward_backward(benchmark, device, size, backend):
    benchmark.group = f"merge_tokens forward+backward {device} {_label(size)}"
    x, weight, mask = _inputs(device, size, requires_grad=True)
    idx, _centers = hbi_ops.dpc_knn(x, size["K"], k=size["k"], mask=mask, backend=backend)
    upstream = torch.randn(size["B"], size["K"], size["C"], generator=torch.Generator().manual_seed(1)).to(device)

    def run():
        x.grad = weight.grad = None
        out = hbi_ops.merge_tokens(x, idx, size["K"], weight, backend=backend)
        out.backward(upstream)
        synchronize(device)

    benchmark.pedantic(run, rounds=_time(run), iterations=1)
