"""dpc_knn (docs/dpc_knn.md) in Triton, two paths (no sort anywhere; same tie rules as the oracle and cpu kernel).

N <= 64 (text, frames): one program per sample, the whole N x N problem in registers (tiles of
next_power_of_2(N)):
  1. Dist = sqrt_rn(sum_c (x_ic - x_jc)^2) / sqrt(C), channels summed in ascending order (one accumulator;
     differs from the cpu kernel's 8-lane order by rounding only, and is exact on integer-valued data,
     where the tie tests live); the diagonal is exactly 0;
  2. padded columns -> M + 1, M the largest real-real entry;
  3. rho = exp(-(sum of the k smallest squared masked entries, ascending) / k), exp in float64 rounded once
     (k rounds of "take the row minimum, remove its first occurrence"; NaN counts as +inf);
  4.-5. delta_i = min over the tokens j denser than i (real first, then higher rho with NaN on top, then
     lower index), seeded with the largest masked entry;
  6. rank of every token in the score order (higher score, NaN on top, then lower index) by counting:
     rank < K are the centres, always distinct;
  7. assignment: K rounds of "row of centre c" against the running minimum (strict <).
64 < N <= 16384 (image tokens): the distance matrices of a chunk of samples (<= 2 GiB) from 32 x 32 tiles,
then one program per row for the row maxima (-> M and the largest entry, combined per sample by two small
torch reductions), the density, delta and score, the rank; one program per (sample, 128 tokens) for the
assignment. Larger N is declined with a clear error (use `cuda` or `torch`).
Accumulation in float32 (float64 for float64 inputs); float64 exp through libdevice on the GPU.

Floors (H100): text size B=128 N=32 C=512: 8.4 MB of x -> 2.5 us, 0.1 GFLOP; the program per sample reads
x column by column (L1-resident after the first touch) and is latency-bound: expect ~10-20 us. Image size
B=32 N=3136 C=64: 40 G FMA-instr for the full (not halved) distance tiles -> ~1.2 ms at the FP32 rate, plus
the 1.26 GB matrix written once and read three times (~1.5 ms): expect ~3 ms (the cuda path is the fast one).
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from hbi_ops import ops

from . import _launch

SMALL_TOKENS = 64  # one program per sample up to here
MAX_TOKENS = ops.dpc_knn.TRITON_MAX_TOKENS  # the tiled path's row programs hold one row of the distances


@triton.jit
def _scaled_distance(squared, C, ACC_FP64: tl.constexpr):
    """sqrt(squared) / sqrt(C), each correctly rounded in the accumulate type, as the cpu kernel computes
    it (float(sqrt(double(C)))); tl.sqrt and `/` are IEEE-rounded in float64, float32 needs the _rn forms."""
    if ACC_FP64:
        dist = tl.sqrt(squared) / tl.sqrt(tl.zeros([1, 1], dtype=tl.float64) + C)
    else:
        dist = tl.div_rn(tl.sqrt_rn(squared), tl.sqrt_rn(tl.zeros([1, 1], dtype=tl.float32) + C))
    return dist


@triton.jit
def _dpc_knn_kernel(
    x_ptr,
    real_ptr,
    idx_ptr,
    centers_ptr,
    N,
    C,
    K,
    k,
    ACC_FP64: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LIBDEVICE_EXP: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    rows = offs[:, None]
    cols = offs[None, :]
    valid_i = valid[:, None]
    valid_j = valid[None, :]
    real = tl.load(real_ptr + b * N + offs, mask=valid, other=0) != 0
    real_i = real[:, None]
    real_j = real[None, :]

    # 1. distances
    if ACC_FP64:
        squared = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float64)
    else:
        squared = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    base = x_ptr + b * N * C + offs * C
    for c in range(0, C):
        v = tl.load(base + c, mask=valid, other=0.0).to(squared.dtype)
        d = v[:, None] - v[None, :]
        squared += d * d
    dist = tl.where(rows == cols, 0.0, _scaled_distance(squared, C, ACC_FP64))

    # 2. mask: padded columns -> largest real-real entry + 1
    zero = tl.zeros([BLOCK_N, BLOCK_N], dtype=squared.dtype)
    real_pair = real_i & real_j & valid_i & valid_j
    largest_real = tl.max(tl.max(tl.where(real_pair, dist, zero), axis=1), axis=0)
    fill = largest_real + 1.0
    dist = tl.where(real_j, dist, fill)
    inf = float("inf")
    both_valid = valid_i & valid_j
    largest = tl.max(tl.max(tl.where(both_valid, dist, zero), axis=1), axis=0)

    # 3. density: the k smallest entries of each row, ascending
    current = tl.where(valid_j & (dist == dist), dist, inf)  # NaN and columns beyond N count as +inf
    total = tl.zeros([BLOCK_N], dtype=squared.dtype)
    for _t in range(0, k):
        smallest = tl.min(current, axis=1)
        first = tl.min(tl.where(current == smallest[:, None], cols, BLOCK_N), axis=1)
        current = tl.where(cols == first[:, None], inf, current)
        total += smallest * smallest
    if ACC_FP64:
        mean = total / k
    else:
        mean = tl.div_rn(total, tl.zeros([BLOCK_N], dtype=tl.float32) + k)
    if LIBDEVICE_EXP:  # float64 exp on the GPU (the interpreter has no extern calls: numpy's exp there)
        rho = libdevice.exp((-mean).to(tl.float64)).to(squared.dtype)
    else:
        rho = tl.exp((-mean).to(tl.float64)).to(squared.dtype)
    rho = tl.where(real, rho, 0.0)

    # 4.-5. delta: min over denser tokens, seeded with the largest entry
    rho_i = rho[:, None]
    rho_j = rho[None, :]
    nan_i = rho_i != rho_i
    nan_j = rho_j != rho_j
    same_rho = (rho_j == rho_i) | (nan_i & nan_j)
    higher = (nan_i == 0) & (nan_j | (rho_j > rho_i))
    denser = tl.where(real_j != real_i, real_j, tl.where(same_rho, cols < rows, higher))
    delta = tl.min(tl.where(denser & valid_j, dist, largest), axis=1)
    score = delta * rho

    # 6. rank in the score order
    score_i = score[:, None]
    score_j = score[None, :]
    snan_i = score_i != score_i
    snan_j = score_j != score_j
    same_score = (score_j == score_i) | (snan_i & snan_j)
    above = (snan_i == 0) & (snan_j | (score_j > score_i))
    ahead = tl.where(same_score, cols < rows, above) & valid_j
    rank = tl.sum(ahead.to(tl.int32), axis=1)
    is_centre = valid & (rank < K)
    tl.store(centers_ptr + b * K + rank, offs.to(tl.int64), mask=is_centre)

    # 7. assignment (the masked row of each centre; strict < keeps the lower cluster)
    best = tl.sum(tl.where(rank[:, None] == 0, dist, zero), axis=0)
    cluster = tl.zeros([BLOCK_N], dtype=tl.int32)
    for c in range(1, K):
        row = tl.sum(tl.where(rank[:, None] == c, dist, zero), axis=0)
        better = row < best
        best = tl.where(better, row, best)
        cluster = tl.where(better, c, cluster)
    # `rank` is indexed by rows, `cluster` by columns: the same tokens.
    rank_cols = tl.sum(tl.where(rows == cols, rank[:, None], 0), axis=0)
    cluster = tl.where(rank_cols < K, rank_cols, cluster)
    tl.store(idx_ptr + b * N + offs, cluster.to(tl.int64), mask=valid)


# ---------------------------------------------------------------------------------------------------------
# Large N: the distance matrix of a chunk of samples in a workspace (<= 2 GiB), then one program per row.
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _tile_distance_kernel(x_ptr, dist_ptr, N, C, ACC_FP64: tl.constexpr, BLOCK: tl.constexpr):
    ti = tl.program_id(0)
    tj = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    i = ti * BLOCK + tl.arange(0, BLOCK)
    j = tj * BLOCK + tl.arange(0, BLOCK)
    vi_mask = i < N
    vj_mask = j < N
    if ACC_FP64:
        squared = tl.zeros([BLOCK, BLOCK], dtype=tl.float64)
    else:
        squared = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    base = x_ptr + b * N * C
    for c in range(0, C):
        vi = tl.load(base + i * C + c, mask=vi_mask, other=0.0).to(squared.dtype)
        vj = tl.load(base + j * C + c, mask=vj_mask, other=0.0).to(squared.dtype)
        d = vi[:, None] - vj[None, :]
        squared += d * d
    dist = tl.where(i[:, None] == j[None, :], 0.0, _scaled_distance(squared, C, ACC_FP64))
    tl.store(dist_ptr + b * N * N + i[:, None] * N + j[None, :], dist, mask=vi_mask[:, None] & vj_mask[None, :])


@triton.jit
def _row_maxima_kernel(dist_ptr, real_ptr, maxima_ptr, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * N + i
    b = row // N
    j = tl.arange(0, BLOCK_N)
    valid = j < N
    d = tl.load(dist_ptr + row * N + j, mask=valid, other=0.0)
    real_j = tl.load(real_ptr + b * N + j, mask=valid, other=0) != 0
    real_i = tl.load(real_ptr + row + tl.zeros([BLOCK_N], dtype=tl.int64)) != 0
    zero = tl.zeros([BLOCK_N], dtype=d.dtype)
    # NaN entries are skipped (as std::max(m, NaN) keeps m in the cpu kernel)
    keep = valid & (d == d)
    largest_real = tl.max(tl.where(keep & real_i & real_j, d, zero), axis=0)
    largest_column = tl.max(tl.where(keep & (real_i | real_j), d, zero), axis=0)
    pair = tl.arange(0, 2)
    tl.store(maxima_ptr + row * 2 + pair, tl.where(pair == 0, largest_real, largest_column))


@triton.jit
def _density_kernel(
    dist_ptr,
    real_ptr,
    fill_ptr,
    rho_ptr,
    N,
    k,
    ACC_FP64: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LIBDEVICE_EXP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    j = tl.arange(0, BLOCK_N)
    valid = j < N
    d = tl.load(dist_ptr + row * N + j, mask=valid, other=0.0)
    real_j = tl.load(real_ptr + b * N + j, mask=valid, other=0) != 0
    real_i = tl.load(real_ptr + row + tl.zeros([1], dtype=tl.int64)) != 0  # [1]
    fill = tl.load(fill_ptr + b + tl.zeros([1], dtype=tl.int64))  # [1]
    inf = float("inf")
    current = tl.where(real_j, d, fill)
    current = tl.where(valid & (current == current), current, inf)
    total = tl.zeros([1], dtype=d.dtype)
    for _t in range(0, k):
        smallest = tl.min(current, axis=0)
        first = tl.min(tl.where(current == smallest, j, BLOCK_N), axis=0)
        current = tl.where(j == first, inf, current)
        total += smallest * smallest
    if ACC_FP64:
        mean = total / k
    else:
        mean = tl.div_rn(total, tl.zeros([1], dtype=tl.float32) + k)
    if LIBDEVICE_EXP:
        rho = libdevice.exp((-mean).to(tl.float64)).to(d.dtype)
    else:
        rho = tl.exp((-mean).to(tl.float64)).to(d.dtype)
    rho = tl.where(real_i, rho, 0.0)
    tl.store(rho_ptr + row + tl.arange(0, 1), rho)


@triton.jit
def _delta_kernel(dist_ptr, real_ptr, rho_ptr, fill_ptr, largest_ptr, score_ptr, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    i = row - b * N
    j = tl.arange(0, BLOCK_N)
    valid = j < N
    one = tl.zeros([1], dtype=tl.int64)
    d = tl.load(dist_ptr + row * N + j, mask=valid, other=0.0)
    real_j = tl.load(real_ptr + b * N + j, mask=valid, other=0) != 0
    rho_j = tl.load(rho_ptr + b * N + j, mask=valid, other=0.0)
    real_i = tl.load(real_ptr + row + one) != 0
    rho_i = tl.load(rho_ptr + row + one)
    fill = tl.load(fill_ptr + b + one)
    largest = tl.load(largest_ptr + b + one)
    d = tl.where(real_j, d, fill)
    nan_i = rho_i != rho_i
    nan_j = rho_j != rho_j
    same_rho = (rho_j == rho_i) | (nan_i & nan_j)
    higher = (nan_i == 0) & (nan_j | (rho_j > rho_i))
    denser = tl.where(real_j != real_i, real_j, tl.where(same_rho, j < i, higher))
    delta = tl.min(tl.where(denser & valid, d, largest), axis=0)
    tl.store(score_ptr + row + tl.arange(0, 1), delta * rho_i)


@triton.jit
def _rank_kernel(score_ptr, rank_ptr, centers_ptr, N, K, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    i = row - b * N
    j = tl.arange(0, BLOCK_N)
    valid = j < N
    one = tl.zeros([1], dtype=tl.int64)
    score_j = tl.load(score_ptr + b * N + j, mask=valid, other=0.0)
    score_i = tl.load(score_ptr + row + one)
    snan_i = score_i != score_i
    snan_j = score_j != score_j
    same_score = (score_j == score_i) | (snan_i & snan_j)
    above = (snan_i == 0) & (snan_j | (score_j > score_i))
    ahead = tl.where(same_score, j < i, above) & valid
    rank = tl.sum(ahead.to(tl.int32), axis=0) + tl.zeros([1], dtype=tl.int32)
    tl.store(rank_ptr + row + tl.arange(0, 1), rank)
    tl.store(centers_ptr + b * K + rank, i + one, mask=rank < K)


@triton.jit
def _assign_kernel(dist_ptr, real_ptr, rank_ptr, centers_ptr, idx_ptr, N, K, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < N
    real_t = tl.load(real_ptr + b * N + t, mask=valid, other=0) != 0
    one = tl.zeros([1], dtype=tl.int64)
    centre = tl.load(centers_ptr + b * K + one)
    best = tl.load(dist_ptr + b * N * N + centre * N + t, mask=valid, other=0.0)
    cluster = tl.zeros([BLOCK_T], dtype=tl.int32)
    for c in range(1, K):
        centre = tl.load(centers_ptr + b * K + c + one)
        v = tl.load(dist_ptr + b * N * N + centre * N + t, mask=valid, other=0.0)
        better = v < best
        best = tl.where(better, v, best)
        cluster = tl.where(better, c, cluster)
    cluster = tl.where(real_t, cluster, 0)  # a padded column is M + 1 from every centre
    rank = tl.load(rank_ptr + b * N + t, mask=valid, other=0)
    cluster = tl.where(rank < K, rank, cluster)
    tl.store(idx_ptr + b * N + t, cluster.to(tl.int64), mask=valid)


WORKSPACE_BYTES = 1 << 31


def _launch_large(x, mask, num_clusters, k, idx, centers):
    batch, n, width = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    fp64 = acc == torch.float64
    block_n = triton.next_power_of_2(n)
    row_warps = 4 if block_n <= 1024 else (8 if block_n <= 4096 else 16)
    chunk = max(1, min(batch, WORKSPACE_BYTES // (n * n * (8 if fp64 else 4)), 65535))
    dist = torch.empty((chunk, n, n), dtype=acc, device=x.device)
    maxima = torch.empty((chunk, n, 2), dtype=acc, device=x.device)
    rho = torch.empty((chunk, n), dtype=acc, device=x.device)
    score = torch.empty((chunk, n), dtype=acc, device=x.device)
    rank = torch.empty((chunk, n), dtype=torch.int32, device=x.device)
    tile = 32 if _launch.compiled(x) else 64
    for b0 in range(0, batch, chunk):
        s = min(chunk, batch - b0)
        xs, real = x[b0 : b0 + s], mask[b0 : b0 + s]
        cs, ids = centers[b0 : b0 + s], idx[b0 : b0 + s]
        _tile_distance_kernel[(triton.cdiv(n, tile), triton.cdiv(n, tile), s)](
            xs, dist, n, width, ACC_FP64=fp64, BLOCK=tile
        )
        _row_maxima_kernel[(s * n,)](dist, real, maxima, n, BLOCK_N=block_n, num_warps=row_warps)
        per_sample = maxima[:s].amax(dim=1)  # [s, 2]: largest real-real entry, largest of a real column
        fill = (per_sample[:, 0] + 1).contiguous()
        any_padded = ~real.all(dim=1)
        largest = torch.where(any_padded, torch.maximum(per_sample[:, 1], fill), per_sample[:, 1]).contiguous()
        _density_kernel[(s * n,)](
            dist,
            real,
            fill,
            rho,
            n,
            k,
            ACC_FP64=fp64,
            BLOCK_N=block_n,
            LIBDEVICE_EXP=_launch.compiled(x),
            num_warps=row_warps,
        )
        _delta_kernel[(s * n,)](dist, real, rho, fill, largest, score, n, BLOCK_N=block_n, num_warps=row_warps)
        _rank_kernel[(s * n,)](score, rank, cs, n, num_clusters, BLOCK_N=block_n, num_warps=row_warps)
        block_t = 128
        _assign_kernel[(s, triton.cdiv(n, block_t))](dist, real, rank, cs, ids, n, num_clusters, BLOCK_T=block_t)


def _run(x, mask, num_clusters, k):
    batch, n, width = x.shape
    idx = torch.empty((batch, n), dtype=torch.int64, device=x.device)
    centers = torch.empty((batch, num_clusters), dtype=torch.int64, device=x.device)
    if batch == 0:
        return idx, centers
    if n > MAX_TOKENS:
        raise ValueError(
            f"dpc_knn: the triton backend takes N <= {MAX_TOKENS} tokens per sample (one program per row "
            f"holds a whole row), got N={n}; use backend='cuda' or backend='torch'"
        )
    if n > SMALL_TOKENS:
        _launch_large(x, mask, num_clusters, k, idx, centers)
        return idx, centers
    block_n = max(16, triton.next_power_of_2(n))
    num_warps = 4 if block_n <= 32 else 8
    _dpc_knn_kernel[(batch,)](
        x,
        mask,
        idx,
        centers,
        n,
        width,
        num_clusters,
        k,
        ACC_FP64=x.dtype == torch.float64,
        BLOCK_N=block_n,
        LIBDEVICE_EXP=_launch.compiled(x),
        num_warps=num_warps,
    )
    return idx, centers


@torch.library.custom_op("hbi_ops_triton::dpc_knn", mutates_args=())
def dpc_knn_op(x: torch.Tensor, mask: torch.Tensor, num_clusters: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    mask = (mask if mask.dtype == torch.bool else mask != 0).contiguous()
    with _launch.device_guard(x):
        return _run(x, mask, num_clusters, k)


ops.register("hbi_ops_triton", ops.dpc_knn)


def dpc_knn(x, mask, num_clusters, k):
    """The `triton` backend of hbi_ops.dpc_knn (arguments as hbi_ops.ops.dpc_knn.arguments gives them). No gradient."""
    return dpc_knn_op(x.detach(), mask, num_clusters, k)
