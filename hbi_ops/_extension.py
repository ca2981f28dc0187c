"""Loads the compiled kernels (hbi_ops._C) and says what they cover."""
import torch

try:
    from hbi_ops import _C  # noqa: F401  (importing registers torch.ops.hbi_ops.*)

    LOAD_ERROR = None
except ImportError as error:  # an install without a compiler still has the torch backend
    _C = None
    LOAD_ERROR = f"the compiled extension hbi_ops._C could not be loaded ({error})"


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether hbi_ops::<op_name> has a compiled kernel for dispatch_key ("CPU" or "CUDA")."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"hbi_ops::{op_name}", dispatch_key)
