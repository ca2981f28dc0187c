"""Losses (docs/model.md): symmetric InfoNCE, the cross-level KL and the Banzhaf KL."""

import torch
import torch.nn.functional as F

BANZHAF_REDUCTIONS = ("row", "element")
BANZHAF_TRANSPOSES = ("words", "reference")


def info_nce(sim, logit_scale):
    """1/2 [CE(s sim) + CE(s sim^T)] with the diagonal as positives."""
    logits = sim * logit_scale
    labels = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def level_kl(x, y):
    """KL(softmax(y) || softmax(x)) over the last axis, averaged over all elements."""
    log_p, log_q = F.log_softmax(y, -1), F.log_softmax(x, -1)
    return (log_p.exp() * (log_p - log_q)).mean()


def masked_kl(target_logits, student_logits, valid, reduction="row"):
    """KL(softmax(target) || softmax(student)) along the last axis, over the cells where `valid` is True
    (the others take no part in either softmax). reduction "row": each row's KL (a sum over its cells),
    averaged over the rows with a valid cell; "element": the per-cell terms averaged over the valid cells,
    as F.kl_div(..., reduction="mean"), which makes a row of n cells weigh n times less."""
    if reduction not in BANZHAF_REDUCTIONS:
        raise ValueError(f"reduction must be one of {BANZHAF_REDUCTIONS}, got {reduction!r}")
    t = target_logits.reshape(-1, target_logits.shape[-1])
    s = student_logits.reshape(-1, student_logits.shape[-1])
    v = valid.reshape(-1, valid.shape[-1])
    rows = v.any(-1)
    if not rows.any():
        return s.sum() * 0
    t, s, v = t[rows], s[rows], v[rows]
    target = F.softmax(t.masked_fill(~v, float("-inf")), -1)
    log_student = F.log_softmax(s.masked_fill(~v, float("-inf")), -1).masked_fill(~v, 0.0)
    terms = torch.xlogy(target, target) - target * log_student  # 0 where the target is 0 (padding)
    if reduction == "row":
        return terms.sum(-1).mean()
    return terms.sum() / v.sum()


def banzhaf_kl(teacher, student, valid, reduction="row", transpose="words"):
    """The Banzhaf distillation loss of one level: KL(teacher || student) with the softmax over frames,
    plus the same on the axis-reversed tensors. teacher, student [B, T, V] (logits), valid [B, T, V].

    transpose "words": the second term's softmax runs over words ([B, V, T]); "reference": the authors'
    `.T` of a 3-D tensor, [V, T, B], whose softmax runs over the pairs of the batch."""
    if transpose == "words":
        flip = lambda x: x.transpose(1, 2)  # noqa: E731
    elif transpose == "reference":
        flip = lambda x: x.permute(2, 1, 0)  # noqa: E731
    else:
        raise ValueError(f"transpose must be one of {BANZHAF_TRANSPOSES}, got {transpose!r}")
    return masked_kl(teacher, student, valid, reduction) + masked_kl(
        flip(teacher), flip(student), flip(valid), reduction
    )
