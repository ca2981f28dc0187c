"""hbi_ops.dpc_knn on CUDA tensors: the `cuda` and `triton` backends against the oracle and the cpu kernel at
several sizes (both paths of each: fused N <= 64, tiled N > 64), masks and dtypes; streams; no host
synchronisation (opcheck: tests/ops/test_operators.py). Skipped without a GPU."""

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch
from hbi_ops.reference.dpc_knn import dpc_knn as oracle
from hbi_ops.testing import FLOAT_DTYPES, grid_data, random_mask

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["cuda", "triton"]
TRITON_MAX_TOKENS = 16384


def _need(backend, n=None):
    reason = _dispatch.why_not(backend, "dpc_knn", torch.device("cuda"))
    if reason is not None:
        pytest.fail(f"{backend} backend unavailable on the GPU: {reason}")
    if backend == "triton" and n is not None and n > TRITON_MAX_TOKENS:
        pytest.skip("the triton backend declines N > 16384")


def assert_same(result, expected):
    idx, centers = (t.cpu() for t in result)
    expected_idx, expected_centers = (t.cpu() for t in expected)
    assert idx.dtype == torch.int64 and centers.dtype == torch.int64
    torch.testing.assert_close(centers, expected_centers, rtol=0, atol=0)
    torch.testing.assert_close(idx, expected_idx, rtol=0, atol=0)


def assert_valid(result, num_clusters):
    idx, centers = result
    batch, n = idx.shape
    assert int(idx.min()) >= 0 and int(idx.max()) < num_clusters
    assert int(centers.min()) >= 0 and int(centers.max()) < n
    assert (torch.sort(centers, dim=1).values.diff(dim=1) > 0).all(), "centres must be distinct"
    assert torch.equal(idx.gather(1, centers), torch.arange(num_clusters, device=idx.device).expand(batch, -1))


SHAPES = [  # batch, n, width, num_clusters, k
    (5, 12, 16, 6, 3),
    (4, 32, 64, 16, 3),
    (3, 1, 8, 1, 1),
    (6, 20, 3, 20, 20),
    (3, 64, 13, 9, 4),  # largest N of the fused cuda path
    (3, 65, 13, 9, 4),  # smallest N of the tiled cuda path
    (2, 150, 12, 40, 5),
    (3, 60, 5, 10, 25),
    (2, 256, 40, 64, 7),
    (2, 300, 33, 30, 5),
    (2, 700, 8, 50, 120),  # large k: radix select + ranked candidates
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_matches_oracle_float64(backend, shape):
    batch, n, width, num_clusters, k = shape
    _need(backend, n)
    x = torch.randn(batch, n, width, dtype=torch.float64)
    mask = random_mask(batch, n)
    expected = oracle(x, mask, num_clusters, k)
    result = hbi_ops.dpc_knn(x.cuda(), num_clusters, k=k, mask=mask.cuda(), backend=backend)
    assert result[0].device.type == "cuda"
    assert_same(result, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_matches_oracle_on_grid_data(backend, shape, dtype):
    # Integer-valued data: every backend's distances are exact, and the many exact ties test the tie rules.
    batch, n, width, num_clusters, k = shape
    _need(backend, n)
    x = grid_data((batch, n, width), dtype)
    mask = random_mask(batch, n)
    expected = oracle(x, mask, num_clusters, k)
    assert_same(hbi_ops.dpc_knn(x.cuda(), num_clusters, k=k, mask=mask.cuda(), backend=backend), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [24, 100])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_matches_oracle_well_separated(backend, dtype, n):
    _need(backend, n)
    batch, width = 4, 32
    groups = torch.randn(batch, 6, width) * 8
    x = groups[:, torch.arange(n) % 6] + torch.randn(batch, n, width) * torch.linspace(0.5, 2, n)[:, None]
    x = x.to(dtype)
    mask = random_mask(batch, n)
    expected = oracle(x, mask, 6, 3)
    assert_same(hbi_ops.dpc_knn(x.cuda(), 6, k=3, mask=mask.cuda(), backend=backend), expected)


FULL_SIZES = [  # name, batch, n, width, num_clusters, k, masked
    ("text", 128, 32, 512, 16, 3, True),
    ("frames", 128, 12, 512, 6, 3, False),
    ("image", 32, 3136, 64, 784, 5, False),
]


def _spec_inputs(batch, n, width, masked, dtype):
    x = torch.randn(batch, n, width, dtype=dtype)
    if masked:
        lengths = torch.randint(8, n + 1, (batch,))
        mask = torch.arange(n)[None] < lengths[:, None]
    else:
        mask = torch.ones(batch, n, dtype=torch.bool)
    return x, mask


@pytest.mark.parametrize("size", FULL_SIZES, ids=lambda s: s[0])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_spec_sizes_float64_match_oracle(backend, size):
    _name, batch, n, width, num_clusters, k, masked = size
    _need(backend, n)
    x, mask = _spec_inputs(batch, n, width, masked, torch.float64)
    xc, mc = x.cuda(), mask.cuda()
    expected = oracle(xc, mc, num_clusters, k)  # the oracle on the GPU (float64: no near-ties)
    assert_same(hbi_ops.dpc_knn(xc, num_clusters, k=k, mask=mc, backend=backend), expected)


@pytest.mark.parametrize("size", FULL_SIZES, ids=lambda s: s[0])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_spec_sizes_float32_agree_with_cpu_kernel(backend, size):
    # float32 random data at the full sizes: the cuda kernel sums in the cpu kernel's order (bitwise the same
    # on x86 hosts), triton in another; with 784 centres out of 3136 tokens, near-ties between adjacent
    # scores are common at float32 rounding, and swapping two centres relabels their clusters. So compare
    # what does not depend on labels: the centre token each token is assigned to, and the set of centres.
    _name, batch, n, width, num_clusters, k, masked = size
    _need(backend, n)
    x, mask = _spec_inputs(batch, n, width, masked, torch.float32)
    expected_idx, expected_centers = hbi_ops.dpc_knn(x, num_clusters, k=k, mask=mask, backend="cpu")
    idx, centers = hbi_ops.dpc_knn(x.cuda(), num_clusters, k=k, mask=mask.cuda(), backend=backend)
    assert_valid((idx, centers), num_clusters)
    idx, centers = idx.cpu(), centers.cpu()
    centre_token = centers.gather(1, idx)
    expected_centre_token = expected_centers.gather(1, expected_idx)
    assert (centre_token != expected_centre_token).double().mean().item() <= 1e-2
    same_set = (torch.sort(centers, 1).values == torch.sort(expected_centers, 1).values).all(dim=1)
    assert same_set.double().mean().item() >= 0.9
    if backend == "cuda":  # same summation order: the labels themselves agree almost everywhere
        assert (idx != expected_idx).double().mean().item() <= 0.05


@pytest.mark.parametrize("n", [40, 200])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_finite_inputs_give_valid_clusters(backend, n):
    _need(backend, n)
    batch, num_clusters = 4, 5
    x = torch.randn(batch, n, 3)
    x[0, 2, 1] = float("nan")
    x[1, 5, 0] = float("inf")
    x[1, 6, 0] = float("-inf")
    x[2, :4] *= 1e30
    x[3] = float("nan")
    result = hbi_ops.dpc_knn(
        x.cuda(), num_clusters, k=3, mask=random_mask(batch, n, empty_sample=False).cuda(), backend=backend
    )
    assert_valid(result, num_clusters)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_samples_are_independent_and_chunking(backend):
    _need(backend)
    n, width, num_clusters, k = 16, 8, 5, 3
    x = torch.randn(2, n, width, dtype=torch.float64, device="cuda")
    mask = torch.ones(2, n, dtype=torch.bool, device="cuda")
    mask[0, 11:] = False
    alone = hbi_ops.dpc_knn(x[:1], num_clusters, k=k, mask=mask[:1], backend=backend)
    changed = x.clone()
    changed[1] *= 100
    changed[0, 11:] = torch.randn(n - 11, width, dtype=torch.float64, device="cuda") * 50
    after = hbi_ops.dpc_knn(changed, num_clusters, k=k, mask=mask, backend=backend)
    assert_same((after[0][:1], after[1][:1]), alone)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_contiguous_inputs_and_int_mask(backend):
    _need(backend)
    x = torch.randn(4, 20, 6, dtype=torch.float64, device="cuda")[:, ::2, :]
    mask = random_mask(4, 10).cuda().t().contiguous().t()
    expected = oracle(x.contiguous().cpu(), mask.cpu(), 4, 3)
    assert_same(hbi_ops.dpc_knn(x, 4, k=3, mask=mask, backend=backend), expected)
    assert_same(hbi_ops.dpc_knn(x, 4, k=3, mask=mask.to(torch.int32) * 7, backend=backend), expected)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_empty_batch(backend):
    _need(backend)
    idx, centers = hbi_ops.dpc_knn(torch.randn(0, 6, 4, device="cuda"), 3, k=2, backend=backend)
    assert idx.shape == (0, 6) and centers.shape == (0, 3) and idx.is_cuda


@pytest.mark.parametrize("n", [32, 200])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_stream_device_and_no_sync(backend, n):
    _need(backend, n)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    x = torch.randn(8, n, 24, device=device)
    mask = torch.rand(8, n, device=device) < 0.8
    reference = hbi_ops.dpc_knn(x, 7, k=3, mask=mask, backend=backend)  # also compiles / warms up
    torch.cuda.synchronize(device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.device(device), torch.cuda.stream(stream):
        torch.cuda.set_sync_debug_mode("error")
        try:
            result = hbi_ops.dpc_knn(x, 7, k=3, mask=mask, backend=backend)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    assert_same(result, reference)


def test_triton_declines_huge_n_clearly():
    _need("triton")
    with pytest.raises(ValueError, match="N <= 16384"):
        hbi_ops.dpc_knn(torch.randn(1, 16385, 1, device="cuda"), 3, k=2, backend="triton")


def test_cuda_kernel_checks_its_arguments():
    _need("cuda")
    x = torch.randn(2, 5, 3, device="cuda")
    with pytest.raises(RuntimeError, match="num_clusters"):
        torch.ops.hbi_ops.dpc_knn(x, torch.ones(2, 5, dtype=torch.bool, device="cuda"), 6, 2)
    with pytest.raises(RuntimeError, match="mask must be on"):
        torch.ops.hbi_ops.dpc_knn(x, torch.ones(2, 5, dtype=torch.bool), 2, 2)
