import glob
import os
import sys
import tempfile
import zlib

import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter; the switch must be set
# before triton is imported (hbi_ops imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _built_in_place():
    return bool(glob.glob(os.path.join(CHECKOUT, "hbi_ops", "_C.*")))


def _test_a_built_hbi_ops():
    """The tests test a built hbi_ops: the installed one, or the checkout's after an in-place build.

    `python -m pytest` puts the working directory first on sys.path; in the checkout that is the source
    tree, whose hbi_ops has no compiled _C unless built in place: without one, the checkout leaves
    sys.path so that the installed build is imported; with one, the checkout is first on sys.path
    wherever pytest was started. If neither is built, stop at once and say how."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != CHECKOUT]
    if _built_in_place():
        sys.path.insert(0, CHECKOUT)
    try:
        import hbi_ops
    except ImportError as error:
        pytest.exit(
            f"hbi_ops is not installed, and the checkout {CHECKOUT} is not built in place ({error}). Install "
            f"it (pip install --no-build-isolation '.[model]') or build it in place (python setup.py "
            f"build_ext --inplace).",
            returncode=4,
        )
    from hbi_ops import _extension

    if _extension.LOAD_ERROR is not None:
        pytest.exit(
            f"the tests imported hbi_ops from {os.path.dirname(hbi_ops.__file__)}, which has no usable "
            f"compiled extension ({_extension.LOAD_ERROR}). Install it (pip install --no-build-isolation "
            f"'.[model]') or build it in place (python setup.py build_ext --inplace).",
            returncode=4,
        )
    return hbi_ops


HBI_OPS = _test_a_built_hbi_ops()
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(HBI_OPS.__file__)))

# Every Python the tests start imports the same hbi_ops: its root first on PYTHONPATH, and a working
# directory outside the checkout (`python -m` and `-c` put the working directory before PYTHONPATH).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
_WORKING_DIRECTORY = tempfile.TemporaryDirectory(prefix="hbi-tests-")
os.chdir(_WORKING_DIRECTORY.name)

# Test helpers shared by the test modules (brute_force.py): importable by name under --import-mode=importlib.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "ops"))


def pytest_report_header(config):
    return f"hbi_ops: {os.path.dirname(HBI_OPS.__file__)} (backends {', '.join(HBI_OPS.backends())})"


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
