"""Inputs at the edges of what the operators take: empty token axes, huge sample counts, meta tensors,
torch.func transforms."""

import pytest
import torch

import hbi_ops
from hbi_ops import philox
from hbi_ops.reference import banzhaf as reference_banzhaf
from hbi_ops.testing import BANZHAF_SETTINGS as SETTINGS
from hbi_ops.testing import compiled_cpu_backends, random_game


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("banzhaf_interaction"))
@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 3, 0), (0, 3, 2)])
def test_banzhaf_empty_axes(backend, shape):
    for definition, estimator in SETTINGS:
        out = hbi_ops.banzhaf_interaction(
            torch.randn(*shape), definition=definition, estimator=estimator, num_samples=3, backend=backend
        )
        assert out.shape == shape


def test_torch_backend_draws_samples_in_bounded_chunks(monkeypatch):
    # 2^31 - 1 samples of a 1 x 1 game once asked for 17 GB at once: the draws are chunked.
    sizes = []
    draw = philox.coalitions

    def recording(seed, samples, text_mask, video_mask):
        sizes.append(len(samples))
        return draw(seed, samples, text_mask, video_mask)

    monkeypatch.setattr(philox, "coalitions", recording)
    num_samples = 3 * reference_banzhaf.SAMPLE_CHUNK + 5
    for estimator in ("paired", "msr"):
        sizes.clear()
        out = hbi_ops.banzhaf_interaction(
            torch.randn(1, 1, 1), estimator=estimator, num_samples=num_samples, backend="torch"
        )
        assert torch.isfinite(out).all()
        assert sum(sizes) == num_samples and max(sizes) <= reference_banzhaf.SAMPLE_CHUNK


def test_meta_tensors_give_shapes():
    meta = dict(device="meta")
    assert hbi_ops.banzhaf_interaction(torch.randn(2, 30, 12, **meta)).shape == (2, 30, 12)
    assert hbi_ops.banzhaf_interaction(
        torch.randn(2, 20, 10, **meta), definition="reference", estimator="exact"
    ).shape == (2, 20, 10)
    assert hbi_ops.wti_similarity(
        torch.randn(3, 4, 5, **meta), torch.randn(2, 6, 5, **meta), torch.rand(3, 4, **meta), torch.rand(2, 6, **meta)
    ).shape == (3, 2)
    idx, centers = hbi_ops.dpc_knn(torch.randn(2, 7, 3, **meta), 3)
    assert idx.shape == (2, 7) and centers.shape == (2, 3)
    with pytest.raises(ValueError, match="meta tensors"):
        hbi_ops.banzhaf_interaction(
            torch.randn(2, 20, 10, **meta), definition="reference", estimator="exact", backend="torch"
        )


@pytest.mark.parametrize("backend", ["torch"] + compiled_cpu_backends("merge_tokens"))
def test_vmap(backend):
    x, idx = torch.randn(3, 5, 4), torch.randint(0, 2, (3, 5))
    batched = torch.func.vmap(lambda a, i: hbi_ops.merge_tokens(a[None], i[None], 2, backend=backend)[0])(x, idx)
    torch.testing.assert_close(batched, hbi_ops.merge_tokens(x, idx, 2, backend=backend))


@pytest.mark.parametrize("backend", compiled_cpu_backends("banzhaf_interaction"))
def test_grad_transforms_are_a_clear_error_outside_torch(backend):
    game = random_game(1, 3, 2)
    with pytest.raises(RuntimeError, match="torch.func's grad transforms .* backend='torch' only"):
        torch.func.grad(lambda s: hbi_ops.banzhaf_interaction(s, *game[1:], backend=backend).sum())(game[0])
    expected = torch.autograd.grad(hbi_ops.banzhaf_interaction(game[0].requires_grad_(), *game[1:]).sum(), game[0])[0]
    got = torch.func.grad(lambda s: hbi_ops.banzhaf_interaction(s, *game[1:], backend="torch").sum())(game[0].detach())
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "definition,estimator",
    [("textbook", "paired"), ("textbook", "msr"), ("reference", "paired"), ("reference", "exact")],
)
def test_torch_backend_sampled_estimators_compile_quickly(definition, estimator):
    # Traced, they are one opaque op: fullgraph compiles in seconds (it ran for minutes), with gradients.
    game = random_game(2, 5, 4)

    def fn(sim, text_weight):
        return hbi_ops.banzhaf_interaction(
            sim,
            game[1],
            game[2],
            text_weight,
            game[4],
            definition=definition,
            estimator=estimator,
            num_samples=12,
            seed=5,
            backend="torch",
        )

    leaves = [x.clone().requires_grad_() for x in (game[0], game[3])]
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(*leaves)
    eager = fn(*leaves)
    torch.testing.assert_close(out, eager)
    for g, e in zip(torch.autograd.grad(out.sum(), leaves), torch.autograd.grad(eager.sum(), leaves)):
        torch.testing.assert_close(g, e)
