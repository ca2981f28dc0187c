import os
import sys
import zlib

import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter; the switch must be set
# before triton is imported (hbi_ops imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Test helpers shared by the test modules (brute_force.py): importable by name under --import-mode=importlib.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "ops"))


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
