"""Evaluation: features of every text and video, the [texts, videos] score in chunks of texts (the fused
wti_similarity never materialises [texts, videos, T, V]), and the retrieval metrics."""

import torch
from tqdm import tqdm

from hbi_model.metrics import both_directions
from hbi_model.retrieval import LEVELS


@torch.no_grad()
def encode_all(model, loader, device, progress=True):
    texts, text_masks, videos, video_masks = [], [], [], []
    # disable=None: tqdm draws no bar where stderr is not a terminal (a log)
    for batch in tqdm(loader, desc="encode", disable=None if progress else True, leave=False):
        t, tm, v, vm = model.encode(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["pixel_values"].to(device),
            batch["frame_mask"].to(device),
        )
        texts.append(t), text_masks.append(tm), videos.append(v), video_masks.append(vm)
    return torch.cat(texts), torch.cat(text_masks), torch.cat(videos), torch.cat(video_masks)


@torch.no_grad()
def similarity_matrix(model, text, text_mask, video, video_mask, rates=None, chunk=256):
    """score [texts, videos] = sum over levels of rate * sim_level; levels with rate 0 are skipped."""
    rates = dict(zip(LEVELS, rates or model.config.rates))
    wanted = tuple(level for level in LEVELS if rates[level]) if model.config.use_hierarchy else ("entity",)
    total = 0.0
    for level, t, tm, v, vm in model.levels(text, text_mask, video, video_mask, wanted):
        rows = []
        for start in range(0, t.shape[0], chunk):
            part = slice(start, start + chunk)
            rows.append(model.level_similarity(level, t[part], None if tm is None else tm[part], v, vm)[0])
        total = total + rates[level] * torch.cat(rows)
    return total


WITHIN_GROUP = "within group"


def evaluate(model, loader, device, rates=None, progress=True):
    """Retrieval metrics of both directions; a test set with its own metrics of the score matrix
    (`score_metrics`, e.g. the events task's within-group accuracy) adds them under WITHIN_GROUP."""
    model.eval()
    features = encode_all(model, loader, device, progress)
    sim = similarity_matrix(model, *features, rates=rates).float().cpu()
    model.train()
    metrics = both_directions(sim)
    extra = getattr(loader.dataset, "score_metrics", None)
    if extra is not None:
        metrics[WITHIN_GROUP] = extra(sim)
    return metrics


def format_table(metrics, title=""):
    lines = [title] if title else []
    lines.append("| direction | R@1 | R@5 | R@10 | MdR | MnR |\n|---|---|---|---|---|---|")
    for direction, m in metrics.items():
        if direction == WITHIN_GROUP:
            continue
        lines.append(
            f"| {direction} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | {m['MdR']:.1f} | {m['MnR']:.1f} |"
        )
    if WITHIN_GROUP in metrics:
        lines.append(f"{WITHIN_GROUP} (%): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics[WITHIN_GROUP].items()))
    return "\n".join(lines)


@torch.no_grad()
def evaluate_qa(model, loader, device, train_set, test_set, progress=True):
    """Top-1 accuracy overall and per question type, beside the majority-answer baseline."""
    from hbi_model.data.qa import accuracy, majority_baseline

    model.eval()
    predictions, answers, types = [], [], []
    for batch in tqdm(loader, desc="answer", disable=None if progress else True, leave=False):
        logits = model.predict(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["pixel_values"].to(device),
            batch["frame_mask"].to(device),
        )
        if not torch.isfinite(logits).all():  # argmax would silently pick the NaN's position
            raise ValueError(
                f"the model's answer logits are not finite for videos {batch['video_id'][:4]}...: "
                f"the model's features or weights are not finite"
            )
        predictions.append(logits.argmax(-1).cpu())
        answers.append(batch["answer"])
        types += batch["question_type"]
    model.train()
    predictions, answers = torch.cat(predictions), torch.cat(answers)
    train_answers, _ = train_set.answer_table()
    return {
        "model": accuracy(predictions, answers, types),
        "majority answer": majority_baseline(train_answers, answers, types),
    }


def format_qa_table(metrics, title=""):
    kinds = list(metrics["model"])
    lines = [title] if title else []
    lines.append("| predictor | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    for name, values in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{values.get(k, float('nan')):.1f}" for k in kinds) + " |")
    return "\n".join(lines)
