"""banzhaf_interaction, triton backend on CUDA tensors: against the torch oracle (same device) and the
cpu backend (same seed, CPU copies), forward and backward, every definition and estimator, masks,
dtypes and sizes up to the full (B=128, T=32 with 20 real words, V=12); streams, no host synchronisation
(gradcheck and opcheck: tests/ops/test_operators.py)."""

import pytest
import torch

import hbi_ops
from hbi_ops.testing import BANZHAF_SETTINGS as SETTINGS
from hbi_ops.testing import FLOAT_DTYPES, TOLERANCE, random_game

pytestmark = pytest.mark.gpu

DEVICE = "cuda"


def _game(batch, num_words, num_frames, dtype=torch.float32, device=DEVICE, real_words=None):
    return random_game(batch, num_words, num_frames, dtype, real_words=real_words, device=device)


def _run(backend, game, grad, **kwargs):
    """Output and gradients (sim, text_weight, video_weight) of <out, grad>."""
    sim, text_mask, video_mask, text_weight, video_weight = game
    leaves = [x.detach().clone().requires_grad_() for x in (sim, text_weight, video_weight)]
    out = hbi_ops.banzhaf_interaction(leaves[0], text_mask, video_mask, leaves[1], leaves[2], backend=backend, **kwargs)
    grads = torch.autograd.grad((out.float() * grad.float()).sum(), leaves)
    return (out, *grads)


def _to_cpu(game):
    return tuple(x.cpu() for x in game)


def _compare(got, expected, dtype, scale=1.0):
    tol = TOLERANCE[dtype]
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        torch.testing.assert_close(g.cpu(), e.cpu().to(dtype), rtol=tol["rtol"] * scale, atol=tol["atol"] * scale)


@pytest.mark.parametrize("definition,estimator", SETTINGS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("size", [(4, 5, 4), (3, 7, 5), (2, 8, 3)])
def test_triton_matches_torch_and_cpu(definition, estimator, dtype, size):
    game = _game(*size, dtype=dtype)
    grad = torch.randn(game[0].shape, dtype=dtype, device=DEVICE)
    kwargs = dict(definition=definition, estimator=estimator, num_samples=50, seed=2024)
    got = _run("triton", game, grad, **kwargs)
    _compare(got, _run("torch", game, grad, **kwargs), dtype)
    _compare(got, _run("cpu", _to_cpu(game), grad.cpu(), **kwargs), dtype)


@pytest.mark.parametrize("definition,estimator", [("textbook", "paired"), ("textbook", "msr"), ("reference", "paired")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_spec_size(definition, estimator, dtype):
    # The full size: B=128, T=32 (20 real words), V=12; 100 samples to keep the oracle quick.
    game = _game(128, 32, 12, dtype=dtype, real_words=20)
    grad = torch.randn(game[0].shape, dtype=dtype, device=DEVICE)
    kwargs = dict(definition=definition, estimator=estimator, num_samples=100, seed=7)
    got = _run("triton", game, grad, **kwargs)
    # Sums over 100 samples and up to 20 x 12 cells: a few times the per-dtype rounding.
    _compare(got, _run("cpu", _to_cpu(game), grad.cpu(), **kwargs), dtype, scale=4.0)
    if dtype != torch.bfloat16:
        _compare(got, _run("torch", game, grad, **kwargs), dtype, scale=4.0)


@pytest.mark.parametrize("definition,estimator", [("textbook", "paired"), ("reference", "paired"), ("textbook", "msr")])
def test_more_than_128_players_and_large_seed(definition, estimator):
    # Players beyond 128 use a second Philox block; seeds >= 2^63 travel as negative int64.
    game = _game(2, 100, 40, dtype=torch.float64)
    grad = torch.randn(game[0].shape, dtype=torch.float64, device=DEVICE)
    kwargs = dict(definition=definition, estimator=estimator, num_samples=3, seed=2**64 - 12345)
    got = _run("triton", game, grad, **kwargs)
    _compare(got, _run("cpu", _to_cpu(game), grad.cpu(), **kwargs), torch.float64)


@pytest.mark.parametrize("definition,estimator", SETTINGS)
def test_deterministic_and_padding_zero(definition, estimator):
    game = _game(5, 6, 5)
    game[1][1] = False  # a pair with no real word
    kwargs = dict(definition=definition, estimator=estimator, num_samples=64, seed=5, backend="triton")
    a = hbi_ops.banzhaf_interaction(*game, **kwargs)
    b = hbi_ops.banzhaf_interaction(*game, **kwargs)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    assert (a[~(game[1][:, :, None] & game[2][:, None, :])] == 0).all()


def test_non_default_stream():
    game = _game(16, 12, 6, real_words=9)
    kwargs = dict(num_samples=200, seed=1, backend="triton")
    expected = hbi_ops.banzhaf_interaction(*game, **kwargs)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = hbi_ops.banzhaf_interaction(*game, **kwargs)
        msr = hbi_ops.banzhaf_interaction(*game, estimator="msr", **kwargs)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(msr, hbi_ops.banzhaf_interaction(*game, estimator="msr", **kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("definition,estimator", SETTINGS)
def test_no_host_synchronisation(definition, estimator):
    game = _game(4, 6, 5)  # T + V <= 24: the exact estimator's player check needs no read-back either
    leaves = [x.clone().requires_grad_() for x in (game[0], game[3], game[4])]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = hbi_ops.banzhaf_interaction(
            leaves[0],
            game[1],
            game[2],
            leaves[1],
            leaves[2],
            definition=definition,
            estimator=estimator,
            num_samples=32,
            seed=9,
            backend="triton",
        )
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(leaves[0].grad).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    game = _game(3, 5, 4, device="cuda:1")
    got = hbi_ops.banzhaf_interaction(*game, num_samples=20, seed=4, backend="triton")
    assert got.device == torch.device("cuda:1")
    expected = hbi_ops.banzhaf_interaction(*_to_cpu(game), num_samples=20, seed=4, backend="cpu")
    torch.testing.assert_close(got.cpu(), expected, **TOLERANCE[torch.float32])
