"""Banzhaf interaction of words and frames in the WTI game (docs/banzhaf.md), written as the definitions read.

Coalitions are boolean masks: in_text [..., T] and in_video [..., V] select the words and frames of a
coalition; every function broadcasts them against the pair's similarity map sim [..., T, V]. Costs are
those of the definitions (a coalition value costs O(T * V)); speed is the other backends' job.
"""

import torch

from hbi_ops import philox
from hbi_ops.reference.banzhaf_closed_form import closed_form

REFERENCE_MASK_LOGIT = -9e15  # what the reference code gives non-members before its softmax
SUBSET_CHUNK = 1 << 12  # coalitions evaluated at once by the exact estimator
ELEMENT_BUDGET = 1 << 24  # bound on the [.., T, V, T, V] intermediates of the cell-wise estimators
SAMPLE_CHUNK = 1 << 14  # samples drawn at once (Philox's int64 intermediates are [samples, B, T + V])


def coalition_value(sim, text_weight, video_weight, in_text, in_video):
    """Textbook WTI value f(S): 0 if S has no word or no frame, else
    1/2 [sum_{t in S_t} a_t max_{v in S_v} R[t,v] + sum_{v in S_v} c_v max_{t in S_t} R[t,v]],
    a and c the softmax of the weight logits over the coalition's words and frames."""
    pairs = in_text[..., :, None] & in_video[..., None, :]
    masked = sim.masked_fill(~pairs, float("-inf"))
    # Maxima over an empty side are -inf: zero them (f is 0 there) so no -inf reaches a gradient.
    row_max = masked.max(dim=-1).values.masked_fill(~in_text | ~in_video.any(-1, keepdim=True), 0.0)
    col_max = masked.max(dim=-2).values.masked_fill(~in_video | ~in_text.any(-1, keepdim=True), 0.0)
    text_part = (_softmax_over(text_weight, in_text) * row_max).sum(-1)
    video_part = (_softmax_over(video_weight, in_video) * col_max).sum(-1)
    nonempty = in_text.any(-1) & in_video.any(-1)
    return torch.where(nonempty, 0.5 * (text_part + video_part), torch.zeros_like(text_part))


def _softmax_over(logits, members):
    """Softmax of logits over the members only; all zeros where there is no member."""
    has_member = members.any(-1, keepdim=True)
    filled = logits.masked_fill(~members, float("-inf")).masked_fill(~has_member, 0.0)
    return torch.softmax(filled, dim=-1) * members


def zero_filled_value(sim, text_weight, video_weight, in_text, in_video):
    """The reference's F(S): R times both coalition masks (non-members become 0), maxima over all
    positions (so they include those zeros), weights a softmax with -9e15 at non-members."""
    zeroed = sim * (in_text[..., :, None] & in_video[..., None, :])
    return _reference_wti(
        zeroed,
        text_weight.masked_fill(~in_text, REFERENCE_MASK_LOGIT),
        video_weight.masked_fill(~in_video, REFERENCE_MASK_LOGIT),
    )


def _reference_wti(matrix, text_logits, video_logits):
    text_part = (torch.softmax(text_logits, -1) * matrix.max(dim=-1).values).sum(-1)
    video_part = (torch.softmax(video_logits, -1) * matrix.max(dim=-2).values).sum(-1)
    return 0.5 * (text_part + video_part)


def _cell_coalitions(in_text, in_video):
    """For every cell (i, j), c = S minus {i, j}, as masks [..., T(i), 1, T] and [..., 1, V(j), V],
    with the one-hot masks of i and j."""
    num_words, num_frames = in_text.shape[-1], in_video.shape[-1]
    word_i = torch.eye(num_words, dtype=torch.bool, device=in_text.device)[:, None, :]  # [T(i), 1, T]
    frame_j = torch.eye(num_frames, dtype=torch.bool, device=in_video.device)[None, :, :]  # [1, V(j), V]
    c_text = in_text[..., None, None, :] & ~word_i
    c_video = in_video[..., None, None, :] & ~frame_j
    return c_text, c_video, word_i, frame_j


def textbook_cell_deltas(sim, text_weight, video_weight, in_text, in_video):
    """f(c+i+j) - f(c+i) - f(c+j) + f(c) for every cell (i, j), c = S minus {i, j}: [..., T, V]."""
    c_text, c_video, word_i, frame_j = _cell_coalitions(in_text, in_video)
    sim, text_weight, video_weight = _per_cell(sim, text_weight, video_weight)

    def f(text, video):  # masks broadcast to [..., T(i), V(j), T] and [..., T(i), V(j), V]
        return coalition_value(sim, text_weight, video_weight, text, video)

    return (
        f(c_text | word_i, c_video | frame_j)
        - f(c_text | word_i, c_video)
        - f(c_text, c_video | frame_j)
        + f(c_text, c_video)
    )


def reference_cell_deltas(sim, text_weight, video_weight, in_text, in_video):
    """The reference's value1 - value2 - value3 + value4 for every cell (i, j), c = S minus {i, j}."""
    c_text, c_video, word_i, frame_j = _cell_coalitions(in_text, in_video)
    sim, text_weight, video_weight = _per_cell(sim, text_weight, video_weight)

    def F(text, video):
        return zero_filled_value(sim, text_weight, video_weight, text, video)

    value4, value2, value3 = F(c_text, c_video), F(c_text | word_i, c_video), F(c_text, c_video | frame_j)
    # value1: value4's zero-filled matrix with only the entry (i, j) restored ...
    zeroed = sim * (c_text[..., :, None] & c_video[..., None, :])
    matrix = torch.where(word_i[..., :, None] & frame_j[..., None, :], sim, zeroed)
    # ... and weights whose logits are value4's probabilities at members, the raw logit at i (j).
    text_probs = torch.softmax(text_weight.masked_fill(~c_text, REFERENCE_MASK_LOGIT), -1)
    video_probs = torch.softmax(video_weight.masked_fill(~c_video, REFERENCE_MASK_LOGIT), -1)
    text_logits = torch.where(c_text, text_probs, text_weight.masked_fill(~word_i, REFERENCE_MASK_LOGIT))
    video_logits = torch.where(c_video, video_probs, video_weight.masked_fill(~frame_j, REFERENCE_MASK_LOGIT))
    value1 = _reference_wti(matrix, text_logits, video_logits)
    return value1 - value2 - value3 + value4


def _per_cell(sim, text_weight, video_weight):
    """Insert the cell axes (i, j) before the token axes."""
    return sim[..., None, None, :, :], text_weight[..., None, None, :], video_weight[..., None, None, :]


def _cell_deltas(definition, sim, text_weight, video_weight, in_text, in_video):
    deltas = textbook_cell_deltas if definition == "textbook" else reference_cell_deltas
    return deltas(sim, text_weight, video_weight, in_text, in_video)


def paired(sim, text_mask, video_mask, text_weight, video_weight, definition, num_samples, seed):
    """Mean over samples of the cell deltas at c = S_s minus {i, j}, S_s the Philox coalition of sample s."""
    batch, num_words, num_frames = sim.shape
    chunk = max(1, min(SAMPLE_CHUNK, ELEMENT_BUDGET // max(1, batch * (num_words * num_frames) ** 2)))
    total = sim.new_zeros(sim.shape)
    for start in range(0, num_samples, chunk):
        samples = torch.arange(start, min(start + chunk, num_samples))
        in_text, in_video = philox.coalitions(seed, samples, text_mask, video_mask)  # [s, B, T], [s, B, V]
        total = total + _cell_deltas(definition, sim, text_weight, video_weight, in_text, in_video).sum(0)
    return total / num_samples


def msr(sim, text_mask, video_mask, text_weight, video_weight, num_samples, seed):
    """Maximum sample reuse: f(S_s) once per sample; for each cell the stratified means
    mean(f | i in, j in) - mean(f | i in, j out) - mean(f | i out, j in) + mean(f | i out, j out),
    a stratum without samples counting 0."""
    strata = [(word_in, frame_in) for word_in in (True, False) for frame_in in (True, False)]
    totals = [sim.new_zeros(sim.shape) for _ in strata]
    counts = [sim.new_zeros(sim.shape) for _ in strata]
    for start in range(0, num_samples, SAMPLE_CHUNK):
        samples = torch.arange(start, min(start + SAMPLE_CHUNK, num_samples))
        in_text, in_video = philox.coalitions(seed, samples, text_mask, video_mask)  # [s, B, T], [s, B, V]
        values = coalition_value(sim, text_weight, video_weight, in_text, in_video)  # [s, B]
        for k, (word_in, frame_in) in enumerate(strata):
            word = (in_text if word_in else ~in_text).to(sim.dtype)
            frame = (in_video if frame_in else ~in_video).to(sim.dtype)
            totals[k] = totals[k] + torch.einsum("sb,sbt,sbv->btv", values, word, frame)
            counts[k] = counts[k] + torch.einsum("sbt,sbv->btv", word, frame)
    estimate = sim.new_zeros(sim.shape)
    for (word_in, frame_in), total, count in zip(strata, totals, counts):
        mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        estimate = estimate + (mean if word_in == frame_in else -mean)
    return estimate


def _all_subsets(num_players, start, stop, device):
    codes = torch.arange(start, stop, device=device)[:, None]
    return ((codes >> torch.arange(num_players, device=device)) & 1).bool()  # [n_subsets, n]


def exact(sim, text_mask, video_mask, text_weight, video_weight, definition):
    """Full enumeration, pair by pair, over the 2^n coalitions of its n real players: the reference
    definition's exact estimator, and the independent check of the textbook closed form in the tests."""
    if sim.device.type == "meta":
        raise ValueError(
            "the torch backend's exact enumeration reads the masks, which meta tensors do not have; "
            "backend='cpu' (the default for meta tensors) gives the output's shape"
        )
    out = []
    for b in range(sim.shape[0]):
        words, frames = text_mask[b].nonzero().flatten(), video_mask[b].nonzero().flatten()
        n = len(words) + len(frames)
        pair = sim.new_zeros(sim.shape[1:])
        if len(words) and len(frames):
            args = (sim[b], text_weight[b], video_weight[b], words, frames)
            pair = (_exact_textbook if definition == "textbook" else _exact_reference)(*args, n)
        out.append(pair)
    return torch.stack(out) if out else sim.new_zeros(sim.shape)


def _subset_masks(words, frames, num_words, num_frames, start, stop, device):
    members = _all_subsets(len(words) + len(frames), start, stop, device)
    in_text = torch.zeros(members.shape[0], num_words, dtype=torch.bool, device=device)
    in_video = torch.zeros(members.shape[0], num_frames, dtype=torch.bool, device=device)
    in_text[:, words] = members[:, : len(words)]
    in_video[:, frames] = members[:, len(words) :]
    return in_text, in_video


def _exact_textbook(sim, text_weight, video_weight, words, frames, n):
    """I(i, j) = 4 / 2^n * sum over all S of f(S) s_i s_j, s_k = +1 in S, -1 out."""
    num_words, num_frames = sim.shape
    total = sim.new_zeros(sim.shape)
    for start in range(0, 1 << n, SUBSET_CHUNK):
        stop = min(start + SUBSET_CHUNK, 1 << n)
        in_text, in_video = _subset_masks(words, frames, num_words, num_frames, start, stop, sim.device)
        values = coalition_value(sim, text_weight, video_weight, in_text, in_video)
        sign_text, sign_video = in_text.to(sim.dtype) * 2 - 1, in_video.to(sim.dtype) * 2 - 1
        total = total + torch.einsum("s,st,sv->tv", values, sign_text, sign_video)
    return total * (4.0 / (1 << n))


def _exact_reference(sim, text_weight, video_weight, words, frames, n):
    """The mean over all S of the reference's cell delta at c = S minus {i, j}: every c is met 4 times."""
    num_words, num_frames = sim.shape
    chunk = max(1, ELEMENT_BUDGET // max(1, (num_words * num_frames) ** 2))
    total = sim.new_zeros(sim.shape)
    for start in range(0, 1 << n, chunk):
        stop = min(start + chunk, 1 << n)
        in_text, in_video = _subset_masks(words, frames, num_words, num_frames, start, stop, sim.device)
        total = total + reference_cell_deltas(sim, text_weight, video_weight, in_text, in_video).sum(0)
    return total / (1 << n)


def banzhaf_interaction(
    sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
):
    """The `torch` backend; arguments normalised by hbi_ops.banzhaf_interaction."""
    if torch.compiler.is_compiling() and not (estimator == "exact" and definition == "textbook"):
        # The sampled estimators' Philox draws and loops make a graph that takes torch.compile minutes:
        # traced, they are one opaque op (the same function, differentiated by autograd inside).
        return _opaque_banzhaf_interaction(
            sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
        )
    return _banzhaf_interaction(
        sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )


def _banzhaf_interaction(
    sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
):
    if sim.numel() == 0:  # no pair, no word or no frame: nothing to value
        return torch.zeros_like(sim)
    compute = torch.float64 if sim.dtype == torch.float64 else torch.float32
    # Padding never matters: whatever padded positions hold (NaN, inf) is replaced before any arithmetic.
    real_cells = text_mask[:, :, None] & video_mask[:, None, :]
    sim = sim.masked_fill(~real_cells, 0.0)
    text_weight = text_weight.masked_fill(~text_mask, 0.0)
    video_weight = video_weight.masked_fill(~video_mask, 0.0)
    args = (sim.to(compute), text_mask, video_mask, text_weight.to(compute), video_weight.to(compute))
    seed = seed % (1 << 64)
    if estimator == "exact" and definition == "textbook":
        result = closed_form(*args)
    elif estimator == "exact":
        result = exact(*args, definition)
    elif estimator == "paired":
        result = paired(*args, definition, num_samples, seed)
    else:
        result = msr(*args, num_samples, seed)
    return result.masked_fill(~real_cells, 0.0).to(sim.dtype)


@torch.library.custom_op("hbi_ops_torch::banzhaf_interaction", mutates_args=())
def _opaque_banzhaf_interaction(
    sim: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    definition: str,
    estimator: str,
    num_samples: int,
    seed: int,
) -> torch.Tensor:
    with torch.no_grad():
        return _banzhaf_interaction(
            sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
        )


@torch.library.custom_op("hbi_ops_torch::banzhaf_interaction_backward", mutates_args=())
def _opaque_banzhaf_interaction_backward(
    grad: torch.Tensor,
    sim: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    definition: str,
    estimator: str,
    num_samples: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # A custom op's kernel runs below autograd: torch.func's vjp (its own dispatch level) differentiates.
    def value(s, wt, wv):
        return _banzhaf_interaction(s, text_mask, video_mask, wt, wv, definition, estimator, num_samples, seed)

    _out, pullback = torch.func.vjp(value, sim, text_weight, video_weight)
    return tuple(g.clone() for g in pullback(grad))


@_opaque_banzhaf_interaction.register_fake
def _(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    return torch.empty_like(sim)


@_opaque_banzhaf_interaction_backward.register_fake
def _(grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    return torch.empty_like(sim), torch.empty_like(text_weight), torch.empty_like(video_weight)


def _opaque_setup(ctx, inputs, output):
    sim, text_mask, video_mask, text_weight, video_weight = inputs[:5]
    ctx.save_for_backward(sim, text_mask, video_mask, text_weight, video_weight)
    ctx.settings = inputs[5:]


def _opaque_backward(ctx, grad):
    sim, text_mask, video_mask, text_weight, video_weight = ctx.saved_tensors
    grad_sim, grad_text_weight, grad_video_weight = _opaque_banzhaf_interaction_backward(
        grad.contiguous(), sim, text_mask, video_mask, text_weight, video_weight, *ctx.settings
    )
    return grad_sim, None, None, grad_text_weight, grad_video_weight, None, None, None, None


_opaque_banzhaf_interaction.register_autograd(_opaque_backward, setup_context=_opaque_setup)
