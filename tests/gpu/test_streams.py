"""Every GPU kernel runs on the caller's current stream and never synchronises with the host.

Inputs are written on a side stream behind torch.cuda._sleep (tens of milliseconds of GPU time), and the
operator is called on that stream: a kernel launched on any other stream would run before the inputs are
written and read the zeros they held before, so its result would be wrong."""

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch
from hbi_ops.testing import random_game

pytestmark = pytest.mark.gpu
BACKENDS = ["cuda", "triton"]


def _cases():
    torch.manual_seed(0)
    game = random_game(6, 9, 5, torch.float32)
    text, video = torch.randn(5, 7, 16), torch.randn(4, 6, 16)
    text_weight, video_weight = torch.rand(5, 7).softmax(-1), torch.rand(4, 6).softmax(-1)
    x, weight = torch.randn(3, 20, 8), torch.rand(3, 20)
    idx = torch.randint(0, 4, (3, 20))
    return {
        "banzhaf_interaction exact": (lambda b, *a: hbi_ops.banzhaf_interaction(*a, backend=b), game, (0, 3, 4)),
        "banzhaf_interaction paired": (
            lambda b, *a: hbi_ops.banzhaf_interaction(*a, estimator="paired", num_samples=32, backend=b),
            game,
            (0, 3, 4),
        ),
        "banzhaf_interaction msr": (
            lambda b, *a: hbi_ops.banzhaf_interaction(*a, estimator="msr", num_samples=32, backend=b),
            game,
            (0, 3, 4),
        ),
        "wti_similarity": (
            lambda b, *a: hbi_ops.wti_similarity(*a, backend=b),
            (text, video, text_weight, video_weight),
            (0, 1, 2, 3),
        ),
        "dpc_knn": (lambda b, x: hbi_ops.dpc_knn(x, 4, k=3, backend=b)[0].float(), (x,), ()),
        "merge_tokens": (
            lambda b, x, i, w: hbi_ops.merge_tokens(x, i, 4, weight=w, backend=b),
            (x, idx, weight),
            (0, 2),
        ),
    }


CASES = _cases()


def _run(backend, fn, inputs, differentiable):
    leaves = [
        x.detach().clone().requires_grad_(k in differentiable) if x.is_floating_point() else x
        for k, x in enumerate(inputs)
    ]
    out = fn(backend, *leaves)
    grads = ()
    if differentiable:
        grads = torch.autograd.grad(out.sum(), [leaves[k] for k in differentiable])
    return (out, *grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_runs_on_the_current_stream(backend, case):
    fn, inputs, differentiable = CASES[case]
    op = case.split()[0]
    reason = _dispatch.why_not(backend, op, torch.device("cuda"))
    if reason is not None:
        pytest.fail(f"{backend} cannot run {op} on this GPU machine: {reason}")
    gpu_inputs = [x.cuda() for x in inputs]
    expected = _run(backend, fn, gpu_inputs, differentiable)
    staged = [torch.zeros_like(x) for x in gpu_inputs]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        for s, x in zip(staged, gpu_inputs):
            s.copy_(x)
        got = _run(backend, fn, staged, differentiable)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_no_host_synchronisation(backend, case):
    fn, inputs, differentiable = CASES[case]
    gpu_inputs = [x.cuda() for x in inputs]
    _run(backend, fn, gpu_inputs, differentiable)  # compiles (triton) and warms up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run(backend, fn, gpu_inputs, differentiable)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
