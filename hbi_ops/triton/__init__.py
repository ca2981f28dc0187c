"""The `triton` backend: Triton kernels for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1).

One module per operator (wti.py, banzhaf.py, dpc_knn.py, merge.py). Each registers its kernels as
torch.library custom ops in the `hbi_ops_triton` namespace, with autograd and fake implementations,
and defines the backend function named after the operator, taking the arguments hbi_ops._api
normalises (the same as every other backend's).
"""

import importlib

import triton  # noqa: F401  (an ImportError here tells the dispatcher that triton is unusable)

_OPERATORS = {"wti": "wti_similarity", "banzhaf": "banzhaf_interaction", "dpc_knn": "dpc_knn", "merge": "merge_tokens"}

_MODULES = {}
for _module_name, _op in _OPERATORS.items():
    try:
        _module = importlib.import_module(f"{__name__}.{_module_name}")
    except ModuleNotFoundError as _error:
        if _error.name != f"{__name__}.{_module_name}":
            raise
        continue  # not written yet: the dispatcher says "no kernel for <op> yet"
    globals()[_op] = getattr(_module, _op)
    _MODULES[_op] = _module


def not_supported_reasons(op, device, args):
    """Why the triton kernels cannot run `op` on these (normalised) arguments: [] when they can."""
    module = _MODULES.get(op)
    return module.not_supported_reasons(*args) if hasattr(module, "not_supported_reasons") else []
