"""Every public operator, every backend, every device, from one set of samples (hbi_ops.testing.sample_inputs): the
backend against the torch oracle (forward and gradients; same seed, same coalitions), gradcheck in float64
and torch.library.opcheck of the backend's registered op (forward and backward). CUDA rows are marked gpu
(skipped without a GPU, tests/conftest.py); on a GPU machine a backend that cannot run is a failure."""

from unittest import mock

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch
from hbi_ops.testing import FLOAT_DTYPES, TOLERANCE, sample_inputs

DIFFERENTIABLE = ("wti_similarity", "banzhaf_interaction", "merge_tokens")
# gradcheck's tolerances: its defaults, tighter for banzhaf_interaction.
GRADCHECK_TOLERANCE = {"banzhaf_interaction": dict(eps=1e-6, atol=1e-6, rtol=1e-4)}
FULL_JACOBIAN_INPUTS = 150  # inputs of a sample that Triton's interpreter still differentiates in full
# Positions of the registered ops' differentiable arguments (the schemas of csrc/ops.cpp).
OP_GRAD_POSITIONS = {"wti_similarity": (0, 1, 2, 3), "banzhaf_interaction": (0, 3, 4), "merge_tokens": (0, 2)}


def _backends_on(device, compiled):
    marks = [pytest.mark.gpu] if device == "cuda" else []
    names = ("cpu", "triton") if device == "cpu" else ("cuda", "triton")
    names = names if compiled else ("torch", *names)
    return [pytest.param(b, device, marks=marks, id=f"{b}-{device}") for b in names]


BACKEND_DEVICES = _backends_on("cpu", False) + _backends_on("cuda", False)
COMPILED_BACKEND_DEVICES = _backends_on("cpu", True) + _backends_on("cuda", True)


def _require(backend, op, device):
    reason = _dispatch.why_not(backend, op, torch.device(device))
    if reason is None:
        return
    if device == "cpu" and backend == "triton":  # CPU tensors run in Triton's interpreter only
        pytest.skip(reason)
    pytest.fail(f"the {backend} backend cannot run {op} on {device} here: {reason}")


def _run(op, sample, backend, upstream=None):
    """Outputs (a tuple) and, given `upstream` cotangents, the gradients in the sample's leaves."""
    if upstream is not None:
        sample = sample.with_grad()
    out = getattr(hbi_ops, op)(*sample.args, backend=backend, **sample.kwargs)
    outputs = out if isinstance(out, tuple) else (out,)
    if upstream is None:
        return outputs
    loss = sum((o.double() * u.double()).sum() for o, u in zip(outputs, upstream))
    return outputs + torch.autograd.grad(loss, sample.leaves())


def _samples_for(backend, op, device, dtype, requires_grad=False):
    """sample_inputs, the quick ones only where Triton runs in its CPU interpreter."""
    samples = sample_inputs(op, device, dtype, requires_grad)
    return [s for s in samples if s.quick] if _interpreted(backend, device) else samples


def _interpreted(backend, device):
    return backend == "triton" and device == "cpu"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("op", _dispatch.OPERATORS)
def test_matches_oracle(op, backend, device, dtype):
    _require(backend, op, device)
    for sample in sample_inputs(op, device, dtype):
        expected_sample = sample.to("cpu")
        outputs = _run(op, expected_sample, "torch")
        upstream = None
        if op in DIFFERENTIABLE and sample.compare_grads:
            upstream = [torch.randn(o.shape, dtype=torch.float64).to(dtype) for o in outputs]
        expected = _run(op, expected_sample, "torch", upstream)
        got = _run(op, sample, backend, upstream and [u.to(device) for u in upstream])
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert g.dtype == (dtype if e.is_floating_point() else e.dtype), (sample.name, i)
            assert g.device.type == torch.device(device).type, (sample.name, i)
            tolerance = TOLERANCE[dtype] if e.is_floating_point() else dict(rtol=0, atol=0)
            torch.testing.assert_close(g.cpu(), e, **tolerance, msg=lambda m: f"{sample.name} output {i}: {m}")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("op", DIFFERENTIABLE)
def test_gradcheck(op, backend, device):
    _require(backend, op, device)
    for sample in _samples_for(backend, op, device, torch.float64, requires_grad=True):
        if not sample.gradcheck:
            continue
        positions = [i for i in sample.differentiable if sample.args[i] is not None]

        def fn(*leaves, sample=sample, positions=positions):
            args = list(sample.args)
            for i, leaf in zip(positions, leaves):
                args[i] = leaf
            return getattr(hbi_ops, op)(*args, backend=backend, **sample.kwargs)

        # The cuda backward adds with atomics: two runs may differ in the last bits (nondet_tol). Under the
        # interpreter a full Jacobian takes minutes for banzhaf_interaction (a second a call) or more than a
        # few hundred inputs: fast mode there.
        many = op == "banzhaf_interaction" or sum(leaf.numel() for leaf in sample.leaves()) > FULL_JACOBIAN_INPUTS
        fast = _interpreted(backend, device) and many
        tolerance = GRADCHECK_TOLERANCE.get(op, {})
        assert torch.autograd.gradcheck(fn, sample.leaves(), nondet_tol=1e-12, fast_mode=fast, **tolerance), sample.name


def op_arguments(op, sample):
    """The normalised arguments the public operator passes to a backend's registered op."""

    class Captured(Exception):
        pass

    captured = []

    def record(name, device, requested, *args):
        captured.extend(args)
        raise Captured

    with mock.patch.object(_dispatch, "call", record):
        with pytest.raises(Captured):
            getattr(hbi_ops, op)(*sample.args, **sample.kwargs)
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in captured]


def _backward_arguments(op, args, outputs):
    """Arguments of the registered backward op, given the forward op's arguments and outputs."""
    grad = torch.randn_like(outputs[0] if isinstance(outputs, tuple) else outputs)
    if op == "wti_similarity":
        return (grad, *args[:4], *outputs[1:])
    if op == "banzhaf_interaction":
        return (grad, *args)
    return (grad, *args)  # merge_tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend,device", COMPILED_BACKEND_DEVICES)
@pytest.mark.parametrize("op", _dispatch.OPERATORS)
def test_opcheck(op, backend, device, dtype):
    _require(backend, op, device)
    if _interpreted(backend, device) and op == "banzhaf_interaction" and dtype == torch.float64:
        pytest.skip("Triton's CPU interpreter takes about a second a banzhaf call: float32 here, both on a GPU")
    namespace = torch.ops.hbi_ops_triton if backend == "triton" else torch.ops.hbi_ops
    forward = getattr(namespace, op).default
    for sample in _samples_for(backend, op, device, dtype):
        args = op_arguments(op, sample)
        if op not in DIFFERENTIABLE or not _interpreted(backend, device):  # with grad below covers it there
            torch.library.opcheck(forward, args)
        if op not in DIFFERENTIABLE:
            continue
        with_grad = list(args)
        for i in OP_GRAD_POSITIONS[op]:
            with_grad[i] = args[i].clone().requires_grad_(True)
        torch.library.opcheck(forward, with_grad)
        outputs = forward(*args)
        if op == "wti_similarity":
            assert outputs[1].dtype == torch.int32 and outputs[2].dtype == torch.int32
        backward_args = list(_backward_arguments(op, args, outputs))
        torch.library.opcheck(getattr(namespace, f"{op}_backward").default, backward_args)
