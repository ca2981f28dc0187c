"""The README's example runs as written: a user's module with the operators dropped in."""

import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example_source():
    text = README.read_text()
    section = text[text.index("## Drop it into your model") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_differentiates():
    if not README.exists():
        pytest.fail("README.md not found beside tests/")
    namespace = {}
    exec(compile(_example_source(), "README example", "exec"), namespace)
    module = namespace["WordFrameInteraction"](width=16)
    words = torch.randn(3, 6, 16, requires_grad=True)
    frames = torch.randn(3, 4, 16, requires_grad=True)
    word_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]).bool()
    frame_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    scores, interaction = module(words, frames, word_mask, frame_mask)
    assert scores.shape == (3, 3) and interaction.shape == (3, 6, 4)
    assert torch.isfinite(scores).all() and torch.isfinite(interaction).all()
    (scores.sum() + interaction.sum()).backward()
    assert torch.isfinite(words.grad).all() and words.grad.abs().sum() > 0
    assert module.text_weight.weight.grad.abs().sum() > 0
