"""The paired and msr estimators' per-cell kernels (forward and backward): every program takes a range of
(pair, sample) items, draws each coalition and adds every cell's contribution."""

import triton
import triton.language as tl

from . import _jit
from .banzhaf_game import (
    _NEG_INF,
    _add_grads,
    _coalition_state,
    _cols_of,
    _kind_grad,
    _kind_value,
    _load_pair,
    _ref_value1_grad,
    _ref_value1_parts,
    _rows_of,
    _sample_range,
    _side_value,
)

_sum, _helper = _jit.sum_, _jit.helper


@_helper
def _add_smaller_kinds_grad(grads, G, R, without, text, video, members, real, T, V, ZF: tl.constexpr):
    """grads plus the gradients of the other three terms of the cell delta: - value(c + i) - value(c + j)
    + value(c) (the first term, value(c + i + j), is the caller's: value1 for the reference)."""
    grads = _add_grads(grads, _kind_grad(G, R, without, text, video, members, real, T, V, 1, 0, ZF, -1))
    grads = _add_grads(grads, _kind_grad(G, R, without, text, video, members, real, T, V, 0, 1, ZF, -1))
    return _add_grads(grads, _kind_grad(G, R, without, text, video, members, real, T, V, 0, 0, ZF, 1))


# ------------------------------------------------------------------------------------------------
# Kernels


@triton.jit(do_not_specialize=["num_items", "per_prog", "seed_lo", "seed_hi", "NPROG"])
def _cells_fwd_kernel(
    sim_ptr,
    tm_ptr,
    vm_ptr,
    wt_ptr,
    wv_ptr,
    pt_ptr,
    part_ptr,
    T,
    V,
    num_items,
    per_prog,
    seed_lo,
    seed_hi,
    REFERENCE: tl.constexpr,
    EXACT: tl.constexpr,
    NPROG,
    NBLK: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    """paired (both definitions) and exact (reference): per-program sums of the cell deltas."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    tidx, vidx, tm, vm, R, wt, wv = _load_pair(sim_ptr, tm_ptr, vm_ptr, wt_ptr, wv_ptr, b, T, V, ACC, BT, BV)
    real = tm[:, None] & vm[None, :]
    start, end, pt, pv, total = _sample_range(c, num_items, per_prog, pt_ptr, tm, vm, b, T, V, EXACT, NPROG, BT, BV)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    acc = tl.zeros([BT, BV], ACC)
    for s in range(start, end):
        members, text, video, without, _rows2, _cols2 = _coalition_state(
            s, b, k0, k1, pt, pv, tidx, vidx, tm, vm, R, wt, wv, T, EXACT, NBLK, ACC, BT, BV
        )
        it, iv, _itf, _ivf, nct, ncv = members
        W, _cW, X, _cX = without
        if REFERENCE:
            text_part, video_part = _ref_value1_parts(R, W, X, text, video, members, wt, wv, tidx, vidx, T, V)
            delta = 0.5 * (text_part[0] + video_part[0])
            delta -= _kind_value(R, without, text, video, members, real, T, V, 1, 0, True)
            delta -= _kind_value(R, without, text, video, members, real, T, V, 0, 1, True)
            delta += _kind_value(R, without, text, video, members, real, T, V, 0, 0, True)
        else:
            # Textbook fast path: the four values share two row-max tiles (without / with frame j)
            # and two column-max tiles.
            M0 = tl.where(W == _NEG_INF, 0.0, W)
            M1 = tl.maximum(W, R)
            N0 = tl.where(X == _NEG_INF, 0.0, X)
            N1 = tl.maximum(X, R)
            ts = _rows_of(text)
            vs = _cols_of(video)
            t0M0, _m = _side_value(M0, ts, 0, 0)
            t1M0, _m = _side_value(M0, ts, 1, 0)
            t0M1, _m = _side_value(M1, ts, 0, 0)
            t1M1, _m = _side_value(M1, ts, 1, 0)
            v0N0, _n = _side_value(N0, vs, 0, 1)
            v1N0, _n = _side_value(N0, vs, 1, 1)
            v0N1, _n = _side_value(N1, vs, 0, 1)
            v1N1, _n = _side_value(N1, vs, 1, 1)
            has_t = (nct > 0)[:, None]
            has_v = (ncv > 0)[None, :]
            delta = t1M1 + v1N1
            delta -= tl.where(has_v, t1M0 + v0N1, 0.0)
            delta -= tl.where(has_t, t0M1 + v1N0, 0.0)
            delta += tl.where(has_t & has_v, t0M0 + v0N0, 0.0)
            delta = tl.where(real, 0.5 * delta, 0.0)
        if EXACT:
            delta = tl.where((~it)[:, None] & (~iv)[None, :], delta, 0.0)
        acc += delta
    if EXACT:
        acc = acc * (4.0 / total.to(ACC))
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    base = (b.to(tl.int64) * NPROG + c) * T * V
    tl.store(part_ptr + base + tidx[:, None] * V + vidx[None, :], acc, mask=cell)


@triton.jit(do_not_specialize=["num_items", "per_prog", "seed_lo", "seed_hi", "NPROG"])
def _cells_bwd_kernel(
    grad_ptr,
    sim_ptr,
    tm_ptr,
    vm_ptr,
    wt_ptr,
    wv_ptr,
    pt_ptr,
    gs_ptr,
    gt_ptr,
    gv_ptr,
    T,
    V,
    num_items,
    per_prog,
    seed_lo,
    seed_hi,
    REFERENCE: tl.constexpr,
    EXACT: tl.constexpr,
    NPROG,
    NBLK: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    """Backward of _cells_fwd_kernel: per-program partial gradients of sim and both weight logits."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    tidx, vidx, tm, vm, R, wt, wv = _load_pair(sim_ptr, tm_ptr, vm_ptr, wt_ptr, wv_ptr, b, T, V, ACC, BT, BV)
    real = tm[:, None] & vm[None, :]
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    b64 = b.to(tl.int64)
    g = tl.load(grad_ptr + b64 * T * V + tidx[:, None] * V + vidx[None, :], mask=cell, other=0).to(ACC)
    start, end, pt, pv, total = _sample_range(c, num_items, per_prog, pt_ptr, tm, vm, b, T, V, EXACT, NPROG, BT, BV)
    if EXACT:
        g = g * (4.0 / total.to(ACC))
    else:
        g = g * (1.0 / total.to(ACC))
    g = tl.where(real, 0.5 * g, 0.0)  # 1/2 of the WTI score
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    gsim = tl.zeros([BT, BV], ACC)
    gwt = tl.zeros([BT], ACC)
    gwv = tl.zeros([BV], ACC)
    for s in range(start, end):
        members, text, video, without, rows, cols = _coalition_state(
            s, b, k0, k1, pt, pv, tidx, vidx, tm, vm, R, wt, wv, T, EXACT, NBLK, ACC, BT, BV
        )
        it, iv, _itf, _ivf, _nct, _ncv = members
        G = g
        if EXACT:
            G = tl.where((~it)[:, None] & (~iv)[None, :], G, 0.0)
        if REFERENCE:
            grads = _ref_value1_grad(G, R, without, text, video, members, wt, wv, tidx, vidx, T, V)
        else:
            grads = _kind_grad(G, R, without, text, video, members, real, T, V, 1, 1, False, 1)
        grads = _add_smaller_kinds_grad(grads, G, R, without, text, video, members, real, T, V, REFERENCE)
        own, at, bt, av, bv, dwt, dwv = grads
        _r1, _r2, _ra, rb, is_ra = rows
        _k1, _k2, _ka, kb, is_ka = cols
        # Scatter: row t's first / second argmax over S_v, column v's first / second argmax over S_t.
        gsim += own
        gsim += tl.where(is_ra, _sum(at, 1)[:, None], 0.0)
        gsim += tl.where(vidx[None, :] == rb[:, None], _sum(bt, 1)[:, None], 0.0)
        gsim += tl.where(is_ka, _sum(av, 0)[None, :], 0.0)
        gsim += tl.where(tidx[:, None] == kb[None, :], _sum(bv, 0)[None, :], 0.0)
        gwt += dwt
        gwv += dwv
    base = b64 * NPROG + c
    tl.store(gs_ptr + base * T * V + tidx[:, None] * V + vidx[None, :], gsim, mask=cell)
    tl.store(gt_ptr + base * T + tidx, gwt, mask=tidx < T)
    tl.store(gv_ptr + base * V + vidx, gwv, mask=vidx < V)
