"""hbi_ops.merge_tokens (docs/merge.md): the oracle and every backend against a brute-force loop, weights, empty
clusters, layouts, torch.compile and argument errors (every backend against the oracle, gradcheck and opcheck on
the shared samples: test_operators.py)."""

import pytest
import torch

import hbi_ops
from hbi_ops.reference.merge import merge_tokens as oracle
from hbi_ops.testing import compiled_cpu_backends

ALL_BACKENDS = ["torch"] + compiled_cpu_backends("merge_tokens")


def brute_force(x, idx, weight, num_clusters):
    """Scalar loops over the definition, in float64."""
    batch, n, width = x.shape
    out = torch.zeros(batch, num_clusters, width, dtype=torch.float64)
    for b in range(batch):
        for c in range(num_clusters):
            numerator = torch.zeros(width, dtype=torch.float64)
            total = 0.0
            for t in range(n):
                if int(idx[b, t]) == c:
                    numerator += float(weight[b, t]) * x[b, t].double()
                    total += float(weight[b, t])
            out[b, c] = numerator / (total + 1e-6)
    return out


def inputs(batch=3, n=11, width=6, num_clusters=4, dtype=torch.float32):
    x = torch.randn(batch, n, width).to(dtype)
    idx = torch.randint(0, num_clusters, (batch, n))
    weight = (torch.rand(batch, n) + 0.1).to(dtype)
    return x, idx, weight


# ------------------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------------------


def test_oracle_matches_brute_force():
    x, idx, weight = inputs(dtype=torch.float64, num_clusters=5)
    idx[:, 0] = 4  # cluster 4 holds at least one token, and weights of any sign are allowed
    weight = weight * torch.randn(weight.shape, dtype=torch.float64).sign()
    torch.testing.assert_close(oracle(x, idx, weight, 5), brute_force(x, idx, weight, 5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_public_api_matches_brute_force(backend):
    x, idx, weight = inputs(dtype=torch.float64)
    torch.testing.assert_close(
        hbi_ops.merge_tokens(x, idx, 4, weight, backend=backend), brute_force(x, idx, weight, 4), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_weight_none_means_ones(backend):
    x, idx, _ = inputs()
    torch.testing.assert_close(
        hbi_ops.merge_tokens(x, idx, 4, backend=backend),
        hbi_ops.merge_tokens(x, idx, 4, torch.ones(3, 11), backend=backend),
    )
    # unweighted: the plain mean of each cluster (up to the 1e-6)
    mean = torch.stack([x[0, idx[0] == c].mean(0) if (idx[0] == c).any() else torch.zeros(6) for c in range(4)])
    torch.testing.assert_close(hbi_ops.merge_tokens(x, idx, 4, backend=backend)[0], mean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_clusters_are_zero(backend):
    x, idx, weight = inputs(num_clusters=3)
    x.requires_grad_()
    out = hbi_ops.merge_tokens(x, idx, 6, weight, backend=backend)  # clusters 3, 4, 5 stay empty
    assert torch.equal(out[:, 3:], torch.zeros(3, 3, 6))
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out[:, 3:].sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs(backend):
    x = torch.randn(3, 6, 20, dtype=torch.float64).transpose(1, 2)  # [3, 20, 6]
    idx = torch.randint(0, 5, (20, 3)).t()
    weight = torch.rand(20, 3, dtype=torch.float64).t() + 0.1
    assert not (x.is_contiguous() or idx.is_contiguous() or weight.is_contiguous())
    torch.testing.assert_close(
        hbi_ops.merge_tokens(x, idx, 5, weight, backend=backend), brute_force(x, idx, weight, 5), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_batch_and_integer_idx_types(backend):
    x = torch.randn(0, 5, 4, requires_grad=True)
    out = hbi_ops.merge_tokens(x, torch.zeros(0, 5, dtype=torch.int64), 3, backend=backend)
    assert out.shape == (0, 3, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    x, idx, weight = inputs()
    torch.testing.assert_close(
        hbi_ops.merge_tokens(x, idx.to(torch.int32), 4, weight, backend=backend),
        hbi_ops.merge_tokens(x, idx, 4, weight, backend=backend),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_mixed_dtypes_promote(backend):
    x, idx, weight = inputs()
    out = hbi_ops.merge_tokens(x.half(), idx, 4, weight.double(), backend=backend)
    assert out.dtype == torch.float64


# ------------------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------------------


def _through_the_ops(x, mask, weight):
    idx, centers = torch.ops.hbi_ops.dpc_knn(x.detach(), mask, 5, 3)
    merged = torch.ops.hbi_ops.merge_tokens(x, idx, weight, 5)
    return merged * 2 + 1, idx, centers


def _through_the_api(x, mask, weight):
    idx, centers = hbi_ops.dpc_knn(x, 5, k=3, mask=mask, backend="cpu")
    merged = hbi_ops.merge_tokens(x, idx, 5, weight, backend="cpu")
    return merged * 2 + 1, idx, centers


# The ops themselves trace into one graph (fakes); the public API may break the graph in backend
# selection (a Python-side dispatcher query), so it is compiled without fullgraph.
@pytest.mark.parametrize("fn,fullgraph", [(_through_the_ops, True), (_through_the_api, False)], ids=["ops", "api"])
def test_torch_compile_matches_eager(fn, fullgraph):
    x = torch.randn(4, 16, 8, dtype=torch.float64)
    mask = torch.rand(4, 16) < 0.8
    mask[:, :5] = True
    weight = torch.rand(4, 16, dtype=torch.float64) + 0.1
    xe, we = x.clone().requires_grad_(), weight.clone().requires_grad_()
    xc, wc = x.clone().requires_grad_(), weight.clone().requires_grad_()
    eager = fn(xe, mask, we)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=fullgraph)(xc, mask, wc)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(compiled[1], eager[1]) and torch.equal(compiled[2], eager[2])
    grad = torch.randn_like(eager[0])
    eager[0].backward(grad)
    compiled[0].backward(grad)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wc.grad, we.grad, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i + 1, 4, w, backend=b), ValueError, "idx must hold"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i - 1, 4, w, backend=b), ValueError, "idx must hold"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i.float(), 4, w, backend=b), TypeError, "idx must be an integer"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i[:, :-1], 4, w, backend=b), ValueError, "idx must have shape"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i, 4, w[:, :-1], backend=b), ValueError, "weight must have shape"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x[0], i, 4, w, backend=b), ValueError, "x must have 3"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x.long(), i, 4, w, backend=b), TypeError, "x must be"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i, 0, w, backend=b), ValueError, "num_clusters"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i, 4, w.long(), backend=b), TypeError, "weight must be"),
        (lambda b, x, i, w: hbi_ops.merge_tokens(x, i, 4, w, backend="fortran"), ValueError, "backend"),
    ],
)
def test_bad_arguments(backend, call, error, message):
    x, idx, weight = inputs(num_clusters=4)
    idx[0, 0], idx[0, 1] = 0, 3
    with pytest.raises(error, match=message):
        call(backend, x, idx, weight)


@pytest.mark.parametrize("bad", [-1, 4, 1 << 40])
def test_kernels_reject_out_of_range_idx(bad):
    # torch.ops skips the Python checks: the compiled kernels must refuse, not write out of bounds.
    x, idx, weight = inputs(num_clusters=4)
    idx[2, 7] = bad
    with pytest.raises(RuntimeError, match=r"idx must hold cluster indices in \[0, 3\].*idx\[2, 7\]"):
        torch.ops.hbi_ops.merge_tokens(x, idx, weight, 4)
    grad = torch.randn(3, 4, 6)
    with pytest.raises(RuntimeError, match="idx must hold"):
        torch.ops.hbi_ops.merge_tokens_backward(grad, x, idx, weight, 4)


@pytest.mark.parametrize(
    "args,message",
    [
        (lambda x, i, w: (x, i.float(), w, 4), "idx must be an int64"),
        (lambda x, i, w: (x, i[:, :-1], w, 4), "idx must have shape"),
        (lambda x, i, w: (x, i, w[:, :-1], 4), "weight must have shape"),
        (lambda x, i, w: (x, i, w.double(), 4), "weight must have x's dtype"),
        (lambda x, i, w: (x.int(), i, w, 4), "x must be a floating-point"),
        (lambda x, i, w: (x[0], i, w, 4), "x must have 3"),
        (lambda x, i, w: (x, i, w, 0), "num_clusters"),
    ],
)
def test_kernel_checks_its_arguments(args, message):
    x, idx, weight = inputs(num_clusters=4)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.hbi_ops.merge_tokens(*args(x, idx, weight))


def test_backward_kernel_checks_grad_shape():
    x, idx, weight = inputs(num_clusters=4)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.hbi_ops.merge_tokens_backward(torch.randn(3, 5, 6), x, idx, weight, 4)
