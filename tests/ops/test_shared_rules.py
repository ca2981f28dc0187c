"""The rules the CPU and CUDA kernels share (csrc/*/..._rules.h), checked through the CPU kernels: merge's
ordered sums (tokens ascending, one rounding per operation), WTI's first-maximum tie rule and the DPC-kNN
score order's tie rule (lower index first)."""

import torch

import hbi_ops  # noqa: F401  (loads the extension)


def test_merge_forward_is_the_ordered_float32_sum():
    torch.manual_seed(0)
    batch, n, width, clusters = 2, 9, 5, 3
    x = torch.randn(batch, n, width)
    idx = torch.randint(0, clusters, (batch, n))
    weight = torch.rand(batch, n) + 0.1
    got = torch.ops.hbi_ops.merge_tokens(x, idx, weight, clusters)
    epsilon = torch.tensor(1e-6, dtype=torch.float32)
    for b in range(batch):
        for c in range(clusters):
            total = torch.zeros((), dtype=torch.float32)
            summed = torch.zeros(width, dtype=torch.float32)
            for t in range(n):  # ascending token order, W += w and S += w * x rounded once each
                if int(idx[b, t]) == c:
                    total = total + weight[b, t]
                    summed = summed + weight[b, t] * x[b, t]
            assert torch.equal(got[b, c], summed / (total + epsilon))


def test_wti_ties_go_to_the_first_maximum():
    text = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # two equal words
    video = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # frames 0 and 1 equal
    text_weight = torch.full((1, 2), 0.5)
    video_weight = torch.full((1, 3), 1.0 / 3)
    text_mask = torch.ones(1, 2, dtype=torch.bool)
    video_mask = torch.ones(1, 3, dtype=torch.bool)
    _, t2v, v2t = torch.ops.hbi_ops.wti_similarity(text, video, text_weight, video_weight, text_mask, video_mask, False)
    assert t2v.tolist() == [[[0, 0]]]
    assert v2t.tolist() == [[[0, 0, 0]]]


def test_dpc_knn_equal_tokens_rank_by_index():
    x = torch.zeros(1, 6, 3)  # every distance 0: equal density, equal score
    mask = torch.ones(1, 6, dtype=torch.bool)
    idx, centers = torch.ops.hbi_ops.dpc_knn(x, mask, 3, 2)
    assert centers.tolist() == [[0, 1, 2]]
    assert idx.tolist() == [[0, 1, 2, 0, 0, 0]]
