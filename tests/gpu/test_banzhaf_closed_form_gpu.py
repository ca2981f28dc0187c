"""The exact textbook index (closed form) on the GPU: the CUDA kernel against the same code run serially
on the CPU (hbi_ops::closed_form_block_*), the triton kernel and the torch closed form, at the full size
and at long texts; gradients; logits far apart."""

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch
from hbi_ops.testing import TOLERANCE, random_game

pytestmark = pytest.mark.gpu
OP = "banzhaf_interaction"


@pytest.fixture(autouse=True)
def _backends_built():
    for backend in ("cuda", "triton"):
        reason = _dispatch.why_not(backend, OP, torch.device("cuda"))
        if reason is not None:
            pytest.fail(f"the {backend} backend cannot run {OP} on this GPU machine: {reason}")


def _game(batch, words, frames, dtype, real_words=None, spread=1.0):
    game = list(random_game(batch, words, frames, dtype, real_words=real_words))
    game[3] = game[3] * spread
    game[4] = game[4] * spread
    return game


def _run(backend, game, grad):
    leaves = [x.detach().clone().cuda().requires_grad_() for x in (game[0], game[3], game[4])]
    out = hbi_ops.banzhaf_interaction(leaves[0], game[1].cuda(), game[2].cuda(), leaves[1], leaves[2], backend=backend)
    return (out, *torch.autograd.grad((out.double() * grad.cuda()).sum(), leaves))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 32, 12), (6, 7, 5), (3, 200, 3), (2, 5, 300)])
def test_cuda_kernel_matches_its_serial_run(dtype, shape):
    game = _game(*shape, dtype, spread=5.0)
    grad = torch.randn(shape, dtype=dtype)
    ops = torch.ops.hbi_ops
    cpu = (ops.closed_form_block_forward(*game), *ops.closed_form_block_backward(grad, *game))
    gpu_game = [x.cuda() for x in game]
    gpu = (ops.closed_form_block_forward(*gpu_game), *ops.closed_form_block_backward(grad.cuda(), *gpu_game))
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [1.0, 30.0])
def test_backend_matches_torch_at_entity_size(backend, dtype, spread):
    game = _game(128, 32, 12, dtype, real_words=20, spread=spread)
    grad = torch.randn(128, 32, 12, dtype=torch.float64)
    expected = _run("torch", game, grad)
    got = _run(backend, game, grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_backend_matches_cpu_at_long_texts(backend):
    game = _game(2, 512, 4, torch.float32)
    expected = hbi_ops.banzhaf_interaction(*game, backend="cpu")
    got = hbi_ops.banzhaf_interaction(*[x.cuda() for x in game], backend=backend).cpu()
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float32])
