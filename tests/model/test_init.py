"""The authors' initialisation, applied by walking the model: weight heads N(0, 0.02) with zero bias,
TCBlock truncated normal 0.02, estimator Q/K/V without bias (xavier, gain 1.414), CLIP untouched, and the
tiny CLIP's logit scale starting at 100."""

import math

import pytest
import torch
from torch import nn

from hbi_model import build
from hbi_model.encoders import CLIPEncoders, tiny_clip_config
from hbi_model.heads import BanzhafEstimator
from hbi_model.init import initialise
from hbi_model.retrieval import HBIConfig, HBIRetrieval


def _model(init, width=64):
    encoders = CLIPEncoders.from_config(tiny_clip_config(vocab_size=20, width=width, projection_dim=width, max_words=8))
    clip_before = {k: v.clone() for k, v in encoders.state_dict().items()}
    model = HBIRetrieval(
        encoders,
        HBIConfig(max_words=8, max_frames=6, temporal_layers=1, temporal_heads=2, attention_heads=2, init=init),
    )
    return model, clip_before


def _std_close(tensor, std, rel=0.06):
    assert tensor.std().item() == pytest.approx(std, rel=rel) and tensor.mean().abs().item() < std / 5


def test_reference_initialisation():
    torch.manual_seed(0)
    model, clip_before = _model("reference")
    for heads in (model.text_heads, model.video_heads):
        for head in heads:
            for layer in (head.net[0], head.net[2]):
                _std_close(layer.weight, 0.02, rel=0.06 if layer.weight.numel() > 4000 else 0.2)
                assert (layer.bias == 0).all()
    for level in [*model.text_levels, *model.video_levels]:
        block = level.block
        for layer in (block.q, block.kv, block.proj):
            _std_close(layer.weight, 0.02)
            assert layer.weight.abs().max() < 0.02 * 6 and (layer.bias == 0).all()
        assert (block.norm.weight == 1).all() and (block.norm.bias == 0).all()
    for estimator in model.students:
        bound = 1.414 * math.sqrt(6 / (64 + 64))  # xavier-uniform on a 64 x 64 matrix
        for matrix in (estimator.Q, estimator.K, estimator.V):
            assert matrix.abs().max() <= bound and matrix.abs().max() > 0.95 * bound
            _std_close(matrix, bound / math.sqrt(3))
        names = {name for name, _ in estimator.named_parameters()}
        assert names == {"cnn1.weight", "cnn1.bias", "Q", "K", "V", "cnn2.weight", "cnn2.bias"}  # no Q/K/V bias
    for key, value in model.encoders.state_dict().items():  # CLIP is left as it was
        torch.testing.assert_close(value, clip_before[key], rtol=0, atol=0, msg=key)


def test_pytorch_initialisation_is_the_constructors():
    torch.manual_seed(0)
    model, _ = _model("pytorch")
    head = model.text_heads[0].net[0]
    bound = 1 / math.sqrt(head.in_features)  # nn.Linear's default
    assert head.bias.abs().max() > 0 and head.weight.abs().max() <= bound
    assert model.text_levels[0].block.q.bias.abs().max() > 0
    assert initialise(model, "pytorch") == 0
    assert initialise(model, "reference") == 6 + 4 + 3  # weight heads, TCBlocks, estimators
    with pytest.raises(ValueError, match="init"):
        initialise(model, "xavier")


def test_estimator_forward_is_the_reference_formula():
    torch.manual_seed(0)
    estimator = BanzhafEstimator(channels=4)
    sim = torch.randn(2, 3, 5)
    x = torch.relu(estimator.cnn1(sim[:, None]))  # [B, C, T, V]
    cells = x.permute(0, 2, 3, 1).reshape(2, 15, 4)
    q, k, v = (torch.einsum("bld,dn->bln", cells, m) for m in (estimator.Q, estimator.K, estimator.V))
    attention = torch.einsum("bqn,bkn->bqk", q, k).softmax(-1)
    x = x + torch.einsum("bqk,bkn->bqn", attention, v).view(2, 3, 5, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(estimator(sim), estimator.cnn2(x)[:, 0])


def test_tiny_clip_logit_scale_starts_at_100():
    settings = {
        "max_words": 8,
        "tiny_width": 16,
        "tiny_layers": 1,
        "temporal_layers": 1,
        "temporal_heads": 2,
        "attention_heads": 2,
        "max_frames": 6,
    }
    _, model = build.model(settings)
    assert model.encoders.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    _, model = build.model(dict(settings, logit_scale_init=1 / 0.07))
    assert model.encoders.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with pytest.raises(ValueError, match="logit_scale_init"):
        build.model(dict(settings, logit_scale_init=0.0))


def test_the_authors_estimator_checkpoint_loads_as_the_teacher():
    model, _ = _model("reference", width=16)
    source = BanzhafEstimator()
    state = {f"banzhafteacher.{k}": v for k, v in source.state_dict().items()}
    bn = nn.BatchNorm2d(64)
    state.update({f"banzhafteacher.bn.{k}": v for k, v in bn.state_dict().items()})  # built, never applied
    model.load_teacher(state)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.teacher.state_dict()[key], value)
    del state["banzhafteacher.Q"]
    with pytest.raises(ValueError, match="lacks"):
        model.load_teacher(state)
