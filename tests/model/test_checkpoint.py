"""Checkpoints: one folder per step switched in by an atomic pointer, so that a kill at any moment of a save
resumes onto a consistent (weights, optimiser, step) triple and the resumed run matches an uninterrupted
one bit for bit; temporaries of killed saves are removed; a damaged file is an error naming it."""

import os

import pytest
import torch

from hbi_model import build, checkpoint
from hbi_model.cli import DEFAULTS
from hbi_model.run_eval import run_eval
from hbi_model.train import train

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
    save_every=1,
    clip_lr_scale=1.0,
    skip_eval=True,
)


class SimulatedKill(BaseException):
    """Raised inside a save where a real run would have been killed."""


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _leftovers(directory):
    return sorted(
        os.path.relpath(os.path.join(root, name), directory)
        for root, dirs, files in os.walk(directory)
        for name in dirs + files
        if ".tmp" in name
    )


def _kill_on_call(monkeypatch, module, name, call):
    real, calls = getattr(module, name), []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise SimulatedKill(f"{name} call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, _ = train(dict(SMALL, output=str(tmp_path_factory.mktemp("straight")), max_steps=4))
    return _params(model)


# Each save renames two things into place (today: the step's folder, then the pointer to it); the sixth
# call is the second of step 3's save. Writing the weights file is the other place a kill can land.
@pytest.mark.parametrize("where", ["os.replace", "weights"])
def test_a_kill_inside_a_save_resumes_identically(tmp_path, monkeypatch, uninterrupted, where):
    output = tmp_path / "run"
    with monkeypatch.context() as patch:
        if where == "os.replace":
            _kill_on_call(patch, os, "replace", 6)
        else:
            _kill_on_call(patch, checkpoint, "save_file", 3)
        with pytest.raises(SimulatedKill):
            train(dict(SMALL, output=str(output), max_steps=4))
    assert checkpoint.load(output, build.model(SMALL)[1])["step"] == 2  # the last complete save
    resumed, _ = train(dict(SMALL, output=str(output), max_steps=4))
    _assert_identical(uninterrupted, _params(resumed))
    assert _leftovers(output) == []
    assert sorted(os.listdir(output / checkpoint.FOLDER)) == [checkpoint.LATEST, "step-000004"]


def test_layout_and_stale_temporaries(tmp_path):
    _, model = build.model(SMALL)
    folder = tmp_path / checkpoint.FOLDER
    folder.mkdir()
    (folder / "step-000009.tmp123").mkdir()  # a save killed while writing
    (folder / "step-000009.tmp123" / checkpoint.WEIGHTS).write_bytes(b"half")
    (folder / f"{checkpoint.LATEST}.tmp77").write_text("step-000009")
    checkpoint.save(tmp_path, model, {"step": 3})
    checkpoint.save(tmp_path, model, {"step": 5})
    assert sorted(os.listdir(folder)) == [checkpoint.LATEST, "step-000005"]
    assert (folder / checkpoint.LATEST).read_text().strip() == "step-000005"
    assert sorted(os.listdir(folder / "step-000005")) == [checkpoint.WEIGHTS, checkpoint.STATE]
    assert checkpoint.latest(tmp_path) == folder / "step-000005"
    assert checkpoint.load(tmp_path, model)["step"] == 5
    assert checkpoint.load(tmp_path, model, trainer=False) is None


@pytest.mark.parametrize("name", [checkpoint.WEIGHTS, checkpoint.STATE])
def test_a_truncated_file_names_itself_and_the_way_out(tmp_path, name):
    output = tmp_path / "run"
    train(dict(SMALL, output=str(output), max_steps=2))
    damaged = checkpoint.latest(output) / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=rf"(?s){damaged}.*--no-resume"):
        train(dict(SMALL, output=str(output), max_steps=4))
    if name == checkpoint.WEIGHTS:
        with pytest.raises(checkpoint.CheckpointError, match=str(damaged)):
            run_eval(dict(SMALL, output=str(output)))
    model, results = train(dict(SMALL, output=str(output), max_steps=2, resume=False))  # starts fresh
    assert results["step"] == 2 and checkpoint.load(output, model)["step"] == 2


def test_weights_of_another_step_are_refused(tmp_path):
    _, model = build.model(SMALL)
    checkpoint.save(tmp_path / "a", model, {"step": 1})
    checkpoint.save(tmp_path / "b", model, {"step": 2})
    stray = checkpoint.latest(tmp_path / "a") / checkpoint.WEIGHTS
    os.replace(stray, checkpoint.latest(tmp_path / "b") / checkpoint.WEIGHTS)
    with pytest.raises(checkpoint.CheckpointError, match="step 1.*step 2"):
        checkpoint.load(tmp_path / "b", model)


def test_a_pointer_to_a_missing_folder_is_an_error(tmp_path):
    _, model = build.model(SMALL)
    checkpoint.save(tmp_path, model, {"step": 1})
    (tmp_path / checkpoint.FOLDER / checkpoint.LATEST).write_text("step-000042\n")
    with pytest.raises(checkpoint.CheckpointError, match="step-000042"):
        checkpoint.load(tmp_path, model)
