"""Helpers for testing and benchmarking hbi_ops and code built on it (importable from an install)."""

import torch

# Tolerances for comparing a backend with the float64-accurate oracle, by the dtype of the inputs.
TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def padded_mask(rows, length, *, real=None, empty_row=None, device="cpu"):
    """[rows, length] bool mask, padding at the end: `real` real tokens in every row, else a random count in
    1..length a row; row `empty_row` (when given and present) all padding."""
    lengths = torch.full((rows,), real) if real is not None else torch.randint(1, length + 1, (rows,))
    if empty_row is not None and rows > empty_row:
        lengths[empty_row] = 0
    return (torch.arange(length)[None, :] < lengths[:, None]).to(device)


def random_game(batch, num_words, num_frames, dtype=torch.float64, *, masked=True, real_words=None, device="cpu"):
    """Random banzhaf_interaction inputs (sim, text_mask, video_mask, text_weight, video_weight): padded masks
    with at least one real token a row (masked), or `real_words` real words and every frame real, or no
    padding at all."""
    sim = torch.randn(batch, num_words, num_frames, dtype=dtype)
    text_weight = torch.randn(batch, num_words, dtype=dtype)
    video_weight = torch.randn(batch, num_frames, dtype=dtype)
    if real_words is not None or not masked:
        text_mask = padded_mask(batch, num_words, real=num_words if real_words is None else real_words)
        video_mask = padded_mask(batch, num_frames, real=num_frames)
    else:
        text_mask, video_mask = padded_mask(batch, num_words), padded_mask(batch, num_frames)
    return tuple(t.to(device) for t in (sim, text_mask, video_mask, text_weight, video_weight))


def compiled_cpu_backends(op):
    """Backends other than the oracle that run `op` on CPU tensors in this session: cpu always (a missing
    extension is a failure, not a skip), triton where it has a kernel for `op`, run by the interpreter
    (tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU)."""
    from hbi_ops import _dispatch

    names = ["cpu"]
    if _dispatch.why_not("triton", op, torch.device("cpu")) is None:
        names.append("triton")
    return names


def backends_for(op, device):
    """Backends able to run `op` on `device` here, the oracle included (the baseline)."""
    from hbi_ops import _dispatch

    return [b for b in _dispatch.BACKENDS if _dispatch.why_not(b, op, torch.device(device)) is None]


def bench_device():
    """Where benchmarks run: the GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
