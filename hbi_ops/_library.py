"""Fake (meta) implementations and autograd formulas of the compiled operators, in one place.

The schemas live in csrc/ops.cpp; the kernels register per device in C++. What is attached here makes
the ops work under torch.compile (fakes) and autograd (backward ops, also compiled).
"""

import torch

from hbi_ops import _extension
from hbi_ops._autograd import refuse_double_backward

ops = torch.ops.hbi_ops


def _register():
    # --- wti_similarity ------------------------------------------------------------------------
    @torch.library.register_fake("hbi_ops::wti_similarity")
    def _(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding):
        a, t, _d = text.shape
        b, v, _d = video.shape
        score = text.new_empty((a, b))
        return score, text.new_empty((a, b, t), dtype=torch.int32), text.new_empty((a, b, v), dtype=torch.int32)

    @torch.library.register_fake("hbi_ops::wti_similarity_backward")
    def _(grad_score, text, video, text_weight, video_weight, t2v_argmax, v2t_argmax):
        return (
            torch.empty_like(text),
            torch.empty_like(video),
            torch.empty_like(text_weight),
            torch.empty_like(video_weight),
        )

    def wti_setup(ctx, inputs, output):
        text, video, text_weight, video_weight = inputs[:4]
        _score, t2v_argmax, v2t_argmax = output
        ctx.save_for_backward(text, video, text_weight, video_weight, t2v_argmax, v2t_argmax)

    def wti_backward(ctx, grad_score, _grad_t2v, _grad_v2t):
        grads = ops.wti_similarity_backward(grad_score.contiguous(), *ctx.saved_tensors)
        return (*grads, None, None, None)

    torch.library.register_autograd("hbi_ops::wti_similarity", wti_backward, setup_context=wti_setup)

    # --- banzhaf_interaction -------------------------------------------------------------------
    @torch.library.register_fake("hbi_ops::banzhaf_interaction")
    def _(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
        return torch.empty_like(sim)

    @torch.library.register_fake("hbi_ops::banzhaf_interaction_backward")
    def _(grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
        return torch.empty_like(sim), torch.empty_like(text_weight), torch.empty_like(video_weight)

    def banzhaf_setup(ctx, inputs, output):
        sim, text_mask, video_mask, text_weight, video_weight = inputs[:5]
        ctx.save_for_backward(sim, text_mask, video_mask, text_weight, video_weight)
        ctx.settings = inputs[5:]  # definition, estimator, num_samples, seed: recompute from the seed

    def banzhaf_backward(ctx, grad):
        sim, text_mask, video_mask, text_weight, video_weight = ctx.saved_tensors
        grad_sim, grad_text_weight, grad_video_weight = ops.banzhaf_interaction_backward(
            grad.contiguous(), sim, text_mask, video_mask, text_weight, video_weight, *ctx.settings
        )
        return grad_sim, None, None, grad_text_weight, grad_video_weight, None, None, None, None

    torch.library.register_autograd("hbi_ops::banzhaf_interaction", banzhaf_backward, setup_context=banzhaf_setup)

    # --- closed_form_block_* (the CUDA kernel's code, for the tests) -------------------------------
    @torch.library.register_fake("hbi_ops::closed_form_block_forward")
    def _(sim, text_mask, video_mask, text_weight, video_weight):
        return torch.empty_like(sim)

    @torch.library.register_fake("hbi_ops::closed_form_block_backward")
    def _(grad, sim, text_mask, video_mask, text_weight, video_weight):
        return torch.empty_like(sim), torch.empty_like(text_weight), torch.empty_like(video_weight)

    # --- banzhaf_warp_game_* (the CUDA cells kernel's code, for the tests) ---------------------
    @torch.library.register_fake("hbi_ops::banzhaf_warp_game_forward")
    def _(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
        return torch.empty_like(sim)

    @torch.library.register_fake("hbi_ops::banzhaf_warp_game_backward")
    def _(grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
        return torch.empty_like(sim), torch.empty_like(text_weight), torch.empty_like(video_weight)

    # --- dpc_knn (no gradient) -----------------------------------------------------------------
    @torch.library.register_fake("hbi_ops::dpc_knn")
    def _(x, mask, num_clusters, k):
        b, n, _c = x.shape
        return x.new_empty((b, n), dtype=torch.int64), x.new_empty((b, num_clusters), dtype=torch.int64)

    # --- merge_tokens --------------------------------------------------------------------------
    @torch.library.register_fake("hbi_ops::merge_tokens")
    def _(x, idx, weight, num_clusters):
        b, _n, c = x.shape
        return x.new_empty((b, num_clusters, c))

    @torch.library.register_fake("hbi_ops::merge_tokens_backward")
    def _(grad, x, idx, weight, merged, num_clusters):
        return torch.empty_like(x), torch.empty_like(weight)

    def merge_setup(ctx, inputs, output):
        x, idx, weight, num_clusters = inputs
        ctx.save_for_backward(x, idx, weight, output)
        ctx.num_clusters = num_clusters

    def merge_backward(ctx, grad):
        x, idx, weight, merged = ctx.saved_tensors
        grad_x, grad_weight = ops.merge_tokens_backward(grad.contiguous(), x, idx, weight, merged, ctx.num_clusters)
        return grad_x, None, grad_weight, None

    torch.library.register_autograd("hbi_ops::merge_tokens", merge_backward, setup_context=merge_setup)

    for backward_op in ("wti_similarity_backward", "banzhaf_interaction_backward", "merge_tokens_backward"):
        refuse_double_backward(f"hbi_ops::{backward_op}")


if _extension.LOAD_ERROR is None:
    _register()
