"""banzhaf_interaction on the GPU: the cuda backend against the cpu kernel (same seed, same coalitions), every
definition/estimator, sizes beyond one membership word and one Philox block, forward and backward; streams, no host
synchronisation (against the oracle, gradcheck and opcheck: tests/ops/test_operators.py). Skipped without a GPU
(tests/conftest.py)."""

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch, testing
from hbi_ops.testing import BANZHAF_SETTINGS as SETTINGS
from hbi_ops.testing import TOLERANCE

pytestmark = pytest.mark.gpu

OP = "banzhaf_interaction"


@pytest.fixture(autouse=True)
def _cuda_backend_built():
    # On a machine with a GPU a cuda backend that was not built, or fails to load, is a failure, never a skip.
    reason = _dispatch.why_not("cuda", OP, torch.device("cuda"))
    if reason is not None:
        pytest.fail(f"the cuda backend cannot run {OP} on this GPU machine: {reason}")


def random_game(batch, num_words, num_frames, dtype=torch.float64, device="cuda"):
    return testing.random_game(batch, num_words, num_frames, dtype, device=device)


def _forward_backward(backend, game, grad, **kwargs):
    sim, text_mask, video_mask, text_weight, video_weight = game
    leaves = [x.detach().clone().requires_grad_() for x in (sim, text_weight, video_weight)]
    out = hbi_ops.banzhaf_interaction(leaves[0], text_mask, video_mask, leaves[1], leaves[2], backend=backend, **kwargs)
    grads = torch.autograd.grad((out.float() * grad.float()).sum(), leaves)
    return (out, *grads)


def _to_cpu(xs):
    return tuple(x.cpu() for x in xs)


@pytest.mark.parametrize("definition,estimator", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 6, 5), (4, 40, 7), (2, 9, 100), (2, 40, 100)])
def test_cuda_matches_cpu_same_seed(definition, estimator, dtype, shape):
    # Shapes with more than 32 words / frames, more than 32 players (several membership words) and more
    # than 128 (several Philox blocks); exact reference runs on the small shape only (at most 24 players).
    if definition == "reference" and estimator == "exact" and shape != (5, 6, 5):
        pytest.skip("the reference definition's exact estimator enumerates 2^n coalitions")
    game = random_game(*shape, dtype=dtype)
    grad = torch.randn(shape, dtype=dtype, device="cuda")
    kwargs = dict(definition=definition, estimator=estimator, num_samples=37, seed=2**63 + 99)
    got = _to_cpu(_forward_backward("cuda", game, grad, **kwargs))
    expected = _forward_backward("cpu", _to_cpu(game), grad.cpu(), **kwargs)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, **TOLERANCE[dtype])


@pytest.mark.parametrize("definition,estimator", [("textbook", "paired"), ("reference", "paired"), ("textbook", "msr")])
def test_spec_size_matches_cpu(definition, estimator):
    # full size: B = 128, T = 32 with 20 real words, V = 12; 100 samples (the reference's as-run count).
    batch, num_words, real_words, num_frames = 128, 32, 20, 12
    sim = torch.randn(batch, num_words, num_frames, device="cuda")
    text_mask = torch.zeros(batch, num_words, dtype=torch.bool, device="cuda")
    text_mask[:, :real_words] = True
    video_mask = torch.ones(batch, num_frames, dtype=torch.bool, device="cuda")
    game = (
        sim,
        text_mask,
        video_mask,
        torch.randn(batch, num_words, device="cuda"),
        torch.randn(batch, num_frames, device="cuda"),
    )
    grad = torch.randn(sim.shape, device="cuda")
    kwargs = dict(definition=definition, estimator=estimator, num_samples=100, seed=7)
    got = _to_cpu(_forward_backward("cuda", game, grad, **kwargs))
    expected = _forward_backward("cpu", _to_cpu(game), grad.cpu(), **kwargs)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, **TOLERANCE[torch.float32])


def test_many_samples_and_chunks_match_cpu():
    # num_samples large enough for several chunks per pair and several rounds per chunk (msr).
    game = random_game(2, 6, 5, dtype=torch.float64)
    for definition, estimator in [("textbook", "paired"), ("textbook", "msr"), ("reference", "paired")]:
        kwargs = dict(definition=definition, estimator=estimator, num_samples=3000, seed=5)
        got = hbi_ops.banzhaf_interaction(*game, backend="cuda", **kwargs).cpu()
        expected = hbi_ops.banzhaf_interaction(*_to_cpu(game), backend="cpu", **kwargs)
        torch.testing.assert_close(got, expected, **TOLERANCE[torch.float64])


def test_batch_zero_and_integer_masks():
    out = hbi_ops.banzhaf_interaction(torch.randn(0, 4, 3, device="cuda"), num_samples=5, backend="cuda")
    assert out.shape == (0, 4, 3)
    game = random_game(3, 5, 4, dtype=torch.float32)
    a = hbi_ops.banzhaf_interaction(game[0], game[1].int(), game[2].long(), *game[3:], num_samples=9, backend="cuda")
    b = hbi_ops.banzhaf_interaction(*game, num_samples=9, backend="cuda")
    assert torch.equal(a, b)


@pytest.mark.parametrize("definition,estimator", SETTINGS)
def test_forward_is_deterministic(definition, estimator):
    game = random_game(4, 6, 5, dtype=torch.float32)
    kwargs = dict(definition=definition, estimator=estimator, num_samples=200, seed=3)
    a = hbi_ops.banzhaf_interaction(*game, backend="cuda", **kwargs)
    assert torch.equal(a, hbi_ops.banzhaf_interaction(*game, backend="cuda", **kwargs))


def test_non_default_stream():
    game = random_game(8, 10, 6, dtype=torch.float32)
    grad = torch.randn(game[0].shape, device="cuda")
    for definition, estimator in [("textbook", "paired"), ("textbook", "msr"), ("reference", "paired")]:
        kwargs = dict(definition=definition, estimator=estimator, num_samples=64, seed=1)
        expected = _forward_backward("cuda", game, grad, **kwargs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            got = _forward_backward("cuda", game, grad, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)  # forward: bitwise
        for e, g in zip(expected[1:], got[1:]):  # backward: shared-memory atomics, rounding only
            torch.testing.assert_close(g, e, **TOLERANCE[torch.float32])


def test_other_device_index():
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU")
    game = random_game(3, 5, 4, dtype=torch.float32, device="cuda:1")
    got = hbi_ops.banzhaf_interaction(*game, num_samples=20, backend="cuda")
    assert got.device == torch.device("cuda:1")
    expected = hbi_ops.banzhaf_interaction(*_to_cpu(game), num_samples=20, backend="cpu")
    torch.testing.assert_close(got.cpu(), expected, **TOLERANCE[torch.float32])


def test_no_host_synchronisation():
    game = random_game(4, 6, 5, dtype=torch.float32)
    grad = torch.randn(game[0].shape, device="cuda")
    ops = torch.ops.hbi_ops
    args = [
        (*game, d, e, 20, 3)
        for d, e in [
            ("textbook", "paired"),
            ("textbook", "msr"),
            ("reference", "paired"),
            ("textbook", "exact"),
            ("reference", "exact"),
        ]
    ]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for a in args:
            ops.banzhaf_interaction(*a)
            ops.banzhaf_interaction_backward(grad, *a)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_wrong_device_is_an_error():
    game = random_game(2, 4, 3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="text_mask"):
        torch.ops.hbi_ops.banzhaf_interaction(
            game[0], game[1].cpu(), game[2], game[3], game[4], "textbook", "paired", 4, 0
        )


def test_exact_refuses_too_many_players():
    sim = torch.randn(2, 20, 10, device="cuda")
    text_mask = torch.ones(2, 20, dtype=torch.bool, device="cuda")
    text_mask[0, 10:] = False
    with pytest.raises(ValueError, match="at most 24 players"):
        hbi_ops.banzhaf_interaction(sim, text_mask, estimator="exact", backend="cuda")
    # The raw op has no host check (it would need a sync): the device guard gives NaN for such a pair.
    raw = (
        sim,
        text_mask,
        torch.ones(2, 10, dtype=torch.bool, device="cuda"),
        torch.randn(2, 20, device="cuda"),
        torch.randn(2, 10, device="cuda"),
    )
    for definition in ("textbook", "reference"):
        out = torch.ops.hbi_ops.banzhaf_interaction(*raw, definition, "exact", 1, 0)
        assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()
        grads = torch.ops.hbi_ops.banzhaf_interaction_backward(torch.randn_like(sim), *raw, definition, "exact", 1, 0)
        for grad in grads:  # the backward too: NaN for that pair, not a silent zero
            assert torch.isnan(grad[1]).all() and not torch.isnan(grad[0]).any()
