"""Launch settings the Triton kernels share.

Tile sizes, warps and libdevice calls are chosen for a GPU when the kernels run compiled (CUDA tensors)
and for Triton's interpreter otherwise (CPU tensors under TRITON_INTERPRET=1). Every module asks
`compiled(tensor)` through this module, so tests/ops/test_triton_lowering.py can pretend a GPU and
compile the GPU settings on a machine without one.
"""

import contextlib

import torch

_MULTIPROCESSORS = {}


def compiled(tensor):
    """Whether the kernels for `tensor` run compiled for a GPU rather than in the interpreter."""
    return tensor.is_cuda


def multiprocessor_count(device):
    """Streaming multiprocessors of a CUDA device (cached: the query costs microseconds)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _MULTIPROCESSORS:
        _MULTIPROCESSORS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _MULTIPROCESSORS[index]


def device_guard(tensor):
    """Launch on the tensor's device: Triton launches on the current one."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def pair_inputs(sim, text_mask, video_mask, text_weight, video_weight):
    """banzhaf_interaction's inputs as its kernels read them: contiguous, bool masks, weights in sim's dtype."""

    def as_bool(mask):
        return (mask if mask.dtype == torch.bool else mask != 0).contiguous()

    return (
        sim.contiguous(),
        as_bool(text_mask),
        as_bool(video_mask),
        text_weight.to(sim.dtype).contiguous(),
        video_weight.to(sim.dtype).contiguous(),
    )
