"""The `cpu` and `cuda` backends: the compiled ops (the dispatcher picks the kernel by device)."""

import torch

from hbi_ops import _library  # noqa: F401  (attaches autograd and fakes)

ops = torch.ops.hbi_ops

CUDA_CLOSED_FORM_MAX_PLAYERS = 512  # words (frames) a pair: csrc/banzhaf/closed_form_block.h kMaxPlayers


def not_supported_reasons(op, device, args):
    """Why the compiled kernels cannot run `op` on these (normalised) arguments: [] when they can."""
    if op == "banzhaf_interaction" and device.type == "cuda":
        sim, definition, estimator = args[0], args[5], args[6]
        if estimator == "exact" and definition == "textbook" and max(sim.shape[1:]) > CUDA_CLOSED_FORM_MAX_PLAYERS:
            return [
                f"the cuda closed form takes at most {CUDA_CLOSED_FORM_MAX_PLAYERS} words and frames a pair, got "
                f"T={sim.shape[1]}, V={sim.shape[2]}"
            ]
    return []


def wti_similarity(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding):
    return ops.wti_similarity(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding)[0]


def banzhaf_interaction(
    sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
):
    return ops.banzhaf_interaction(
        sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )


def dpc_knn(x, mask, num_clusters, k):
    return ops.dpc_knn(x.detach(), mask, num_clusters, k)


def merge_tokens(x, idx, weight, num_clusters):
    return ops.merge_tokens(x, idx, weight, num_clusters)
