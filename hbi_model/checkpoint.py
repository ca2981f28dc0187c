"""Checkpoints that cannot tear.

Layout of a run folder:

    <run>/checkpoints/latest              the name of the current step folder ("step-000180")
    <run>/checkpoints/step-000180/model.safetensors   weights (the step in its metadata)
    <run>/checkpoints/step-000180/trainer.pt          optimiser, scheduler, RNG state and step

A save writes step-N.tmp<pid>/, flushes it to disk, renames it to step-N/ and then replaces `latest`
through os.replace: a kill at any moment leaves `latest` naming a complete folder, the previous one or
the new one. Older step folders and the temporaries of killed saves are removed after the switch."""

import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

FOLDER, LATEST = "checkpoints", "latest"
WEIGHTS, STATE = "model.safetensors", "trainer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, missing or inconsistent."""


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_name(step):
    return f"step-{int(step):06d}"


def save(directory, model, trainer_state):
    """Save model weights and trainer_state (a dict with 'step') as the run's current checkpoint."""
    folder = Path(directory) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    step = int(trainer_state["step"])
    name = _step_name(step)
    tmp = folder / f"{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    torch.save(trainer_state, tmp / STATE)
    save_file(weights, str(tmp / WEIGHTS), metadata={"step": str(step)})
    for path in (tmp / STATE, tmp / WEIGHTS, tmp):
        _fsync(path)
    final = folder / name
    if final.exists():  # left by a run killed before it switched `latest` to it: never the current one
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = folder / f"{LATEST}.tmp{os.getpid()}"
    pointer.write_text(name + "\n")
    _fsync(pointer)
    os.replace(pointer, folder / LATEST)
    _fsync(folder)
    for entry in folder.iterdir():  # superseded steps and temporaries of killed saves
        if entry.name in (LATEST, name):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def exists(directory):
    return (Path(directory) / FOLDER / LATEST).exists()


def latest(directory):
    """The current step folder of a run."""
    pointer = Path(directory) / FOLDER / LATEST
    name = pointer.read_text().strip()
    folder = pointer.parent / name
    if not name.startswith("step-") or not folder.is_dir():
        raise CheckpointError(
            f"{pointer} names {name!r}, which is not a step folder beside it; {_fresh_start(directory)}"
        )
    return folder


def _fresh_start(directory):
    return f"delete {Path(directory) / FOLDER} or train with --no-resume to start fresh"


def load(directory, model, map_location="cpu", trainer=True):
    """Load the current weights into model; return the trainer state (None if trainer is False)."""
    folder = latest(directory)
    step = int(folder.name.removeprefix("step-"))
    weights_path, state_path = folder / WEIGHTS, folder / STATE
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            weights_step = (handle.metadata() or {}).get("step")
        weights = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"checkpoint file {weights_path} is unreadable ({error}); {_fresh_start(directory)}"
        ) from error
    if weights_step is None or int(weights_step) != step:
        raise CheckpointError(
            f"{weights_path} holds the weights of step {weights_step}, not of step {step} "
            f"(its folder's); {_fresh_start(directory)}"
        )
    state = None
    if trainer:
        try:
            state = torch.load(state_path, map_location=map_location, weights_only=False)
        except Exception as error:  # truncated or corrupt pickles fail in many ways
            raise CheckpointError(
                f"checkpoint file {state_path} is unreadable ({type(error).__name__}: "
                f"{error}); {_fresh_start(directory)}"
            ) from error
        if int(state.get("step", -1)) != step:
            raise CheckpointError(
                f"{state_path} holds the trainer state of step {state.get('step')}, not of "
                f"step {step} (its folder's); {_fresh_start(directory)}"
            )
    model.load_state_dict(weights)
    return state
