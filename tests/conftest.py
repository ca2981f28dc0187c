import os
import zlib

import pytest
import torch

import hbi_ops

# Tolerances for comparing a backend with the float64-accurate oracle, by the dtype of the inputs.
TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compiled_cpu_backends():
    """Backends other than the oracle that run CPU tensors in this session: cpu always (a missing
    extension is a failure, not a skip), triton only under TRITON_INTERPRET=1."""
    names = ["cpu"]
    if os.environ.get("TRITON_INTERPRET") == "1" and "triton" in hbi_ops.backends():
        names.append("triton")
    return names


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A fixed seed per test: fresh random inputs that reproduce when a test fails.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on the device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
