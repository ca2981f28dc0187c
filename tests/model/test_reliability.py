"""A broken run never passes for a good one: a non-finite loss or gradient stops training (after one retry
from the last checkpoint), a video with no readable frame gives finite features, losses and gradients,
a training set too small for one batch is an error; and training reports its progress."""

import re
import sys

import pytest
import torch

from hbi_model import build, checkpoint
from hbi_model.cli import DEFAULTS
from hbi_model.data import collate
from hbi_model.evaluate import similarity_matrix
from hbi_model.train import NonFiniteLossError, train

SMALL = dict(
    DEFAULTS,
    num_train=16,
    num_test=8,
    batch_size=4,
    max_words=8,
    max_frames=6,
    tiny_width=16,
    tiny_layers=1,
    temporal_layers=1,
    temporal_heads=2,
    attention_heads=2,
    quiet=True,
    workers=0,
    save_every=2,
    clip_lr_scale=1.0,
    skip_eval=True,
)


def _poison(monkeypatch, calls, where="loss"):
    """Make build.model's model return a NaN loss (or a finite loss with NaN gradients) on the given
    forward calls (1-based); records every call's loss."""
    real_build, losses = build.model, []

    def poisoned_build(settings):
        tokenizer, model = real_build(settings)
        forward = model.forward

        def poisoned(*args, **kwargs):
            parts = forward(*args, **kwargs)
            if len(losses) + 1 in calls:
                if where == "loss":
                    parts["loss"] = parts["loss"] * float("nan")
                else:  # d/dx sqrt(x) at 0 is inf; times the zero inside: a NaN gradient, a finite loss
                    parts["loss"] = parts["loss"] + (next(model.parameters()).sum() * 0).sqrt()
            losses.append(float(parts["loss"].detach()))
            return parts

        model.forward = poisoned
        return tokenizer, model

    monkeypatch.setattr(build, "model", poisoned_build)
    return losses


def test_a_transient_nan_is_retried_from_the_checkpoint_and_changes_nothing(tmp_path, monkeypatch):
    straight, _ = train(dict(SMALL, output=str(tmp_path / "straight"), max_steps=4))
    _poison(monkeypatch, {3})
    retried, results = train(dict(SMALL, output=str(tmp_path / "retried"), max_steps=4))
    assert results["step"] == 4
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(retried.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_persistent_nan_stops_training_naming_the_step(tmp_path, monkeypatch, where):
    losses = _poison(monkeypatch, set(range(3, 100)), where)
    output = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError,
        match=rf"(?s){where} is not finite at step 3 of 4.*retried once from "
        rf"the checkpoint of step 2",
    ):
        train(dict(SMALL, output=str(output), max_steps=4))
    assert len(losses) == 4  # steps 1, 2, 3, then step 3 again from the checkpoint
    # Nothing non-finite was saved: the checkpoint is still step 2's, its weights finite.
    _, model = build.model(SMALL)
    assert checkpoint.load(output, model)["step"] == 2
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_without_a_checkpoint_a_nan_stops_at_once(tmp_path, monkeypatch):
    losses = _poison(monkeypatch, {2})
    with pytest.raises(NonFiniteLossError, match=r"(?s)loss is not finite at step 2 of 4.*no checkpoint"):
        train(dict(SMALL, output=str(tmp_path / "run"), max_steps=4, save_every=0))
    assert len(losses) == 2


def _batch_with_an_empty_video(settings, empty=1):
    tokenizer, model = build.model(settings)
    train_set, _ = build.datasets(settings)
    batch = collate([train_set[i] for i in range(4)], tokenizer, settings["max_words"])
    batch["frame_mask"][empty] = False  # what an unreadable video loads as
    batch["pixel_values"][empty] = 0
    return model, (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["frame_mask"])


@pytest.mark.parametrize("entity_padding", ["ignore", "zero"])
def test_a_video_with_no_frame_gives_finite_losses_and_gradients(entity_padding):
    model, args = _batch_with_an_empty_video(dict(SMALL, entity_padding=entity_padding))
    parts = model(*args)
    for name, value in parts.items():
        assert torch.isfinite(value), name
    parts["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name


def test_a_video_with_no_frame_scores_zero_at_the_entity_level_and_finite_above():
    model, args = _batch_with_an_empty_video(SMALL)
    model.eval()
    with torch.no_grad():
        features = model.encode(*args)
        for name, feature in zip(("text", "text mask", "video", "video mask"), features):
            assert torch.isfinite(feature.float()).all(), name
        entity = similarity_matrix(model, *features, rates=(1, 0, 0))
        assert (entity[:, 1] == 0).all() and torch.isfinite(entity).all()  # nothing to match: 0
        assert torch.isfinite(similarity_matrix(model, *features, rates=(1, 1, 1))).all()


def test_a_training_set_smaller_than_a_batch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"4 training pairs make no batch of --batch-size 8"):
        train(dict(SMALL, output=str(tmp_path / "run"), num_train=4, batch_size=8, max_steps=4))


def _run_printing(tmp_path, capsys, monkeypatch, tty):
    losses = _poison(monkeypatch, set())  # poisons nothing: records each step's loss
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    train(dict(SMALL, output=str(tmp_path / "run"), quiet=False, max_steps=10))
    return losses, capsys.readouterr()


def test_without_a_terminal_one_plain_line_per_epoch(tmp_path, capsys, monkeypatch):
    losses, printed = _run_printing(tmp_path, capsys, monkeypatch, tty=False)
    pattern = re.compile(
        r"epoch (\d+)/3: steps (\d+)/10, mean loss ([\d.]+), ([\d.]+) steps/s, "
        r"elapsed (\d+):(\d\d):(\d\d)"
    )
    lines = [pattern.fullmatch(line) for line in printed.out.splitlines() if line.startswith("epoch")]
    assert lines and all(lines), printed.out
    # 16 pairs in batches of 4: epochs of 4, 4 and (max_steps 10) 2 steps.
    assert [m[1] for m in lines] == ["1", "2", "3"] and [m[2] for m in lines] == ["4", "8", "10"]
    for match, epoch_losses in zip(lines, (losses[0:4], losses[4:8], losses[8:10])):
        assert float(match[3]) == pytest.approx(sum(epoch_losses) / len(epoch_losses), abs=1e-4)
        assert float(match[4]) > 0
    assert "\r" not in printed.out + printed.err  # no progress bar in a log


def test_on_a_terminal_a_progress_bar_with_the_loss_and_steps_per_second(tmp_path, capsys, monkeypatch):
    losses, printed = _run_printing(tmp_path, capsys, monkeypatch, tty=True)
    final = printed.err.split("\r")[-1]
    assert re.search(r"train: 100%.* 10/10 .*[\d.]+ steps/s, loss=([\d.]+)", final), printed.err
    assert float(re.search(r"loss=([\d.]+)", final)[1]) == pytest.approx(losses[-1], abs=1e-3)
    assert not any(line.startswith("epoch") for line in printed.out.splitlines())


def test_non_finite_answer_logits_are_an_error_not_an_answer():
    from hbi_model.evaluate import evaluate_qa

    class NaNModel(torch.nn.Module):
        def predict(self, input_ids, *_):
            return torch.full((input_ids.shape[0], 5), float("nan"))

    batch = {
        "input_ids": torch.zeros(2, 3),
        "attention_mask": torch.ones(2, 3),
        "pixel_values": torch.zeros(2, 1),
        "frame_mask": torch.ones(2, 1),
        "answer": torch.tensor([0, 1]),
        "question_type": ["what", "who"],
        "video_id": ["video1", "video2"],
    }
    with pytest.raises(ValueError, match="answer logits are not finite"):
        evaluate_qa(NaNModel(), [batch], torch.device("cpu"), None, None, progress=False)
