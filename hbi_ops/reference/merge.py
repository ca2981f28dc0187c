"""Weighted mean of each cluster (docs/merge.md), in plain PyTorch; autograd comes from scatter_add."""

import torch

EPSILON = 1e-6


def merge_tokens(x, idx, weight, num_clusters):
    """x [B, N, C] float, idx [B, N] int64 in [0, K), weight [B, N] (x's dtype) -> [B, K, C] in x's dtype.

    out[b, c] = sum_{n: idx[b, n] = c} w[b, n] x[b, n] / (sum_{n: idx[b, n] = c} w[b, n] + 1e-6).
    """
    batch, num_tokens, width = x.shape
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xa, wa = x.to(acc), weight.to(acc)
    idx = idx.to(torch.int64)

    total_weight = wa.new_zeros((batch, num_clusters)).scatter_add(1, idx, wa)  # [B, K]
    weighted = xa * wa[:, :, None]
    summed = xa.new_zeros((batch, num_clusters, width)).scatter_add(
        1, idx[:, :, None].expand(batch, num_tokens, width), weighted
    )  # [B, K, C]
    out = summed / (total_weight[:, :, None] + EPSILON)
    return out.to(x.dtype)
