"""Losses of SPEC section 2: symmetric InfoNCE, the cross-level KL and the Banzhaf KL."""
import torch
import torch.nn.functional as F


def info_nce(sim, logit_scale):
    """1/2 [CE(s sim) + CE(s sim^T)] with the diagonal as positives."""
    logits = sim * logit_scale
    labels = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def level_kl(x, y):
    """KL(softmax(y) || softmax(x)) over the last axis, averaged over all elements."""
    log_p, log_q = F.log_softmax(y, -1), F.log_softmax(x, -1)
    return (log_p.exp() * (log_p - log_q)).mean()


def banzhaf_kl(teacher, student, valid):
    """KL(teacher || student) with a softmax over frames, plus the same over words (the axis-reversed
    tensors); padded cells (valid False) take no part. teacher, student [B, T, V]."""
    total = 0.0
    for t, s, v in ((teacher, student, valid), (teacher.transpose(1, 2), student.transpose(1, 2),
                                                 valid.transpose(1, 2))):
        rows = v.any(-1)  # rows with at least one real cell
        t = t.masked_fill(~v, float("-inf"))
        s = s.masked_fill(~v, float("-inf"))
        target = F.softmax(t[rows], -1)
        log_student = F.log_softmax(s[rows], -1)
        kl = (target * (torch.log(target.clamp_min(1e-30)) - log_student)).masked_fill(~v[rows], 0).sum(-1)
        total = total + (kl.mean() if kl.numel() else s.sum() * 0)
    return total
