"""The exact textbook Banzhaf interaction of the WTI game by its closed form (docs/banzhaf.md), written to
be read.

The text half of the coalition value is bilinear, g(S) = sum_t A_t(S_words) * M_t(S_frames): A_t the
softmax weight of word t among the coalition's words, M_t the maximum of row t over its frames. Words
and frames join a Banzhaf coalition independently, so the mixed second difference of word i and frame j
factorises and

    I(i, j) = 1/2 [ sum_t alpha[i, t] mu[j, t]  +  sum_v gamma[j, v] nu[i, v] ]

alpha (gamma): the expected change of every word's (frame's) softmax weight when word i (frame j) joins,
    an integral over s of products of phi_k(s) = (1 + exp(-s u_k)) / 2 (1/x = int exp(-s x) ds),
    taken by the trapezoid rule in y = log s on a fixed grid;
mu (nu): the expected change of every row (column) maximum when frame j (word i) joins, a sum over the
    sorted row: the maximum of the others is the k-th largest with probability 2^-k.

Everything is differentiable by autograd. The grid is fixed per dtype (wide enough for the largest
logit gap the dtype can represent), so the graph has no data-dependent sizes; the kernels size their
grid per pair instead, which changes the result only within the quadrature's error.
"""

import math

import torch

# Quadrature settings by compute dtype: node spacing in y = log s, the truncation tolerance of the
# integral's two ends, and the largest logit gap kept (a player further below the maximum weighs
# exp(-GAP) relative to it; the dtype cannot hold much less). The trapezoid error is about exp(-pi^2 / h).
QUADRATURE = {
    torch.float64: dict(step=0.3, tolerance=1e-16, max_gap=700.0),
    torch.float32: dict(step=0.5, tolerance=1e-8, max_gap=84.0),
}


def quadrature_nodes(dtype, device):
    """Nodes s_q and weights w_q of int_0^inf F(s) ds ~ sum_q w_q F(s_q), for weights u in
    [exp(-max_gap), 1]: y from log(tolerance) (where F(s) ~ F(0) has nothing left to add) to
    log(log(1 / tolerance) / u_min) (where exp(-s u_min) has fallen below the tolerance)."""
    settings = QUADRATURE[dtype]
    low = math.log(settings["tolerance"])
    high = math.log(math.log(1.0 / settings["tolerance"])) + settings["max_gap"]
    count = int(math.ceil((high - low) / settings["step"])) + 1
    y = torch.linspace(low, high, count, dtype=dtype, device=device)
    s = torch.exp(y)
    weights = s * ((high - low) / (count - 1))
    weights[0] = weights[0] / 2
    weights[-1] = weights[-1] / 2
    return s, weights


def softmax_marginals(logits, mask):
    """alpha[b, i, t] = E over S of A_t(S + i) - A_t(S), S a uniformly random subset of the pair's other
    real players: the expected change of player t's softmax weight when player i joins. [B, n, n]."""
    dtype = logits.dtype
    real = mask.to(dtype)
    count = real.sum(-1)  # real players per pair
    logits = logits.masked_fill(~mask, 0.0)
    top = logits.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    bottom = logits.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
    gap_limit = QUADRATURE[dtype]["max_gap"]
    u = torch.exp((logits - top.clamp(min=-3e38)).clamp(min=-gap_limit)) * real  # 0 at padding

    s, weights = quadrature_nodes(dtype, logits.device)
    E = torch.exp(-s * u[..., None])  # [B, n, Q]; 1 at padding
    phi = (1 + E) / 2  # E[exp(-s * b_k u_k)] for b_k in {0, 1}
    P = torch.exp(torch.log(phi).sum(-2))  # [B, Q]: E[exp(-s Z)], Z the random sum of all u
    a = 2 * torch.expm1(-s * u[..., None]) / (1 + E)  # (exp(-s u_i) - 1) / phi_i: factor of the joiner i
    b = 2 * u[..., None] * E / (1 + E)  # u_t exp(-s u_t) / phi_t: factor of the player t
    c = weights * P
    # alpha[i, t] = 1/2 int u_t e^{-s u_t} (e^{-s u_i} - 1) P / (phi_i phi_t) ds    (t != i)
    # alpha[i, i] =     int u_i e^{-s u_i} P / phi_i ds
    off_diagonal = 0.5 * torch.einsum("biq,btq->bit", a * c[:, None, :], b)
    diagonal = (c[:, None, :] * b * (1 - a / 2)).sum(-1)
    quadrature = off_diagonal + torch.diag_embed(diagonal)

    # Equal weights: the number of other members is binomial, so alpha has a closed form.
    diagonal_equal = 2 * (1 - 2.0**-count) / count.clamp(min=1)  # E[1 / (1 + K)], K ~ Bin(n - 1, 1/2)
    off_equal = -2 * (1 - (count + 1) * 2.0**-count) / (count * (count - 1)).clamp(min=1)
    eye = torch.eye(logits.shape[-1], dtype=dtype, device=logits.device)
    binomial = off_equal[:, None, None] * (1 - eye) + diagonal_equal[:, None, None] * eye
    binomial = binomial * real[:, :, None] * real[:, None, :]
    equal = (top == bottom)[:, :, None]
    # The binomial value, with the quadrature's gradient (the weights' gradient is not 0 there).
    return torch.where(equal, quadrature + (binomial - quadrature).detach(), quadrature)


def max_marginals(sim, row_mask, column_mask):
    """mu[b, j, t] = E over F of M_t(F + j) - M_t(F), F a uniformly random subset of the real columns
    other than j, M_t(F) the maximum of row t over F (0 when F is empty). [B, V, T].

    Sort row t's real entries from the largest, r_0 >= r_1 >= ... (ties by position). Column j at
    position p gains r_p - r_q when the maximum of F is r_q, q > p (probability 2^-q: the q - 1 others
    above r_q are out, r_q is in), nothing when the maximum is above it, and r_p when F is empty
    (2^-(n-1)); summed: 2^-p r_p - sum_{q > p} 2^-q r_q."""
    dtype = sim.dtype
    key = sim.masked_fill(~column_mask[:, None, :], float("-inf"))  # padded columns sort last
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    real = torch.gather(column_mask[:, None, :].expand_as(sim), -1, order)
    values = torch.where(real, torch.gather(sim, -1, order), torch.zeros((), dtype=dtype))
    position = torch.arange(sim.shape[-1], dtype=dtype, device=sim.device)
    weighted = 2.0**-position * values
    below = weighted.flip(-1).cumsum(-1).flip(-1) - weighted  # sum over the positions after each
    gain_sorted = weighted - below
    gain = torch.zeros_like(sim).scatter(-1, order, gain_sorted)
    return gain.masked_fill(~row_mask[:, :, None], 0.0).transpose(-1, -2)


def closed_form(sim, text_mask, video_mask, text_weight, video_weight):
    """The exact textbook index I [B, T, V], zero at padded cells (whatever they hold)."""
    real_cells = text_mask[:, :, None] & video_mask[:, None, :]
    sim = sim.masked_fill(~real_cells, 0.0)
    alpha = softmax_marginals(text_weight, text_mask)  # [B, T, T]
    gamma = softmax_marginals(video_weight, video_mask)  # [B, V, V]
    mu = max_marginals(sim, text_mask, video_mask)  # [B, V, T]: frame j's gain on row t's maximum
    nu = max_marginals(sim.transpose(-1, -2), video_mask, text_mask)  # [B, T, V]: word i's gain on column v's
    interaction = 0.5 * (alpha @ mu.transpose(-1, -2) + nu @ gamma.transpose(-1, -2))
    return interaction.masked_fill(~real_cells, 0.0)
