"""Attaches every operator's definition (hbi_ops.ops: fake and autograd) to the compiled ops.

The schemas live in csrc/ops.cpp; the kernels register per device in C++. The Triton ops get the same
definitions from hbi_ops.triton.
"""

import torch

from hbi_ops import _extension, ops


def _register():
    for definition in ops.OPERATORS.values():
        ops.register("hbi_ops", definition)

    # closed_form_block_*: the CUDA kernel's code run on CPU tensors, for the tests (no autograd).
    @torch.library.register_fake("hbi_ops::closed_form_block_forward")
    def _(sim, text_mask, video_mask, text_weight, video_weight):
        return torch.empty_like(sim)

    @torch.library.register_fake("hbi_ops::closed_form_block_backward")
    def _(grad, sim, text_mask, video_mask, text_weight, video_weight):
        return torch.empty_like(sim), torch.empty_like(text_weight), torch.empty_like(video_weight)


if _extension.LOAD_ERROR is None:
    _register()
