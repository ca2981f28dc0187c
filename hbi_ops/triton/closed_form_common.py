"""Shared pieces of the Triton closed form (banzhaf_closed_form.py): exp/log, products, the sort order,
the final contraction I = 1/2 (alpha mu^T + nu gamma^T) and the scratch layout."""

import triton.language as tl
from triton.language.extra import libdevice

from . import _jit

_helper = _jit.helper
_sum = _jit.sum_


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
