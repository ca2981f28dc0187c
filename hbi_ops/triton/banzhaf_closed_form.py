"""The exact textbook Banzhaf interaction by its closed form (docs/banzhaf.md) in Triton, forward and
backward: the same formulas as csrc/banzhaf/closed_form.h and hbi_ops/reference/banzhaf_closed_form.py.

One program per pair, in phases separated by a block barrier, with the pair's intermediates in a
global scratch buffer (the program both writes and reads them, so the barrier makes them visible):
  1. the quadrature nodes of each side: c_q = w_q P(s_q), P = prod_k phi_k (a reduction over players);
  2. alpha [T, T] and gamma [V, V] tile by tile, sums over node chunks of [players x nodes] factor
     tiles; each row's (column's) sort positions by counting, and the entries weighted by 2^-position;
  3. mu [V, T] and nu [T, V] from the weighted entries;
  4. I = 1/2 (alpha mu^T + nu gamma^T), tile by tile.
The backward pass repeats 1 to 3, forms the four cotangents (G mu, G^T alpha, G^T nu, G gamma), then the
weight gradients (two passes over the nodes: the node sums K_q first) and the gradient in sim (one tile
pass over the sort order of rows and of columns). Products are broadcast-multiply-sums (float64 has no
tl.dot in every Triton this supports), in the accumulate type, never TF32.

Node grids are sized per pair; the scratch has room for the largest grid of the dtype. At the full size
(T = 32, V = 12) every phase is one tile, ~150 nodes a side in float32.
"""

import math

import torch
import triton
import triton.language as tl

from hbi_ops.reference.banzhaf_closed_form import QUADRATURE

from . import _jit, _launch
from .closed_form_common import _contract, _real_range, _scratch
from .closed_form_max import _max_marginals, _max_marginals_grad, _sort_weights
from .closed_form_softmax import _node_weights, _side_grid, _softmax_marginals, _softmax_marginals_grad

_helper = _jit.helper


def _max_nodes(dtype):
    q = QUADRATURE[dtype]
    high = math.log(math.log(1.0 / q["tolerance"])) + q["max_gap"]
    return int(math.ceil((high - math.log(q["tolerance"])) / q["step"])) + 2


@_helper
def _marginals(
    sim,
    tm,
    vm,
    wt,
    wv,
    b64,
    T,
    V,
    scr,
    QMAX,
    STEP: tl.constexpr,
    TOL: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    TB: tl.constexpr,
    VB: tl.constexpr,
    QB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    DOT: tl.constexpr,
    RK: tl.constexpr,
):
    """Phases 1 to 3 for pair b: node weights, alpha, gamma, the weighted sort entries, mu and nu, in the
    pair's scratch (layout: _scratch_layout)."""
    sim_b = sim + b64 * T * V
    cq_t = scr
    cq_v = cq_t + QMAX
    alpha, gamma, mu, nu, row_weighted, col_weighted = _scratch(scr, T, V, QMAX)
    top_t, low_t, sp_t, cnt_t, eq_t, fin_t = _side_grid(wt, tm, b64 * T, T, STEP, TOL, GAP, ACC, TB, LIBDEVICE)
    top_v, low_v, sp_v, cnt_v, eq_v, fin_v = _side_grid(wv, vm, b64 * V, V, STEP, TOL, GAP, ACC, VB, LIBDEVICE)
    _node_weights(wt, tm, b64 * T, T, top_t, low_t, sp_t, tl.where(eq_t, 0, cnt_t), cq_t, GAP, ACC, TB, QB, LIBDEVICE)
    _node_weights(wv, vm, b64 * V, V, top_v, low_v, sp_v, tl.where(eq_v, 0, cnt_v), cq_v, GAP, ACC, VB, QB, LIBDEVICE)
    # Row sorts (mu: rows t over the frames) and column sorts (nu: columns v over the words).
    _sort_weights(sim_b, V, 1, T, V, tm, b64 * T, vm, b64 * V, row_weighted, ACC, TB, VB, RK)
    _sort_weights(sim_b, 1, V, V, T, vm, b64 * V, tm, b64 * T, col_weighted, ACC, VB, TB, RK)
    tl.debug_barrier()
    _softmax_marginals(
        wt, tm, b64 * T, T, top_t, low_t, sp_t, cnt_t, eq_t, fin_t, cq_t, alpha, GAP, ACC, TB, QB, LIBDEVICE, DOT
    )
    _softmax_marginals(
        wv, vm, b64 * V, V, top_v, low_v, sp_v, cnt_v, eq_v, fin_v, cq_v, gamma, GAP, ACC, VB, QB, LIBDEVICE, DOT
    )
    _max_marginals(sim_b, V, 1, T, V, tm, b64 * T, vm, b64 * V, row_weighted, mu, ACC, TB, VB, RK)
    _max_marginals(sim_b, 1, V, V, T, vm, b64 * V, tm, b64 * T, col_weighted, nu, ACC, VB, TB, RK)
    tl.debug_barrier()


@triton.jit
def _closed_form_fwd_kernel(
    sim,
    tm,
    vm,
    wt,
    wv,
    out,
    scratch,
    T,
    V,
    SCR,
    QMAX,
    STEP: tl.constexpr,
    TOL: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    TB: tl.constexpr,
    VB: tl.constexpr,
    QB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    DOT: tl.constexpr,
    RK: tl.constexpr,
):
    b64 = tl.program_id(0).to(tl.int64)
    scr = scratch + b64 * SCR
    _marginals(sim, tm, vm, wt, wv, b64, T, V, scr, QMAX, STEP, TOL, GAP, ACC, TB, VB, QB, LIBDEVICE, DOT, RK)
    alpha, gamma, mu, nu, _rw, _cw = _scratch(scr, T, V, QMAX)
    for i0 in range(0, T, TB):
        i, real_i = _real_range(tm, b64 * T, T, i0, TB)
        for j0 in range(0, V, VB):
            j, real_j = _real_range(vm, b64 * V, V, j0, VB)
            text = _contract(alpha, T, 1, mu, T, 1, T, i, j, ACC, TB, DOT)  # sum_t alpha[i, t] mu[j, t]
            video = _contract(nu, V, 1, gamma, V, 1, V, i, j, ACC, VB, DOT)  # sum_v nu[i, v] gamma[j, v]
            value = tl.where(real_i[:, None] & real_j[None, :], 0.5 * (text + video), 0.0)
            tl.store(
                out + b64 * T * V + i[:, None] * V + j[None, :],
                value.to(out.dtype.element_ty),
                mask=(i[:, None] < T) & (j[None, :] < V),
            )


@triton.jit
def _closed_form_bwd_kernel(
    grad,
    sim,
    tm,
    vm,
    wt,
    wv,
    gs,
    gt,
    gv,
    scratch,
    T,
    V,
    SCR,
    QMAX,
    STEP: tl.constexpr,
    TOL: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    TB: tl.constexpr,
    VB: tl.constexpr,
    QB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    DOT: tl.constexpr,
    RK: tl.constexpr,
):
    b64 = tl.program_id(0).to(tl.int64)
    scr = scratch + b64 * SCR
    _marginals(sim, tm, vm, wt, wv, b64, T, V, scr, QMAX, STEP, TOL, GAP, ACC, TB, VB, QB, LIBDEVICE, DOT, RK)
    alpha, gamma, mu, nu, _rw, col_weighted = _scratch(scr, T, V, QMAX)
    X = col_weighted + T * V  # after the two weighted sort buffers: d/d alpha [T, T]
    Xg = X + T * T  # d/d gamma [V, V]
    Ymu = Xg + V * V  # d/d mu [V, T]
    Ynu = Ymu + V * T  # d/d nu [T, V]
    G = Ynu + T * V  # 1/2 the incoming gradient, 0 at padded cells [T, V]
    K = G + T * V  # node sums of the weight gradients [QMAX]
    sim_b = sim + b64 * T * V
    for i0 in range(0, T, TB):
        i, real_i = _real_range(tm, b64 * T, T, i0, TB)
        for j0 in range(0, V, VB):
            j, real_j = _real_range(vm, b64 * V, V, j0, VB)
            real = real_i[:, None] & real_j[None, :]
            g = tl.load(grad + b64 * T * V + i[:, None] * V + j[None, :], mask=real, other=0.0).to(ACC)
            tl.store(
                G + i[:, None] * V + j[None, :], tl.where(real, 0.5 * g, 0.0), mask=(i[:, None] < T) & (j[None, :] < V)
            )
    tl.debug_barrier()
    # The cotangents: X = 1/2 G mu, Ymu = 1/2 G^T alpha, Xg = 1/2 G^T nu, Ynu = 1/2 G gamma.
    for i0 in range(0, T, TB):
        i = i0 + tl.arange(0, TB)
        for t0 in range(0, T, TB):
            t = t0 + tl.arange(0, TB)
            x = _contract(G, V, 1, mu, 1, T, V, i, t, ACC, VB, DOT)  # sum_j G[i, j] mu[j, t]
            tl.store(X + i[:, None] * T + t[None, :], x, mask=(i[:, None] < T) & (t[None, :] < T))
        for v0 in range(0, V, VB):
            v = v0 + tl.arange(0, VB)
            y = _contract(G, V, 1, gamma, 1, V, V, i, v, ACC, VB, DOT)  # sum_j G[i, j] gamma[j, v]
            tl.store(Ynu + i[:, None] * V + v[None, :], y, mask=(i[:, None] < T) & (v[None, :] < V))
    for j0 in range(0, V, VB):
        j = j0 + tl.arange(0, VB)
        for t0 in range(0, T, TB):
            t = t0 + tl.arange(0, TB)
            y = _contract(G, 1, V, alpha, 1, T, T, j, t, ACC, TB, DOT)  # sum_i G[i, j] alpha[i, t]
            tl.store(Ymu + j[:, None] * T + t[None, :], y, mask=(j[:, None] < V) & (t[None, :] < T))
        for v0 in range(0, V, VB):
            v = v0 + tl.arange(0, VB)
            x = _contract(G, 1, V, nu, 1, V, T, j, v, ACC, TB, DOT)  # sum_i G[i, j] nu[i, v]
            tl.store(Xg + j[:, None] * V + v[None, :], x, mask=(j[:, None] < V) & (v[None, :] < V))
    tl.debug_barrier()
    _softmax_marginals_grad(wt, tm, b64 * T, T, X, K, gt, STEP, TOL, GAP, ACC, TB, QB, LIBDEVICE, DOT)
    tl.debug_barrier()
    _softmax_marginals_grad(wv, vm, b64 * V, V, Xg, K, gv, STEP, TOL, GAP, ACC, VB, QB, LIBDEVICE, DOT)
    # sim: through mu (rows t over the frames), then through nu (columns v over the words).
    for t0 in range(0, T, TB):
        for v0 in range(0, V, VB):
            t, v, g = _max_marginals_grad(sim_b, V, 1, T, V, tm, b64 * T, vm, b64 * V, Ymu, t0, v0, ACC, TB, VB, RK)
            tl.store(
                gs + b64 * T * V + t[:, None] * V + v[None, :],
                g.to(gs.dtype.element_ty),
                mask=(t[:, None] < T) & (v[None, :] < V),
            )
    tl.debug_barrier()
    for v0 in range(0, V, VB):
        for t0 in range(0, T, TB):
            v, t, g = _max_marginals_grad(sim_b, 1, V, V, T, vm, b64 * V, tm, b64 * T, Ynu, v0, t0, ACC, VB, TB, RK)
            where = gs + b64 * T * V + t[None, :] * V + v[:, None]
            inside = (t[None, :] < T) & (v[:, None] < V)
            previous = tl.load(where, mask=inside, other=0.0).to(ACC)
            tl.store(where, (previous + g).to(gs.dtype.element_ty), mask=inside)


# ------------------------------------------------------------------------------------------------
# Launch


def _scratch_layout(T, V, qmax, backward):
    """Scratch elements a pair: node weights (2 x qmax), alpha, gamma, mu, nu, two weighted sort buffers;
    backward adds the four cotangents, the halved gradient and the node sums."""
    size = 2 * qmax + T * T + V * V + 4 * T * V
    if backward:
        size += T * T + V * V + 3 * T * V + qmax
    return size


class _Launch:
    def __init__(self, sim, text_mask, video_mask, text_weight, video_weight, backward):
        self.sim, self.tm, self.vm, self.wt, self.wv = _launch.pair_inputs(
            sim, text_mask, video_mask, text_weight, video_weight
        )
        self.B, self.T, self.V = sim.shape
        self.acc_dtype = torch.float64 if sim.dtype == torch.float64 else torch.float32
        settings = QUADRATURE[self.acc_dtype]
        self.qmax = _max_nodes(self.acc_dtype)
        self.scr = _scratch_layout(self.T, self.V, self.qmax, backward)
        self.scratch = torch.empty((self.B, self.scr), dtype=self.acc_dtype, device=sim.device)
        compiled = _launch.compiled(sim)
        # Tiles: one tile a side at the full sizes; at most 32 players (16 for float64's 3-D products).
        cap = 16 if self.acc_dtype == torch.float64 else 32
        self.constants = dict(
            STEP=settings["step"],
            TOL=settings["tolerance"],
            GAP=settings["max_gap"],
            ACC=tl.float64 if self.acc_dtype == torch.float64 else tl.float32,
            TB=min(cap, max(16, triton.next_power_of_2(self.T)))
            if compiled
            else max(2, triton.next_power_of_2(self.T)),
            VB=min(cap, max(16, triton.next_power_of_2(self.V)))
            if compiled
            else max(2, triton.next_power_of_2(self.V)),
            QB=16 if compiled else 64,
            LIBDEVICE=compiled and self.acc_dtype == torch.float64,
            # IEEE float32 tl.dot on the GPU; float64 (no tl.dot in Triton 3.6) and the interpreter multiply
            # and sum. RK: the inner block of the [rows, entries, RK] comparisons of the sorts.
            DOT=compiled and self.acc_dtype == torch.float32,
            RK=8 if compiled else 64,
            num_warps=4,
        )


def _zeros(like, dtype):
    return torch.zeros(like.shape, dtype=dtype, device=like.device)


def forward(sim, text_mask, video_mask, text_weight, video_weight):
    if sim.numel() == 0:
        return torch.zeros_like(sim, memory_format=torch.contiguous_format)
    L = _Launch(sim, text_mask, video_mask, text_weight, video_weight, backward=False)
    out = _zeros(sim, L.acc_dtype)  # in the accumulate type; rounded once, by torch, to sim's dtype
    with _launch.device_guard(sim):
        _closed_form_fwd_kernel[(L.B,)](
            L.sim, L.tm, L.vm, L.wt, L.wv, out, L.scratch, L.T, L.V, L.scr, L.qmax, **L.constants
        )
    return out.to(sim.dtype)


def backward(grad, sim, text_mask, video_mask, text_weight, video_weight):
    if sim.numel() == 0:
        return torch.zeros_like(sim), torch.zeros_like(text_weight), torch.zeros_like(video_weight)
    L = _Launch(sim, text_mask, video_mask, text_weight, video_weight, backward=True)
    gs, gt, gv = (_zeros(x, L.acc_dtype) for x in (sim, text_weight, video_weight))
    grad = grad.to(sim.dtype).contiguous()
    with _launch.device_guard(sim):
        _closed_form_bwd_kernel[(L.B,)](
            grad, L.sim, L.tm, L.vm, L.wt, L.wv, gs, gt, gv, L.scratch, L.T, L.V, L.scr, L.qmax, **L.constants
        )
    return gs.to(sim.dtype), gt.to(text_weight.dtype), gv.to(video_weight.dtype)
