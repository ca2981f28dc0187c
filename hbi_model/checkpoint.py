"""Checkpoints written atomically: model weights as safetensors, the trainer's state beside them."""
import os

import torch
from safetensors.torch import load_file, save_file

WEIGHTS, STATE = "model.safetensors", "trainer.pt"


def _atomic(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def save(directory, model, trainer_state):
    os.makedirs(directory, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(os.path.join(directory, STATE), lambda p: torch.save(trainer_state, p))
    _atomic(os.path.join(directory, WEIGHTS), lambda p: save_file(weights, p))


def exists(directory):
    return os.path.exists(os.path.join(directory, WEIGHTS)) and os.path.exists(os.path.join(directory, STATE))


def load(directory, model, map_location="cpu"):
    model.load_state_dict(load_file(os.path.join(directory, WEIGHTS), device=str(map_location)))
    return torch.load(os.path.join(directory, STATE), map_location=map_location, weights_only=False)
