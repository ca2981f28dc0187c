"""Loads the compiled kernels (hbi_ops._C) and says what they cover."""

import torch

try:
    from hbi_ops import _C  # noqa: F401  (importing registers torch.ops.hbi_ops.*)

    LOAD_ERROR = None
except ImportError as error:  # an install without a compiler still has the torch backend
    _C = None
    LOAD_ERROR = f"the compiled extension hbi_ops._C could not be loaded ({error})"


def _cuda_mismatch():
    """Why the compiled CUDA kernels cannot be used with this torch (another CUDA major version), else None."""
    if _C is None or not hasattr(torch.ops.hbi_ops, "cuda_version"):
        return None
    built = int(torch.ops.hbi_ops.cuda_version())
    if built == 0 or torch.version.cuda is None:
        return None
    major = int(torch.version.cuda.split(".")[0])
    if built // 1000 != major:
        return (
            f"hbi_ops._C was compiled with CUDA {built // 1000}.{built % 1000 // 10} but torch uses CUDA "
            f"{torch.version.cuda}: reinstall hbi_ops against this torch"
        )
    return None


CUDA_MISMATCH = _cuda_mismatch()


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether hbi_ops::<op_name> has a compiled kernel for dispatch_key ("CPU" or "CUDA")."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"hbi_ops::{op_name}", dispatch_key)
