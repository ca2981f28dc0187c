"""The `triton` backend: Triton kernels for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1).

One module per operator (wti.py, banzhaf.py with banzhaf_closed_form.py, dpc_knn.py, merge.py). Each
registers its kernels as torch.library custom ops in the `hbi_ops_triton` namespace, attaches the
operator's fake and autograd from hbi_ops.ops (the same as the compiled ops'), and defines the backend
function named after the operator, taking the arguments hbi_ops.ops.<op>.arguments normalises (the same as
every backend's).
"""

import triton  # noqa: F401  (an ImportError here tells the dispatcher that triton is unusable)

from hbi_ops.triton.banzhaf import banzhaf_interaction
from hbi_ops.triton.dpc_knn import dpc_knn
from hbi_ops.triton.merge import merge_tokens
from hbi_ops.triton.wti import wti_similarity

__all__ = ["wti_similarity", "banzhaf_interaction", "dpc_knn", "merge_tokens"]
