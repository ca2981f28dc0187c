"""wti_similarity (docs/wti.md): argument rules, fake, autograd and each backend's limits."""

import torch

from hbi_ops import _checks

NAME = "wti_similarity"
PADDINGS = ("ignore", "zero")


def arguments(text, video, text_weight, video_weight, text_mask, video_mask, padding):
    """The public call's arguments, checked, as every backend takes them: (text, video, text_weight,
    video_weight, text_mask, video_mask, zero_padding), one float dtype, padded tokens' weights and features 0."""
    _checks.tensor("text", text, dim=3, floating=True)
    _checks.tensor("video", video, dim=3, floating=True)
    num_texts, num_words, width = text.shape
    num_videos, num_frames, _ = video.shape
    _checks.shape("video", video, (None, None, width))
    _checks.tensor("text_weight", text_weight, floating=True)
    _checks.shape("text_weight", text_weight, (num_texts, num_words))
    _checks.tensor("video_weight", video_weight, floating=True)
    _checks.shape("video_weight", video_weight, (num_videos, num_frames))
    _checks.same_device(
        "text",
        text,
        video=video,
        text_weight=text_weight,
        video_weight=video_weight,
        text_mask=text_mask,
        video_mask=video_mask,
    )
    text_mask = _checks.mask("text_mask", text_mask, (num_texts, num_words), text)
    video_mask = _checks.mask("video_mask", video_mask, (num_videos, num_frames), text)
    _checks.choice("padding", padding, PADDINGS)
    dtype = _checks.common_float_dtype(text, video, text_weight, video_weight)
    # Padded tokens never count, whatever they hold: their weights and features are replaced by 0 before any
    # backend runs (a NaN feature would otherwise fill a whole row of similarities, whose arg-max is undefined).
    text_weight = text_weight.masked_fill(~text_mask, 0.0)
    video_weight = video_weight.masked_fill(~video_mask, 0.0)
    text = text.masked_fill(~text_mask[..., None], 0.0)
    video = video.masked_fill(~video_mask[..., None], 0.0)
    return (
        text.to(dtype),
        video.to(dtype),
        text_weight.to(dtype),
        video_weight.to(dtype),
        text_mask,
        video_mask,
        padding == "zero",
    )


def finish(score, args):
    """A non-finite feature or weight at a real position makes every score of its text (video) NaN, in every
    backend alike (a maximum would otherwise drop a NaN); padded positions never matter."""
    text, video, text_weight, video_weight, text_mask, video_mask, _zero_padding = args
    broken_text = _nonfinite_at_real(text, text_weight, text_mask)
    broken_video = _nonfinite_at_real(video, video_weight, video_mask)
    return score.masked_fill(broken_text[:, None] | broken_video[None, :], float("nan"))


def _nonfinite_at_real(features, weights, mask):
    """[N] bool: whether sample n has a NaN or infinite feature or weight at a real token."""
    bad = ~(torch.isfinite(features).all(-1) & torch.isfinite(weights))
    return (bad & mask).any(-1)


def not_supported_reasons(backend, args):
    return []


def fake(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding):
    """(score [A, B], arg-max frame of every word [A, B, T], arg-max word of every frame [A, B, V]); the
    arg-max tensors are int32 and exist for the backward pass."""
    num_texts, num_words, _ = text.shape
    num_videos, num_frames, _ = video.shape
    return (
        text.new_empty((num_texts, num_videos)),
        text.new_empty((num_texts, num_videos, num_words), dtype=torch.int32),
        text.new_empty((num_texts, num_videos, num_frames), dtype=torch.int32),
    )


def backward_fake(grad_score, text, video, text_weight, video_weight, t2v_argmax, v2t_argmax):
    return (
        torch.empty_like(text),
        torch.empty_like(video),
        torch.empty_like(text_weight),
        torch.empty_like(video_weight),
    )


def save(ctx, inputs, output):
    text, video, text_weight, video_weight = inputs[:4]
    _score, t2v_argmax, v2t_argmax = output
    ctx.save_for_backward(text, video, text_weight, video_weight, t2v_argmax, v2t_argmax)
    ctx.mark_non_differentiable(t2v_argmax, v2t_argmax)


def backward(backward_op, ctx, grad_score, _grad_t2v, _grad_v2t):
    grads = backward_op(grad_score.contiguous(), *ctx.saved_tensors)
    return (*grads, None, None, None)
