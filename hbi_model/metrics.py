"""Retrieval metrics as in the literature: R@1/5/10, median and mean rank, both directions."""
import numpy as np


def ranks_of_positives(sim):
    """sim [N, N] with the positive of row i in column i: the 1-based rank of each positive."""
    positives = sim.diagonal()[:, None]
    return (sim > positives).sum(1) + 1  # ties count in the query's favour, as is usual


def retrieval_metrics(sim):
    """{'R@1', 'R@5', 'R@10', 'MdR', 'MnR'} in percent / ranks, for rows as queries."""
    ranks = ranks_of_positives(sim).double().cpu()
    return {"R@1": 100 * (ranks <= 1).double().mean().item(), "R@5": 100 * (ranks <= 5).double().mean().item(),
            "R@10": 100 * (ranks <= 10).double().mean().item(), "MdR": float(np.median(ranks.numpy())),
            "MnR": ranks.mean().item()}


def both_directions(sim):
    """Text-to-video (rows: texts) and video-to-text metrics of a [texts, videos] matrix."""
    return {"text-to-video": retrieval_metrics(sim), "video-to-text": retrieval_metrics(sim.t())}
