"""Triton kernels of wti_similarity (docs/wti.md): the same function, outputs and arg-max convention as the CPU and
CUDA kernels (csrc/wti/wti_cpu.cpp explains the convention: t2v_argmax [A, B, T] / v2t_argmax [A, B, V] int32,
-1 where no real entry carries the maximum; score [A, B] in the input dtype).

Forward, fused: one program owns TA texts x BB videos, i.e. a (TA * TP) x (BB * VP) tile of the GEMM
X_flat @ Y_flat^T (TP, VP: T and V padded to powers of two; the padded rows/columns are masked loads, never
fetched). tl.dot over D in steps of BK (fp32 accumulation; float32 inputs use input_precision="ieee", so no TF32
rounding; float64 stays float64), then the tile is viewed as [rows, BB, VP] for the row maxima (tl.max / first
tl.argmax over real frames) and as [TA, TP, cols] for the column maxima; only score and the arg-max indices are
written (memory O(A B (T + V)), S is never materialised).

Backward, two launches of one kernel (pass 1 owns texts, pass 2 videos; see the CUDA file for the formulas):
a program owns one own item (all its rows) and a DB-wide slice of D and loops over blocks of MB other items:
  z[r]  += sum_m c Y[m, i(n, m, r)]                     (a gather, [LP, DB] an item)
  w[r]  += sum_{m, l: j(n, m, l) = r} c q[m, l] Y[m, l]  (a one-hot [LP, MB * LOP] @ [MB * LOP, DB] tl.dot)
grad_own = p z + w; grad_p partials <F_own, z> per D slice are summed in torch. No atomics: deterministic.
The one-hot product runs on tensor cores: float16 / bfloat16 inputs use TF32 there (the products c q Y are rounded
to 2^-11 relative, about the rounding of the float16 result itself), float32 uses tf32x3 (float32-accurate).
float64 uses no tl.dot anywhere (Triton before 3.7, the device image's 3.6, has none for float64): the forward
accumulates outer products, the backward broadcasts the one-hot product an item at a time.

Floors (A = B = 1000, T = 32, V = 12, D = 512, fp16; H100 SXM: 3.35 TB/s, ~989 TFLOP/s fp16 dense, ~51 TFLOP/s
fp32 FMA): forward 393 GFLOP on tensor cores -> 0.40 ms; its bytes (45 MB read, 178 MB written) -> 0.07 ms:
compute-bound. This kernel pads V = 12 to 16, so it issues 4/3 of that work (0.53 ms floor for this tiling):
expect ~1-2 ms vs 14.7 ms torch. Backward: the gathers are 2 A B (T + V) D = 45 G gathered elements, one fp32 FMA
each (90 GFLOP -> 1.8 ms at 51 TFLOP/s; the L1 rate, ~2.7 ms, binds first, see the CUDA file); the one-hot
products are 2 passes x 2 A B LP LOP D = 1.05 TFLOP of TF32 (float16 inputs) -> 2.1 ms at ~495 TFLOP/s.
Not measured: written on a machine without a GPU.

Under TRITON_INTERPRET=1 (CPU tensors) the tiles grow to the problem (few programs: the interpreter pays per
program and per operation) and bfloat16 tiles are upcast to float32 before tl.dot (the interpreter's bfloat16 dot
is unusable; bfloat16 products are exact in float32, so the result is the same).
"""

import torch
import triton
import triton.language as tl

from hbi_ops import ops

from . import _launch

__all__ = ["wti_similarity"]


def _next_pow2(n):
    return 1 if n <= 1 else triton.next_power_of_2(int(n))


@triton.jit
def _wti_forward_kernel(
    X,
    Y,
    P,
    Q,
    MT,
    MV,
    SCORE,
    T2V,
    V2T,
    A,
    B,
    T,
    V,
    D,
    tiles_b,
    ZERO: tl.constexpr,
    TA: tl.constexpr,
    TP: tl.constexpr,
    BB: tl.constexpr,
    VP: tl.constexpr,
    BK: tl.constexpr,
    IS_FP64: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    M: tl.constexpr = TA * TP
    N: tl.constexpr = BB * VP
    pid = tl.program_id(0)
    tile_a = pid // tiles_b
    tile_b = pid % tiles_b
    a0 = tile_a * TA
    b0 = tile_b * BB

    rm = tl.arange(0, M)
    a_r = a0 + rm // TP  # text of each tile row
    t_r = rm % TP  # word of each tile row
    row_ok = (a_r < A) & (t_r < T)
    rn = tl.arange(0, N)
    b_c = b0 + rn // VP  # video of each tile column
    v_c = rn % VP  # frame of each tile column
    col_ok = (b_c < B) & (v_c < V)
    x_rows = (a_r.to(tl.int64) * T + t_r) * D
    y_rows = (b_c.to(tl.int64) * V + v_c) * D

    if IS_FP64:  # outer products (FMA): Triton before 3.7 (the device image has 3.6) has no float64 tl.dot
        acc = tl.zeros([M, N], dtype=tl.float64)
        for k in range(0, D):
            xk = tl.load(X + x_rows + k, mask=row_ok, other=0.0)
            yk = tl.load(Y + y_rows + k, mask=col_ok, other=0.0)
            acc += xk[:, None] * yk[None, :]
    else:
        acc = tl.zeros([M, N], dtype=tl.float32)
        for k0 in range(0, D, BK):
            rk = k0 + tl.arange(0, BK)
            k_ok = rk < D
            xk = tl.load(X + x_rows[:, None] + rk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            yk = tl.load(Y + y_rows[None, :] + rk[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if UPCAST:  # the interpreter's bfloat16 dot is unusable; bf16 products are exact in fp32
                xk = xk.to(tl.float32)
                yk = yk.to(tl.float32)
            acc = tl.dot(xk, yk, acc, input_precision=PRECISION)

    mt = tl.load(MT + a_r.to(tl.int64) * T + t_r, mask=row_ok, other=0) != 0  # [M]
    mv = tl.load(MV + b_c.to(tl.int64) * V + v_c, mask=col_ok, other=0) != 0  # [N]
    p = tl.load(P + a_r.to(tl.int64) * T + t_r, mask=row_ok, other=0.0).to(acc.dtype)
    q = tl.load(Q + b_c.to(tl.int64) * V + v_c, mask=col_ok, other=0.0).to(acc.dtype)
    num_frames = tl.sum(tl.reshape(mv.to(tl.int32), [BB, VP]), axis=1)  # [BB]
    num_words = tl.sum(tl.reshape(mt.to(tl.int32), [TA, TP]), axis=1)  # [TA]

    # row maxima: word t of text a over the real frames of video b
    s_rows = tl.reshape(acc, [M, BB, VP])
    s_rows = tl.where(tl.reshape(mv, [BB, VP])[None, :, :], s_rows, float("-inf"))
    best_row = tl.max(s_rows, axis=2)  # [M, BB]
    arg_row = tl.argmax(s_rows, axis=2)  # first maximum
    row_valid = mt[:, None] & (num_frames > 0)[None, :]
    if ZERO:  # a masked 0 beats every real entry when the video has padding and all its entries are < 0
        row_valid = row_valid & ~((num_frames < V)[None, :] & (best_row < 0))
    t2v_part = tl.sum(tl.reshape(p[:, None] * tl.where(row_valid, best_row, 0.0), [TA, TP, BB]), axis=1)  # [TA, BB]

    # column maxima: frame v of video b over the real words of text a
    s_cols = tl.reshape(acc, [TA, TP, N])
    s_cols = tl.where(tl.reshape(mt, [TA, TP])[:, :, None], s_cols, float("-inf"))
    best_col = tl.max(s_cols, axis=1)  # [TA, N]
    arg_col = tl.argmax(s_cols, axis=1)
    col_valid = mv[None, :] & (num_words > 0)[:, None]
    if ZERO:
        col_valid = col_valid & ~((num_words < T)[:, None] & (best_col < 0))
    v2t_part = tl.sum(tl.reshape(q[None, :] * tl.where(col_valid, best_col, 0.0), [TA, BB, VP]), axis=2)  # [TA, BB]

    b_bb = b0 + tl.arange(0, BB)
    a_ta = a0 + tl.arange(0, TA)
    # t2v[a, b, t]
    t2v_ptr = T2V + (a_r.to(tl.int64)[:, None] * B + b_bb[None, :]) * T + t_r[:, None]
    tl.store(t2v_ptr, tl.where(row_valid, arg_row, -1).to(tl.int32), mask=row_ok[:, None] & (b_bb < B)[None, :])
    # v2t[a, b, v]
    v2t_ptr = V2T + (a_ta.to(tl.int64)[:, None] * B + b_c[None, :]) * V + v_c[None, :]
    tl.store(v2t_ptr, tl.where(col_valid, arg_col, -1).to(tl.int32), mask=(a_ta < A)[:, None] & col_ok[None, :])
    score = (t2v_part + v2t_part) / 2
    score_ptr = SCORE + a_ta.to(tl.int64)[:, None] * B + b_bb[None, :]
    tl.store(score_ptr, score.to(SCORE.dtype.element_ty), mask=(a_ta < A)[:, None] & (b_bb < B)[None, :])


@triton.jit
def _one_hot_product(
    w,
    G,
    OTH,
    OTH_W,
    OTH_IDX,
    n64,
    m0,
    mb,
    lo,
    lo_ok,
    r,
    d,
    d_ok,
    n_oth,
    L_oth,
    D,
    ps_own,
    ps_oth,
    MB: tl.constexpr,
    LOP: tl.constexpr,
    DB: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """w += the other rows of items m0..m0+MB whose index points at an own row: a one-hot [LP, MB * LOP] @
    [MB * LOP, DB] product on tensor cores."""
    m = m0 + mb
    m_ok = m < n_oth
    m64 = m.to(tl.int64)
    pair = n64 * ps_own + m64 * ps_oth  # [MB]
    c = tl.load(G + pair, mask=m_ok, other=0.0).to(w.dtype) * 0.5  # [MB]
    oth_rows = m64 * L_oth  # [MB]
    j = tl.load(OTH_IDX + pair[:, None] * L_oth + lo[None, :], mask=m_ok[:, None] & lo_ok[None, :], other=-1)
    coef = c[:, None] * tl.load(
        OTH_W + oth_rows[:, None] + lo[None, :], mask=m_ok[:, None] & lo_ok[None, :], other=0.0
    ).to(w.dtype)  # [MB, LOP]
    rows = tl.load(
        OTH + (oth_rows[:, None, None] + lo[None, :, None]) * D + d[None, None, :],
        mask=(m_ok[:, None] & lo_ok[None, :])[:, :, None] & d_ok[None, None, :],
        other=0.0,
    ).to(w.dtype)  # [MB, LOP, DB]
    j_flat = tl.reshape(j, [MB * LOP])
    coef_flat = tl.reshape(coef, [MB * LOP])
    onehot = tl.where(r[:, None] == j_flat[None, :], coef_flat[None, :], 0.0)  # [LP, MB * LOP]
    return tl.dot(onehot, tl.reshape(rows, [MB * LOP, DB]), w, input_precision=PRECISION)


@triton.jit
def _wti_backward_side_kernel(
    G,
    OWN,
    OWN_W,
    OTH,
    OTH_W,
    OWN_IDX,
    OTH_IDX,
    GRAD_OWN,
    PARTIAL,
    n_own,
    n_oth,
    L_own,
    L_oth,
    D,
    ps_own,
    ps_oth,
    LP: tl.constexpr,
    LOP: tl.constexpr,
    MB: tl.constexpr,
    DB: tl.constexpr,
    PRECISION: tl.constexpr,
    IS_FP64: tl.constexpr,
):
    n = tl.program_id(0)
    slice_ = tl.program_id(1)
    r = tl.arange(0, LP)
    r_ok = r < L_own
    d = slice_ * DB + tl.arange(0, DB)
    d_ok = d < D
    lo = tl.arange(0, LOP)
    lo_ok = lo < L_oth
    mb = tl.arange(0, MB)
    if IS_FP64:
        z = tl.zeros([LP, DB], dtype=tl.float64)
        w = tl.zeros([LP, DB], dtype=tl.float64)
    else:
        z = tl.zeros([LP, DB], dtype=tl.float32)
        w = tl.zeros([LP, DB], dtype=tl.float32)
    n64 = n.to(tl.int64)
    for m0 in range(0, n_oth, MB):
        # z: one other item at a time, so the gathered tile stays [LP, DB] whatever MB is
        for i in range(MB):
            m_i = m0 + i
            ok_i = m_i < n_oth
            pair_i = n64 * ps_own + m_i.to(tl.int64) * ps_oth
            c_i = tl.load(G + pair_i, mask=ok_i, other=0.0).to(z.dtype) * 0.5
            idx = tl.load(OWN_IDX + pair_i * L_own + r, mask=ok_i & r_ok, other=-1)  # [LP]
            idx_ok = (idx >= 0) & (idx < L_oth)
            gathered = tl.load(
                OTH + (m_i.to(tl.int64) * L_oth + idx)[:, None] * D + d[None, :],
                mask=idx_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(z.dtype)  # [LP, DB]
            z += c_i * gathered
            if IS_FP64:  # the one-hot product by broadcasting: no float64 tl.dot before Triton 3.7 (device: 3.6)
                oth_rows_i = m_i.to(tl.int64) * L_oth + lo  # [LOP]
                l_ok = ok_i & lo_ok
                j_i = tl.load(OTH_IDX + pair_i * L_oth + lo, mask=l_ok, other=-1)
                coef_i = c_i * tl.load(OTH_W + oth_rows_i, mask=l_ok, other=0.0).to(z.dtype)
                rows_i = tl.load(
                    OTH + oth_rows_i[:, None] * D + d[None, :], mask=l_ok[:, None] & d_ok[None, :], other=0.0
                ).to(z.dtype)  # [LOP, DB]
                onehot = tl.where(r[:, None] == j_i[None, :], coef_i[None, :], 0.0)  # [LP, LOP]
                w += tl.sum(onehot[:, :, None] * rows_i[None, :, :], axis=1)
        if not IS_FP64:
            w = _one_hot_product(
                w,
                G,
                OTH,
                OTH_W,
                OTH_IDX,
                n64,
                m0,
                mb,
                lo,
                lo_ok,
                r,
                d,
                d_ok,
                n_oth,
                L_oth,
                D,
                ps_own,
                ps_oth,
                MB,
                LOP,
                DB,
                PRECISION,
            )

    own_rows = n64 * L_own + r  # [LP]
    ok = r_ok[:, None] & d_ok[None, :]
    own = tl.load(OWN + own_rows[:, None] * D + d[None, :], mask=ok, other=0.0).to(z.dtype)
    own_w = tl.load(OWN_W + own_rows, mask=r_ok, other=0.0).to(z.dtype)
    grad = own_w[:, None] * z + w
    tl.store(GRAD_OWN + own_rows[:, None] * D + d[None, :], grad.to(GRAD_OWN.dtype.element_ty), mask=ok)
    partial = tl.sum(own * z, axis=1)  # [LP]
    tl.store(PARTIAL + (slice_.to(tl.int64) * n_own + n64) * L_own + r, partial, mask=r_ok)


def _backward_tiles(L_own, L_oth, n_oth, D, on_gpu, fp64):
    """(LP, LOP, MB, DB, warps) of the backward: own rows and other rows padded to powers of two, other items
    per one-hot product (its K = MB * LOP >= 16, tl.dot's least), width of the D slice, warps a program.

    On a GPU the live tiles (z, w, the gathered rows: [LP, DB]; the one-hot [LP, K]; the other rows [K, DB])
    stay within about 4096 / 8192 elements, 32 to 64 registers a thread at 4 warps (8 beyond that): long texts
    or many frames get a narrower D slice and a smaller K instead of tiles that would spill (and PTX that
    takes ptxas minutes). The full size (T = 32, V = 12) gets DB = 64, K = 64. float64 forms the one-hot
    product by broadcasting, [LP, LOP, DB] a program: DB = 16 there. On the interpreter the tiles grow to
    the problem: it pays per operation, not per element."""
    LP = max(16, _next_pow2(L_own))
    LOP = _next_pow2(L_oth)
    if on_gpu:
        K = max(16, min(64, 4096 // LP))
        MB = max(1, K // LOP)
        DB = 16 if fp64 else 64
        while DB > 16 and (LP * DB > 4096 or MB * LOP * DB > 8192):
            DB //= 2
        live = LP * LOP * DB if fp64 else max(LP * DB, LP * MB * LOP, MB * LOP * DB)
        warps = 4 if live <= 8192 else 8
        return LP, LOP, MB, DB, warps
    MB = max(1, min(4096 // LOP, _next_pow2(n_oth)))
    while MB * LOP < 16:
        MB *= 2
    return LP, LOP, MB, max(16, min(256, _next_pow2(D))), 4


def _forward_tiles(A, B, T, V, D, on_gpu, fp64=False):
    TP, VP = _next_pow2(T), _next_pow2(V)
    if on_gpu:  # fixed tiles: one compiled variant per (T, V), whatever the batch sizes
        side = 64 if fp64 else 128  # float64 accumulates in registers without tensor cores: a quarter the tile
        TA, BB = max(1, side // TP), max(1, side // VP)
    else:  # the interpreter pays per program and per operation, not per element: few programs, no waste
        TA = max(1, min(256 // TP, _next_pow2(A)))
        BB = max(1, min(256 // VP, _next_pow2(B)))
    while TA * TP < 16:
        TA *= 2
    while BB * VP < 16:
        BB *= 2
    BK = 32 if on_gpu else min(128, max(16, _next_pow2(D)))
    return TA, TP, BB, VP, BK


@torch.library.custom_op("hbi_ops_triton::wti_similarity", mutates_args=())
def wti_similarity_op(
    text: torch.Tensor,
    video: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    text_mask: torch.Tensor,
    video_mask: torch.Tensor,
    zero_padding: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    A, T, D = text.shape
    B, V, _ = video.shape
    score = text.new_empty((A, B))
    t2v = text.new_empty((A, B, T), dtype=torch.int32)
    v2t = text.new_empty((A, B, V), dtype=torch.int32)
    if A == 0 or B == 0:
        return score, t2v, v2t
    on_gpu = _launch.compiled(text)
    fp64 = text.dtype == torch.float64
    TA, TP, BB, VP, BK = _forward_tiles(A, B, T, V, D, on_gpu, fp64)
    tiles_a, tiles_b = triton.cdiv(A, TA), triton.cdiv(B, BB)
    x, y = text.contiguous(), video.contiguous()
    p, q = text_weight.contiguous(), video_weight.contiguous()
    mt = text_mask.contiguous().view(torch.uint8)
    mv = video_mask.contiguous().view(torch.uint8)
    with _launch.device_guard(text):
        _wti_forward_kernel[(tiles_a * tiles_b,)](
            x,
            y,
            p,
            q,
            mt,
            mv,
            score,
            t2v,
            v2t,
            A,
            B,
            T,
            V,
            D,
            tiles_b,
            ZERO=bool(zero_padding),
            TA=TA,
            TP=TP,
            BB=BB,
            VP=VP,
            BK=BK,
            IS_FP64=fp64,
            UPCAST=not on_gpu and text.dtype == torch.bfloat16,
            # float32: exact FMA products ("ieee"; TF32 would miss the float32 tolerance); float16 / bfloat16
            # products are exact on tensor cores whatever this says; float64 uses no tl.dot
            PRECISION="ieee" if text.dtype == torch.float32 else "tf32",
            num_warps=8 if on_gpu else 4,
            num_stages=3 if on_gpu else 1,
        )
    return score, t2v, v2t


def _backward_side(grad, own, own_w, oth, oth_w, own_idx, oth_idx, ps_own, ps_oth, grad_own, grad_own_w):
    n_own, L_own, D = own.shape
    n_oth, L_oth, _ = oth.shape
    if n_own == 0 or L_own == 0 or D == 0:
        return
    if n_oth == 0 or L_oth == 0:
        grad_own.zero_()
        return
    on_gpu = _launch.compiled(own)
    fp64 = own.dtype == torch.float64
    LP, LOP, MB, DB, warps = _backward_tiles(L_own, L_oth, n_oth, D, on_gpu, fp64)
    slices = triton.cdiv(D, DB)
    precision = "tf32x3" if own.dtype == torch.float32 else "tf32"  # the one-hot tl.dot (never float64)
    acc_dtype = torch.float64 if fp64 else torch.float32
    partial = torch.empty((slices, n_own, L_own), dtype=acc_dtype, device=own.device)
    with _launch.device_guard(own):
        _wti_backward_side_kernel[(n_own, slices)](
            grad,
            own,
            own_w,
            oth,
            oth_w,
            own_idx,
            oth_idx,
            grad_own,
            partial,
            n_own,
            n_oth,
            L_own,
            L_oth,
            D,
            ps_own,
            ps_oth,
            LP=LP,
            LOP=LOP,
            MB=MB,
            DB=DB,
            PRECISION=precision,
            IS_FP64=fp64,
            num_warps=warps,
            num_stages=2 if on_gpu else 1,
        )
    grad_own_w.copy_(partial.sum(0))


@torch.library.custom_op("hbi_ops_triton::wti_similarity_backward", mutates_args=())
def wti_similarity_backward_op(
    grad_score: torch.Tensor,
    text: torch.Tensor,
    video: torch.Tensor,
    text_weight: torch.Tensor,
    video_weight: torch.Tensor,
    t2v_argmax: torch.Tensor,
    v2t_argmax: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    A, T, D = text.shape
    B, V, _ = video.shape
    x, y = text.contiguous(), video.contiguous()
    p, q = text_weight.contiguous(), video_weight.contiguous()
    g = grad_score.to(text.dtype).contiguous()
    i, j = t2v_argmax.contiguous(), v2t_argmax.contiguous()
    grad_text, grad_video = torch.zeros_like(x), torch.zeros_like(y)
    grad_text_weight, grad_video_weight = torch.zeros_like(p), torch.zeros_like(q)
    if A == 0 or B == 0:
        return grad_text, grad_video, grad_text_weight, grad_video_weight
    # pass 1 owns texts (pair (a, b) = a * B + b), pass 2 owns videos (pair (b, a) = a * B + b)
    _backward_side(g, x, p, y, q, i, j, B, 1, grad_text, grad_text_weight)
    _backward_side(g, y, q, x, p, j, i, 1, B, grad_video, grad_video_weight)
    return grad_text, grad_video, grad_text_weight, grad_video_weight


ops.register("hbi_ops_triton", ops.wti)


def wti_similarity(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding):
    """The `triton` backend (arguments normalised by hbi_ops.ops.wti.arguments, as for every backend)."""
    return wti_similarity_op(text, video, text_weight, video_weight, text_mask, video_mask, zero_padding)[0]
