"""Per-level token weight heads and the Banzhaf estimator network (SPEC section 2)."""
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
    1 -> 64, ReLU, single-head attention (64x64 Q, K, V, no scaling) over the T*V cells, residual,
    3x3 conv 64 -> 1. (The reference also builds a BatchNorm it never applies; it is left out, and
    load_state_dict(strict=False) accepts its weights.)"""

    def __init__(self, channels=64):
        super().__init__()
        self.conv_in = nn.Conv2d(1, channels, 3, padding=1)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, sim):
        batch, words, frames = sim.shape
        x = torch.relu(self.conv_in(sim[:, None]))  # [B, C, T, V]
        cells = x.flatten(2).transpose(1, 2)  # [B, T*V, C]
        attention = (self.q(cells) @ self.k(cells).transpose(1, 2)).softmax(-1)
        cells = cells + attention @ self.v(cells)
        x = cells.transpose(1, 2).view(batch, -1, words, frames)
        return self.conv_out(x)[:, 0]
