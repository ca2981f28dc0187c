"""`hbi eval`: load a run's checkpoint and print the test metrics."""

import json
import os

import torch

from hbi_model import build, checkpoint
from hbi_model.encoders import with_image_size
from hbi_model.evaluate import evaluate, format_table
from hbi_model.train import _loader


def _load(settings, model, device, hint):
    if not checkpoint.exists(settings["output"]):
        raise SystemExit(f"no checkpoint in {settings['output']} (train first: {hint})")
    checkpoint.load(settings["output"], model, map_location=device, trainer=False)
    model.to(device)


def run_eval(settings):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.get("task") == "qa":
        return _run_eval_qa(settings, device)
    tokenizer, model = build.model(settings)
    _load(settings, model, device, "hbi train --output ...")
    _, test_set = build.datasets(with_image_size(settings, model.encoders))
    loader = _loader(test_set, tokenizer, settings, None, settings.get("eval_batch_size", 64))
    metrics = evaluate(model, loader, device, rates=settings.get("rates"), progress=not settings.get("quiet"))
    print(format_table(metrics, f"test set: {len(test_set)} pairs (chance R@1 = {100 / len(test_set):.2f}%)"))
    with open(os.path.join(settings["output"], "eval.json"), "w") as handle:
        json.dump(metrics, handle, indent=1)
    return metrics


def _run_eval_qa(settings, device):
    from hbi_model.data.qa import qa_datasets, qa_vocabulary
    from hbi_model.evaluate import evaluate_qa, format_qa_table

    vocabulary = qa_vocabulary(settings)
    tokenizer, model = build.qa_model(settings, len(vocabulary))
    _load(settings, model, device, "hbi train --task qa --output ...")
    train_set, test_set, _ = qa_datasets(with_image_size(settings, model.encoders), vocabulary)
    loader = _loader(test_set, tokenizer, settings, None, settings.get("eval_batch_size", 64))
    metrics = evaluate_qa(model, loader, device, train_set, test_set, not settings.get("quiet"))
    print(format_qa_table(metrics, f"test set: {len(test_set)} questions"))
    with open(os.path.join(settings["output"], "eval.json"), "w") as handle:
        json.dump(metrics, handle, indent=1)
    return metrics
