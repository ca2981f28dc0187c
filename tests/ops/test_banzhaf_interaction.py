"""banzhaf_interaction: brute force -> oracle -> every backend, estimators, padding, torch.compile, bad input.
(Every backend against the oracle, gradcheck and opcheck on the shared samples: test_operators.py.)"""

import math

import pytest
import torch

import hbi_ops
from hbi_ops import philox
from hbi_ops.testing import BANZHAF_SETTINGS as SETTINGS
from hbi_ops.testing import TOLERANCE, compiled_cpu_backends, random_game

from brute_force import brute_force, brute_force_deltas, subsets, textbook_value

ALL_BACKENDS = ["torch"] + compiled_cpu_backends("banzhaf_interaction")
# Every backend on CPU tensors, and the GPU backends on CUDA tensors (marked gpu: skipped without a GPU).
BACKEND_DEVICES = [pytest.param(b, "cpu", id=b) for b in ALL_BACKENDS] + [
    pytest.param(b, "cuda", marks=pytest.mark.gpu, id=f"{b}-cuda") for b in ("cuda", "triton")
]


def _small(backend, usual, interpreted):
    """Sizes for a test: Triton's CPU interpreter costs ~0.1 ms a tile operation, hundreds a sample, so its
    cases are smaller (the GPU tests, tests/gpu/test_banzhaf_triton_gpu.py, run the usual sizes)."""
    return interpreted if backend == "triton" else usual


# ------------------------------------------------------------------------------------------------
# Philox and the coalition rule


def test_philox_known_answers():
    # Known-answer vectors of Philox4x32-10 (Random123's kat_vectors), the first from docs/banzhaf.md.
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox.philox4x32_10(counter, key)) == expected


def test_coalition_rule_bit_layout():
    seed, sample, pair, players = (0xDEADBEEF << 32) | 0x12345678, 5, 3, 300
    bits = philox.coalition_bits(seed, [sample], pair + 1, players)[0, pair]
    for k in range(players):
        words = philox.philox4x32_10((sample, pair, k // 128, 0), (0x12345678, 0xDEADBEEF))
        expected = (int(words[(k // 32) % 4]) >> (k % 32)) & 1
        assert bool(bits[k]) == bool(expected), k


@pytest.mark.parametrize("backend", compiled_cpu_backends("banzhaf_interaction"))
def test_same_seed_same_coalitions_across_backends(backend):
    # One sample of the msr estimator reveals the coalition: I(i, j) = +-f(S) per stratum, so the
    # signs of the single-sample estimate give s_i * s_j, which must agree with the Philox bits.
    sim, text_mask, video_mask, text_weight, video_weight = random_game(3, 6, 5, masked=False)
    sim = sim.abs() + 0.1  # f(S) > 0 whenever S has a word and a frame
    seed = 2**63 + 12345
    out = hbi_ops.banzhaf_interaction(
        sim,
        text_mask,
        video_mask,
        text_weight,
        video_weight,
        estimator="msr",
        num_samples=1,
        seed=seed,
        backend=backend,
    )
    in_text, in_video = philox.coalitions(seed, [0], text_mask, video_mask)
    for b in range(3):
        if in_text[0, b].any() and in_video[0, b].any():
            sign = (in_text[0, b, :, None] == in_video[0, b, None, :]).double() * 2 - 1
            assert torch.equal(torch.sign(out[b]), sign)


# ------------------------------------------------------------------------------------------------
# The oracle and every backend against the brute force


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("definition", ["textbook", "reference"])
def test_exact_matches_brute_force(backend, definition):
    game = random_game(*_small(backend, (3, 4, 3), (2, 3, 2)))
    expected = brute_force(definition, *game)
    got = hbi_ops.banzhaf_interaction(*game, definition=definition, estimator="exact", backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("definition", ["textbook", "reference"])
def test_exact_matches_brute_force_ten_players(backend, definition):
    game = random_game(*_small(backend, (1, 6, 4), (1, 4, 3)), masked=False)
    expected = brute_force(definition, *game)
    got = hbi_ops.banzhaf_interaction(*game, definition=definition, estimator="exact", backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_vectorised_baseline_matches_oracle():
    from hbi_ops.reference.banzhaf_vectorised import paired_textbook_vectorised

    game = random_game(3, 6, 5)
    expected = hbi_ops.banzhaf_interaction(*game, estimator="paired", num_samples=50, seed=9, backend="torch")
    torch.testing.assert_close(paired_textbook_vectorised(*game, 50, 9, chunk=16), expected)


def test_definitions_differ_beyond_rounding():
    game = random_game(1, 4, 3, masked=False)
    textbook = hbi_ops.banzhaf_interaction(*game, definition="textbook", estimator="exact")
    reference = hbi_ops.banzhaf_interaction(*game, definition="reference", estimator="exact")
    assert (textbook - reference).abs().max() > 1e-3


def _cell_delta_moments(definition, game):
    """Exact mean and variance over c of each cell's second-order difference, by enumeration."""
    sim, text_mask, video_mask, text_weight, video_weight = game
    R, wt, wv = sim[0].tolist(), text_weight[0].tolist(), video_weight[0].tolist()
    words = [t for t in range(sim.shape[1]) if text_mask[0, t]]
    frames = [v for v in range(sim.shape[2]) if video_mask[0, v]]
    mean = torch.zeros(sim.shape[1:], dtype=torch.float64)
    var = torch.zeros_like(mean)
    for i in words:
        for j in frames:
            d = torch.tensor(brute_force_deltas(definition, R, wt, wv, words, frames, i, j), dtype=torch.float64)
            mean[i, j], var[i, j] = d.mean(), d.var(unbiased=False)
    return mean, var


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("definition", ["textbook", "reference"])
def test_paired_converges_within_its_standard_error(backend, definition):
    game = random_game(1, 4, 3, masked=False)
    mean, var = _cell_delta_moments(definition, game)
    errors = []
    for num_samples in {"torch": (64, 1024), "triton": (8, 128)}.get(backend, (64, 4096)):
        got = hbi_ops.banzhaf_interaction(
            *game, definition=definition, estimator="paired", num_samples=num_samples, seed=num_samples, backend=backend
        )[0]
        # Mean of num_samples i.i.d. draws of the cell delta: 6 standard errors (CLT; 12 cells).
        bound = 6 * (var / num_samples).sqrt() + 1e-12
        assert ((got - mean).abs() <= bound).all(), (got - mean).abs() / bound
        errors.append((got - mean).abs().sum())
    assert errors[1] < errors[0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_msr_converges_within_its_standard_error(backend):
    game = random_game(1, 4, 3, masked=False)
    sim, text_mask, video_mask, text_weight, video_weight = game
    R, wt, wv = sim[0].tolist(), text_weight[0].tolist(), video_weight[0].tolist()
    players = [("w", t) for t in range(4)] + [("f", v) for v in range(3)]
    values = {}
    for subset in subsets(players):
        words = [k for kind, k in subset if kind == "w"]
        frames = [k for kind, k in subset if kind == "f"]
        values[(frozenset(words), frozenset(frames))] = textbook_value(R, wt, wv, words, frames)
    exact = brute_force("textbook", *game)[0]
    for num_samples in _small(backend, (256, 4096), (32, 128)):
        got = hbi_ops.banzhaf_interaction(*game, estimator="msr", num_samples=num_samples, seed=7, backend=backend)[0]
        for i in range(4):
            for j in range(3):
                # Each of the 4 strata holds about num_samples / 4 samples (at least / 8 here with
                # overwhelming probability); the stratified mean's error is then within 6 sigma.
                variance = 0.0
                for word_in in (True, False):
                    for frame_in in (True, False):
                        stratum = torch.tensor(
                            [v for (ws, fs), v in values.items() if (i in ws) == word_in and (j in fs) == frame_in]
                        )
                        variance += stratum.var(unbiased=False).item() / (num_samples / 8)
                assert abs(got[i, j] - exact[i, j]) <= 6 * math.sqrt(variance) + 1e-12


# ------------------------------------------------------------------------------------------------
# Padding, layouts, seeds


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_padding_cells_are_zero_and_all_padding_rows_finite(backend, device):
    game = random_game(*_small(backend, (3, 5, 4), (3, 3, 2)) if device == "cpu" else (3, 5, 4), device=device)
    sim, text_mask, video_mask, text_weight, video_weight = game
    text_mask[1] = False  # a pair with no real word
    video_mask[2] = False
    for definition, estimator in SETTINGS:
        out = hbi_ops.banzhaf_interaction(
            sim,
            text_mask,
            video_mask,
            text_weight,
            video_weight,
            definition=definition,
            estimator=estimator,
            num_samples=_small(backend, 10, 3) if device == "cpu" else 10,
            backend=backend,
        )
        assert torch.isfinite(out).all()
        assert (out[~(text_mask[:, :, None] & video_mask[:, None, :])] == 0).all()
        assert (out[1] == 0).all() and (out[2] == 0).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_inputs_and_default_arguments(backend):
    sim = torch.randn(3, 4, 5).transpose(1, 2)  # [3, 5, 4], not contiguous
    text_weight = torch.randn(5, 3).t()  # [3, 5], not contiguous
    got = hbi_ops.banzhaf_interaction(sim, text_weight=text_weight, num_samples=20, backend=backend)
    expected = hbi_ops.banzhaf_interaction(
        sim.contiguous(),
        text_weight=text_weight.contiguous(),
        video_weight=torch.zeros(3, 4),
        num_samples=20,
        backend="torch",
    )
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_batch_zero(backend):
    out = hbi_ops.banzhaf_interaction(torch.randn(0, 4, 3), num_samples=5, backend=backend)
    assert out.shape == (0, 4, 3)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_seed_changes_estimate_and_repeats(backend):
    game = random_game(2, 5, 4, masked=False)
    n = _small(backend, 30, 8)
    a = hbi_ops.banzhaf_interaction(*game, estimator="paired", num_samples=n, seed=1, backend=backend)
    b = hbi_ops.banzhaf_interaction(*game, estimator="paired", num_samples=n, seed=2, backend=backend)
    assert not torch.equal(a, b)
    assert torch.equal(
        a, hbi_ops.banzhaf_interaction(*game, estimator="paired", num_samples=n, seed=1, backend=backend)
    )


# ------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("estimator", ["exact", "paired"])
def test_torch_compile(estimator):
    game = random_game(2, 5, 4)

    def fn(sim, text_mask, video_mask, text_weight, video_weight):
        return hbi_ops.banzhaf_interaction(
            sim * 2,
            text_mask,
            video_mask,
            text_weight,
            video_weight,
            estimator=estimator,
            num_samples=10,
            seed=5,
            backend="cpu",
        ).sum(-1)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*game), fn(*game))


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda g: hbi_ops.banzhaf_interaction(g[0][0]), ValueError, "sim"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0].int()), TypeError, "sim"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], text_mask=g[1][:, :2]), ValueError, "text_mask"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], video_mask=g[2][:1]), ValueError, "video_mask"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], text_weight=g[3][:, :2]), ValueError, "text_weight"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], video_weight=g[4].int()), TypeError, "video_weight"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], num_samples=0), ValueError, "num_samples"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], num_samples=2.5), TypeError, "num_samples"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], seed=-1), ValueError, "seed"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], definition="shapley"), ValueError, "definition"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], estimator="mc"), ValueError, "estimator"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], definition="reference", estimator="msr"), ValueError, "msr"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], backend="tpu"), ValueError, "backend"),
        (lambda g: hbi_ops.banzhaf_interaction(g[0], backend="cuda"), RuntimeError, "cuda"),
        (
            lambda g: hbi_ops.banzhaf_interaction(g[0], text_mask=torch.ones(2, 4, dtype=torch.bool, device="meta")),
            ValueError,
            "text_mask",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    game = random_game(2, 4, 3, dtype=torch.float32)
    with pytest.raises(error, match=words):
        call(game)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_exact_reference_refuses_too_many_players(backend):
    sim = torch.randn(2, 20, 10)
    text_mask = torch.ones(2, 20, dtype=torch.bool)
    text_mask[0, 10:] = False  # pair 0 has 20 players, pair 1 has 30
    with pytest.raises(ValueError, match="at most 24 players.*pair 1 has 30.*estimator='paired'"):
        hbi_ops.banzhaf_interaction(sim, text_mask, definition="reference", estimator="exact", backend=backend)
    with pytest.raises(ValueError, match="default estimator.*pair 1 has 30.*estimator='paired'"):
        hbi_ops.banzhaf_interaction(sim, text_mask, definition="reference", backend=backend)
    text_mask[1, 14:] = False  # 24 players: allowed (checked through the oracle's first chunk only)
    hbi_ops.ops.banzhaf.check_exact_players(text_mask, torch.ones(2, 10, dtype=torch.bool))
