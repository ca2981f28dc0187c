"""banzhaf_interaction (docs/banzhaf.md) in Triton: forward and backward of every definition and estimator.

Design. One program per (pair b, chunk of samples); R [BT, BV] (BT = next_power_of_2(T), BV likewise)
stays in registers. Per sample the program draws the Philox coalition (tl Philox4x32-10 on uint32,
counter (s, b, k // 128, 0), key (seed lo, seed hi): the same bits as hbi_ops.philox and csrc/philox.h),
then derives the coalition state as [BT]/[BV] vectors from masked [BT, BV] tiles: the top-2 of every
row over S_v (max, first argmax, second max, its index) and of every column over S_t. From them two
tiles hold, for every cell (i, j), "row t's maximum over S_v without frame j" (W[t, j]) and "column
v's maximum over S_t without word i" (X[i, v]). Every value the estimators need for cell (i, j)
(f(c + i + j), f(c + i), f(c + j), f(c) for c = S \\ {i, j}, and the reference's zero-filled F) is a
softmax-weighted sum whose terms depend on (t, j) (text side) or (i, v) (video side) only, plus a
correction at t = i (v = j): column sums over t (row sums over v) of a [BT, BV] tile and O(1) per
cell. The softmax weights are taken relative to the coalition's own largest logit (and to the second
largest for c = S minus the top member; a joining player above c's largest rescales c's terms), so
they are exact for any finite logits (_softmax_state). So a sample costs O(T * V) for all T * V cells at
once (the textbook fast path of the CPU code, done as tile operations). The reference's value1 has
softmax weights exp(p_t / Z(i)) that depend on (t, i): a loop over t (and over v) of [BT, BV] tile
updates, O(T * V * (T + V)) a sample.

Backward differentiates the same per-sample expressions, recomputing the coalitions from the seed.
For a value whose text part is sum_{t in X_t(i)} a_t(i) M[t, j], the gradient coefficient of every
(t, j) is K[t, j] = sum_i G[i, j] a_t(i) (_side_grad), which goes to sim[t, argmax of M[t, j]]: the
argmax is row t's first or second argmax (scattered by a one-hot compare after summing over j), or
(t, j) itself when the added frame j wins. Same for the video side.
Per-chunk partials [B, chunks, ...] are summed in a fixed order afterwards: results are deterministic
(no atomics). fp16/bf16 accumulate in fp32, fp64 in fp64.

msr: one pass per chunk accumulates the stratum sums and counts of f(S) (as a [T+1, V+1] tile: row T
holds the frame sums, column V the word sums, (T, V) the total), a second small kernel sums the chunks
in order and forms the stratified means. exact (reference definition): programs over chunks of the 2^n
subsets of each pair. The exact textbook index is banzhaf_closed_form.py's.

Floor (the GPU target, H100: 3.35 TB/s, ~51 TFLOP/s fp32 without tensor cores): paired textbook,
B=128, T=32 (20 real), V=12, 1000 samples. Bytes: sim + weights + out, ~0.4 MB: 0.1 us. Work per
(pair, sample): ~30 flops for each of the 20 x 12 real cells plus ~10 x 20 x 12 for the top-2 and
the four sums, ~10 k flops; 128 k (pair, sample) -> ~1.3 GFLOP -> ~25 us at 51 TFLOP/s, but the
tiles are padded to 32 x 16 (2.1x) -> ~55 us of issue; floor ~50 us, target 1 ms. msr: ~3 k flops a
(pair, sample) -> ~0.4 GFLOP padded -> ~8 us; the floor there is the two launches (~5-10 us);
target 0.1 ms. (Not measured: no GPU was available when this was written.)

Geometry: grid (B, programs per pair), about 8 programs per SM for the cell kernels (16 for msr), 2
warps for a 32 x 16 tile in the forward pass (ptxas, sm_90: 157 registers, no
spills), 4 in the backward (199 registers textbook, 254 reference, no spills), 1 for msr (122).
Expected from an instruction count (~1 k warp-instructions a (pair, sample) forward): ~0.3 ms for the
paired target, ~0.05 ms of kernel time for msr, where the Python launch overhead (two launches, no
custom-op dispatch when nothing needs a gradient) is of the same order as the 0.1 ms target.
"""

import torch
import triton
import triton.language as tl
from triton.language.random import philox_impl

from hbi_ops import ops

from . import _jit, _launch, banzhaf_closed_form

_INTERPRETING, _helper = _jit.INTERPRETING, _jit.helper
_sum, _max, _min = _jit.sum_, _jit.max_, _jit.min_


def _philox_interpreted(c0, c1, c2, c3, k0, k1, n_rounds):
    """triton.language.random.philox_impl (Philox4x32), as plain code for the interpreter."""
    for _ in range(n_rounds):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(_c2, tl.full((), 0xCD9E8D57, tl.uint32)) ^ c1 ^ k0
        c2 = tl.umulhi(_c0, tl.full((), 0xD2511F53, tl.uint32)) ^ c3 ^ k1
        c1 = _c2 * tl.full((), 0xCD9E8D57, tl.uint32)
        c3 = _c0 * tl.full((), 0xD2511F53, tl.uint32)
        k0 = k0 + tl.full((), 0x9E3779B9, tl.uint32)
        k1 = k1 + tl.full((), 0xBB67AE85, tl.uint32)
    return c0, c1, c2, c3


_philox = _philox_interpreted if _INTERPRETING else philox_impl

_NEG_INF = tl.constexpr(float("-inf"))  # jit code reads globals only as constexpr


# ------------------------------------------------------------------------------------------------
# Per-sample building blocks (inlined into the kernels)


@_helper
def _philox_coalition(s, b, k0, k1, tidx, vidx, tm, vm, T, NBLK: tl.constexpr):
    """Membership of words and frames in the coalition of sample s of pair b (docs/banzhaf.md)."""
    kt = tidx
    kv = T + vidx
    zero = tl.full((), 0, tl.uint32)
    su = (s + tl.full((), 0, tl.int32)).to(tl.uint32)  # s is a Python int under the interpreter
    bu = b.to(tl.uint32)
    word_t = tl.zeros(tidx.shape, tl.uint32)
    word_v = tl.zeros(vidx.shape, tl.uint32)
    for blk in tl.static_range(NBLK):
        x0, x1, x2, x3 = _philox(su, bu, tl.full((), blk, tl.uint32), zero, k0, k1, 10)
        wi = (kt >> 5) & 3
        pick = tl.where(wi == 0, x0, tl.where(wi == 1, x1, tl.where(wi == 2, x2, x3)))
        word_t = tl.where((kt >> 7) == blk, pick, word_t)
        wi = (kv >> 5) & 3
        pick = tl.where(wi == 0, x0, tl.where(wi == 1, x1, tl.where(wi == 2, x2, x3)))
        word_v = tl.where((kv >> 7) == blk, pick, word_v)
    it = ((word_t >> (kt & 31).to(tl.uint32)) & 1) != 0
    iv = ((word_v >> (kv & 31).to(tl.uint32)) & 1) != 0
    return it & tm, iv & vm


@_helper
def _subset_coalition(code, pt, pv, tm, vm):
    """Membership in subset `code` of the pair's real players (pt, pv: player index of each position)."""
    code = code + tl.full((), 0, tl.int32)  # a Python int under the interpreter
    it = ((code >> tl.where(tm, pt, 0)) & 1) != 0
    iv = ((code >> tl.where(vm, pv, 0)) & 1) != 0
    return it & tm, iv & vm


@_helper
def _top2(R, it, iv, tidx, vidx, BT: tl.constexpr, BV: tl.constexpr):
    """Row top-2 over S_v and column top-2 over S_t (values; first indices; BV / BT when none)."""
    ivb = iv[None, :]
    itb = it[:, None]
    Rm = tl.where(ivb, R, _NEG_INF)
    r1 = _max(Rm, 1)
    ra = _min(tl.where((Rm == r1[:, None]) & ivb, vidx[None, :], BV), 1)
    is_ra = vidx[None, :] == ra[:, None]
    Rm2 = tl.where(is_ra, _NEG_INF, Rm)
    r2 = _max(Rm2, 1)
    rb = _min(tl.where((Rm2 == r2[:, None]) & ivb & (~is_ra), vidx[None, :], BV), 1)
    Cm = tl.where(itb, R, _NEG_INF)
    k1 = _max(Cm, 0)
    ka = _min(tl.where((Cm == k1[None, :]) & itb, tidx[:, None], BT), 0)
    is_ka = tidx[:, None] == ka[None, :]
    Cm2 = tl.where(is_ka, _NEG_INF, Cm)
    k2 = _max(Cm2, 0)
    kb = _min(tl.where((Cm2 == k2[None, :]) & itb & (~is_ka), tidx[:, None], BT), 0)
    return r1, r2, ra, rb, is_ra, k1, k2, ka, kb, is_ka


@_helper
def _without(r1, r2, is_ra, k1, k2, is_ka, rest_t, rest_v):
    """W[t, j]: row t's max over S_v minus j (-inf if empty), code 1 = first argmax, 2 = second, 0 = none.
    X[i, v]: column v's max over S_t minus i, same codes."""
    W = tl.where(rest_v[None, :], tl.where(is_ra, r2[:, None], r1[:, None]), _NEG_INF)
    cW = tl.where(rest_v[None, :], tl.where(is_ra, 2, 1), 0)
    X = tl.where(rest_t[:, None], tl.where(is_ka, k2[None, :], k1[None, :]), _NEG_INF)
    cX = tl.where(rest_t[:, None], tl.where(is_ka, 2, 1), 0)
    return W, cW, X, cX


@_helper
def _kind_tile(base, code, R, ADD_OTHER: tl.constexpr, CLAMP: tl.constexpr, clamp):
    """Row (column) maxima of one coalition kind: with the other side's cell player added (it wins on
    a strict >, code 3 = the cell itself) and the reference's zero-fill clamp (code 0)."""
    M = base
    c = code
    if ADD_OTHER:
        win = R > M
        M = tl.where(win, R, M)
        c = tl.where(win, 3, c)
    if CLAMP:
        neg = clamp & (M < 0)
        M = tl.where(neg, 0.0, M)
        c = tl.where(neg, 0, c)
    return M, c


@_helper
def _softmax_state(w, members, idx, BIG: tl.constexpr):
    """One side's softmax weights over the coalition, relative to the coalition's own largest logit
    (exact for any finite logits). Vectors over the side's players: E1 = exp(w - m1) at members (m1 the
    largest member logit, of the first top member), E2 = exp(w - m2) at the members but the top one
    (m2: the largest of those), the top member's mask, and for every player k the coalition c = S minus
    k: own = k's term in E1's sum (0 for the top member, whose c uses E2), Zc = c's sum, and the join
    factors of c + k (c's terms weigh g, k's weighs e: no overflow when k's logit exceeds c's)."""
    wm = tl.where(members, w, _NEG_INF)
    m1 = _max(wm, 0)
    top = _min(tl.where(members & (wm == m1), idx, BIG), 0)
    is_top = members & (idx == top)
    rest = members & ~is_top
    m2 = _max(tl.where(rest, w, _NEG_INF), 0)
    E1 = tl.where(members, tl.exp(w - m1), 0.0)
    E2 = tl.where(rest, tl.exp(w - m2), 0.0)
    own = tl.where(rest, E1, 0.0)
    Zc = tl.where(is_top, _sum(E2, 0), _sum(E1, 0) - own)
    base = tl.where(is_top, m2, m1)  # the largest logit of c
    above = w > base
    g = tl.where(above, tl.where(base == _NEG_INF, 0.0, tl.exp(base - w)), 1.0)
    e = tl.where(above, 1.0, tl.exp(w - base))
    return E1, E2, is_top, own, Zc, g, e


@_helper
def _side_value(M, E1, E2, top, own, Zc, g, e, ADD: tl.constexpr, AXIS: tl.constexpr):
    """The softmax-weighted sum over the members t of X_t(i) of M[t, j] for every cell, X = c + i when
    ADD (c = S minus the cell's own player i); AXIS is the token axis (0: text side, tiles [t|i, j]; 1:
    video side, tiles [i, v|j]) and the state vectors (_softmax_state) broadcast along it."""
    Ms = tl.where(M == _NEG_INF, 0.0, M)
    s1 = tl.expand_dims(_sum(E1 * Ms, AXIS), AXIS)
    s2 = tl.expand_dims(_sum(E2 * Ms, AXIS), AXIS)
    base = tl.where(top, s2, s1 - own * Ms)  # c's weighted sum
    if ADD:
        return (base * g + e * Ms) / (Zc * g + e), Ms
    else:
        return base / _safe(Zc), Ms


@_helper
def _side_grad(G, Ms, TX, E1, E2, top, Zc, g, e, ADD: tl.constexpr, AXIS: tl.constexpr):
    """Gradient of sum_cells G * _side_value: coefficient K of every (token, cell) entry of M (to be
    scattered to M's argmax) and the gradient of the token weight logits. Member t of c(i) weighs E1[t]
    (E2[t] when i is the top member) times g_i / Z(i); the joining player i weighs e_i / Z(i)."""
    if ADD:
        Z = Zc * g + e
        gz = G * g / Z
    else:
        gz = G / _safe(Zc)
    gz1 = tl.where(top, 0.0, gz)
    gz2 = tl.where(top, gz, 0.0)
    y1 = gz1 * TX
    y2 = gz2 * TX
    K = E1 * (tl.expand_dims(_sum(gz1, AXIS), AXIS) - gz1) + E2 * (tl.expand_dims(_sum(gz2, AXIS), AXIS) - gz2)
    L = E1 * (tl.expand_dims(_sum(y1, AXIS), AXIS) - y1) + E2 * (tl.expand_dims(_sum(y2, AXIS), AXIS) - y2)
    if ADD:
        ge = G * e / Z
        K += ge
        L += ge * TX
    dw = _sum(K * Ms - L, 1 - AXIS)
    return K, dw


@_helper
def _safe(z):
    return tl.where(z == 0, 1.0, z)


@_helper
def _rows(x):
    return x[:, None]


@_helper
def _cols(x):
    return x[None, :]


@_helper
def _kind_sides(
    R,
    W,
    cW,
    X,
    cX,
    tE1,
    tE2,
    ttop,
    town,
    tZc,
    tg,
    te,
    vE1,
    vE2,
    vtop,
    vown,
    vZc,
    vg,
    ve,
    nct,
    ncv,
    real,
    T,
    V,
    AI: tl.constexpr,
    AJ: tl.constexpr,
    ZF: tl.constexpr,
):
    """The text and video sides of the value of X = c (+ i if AI) (+ j if AJ) for every cell, with what
    their gradients need: (valid, cM, cN, TX, Ms, VX, Ns). t* / v*: the sides' _softmax_state."""
    nt = nct + AI
    nv = ncv + AJ
    valid = real & (nt > 0)[:, None] & (nv > 0)[None, :]
    M, cM = _kind_tile(W, cW, R, AJ, ZF, (nv < V)[None, :])
    N, cN = _kind_tile(X, cX, R, AI, ZF, (nt < T)[:, None])
    TX, Ms = _side_value(M, _rows(tE1), _rows(tE2), _rows(ttop), _rows(town), _rows(tZc), _rows(tg), _rows(te), AI, 0)
    VX, Ns = _side_value(N, _cols(vE1), _cols(vE2), _cols(vtop), _cols(vown), _cols(vZc), _cols(vg), _cols(ve), AJ, 1)
    return valid, cM, cN, TX, Ms, VX, Ns


@_helper
def _kind_value(
    R,
    W,
    cW,
    X,
    cX,
    tE1,
    tE2,
    ttop,
    town,
    tZc,
    tg,
    te,
    vE1,
    vE2,
    vtop,
    vown,
    vZc,
    vg,
    ve,
    nct,
    ncv,
    real,
    T,
    V,
    AI: tl.constexpr,
    AJ: tl.constexpr,
    ZF: tl.constexpr,
):
    """Value of X = c (+ i if AI) (+ j if AJ) for every cell: f, or the reference's F when ZF."""
    valid, _cM, _cN, TX, _Ms, VX, _Ns = _kind_sides(
        R,
        W,
        cW,
        X,
        cX,
        tE1,
        tE2,
        ttop,
        town,
        tZc,
        tg,
        te,
        vE1,
        vE2,
        vtop,
        vown,
        vZc,
        vg,
        ve,
        nct,
        ncv,
        real,
        T,
        V,
        AI,
        AJ,
        ZF,
    )
    return tl.where(valid, 0.5 * (TX + VX), 0.0)


@_helper
def _kind_grad(
    G,
    R,
    W,
    cW,
    X,
    cX,
    tE1,
    tE2,
    ttop,
    town,
    tZc,
    tg,
    te,
    vE1,
    vE2,
    vtop,
    vown,
    vZc,
    vg,
    ve,
    nct,
    ncv,
    real,
    T,
    V,
    AI: tl.constexpr,
    AJ: tl.constexpr,
    ZF: tl.constexpr,
    SIGN: tl.constexpr,
):
    """Gradient of sum_cells SIGN * G * value(kind): (self, text first/second argmax, video first/second
    argmax) coefficient tiles and the weight-logit gradients. G includes the factor 1/2."""
    valid, cM, cN, TX, Ms, VX, Ns = _kind_sides(
        R,
        W,
        cW,
        X,
        cX,
        tE1,
        tE2,
        ttop,
        town,
        tZc,
        tg,
        te,
        vE1,
        vE2,
        vtop,
        vown,
        vZc,
        vg,
        ve,
        nct,
        ncv,
        real,
        T,
        V,
        AI,
        AJ,
        ZF,
    )
    Gk = tl.where(valid, G * SIGN, 0.0)
    Kt, dwt = _side_grad(Gk, Ms, TX, _rows(tE1), _rows(tE2), _rows(ttop), _rows(tZc), _rows(tg), _rows(te), AI, 0)
    Kv, dwv = _side_grad(Gk, Ns, VX, _cols(vE1), _cols(vE2), _cols(vtop), _cols(vZc), _cols(vg), _cols(ve), AJ, 1)
    own = tl.where(cM == 3, Kt, 0.0) + tl.where(cN == 3, Kv, 0.0)
    return (
        own,
        tl.where(cM == 1, Kt, 0.0),
        tl.where(cM == 2, Kt, 0.0),
        tl.where(cN == 1, Kv, 0.0),
        tl.where(cN == 2, Kv, 0.0),
        dwt,
        dwv,
    )


@_helper
def _value4_probability(sel, idx, E1, E2, top, Zc, itf):
    """Player t's (sel) probability in value4's softmax over c(i) for every cell row i (a vector over i),
    and whether t is a member of c(i) (t in S, t != i)."""
    e1 = _sum(tl.where(sel, E1, 0.0), 0)
    e2 = _sum(tl.where(sel, E2, 0.0), 0)
    in_s = _sum(tl.where(sel, itf, 0.0), 0)
    member = ~sel & ((idx * 0 + in_s) > 0)  # (broadcast: the interpreter has no vector & scalar)
    return tl.where(top, e2, e1) / _safe(Zc), member


@_helper
def _ref_value1_parts(R, W, X, tE1, tE2, ttop, tZc, vE1, vE2, vtop, vZc, itf, ivf, wt, wv, nct, ncv, tidx, vidx, T, V):
    """The reference's value1 for every cell: text and video parts with what their gradients need. Its
    logits are value4's probabilities at members of c and the raw logit at i (j): shifted by a bound of
    their maximum (probabilities are at most 1; without other members the raw logit is alone)."""
    Wr = tl.where(W < 0, 0.0, W)
    Xr = tl.where(X < 0, 0.0, X)
    shift_t = tl.where(nct > 0, tl.maximum(wt, 1.0), wt)
    shift_v = tl.where(ncv > 0, tl.maximum(wv, 1.0), wv)
    Dsum = tl.zeros(wt.shape, wt.dtype)
    EP = tl.zeros(wt.shape, wt.dtype)
    S1 = tl.zeros(R.shape, R.dtype)
    A1 = tl.zeros(R.shape, R.dtype)
    for t in range(0, T):
        sel = tidx == t
        p, member = _value4_probability(sel, tidx, tE1, tE2, ttop, tZc, itf)
        row_t = _sum(tl.where(sel[:, None], Wr, 0.0), 0)
        e = tl.where(member, tl.exp(p - shift_t), 0.0)
        Dsum += e
        EP += e * p
        S1 += e[:, None] * row_t[None, :]
        A1 += (e * p)[:, None] * row_t[None, :]
    Dvsum = tl.zeros(wv.shape, wv.dtype)
    EQ = tl.zeros(wv.shape, wv.dtype)
    S2 = tl.zeros(R.shape, R.dtype)
    A2 = tl.zeros(R.shape, R.dtype)
    for v in range(0, V):
        sel = vidx == v
        q, member = _value4_probability(sel, vidx, vE1, vE2, vtop, vZc, ivf)
        col_v = _sum(tl.where(sel[None, :], Xr, 0.0), 1)
        e = tl.where(member, tl.exp(q - shift_v), 0.0)
        Dvsum += e
        EQ += e * q
        S2 += col_v[:, None] * e[None, :]
        A2 += col_v[:, None] * (e * q)[None, :]
    head_t = tl.exp(wt - shift_t)
    head_v = tl.exp(wv - shift_v)
    Dt = head_t + Dsum
    Dv = head_v + Dvsum
    row_i = tl.where((V > 1) & (R < 0), 0.0, R)
    col_j = tl.where((T > 1) & (R < 0), 0.0, R)
    text1 = (head_t[:, None] * row_i + S1) / Dt[:, None]
    video1 = (head_v[None, :] * col_j + S2) / Dv[None, :]
    return text1, video1, Wr, Xr, Dt, Dv, EP, EQ, A1, A2, head_t, head_v, row_i, col_j, shift_t, shift_v


@_helper
def _ref_value1_grad(
    G1, R, W, X, cW, cX, tE1, tE2, ttop, tZc, vE1, vE2, vtop, vZc, itf, ivf, wt, wv, nct, ncv, tidx, vidx, T, V
):
    """Gradient of sum_cells G1 * value1 (G1 includes the factor 1/2)."""
    text1, video1, Wr, Xr, Dt, Dv, EP, EQ, A1, A2, head_t, head_v, row_i, col_j, shift_t, shift_v = _ref_value1_parts(
        R, W, X, tE1, tE2, ttop, tZc, vE1, vE2, vtop, vZc, itf, ivf, wt, wv, nct, ncv, tidx, vidx, T, V
    )
    alpha_i = head_t / Dt
    beta_j = head_v / Dv
    own = tl.where((V > 1) & (R < 0), 0.0, G1 * alpha_i[:, None])
    own += tl.where((T > 1) & (R < 0), 0.0, G1 * beta_j[None, :])
    dwt = _sum(G1 * alpha_i[:, None] * (row_i - text1), 1)
    dwv = _sum(G1 * beta_j[None, :] * (col_j - video1), 0)
    gdp = (A1 - text1 * EP[:, None]) / Dt[:, None]
    gdq = (A2 - video1 * EQ[None, :]) / Dv[None, :]
    Kt = tl.zeros(R.shape, R.dtype)
    for t in range(0, T):
        sel = tidx == t
        p, memb = _value4_probability(sel, tidx, tE1, tE2, ttop, tZc, itf)
        row_t = _sum(tl.where(sel[:, None], Wr, 0.0), 0)
        p = tl.where(memb, p, 0.0)
        alpha = tl.where(memb, tl.exp(p - shift_t), 0.0) / Dt
        Kt += tl.where(sel[:, None], _sum(G1 * alpha[:, None], 0)[None, :], 0.0)
        term = G1 * p[:, None] * (alpha[:, None] * (row_t[None, :] - text1) - gdp)
        dwt += tl.where(sel, _sum(_sum(term, 1), 0), 0.0)
    Kv = tl.zeros(R.shape, R.dtype)
    for v in range(0, V):
        sel = vidx == v
        q, memb = _value4_probability(sel, vidx, vE1, vE2, vtop, vZc, ivf)
        col_v = _sum(tl.where(sel[None, :], Xr, 0.0), 1)
        q = tl.where(memb, q, 0.0)
        beta = tl.where(memb, tl.exp(q - shift_v), 0.0) / Dv
        Kv += tl.where(sel[None, :], _sum(G1 * beta[None, :], 1)[:, None], 0.0)
        term = G1 * q[None, :] * (beta[None, :] * (col_v[:, None] - video1) - gdq)
        dwv += tl.where(sel, _sum(_sum(term, 1), 0), 0.0)
    keep_t = W >= 0  # the reference clamps negative maxima to 0 (no gradient there)
    keep_v = X >= 0
    return (
        own,
        tl.where(keep_t & (cW == 1), Kt, 0.0),
        tl.where(keep_t & (cW == 2), Kt, 0.0),
        tl.where(keep_v & (cX == 1), Kv, 0.0),
        tl.where(keep_v & (cX == 2), Kv, 0.0),
        dwt,
        dwv,
    )


@_helper
def _load_pair(sim_ptr, tm_ptr, vm_ptr, wt_ptr, wv_ptr, b, T, V, ACC: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr):
    tidx = tl.arange(0, BT)
    vidx = tl.arange(0, BV)
    b64 = b.to(tl.int64)
    tm = tl.load(tm_ptr + b64 * T + tidx, mask=tidx < T, other=0) != 0
    vm = tl.load(vm_ptr + b64 * V + vidx, mask=vidx < V, other=0) != 0
    cell = (tidx[:, None] < T) & (vidx[None, :] < V)
    # Padded positions are never read (whatever they hold, NaN included, never matters).
    R = tl.load(
        sim_ptr + b64 * T * V + tidx[:, None] * V + vidx[None, :], mask=cell & tm[:, None] & vm[None, :], other=0
    ).to(ACC)
    wt = tl.load(wt_ptr + b64 * T + tidx, mask=tm, other=0).to(ACC)
    wv = tl.load(wv_ptr + b64 * V + vidx, mask=vm, other=0).to(ACC)
    return tidx, vidx, tm, vm, R, wt, wv


@_helper
def _sample_range(
    c, num_items, per_prog, pt_ptr, tm, vm, b, T, V, EXACT: tl.constexpr, NPROG, BT: tl.constexpr, BV: tl.constexpr
):
    """This program's samples (or subset codes), the player indices (exact) and the subset count."""
    tidx = tl.arange(0, BT)
    vidx = tl.arange(0, BV)
    if EXACT:
        b64 = b.to(tl.int64)
        pt = tl.load(pt_ptr + b64 * (T + V) + tidx, mask=tidx < T, other=0)
        pv = tl.load(pt_ptr + b64 * (T + V) + T + vidx, mask=vidx < V, other=0)
        n = _sum(tm.to(tl.int32), 0) + _sum(vm.to(tl.int32), 0)
        total = tl.full((), 1, tl.int32) << n
        per = (total + NPROG - 1) // NPROG
        start = tl.minimum(c * per, total)
        end = tl.minimum(start + per, total)
    else:
        pt = tidx
        pv = vidx
        total = tl.full((), 1, tl.int32) * num_items
        start = tl.minimum(c * per_prog, num_items)
        end = tl.minimum(start + per_prog, num_items)
    return start, end, pt, pv, total


@_helper
def _coalition_state(
    s,
    b,
    k0,
    k1,
    pt,
    pv,
    tidx,
    vidx,
    tm,
    vm,
    R,
    wt,
    wv,
    T,
    EXACT: tl.constexpr,
    NBLK: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
):
    """Coalition s of pair b (Philox sample, or subset code for the exact estimator) and what the cell
    deltas and their gradients share: membership, the other members' counts, both sides' softmax state
    (_softmax_state), and the row / column maxima over S without word i / frame j."""
    if EXACT:
        it, iv = _subset_coalition(s, pt, pv, tm, vm)
    else:
        it, iv = _philox_coalition(s, b, k0, k1, tidx, vidx, tm, vm, T, NBLK)
    itf = it.to(ACC)
    ivf = iv.to(ACC)
    nct = _sum(it.to(tl.int32), 0) - it.to(tl.int32)
    ncv = _sum(iv.to(tl.int32), 0) - iv.to(tl.int32)
    tE1, tE2, ttop, town, tZc, tg, te = _softmax_state(wt, it, tidx, BT)
    vE1, vE2, vtop, vown, vZc, vg, ve = _softmax_state(wv, iv, vidx, BV)
    r1, r2, ra, rb, is_ra, k1_, k2_, ka, kb, is_ka = _top2(R, it, iv, tidx, vidx, BT, BV)
    W, cW, X, cX = _without(r1, r2, is_ra, k1_, k2_, is_ka, nct > 0, ncv > 0)
    return (
        it,
        iv,
        itf,
        ivf,
        nct,
        ncv,
        tE1,
        tE2,
        ttop,
        town,
        tZc,
        tg,
        te,
        vE1,
        vE2,
        vtop,
        vown,
        vZc,
        vg,
        ve,
        W,
        cW,
        X,
        cX,
        rb,
        is_ra,
        kb,
        is_ka,
    )


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
        (
            it,
            iv,
            itf,
            ivf,
            nct,
            ncv,
            tE1,
            tE2,
            ttop,
            town,
            tZc,
            tg,
            te,
            vE1,
            vE2,
            vtop,
            vown,
            vZc,
            vg,
            ve,
            W,
            cW,
            X,
            cX,
            rb,
            is_ra,
            kb,
            is_ka,
        ) = _coalition_state(s, b, k0, k1, pt, pv, tidx, vidx, tm, vm, R, wt, wv, T, EXACT, NBLK, ACC, BT, BV)
        if REFERENCE:
            text1, video1, _Wr, _Xr, _Dt, _Dv, _EP, _EQ, _A1, _A2, _ht, _hv, _ri, _cj, _st, _sv = _ref_value1_parts(
                R, W, X, tE1, tE2, ttop, tZc, vE1, vE2, vtop, vZc, itf, ivf, wt, wv, nct, ncv, tidx, vidx, T, V
            )
            delta = 0.5 * (text1 + video1)
            delta -= _kind_value(
                R,
                W,
                cW,
                X,
                cX,
                tE1,
                tE2,
                ttop,
                town,
                tZc,
                tg,
                te,
                vE1,
                vE2,
                vtop,
                vown,
                vZc,
                vg,
                ve,
                nct,
                ncv,
                real,
                T,
                V,
                1,
                0,
                True,
            )
            delta -= _kind_value(
                R,
                W,
                cW,
                X,
                cX,
                tE1,
                tE2,
                ttop,
                town,
                tZc,
                tg,
                te,
                vE1,
                vE2,
                vtop,
                vown,
                vZc,
                vg,
                ve,
                nct,
                ncv,
                real,
                T,
                V,
                0,
                1,
                True,
            )
            delta += _kind_value(
                R,
                W,
                cW,
                X,
                cX,
                tE1,
                tE2,
                ttop,
                town,
                tZc,
                tg,
                te,
                vE1,
                vE2,
                vtop,
                vown,
                vZc,
                vg,
                ve,
                nct,
                ncv,
                real,
                T,
                V,
                0,
                0,
                True,
            )
        else:
            # Textbook fast path: the four values share two row-max tiles (without / with frame j)
            # and two column-max tiles.
            M0 = tl.where(W == _NEG_INF, 0.0, W)
            M1 = tl.maximum(W, R)
            N0 = tl.where(X == _NEG_INF, 0.0, X)
            N1 = tl.maximum(X, R)
            ts = (_rows(tE1), _rows(tE2), _rows(ttop), _rows(town), _rows(tZc), _rows(tg), _rows(te))
            vs = (_cols(vE1), _cols(vE2), _cols(vtop), _cols(vown), _cols(vZc), _cols(vg), _cols(ve))
            t0M0, _m = _side_value(M0, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], 0, 0)
            t1M0, _m = _side_value(M0, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], 1, 0)
            t0M1, _m = _side_value(M1, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], 0, 0)
            t1M1, _m = _side_value(M1, ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], ts[6], 1, 0)
            v0N0, _n = _side_value(N0, vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], 0, 1)
            v1N0, _n = _side_value(N0, vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], 1, 1)
            v0N1, _n = _side_value(N1, vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], 0, 1)
            v1N1, _n = _side_value(N1, vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], 1, 1)
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
        (
            it,
            iv,
            itf,
            ivf,
            nct,
            ncv,
            tE1,
            tE2,
            ttop,
            town,
            tZc,
            tg,
            te,
            vE1,
            vE2,
            vtop,
            vown,
            vZc,
            vg,
            ve,
            W,
            cW,
            X,
            cX,
            rb,
            is_ra,
            kb,
            is_ka,
        ) = _coalition_state(s, b, k0, k1, pt, pv, tidx, vidx, tm, vm, R, wt, wv, T, EXACT, NBLK, ACC, BT, BV)
        G = g
        if EXACT:
            G = tl.where((~it)[:, None] & (~iv)[None, :], G, 0.0)
        if REFERENCE:
            own, at, bt, av, bv, dwt, dwv = _ref_value1_grad(
                G,
                R,
                W,
                X,
                cW,
                cX,
                tE1,
                tE2,
                ttop,
                tZc,
                vE1,
                vE2,
                vtop,
                vZc,
                itf,
                ivf,
                wt,
                wv,
                nct,
                ncv,
                tidx,
                vidx,
                T,
                V,
            )
        else:
            own, at, bt, av, bv, dwt, dwv = _kind_grad(
                G,
                R,
                W,
                cW,
                X,
                cX,
                tE1,
                tE2,
                ttop,
                town,
                tZc,
                tg,
                te,
                vE1,
                vE2,
                vtop,
                vown,
                vZc,
                vg,
                ve,
                nct,
                ncv,
                real,
                T,
                V,
                1,
                1,
                False,
                1,
            )
        o2, a2, b2, c2, d2, e2, f2 = _kind_grad(
            G,
            R,
            W,
            cW,
            X,
            cX,
            tE1,
            tE2,
            ttop,
            town,
            tZc,
            tg,
            te,
            vE1,
            vE2,
            vtop,
            vown,
            vZc,
            vg,
            ve,
            nct,
            ncv,
            real,
            T,
            V,
            1,
            0,
            REFERENCE,
            -1,
        )
        own += o2
        at += a2
        bt += b2
        av += c2
        bv += d2
        dwt += e2
        dwv += f2
        o2, a2, b2, c2, d2, e2, f2 = _kind_grad(
            G,
            R,
            W,
            cW,
            X,
            cX,
            tE1,
            tE2,
            ttop,
            town,
            tZc,
            tg,
            te,
            vE1,
            vE2,
            vtop,
            vown,
            vZc,
            vg,
            ve,
            nct,
            ncv,
            real,
            T,
            V,
            0,
            1,
            REFERENCE,
            -1,
        )
        own += o2
        at += a2
        bt += b2
        av += c2
        bv += d2
        dwt += e2
        dwv += f2
        o2, a2, b2, c2, d2, e2, f2 = _kind_grad(
            G,
            R,
            W,
            cW,
            X,
            cX,
            tE1,
            tE2,
            ttop,
            town,
            tZc,
            tg,
            te,
            vE1,
            vE2,
            vtop,
            vown,
            vZc,
            vg,
            ve,
            nct,
            ncv,
            real,
            T,
            V,
            0,
            0,
            REFERENCE,
            1,
        )
        own += o2
        at += a2
        bt += b2
        av += c2
        bv += d2
        dwt += e2
        dwv += f2
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


# ------------------------------------------------------------------------------------------------
# Launch helpers


def _programs_per_pair(tensor, batch, items, per_sm=8):
    """Programs per pair: enough (about per_sm per SM) to fill the GPU; a few on the interpreter."""
    if not _launch.compiled(tensor):
        return max(1, min(items, 3))
    target = per_sm * _launch.multiprocessor_count(tensor.device)
    return max(1, min(items, -(-target // max(1, batch))))


def _num_warps(bt, bv, backward=False):
    """Warps per program: a [BT, BV] tile over them, ~4 (forward) or ~2 (backward: more live tiles)
    elements a thread, at most 16 warps (a 128 x 64 tile spills about half as much as at 8: ptxas, sm_90,
    tests/ops/test_triton_lowering.py; the full size, 32 x 16, is unaffected)."""
    per_warp = 128 if backward else 256
    return max(1, min(16, bt * bv // per_warp))


class _Launch:
    """Normalised inputs and launch geometry of one call."""

    def __init__(self, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
        self.sim, self.tm, self.vm, self.wt, self.wv = _launch.pair_inputs(
            sim, text_mask, video_mask, text_weight, video_weight
        )
        self.B, self.T, self.V = sim.shape
        self.acc_dtype = torch.float64 if sim.dtype == torch.float64 else torch.float32
        self.ACC = tl.float64 if sim.dtype == torch.float64 else tl.float32
        self.BT = max(2, triton.next_power_of_2(self.T))
        self.BV = max(2, triton.next_power_of_2(self.V))
        self.NBLK = (self.T + self.V + 127) // 128
        # msr programs evaluate one coalition value a sample (few live tiles): one warp
        # up to 512 cells, no cross-warp reductions, and twice as many programs to hide latency.
        light = estimator == "msr"
        self.num_warps = max(1, self.BT * self.BV // 512) if light else _num_warps(self.BT, self.BV)
        self.num_warps_backward = _num_warps(self.BT, self.BV, backward=True)
        per_sm = 16 if light else 8
        seed = int(seed) % (1 << 64)
        # Key halves as signed int32 (one kernel signature for every seed), read back as uint32.
        self.seed_lo, self.seed_hi = ((half ^ 0x80000000) - 0x80000000 for half in (seed & 0xFFFFFFFF, seed >> 32))
        self.exact = estimator == "exact"
        if self.exact:
            # Player index of every position (words first, then frames); subsets are split among
            # programs inside the kernel (2^n differs by pair: no host synchronisation).
            words = self.tm.to(torch.int32).cumsum(1) - 1
            frames = self.vm.to(torch.int32).cumsum(1) - 1 + self.tm.to(torch.int32).sum(1, keepdim=True)
            self.players = torch.cat([words, frames], 1).to(torch.int32).contiguous()
            self.nprog = _programs_per_pair(self.sim, self.B, 1 << min(self.T + self.V, 20), per_sm)
            self.per_prog = 0
            self.num_items = 0
        else:
            self.players = self.tm  # unused
            self.nprog = _programs_per_pair(self.sim, self.B, num_samples, per_sm)
            self.per_prog = -(-num_samples // self.nprog)
            self.nprog = -(-num_samples // self.per_prog)
            self.num_items = num_samples
        self.grid = (self.B, self.nprog)

    def common(self, backward=False):
        return dict(
            NPROG=self.nprog,
            NBLK=self.NBLK,
            ACC=self.ACC,
            BT=self.BT,
            BV=self.BV,
            num_warps=self.num_warps_backward if backward else self.num_warps,
        )

    def empty_partials(self):
        return torch.empty((self.B, self.nprog, self.T, self.V), dtype=self.acc_dtype, device=self.sim.device)


def _msr_strata(L):
    part = torch.empty((L.B, L.nprog, L.T + 1, L.V + 1), dtype=L.acc_dtype, device=L.sim.device)
    cnt = torch.empty((L.B, L.nprog, L.T + 1, L.V + 1), dtype=torch.int32, device=L.sim.device)
    _value_fwd_kernel[L.grid](
        L.sim,
        L.tm,
        L.vm,
        L.wt,
        L.wv,
        L.players,
        part,
        cnt,
        L.T,
        L.V,
        L.num_items,
        L.per_prog,
        L.seed_lo,
        L.seed_hi,
        **L.common(),
    )
    return part, cnt


def _forward(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    if estimator == "exact" and definition == "textbook":
        return banzhaf_closed_form.forward(sim, text_mask, video_mask, text_weight, video_weight)
    out = torch.empty_like(sim, memory_format=torch.contiguous_format)
    if sim.numel() == 0:
        return out.zero_()
    L = _Launch(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)
    finish = dict(NPROG=L.nprog, BT=L.BT, BV=L.BV, num_warps=L.num_warps)
    with _launch.device_guard(sim):
        if estimator == "msr":
            part, cnt = _msr_strata(L)
            _msr_finish_kernel[(L.B,)](part, cnt, L.tm, L.vm, out, L.T, L.V, **finish)
            return out
        part = L.empty_partials()
        _cells_fwd_kernel[L.grid](
            L.sim,
            L.tm,
            L.vm,
            L.wt,
            L.wv,
            L.players,
            part,
            L.T,
            L.V,
            L.num_items,
            L.per_prog,
            L.seed_lo,
            L.seed_hi,
            REFERENCE=definition == "reference",
            EXACT=L.exact,
            **L.common(),
        )
        divisor = 1 if L.exact else num_samples
        _sum_finish_kernel[(L.B,)](part, L.tm, L.vm, out, L.T, L.V, divisor, **finish)
    return out


def _backward(grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed):
    if estimator == "exact" and definition == "textbook":
        return banzhaf_closed_form.backward(grad, sim, text_mask, video_mask, text_weight, video_weight)
    if sim.numel() == 0:
        return torch.zeros_like(sim), torch.zeros_like(text_weight), torch.zeros_like(video_weight)
    L = _Launch(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)
    grad = grad.to(sim.dtype).contiguous()
    device = sim.device
    gs = torch.empty((L.B, L.nprog, L.T, L.V), dtype=L.acc_dtype, device=device)
    gt = torch.empty((L.B, L.nprog, L.T), dtype=L.acc_dtype, device=device)
    gv = torch.empty((L.B, L.nprog, L.V), dtype=L.acc_dtype, device=device)
    with _launch.device_guard(sim):
        if estimator == "msr":
            _part, cnt = _msr_strata(L)
            cnt = cnt.sum(1, dtype=torch.int32).contiguous()  # [B, T + 1, V + 1], integer: exact
            _value_bwd_kernel[L.grid](
                grad,
                L.sim,
                L.tm,
                L.vm,
                L.wt,
                L.wv,
                L.players,
                cnt,
                gs,
                gt,
                gv,
                L.T,
                L.V,
                L.num_items,
                L.per_prog,
                L.seed_lo,
                L.seed_hi,
                **L.common(backward=True),
            )
        else:
            _cells_bwd_kernel[L.grid](
                grad,
                L.sim,
                L.tm,
                L.vm,
                L.wt,
                L.wv,
                L.players,
                gs,
                gt,
                gv,
                L.T,
                L.V,
                L.num_items,
                L.per_prog,
                L.seed_lo,
                L.seed_hi,
                REFERENCE=definition == "reference",
                EXACT=L.exact,
                **L.common(backward=True),
            )
    return gs.sum(1).to(sim.dtype), gt.sum(1).to(sim.dtype), gv.sum(1).to(sim.dtype)


# ------------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("hbi_ops_triton::banzhaf_interaction", mutates_args=())
def banzhaf_interaction_op(
    sim: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    definition: str,
    estimator: str,
    num_samples: int,
    seed: int,
) -> torch.Tensor:
    return _forward(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)


@torch.library.custom_op("hbi_ops_triton::banzhaf_interaction_backward", mutates_args=())
def banzhaf_interaction_backward_op(
    grad: torch.Tensor,
    sim: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    definition: str,
    estimator: str,
    num_samples: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(
        grad, sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )


ops.register("hbi_ops_triton", ops.banzhaf)


def banzhaf_interaction(
    sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
):
    """The `triton` backend; arguments normalised by hbi_ops.banzhaf_interaction."""
    if not torch.compiler.is_compiling() and not (
        torch.is_grad_enabled() and (sim.requires_grad or text_weight.requires_grad or video_weight.requires_grad)
    ):
        # Nothing to differentiate or trace: skip the custom-op dispatch (tens of microseconds).
        return _forward(sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed)
    return banzhaf_interaction_op(
        sim, text_mask, video_mask, text_weight, video_weight, definition, estimator, num_samples, seed
    )
