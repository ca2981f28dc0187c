"""Training-step cost of HBI over plain CLIP with mean pooling (same encoders, same batch of the synthetic
events task): the overhead of the hierarchy, the WTI heads and the Banzhaf teacher computed on every step,
the exact index (the default) and, for comparison, the paired estimator with 100 samples."""

import pytest
import torch
import torch.nn.functional as F

from hbi_model import build
from hbi_model.cli import DEFAULTS
from hbi_model.data import collate
from hbi_model.losses import info_nce
from hbi_ops.testing import bench_device, synchronize

DEVICE = bench_device()
SETTINGS = dict(DEFAULTS, batch_size=32, num_train=32, max_words=16, max_frames=6)
TEACHERS = {"hbi": {}, "hbi-paired-100": {"banzhaf_estimator": "paired", "banzhaf_samples": 100}}


def _setup(model_kind):
    torch.manual_seed(0)
    tokenizer, model = build.model(dict(SETTINGS, **TEACHERS.get(model_kind, {})))
    model.to(DEVICE)
    train_set, _ = build.datasets(SETTINGS)
    batch = collate([train_set[i] for i in range(SETTINGS["batch_size"])], tokenizer, SETTINGS["max_words"])
    args = [batch[k].to(DEVICE) for k in ("input_ids", "attention_mask", "pixel_values", "frame_mask")]
    return model, args


def _clip_mean_pooling_loss(model, input_ids, attention_mask, pixel_values, frame_mask):
    text = model.encoders.encode_text(input_ids, attention_mask)
    frames = model.encoders.encode_frames(pixel_values)
    tm, fm = attention_mask[..., None].float(), frame_mask[..., None].float()
    t = F.normalize((text * tm).sum(1) / tm.sum(1).clamp(min=1), dim=-1)
    v = F.normalize((frames * fm).sum(1) / fm.sum(1).clamp(min=1), dim=-1)
    return info_nce(t @ v.t(), model.encoders.logit_scale.exp().clamp(max=100))


@pytest.mark.parametrize("model_kind", ["clip-mean-pooling", "hbi", "hbi-paired-100"])
def test_training_step(benchmark, model_kind):
    benchmark.group = f"training step (forward + backward), tiny CLIP, batch {SETTINGS['batch_size']}, {DEVICE}"
    model, args = _setup(model_kind)

    def step():
        model.zero_grad(set_to_none=True)
        loss = _clip_mean_pooling_loss(model, *args) if model_kind == "clip-mean-pooling" else model(*args)["loss"]
        loss.backward()
        synchronize(DEVICE)

    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
