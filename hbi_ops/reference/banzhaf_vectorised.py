"""A strong plain-PyTorch version of the paired textbook estimator: the benchmarks' second baseline, so
that speed-ups are not only measured against the oracle (which is written for clarity, not speed).

`paired_textbook_vectorised` is what a careful PyTorch user would write for the paired textbook
estimator (docs/reference_cost.md's "strong plain-PyTorch version"): samples and cells vectorised, and the WTI
value separated into the text set's weights (which depend on i only) and the video set's row maxima
(which depend on j only), so one sample costs O(T^2 V + T V^2) in a few batched einsums.
"""

import torch

from hbi_ops import philox


def _softmax_over(logits, members):
    has_member = members.any(-1, keepdim=True)
    filled = logits.masked_fill(~members, float("-inf")).masked_fill(~has_member, 0.0)
    return torch.softmax(filled, dim=-1) * members


def _max_over(values, members, dim):
    out = values.masked_fill(~members, float("-inf")).amax(dim=dim)
    return out.masked_fill(~members.any(dim), 0.0)


def paired_textbook_vectorised(sim, text_mask, video_mask, text_weight, video_weight, num_samples, seed, chunk=64):
    batch, num_words, num_frames = sim.shape
    eye_t = torch.eye(num_words, dtype=torch.bool, device=sim.device)
    eye_v = torch.eye(num_frames, dtype=torch.bool, device=sim.device)
    total = torch.zeros_like(sim)
    for start in range(0, num_samples, chunk):
        samples = torch.arange(start, min(start + chunk, num_samples), device=sim.device)
        in_t, in_v = philox.coalitions(seed, samples, text_mask, video_mask)  # [s, B, T], [s, B, V]
        words = {False: in_t[:, :, None, :] & ~eye_t}  # [s, B, T(i), T]: c_t, and c_t + i
        words[True] = words[False] | eye_t
        frames = {False: in_v[:, :, None, :] & ~eye_v}  # [s, B, V(j), V]: c_v, and c_v + j
        frames[True] = frames[False] | eye_v
        values = {}
        for add_i in (False, True):
            a = _softmax_over(text_weight[None, :, None, :], words[add_i])  # [s, B, T(i), T]
            col = _max_over(sim[None, :, None], words[add_i][..., None], dim=-2)  # [s, B, T(i), V]
            for add_j in (False, True):
                c = _softmax_over(video_weight[None, :, None, :], frames[add_j])  # [s, B, V(j), V]
                row = _max_over(sim[None, :, None], frames[add_j][:, :, :, None, :], dim=-1)  # [s, B, V(j), T]
                text = torch.einsum("sbit,sbjt->sbij", a, row)
                video = torch.einsum("sbjv,sbiv->sbij", c, col)
                nonempty = words[add_i].any(-1)[..., :, None] & frames[add_j].any(-1)[..., None, :]
                values[add_i, add_j] = torch.where(nonempty, 0.5 * (text + video), 0.0)
        delta = values[True, True] - values[True, False] - values[False, True] + values[False, False]
        total += delta.sum(0)
    real = text_mask[:, :, None] & video_mask[:, None, :]
    return total / num_samples * real
