"""The msr estimator's coalition-value kernels (each coalition evaluated once, stratified means) and the
kernels that finish both estimators' partial sums."""

import triton
import triton.language as tl

from . import _jit
from .banzhaf_game import _NEG_INF, _load_pair, _philox_coalition, _safe, _sample_range

_helper = _jit.helper
_sum, _max, _min = _jit.sum_, _jit.max_, _jit.min_


@_helper
def _coalition_value(R, it, iv, wt, wv, tidx, vidx, BT: tl.constexpr, BV: tl.constexpr):
    """f(S) with what its gradient needs: the softmax weights (relative to S's own largest logits), row
    maxima and first argmax, column maxima and first argmax."""
    nSt = _sum(it.to(tl.int32), 0)
    nSv = _sum(iv.to(tl.int32), 0)
    ok = (nSt > 0) & (nSv > 0)
    Rm = tl.where(iv[None, :], R, _NEG_INF)
    r1 = _max(Rm, 1)
    ra = _min(tl.where((Rm == r1[:, None]) & iv[None, :], vidx[None, :], BV), 1)
    Cm = tl.where(it[:, None], R, _NEG_INF)
    k1 = _max(Cm, 0)
    ka = _min(tl.where((Cm == k1[None, :]) & it[:, None], tidx[:, None], BT), 0)
    Et = tl.where(it, tl.exp(wt - _max(tl.where(it, wt, _NEG_INF), 0)), 0.0)
    Ev = tl.where(iv, tl.exp(wv - _max(tl.where(iv, wv, _NEG_INF), 0)), 0.0)
    a = Et / _safe(_sum(Et, 0))
    cw = Ev / _safe(_sum(Ev, 0))
    r1s = tl.where(it & ok, r1, 0.0)
    k1s = tl.where(iv & ok, k1, 0.0)
    text = _sum(a * r1s, 0)
    video = _sum(cw * k1s, 0)
    f = tl.where(ok, 0.5 * (text + video), 0.0)
    return f, ok, a, cw, r1s, k1s, text, video, ra, ka


@triton.jit(do_not_specialize=["num_items", "per_prog", "seed_lo", "seed_hi", "NPROG"])
def _value_fwd_kernel(
    sim_ptr,
    tm_ptr,
    vm_ptr,
    wt_ptr,
    wv_ptr,
    pt_ptr,
    part_ptr,
    cnt_ptr,
    T,
    V,
    num_items,
    per_prog,
    seed_lo,
    seed_hi,
    NPROG,
    NBLK: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    """msr: per-program stratum sums of f(S) and counts, as [T + 1, V + 1] (row T: frame strata, column
    V: word strata, (T, V): all samples)."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    tidx, vidx, tm, vm, R, wt, wv = _load_pair(sim_ptr, tm_ptr, vm_ptr, wt_ptr, wv_ptr, b, T, V, ACC, BT, BV)
    start, end, _pt, _pv, _total = _sample_range(c, num_items, per_prog, pt_ptr, tm, vm, b, T, V, False, NPROG, BT, BV)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    acc = tl.zeros([BT, BV], ACC)
    cnt = tl.zeros([BT, BV], tl.int32)
    sw = tl.zeros([BT], ACC)
    cw_ = tl.zeros([BT], tl.int32)
    sf = tl.zeros([BV], ACC)
    cf = tl.zeros([BV], tl.int32)
    sa = tl.zeros([], ACC)
    for s in range(start, end):
        it, iv = _philox_coalition(s, b, k0, k1, tidx, vidx, tm, vm, T, NBLK)
        f, ok, a, cw, r1s, k1s, text, video, ra, ka = _coalition_value(R, it, iv, wt, wv, tidx, vidx, BT, BV)
        both = it[:, None] & iv[None, :]
        acc += tl.where(both, f, 0.0)
        cnt += both.to(tl.int32)
        sw += tl.where(it, f, 0.0)
        cw_ += it.to(tl.int32)
        sf += tl.where(iv, f, 0.0)
        cf += iv.to(tl.int32)
        sa += f
    W1 = V + 1
    base = (b.to(tl.int64) * NPROG + c) * (T + 1) * W1
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    tl.store(part_ptr + base + tidx[:, None] * W1 + vidx[None, :], acc, mask=cell)
    tl.store(cnt_ptr + base + tidx[:, None] * W1 + vidx[None, :], cnt, mask=cell)
    tl.store(part_ptr + base + tidx * W1 + V, sw, mask=tidx < T)
    tl.store(cnt_ptr + base + tidx * W1 + V, cw_, mask=tidx < T)
    tl.store(part_ptr + base + T * W1 + vidx, sf, mask=vidx < V)
    tl.store(cnt_ptr + base + T * W1 + vidx, cf, mask=vidx < V)
    tl.store(part_ptr + base + T * W1 + V, sa)
    tl.store(cnt_ptr + base + T * W1 + V, end - start)


@_helper
def _load_strata(ptr, base, tidx, vidx, T, V, NPROG):
    """Sum over the NPROG programs (in order) of a [T + 1, V + 1] stratum record."""
    W1 = V + 1
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    both = tl.load(ptr + base + tidx[:, None] * W1 + vidx[None, :], mask=cell, other=0)
    word = tl.load(ptr + base + tidx * W1 + V, mask=tidx < T, other=0)
    frame = tl.load(ptr + base + T * W1 + vidx, mask=vidx < V, other=0)
    total = tl.load(ptr + base + T * W1 + V)
    for p in range(1, NPROG):
        off = base + p * (T + 1) * W1
        both += tl.load(ptr + off + tidx[:, None] * W1 + vidx[None, :], mask=cell, other=0)
        word += tl.load(ptr + off + tidx * W1 + V, mask=tidx < T, other=0)
        frame += tl.load(ptr + off + T * W1 + vidx, mask=vidx < V, other=0)
        total += tl.load(ptr + off + T * W1 + V)
    return both, word, frame, total


@_helper
def _mean(total, count):
    return tl.where(count > 0, total / tl.where(count > 0, count, 1).to(total.dtype), 0.0)


@triton.jit(do_not_specialize=["NPROG"])
def _msr_finish_kernel(part_ptr, cnt_ptr, tm_ptr, vm_ptr, out_ptr, T, V, NPROG, BT: tl.constexpr, BV: tl.constexpr):
    """Stratified means: mean(f | i in, j in) - mean(f | i in, j out) - mean(f | i out, j in)
    + mean(f | i out, j out), a stratum without samples counting 0."""
    b = tl.program_id(0)
    tidx = tl.arange(0, BT)
    vidx = tl.arange(0, BV)
    b64 = b.to(tl.int64)
    base = b64 * NPROG * (T + 1) * (V + 1)
    sb, sw, sf, sa = _load_strata(part_ptr, base, tidx, vidx, T, V, NPROG)
    cb, cw, cf, ca = _load_strata(cnt_ptr, base, tidx, vidx, T, V, NPROG)
    swc = sw[:, None]
    sfr = sf[None, :]
    cwc = cw[:, None]
    cfr = cf[None, :]
    est = (
        _mean(sb, cb)
        - _mean(swc - sb, cwc - cb)
        - _mean(sfr - sb, cfr - cb)
        + _mean(sa - swc - sfr + sb, ca - cwc - cfr + cb)
    )
    tm = tl.load(tm_ptr + b64 * T + tidx, mask=tidx < T, other=0) != 0
    vm = tl.load(vm_ptr + b64 * V + vidx, mask=vidx < V, other=0) != 0
    est = tl.where(tm[:, None] & vm[None, :], est, 0.0)
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    tl.store(out_ptr + b64 * T * V + tidx[:, None] * V + vidx[None, :], est.to(out_ptr.dtype.element_ty), mask=cell)


@triton.jit(do_not_specialize=["divisor", "NPROG"])
def _sum_finish_kernel(part_ptr, tm_ptr, vm_ptr, out_ptr, T, V, divisor, NPROG, BT: tl.constexpr, BV: tl.constexpr):
    """out = (sum over programs, in order, of the partials) / divisor, 0 at padded cells, out's dtype."""
    b = tl.program_id(0)
    tidx = tl.arange(0, BT)
    vidx = tl.arange(0, BV)
    b64 = b.to(tl.int64)
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    offs = tidx[:, None] * V + vidx[None, :]
    acc = tl.load(part_ptr + b64 * NPROG * T * V + offs, mask=cell, other=0)
    for p in range(1, NPROG):
        acc += tl.load(part_ptr + (b64 * NPROG + p) * T * V + offs, mask=cell, other=0)
    acc = acc / (tl.full((), 1, tl.int32) * divisor).to(acc.dtype)
    tm = tl.load(tm_ptr + b64 * T + tidx, mask=tidx < T, other=0) != 0
    vm = tl.load(vm_ptr + b64 * V + vidx, mask=vidx < V, other=0) != 0
    acc = tl.where(tm[:, None] & vm[None, :], acc, 0.0)
    tl.store(out_ptr + b64 * T * V + offs, acc.to(out_ptr.dtype.element_ty), mask=cell)


@triton.jit(do_not_specialize=["num_items", "per_prog", "seed_lo", "seed_hi", "NPROG"])
def _value_bwd_kernel(
    grad_ptr,
    sim_ptr,
    tm_ptr,
    vm_ptr,
    wt_ptr,
    wv_ptr,
    pt_ptr,
    cnt_ptr,
    gs_ptr,
    gt_ptr,
    gv_ptr,
    T,
    V,
    num_items,
    per_prog,
    seed_lo,
    seed_hi,
    NPROG,
    NBLK: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    """Backward of msr: per sample, d estimate / d f(S) contracted with the incoming gradient, times the
    gradient of f(S). cnt_ptr: the stratum counts [B, T + 1, V + 1] (int32)."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    tidx, vidx, tm, vm, R, wt, wv = _load_pair(sim_ptr, tm_ptr, vm_ptr, wt_ptr, wv_ptr, b, T, V, ACC, BT, BV)
    real = tm[:, None] & vm[None, :]
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    b64 = b.to(tl.int64)
    g = tl.load(grad_ptr + b64 * T * V + tidx[:, None] * V + vidx[None, :], mask=cell, other=0).to(ACC)
    g = tl.where(real, g, 0.0)
    start, end, _pt, _pv, _total = _sample_range(c, num_items, per_prog, pt_ptr, tm, vm, b, T, V, False, NPROG, BT, BV)
    W1 = V + 1
    cbase = b64 * (T + 1) * W1
    cb = tl.load(cnt_ptr + cbase + tidx[:, None] * W1 + vidx[None, :], mask=cell, other=0)
    cw = tl.load(cnt_ptr + cbase + tidx * W1 + V, mask=tidx < T, other=0)[:, None]
    cf = tl.load(cnt_ptr + cbase + T * W1 + vidx, mask=vidx < V, other=0)[None, :]
    n_all = num_items
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    gsim = tl.zeros([BT, BV], ACC)
    gwt = tl.zeros([BT], ACC)
    gwv = tl.zeros([BV], ACC)
    for s in range(start, end):
        it, iv = _philox_coalition(s, b, k0, k1, tidx, vidx, tm, vm, T, NBLK)
        same = it[:, None] == iv[None, :]
        i_in = it[:, None]
        j_in = iv[None, :]
        count = tl.where(i_in & j_in, cb, tl.where(i_in, cw - cb, tl.where(j_in, cf - cb, n_all - cw - cf + cb)))
        count = tl.where(real & (count > 0), count, 1).to(ACC)
        scale = _sum(_sum(tl.where(same, g, -g) / count, 1), 0)
        f, ok, a, cw_, r1s, k1s, text, video, ra, ka = _coalition_value(R, it, iv, wt, wv, tidx, vidx, BT, BV)
        half = tl.where(ok, 0.5 * scale, 0.0)
        gsim += tl.where(vidx[None, :] == ra[:, None], (half * a)[:, None], 0.0)
        gsim += tl.where(tidx[:, None] == ka[None, :], (half * cw_)[None, :], 0.0)
        gwt += half * a * (r1s - text)
        gwv += half * cw_ * (k1s - video)
    base = b64 * NPROG + c
    tl.store(gs_ptr + base * T * V + tidx[:, None] * V + vidx[None, :], gsim, mask=cell)
    tl.store(gt_ptr + base * T + tidx, gwt, mask=tidx < T)
    tl.store(gv_ptr + base * V + vidx, gwv, mask=vidx < V)
