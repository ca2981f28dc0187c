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
