"""Retrieval metrics as in the literature: R@1/5/10, median and mean rank, both directions.

Ties count against the query: a positive tied with k other candidates ranks k places lower than it would
if it beat them, so a model that scores everything alike ranks every positive last (not first). A NaN or
infinite similarity is an error, never a rank."""

import numpy as np
import torch


def check_similarities(sim, row_name="row", column_name="column"):
    """A ValueError unless sim is a non-empty, square matrix of finite values."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(
            f"the similarity matrix must be square (positive of row i in column i), got shape {tuple(sim.shape)}"
        )
    if sim.numel() == 0:
        raise ValueError("the similarity matrix is empty: there is no test pair to rank")
    bad = ~torch.isfinite(sim)
    if bad.any():
        first = bad.nonzero()[0].tolist()
        raise ValueError(
            f"the similarity matrix is not finite: {int(bad.sum())} of {sim.numel()} values are NaN "
            f"or infinite (the first at {row_name} {first[0]}, {column_name} {first[1]}); the model's "
            f"features or weights are not finite"
        )


def ranks_of_positives(sim):
    """sim [N, N] with the positive of row i in column i: the 1-based rank of each positive, every
    candidate scoring at least as high as it (itself included) counted above it."""
    check_similarities(sim)
    positives = sim.diagonal()[:, None]
    return (sim >= positives).sum(1)


def retrieval_metrics(sim):
    """{'R@1', 'R@5', 'R@10', 'MdR', 'MnR'} in percent / ranks, for rows as queries."""
    ranks = ranks_of_positives(sim).double().cpu()
    return {
        "R@1": 100 * (ranks <= 1).double().mean().item(),
        "R@5": 100 * (ranks <= 5).double().mean().item(),
        "R@10": 100 * (ranks <= 10).double().mean().item(),
        "MdR": float(np.median(ranks.numpy())),
        "MnR": ranks.mean().item(),
    }


def both_directions(sim):
    """Text-to-video (rows: texts) and video-to-text metrics of a [texts, videos] matrix."""
    check_similarities(sim, "text", "video")
    return {"text-to-video": retrieval_metrics(sim), "video-to-text": retrieval_metrics(sim.t())}
