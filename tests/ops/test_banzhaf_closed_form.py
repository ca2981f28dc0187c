"""The exact textbook index by its closed form: against enumeration (independent implementations), every
backend against the torch closed form, the sampled estimators converging to it, gradients, registration.

"block" is the CUDA kernel's code (csrc/banzhaf/closed_form_block.h) run serially on the CPU through
hbi_ops::closed_form_block_*, so these tests also check what the GPU computes, barring races.
"""

import math

import pytest
import torch

import hbi_ops
from hbi_ops.reference import banzhaf as enumeration
from hbi_ops.reference.banzhaf_closed_form import closed_form as torch_closed_form
from hbi_ops.testing import FLOAT_DTYPES, compiled_cpu_backends, padded_mask, random_game

from brute_force import brute_force

BACKENDS = ["torch"] + compiled_cpu_backends("banzhaf_interaction") + ["block"]


def _real_cells(game):
    return game[1][:, :, None] & game[2][:, None, :]


def closed_form(game, backend, dtype=None):
    """The exact textbook index of `game` by `backend` (inputs cast to dtype, masks as they are)."""
    sim, text_mask, video_mask, text_weight, video_weight = game
    if dtype is not None:
        sim, text_weight, video_weight = (x.to(dtype) for x in (sim, text_weight, video_weight))
    if backend == "block":
        return torch.ops.hbi_ops.closed_form_block_forward(sim, text_mask, video_mask, text_weight, video_weight)
    return hbi_ops.banzhaf_interaction(sim, text_mask, video_mask, text_weight, video_weight, backend=backend)


def enumerated(game):
    """Full enumeration of the textbook index in float64 (hbi_ops.reference), zero at padded cells."""
    game = [x.double() if x.is_floating_point() else x for x in game]
    return enumeration.exact(*game, "textbook") * _real_cells(game)


def hard_game(batch, words, frames, *, spread=1.0, ties=False, dtype=torch.float64, masked=True, masks=None):
    """A random game with logits of the given spread, optionally ties in sim, NaN or inf at padded positions
    (masks: the given ones instead of random padding)."""
    sim, text_mask, video_mask, text_weight, video_weight = random_game(
        batch, words, frames, dtype=dtype, masked=masked
    )
    if masks is not None:
        text_mask, video_mask = masks
    if ties:
        sim = (sim * 2).round() / 2
    text_weight = (torch.rand_like(text_weight) * 2 - 1) * spread
    video_weight = (torch.rand_like(video_weight) * 2 - 1) * spread
    # Padded positions never matter: poison them.
    sim = sim.masked_fill(~(text_mask[:, :, None] & video_mask[:, None, :]), float("nan"))
    text_weight = text_weight.masked_fill(~text_mask, float("inf"))
    video_weight = video_weight.masked_fill(~video_mask, float("nan"))
    return sim, text_mask, video_mask, text_weight, video_weight


def _interpreted(backend, usual, small):
    return small if backend == "triton" else usual


# ------------------------------------------------------------------------------------------------
# The torch closed form against two independent enumerations


@pytest.mark.parametrize("spread,ties", [(1.0, False), (1.0, True), (12.0, False), (40.0, True)])
def test_oracle_matches_python_brute_force(spread, ties):
    game = hard_game(3, 4, 3, spread=spread, ties=ties)
    clean = [torch.nan_to_num(x, nan=0.0, posinf=0.0) if x.is_floating_point() else x for x in game]
    expected = brute_force("textbook", *clean) * _real_cells(game)
    torch.testing.assert_close(closed_form(game, "torch"), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("words,frames", [(10, 6), (8, 8), (14, 2), (1, 12)])
def test_oracle_matches_enumeration_up_to_16_players(words, frames):
    game = hard_game(2, words, frames, spread=6.0, ties=True, masked=False)
    torch.testing.assert_close(closed_form(game, "torch"), enumerated(game), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Every backend against enumeration, every dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_backend_matches_enumeration(backend, dtype):
    for spread, ties in ((1.0, False), (8.0, True)):
        game = hard_game(*_interpreted(backend, (4, 7, 5), (2, 5, 3)), spread=spread, ties=ties)
        expected = enumerated(game)
        got = closed_form(game, backend, dtype)
        assert got.dtype == dtype
        if dtype == torch.float64:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
        else:
            # float32 within 1e-5 of the pair's largest |I|; half inputs are rounded first, so against the
            # float64 index of the rounded inputs, within the output's own rounding.
            rounded = [x.to(dtype).double() if x.is_floating_point() else x for x in game]
            reference = enumerated(rounded)
            scale = reference.abs().amax((1, 2), keepdim=True)
            tolerance = 1e-5 if dtype == torch.float32 else 2.0 ** -(8 if dtype == torch.bfloat16 else 11)
            assert ((got.double() - reference).abs() <= tolerance * scale + 1e-30).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend):
    # float64 logits over +-300 and float32 over +-40: a player of tiny weight still weighs 1 alone.
    size = _interpreted(backend, (3, 6, 4), (2, 4, 3))
    for dtype, spread in ((torch.float64, 300.0), (torch.float32, 40.0)):
        game = hard_game(*size, spread=spread, dtype=torch.float64)
        expected = enumerated(game)
        got = closed_form(game, backend, dtype).double()
        assert torch.isfinite(got).all()
        scale = expected.abs().amax((1, 2), keepdim=True)
        bound = 1e-10 if dtype == torch.float64 else 1e-5 * scale
        assert ((got - expected).abs() <= bound).all(), (got - expected).abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_and_default_weights(backend):
    # Equal logits take the binomial form (no quadrature); None means equal.
    sim, text_mask, video_mask, _wt, _wv = hard_game(*_interpreted(backend, (3, 6, 5), (2, 4, 3)))
    text_weight = torch.full(text_mask.shape, 2.5, dtype=torch.float64)
    video_weight = torch.zeros(video_mask.shape, dtype=torch.float64)
    game = (sim, text_mask, video_mask, text_weight, video_weight)
    torch.testing.assert_close(closed_form(game, backend), enumerated(game), rtol=0, atol=1e-10)
    if backend != "block":
        default = hbi_ops.banzhaf_interaction(sim, text_mask, video_mask, backend=backend)
        torch.testing.assert_close(default, enumerated(game), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_single_players_and_empty_pairs(backend):
    text_mask, video_mask = padded_mask(5, 4), padded_mask(5, 3)
    text_mask[0] = False  # no word
    video_mask[1] = False  # no frame
    text_mask[2] = torch.tensor([False, False, True, False])  # one word, not at the start
    video_mask[3] = torch.tensor([False, True, False])  # one frame
    text_mask[4] = True
    video_mask[4] = True
    game = hard_game(5, 4, 3, masks=(text_mask, video_mask))
    got = closed_form(game, backend)
    assert torch.isfinite(got).all()
    assert (got[~_real_cells(game)] == 0).all()
    torch.testing.assert_close(got, enumerated(game), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_entity_size_matches_torch(backend):
    # T = 32, V = 12 (the entity level), some pairs with all 44 players: beyond any enumeration.
    batch = _interpreted(backend, 6, 2)
    text_mask, video_mask = padded_mask(batch, 32), padded_mask(batch, 12)
    text_mask[0] = True
    video_mask[0] = True
    game = hard_game(batch, 32, 12, spread=5.0, masks=(text_mask, video_mask))
    expected = closed_form(game, "torch")
    for dtype in (torch.float64, torch.float32):
        got = closed_form(game, backend, dtype).double()
        scale = expected.abs().amax((1, 2), keepdim=True)
        tolerance = 1e-10 if dtype == torch.float64 else 1e-5 * scale
        assert ((got - expected).abs() <= tolerance).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("words,frames", [(512, 3), (2, 512)])
def test_long_texts_and_many_frames(backend, words, frames):
    if backend == "triton" and max(words, frames) > 64:
        words, frames = min(words, 64), min(frames, 64)  # the interpreter: ~0.1 ms a tile operation
    game = hard_game(1, words, frames, spread=3.0, dtype=torch.float32)
    expected = closed_form(game, "torch", torch.float64)
    got = closed_form(game, backend, torch.float32).double()
    assert ((got - expected).abs() <= 1e-5 * expected.abs().max()).all()


# ------------------------------------------------------------------------------------------------
# The sampled estimators converge to it where enumeration cannot run


@pytest.mark.parametrize("estimator,samples", [("paired", 400), ("msr", 4000)])
def test_sampled_estimators_converge_at_entity_size(estimator, samples):
    # 44 players. 16 seeds give 16 independent estimates; z = (their mean - exact) / (their spread / 4)
    # is t-distributed with 15 degrees of freedom in every cell: |z| <= 8 everywhere (P ~ 1e-6 a cell),
    # its RMS near 1 (1.07 expected), and the spread shrinks as 1/sqrt(samples).
    sim, text_mask, video_mask, text_weight, video_weight = random_game(1, 32, 12, real_words=32)
    exact = hbi_ops.banzhaf_interaction(sim, text_mask, video_mask, text_weight, video_weight, backend="cpu")
    seeds, spreads = 16, []
    for n in (samples, 4 * samples):
        runs = torch.stack(
            [
                hbi_ops.banzhaf_interaction(
                    sim,
                    text_mask,
                    video_mask,
                    text_weight,
                    video_weight,
                    estimator=estimator,
                    num_samples=n,
                    seed=seed,
                    backend="cpu",
                )
                for seed in range(seeds)
            ]
        )
        mean, spread = runs.mean(0), runs.std(0)
        z = (mean - exact) / (spread / math.sqrt(seeds))
        assert z.abs().max() <= 8 and 0.6 <= z.pow(2).mean().sqrt() <= 1.6, z
        spreads.append(spread.pow(2).mean().sqrt())
    assert 0.35 < spreads[1] / spreads[0] < 0.65  # 1/2 for 4x the samples


# ------------------------------------------------------------------------------------------------
# Gradients and registration


def _grad_fn(backend, text_mask, video_mask):
    if backend == "block":
        ops = torch.ops.hbi_ops

        class Block(torch.autograd.Function):
            @staticmethod
            def forward(ctx, s, wt, wv):
                ctx.save_for_backward(s, wt, wv)
                return ops.closed_form_block_forward(s, text_mask, video_mask, wt, wv)

            @staticmethod
            def backward(ctx, grad):
                return ops.closed_form_block_backward(
                    grad, ctx.saved_tensors[0], text_mask, video_mask, *ctx.saved_tensors[1:]
                )

        return Block.apply
    return lambda s, wt, wv: hbi_ops.banzhaf_interaction(s, text_mask, video_mask, wt, wv, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spread", [1.0, 20.0])
def test_gradcheck(backend, spread):
    size = _interpreted(backend, (3, 6, 4), (1, 4, 3))
    sim, text_mask, video_mask, text_weight, video_weight = hard_game(*size, spread=spread)
    clean = [torch.nan_to_num(x, nan=0.5, posinf=0.5) for x in (sim, text_weight, video_weight)]
    inputs = tuple(x.clone().requires_grad_() for x in clean)
    assert torch.autograd.gradcheck(
        _grad_fn(backend, text_mask, video_mask), inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=backend == "triton"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_with_equal_weights_and_padding_poison(backend):
    # Equal logits (the binomial forward) still get the quadrature's gradient; poisoned padding stays out.
    size = _interpreted(backend, (2, 5, 4), (1, 4, 3))
    sim, text_mask, video_mask, _wt, video_weight = hard_game(*size)
    text_weight = torch.zeros(text_mask.shape, dtype=torch.float64).masked_fill(~text_mask, float("nan"))
    fn = _grad_fn(backend, text_mask, video_mask)
    leaves = [x.clone().requires_grad_() for x in (sim, text_weight, video_weight)]
    grad = torch.randn(sim.shape, dtype=torch.float64)
    got = torch.autograd.grad((fn(*leaves) * grad).sum(), leaves)
    clean = [x.detach().clone().requires_grad_() for x in leaves]
    expected = torch.autograd.grad(
        (torch_closed_form(clean[0], text_mask, video_mask, clean[1], clean[2]) * grad).sum(), clean
    )
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, torch.nan_to_num(e, nan=0.0), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_block_ops(dtype):
    sim, text_mask, video_mask, text_weight, video_weight = random_game(2, 5, 3, dtype=dtype)
    torch.library.opcheck(
        torch.ops.hbi_ops.closed_form_block_forward.default, (sim, text_mask, video_mask, text_weight, video_weight)
    )
    torch.library.opcheck(
        torch.ops.hbi_ops.closed_form_block_backward.default,
        (torch.randn_like(sim), sim, text_mask, video_mask, text_weight, video_weight),
    )


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_torch_compile_fullgraph(backend):
    game = random_game(3, 6, 4)

    def fn(sim, text_mask, video_mask, text_weight, video_weight):
        return hbi_ops.banzhaf_interaction(
            sim * 2, text_mask, video_mask, text_weight, video_weight, backend=backend
        ).sum(-1)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*game), fn(*game))


def test_exact_is_the_default_and_needs_no_samples():
    game = random_game(2, 30, 12)  # up to 42 players: beyond enumeration
    default = hbi_ops.banzhaf_interaction(*game)
    explicit = hbi_ops.banzhaf_interaction(*game, estimator="exact", num_samples=7, seed=123)
    assert torch.equal(default, explicit)
