"""The rule for NaN and inf, in every backend: padding never matters, whatever it holds; a non-finite value
at a real position propagates as NaN (dpc_knn, whose outputs are indices, still returns valid ones). And
second derivatives: the torch backend has them, the compiled and Triton backends refuse them clearly.
(banzhaf_interaction's share of the rule is in test_banzhaf_extremes.py.)"""

import pytest
import torch

import hbi_ops
from hbi_ops.testing import compiled_cpu_backends, padded_mask

POISONS = [float("nan"), float("inf"), float("-inf")]


def _wti_game():
    text = torch.randn(3, 5, 6, dtype=torch.float64)
    video = torch.randn(4, 3, 6, dtype=torch.float64)
    text_mask, video_mask = padded_mask(3, 5), padded_mask(4, 3)
    text_weight = torch.rand(3, 5, dtype=torch.float64).masked_fill(~text_mask, 0)
    video_weight = torch.rand(4, 3, dtype=torch.float64).masked_fill(~video_mask, 0)
    return text, video, text_weight, video_weight, text_mask, video_mask


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("padding", ["ignore", "zero"])
@pytest.mark.parametrize("poison", POISONS)
def test_wti_padding_never_matters(backend, padding, poison):
    text, video, text_weight, video_weight, text_mask, video_mask = _wti_game()
    clean = hbi_ops.wti_similarity(
        text, video, text_weight, video_weight, text_mask, video_mask, padding=padding, backend=backend
    )
    text = text.masked_fill(~text_mask[..., None], poison)
    video = video.masked_fill(~video_mask[..., None], poison)
    text_weight = text_weight.masked_fill(~text_mask, poison)
    poisoned = hbi_ops.wti_similarity(
        text, video, text_weight, video_weight, text_mask, video_mask, padding=padding, backend=backend
    )
    torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("poison", POISONS)
def test_wti_nonfinite_at_a_real_token_is_nan(backend, poison):
    text, video, text_weight, video_weight, text_mask, video_mask = _wti_game()
    text[1, 0, 2] = poison  # a real word of text 1
    video_weight[2, 0] = poison  # a real frame's weight of video 2
    score = hbi_ops.wti_similarity(text, video, text_weight, video_weight, text_mask, video_mask, backend=backend)
    expected_nan = torch.zeros(3, 4, dtype=torch.bool)
    expected_nan[1, :] = True
    expected_nan[:, 2] = True
    assert torch.equal(torch.isnan(score), expected_nan)


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("dpc_knn"))
@pytest.mark.parametrize("poison", POISONS)
def test_dpc_knn_padding_never_matters(backend, poison):
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    mask = padded_mask(3, 9)
    clean = hbi_ops.dpc_knn(x, 3, k=2, mask=mask, backend=backend)
    poisoned = hbi_ops.dpc_knn(x.masked_fill(~mask[..., None], poison), 3, k=2, mask=mask, backend=backend)
    assert torch.equal(poisoned[0], clean[0]) and torch.equal(poisoned[1], clean[1])


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("dpc_knn"))
def test_dpc_knn_nonfinite_at_a_real_token_gives_valid_indices(backend):
    x = torch.randn(2, 8, 4, dtype=torch.float64)
    x[0, 2, 1] = float("nan")
    x[1, 5, 0] = float("inf")
    idx, centers = hbi_ops.dpc_knn(x, 3, k=2, backend=backend)
    assert ((idx >= 0) & (idx < 3)).all() and ((centers >= 0) & (centers < 8)).all()
    for b in range(2):
        assert len(set(centers[b].tolist())) == 3
        assert torch.equal(idx[b, centers[b]], torch.arange(3))  # each centre in its own cluster


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("merge_tokens"))
def test_merge_propagates_nan_to_its_cluster_only(backend):
    x = torch.randn(1, 5, 3, dtype=torch.float64)
    x[0, 1, 2] = float("nan")
    idx = torch.tensor([[0, 1, 0, 2, 1]])
    out = hbi_ops.merge_tokens(x, idx, 3, backend=backend)
    nan = torch.zeros(1, 3, 3, dtype=torch.bool)
    nan[0, 1, 2] = True  # the cluster of token 1, in the feature that is NaN
    assert torch.equal(torch.isnan(out), nan)


# ------------------------------------------------------------------------------------------------
# Second derivatives


def _second_derivative_cases():
    text, video, text_weight, video_weight, text_mask, video_mask = _wti_game()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    idx = torch.randint(0, 3, (2, 5))
    sim = torch.randn(2, 4, 3, dtype=torch.float64)
    return {
        "wti_similarity": (
            (text, video, text_weight, video_weight),
            lambda b, t, v, p, q: hbi_ops.wti_similarity(t, v, p, q, text_mask, video_mask, backend=b),
        ),
        "merge_tokens": (
            (x, torch.rand(2, 5, dtype=torch.float64)),
            lambda b, x, w: hbi_ops.merge_tokens(x, idx, 3, weight=w, backend=b),
        ),
        "banzhaf_interaction": (
            (sim, torch.randn(2, 4, dtype=torch.float64)),
            lambda b, s, w: hbi_ops.banzhaf_interaction(s, text_weight=w, estimator="paired", num_samples=4, backend=b),
        ),
    }


@pytest.mark.parametrize("backend", compiled_cpu_backends("merge_tokens"))
@pytest.mark.parametrize("op", ["wti_similarity", "merge_tokens", "banzhaf_interaction"])
def test_second_derivatives_are_refused_clearly(backend, op):
    inputs, fn = _second_derivative_cases()[op]
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(backend, *leaves)
    first = torch.autograd.grad((out * out).sum(), leaves, create_graph=True)
    with pytest.raises(RuntimeError, match=f"{op}: second derivatives .* backend='torch'"):
        torch.autograd.grad(sum(g.sum() for g in first), leaves)
    # The first derivative alone is unaffected by the refusal.
    plain = torch.autograd.grad((fn(backend, *leaves) ** 2).sum(), leaves)
    for a, b in zip(first, plain):
        torch.testing.assert_close(a.detach(), b)


@pytest.mark.parametrize("op", ["wti_similarity", "merge_tokens"])
def test_torch_backend_has_second_derivatives(op):
    inputs, fn = _second_derivative_cases()[op]
    leaves = tuple(x.clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradgradcheck(lambda *a: fn("torch", *a), leaves, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("wti_similarity"))
@pytest.mark.parametrize("poison", POISONS)
def test_wti_padding_never_matters_to_gradients(backend, poison):
    def grads(text, video, text_weight, video_weight):
        leaves = [t.clone().requires_grad_() for t in (text, video, text_weight, video_weight)]
        score = hbi_ops.wti_similarity(*leaves, text_mask, video_mask, backend=backend)
        score.backward(upstream)
        return [leaf.grad for leaf in leaves]

    text, video, text_weight, video_weight, text_mask, video_mask = _wti_game()
    upstream = torch.randn(3, 4, dtype=torch.float64)
    clean = grads(text, video, text_weight, video_weight)
    poisoned = grads(
        text.masked_fill(~text_mask[..., None], poison),
        video.masked_fill(~video_mask[..., None], poison),
        text_weight.masked_fill(~text_mask, poison),
        video_weight.masked_fill(~video_mask, poison),
    )
    for got, expected in zip(poisoned, clean):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not poisoned[0][~text_mask].any() and not poisoned[1][~video_mask].any()
