"""Which backend runs an operator call.

Every backend answers "why not?" for an operator on a device; the default order is tried and the first
with no reason runs. A backend asked for by name (``backend=`` or ``HBI_OPS_BACKEND``) that cannot run is
an error that says why, never a silent fallback.
"""

import importlib
import os

import torch

from hbi_ops import _extension, ops

OPERATORS = tuple(ops.OPERATORS)
BACKENDS = ("cuda", "triton", "cpu", "torch")
DEFAULT_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch"), "meta": ("cpu", "torch")}
ENV_VARIABLE = "HBI_OPS_BACKEND"


def _load_triton():
    try:
        return importlib.import_module("hbi_ops.triton")
    except ImportError as error:  # triton missing or too old
        return error


# Resolved once at import, so that a call traced by torch.compile only reads constants.
_KERNELS = {(op, key): _extension.has_kernel(op, key) for op in OPERATORS for key in ("CPU", "CUDA")}
_TRITON = _load_triton()
_MODULES = {
    "torch": importlib.import_module("hbi_ops.reference"),
    "cpu": importlib.import_module("hbi_ops._compiled") if _extension.LOAD_ERROR is None else None,
    "triton": None if isinstance(_TRITON, ImportError) else _TRITON,
}
_MODULES["cuda"] = _MODULES["cpu"]


def _interpreting_triton():
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def why_not(backend: str, op: str, device: torch.device, args=None):
    """None when `backend` can run `op` on `device` (and, given the normalised arguments `args`, on those
    inputs), else the reason it cannot (xformers' not_supported_reasons)."""
    reason = _why_not_here(backend, op, device)
    if reason is None and args is not None:
        reason = "; ".join(ops.not_supported_reasons(op, backend, args)) or None
    return reason


def _why_not_here(backend: str, op: str, device: torch.device):
    if backend == "torch":
        return None
    if backend == "cpu":
        if device.type not in ("cpu", "meta"):  # meta: the ops' fake implementations give the shapes
            return f"the cpu backend takes CPU tensors, got {device.type} tensors"
        if _extension.LOAD_ERROR:
            return _extension.LOAD_ERROR
        if not _KERNELS[(op, "CPU")]:
            return f"hbi_ops._C has no CPU kernel for {op}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend takes CUDA tensors, got {device.type} tensors"
        if _extension.LOAD_ERROR:
            return _extension.LOAD_ERROR
        if _extension.CUDA_MISMATCH:
            return _extension.CUDA_MISMATCH
        if not _KERNELS[(op, "CUDA")]:
            return "hbi_ops was built without its CUDA kernels (reinstall with a CUDA toolkit, HBI_OPS_CUDA=1)"
        return None
    if backend == "triton":
        if isinstance(_TRITON, ImportError):
            return f"triton is not usable here ({_TRITON})"
        if device.type == "cpu" and not _interpreting_triton():
            return "triton runs CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"triton takes CUDA tensors, got {device.type} tensors"
        if not hasattr(_TRITON, op):
            return f"the triton backend has no kernel for {op} yet"
        return None
    raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}")


def implementation(backend: str):
    """The module holding `backend`'s functions (same names and normalised arguments for all)."""
    return _MODULES[backend]


def choose(op: str, device: torch.device, requested=None, args=None) -> str:
    source = "backend"
    if requested is None:
        requested, source = (os.environ.get(ENV_VARIABLE) or None), ENV_VARIABLE
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"{source} must be one of {', '.join(repr(b) for b in BACKENDS)}, got {requested!r}")
        reason = why_not(requested, op, device, args)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {requested!r} is not available: {reason}")
        return requested
    order = DEFAULT_ORDER.get(device.type, ("torch",))
    reasons = []
    for candidate in order:
        reason = why_not(candidate, op, device, args)
        if reason is None:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise RuntimeError(f"{op}: no backend can run on {device}: " + "; ".join(reasons))


def call(op: str, device: torch.device, requested, *args):
    backend = choose(op, device, requested, args)
    if (
        backend != "torch"
        and not torch.compiler.is_compiling()
        and any(isinstance(a, torch.Tensor) and torch._C._functorch.is_gradtrackingtensor(a) for a in args)
    ):
        # PyTorch's op registration gives the compiled and Triton ops' autograd no setup_context, which
        # torch.func's grad transforms need: a clear error instead of PyTorch's.
        raise RuntimeError(
            f"{op}: torch.func's grad transforms (grad, vjp, jacrev, ...) run with backend='torch' "
            f"only; backend {backend!r} supports torch.autograd (and vmap)"
        )
    return getattr(implementation(backend), op)(*args)


def available_backends():
    """Backends that can run at least one operator on some device of this machine."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    names = []
    for backend in BACKENDS:
        if any(why_not(backend, op, device) is None for op in OPERATORS for device in devices):
            names.append(backend)
    return names
