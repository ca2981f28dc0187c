"""dpc_knn (docs/dpc_knn.md): argument rules, fake and each backend's limits. No gradient."""

import torch

from hbi_ops import _checks

NAME = "dpc_knn"
TRITON_MAX_TOKENS = 16384  # the Triton tiled path's row programs hold a whole row of the distances


def arguments(x, num_clusters, k, mask):
    """The public call's arguments, checked, as every backend takes them: (x, mask, num_clusters, k), mask
    bool, padded tokens' features 0 (whatever they held: padding never matters)."""
    _checks.tensor("x", x, dim=3, floating=True)
    batch, num_tokens, width = x.shape
    if width < 1:
        raise ValueError(f"x must have at least one feature (shape [B, N, C] with C >= 1), got {list(x.shape)}")
    num_clusters = _checks.integer("num_clusters", num_clusters, low=1, high=num_tokens)
    k = _checks.integer("k", k, low=1, high=num_tokens)
    _checks.same_device("x", x, mask=mask)
    mask = _checks.mask("mask", mask, (batch, num_tokens), x)
    return x.masked_fill(~mask[..., None], 0.0), mask, num_clusters, k


def not_supported_reasons(backend, args):
    x = args[0]
    if backend == "triton" and x.shape[1] > TRITON_MAX_TOKENS:
        return [
            f"the triton dpc_knn takes N <= {TRITON_MAX_TOKENS} tokens a sample (a program holds a whole row of "
            f"the distances), got N={x.shape[1]}"
        ]
    return []


def fake(x, mask, num_clusters, k):
    """(idx [B, N], centers [B, K]), int64."""
    batch, num_tokens, _ = x.shape
    return x.new_empty((batch, num_tokens), dtype=torch.int64), x.new_empty((batch, num_clusters), dtype=torch.int64)
