"""wti_similarity on the GPU: the `cuda` and `triton` backends against the `torch` oracle (forward, arg-max indices,
the four gradients), at several sizes (the MSR-VTT test size included), masks, paddings and all four dtypes; opcheck
of the CUDA and Triton custom ops in float16 too (gradcheck: tests/ops/test_operators.py); current stream, device
index, no host sync, determinism and the memory bound of the fused forward. Skipped without a GPU
(tests/conftest.py)."""

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch
from hbi_ops.testing import FLOAT_DTYPES, TOLERANCE, wti_inputs

pytestmark = pytest.mark.gpu

OP = "wti_similarity"
BACKENDS = ("cuda", "triton")
PADDINGS = ("ignore", "zero")
DEVICE = "cuda"


def _require(backend, device=DEVICE):
    reason = _dispatch.why_not(backend, OP, torch.device(device))
    assert reason is None, f"{backend} cannot run {OP} on {device}: {reason}"


def make_inputs(A, B, T, V, D, dtype, empty_rows=True, device=DEVICE):
    return wti_inputs(A, B, T, V, D, dtype, empty_rows=empty_rows, device=device)


def score_and_grads(backend, x, y, p, q, mt, mv, padding, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, y, p, q)]
    score = hbi_ops.wti_similarity(*leaves, mt, mv, padding=padding, backend=backend)
    (score * upstream).sum().backward()
    return [score.detach()] + [leaf.grad for leaf in leaves]


def raw_forward(backend, *args):
    if backend == "cuda":
        return torch.ops.hbi_ops.wti_similarity(*args)
    return torch.ops.hbi_ops_triton.wti_similarity(*args)


def raw_backward(backend, *args):
    if backend == "cuda":
        return torch.ops.hbi_ops.wti_similarity_backward(*args)
    return torch.ops.hbi_ops_triton.wti_similarity_backward(*args)


def assert_end_to_end(backend, x, y, p, q, mt, mv, padding, dtype):
    """Forward and the four gradients against the oracle in float64 on the same rounded values (small sizes,
    where a near-tie between two maxima that float32 accumulation could order differently is improbable)."""
    upstream = torch.randn(x.shape[0], y.shape[0], dtype=torch.float64, device=DEVICE).to(dtype)
    got = score_and_grads(backend, x, y, p, q, mt, mv, padding, upstream)
    want = score_and_grads("torch", *(t.double() for t in (x, y, p, q)), mt, mv, padding, upstream.double())
    for name, g, w in zip(("score", "grad text", "grad video", "grad text_weight", "grad video_weight"), got, want):
        assert g.dtype == dtype and g.device == x.device, name
        torch.testing.assert_close(g.double(), w, **TOLERANCE[dtype], msg=lambda m: f"{backend} {name}: {m}")


def assert_forward_and_backward_op(backend, x, y, p, q, mt, mv, padding, dtype):
    """Larger sizes: score against the oracle; every kept arg-max is a maximum (up to float32 rounding) and the
    -1 pattern is the oracle's; the backward op against the CPU kernel given the same indices (float64)."""
    zero = padding == "zero"
    score, t2v, v2t = raw_forward(backend, x, y, p, q, mt, mv, zero)
    assert score.dtype == dtype and t2v.dtype == torch.int32 and v2t.dtype == torch.int32
    want = hbi_ops.wti_similarity(*(t.double() for t in (x, y, p, q)), mt, mv, padding=padding, backend="torch")
    torch.testing.assert_close(score.double(), want, **TOLERANCE[dtype])

    sim = torch.einsum("atd,bvd->abtv", x.double(), y.double())
    word, frame = mt[:, None, :, None], mv[None, :, None, :]
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    best_t = sim.masked_fill(~frame, float("-inf")).amax(3)  # [A, B, T]
    best_v = sim.masked_fill(~word, float("-inf")).amax(2)  # [A, B, V]
    keep = t2v >= 0
    picked = sim.gather(3, t2v.clamp(min=0).long()[..., None])[..., 0]
    assert (picked[keep] >= best_t[keep] - eps).all()
    keep_v = v2t >= 0
    picked_v = sim.gather(2, v2t.clamp(min=0).long()[:, :, None, :])[:, :, 0, :]
    assert (picked_v[keep_v] >= best_v[keep_v] - eps).all()
    # -1 exactly where the oracle has no real maximum (ignoring |max| < eps in zero mode, a sign near-tie)
    minus_t = (~mt[:, None, :]) | (~mv.any(1))[None, :, None]
    minus_v = (~mv[None, :, :]) | (~mt.any(1))[:, None, None]
    if zero:
        minus_t = minus_t | ((~mv).any(1)[None, :, None] & (best_t < 0))
        minus_v = minus_v | ((~mt).any(1)[:, None, None] & (best_v < 0))
        sure_t, sure_v = best_t.abs() > eps, best_v.abs() > eps
        assert torch.equal((t2v == -1)[sure_t], minus_t.expand_as(t2v)[sure_t])
        assert torch.equal((v2t == -1)[sure_v], minus_v.expand_as(v2t)[sure_v])
    else:
        assert torch.equal(t2v == -1, minus_t.expand_as(t2v))
        assert torch.equal(v2t == -1, minus_v.expand_as(v2t))

    grad = torch.randn(x.shape[0], y.shape[0], device=DEVICE).to(dtype)
    got = raw_backward(backend, grad, x, y, p, q, t2v, v2t)
    cpu = [t.cpu().double() for t in (grad, x, y, p, q)]
    want = torch.ops.hbi_ops.wti_similarity_backward(*cpu, t2v.cpu(), v2t.cpu())
    for name, g, w in zip(("grad text", "grad video", "grad text_weight", "grad video_weight"), got, want):
        assert g.dtype == dtype and g.device == x.device, name
        torch.testing.assert_close(g.cpu().double(), w, **TOLERANCE[dtype], msg=lambda m: f"{backend} {name}: {m}")


# ------------------------------------------------------------------------------------------------------------
# against the oracle
# ------------------------------------------------------------------------------------------------------------

SMALL = [(3, 4, 5, 4, 16), (5, 6, 7, 5, 32), (37, 21, 9, 6, 24), (17, 19, 32, 12, 64)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("sizes", SMALL, ids=lambda s: "x".join(map(str, s)))
def test_end_to_end_small(backend, dtype, padding, sizes):
    _require(backend)
    x, y, p, q, mt, mv = make_inputs(*sizes, dtype=dtype)
    assert_end_to_end(backend, x, y, p, q, mt, mv, padding, dtype)


# (A, B, T, V, D): tile edges of the fused CUDA forward (128 rows / 192 columns) and a D tail, D not a multiple
# of 8 (its scalar loads), T > 128 and V > 192 (fallback paths; the backward's row chunks), V = 1, the MSR-VTT shape.
LARGER = [
    (64, 48, 32, 12, 512),
    (130, 70, 24, 12, 40),
    (50, 40, 32, 12, 36),
    (9, 11, 150, 7, 33),
    (6, 5, 20, 200, 16),
    (33, 260, 128, 1, 8),
    (1000, 1000, 32, 12, 512),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("sizes", LARGER, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_backward_op_larger(backend, dtype, padding, sizes):
    _require(backend)
    if sizes[0] * sizes[1] * sizes[2] * sizes[3] > 10**7 and dtype != torch.float16:
        pytest.skip("the full size runs in float16 (the target's dtype) to keep the run short")
    x, y, p, q, mt, mv = make_inputs(*sizes, dtype=dtype)
    assert_forward_and_backward_op(backend, x, y, p, q, mt, mv, padding, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding", PADDINGS)
def test_without_padding_and_all_padding(backend, padding):
    _require(backend)
    x, y, p, q, _, _ = make_inputs(7, 9, 32, 12, 64, torch.float16)
    full_t = torch.ones(7, 32, dtype=torch.bool, device=DEVICE)
    full_v = torch.ones(9, 12, dtype=torch.bool, device=DEVICE)
    assert_end_to_end(backend, x, y, p, q, full_t, full_v, padding, torch.float16)
    score, gx, gy, gp, gq = score_and_grads(
        backend, x, y, p, q, ~full_t, ~full_v, padding, torch.randn(7, 9, device=DEVICE).half()
    )
    assert torch.equal(score, torch.zeros_like(score))
    for g in (gx, gy, gp, gq):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    _require(backend)
    A, B, T, V, D = 4, 5, 6, 3, 16
    x = torch.randn(D, T, A, device=DEVICE).permute(2, 1, 0)
    y = torch.randn(B, 2 * V, D, device=DEVICE)[:, ::2]
    p = torch.softmax(torch.randn(T, A, device=DEVICE), dim=0).t()
    q = torch.softmax(torch.randn(V, B, device=DEVICE), dim=0).t()
    mt = (torch.rand(T, A, device=DEVICE) > 0.3).t()
    mv = (torch.rand(V, B, device=DEVICE) > 0.3).t()
    for padding in PADDINGS:
        assert_end_to_end(backend, x, y, p, q, mt, mv, padding, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sizes", [(0, 3), (3, 0), (0, 0)])
def test_empty_batch(backend, sizes):
    _require(backend)
    A, B = sizes
    x, y, p, q, mt, mv = make_inputs(A, B, 5, 4, 16, torch.float16, empty_rows=False)
    score, gx, gy, gp, gq = score_and_grads(
        backend, x, y, p, q, mt, mv, "ignore", torch.randn(A, B, device=DEVICE).half()
    )
    assert score.shape == (A, B)
    assert gx.shape == x.shape and gy.shape == y.shape and gp.shape == p.shape and gq.shape == q.shape


# ------------------------------------------------------------------------------------------------------------
# opcheck
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("zero_padding", [False, True])
def test_opcheck(backend, dtype, zero_padding):
    _require(backend)
    ns = torch.ops.hbi_ops if backend == "cuda" else torch.ops.hbi_ops_triton
    x, y, p, q, mt, mv = make_inputs(3, 4, 5, 4, 16, dtype)
    op = ns.wti_similarity.default
    torch.library.opcheck(op, (x, y, p, q, mt, mv, zero_padding))
    grad_args = [t.clone().requires_grad_(True) for t in (x, y, p, q)]
    torch.library.opcheck(op, (*grad_args, mt, mv, zero_padding))
    _, t2v, v2t = op(x, y, p, q, mt, mv, zero_padding)
    torch.library.opcheck(
        ns.wti_similarity_backward.default, (torch.randn(3, 4, device=DEVICE).to(dtype), x, y, p, q, t2v, v2t)
    )


# ------------------------------------------------------------------------------------------------------------
# first-class op behaviour: stream, device index, no host sync, determinism, memory
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_side_stream_gives_the_same_result(backend):
    _require(backend)
    x, y, p, q, mt, mv = make_inputs(40, 30, 32, 12, 128, torch.float16)
    upstream = torch.randn(40, 30, device=DEVICE).half()
    want = score_and_grads(backend, x, y, p, q, mt, mv, "ignore", upstream)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = score_and_grads(backend, x, y, p, q, mt, mv, "ignore", upstream)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_sync(backend):
    _require(backend)
    x, y, p, q, mt, mv = make_inputs(20, 30, 32, 12, 64, torch.float16)
    leaves = [t.clone().requires_grad_(True) for t in (x, y, p, q)]
    upstream = torch.randn(20, 30, device=DEVICE).half()
    raw_forward(backend, x, y, p, q, mt, mv, False)  # compile / load outside the check
    score, t2v, v2t = raw_forward(backend, *leaves, mt, mv, False)
    score.backward(upstream)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        score, t2v, v2t = raw_forward(backend, *leaves, mt, mv, True)
        score.backward(upstream)
        raw_backward(backend, upstream, x, y, p, q, t2v, v2t)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    _require(backend)
    x, y, p, q, mt, mv = make_inputs(70, 90, 32, 12, 256, torch.float16)
    upstream = torch.randn(70, 90, device=DEVICE).half()
    first = score_and_grads(backend, x, y, p, q, mt, mv, "zero", upstream)
    second = score_and_grads(backend, x, y, p, q, mt, mv, "zero", upstream)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", BACKENDS)
def test_second_device(backend):
    _require(backend, "cuda:1")
    x, y, p, q, mt, mv = make_inputs(9, 7, 8, 5, 32, torch.float16, device="cuda:1")
    got = hbi_ops.wti_similarity(x, y, p, q, mt, mv, backend=backend)
    assert got.device == torch.device("cuda:1")
    want = hbi_ops.wti_similarity(*(t.double() for t in (x, y, p, q)), mt, mv, backend="torch")
    torch.testing.assert_close(got.double(), want, **TOLERANCE[torch.float16])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_memory_is_not_abtv(backend):
    """full size, fp16: the forward allocates its outputs (score, indices: 178 MB) and little else; S in float32
    would be 1.5 GB."""
    _require(backend)
    A, B, T, V, D = 1000, 1000, 32, 12, 512
    x, y, p, q, mt, mv = make_inputs(A, B, T, V, D, torch.float16)
    raw_forward(backend, x, y, p, q, mt, mv, False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = raw_forward(backend, x, y, p, q, mt, mv, False)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    outputs = sum(t.numel() * t.element_size() for t in out)
    assert extra <= outputs + 64 * 2**20, f"forward used {extra / 2**20:.0f} MB, outputs {outputs / 2**20:.0f} MB"
