"""The WTI game of a pair in Triton for the sampled estimators (docs/banzhaf.md): Philox coalitions, each
row's and column's two largest entries, softmax weights relative to the coalition's largest logit, and
the values and gradients of a coalition with and without the cell's two players. Inlined into the kernels
of banzhaf_cells.py and banzhaf_value.py."""

import triton.language as tl
from triton.language.random import philox_impl

from . import _jit

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
    """Row top-2 over S_v and column top-2 over S_t (values; first indices; BV / BT when none), as rows
    = (r1, r2, ra, rb, is_ra) and cols = (k1, k2, ka, kb, is_ka)."""
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
    return (r1, r2, ra, rb, is_ra), (k1, k2, ka, kb, is_ka)


@_helper
def _without(rows, cols, rest_t, rest_v):
    """W[t, j]: row t's max over S_v minus j (-inf if empty), code 1 = first argmax, 2 = second, 0 = none.
    X[i, v]: column v's max over S_t minus i, same codes. rows / cols: _top2's. Returns (W, cW, X, cX)."""
    r1, r2, _ra, _rb, is_ra = rows
    k1, k2, _ka, _kb, is_ka = cols
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
    factors of c + k (c's terms weigh g, k's weighs e: no overflow when k's logit exceeds c's). The side's
    state is the tuple (E1, E2, top, own, Zc, g, e)."""
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
def _side_value(M, side, ADD: tl.constexpr, AXIS: tl.constexpr):
    """The softmax-weighted sum over the members t of X_t(i) of M[t, j] for every cell, X = c + i when
    ADD (c = S minus the cell's own player i); AXIS is the token axis (0: text side, tiles [t|i, j]; 1:
    video side, tiles [i, v|j]) and side, a _softmax_state, broadcasts along it (_rows_of / _cols_of)."""
    E1, E2, top, own, Zc, g, e = side
    Ms = tl.where(M == _NEG_INF, 0.0, M)
    s1 = tl.expand_dims(_sum(E1 * Ms, AXIS), AXIS)
    s2 = tl.expand_dims(_sum(E2 * Ms, AXIS), AXIS)
    base = tl.where(top, s2, s1 - own * Ms)  # c's weighted sum
    if ADD:
        return (base * g + e * Ms) / (Zc * g + e), Ms
    else:
        return base / _safe(Zc), Ms


@_helper
def _side_grad(G, Ms, TX, side, ADD: tl.constexpr, AXIS: tl.constexpr):
    """Gradient of sum_cells G * _side_value: coefficient K of every (token, cell) entry of M (to be
    scattered to M's argmax) and the gradient of the token weight logits. Member t of c(i) weighs E1[t]
    (E2[t] when i is the top member) times g_i / Z(i); the joining player i weighs e_i / Z(i)."""
    E1, E2, top, _own, Zc, g, e = side
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
def _rows_of(side):
    """The text side's _softmax_state as columns of [t|i, j] tiles."""
    E1, E2, top, own, Zc, g, e = side
    return _rows(E1), _rows(E2), _rows(top), _rows(own), _rows(Zc), _rows(g), _rows(e)


@_helper
def _cols_of(side):
    """The video side's _softmax_state as rows of [i, v|j] tiles."""
    E1, E2, top, own, Zc, g, e = side
    return _cols(E1), _cols(E2), _cols(top), _cols(own), _cols(Zc), _cols(g), _cols(e)


@_helper
def _kind_sides(R, without, text, video, members, real, T, V, AI: tl.constexpr, AJ: tl.constexpr, ZF: tl.constexpr):
    """The text and video sides of the value of X = c (+ i if AI) (+ j if AJ) for every cell, with what
    their gradients need: (valid, cM, cN, TX, Ms, VX, Ns). text / video: the sides' _softmax_state;
    without: _without's (W, cW, X, cX); members: _coalition_state's (membership and other members' counts)."""
    W, cW, X, cX = without
    _it, _iv, _itf, _ivf, nct, ncv = members
    nt = nct + AI
    nv = ncv + AJ
    valid = real & (nt > 0)[:, None] & (nv > 0)[None, :]
    M, cM = _kind_tile(W, cW, R, AJ, ZF, (nv < V)[None, :])
    N, cN = _kind_tile(X, cX, R, AI, ZF, (nt < T)[:, None])
    TX, Ms = _side_value(M, _rows_of(text), AI, 0)
    VX, Ns = _side_value(N, _cols_of(video), AJ, 1)
    return valid, cM, cN, TX, Ms, VX, Ns


@_helper
def _kind_value(R, without, text, video, members, real, T, V, AI: tl.constexpr, AJ: tl.constexpr, ZF: tl.constexpr):
    """Value of X = c (+ i if AI) (+ j if AJ) for every cell: f, or the reference's F when ZF."""
    valid, _cM, _cN, TX, _Ms, VX, _Ns = _kind_sides(R, without, text, video, members, real, T, V, AI, AJ, ZF)
    return tl.where(valid, 0.5 * (TX + VX), 0.0)


@_helper
def _kind_grad(
    G,
    R,
    without,
    text,
    video,
    members,
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
    valid, cM, cN, TX, Ms, VX, Ns = _kind_sides(R, without, text, video, members, real, T, V, AI, AJ, ZF)
    Gk = tl.where(valid, G * SIGN, 0.0)
    Kt, dwt = _side_grad(Gk, Ms, TX, _rows_of(text), AI, 0)
    Kv, dwv = _side_grad(Gk, Ns, VX, _cols_of(video), AJ, 1)
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
def _add_grads(acc, more):
    """Sum of two gradient groups (own, text first / second, video first / second, dwt, dwv)."""
    own, at, bt, av, bv, dwt, dwv = acc
    o2, a2, b2, c2, d2, e2, f2 = more
    return own + o2, at + a2, bt + b2, av + c2, bv + d2, dwt + e2, dwv + f2


@_helper
def _value4_probability(sel, idx, side, itf):
    """Player t's (sel) probability in value4's softmax over c(i) for every cell row i (a vector over i),
    and whether t is a member of c(i) (t in S, t != i). side: the _softmax_state of t's side."""
    E1, E2, top, _own, Zc, _g, _e = side
    e1 = _sum(tl.where(sel, E1, 0.0), 0)
    e2 = _sum(tl.where(sel, E2, 0.0), 0)
    in_s = _sum(tl.where(sel, itf, 0.0), 0)
    member = ~sel & ((idx * 0 + in_s) > 0)  # (broadcast: the interpreter has no vector & scalar)
    return tl.where(top, e2, e1) / _safe(Zc), member


@_helper
def _ref_value1_parts(R, W, X, text, video, members, wt, wv, tidx, vidx, T, V):
    """The reference's value1 for every cell: text and video parts with what their gradients need. Its
    logits are value4's probabilities at members of c and the raw logit at i (j): shifted by a bound of
    their maximum (probabilities are at most 1; without other members the raw logit is alone). Returns
    the text part (text1, Wr, Dt, EP, A1, head_t, row_i, shift_t) and the video part, alike."""
    _it, _iv, itf, ivf, nct, ncv = members
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
        p, member = _value4_probability(sel, tidx, text, itf)
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
        q, member = _value4_probability(sel, vidx, video, ivf)
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
    return (text1, Wr, Dt, EP, A1, head_t, row_i, shift_t), (video1, Xr, Dv, EQ, A2, head_v, col_j, shift_v)


@_helper
def _ref_value1_grad(G1, R, without, text, video, members, wt, wv, tidx, vidx, T, V):
    """Gradient of sum_cells G1 * value1 (G1 includes the factor 1/2), grouped as _kind_grad's."""
    W, cW, X, cX = without
    _it, _iv, itf, ivf, _nct, _ncv = members
    text_part, video_part = _ref_value1_parts(R, W, X, text, video, members, wt, wv, tidx, vidx, T, V)
    text1, Wr, Dt, EP, A1, head_t, row_i, shift_t = text_part
    video1, Xr, Dv, EQ, A2, head_v, col_j, shift_v = video_part
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
        p, memb = _value4_probability(sel, tidx, text, itf)
        row_t = _sum(tl.where(sel[:, None], Wr, 0.0), 0)
        p = tl.where(memb, p, 0.0)
        alpha = tl.where(memb, tl.exp(p - shift_t), 0.0) / Dt
        Kt += tl.where(sel[:, None], _sum(G1 * alpha[:, None], 0)[None, :], 0.0)
        term = G1 * p[:, None] * (alpha[:, None] * (row_t[None, :] - text1) - gdp)
        dwt += tl.where(sel, _sum(_sum(term, 1), 0), 0.0)
    Kv = tl.zeros(R.shape, R.dtype)
    for v in range(0, V):
        sel = vidx == v
        q, memb = _value4_probability(sel, vidx, video, ivf)
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
    deltas and their gradients share, in groups: members = (it, iv, itf, ivf, nct, ncv) (membership and
    the other members' counts), text / video (the sides' _softmax_state), without = (W, cW, X, cX) (the
    row / column maxima over S without word i / frame j) and rows / cols (_top2's)."""
    if EXACT:
        it, iv = _subset_coalition(s, pt, pv, tm, vm)
    else:
        it, iv = _philox_coalition(s, b, k0, k1, tidx, vidx, tm, vm, T, NBLK)
    itf = it.to(ACC)
    ivf = iv.to(ACC)
    nct = _sum(it.to(tl.int32), 0) - it.to(tl.int32)
    ncv = _sum(iv.to(tl.int32), 0) - iv.to(tl.int32)
    text = _softmax_state(wt, it, tidx, BT)
    video = _softmax_state(wv, iv, vidx, BV)
    rows, cols = _top2(R, it, iv, tidx, vidx, BT, BV)
    without = _without(rows, cols, nct > 0, ncv > 0)
    return (it, iv, itf, ivf, nct, ncv), text, video, without, rows, cols
