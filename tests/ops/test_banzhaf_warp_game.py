"""The CUDA cells kernel's per-coalition code (csrc/banzhaf/banzhaf_warp_unit.h, WarpGame) run with one lane
on the CPU through hbi_ops::banzhaf_warp_game_*, against the cpu backend (banzhaf_game.h, an independent
transliteration): the same estimates and gradients up to rounding, so these tests also check what the GPU
computes, barring races between its lanes."""

import pytest
import torch

import hbi_ops
from hbi_ops.testing import TOLERANCE, random_game

SETTINGS = [
    ("textbook", "paired"),
    ("reference", "paired"),
    ("textbook", "msr"),
    ("reference", "exact"),
]
DTYPES = [torch.float64, torch.float32]


def _game(dtype, seed):
    torch.manual_seed(seed)
    return random_game(4, 6, 5, dtype=dtype)  # masked: padding in most rows, at least one real token a row


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("definition,estimator", SETTINGS)
def test_forward_matches_cpu_backend(definition, estimator, dtype):
    game = _game(dtype, 0)
    args = (definition, estimator, 64, 1234)
    got = torch.ops.hbi_ops.banzhaf_warp_game_forward(*game, *args)
    expected = hbi_ops.banzhaf_interaction(
        *game, definition=definition, estimator=estimator, num_samples=64, seed=1234, backend="cpu"
    )
    torch.testing.assert_close(got, expected, **TOLERANCE[dtype])
    padded = ~(game[1][:, :, None] & game[2][:, None, :])
    assert (got[padded] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("definition,estimator", SETTINGS)
def test_backward_matches_cpu_backend(definition, estimator, dtype):
    game = _game(dtype, 1)
    grad = torch.randn_like(game[0])
    args = (definition, estimator, 64, 99)
    got = torch.ops.hbi_ops.banzhaf_warp_game_backward(grad, *game, *args)
    expected = torch.ops.hbi_ops.banzhaf_interaction_backward(grad, *game, *args)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **TOLERANCE[dtype])


def test_exact_textbook_is_refused():
    game = _game(torch.float64, 2)
    with pytest.raises(RuntimeError, match="closed form"):
        torch.ops.hbi_ops.banzhaf_warp_game_forward(*game, "textbook", "exact", 1, 0)


def test_opcheck_warp_game_ops():
    game = _game(torch.float32, 3)
    args = ("textbook", "paired", 8, 0)
    torch.library.opcheck(torch.ops.hbi_ops.banzhaf_warp_game_forward.default, (*game, *args))
    grad = torch.randn_like(game[0])
    torch.library.opcheck(torch.ops.hbi_ops.banzhaf_warp_game_backward.default, (grad, *game, *args))
