"""Density-peaks clustering with k-nearest-neighbour density (docs/dpc_knn.md), in plain PyTorch.

Every step is written over the whole batch at once ([B, N, N] matrices) and follows the numbered steps
of the specification. The arithmetic is pinned down where a different rounding could break a tie
between backends: distances are sqrt(sum of squared differences) / sqrt(C) (never the
|a|^2 + |b|^2 - 2ab expansion), the k smallest squared distances are summed one after another in
ascending order, and exp is taken in float64 and rounded once.
"""

import math

import torch


def _accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def dpc_knn(x, mask, num_clusters, k):
    """x [B, N, C] float, mask [B, N] bool (True = real token), 1 <= num_clusters, k <= N.

    Returns (idx [B, N] int64, centers [B, K] int64).
    """
    with torch.no_grad():
        return _dpc_knn(x.detach(), mask, num_clusters, k)


def _dpc_knn(x, mask, num_clusters, k):
    batch, num_tokens, width = x.shape
    acc = _accumulate_dtype(x.dtype)
    x = x.to(acc)
    mask = mask.to(device=x.device, dtype=torch.bool)
    positions = torch.arange(num_tokens, device=x.device)

    # 1. Dist[b, i, j] = ||x_i - x_j|| / sqrt(C), from the differences themselves.
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    dist = dist / torch.tensor(math.sqrt(width), dtype=acc, device=x.device)

    # 2. Columns of padded tokens become M + 1, M = largest distance between two real tokens of the
    #    sample (0 with fewer than two real tokens: the only real-real entries are then diagonal zeros).
    real_pair = mask[:, :, None] & mask[:, None, :]
    largest_real = torch.where(real_pair, dist, torch.zeros((), dtype=acc, device=x.device)).amax(dim=(1, 2))
    dist = torch.where(mask[:, None, :], dist, (largest_real + 1)[:, None, None])

    # 3. rho_i = exp(-mean of the k smallest squared entries of row i); padded tokens get 0.
    nearest = torch.topk(dist, k, dim=-1, largest=False, sorted=True).values  # ascending
    squared = nearest * nearest
    total = squared[..., 0]
    for t in range(1, k):  # in order, so that every backend rounds the same way
        total = total + squared[..., t]
    mean = total / k
    rho = torch.exp(-mean.double()).to(acc)
    rho = torch.where(mask, rho, torch.zeros((), dtype=acc, device=x.device))

    # 4. denser[b, i, j]: token j comes before token i in the density order. Real tokens come before
    #    padded ones whatever their rho; then higher rho; then the lower index.
    real_i, real_j = mask[:, :, None], mask[:, None, :]
    rho_i, rho_j = rho[:, :, None], rho[:, None, :]
    lower_index = positions[None, None, :] < positions[None, :, None]  # [1, i, j]: j < i
    same_kind = real_j == real_i
    denser = (real_j & ~real_i) | (same_kind & ((rho_j > rho_i) | ((rho_j == rho_i) & lower_index)))

    # 5. delta_i = min of Dist[i, j] over denser j; the densest token (no denser j) gets the largest
    #    entry of the masked matrix, which can only raise a minimum, so it can fill the other entries.
    largest = dist.amax(dim=(1, 2))[:, None, None]
    delta = torch.where(denser, dist, largest).amin(dim=-1)

    # 6. Centres: the K highest scores delta * rho, the highest first, ties to the lower index.
    score = delta * rho
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    centers = order[:, :num_clusters].contiguous()

    # 7. Each token joins the centre c with the smallest Dist[centre_c, token] (argmin returns the first,
    #    i.e. the lower c, on ties); each centre joins its own cluster.
    to_centres = torch.gather(dist, 1, centers[:, :, None].expand(batch, num_clusters, num_tokens))
    idx = to_centres.argmin(dim=1)
    clusters = torch.arange(num_clusters, device=x.device).expand(batch, num_clusters)
    idx = idx.scatter(1, centers, clusters)
    return idx, centers
