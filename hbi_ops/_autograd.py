"""Autograd rules every backend's ops share."""

import torch


def refuse_double_backward(qualname):
    """Make differentiating the backward op `qualname` (a second derivative: create_graph=True followed by
    another backward) a clear error, instead of PyTorch's silent zeros for a compiled op without an
    autograd formula. The first backward is unaffected (the formula is only called for a second one)."""
    operator = qualname.split("::")[-1].replace("_backward", "")

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{operator}: second derivatives (double backward) are not implemented by this backend; use "
            f"backend='torch' (plain PyTorch, differentiable any number of times) for them"
        )

    torch.library.register_autograd(qualname, backward, setup_context=lambda ctx, inputs, output: None)
