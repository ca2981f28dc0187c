"""merge_tokens (docs/merge.md): argument rules, fake, autograd and each backend's limits."""

import torch

from hbi_ops import _checks

NAME = "merge_tokens"


def arguments(x, idx, num_clusters, weight):
    """The public call's arguments, checked, as every backend takes them: (x, idx int64, weight,
    num_clusters), x and weight of one float dtype."""
    _checks.tensor("x", x, dim=3, floating=True)
    batch, num_tokens, _ = x.shape
    _checks.tensor("idx", idx)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"idx must be an integer tensor, got {idx.dtype}")
    _checks.shape("idx", idx, (batch, num_tokens))
    num_clusters = _checks.integer("num_clusters", num_clusters, low=1)
    _checks.same_device("x", x, idx=idx, weight=weight)
    weight = _checks.floating_or_default("weight", weight, (batch, num_tokens), x, 1.0)
    # Reading idx on a GPU would synchronise, and under torch.compile it would break the graph: there the
    # cuda and triton kernels fail a device-side assertion instead (the error surfaces at the next sync).
    if idx.device.type == "cpu" and idx.numel() > 0 and _checks.readable(idx):
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= num_clusters:
            raise ValueError(
                f"idx must hold cluster indices in [0, {num_clusters - 1}] (num_clusters="
                f"{num_clusters}), got values in [{low}, {high}]"
            )
    dtype = _checks.common_float_dtype(x, weight)
    return x.to(dtype), idx.to(torch.int64), weight.to(dtype), num_clusters


def not_supported_reasons(backend, args):
    return []


def fake(x, idx, weight, num_clusters):
    batch, _num_tokens, width = x.shape
    return x.new_empty((batch, num_clusters, width))


def backward_fake(grad, x, idx, weight, num_clusters):
    return torch.empty_like(x), torch.empty_like(weight)


# The backward recomputes the cluster sums in the accumulate type rather than saving the (rounded) output.
def save(ctx, inputs, output):
    x, idx, weight, num_clusters = inputs
    ctx.save_for_backward(x, idx, weight)
    ctx.num_clusters = num_clusters


def backward(backward_op, ctx, grad):
    x, idx, weight = ctx.saved_tensors
    grad_x, grad_weight = backward_op(grad.contiguous(), x, idx, weight, ctx.num_clusters)
    return grad_x, None, grad_weight, None
