import pytest
import torch

from hbi_model.metrics import both_directions, ranks_of_positives, retrieval_metrics


def test_ranks_on_a_hand_built_matrix():
    # Row i's positive is column i. Row 0: best (rank 1); row 1: two columns above it (rank 3);
    # row 2: one above (rank 2); row 3: all three above (rank 4).
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0], [0.8, 0.3, 0.7, 0.1], [0.1, 0.9, 0.5, 0.2], [0.5, 0.6, 0.7, 0.4]])
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


def test_ties_count_against_the_query():
    # Row 0's positive (0.5) ties with one other column: pessimistic rank 2, not 1. Row 1's ties with
    # both others: rank 3. Row 2 is strictly best: rank 1.
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.2, 0.2], [0.0, 0.3, 0.9]])
    assert ranks_of_positives(sim).tolist() == [2, 3, 1]
    # A constant matrix (a collapsed model) ranks every positive last.
    flat = both_directions(torch.zeros(10, 10))
    for direction in flat.values():
        assert direction["R@1"] == 0.0 and direction["MdR"] == 10.0 and direction["MnR"] == 10.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_similarities_are_an_error(value):
    with pytest.raises(ValueError, match="not finite"):
        both_directions(torch.full((10, 10), value))
    sim = torch.rand(6, 6)
    sim[4, 2] = value
    with pytest.raises(ValueError, match=r"1 of 36 .*text 4, video 2"):
        both_directions(sim)
    with pytest.raises(ValueError, match=r"1 of 36 .*row 4, column 2"):
        retrieval_metrics(sim)


def test_the_similarity_matrix_must_be_square_and_not_empty():
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(torch.rand(3, 4))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(torch.rand(0, 0))
