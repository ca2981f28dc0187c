"""hbi_ops.wti_similarity (docs/wti.md): the oracle against a brute-force loop, every compiled CPU backend against
the oracle (forward and the four gradients), torch.compile and argument errors (gradcheck and opcheck on the
shared samples: test_operators.py)."""

import pytest
import torch

import hbi_ops
from hbi_ops.reference.wti import wti_similarity as oracle
from hbi_ops.testing import FLOAT_DTYPES, TOLERANCE, compiled_cpu_backends, wti_inputs

PADDINGS = ("ignore", "zero")


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


def brute_force(x, y, p, q, mt, mv, padding):
    """Scalar loops over the definition of docs/wti.md, independent of the oracle's tensor code."""
    num_texts, num_words, _ = x.shape
    num_videos, num_frames, _ = y.shape
    out = torch.zeros(num_texts, num_videos, dtype=torch.float64)
    for a in range(num_texts):
        for b in range(num_videos):

            def sim(t, v):
                if padding == "zero" and not (mt[a, t] and mv[b, v]):
                    return 0.0
                return float((x[a, t].double() * y[b, v].double()).sum())

            t2v = 0.0
            for t in range(num_words):
                if not mt[a, t]:
                    continue  # a padded word contributes nothing
                candidates = [sim(t, v) for v in range(num_frames) if padding == "zero" or mv[b, v]]
                t2v += float(p[a, t]) * (max(candidates) if candidates else 0.0)
            v2t = 0.0
            for v in range(num_frames):
                if not mv[b, v]:
                    continue
                candidates = [sim(t, v) for t in range(num_words) if padding == "zero" or mt[a, t]]
                v2t += float(q[b, v]) * (max(candidates) if candidates else 0.0)
            out[a, b] = (t2v + v2t) / 2
    return out


def make_inputs(num_texts=3, num_videos=4, num_words=5, num_frames=4, width=16, dtype=torch.float64, empty_rows=True):
    return wti_inputs(num_texts, num_videos, num_words, num_frames, width, dtype, empty_rows=empty_rows)


def score_and_grads(fn, x, y, p, q, *rest, upstream, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, y, p, q)]
    score = fn(*leaves, *rest, **kw)
    (score * upstream).sum().backward()
    return [score.detach()] + [leaf.grad for leaf in leaves]


def oracle_api(*args, padding, **_):
    return hbi_ops.wti_similarity(*args, padding=padding, backend="torch")


# ------------------------------------------------------------------------------------------------------------
# the oracle
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
def test_oracle_matches_brute_force(padding):
    x, y, p, q, mt, mv = make_inputs()
    assert not mt[1].any() and not mv[2].any()  # a text and a video without any real token
    got = oracle(x, y, p, q, mt, mv, padding == "zero")
    want = brute_force(x, y, p, q, mt, mv, padding)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
def test_oracle_without_masks_matches_brute_force(padding):
    x, y, p, q, _, _ = make_inputs(num_words=6, num_frames=3)
    mt, mv = torch.ones(3, 6, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool)
    torch.testing.assert_close(
        oracle(x, y, p, q, mt, mv, padding == "zero"), brute_force(x, y, p, q, mt, mv, padding), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", PADDINGS)
def test_all_padding_gives_zeros_not_nan(backend, padding):
    x, y, p, q, _, _ = make_inputs(dtype=torch.float32)
    mt, mv = torch.zeros(3, 5, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)
    score, gx, gy, gp, gq = score_and_grads(
        hbi_ops.wti_similarity, x, y, p, q, mt, mv, upstream=torch.randn(3, 4), padding=padding, backend=backend
    )
    assert torch.equal(score, torch.zeros(3, 4))
    for grad in (gx, gy, gp, gq):
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", PADDINGS)
def test_padded_weights_get_no_gradient(backend, padding):
    x, y, p, q, mt, mv = make_inputs()
    _, _, _, gp, gq = score_and_grads(
        hbi_ops.wti_similarity,
        x,
        y,
        p,
        q,
        mt,
        mv,
        upstream=torch.randn(3, 4, dtype=torch.float64),
        padding=padding,
        backend=backend,
    )
    assert torch.equal(gp[~mt], torch.zeros_like(gp[~mt]))
    assert torch.equal(gq[~mv], torch.zeros_like(gq[~mv]))


# ------------------------------------------------------------------------------------------------------------
# compiled backends against the oracle
# ------------------------------------------------------------------------------------------------------------


def assert_matches_oracle(backend, x, y, p, q, mt, mv, padding, dtype, upstream=None):
    """Backend on `dtype` inputs vs the oracle in float64 on the same (rounded) values."""
    upstream = torch.randn(x.shape[0], y.shape[0], dtype=torch.float64) if upstream is None else upstream
    got = score_and_grads(
        hbi_ops.wti_similarity, x, y, p, q, mt, mv, upstream=upstream.to(dtype), padding=padding, backend=backend
    )
    want = score_and_grads(
        oracle_api, *(t.double() for t in (x, y, p, q)), mt, mv, upstream=upstream.to(dtype).double(), padding=padding
    )
    for name, g, w in zip(("score", "grad text", "grad video", "grad text_weight", "grad video_weight"), got, want):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), w, **TOLERANCE[dtype], msg=lambda m: f"{backend} {name}: {m}")


@pytest.mark.parametrize("backend", compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("padding", PADDINGS)
def test_backend_matches_oracle(backend, dtype, padding):
    x, y, p, q, mt, mv = make_inputs(num_texts=5, num_videos=6, num_words=7, num_frames=5, width=32, dtype=dtype)
    assert_matches_oracle(backend, x, y, p, q, mt, mv, padding, dtype)


@pytest.mark.parametrize("backend", compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("sizes", [(37, 21, 9, 6, 24), (300, 260, 24, 12, 2)], ids=["cache-blocks", "gemm-blocks"])
def test_backend_matches_oracle_larger_blocks(backend, padding, sizes):
    # Enough texts and videos for several threads and the 16-wide cache blocks of the backward; the second
    # size has over 2^22 real (word, frame) dot products, so the cpu forward splits its GEMM into blocks.
    A, B, T, V, D = sizes
    if backend == "triton" and A > 100:
        # the cpu kernel's GEMM blocks do not concern the triton kernels, and the interpreter is slow at this size:
        # still several program tiles in each direction (40 texts, 36 videos: 5 x 3 tiles)
        A, B = 40, 36
    x, y, p, q, mt, mv = make_inputs(num_texts=A, num_videos=B, num_words=T, num_frames=V, width=D, dtype=torch.float64)
    if A > 100:
        assert int(mt.sum()) * int(mv.sum()) > 2**22
    assert_matches_oracle(backend, x, y, p, q, mt, mv, padding, torch.float64)


@pytest.mark.parametrize("backend", compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", PADDINGS)
def test_backend_without_masks(backend, padding):
    x, y, p, q, _, _ = make_inputs(dtype=torch.float32)
    got = hbi_ops.wti_similarity(x, y, p, q, padding=padding, backend=backend)
    want = oracle(
        x.double(),
        y.double(),
        p.double(),
        q.double(),
        torch.ones(3, 5, dtype=torch.bool),
        torch.ones(4, 4, dtype=torch.bool),
        padding == "zero",
    )
    torch.testing.assert_close(got.double(), want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", PADDINGS)
def test_integer_masks_equal_bool_masks(backend, padding):
    x, y, p, q, mt, mv = make_inputs(dtype=torch.float32)
    with_bool = hbi_ops.wti_similarity(x, y, p, q, mt, mv, padding=padding, backend=backend)
    with_int = hbi_ops.wti_similarity(
        x, y, p, q, mt.to(torch.int64), mv.to(torch.int32), padding=padding, backend=backend
    )
    assert torch.equal(with_bool, with_int)


@pytest.mark.parametrize("backend", compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", PADDINGS)
def test_non_contiguous_inputs(backend, padding):
    A, B, T, V, D = 4, 5, 6, 3, 16
    x = torch.randn(D, T, A).permute(2, 1, 0)  # [A, T, D], transposed view
    y = torch.randn(B, 2 * V, D)[:, ::2]  # [B, V, D], strided slice
    p = torch.softmax(torch.randn(T, A), dim=0).t()  # [A, T]
    q = torch.softmax(torch.randn(V, B), dim=0).t()  # [B, V]
    mt = (torch.rand(T, A) > 0.3).t()
    mv = (torch.rand(V, B) > 0.3).t()
    assert not (x.is_contiguous() or y.is_contiguous() or p.is_contiguous() or mt.is_contiguous())
    assert_matches_oracle(backend, x, y, p, q, mt, mv, padding, torch.float32)


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("sizes", [(0, 3), (3, 0), (0, 0)])
def test_empty_batch(backend, sizes):
    A, B = sizes
    x, y, p, q, mt, mv = make_inputs(num_texts=A, num_videos=B, dtype=torch.float32, empty_rows=False)
    score, gx, gy, gp, gq = score_and_grads(
        hbi_ops.wti_similarity, x, y, p, q, mt, mv, upstream=torch.randn(A, B), padding="ignore", backend=backend
    )
    assert score.shape == (A, B)
    assert gx.shape == x.shape and gy.shape == y.shape and gp.shape == p.shape and gq.shape == q.shape
    assert (gy == 0).all() if A == 0 else (gx == 0).all()


# ------------------------------------------------------------------------------------------------------------
# arg-max outputs, torch.compile
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero_padding", [False, True])
def test_argmax_outputs(zero_padding):
    x, y, p, q, mt, mv = make_inputs()
    _, t2v, v2t = torch.ops.hbi_ops.wti_similarity(x, y, p, q, mt, mv, zero_padding)
    sim = torch.einsum("atd,bvd->abtv", x, y)
    word, frame = mt[:, None, :, None], mv[None, :, None, :]
    # -1 at padded words / frames and where the other side has no real token
    assert (t2v[~mt[:, None, :].expand_as(t2v)] == -1).all()
    assert (v2t[~mv[None, :, :].expand_as(v2t)] == -1).all()
    assert (t2v[:, 2] == -1).all() and (v2t[1] == -1).all()
    real_t2v = sim.masked_fill(~frame, float("-inf")).argmax(3)
    keep = t2v >= 0
    assert torch.equal(t2v[keep].long(), real_t2v[keep])
    if zero_padding:  # a masked 0 wins exactly when every real entry is negative and padding exists
        best = sim.masked_fill(~frame, float("-inf")).amax(3)
        has_pad = (~mv).any(1)[None, :, None].expand_as(t2v)
        expect_minus = (~mt[:, None, :]) | (~mv.any(1))[None, :, None] | (has_pad & (best < 0))
        assert torch.equal(t2v == -1, expect_minus)
    else:
        expect_minus = (~mt[:, None, :]) | (~mv.any(1))[None, :, None]
        assert torch.equal(t2v == -1, expect_minus.expand_as(t2v))
    real_v2t = sim.masked_fill(~word, float("-inf")).argmax(2)
    keep = v2t >= 0
    assert torch.equal(v2t[keep].long(), real_v2t[keep])


@pytest.mark.parametrize("padding", PADDINGS)
def test_torch_compile(padding):
    x, y, p, q, mt, mv = make_inputs(dtype=torch.float32)

    def fn(x, y, p, q, mt, mv):
        return hbi_ops.wti_similarity(x, y, p, q, mt, mv, padding=padding, backend="cpu") * 2 + 1

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=False, backend="aot_eager")
    leaves = [t.clone().requires_grad_(True) for t in (x, y, p, q)]
    got = compiled(*leaves, mt, mv)
    got.sum().backward()
    want_leaves = [t.clone().requires_grad_(True) for t in (x, y, p, q)]
    want = fn(*want_leaves, mt, mv)
    want.sum().backward()
    torch.testing.assert_close(got, want)
    for g, w in zip(leaves, want_leaves):
        torch.testing.assert_close(g.grad, w.grad)


# ------------------------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------------------------


def _bad_calls():
    x, y, p, q, mt, mv = make_inputs(dtype=torch.float32)
    return {
        "text rank": ((x[0], y, p, q), {}, ValueError, "text"),
        "video rank": ((x, y[0], p, q), {}, ValueError, "video"),
        "feature width": ((x, y[..., :-1], p, q), {}, ValueError, "video"),
        "text_weight shape": ((x, y, p[:, :-1], q), {}, ValueError, "text_weight"),
        "video_weight shape": ((x, y, p, q[:-1]), {}, ValueError, "video_weight"),
        "text_mask shape": ((x, y, p, q, mt[:, :-1], mv), {}, ValueError, "text_mask"),
        "video_mask shape": ((x, y, p, q, mt, mv[:-1]), {}, ValueError, "video_mask"),
        "integer text": ((x.to(torch.int64), y, p, q), {}, TypeError, "text"),
        "integer video_weight": ((x, y, p, q.to(torch.int32)), {}, TypeError, "video_weight"),
        "padding": ((x, y, p, q), {"padding": "replicate"}, ValueError, "padding"),
        "backend": ((x, y, p, q), {"backend": "fortran"}, ValueError, "backend"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_arguments_name_the_argument(case):
    args, kwargs, error, name = _bad_calls()[case]
    with pytest.raises(error, match=name):
        hbi_ops.wti_similarity(*args, **kwargs)


def test_compiled_op_checks_its_arguments():
    x, y, p, q, mt, mv = make_inputs(dtype=torch.float32)
    op = torch.ops.hbi_ops.wti_similarity
    cases = [
        ((x[0], y, p, q, mt, mv, False), "text"),
        ((x, y[..., :-1], p, q, mt, mv, False), "video"),
        ((x, y.double(), p, q, mt, mv, False), "video"),
        ((x, y, p[:, :-1], q, mt, mv, False), "text_weight"),
        ((x, y, p, q.double(), mt, mv, False), "video_weight"),
        ((x, y, p, q, mt.int(), mv, False), "text_mask"),
        ((x, y, p, q, mt, mv[:-1], False), "video_mask"),
        ((x.int(), y, p, q, mt, mv, False), "text"),
    ]
    for args, name in cases:
        with pytest.raises(RuntimeError, match=name):
            op(*args)
    _, t2v, v2t = op(x, y, p, q, mt, mv, False)
    backward = torch.ops.hbi_ops.wti_similarity_backward
    g = torch.randn(3, 4)
    for args, name in [
        ((g, x, y, p, q, t2v.long(), v2t), "t2v_argmax"),
        ((g, x, y, p, q, t2v, v2t[:, :, :-1]), "v2t_argmax"),
        ((g, x, y, p, q, t2v + 7, v2t), "t2v_argmax"),
        ((g, x, y, p, q, t2v, v2t - 5), "v2t_argmax"),
        ((g[:, :-1], x, y, p, q, t2v, v2t), "grad_score"),
    ]:
        with pytest.raises(RuntimeError, match=name):
            backward(*args)
