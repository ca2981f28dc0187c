"""Per-level token weight heads and the Banzhaf estimator network (docs/model.md)."""

import math

import torch
from torch import nn


class WeightHead(nn.Module):
    """Linear(D -> 2D) -> ReLU -> Linear(2D -> 1): one logit per token."""

    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class BanzhafEstimator(nn.Module):
    """The reference's learned estimator of the interaction map R [B, T, V] -> [B, T, V]: 3x3 conv
    1 -> 64, ReLU, single-head attention over the T*V cells with 64x64 Q, K, V matrices (no bias, no
    scaling), residual, 3x3 conv 64 -> 1. Parameter names are the reference's (cnn1, Q, K, V, cnn2), so its
    checkpoints load; the BatchNorm it builds but never applies is left out (load_teacher skips it)."""

    def __init__(self, channels=64):
        super().__init__()
        self.cnn1 = nn.Conv2d(1, channels, 3, padding=1)
        self.Q = nn.Parameter(torch.empty(channels, channels))
        self.K = nn.Parameter(torch.empty(channels, channels))
        self.V = nn.Parameter(torch.empty(channels, channels))
        self.cnn2 = nn.Conv2d(channels, 1, 3, padding=1)
        for matrix in (self.Q, self.K, self.V):  # as an nn.Linear weight; init.py has the reference's
            nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))

    def forward(self, sim):
        batch, words, frames = sim.shape
        x = torch.relu(self.cnn1(sim[:, None]))  # [B, C, T, V]
        cells = x.flatten(2).transpose(1, 2)  # [B, T*V, C]
        attention = ((cells @ self.Q) @ (cells @ self.K).transpose(1, 2)).softmax(-1)
        cells = cells + attention @ (cells @ self.V)
        x = cells.transpose(1, 2).view(batch, -1, words, frames)
        return self.cnn2(x)[:, 0]
