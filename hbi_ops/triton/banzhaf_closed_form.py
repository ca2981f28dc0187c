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
from triton.language.extra import libdevice

from hbi_ops.reference.banzhaf_closed_form import QUADRATURE

from . import _jit, _launch

_helper = _jit.helper
_sum, _max, _min = _jit.sum_, _jit.max_, _jit.min_

_LN2 = tl.constexpr(0.6931471805599453)
_INF = tl.constexpr(float("inf"))


def _max_nodes(dtype):
    q = QUADRATURE[dtype]
    high = math.log(math.log(1.0 / q["tolerance"])) + q["max_gap"]
    return int(math.ceil((high - math.log(q["tolerance"])) / q["step"])) + 2


# ------------------------------------------------------------------------------------------------
# Helpers (inlined)


@_helper
def _exp(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:  # float64 on the GPU (the interpreter has no extern calls)
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@_helper
def _log(x, LIBDEVICE: tl.constexpr):
    if LIBDEVICE:
        return libdevice.log(x)
    else:
        return tl.log(x)


@_helper
def _mm(x, y, DOT: tl.constexpr):
    """x [M, K] times y [N, K] transposed: [M, N]; tl.dot in IEEE float32 where DOT (never TF32), else a
    broadcast-multiply-sum (float64, and Triton versions without a float64 dot)."""
    if DOT:
        return tl.dot(x, tl.trans(y), input_precision="ieee")
    else:
        return _sum(x[:, None, :] * y[None, :, :], 2)


@_helper
def _sorts_before(xa, ia, xb, ib):
    """Entry a (value xa, index ia) before entry b in a row's order: larger first, ties by index, NaN
    first (so that it reaches every gain of its row)."""
    na = xa != xa
    nb = xb != xb
    plain = (xa > xb) | ((xa == xb) & (ia < ib))
    return tl.where(na != nb, na, tl.where(na, ia < ib, plain))


@_helper
def _side_grid(
    w_ptr,
    m_ptr,
    base,
    n,
    STEP: tl.constexpr,
    TOL: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
):
    """A side's largest logit, its node grid (low, spacing, count), whether its real logits are all
    equal, and whether they are all finite (else the side's marginals are NaN)."""
    top = tl.full((), float("-inf"), ACC)
    bottom = tl.full((), float("inf"), ACC)
    bad = tl.zeros((), tl.int32)
    for k0 in range(0, n, PB):
        k = k0 + tl.arange(0, PB)
        real = (k < n) & (tl.load(m_ptr + base + k, mask=k < n, other=0) != 0)
        w = tl.load(w_ptr + base + k, mask=real, other=0).to(ACC)
        top = tl.maximum(top, _max(tl.where(real, w, float("-inf")), 0))
        bottom = tl.minimum(bottom, _min(tl.where(real, w, float("inf")), 0))
        bad += _sum(tl.where(real & ~(tl.abs(w) < _INF), 1, 0), 0)
    finite = bad == 0
    gap = tl.where(finite, bottom - top, 0.0)
    gap = tl.maximum(gap, -GAP)
    low = _log(tl.full((), TOL, ACC), LIBDEVICE)
    high = _log(-low, LIBDEVICE) - gap
    count = tl.where(finite, tl.ceil((high - low) / STEP).to(tl.int32) + 1, 0)
    spacing = (high - low) / tl.maximum(count - 1, 1).to(ACC)
    return top, low, spacing, count, (top == bottom) & finite, finite


@_helper
def _player_weights(w_ptr, m_ptr, base, n, k, top, GAP: tl.constexpr, ACC: tl.constexpr, LIBDEVICE: tl.constexpr):
    """u = exp(w - top) (the gap clamped) at real players k, 0 elsewhere; and whether clamped."""
    real = (k < n) & (tl.load(m_ptr + base + k, mask=k < n, other=0) != 0)
    w = tl.load(w_ptr + base + k, mask=real, other=0).to(ACC)
    gap = tl.where(real, w - top, 0.0)
    u = tl.where(real, _exp(tl.maximum(gap, -GAP), LIBDEVICE), 0.0)
    return u, real, gap < -GAP


@_helper
def _nodes(q0, low, spacing, count, ACC: tl.constexpr, QB: tl.constexpr, LIBDEVICE: tl.constexpr):
    """Nodes q0 .. q0 + QB: s_q, the trapezoid weight in ds, and which exist."""
    q = q0 + tl.arange(0, QB)
    live = q < count
    # Nodes past the grid would overflow s (inf * 0 = NaN in the derivatives): 0 there, weight 0.
    s = tl.where(live, _exp(low + q.to(ACC) * spacing, LIBDEVICE), 0.0)
    weight = tl.where((q == 0) | (q == count - 1), 0.5, 1.0) * s * spacing
    return s, tl.where(live, weight, 0.0), live


@_helper
def _factors(s, u, LIBDEVICE: tl.constexpr):
    """Per (player, node) [PB, QB]: log phi, a = (e - 1) / phi, b = u e / phi, e = exp(-s u)."""
    e = _exp(-s[None, :] * u[:, None], LIBDEVICE)
    inv = 2.0 / (1.0 + e)
    return _log((1.0 + e) * 0.5, LIBDEVICE), (e - 1.0) * inv, u[:, None] * e * inv


@_helper
def _factor_grads(s, u, LIBDEVICE: tl.constexpr):
    """Their derivatives in the logit (u d/du) [PB, QB]: all bounded, so that no product with a node's
    weight (up to ~1/u_min) overflows."""
    su = s[None, :] * u[:, None]
    e = _exp(-su, LIBDEVICE)
    one_e = 1.0 + e
    xe = su * e
    return -xe / one_e, -4.0 * xe / (one_e * one_e), 2.0 * u[:, None] * e * (one_e - su) / (one_e * one_e)


@_helper
def _node_weights(
    w_ptr,
    m_ptr,
    base,
    n,
    top,
    low,
    spacing,
    count,
    cq_ptr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PB: tl.constexpr,
    QB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
):
    """Phase 1: c_q = w_q P(s_q) for every node of the side, into cq_ptr."""
    for q0 in range(0, count, QB):
        s, weight, live = _nodes(q0, low, spacing, count, ACC, QB, LIBDEVICE)
        log_p = tl.zeros([QB], ACC)
        for k0 in range(0, n, PB):
            u, real, _c = _player_weights(w_ptr, m_ptr, base, n, k0 + tl.arange(0, PB), top, GAP, ACC, LIBDEVICE)
            log_phi, _a, _b = _factors(s, u, LIBDEVICE)
            log_p += _sum(tl.where(real[:, None], log_phi, 0.0), 0)
        tl.store(cq_ptr + q0 + tl.arange(0, QB), weight * _exp(log_p, LIBDEVICE), mask=live)


@_helper
def _softmax_marginals(
    w_ptr,
    m_ptr,
    base,
    n,
    top,
    low,
    spacing,
    count,
    equal,
    finite,
    cq_ptr,
    out_ptr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PB: tl.constexpr,
    QB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    DOT: tl.constexpr,
):
    """Phase 2: alpha [n, n] (row: the joiner) into out_ptr, 0 at padded rows and columns."""
    n_real = tl.zeros((), tl.int32)
    for k0 in range(0, n, PB):
        k = k0 + tl.arange(0, PB)
        n_real += _sum(((k < n) & (tl.load(m_ptr + base + k, mask=k < n, other=0) != 0)).to(tl.int32), 0)
    nr = n_real.to(ACC)
    equal_diagonal = 2.0 * (1.0 - tl.exp2(-nr)) / tl.maximum(nr, 1.0)
    equal_off = -2.0 * (1.0 - (nr + 1.0) * tl.exp2(-nr)) / tl.maximum(nr * (nr - 1.0), 1.0)
    for i0 in range(0, n, PB):
        i = i0 + tl.arange(0, PB)
        u_i, real_i, _ci = _player_weights(w_ptr, m_ptr, base, n, i, top, GAP, ACC, LIBDEVICE)
        for t0 in range(0, n, PB):
            t = t0 + tl.arange(0, PB)
            u_t, real_t, _ct = _player_weights(w_ptr, m_ptr, base, n, t, top, GAP, ACC, LIBDEVICE)
            tile = tl.zeros([PB, PB], ACC)
            diagonal = tl.zeros([PB], ACC)
            if not equal:
                for q0 in range(0, count, QB):
                    s, _w, live = _nodes(q0, low, spacing, count, ACC, QB, LIBDEVICE)
                    c = tl.load(cq_ptr + q0 + tl.arange(0, QB), mask=live, other=0.0)
                    _li, a_i, b_i = _factors(s, u_i, LIBDEVICE)
                    _lt, _at, b_t = _factors(s, u_t, LIBDEVICE)
                    tile += 0.5 * _mm(a_i * c[None, :], b_t, DOT)
                    diagonal += _sum(c[None, :] * b_i * (1.0 - 0.5 * a_i), 1)
                tile += tl.where(i[:, None] == t[None, :], diagonal[:, None], 0.0)
            else:
                tile = tl.where(i[:, None] == t[None, :], equal_diagonal, equal_off) + tile
            tile = tl.where(finite, tile, float("nan"))
            tile = tl.where(real_i[:, None] & real_t[None, :], tile, 0.0)
            tl.store(out_ptr + i[:, None] * n + t[None, :], tile, mask=(i[:, None] < n) & (t[None, :] < n))


@_helper
def _ranked_sum(
    x_ptr,
    row_stride,
    entry_stride,
    n_entries,
    em_ptr,
    em_base,
    r,
    e,
    xe,
    val_ptr,
    v_rs,
    v_ks,
    AFTER: tl.constexpr,
    COUNT: tl.constexpr,
    ACC: tl.constexpr,
    RB: tl.constexpr,
    KB: tl.constexpr,
):
    """For every row r and entry e of a tile [RB, EB]: the sum over the row's real entries k that sort
    before e (after e when AFTER) of val[r * v_rs + k * v_ks], or their number when COUNT."""
    total = tl.zeros(xe.shape, ACC)
    for k0 in range(0, n_entries, KB):
        k = k0 + tl.arange(0, KB)
        real_k = (k < n_entries) & (tl.load(em_ptr + em_base + k, mask=k < n_entries, other=0) != 0)
        xk = tl.load(x_ptr + r[:, None] * row_stride + k[None, :] * entry_stride, mask=real_k[None, :], other=0.0).to(
            ACC
        )  # [RB, KB]
        if AFTER:
            chosen = _sorts_before(xe[:, :, None], e[None, :, None], xk[:, None, :], k[None, None, :])
        else:
            chosen = _sorts_before(xk[:, None, :], k[None, None, :], xe[:, :, None], e[None, :, None])
        chosen = chosen & real_k[None, None, :]
        if COUNT:
            total += _sum(chosen.to(ACC), 2)
        else:
            vk = tl.load(val_ptr + r[:, None] * v_rs + k[None, :] * v_ks, mask=real_k[None, :], other=0.0)
            total += _sum(tl.where(chosen, vk[:, None, :], 0.0), 2)
    return total


@_helper
def _entry_tile(
    x_ptr,
    row_stride,
    entry_stride,
    n_rows,
    n_entries,
    rm_ptr,
    rm_base,
    em_ptr,
    em_base,
    r0,
    e0,
    ACC: tl.constexpr,
    RB: tl.constexpr,
    EB: tl.constexpr,
):
    """Rows r0.. and entries e0.. of a sort phase: indices, real mask, values (0 where not real)."""
    r = r0 + tl.arange(0, RB)
    e = e0 + tl.arange(0, EB)
    real_r = (r < n_rows) & (tl.load(rm_ptr + rm_base + r, mask=r < n_rows, other=0) != 0)
    real_e = (e < n_entries) & (tl.load(em_ptr + em_base + e, mask=e < n_entries, other=0) != 0)
    real = real_r[:, None] & real_e[None, :]
    xe = tl.load(x_ptr + r[:, None] * row_stride + e[None, :] * entry_stride, mask=real, other=0.0).to(ACC)
    return r, e, real, xe


@_helper
def _sort_weights(
    x_ptr,
    row_stride,
    entry_stride,
    n_rows,
    n_entries,
    rm_ptr,
    rm_base,
    em_ptr,
    em_base,
    weighted_ptr,
    ACC: tl.constexpr,
    RB: tl.constexpr,
    EB: tl.constexpr,
    KB: tl.constexpr,
):
    """Phase 2 of mu (nu): every real entry's position p in its row's order, as 2^-p x, into
    weighted_ptr [n_rows, n_entries]."""
    for r0 in range(0, n_rows, RB):
        for e0 in range(0, n_entries, EB):
            r, e, real, xe = _entry_tile(
                x_ptr,
                row_stride,
                entry_stride,
                n_rows,
                n_entries,
                rm_ptr,
                rm_base,
                em_ptr,
                em_base,
                r0,
                e0,
                ACC,
                RB,
                EB,
            )
            position = _ranked_sum(
                x_ptr,
                row_stride,
                entry_stride,
                n_entries,
                em_ptr,
                em_base,
                r,
                e,
                xe,
                x_ptr,
                0,
                0,
                False,
                True,
                ACC,
                RB,
                KB,
            )
            tl.store(
                weighted_ptr + r[:, None] * n_entries + e[None, :],
                tl.where(real, tl.exp2(-position) * xe, 0.0),
                mask=(r[:, None] < n_rows) & (e[None, :] < n_entries),
            )


@_helper
def _max_marginals(
    x_ptr,
    row_stride,
    entry_stride,
    n_rows,
    n_entries,
    rm_ptr,
    rm_base,
    em_ptr,
    em_base,
    weighted_ptr,
    out_ptr,
    ACC: tl.constexpr,
    RB: tl.constexpr,
    EB: tl.constexpr,
    KB: tl.constexpr,
):
    """Phase 3: gain of entry e in row r, 2^-p x_e - sum of 2^-q x over the entries after it, into
    out_ptr[e * n_rows + r]."""
    for r0 in range(0, n_rows, RB):
        for e0 in range(0, n_entries, EB):
            r, e, real, xe = _entry_tile(
                x_ptr,
                row_stride,
                entry_stride,
                n_rows,
                n_entries,
                rm_ptr,
                rm_base,
                em_ptr,
                em_base,
                r0,
                e0,
                ACC,
                RB,
                EB,
            )
            below = _ranked_sum(
                x_ptr,
                row_stride,
                entry_stride,
                n_entries,
                em_ptr,
                em_base,
                r,
                e,
                xe,
                weighted_ptr,
                n_entries,
                1,
                True,
                False,
                ACC,
                RB,
                KB,
            )
            own = tl.load(weighted_ptr + r[:, None] * n_entries + e[None, :], mask=real, other=0.0)
            tl.store(
                out_ptr + e[None, :] * n_rows + r[:, None],
                tl.where(real, own - below, 0.0),
                mask=(r[:, None] < n_rows) & (e[None, :] < n_entries),
            )


@_helper
def _max_marginals_grad(
    x_ptr,
    row_stride,
    entry_stride,
    n_rows,
    n_entries,
    rm_ptr,
    rm_base,
    em_ptr,
    em_base,
    y_ptr,
    r0,
    e0,
    ACC: tl.constexpr,
    RB: tl.constexpr,
    EB: tl.constexpr,
    KB: tl.constexpr,
):
    """Gradient tile [RB, EB] in the entries x[r, e] of sum_{k, r} y[k * n_rows + r] gain(k, r):
    2^-p (y_e - the sum of y over the entries before e). Returns it with the tile's indices."""
    r, e, real, xe = _entry_tile(
        x_ptr, row_stride, entry_stride, n_rows, n_entries, rm_ptr, rm_base, em_ptr, em_base, r0, e0, ACC, RB, EB
    )
    position = _ranked_sum(
        x_ptr, row_stride, entry_stride, n_entries, em_ptr, em_base, r, e, xe, x_ptr, 0, 0, False, True, ACC, RB, KB
    )
    above = _ranked_sum(
        x_ptr,
        row_stride,
        entry_stride,
        n_entries,
        em_ptr,
        em_base,
        r,
        e,
        xe,
        y_ptr,
        1,
        n_rows,
        False,
        False,
        ACC,
        RB,
        KB,
    )
    own = tl.load(y_ptr + e[None, :] * n_rows + r[:, None], mask=real, other=0.0)
    return r, e, tl.where(real, tl.exp2(-position) * (own - above), 0.0)


@_helper
def _contract(
    x_ptr,
    x_rows,
    x_inner,
    y_ptr,
    y_rows,
    y_inner,
    n_inner,
    i,
    j,
    ACC: tl.constexpr,
    KB: tl.constexpr,
    DOT: tl.constexpr,
):
    """sum_k x[i * x_rows + k * x_inner] y[j * y_rows + k * y_inner] for the tile of rows i, columns j."""
    total = tl.zeros([i.shape[0], j.shape[0]], ACC)
    for k0 in range(0, n_inner, KB):
        k = k0 + tl.arange(0, KB)
        x = tl.load(x_ptr + i[:, None] * x_rows + k[None, :] * x_inner, mask=k[None, :] < n_inner, other=0.0)
        y = tl.load(y_ptr + j[:, None] * y_rows + k[None, :] * y_inner, mask=k[None, :] < n_inner, other=0.0)
        total += _mm(x, y, DOT)
    return total


@_helper
def _real_range(m_ptr, base, n, i0, B: tl.constexpr):
    i = i0 + tl.arange(0, B)
    return i, (i < n) & (tl.load(m_ptr + base + i, mask=i < n, other=0) != 0)


@_helper
def _scratch(scr, T, V, QMAX):
    """The pair's scratch (layout: _scratch_layout): alpha, gamma, mu, nu and the two weighted sort buffers,
    after the two sides' node weights."""
    alpha = scr + 2 * QMAX
    gamma = alpha + T * T
    mu = gamma + V * V
    nu = mu + V * T
    row_weighted = nu + T * V
    return alpha, gamma, mu, nu, row_weighted, row_weighted + T * V


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


@_helper
def _softmax_marginals_grad(
    w_ptr,
    m_ptr,
    base,
    n,
    x_ptr,
    k_ptr,
    grad_ptr,
    STEP: tl.constexpr,
    TOL: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PB: tl.constexpr,
    QB: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    DOT: tl.constexpr,
):
    """d/dw of sum_{i,t} X[i, t] alpha[i, t] (X at x_ptr [n, n]) into grad_ptr at the real players (equal
    weights included: the quadrature's derivative holds there too). Two passes over the nodes: the node
    sums K_q = 1/2 a.Xb + sum_i X_ii b_i (1 - a_i/2) into k_ptr first, then each player's gradient."""
    top, low, spacing, count, _eq, finite = _side_grid(w_ptr, m_ptr, base, n, STEP, TOL, GAP, ACC, PB, LIBDEVICE)
    for q0 in range(0, count, QB):
        s, _w, live = _nodes(q0, low, spacing, count, ACC, QB, LIBDEVICE)
        K = tl.zeros([QB], ACC)
        for i0 in range(0, n, PB):
            i = i0 + tl.arange(0, PB)
            u_i, real_i, _c = _player_weights(w_ptr, m_ptr, base, n, i, top, GAP, ACC, LIBDEVICE)
            _l, a_i, b_i = _factors(s, u_i, LIBDEVICE)
            Xb = tl.zeros([PB, QB], ACC)
            for t0 in range(0, n, PB):
                t = t0 + tl.arange(0, PB)
                u_t, _r, _c2 = _player_weights(w_ptr, m_ptr, base, n, t, top, GAP, ACC, LIBDEVICE)
                _l2, _a2, b_t = _factors(s, u_t, LIBDEVICE)
                X = tl.load(x_ptr + i[:, None] * n + t[None, :], mask=(i[:, None] < n) & (t[None, :] < n), other=0.0)
                Xb += _mm(X, tl.trans(b_t), DOT)
            d = tl.load(x_ptr + i * n + i, mask=i < n, other=0.0)
            K += _sum(tl.where(real_i[:, None], 0.5 * a_i * Xb + d[:, None] * b_i * (1.0 - 0.5 * a_i), 0.0), 0)
        tl.store(k_ptr + q0 + tl.arange(0, QB), K, mask=live)
    tl.debug_barrier()
    for k0 in range(0, n, PB):
        k = k0 + tl.arange(0, PB)
        u_k, real_k, clamped = _player_weights(w_ptr, m_ptr, base, n, k, top, GAP, ACC, LIBDEVICE)
        grad_u = tl.zeros([PB], ACC)
        d = tl.load(x_ptr + k * n + k, mask=k < n, other=0.0)
        for q0 in range(0, count, QB):
            s, weight, live = _nodes(q0, low, spacing, count, ACC, QB, LIBDEVICE)
            K = tl.load(k_ptr + q0 + tl.arange(0, QB), mask=live, other=0.0)
            log_p = tl.zeros([QB], ACC)
            Xb = tl.zeros([PB, QB], ACC)
            Xta = tl.zeros([PB, QB], ACC)
            for t0 in range(0, n, PB):
                t = t0 + tl.arange(0, PB)
                u_t, real_t, _c = _player_weights(w_ptr, m_ptr, base, n, t, top, GAP, ACC, LIBDEVICE)
                log_phi, a_t, b_t = _factors(s, u_t, LIBDEVICE)
                log_p += _sum(tl.where(real_t[:, None], log_phi, 0.0), 0)
                inside = (k[:, None] < n) & (t[None, :] < n)
                Xk = tl.load(x_ptr + k[:, None] * n + t[None, :], mask=inside, other=0.0)
                Xtk = tl.load(x_ptr + t[None, :] * n + k[:, None], mask=inside, other=0.0)
                Xb += _mm(Xk, tl.trans(b_t), DOT)  # (X b)_k
                Xta += _mm(Xtk, tl.trans(a_t), DOT)  # (X^T a)_k
            wp = weight * _exp(log_p, LIBDEVICE)
            _l, a_k, b_k = _factors(s, u_k, LIBDEVICE)
            dlog_phi, da, db = _factor_grads(s, u_k, LIBDEVICE)
            node = (
                dlog_phi * K[None, :]
                + 0.5 * (Xb * da + Xta * db)
                + d[:, None] * (db * (1.0 - 0.5 * a_k) - 0.5 * b_k * da)
            )
            grad_u += _sum(wp[None, :] * node, 1)
        grad = tl.where(real_k & ~clamped, grad_u, 0.0)
        grad = tl.where(finite | ~real_k, grad, float("nan"))
        tl.store(grad_ptr + base + k, grad.to(grad_ptr.dtype.element_ty), mask=k < n)


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
