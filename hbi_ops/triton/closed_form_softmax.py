"""The closed form's softmax side in Triton (docs/banzhaf.md): each side's quadrature grid in log s, the
players' factors at the nodes and the marginals alpha [T, T] / gamma [V, V], forward and backward."""

import triton.language as tl

from . import _jit
from .closed_form_common import _exp, _log, _mm

_helper = _jit.helper
_sum, _max, _min = _jit.sum_, _jit.max_, _jit.min_

_INF = tl.constexpr(float("inf"))


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
