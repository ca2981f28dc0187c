"""What each operator is, one module per operator: its argument rules, its fake (shapes for torch.compile and
meta tensors), its autograd formula and what each backend cannot run.

    wti.py       wti_similarity         banzhaf.py   banzhaf_interaction
    dpc_knn.py   dpc_knn                merge.py     merge_tokens

Every module holds NAME, ``arguments(...)`` (the public call's arguments, checked and normalised to what
every backend takes), ``fake`` (and ``backward_fake`` where there is a gradient), ``save`` and ``backward``
(the autograd formula in terms of the backend's own backward op) and ``not_supported_reasons(backend,
args)``. :func:`register` attaches the same fake and autograd to the compiled ops (namespace hbi_ops) and to
the Triton ops (hbi_ops_triton), so the two cannot drift apart. No module here imports a backend.
"""

import torch

from hbi_ops._autograd import refuse_double_backward
from hbi_ops.ops import banzhaf, dpc_knn, merge, wti

OPERATORS = {module.NAME: module for module in (wti, banzhaf, dpc_knn, merge)}


def register(namespace, definition):
    """Attach `definition`'s fake and autograd to the ops `namespace`::NAME (and NAME_backward)."""
    name = f"{namespace}::{definition.NAME}"
    torch.library.register_fake(name, definition.fake)
    if not hasattr(definition, "backward"):
        return  # no gradient
    torch.library.register_fake(f"{name}_backward", definition.backward_fake)
    backward_op = getattr(getattr(torch.ops, namespace), f"{definition.NAME}_backward")

    def backward(ctx, *grads):
        return definition.backward(backward_op, ctx, *grads)

    torch.library.register_autograd(name, backward, setup_context=definition.save)
    refuse_double_backward(f"{name}_backward")


def not_supported_reasons(op, backend, args):
    """Why `backend` cannot run `op` on these normalised arguments: [] when it can."""
    return OPERATORS[op].not_supported_reasons(backend, args)
