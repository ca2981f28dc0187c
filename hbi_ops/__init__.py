"""hbi_ops: fast, exact operators of Hierarchical Banzhaf Interaction (CVPR 2023).

    wti_similarity       weighted token-wise text-video similarity          [A, B]
    banzhaf_interaction  word-frame Banzhaf interaction of matched pairs    [B, T, V]
    dpc_knn              density-peaks clustering of tokens                 (idx [B, N], centers [B, K])
    merge_tokens         weighted mean of each cluster                      [B, K, C]
    backends()           the backends available here ("cuda", "triton", "cpu", "torch")

Every operator takes ``backend=`` ("cuda", "triton", "cpu" or "torch"; default: the fastest available
for the inputs' device); the environment variable HBI_OPS_BACKEND forces one globally.
"""

from hbi_ops._api import backends, banzhaf_interaction, dpc_knn, merge_tokens, wti_similarity

__all__ = ["wti_similarity", "banzhaf_interaction", "dpc_knn", "merge_tokens", "backends"]
__version__ = "0.1.0"
