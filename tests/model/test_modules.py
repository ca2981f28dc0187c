"""Shapes, masking and float64 gradients of the model's modules."""

import torch

from hbi_model.encoders import CLIPEncoders, TemporalTransformer, tiny_clip_config
from hbi_model.heads import BanzhafEstimator, WeightHead
from hbi_model.hierarchy import CTM, Level, TCBlock, num_clusters
from hbi_model.losses import banzhaf_kl, info_nce, level_kl


def test_cluster_counts_follow_the_spec():
    assert [num_clusters(32, 0.25), num_clusters(8, 0.5), num_clusters(12, 0.25), num_clusters(3, 0.5)] == [8, 4, 3, 2]


def test_ctm_shapes_and_padding_is_ignored():
    ctm = CTM(16, 0.25, k=3)
    x = torch.randn(3, 12, 16)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    merged, tokens, score, idx = ctm(x, mask)
    assert merged.shape == (3, 3, 16) and tokens.shape == (3, 12, 16) and idx.shape == (3, 12)
    assert torch.isinf(score[1, 7:]).all() and (score[1, 7:] < 0).all()
    # Padded tokens have weight exp(-inf) = 0: changing their values cannot change sample 1's real
    # clusters' means except through the convolution's window at the border (token 6 sees token 7).
    x2 = x.clone()
    x2[1, 9:] = torch.randn(3, 16) * 10
    merged2 = ctm(x2, mask)[0]
    torch.testing.assert_close(merged2[0], merged[0])


def test_tcblock_ignores_padded_keys():
    block = TCBlock(16, heads=2)
    merged, tokens = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    score = torch.randn(2, 7)
    score[:, 5:] = float("-inf")
    out = block(merged, tokens, score)
    tokens2 = tokens.clone()
    tokens2[:, 5:] = torch.randn(2, 2, 16)
    torch.testing.assert_close(block(merged, tokens2, score), out)
    assert out.shape == merged.shape


def test_level_and_temporal_shapes():
    assert Level(16, 0.5, heads=2)(torch.randn(2, 8, 16)).shape == (2, 4, 16)
    temporal = TemporalTransformer(16, layers=1, heads=2, max_frames=6)
    frames = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]).bool()  # second video unreadable
    out = temporal(frames, mask)
    assert out.shape == frames.shape and torch.isfinite(out).all()


def test_clip_encoders_shapes():
    encoders = CLIPEncoders.from_config(tiny_clip_config(vocab_size=40, width=16, projection_dim=24, max_words=10))
    ids = torch.randint(3, 40, (2, 10))
    text = encoders.encode_text(ids, torch.ones(2, 10, dtype=torch.long))
    frames = encoders.encode_frames(torch.randn(2, 4, 3, 32, 32))
    assert text.shape == (2, 10, 24) and frames.shape == (2, 4, 24)


def test_gradcheck_ctm_tcblock_and_heads_float64():
    torch.manual_seed(0)
    ctm = CTM(6, 0.5, k=2).double()
    block = TCBlock(6, heads=2).double()
    head = WeightHead(6).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()

    def hierarchy(x):
        merged, tokens, score, _ = ctm(x, mask)
        return block(merged, tokens, score)

    assert torch.autograd.gradcheck(hierarchy, (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(head, (x,), eps=1e-6, atol=1e-6)
    estimator = BanzhafEstimator(channels=4).double()
    sim = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(estimator, (sim,), eps=1e-6, atol=1e-5)


def test_losses():
    sim = torch.eye(4) * 5
    assert info_nce(sim, 1.0) < info_nce(torch.zeros(4, 4), 1.0)
    x = torch.randn(3, 5)
    assert level_kl(x, x).abs() < 1e-6 and level_kl(x, torch.randn(3, 5)) > 0
    teacher, student = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    valid[1, 2:] = False
    assert banzhaf_kl(teacher, teacher, valid).abs() < 1e-6
    loss = banzhaf_kl(teacher, student, valid)
    student2 = student.clone()
    student2[1, 2:] = 100.0  # padded cells take no part
    torch.testing.assert_close(banzhaf_kl(teacher, student2, valid), loss)
