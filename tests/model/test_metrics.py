import pytest
import torch

from hbi_model.metrics import both_directions, ranks_of_positives, retrieval_metrics


def test_ranks_on_a_hand_built_matrix():
    # Row i's positive is column i. Row 0: best (rank 1); row 1: two columns above it (rank 3);
    # row 2: one above (rank 2); row 3: all three above (rank 4).
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],
                        [0.8, 0.3, 0.7, 0.1],
                        [0.1, 0.9, 0.5, 0.2],
                        [0.5, 0.6, 0.7, 0.4]])
    assert ranks_of_positives(sim).tolist() == [1, 3, 2, 4]
    m = retrieval_metrics(sim)
    assert m["R@1"] == pytest.approx(25.0) and m["R@5"] == pytest.approx(100.0)
    assert m["MdR"] == pytest.approx(2.5) and m["MnR"] == pytest.approx(2.5)


def test_both_directions_transposes():
    sim = torch.eye(5) + 0.01 * torch.arange(25.0).view(5, 5)
    out = both_directions(sim)
    assert out["text-to-video"]["R@1"] == 100.0 and out["video-to-text"]["R@1"] == 100.0
    shuffled = sim[:, [1, 2, 3, 4, 0]]  # every positive moved off the diagonal
    assert both_directions(shuffled)["text-to-video"]["R@1"] < 100.0
