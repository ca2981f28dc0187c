"""banzhaf_interaction: each backend against the torch oracle (and the vectorised plain-PyTorch version
of the paired textbook estimator) in the same run, and the exact closed form against the sampled
estimators. CPU: the training size scaled to 2 cores (B=16, T=32 with 20 real words, V=12, 100 samples);
GPU: the full size (B=128, 1000 samples)."""

import pytest
import torch

import hbi_ops
from hbi_ops.reference.banzhaf_vectorised import paired_textbook_vectorised
from hbi_ops.testing import backends_for, bench_device, synchronize

DEVICE = bench_device()
ON_GPU = DEVICE == "cuda"
BATCH, SAMPLES = (128, 1000) if ON_GPU else (16, 100)
NUM_WORDS, REAL_WORDS, NUM_FRAMES = 32, 20, 12


def _game(batch=BATCH, num_words=NUM_WORDS, real_words=REAL_WORDS, num_frames=NUM_FRAMES, dtype=torch.float32):
    sim = torch.randn(batch, num_words, num_frames, device=DEVICE, dtype=dtype)
    text_mask = torch.zeros(batch, num_words, dtype=torch.bool, device=DEVICE)
    text_mask[:, :real_words] = True
    video_mask = torch.ones(batch, num_frames, dtype=torch.bool, device=DEVICE)
    return (
        sim,
        text_mask,
        video_mask,
        torch.randn(batch, num_words, device=DEVICE, dtype=dtype),
        torch.randn(batch, num_frames, device=DEVICE, dtype=dtype),
    )


def _run(benchmark, fn, slow):
    def timed():
        out = fn()
        synchronize(DEVICE)
        return out

    if slow:  # the oracle takes seconds a call here: one round says enough
        benchmark.pedantic(timed, rounds=1, iterations=1, warmup_rounds=0)
    else:
        benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)


PAIRED = backends_for("banzhaf_interaction", DEVICE) + ["torch-vectorised"]


@pytest.mark.parametrize("backend", PAIRED)
def test_paired_textbook(benchmark, backend):
    benchmark.group = f"banzhaf paired textbook B={BATCH} T={NUM_WORDS}({REAL_WORDS}) V={NUM_FRAMES} n={SAMPLES}"
    game = _game()

    def fn():
        if backend == "torch-vectorised":
            return paired_textbook_vectorised(*game, SAMPLES, 0)
        return hbi_ops.banzhaf_interaction(*game, estimator="paired", num_samples=SAMPLES, backend=backend)

    _run(benchmark, fn, slow=backend.startswith("torch"))


@pytest.mark.parametrize("backend", backends_for("banzhaf_interaction", DEVICE))
@pytest.mark.parametrize("definition,estimator", [("reference", "paired"), ("textbook", "msr")])
def test_other_estimators(benchmark, backend, definition, estimator):
    benchmark.group = (
        f"banzhaf {estimator} {definition} B={BATCH} T={NUM_WORDS}({REAL_WORDS}) V={NUM_FRAMES} n={SAMPLES}"
    )
    game = _game()
    _run(
        benchmark,
        lambda: hbi_ops.banzhaf_interaction(
            *game, definition=definition, estimator=estimator, num_samples=SAMPLES, backend=backend
        ),
        slow=backend == "torch",
    )


@pytest.mark.parametrize("backend", backends_for("banzhaf_interaction", DEVICE))
def test_exact_action_level(benchmark, backend):
    # The action level of the model: 8 text clusters and 3 video clusters, 11 players.
    benchmark.group = f"banzhaf exact textbook B={BATCH} T=8 V=3 (action level)"
    game = _game(num_words=8, real_words=8, num_frames=3)
    _run(benchmark, lambda: hbi_ops.banzhaf_interaction(*game, estimator="exact", backend=backend), slow=False)


# ------------------------------------------------------------------------------------------------
# The exact textbook index (closed form) at the entity level, against the torch closed form and
# against the sampled estimators it replaces.


@pytest.mark.parametrize("backend", backends_for("banzhaf_interaction", DEVICE))
def test_exact_entity_level(benchmark, backend):
    benchmark.group = f"banzhaf exact textbook B={BATCH} T={NUM_WORDS}({REAL_WORDS}) V={NUM_FRAMES}"
    game = _game()
    _run(benchmark, lambda: hbi_ops.banzhaf_interaction(*game, backend=backend), slow=False)


@pytest.mark.parametrize("backend", backends_for("banzhaf_interaction", DEVICE))
def test_exact_entity_level_forward_backward(benchmark, backend):
    benchmark.group = f"banzhaf exact textbook fwd+bwd B={BATCH} T={NUM_WORDS}({REAL_WORDS}) V={NUM_FRAMES}"
    sim, text_mask, video_mask, text_weight, video_weight = _game()
    leaves = [x.requires_grad_() for x in (sim, text_weight, video_weight)]

    def step():
        out = hbi_ops.banzhaf_interaction(leaves[0], text_mask, video_mask, leaves[1], leaves[2], backend=backend)
        return torch.autograd.grad(out.sum(), leaves)

    _run(benchmark, step, slow=False)


DEFAULT_BACKEND = backends_for("banzhaf_interaction", DEVICE)[0]


@pytest.mark.parametrize("variant", ["exact", "paired-100", "paired-1000"])
def test_exact_against_sampling(benchmark, variant):
    # The same backend, exact against what the authors ran (100 samples) and their default (1000).
    benchmark.group = (
        f"banzhaf {DEFAULT_BACKEND}: exact vs paired, B={BATCH} T={NUM_WORDS}({REAL_WORDS}) V={NUM_FRAMES}"
    )
    game = _game()
    estimator, _, samples = variant.partition("-")
    _run(
        benchmark,
        lambda: hbi_ops.banzhaf_interaction(
            *game, estimator=estimator, num_samples=int(samples or 1), backend=DEFAULT_BACKEND
        ),
        slow=False,
    )


@pytest.mark.parametrize("backend", backends_for("banzhaf_interaction", DEVICE))
@pytest.mark.parametrize("num_words,num_frames", [(32, 12), (64, 12), (128, 12), (256, 12), (32, 48)])
def test_exact_growth(benchmark, backend, num_words, num_frames):
    # How the closed form's cost grows with the players (all real): T^2 Q for alpha, T V (T + V) for the rest.
    benchmark.group = f"banzhaf exact textbook growth B={BATCH} T={num_words} V={num_frames}"
    game = _game(num_words=num_words, real_words=num_words, num_frames=num_frames)
    _run(benchmark, lambda: hbi_ops.banzhaf_interaction(*game, backend=backend), slow=backend == "torch")


@pytest.mark.parametrize("backend", backends_for("banzhaf_interaction", DEVICE))
def test_paired_textbook_forward_backward(benchmark, backend):
    benchmark.group = (
        f"banzhaf paired textbook fwd+bwd B={BATCH} T={NUM_WORDS}({REAL_WORDS}) V={NUM_FRAMES} n={SAMPLES}"
    )
    sim, text_mask, video_mask, text_weight, video_weight = _game()
    leaves = [x.requires_grad_() for x in (sim, text_weight, video_weight)]

    def step():
        out = hbi_ops.banzhaf_interaction(
            leaves[0],
            text_mask,
            video_mask,
            leaves[1],
            leaves[2],
            estimator="paired",
            num_samples=SAMPLES,
            backend=backend,
        )
        return torch.autograd.grad(out.sum(), leaves)

    _run(benchmark, step, slow=backend == "torch")
