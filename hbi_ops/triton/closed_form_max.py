"""The closed form's maximum side in Triton (docs/banzhaf.md): each row's (column's) sort positions by
counting, entries weighted by 2^-position, the marginals mu / nu and their gradient in sim."""

import triton.language as tl

from . import _jit
from .closed_form_common import _sorts_before

_helper = _jit.helper
_sum = _jit.sum_


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
