"""Backend choice: defaults, forcing by keyword and environment, and clear refusals."""

import pytest
import torch

import hbi_ops
from hbi_ops import _dispatch


def test_backends_lists_the_cpu_kernels_and_the_oracle():
    names = hbi_ops.backends()
    assert "cpu" in names and "torch" in names
    assert names == [b for b in _dispatch.BACKENDS if b in names]  # order of preference


@pytest.mark.parametrize("op", _dispatch.OPERATORS)
def test_cpu_tensors_default_to_the_cpu_kernels(op, monkeypatch):
    monkeypatch.delenv(_dispatch.ENV_VARIABLE, raising=False)
    assert _dispatch.choose(op, torch.device("cpu")) == "cpu"


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VARIABLE, "torch")
    assert _dispatch.choose("dpc_knn", torch.device("cpu")) == "torch"
    # the keyword wins over the environment
    assert _dispatch.choose("dpc_knn", torch.device("cpu"), "cpu") == "cpu"
    x = torch.randn(2, 6, 4)
    idx = torch.randint(0, 3, (2, 6))
    torch.testing.assert_close(hbi_ops.merge_tokens(x, idx, 3), hbi_ops.merge_tokens(x, idx, 3, backend="cpu"))


def test_unknown_backend_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VARIABLE, "fortran")
    with pytest.raises(ValueError, match="HBI_OPS_BACKEND"):
        hbi_ops.dpc_knn(torch.randn(1, 4, 2), 2, k=2)


def test_unavailable_backend_says_why_and_never_falls_back():
    with pytest.raises(RuntimeError, match="cuda.*CUDA tensors"):
        hbi_ops.wti_similarity(
            torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.rand(2, 3), torch.rand(2, 5), backend="cuda"
        )


@pytest.mark.gpu
@pytest.mark.parametrize("op", _dispatch.OPERATORS)
def test_cuda_tensors_default_to_cuda_then_triton(op, monkeypatch):
    monkeypatch.delenv(_dispatch.ENV_VARIABLE, raising=False)
    device = torch.device("cuda")
    expected = "cuda" if _dispatch.why_not("cuda", op, device) is None else "triton"
    assert _dispatch.choose(op, device) == expected
    assert _dispatch.why_not("cpu", op, device) is not None


def test_a_backend_declines_inputs_it_cannot_run_with_its_reason():
    from hbi_ops import _dispatch as dispatch

    if dispatch.why_not("triton", "dpc_knn", torch.device("cpu")) is not None:
        pytest.skip("triton runs CPU tensors only under TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")
    x = torch.randn(1, 16385, 1)
    with pytest.raises(RuntimeError, match="backend 'triton' is not available: .*N <= 16384.*N=16385"):
        hbi_ops.dpc_knn(x, 2, k=1, backend="triton")
    # the same inputs within the limit run
    assert hbi_ops.dpc_knn(x[:, :40], 2, k=1, backend="triton")[0].shape == (1, 40)


def test_when_no_backend_can_run_the_error_lists_every_reason(monkeypatch):
    from hbi_ops import _dispatch as dispatch

    monkeypatch.delenv(dispatch.ENV_VARIABLE, raising=False)
    monkeypatch.setitem(dispatch.DEFAULT_ORDER, "cpu", ("cuda", "triton"))
    x = torch.randn(1, 16385, 1)
    with pytest.raises(RuntimeError, match="dpc_knn: no backend can run on cpu: cuda: .*CUDA tensors.*; triton: .*"):
        hbi_ops.dpc_knn(x, 2, k=1)
    if dispatch.why_not("triton", "dpc_knn", torch.device("cpu")) is None:
        with pytest.raises(RuntimeError, match="; triton: the triton dpc_knn takes N <= 16384.*N=16385"):
            hbi_ops.dpc_knn(x, 2, k=1)
