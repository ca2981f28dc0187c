"""torchrun support: process group set-up and an all-gather that keeps the gradient."""

import os

import torch
import torch.distributed as dist

_GATHER_GROUP = None  # its own communicator: DDP's gradient all-reduces must not interleave with it


def setup():
    """(rank, world_size, device); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1:
        global _GATHER_GROUP
        _GATHER_GROUP = dist.new_group(list(range(world)))
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: the sum over ranks of the gradient (every rank computed the loss of
    the global batch), sliced to this rank's part. (torch.distributed.nn's all_gather sends
    non-contiguous gradients through gloo's all-to-all and gets them wrong; an all-reduce of a
    contiguous gradient does not.)"""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor, group=_GATHER_GROUP)
        ctx.rows, ctx.rank = tensor.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=_GATHER_GROUP)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor):
    """Concatenate every rank's tensor along dim 0 (equal sizes on every rank); gradients flow back to
    each rank's part."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    if not tensor.is_floating_point():
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous(), group=_GATHER_GROUP)
        return torch.cat(parts)
    return _GatherWithGrad.apply(tensor)


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
