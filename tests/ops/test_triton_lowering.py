"""The Triton kernels lowered for a GPU, on a machine without one.

The other CPU tests run the Triton kernels in Triton's interpreter, which checks what they compute but
never compiles them. Here every launch the triton backend makes with its GPU settings (the tile sizes,
warps and libdevice calls it picks for CUDA tensors) is recorded without running, at the full sizes and
a few odd ones, for every dtype, definition and estimator, forward and backward; then each distinct
kernel variant is compiled by Triton's own compiler and ptxas to an sm_90 cubin (the H100/H200) in a
subprocess without TRITON_INTERPRET. A variant must compile and fit the card's shared memory per block.

As a script it prints registers, spilled bytes and shared memory per variant:
    python tests/ops/test_triton_lowering.py [--arch 90]
"""

import argparse
import concurrent.futures
import contextlib
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

# Shared memory one block may opt in to, by compute capability (CUDA programming guide, table 21).
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

_TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="with a GPU, tests/gpu compiles and runs every kernel",
)


# ------------------------------------------------------------------------------------------------------------
# Recording the launches (this process: TRITON_INTERPRET=1)
# ------------------------------------------------------------------------------------------------------------


def _argument_type(value):
    """Triton's signature type of a runtime argument, as its launcher would derive it."""
    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a runtime argument of type {type(value).__name__}")


def _constexpr_value(value):
    """A JSON form of a constexpr argument: tl dtypes by name, the rest as they are."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    return value


def _variant(fn, args, kwargs):
    """(module, kernel, signature, constexprs, options) of one launch."""
    import triton.language as tl

    parameters = inspect.signature(fn).parameters
    bound = inspect.signature(fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in parameters})
    bound.apply_defaults()
    signature, constexprs = {}, {}
    for name, parameter in parameters.items():
        is_constexpr = parameter.annotation is tl.constexpr or "constexpr" in str(parameter.annotation)
        if is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = _constexpr_value(bound.arguments[name])
        else:
            signature[name] = _argument_type(bound.arguments[name])
    options = {k: v for k, v in kwargs.items() if k not in parameters}
    return dict(module=fn.__module__, kernel=fn.__name__, signature=signature, constexprs=constexprs, options=options)


@contextlib.contextmanager
def recorded_launches(multiprocessors=132):
    """Every Triton launch inside records its variant instead of running; the triton backend takes its GPU
    settings (as for CUDA tensors on a card with `multiprocessors` SMs). Outputs are left unwritten."""
    from triton.runtime.interpreter import InterpretedFunction

    from hbi_ops.triton import _launch

    variants = {}

    def record(self, *args, grid, warmup, **kwargs):
        variant = _variant(self.fn, args, kwargs)
        variants.setdefault(json.dumps(variant, sort_keys=True), variant)

    patch = pytest.MonkeyPatch()
    patch.setattr(InterpretedFunction, "run", record)
    patch.setattr(_launch, "compiled", lambda tensor: True)
    patch.setattr(_launch, "multiprocessor_count", lambda device: multiprocessors)
    try:
        yield variants
    finally:
        patch.undo()


def _banzhaf_launches(dtype):
    import hbi_ops
    from hbi_ops.testing import padded_mask

    settings = [("textbook", "paired"), ("reference", "paired"), ("textbook", "msr"), ("textbook", "exact")]
    exact = [("reference", "exact")]
    # full size (B=128, T=32 with 20 real words, V=12), two tiles of players (T + V > 128), a long text with
    # few frames (the closed form's tile loops), enumerated games
    for (batch, words, frames, real), cases in (
        ((128, 32, 12, 20), settings),
        ((2, 100, 40, None), settings),
        ((2, 512, 3, None), [("textbook", "exact")]),
        ((4, 8, 6, None), exact),
        ((3, 5, 4, None), exact),
    ):
        for definition, estimator in cases:
            sim = torch.randn(batch, words, frames, dtype=dtype, requires_grad=True)
            weights = [torch.randn(batch, n, dtype=dtype, requires_grad=True) for n in (words, frames)]
            masks = padded_mask(batch, words, real=real), padded_mask(batch, frames)
            if estimator == "exact":
                masks = torch.ones(batch, words, dtype=torch.bool), torch.ones(batch, frames, dtype=torch.bool)
            out = hbi_ops.banzhaf_interaction(
                sim,
                masks[0],
                masks[1],
                weights[0],
                weights[1],
                definition=definition,
                estimator=estimator,
                num_samples=1000,
                backend="triton",
            )
            out.backward(torch.randn_like(out))


def _wti_launches(dtype):
    import hbi_ops
    from hbi_ops.testing import padded_mask

    # The MSR-VTT retrieval size, long texts, many frames, one frame, narrow features
    for a, b, words, frames, width in (
        (1000, 1000, 32, 12, 512),
        (9, 11, 150, 7, 33),
        (6, 5, 20, 200, 16),
        (33, 260, 128, 1, 8),
    ):
        text = torch.randn(a, words, width, dtype=dtype, requires_grad=True)
        video = torch.randn(b, frames, width, dtype=dtype, requires_grad=True)
        text_weight = torch.softmax(torch.randn(a, words), -1).to(dtype).requires_grad_()
        video_weight = torch.softmax(torch.randn(b, frames), -1).to(dtype).requires_grad_()
        for padding in ("ignore", "zero"):
            score = hbi_ops.wti_similarity(
                text,
                video,
                text_weight,
                video_weight,
                padded_mask(a, words),
                padded_mask(b, frames),
                padding=padding,
                backend="triton",
            )
            score.backward(torch.randn_like(score))


def _dpc_knn_and_merge_launches(dtype):
    import hbi_ops
    from hbi_ops.testing import padded_mask

    # full sizes: text (masked), frames, image tokens (the tiled path); a small tiled size
    for batch, n, width, clusters, k, masked in (
        (128, 32, 512, 16, 3, True),
        (128, 12, 512, 6, 3, False),
        (32, 3136, 64, 784, 5, False),
        (3, 100, 24, 10, 4, True),
    ):
        x = torch.randn(batch, n, width, dtype=dtype)
        mask = padded_mask(batch, n) if masked else None
        idx, _centers = hbi_ops.dpc_knn(x, clusters, k=k, mask=mask, backend="triton")
        idx = torch.randint(0, clusters, (batch, n))  # the launch above wrote nothing
        x.requires_grad_()
        weight = torch.rand(batch, n, dtype=dtype, requires_grad=True)
        merged = hbi_ops.merge_tokens(x, idx, clusters, weight=weight, backend="triton")
        merged.backward(torch.randn_like(merged))


OPERATORS = {
    "banzhaf_interaction": _banzhaf_launches,
    "wti_similarity": _wti_launches,
    "dpc_knn+merge_tokens": _dpc_knn_and_merge_launches,
}
MODULES = {
    "banzhaf_interaction": ["banzhaf", "banzhaf_cells", "banzhaf_value", "banzhaf_closed_form"],
    "wti_similarity": ["wti"],
    "dpc_knn+merge_tokens": ["dpc_knn", "merge"],
}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def launch_variants(operators=OPERATORS):
    """The distinct kernel variants the triton backend launches on a GPU for `operators`."""
    with recorded_launches() as variants:
        for launches in operators.values():
            for dtype in DTYPES:
                launches(dtype)
    return list(variants.values())


# ------------------------------------------------------------------------------------------------------------
# Compiling them (a subprocess: no TRITON_INTERPRET, so triton.jit gives compilable kernels)
# ------------------------------------------------------------------------------------------------------------


def _compile_one(variant, arch):
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    fn = getattr(importlib.import_module(variant["module"]), variant["kernel"])
    constexprs = {
        name: tl.dtype(value["tl_dtype"]) if isinstance(value, dict) else value
        for name, value in variant["constexprs"].items()
    }
    source = triton.compiler.ASTSource(fn=fn, signature=variant["signature"], constexprs=constexprs)
    result = dict(kernel=variant["kernel"], constexprs=variant["constexprs"], options=variant["options"])
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=variant["options"])
    except Exception as error:  # noqa: BLE001 - reported per variant, the test fails on any
        return dict(result, error=f"{type(error).__name__}: {error}"[:4000])
    usage = _resource_usage(compiled.asm["cubin"])
    return dict(result, shared=compiled.metadata.shared, **usage)


def _resource_usage(cubin):
    """Registers and spill (local) bytes per thread of a cubin, from the cuobjdump that Triton ships."""
    import re
    import shutil
    import tempfile

    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = bundled if os.path.exists(bundled) else shutil.which("cuobjdump")
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        try:
            text = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True).stdout
        except OSError:
            return {}
    registers = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    return dict(
        registers=int(registers.group(1)) if registers else None,
        spill_bytes=max(int(stack.group(1)) if stack else 0, int(local.group(1)) if local else 0),
    )


def compile_variants(variants, arch):
    """Compile in parallel (one process per core); results in the order of `variants`."""
    workers = max(1, min(len(variants), os.cpu_count() or 1))
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_compile_one, variants, [arch] * len(variants)))


def compile_in_subprocess(variants, arch):
    import hbi_ops

    # The child compiles the sources this process recorded (a checkout or the installed package)
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(hbi_ops.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, __file__, "--compile", "--arch", str(arch)],
        env=environment,
        input=json.dumps(variants),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(process.stdout)


# ------------------------------------------------------------------------------------------------------------
# The test
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operator", list(OPERATORS))
def test_every_gpu_launch_compiles_for_sm90(operator):
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    variants = launch_variants({operator: OPERATORS[operator]})
    kernels = {
        (value.fn.__module__, name)  # where the kernel is defined, not where it is imported
        for module in (importlib.import_module(f"hbi_ops.triton.{m}") for m in MODULES[operator])
        for name, value in vars(module).items()
        if isinstance(value, InterpretedFunction) and name.endswith("_kernel")
    }
    launched = {(v["module"], v["kernel"]) for v in variants}
    assert kernels and kernels <= launched, f"{operator}: never launched here: {sorted(kernels - launched)}"
    results = compile_in_subprocess(variants, 90)
    failures = [f"{r['kernel']} {r['constexprs']} {r['options']}:\n{r['error']}" for r in results if "error" in r]
    assert not failures, f"{len(failures)} of {len(results)} variants failed to compile:\n" + "\n".join(failures)
    too_big = [
        f"{r['kernel']} {r['constexprs']}: {r['shared']} bytes"
        for r in results
        if r["shared"] > SHARED_MEMORY_LIMIT[90]
    ]
    assert not too_big, "shared memory over the sm_90 limit of one block:\n" + "\n".join(too_big)


def _main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--compile", action="store_true", help="(internal) compile the JSON variants on stdin")
    args = parser.parse_args()
    if args.compile:
        json.dump(compile_variants(json.load(sys.stdin), args.arch), sys.stdout)
        return
    os.environ["TRITON_INTERPRET"] = "1"  # record with the interpreter's kernels, before triton is imported
    results = compile_in_subprocess(launch_variants(), args.arch)
    limit = SHARED_MEMORY_LIMIT.get(args.arch)
    print(f"{'kernel':<28} {'warps':>5} {'regs':>5} {'spill':>6} {'shared':>7}  constexprs")
    for r in results:
        if "error" in r:
            print(f"{r['kernel']:<28} FAILED {r['constexprs']}\n{r['error']}")
            continue
        flag = " OVER THE LIMIT" if limit and r["shared"] > limit else ""
        print(
            f"{r['kernel']:<28} {r['options'].get('num_warps', 4):>5} {r.get('registers')!s:>5} "
            f"{r.get('spill_bytes')!s:>6} {r['shared']:>7}  {r['constexprs']}{flag}"
        )


if __name__ == "__main__":
    _main()
