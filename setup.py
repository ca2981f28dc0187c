"""Builds hbi_ops._C: the C++ kernels always, the CUDA kernels when a toolkit and a CUDA torch exist.

Environment:
  HBI_OPS_CUDA=1|0        force the CUDA kernels on (error if impossible) or off; unset = auto.
  CUDA_HOME               the CUDA toolkit (else /usr/local/cuda). torch's own guess follows
                          `which nvcc`, which is a wrapper script on some machines, so we set it first.
  TORCH_CUDA_ARCH_LIST    architectures to build for (default "8.0;9.0+PTX": A100, H100/H200, newer via PTX).
  MAX_JOBS                parallel compile jobs (ninja).
"""

import glob
import os
import sys

from setuptools import find_packages, setup


def _find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def _say(message):
    print(f"[hbi_ops setup] {message}", file=sys.stderr)


def _cuda_library_headers():
    """Headers of the CUDA libraries that pip's CUDA build of torch ships (cusparse.h, cublas.h, ...): ATen's
    CUDA headers include them, and a bare toolkit (nvcc only) may not have them."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    folders = []
    for root in spec.submodule_search_locations if spec else []:
        for name in sorted(os.listdir(root)):
            include = os.path.join(root, name, "include")
            if os.path.exists(os.path.join(include, "cusparse.h")):
                folders.append(include)
    return folders


def _want_cuda(cuda_sources):
    switch = os.environ.get("HBI_OPS_CUDA", "").strip().lower()
    reasons = []
    if not cuda_sources:
        reasons.append("there are no .cu sources")
    if torch.version.cuda is None:
        reasons.append("this torch is a CPU-only build")
    if _cuda_home is None:
        reasons.append("no CUDA toolkit (set CUDA_HOME)")
    if switch in ("0", "off", "false", "no"):
        _say("HBI_OPS_CUDA=0: building the CPU kernels only")
        return False
    if switch in ("1", "on", "true", "yes", "force"):
        if reasons:
            raise RuntimeError("HBI_OPS_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(reasons))
        return True
    if reasons:
        _say("building the CPU kernels only: " + "; ".join(reasons))
        return False
    return True


def _extensions():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    use_cuda = _want_cuda(cuda_sources)

    # -ffp-contract=off: no fused multiply-adds the source does not write, so that the kernels round as the
    # tests expect (bit-equal results across backends where they ask for them). torch adds the C++ standard.
    cxx_flags = ["-O3", "-ffp-contract=off"]
    link_flags = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        # at::parallel_for is inlined into our code: with torch's OpenMP it needs -fopenmp, else it runs serially.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    else:
        _say("torch was built without OpenMP: the CPU kernels use torch's own parallel backend")
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra_compile_args = {"cxx": cxx_flags}
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        _say(
            f"building CUDA kernels with {_cuda_home} for TORCH_CUDA_ARCH_LIST="
            f"{os.environ['TORCH_CUDA_ARCH_LIST']} (torch built with CUDA {torch.version.cuda})"
        )
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
        extension_type, sources = CUDAExtension, cpp_sources + cuda_sources
        include_dirs += [
            d for d in _cuda_library_headers() if not os.path.exists(os.path.join(_cuda_home, "include", "cusparse.h"))
        ]
    else:
        extension_type, sources = CppExtension, cpp_sources
    _say(f"compiling {len(sources)} sources")
    return [
        extension_type(
            name="hbi_ops._C",
            sources=sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=link_flags,
        )
    ]


setup(
    packages=find_packages(include=["hbi_ops", "hbi_ops.*", "hbi_model", "hbi_model.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
