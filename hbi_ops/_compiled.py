"""The `cpu` and `cuda` backends: the compiled ops (the dispatcher picks the kernel by device)."""

import torch

from hbi_ops import _library  # noqa: F401  (attaches the operators' fakes and autograd)

ops = torch.ops.hbi_ops


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
