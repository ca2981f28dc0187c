"""banzhaf_interaction under inputs real models produce: weight logits far apart, ties, non-finite values at
padded positions. Every backend against the torch oracle (whose softmax is taken over each coalition
relative to its own maximum), including a bounded fuzz test."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hbi_ops
from hbi_ops.testing import TOLERANCE, compiled_cpu_backends, padded_mask

BACKENDS = compiled_cpu_backends("banzhaf_interaction")
SETTINGS = [
    ("textbook", "paired"),
    ("textbook", "msr"),
    ("reference", "paired"),
    ("reference", "exact"),
    ("textbook", "exact"),
]


def _compare(game, backend, definition, estimator, dtype, samples=6, seed=11, grads=True):
    kwargs = dict(definition=definition, estimator=estimator, num_samples=samples, seed=seed)
    sim, text_mask, video_mask, text_weight, video_weight = game
    results = {}
    for name in ("torch", backend):
        leaves = [x.detach().clone().to(dtype).requires_grad_(grads) for x in (sim, text_weight, video_weight)]
        out = hbi_ops.banzhaf_interaction(
            leaves[0], text_mask, video_mask, leaves[1], leaves[2], backend=name, **kwargs
        )
        results[name] = [out]
        if grads:
            weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
            results[name] += list(torch.autograd.grad((out.double() * weight).sum(), leaves))
    for expected, got in zip(results["torch"], results[backend]):
        # Padded entries of the gradients are 0 in every backend; so are padded cells of the output.
        torch.testing.assert_close(got, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("definition,estimator", SETTINGS)
@pytest.mark.parametrize("gap", [17.0, 50.0, 160.0])
def test_weight_logits_far_apart(backend, definition, estimator, gap):
    # A logit gap of 17 made the cpu backend's paired estimate NaN, and 50 to 160 every estimator's.
    size = (2, 3, 2) if backend == "triton" else (3, 4, 3)
    sim = torch.randn(*size, dtype=torch.float64)
    text_weight = torch.randn(size[:2], dtype=torch.float64)
    video_weight = torch.randn(size[0], size[2], dtype=torch.float64)
    text_weight[:, 0] += gap  # one dominant word
    video_weight[:, -1] -= gap  # one negligible frame
    text_weight[1] = torch.linspace(-gap, gap, size[1])  # spread over +-gap
    game = (
        sim,
        torch.ones(size[:2], dtype=torch.bool),
        torch.ones(size[0], size[2], dtype=torch.bool),
        text_weight,
        video_weight,
    )
    for dtype in (torch.float32, torch.float64):
        _compare(game, backend, definition, estimator, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reported_example(backend):
    sim = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    expected = torch.tensor([[[0.0375, 0.0844], [0.1266, 0.1688]]])
    got = hbi_ops.banzhaf_interaction(
        sim, text_weight=torch.tensor([[17.0, 0.0]]), estimator="paired", num_samples=16, backend=backend
    )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        got,
        hbi_ops.banzhaf_interaction(
            sim, text_weight=torch.tensor([[17.0, 0.0]]), estimator="paired", num_samples=16, backend="torch"
        ),
    )


@st.composite
def games(draw):
    batch = draw(st.integers(1, 3))
    words, frames = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sim = torch.randn(batch, words, frames, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):
        sim = sim.round()  # ties
    spread = draw(st.sampled_from([1.0, 10.0, 40.0, 80.0]))
    text_weight = (torch.rand(batch, words, generator=generator, dtype=torch.float64) * 2 - 1) * spread
    video_weight = (torch.rand(batch, frames, generator=generator, dtype=torch.float64) * 2 - 1) * spread
    text_mask = torch.rand(batch, words, generator=generator) < 0.75
    video_mask = torch.rand(batch, frames, generator=generator) < 0.75
    poison = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    sim = sim.masked_fill(~(text_mask[:, :, None] & video_mask[:, None, :]), poison)
    text_weight = text_weight.masked_fill(~text_mask, poison)
    video_weight = video_weight.masked_fill(~video_mask, poison)
    return sim, text_mask, video_mask, text_weight, video_weight


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(game=games(), setting=st.sampled_from(SETTINGS), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fuzz_against_the_oracle(backend, game, setting, dtype):
    # Gradients are compared where they are defined: poisoned padding makes the oracle's own autograd
    # meaningless there, so the output only (padding never matters to it).
    _compare(game, backend, *setting, dtype, grads=False)
    out = hbi_ops.banzhaf_interaction(
        game[0].to(dtype),
        game[1],
        game[2],
        game[3].to(dtype),
        game[4].to(dtype),
        definition=setting[0],
        estimator=setting[1],
        num_samples=6,
        seed=11,
        backend=backend,
    )
    assert torch.isfinite(out).all()
    assert (out[~(game[1][:, :, None] & game[2][:, None, :])] == 0).all()


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_nonfinite_at_a_real_position_propagates(backend):
    # The rule: padding never matters; a non-finite value at a real position gives NaN (never a silent
    # finite answer) in the cells it reaches.
    sim = torch.randn(1, 3, 2, dtype=torch.float64)
    sim[0, 1, 1] = float("nan")
    out = hbi_ops.banzhaf_interaction(sim, backend=backend)
    assert torch.isnan(out).any()
    weight = torch.zeros(1, 3, dtype=torch.float64)
    weight[0, 2] = float("inf")
    out = hbi_ops.banzhaf_interaction(torch.randn(1, 3, 2, dtype=torch.float64), text_weight=weight, backend=backend)
    assert torch.isnan(out).any()
    mask = padded_mask(1, 3, real=2)
    assert torch.isfinite(
        hbi_ops.banzhaf_interaction(
            torch.randn(1, 3, 2, dtype=torch.float64), mask, text_weight=weight, backend=backend
        )
    ).all()
