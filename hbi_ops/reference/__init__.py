"""The `torch` backend: plain PyTorch, written to be read; the oracle every other backend is tested against."""

from hbi_ops.reference.banzhaf import banzhaf_interaction
from hbi_ops.reference.dpc_knn import dpc_knn
from hbi_ops.reference.merge import merge_tokens
from hbi_ops.reference.wti import wti_similarity

__all__ = ["wti_similarity", "banzhaf_interaction", "dpc_knn", "merge_tokens"]
