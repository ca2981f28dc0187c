// CUDA kernel of hbi_ops::dpc_knn (docs/dpc_knn.md): density-peaks clustering with k-nearest-neighbour
// density. Same arithmetic as the CPU kernel (csrc/dpc_knn/dpc_knn_cpu.cpp), so idx and centers are
// identical to it (and to the oracle) on data without near-ties:
//   * squared distance: 8 interleaved partial sums (channel c < 8*floor(C/8) goes to lane c mod 8, in
//     ascending order), the remainder summed sequentially, the lanes combined by the fixed tree
//     ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) then + remainder; multiplies and adds with explicit
//     round-to-nearest intrinsics (no FMA contraction, as the CPU build); Dist = sqrt_rn(s) / sqrt(C);
//   * rho = exp(-(sum of the k smallest squared masked entries, ascending) / k), exp in float64 rounded
//     once; padded tokens 0; the density order and the score order are total orders (NaN above
//     everything, ties to the lower index), so centres are always distinct.
// No sort is needed: delta_i = min over the tokens j denser than i (a predicate on (real, rho, index)),
// seeded with the largest masked entry (the densest token keeps it); the centre of rank r is the token
// with exactly r tokens ahead of it in the score order (counting); each token joins the centre with the
// smallest Dist (strict <, lower cluster on ties) and each centre its own cluster.
//
// Two paths:
//   * N <= 64 (text, frames): one block of 512 threads per sample, everything fused in shared memory
//     (N x N distances; 8 threads per pair, one per partial-sum lane, combined by shuffles in the CPU
//     tree order).
//   * larger N (image tokens): five kernels over a chunk of samples whose N x N distance matrices fit a
//     2 GiB workspace (one sample at least): (1) 32 x 32 distance tiles on and above the diagonal (x tiles
//     staged in shared memory, each thread 4 x 2 pairs), written to both halves, per-sample maxima by
//     integer atomicMax on the (non-negative) float bits -- max is order-independent, so deterministic;
//     (2) one block per row: the row in shared memory, k-th smallest by an 8-bit radix select, the
//     smaller entries sorted by rank counting, summed ascending -> rho; (3) one block per row: delta and
//     score; (4) ranks by counting over the sample's scores -> centres; (5) one thread per token:
//     assignment. Limits: the row kernel keeps a row plus 2k entries in shared memory, so N + 2k is bounded
//     by the device's opt-in shared memory (about 29,000 tokens in float64, 58,000 in float32 on an H100);
//     above it the op raises a clear error. One sample's N x N matrix must also fit in GPU memory.
//
// Floors (H100: 3.35 TB/s; ~51 TFLOP/s fp32 without tensor cores = ~25.6 T FP32 instructions/s counting an
// FMA as 2 flops; H200 4.24 TB/s), float32:
//   text   B=128 N=32 C=512: x 8.4 MB -> 2.5 us of HBM; distances 128*496 pairs*512*3 instr = 0.1 G -> 4 us
//          spread over 128 blocks (one wave). Floor ~5 us + launch; expected ~10 us.
//   frames B=128 N=12 C=512: 3.1 MB -> ~1 us; 0.013 G instr. Floor ~2 us + launch; expected ~5 us.
//   image  B=32 N=3136 C=64 K=784: distances (half, symmetric) 32*4.97M pairs*64*3 = 30 G instr -> 1.2 ms at
//          25.6 T/s (the exact-order sub, mul, add costs 3 instructions where sub + FMA would be 2, i.e.
//          0.8 ms, but FMA rounds differently from the cpu kernel). The matrix (1.26 GB) is written once and
//          read by the density and delta passes: 3.8 GB -> 1.1 ms at 3.35 TB/s (0.9 ms on an H200),
//          partly overlapping the compute. Rank + assignment ~0.2 ms. Expected ~2 ms on an H100: above the
//          1.5 ms target; the ways down are FMA distances (if CPU bit-equality is dropped), a
//          fused density + delta pass, and 4x4 register blocking with vector shared-memory loads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "dpc_knn/dpc_knn_args.h"

namespace {

constexpr int kWarp = 32;
constexpr int64_t kSmallN = 64;     // fused one-block-per-sample path up to this N
constexpr int kSmallThreads = 512;  // 64 groups of 8 lanes
constexpr int kTile = 32;           // distance tile (tokens per side)
constexpr int kRowThreads = 256;    // row kernels
constexpr int64_t kWorkspaceBytes = int64_t{1} << 31;

// ---- arithmetic in the CPU kernel's rounding --------------------------------------------------------
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }
__device__ __forceinline__ float density_from_mean(float mean) {
  return static_cast<float>(exp(-static_cast<double>(mean)));
}
__device__ __forceinline__ double density_from_mean(double mean) { return exp(-mean); }

template <typename acc_t>
__device__ __forceinline__ acc_t lane_tree(const acc_t* l) {
  return add_rn(add_rn(add_rn(l[0], l[1]), add_rn(l[2], l[3])), add_rn(add_rn(l[4], l[5]), add_rn(l[6], l[7])));
}

// Orders that stay total with NaN (NaN above every number), as the CPU kernel's comparators.
template <typename acc_t>
__device__ __forceinline__ bool greater_nan_first(acc_t a, acc_t b) {  // a ranks above b
  if (isnan(b)) return false;
  if (isnan(a)) return true;
  return a > b;
}
template <typename acc_t>
__device__ __forceinline__ bool same_value(acc_t a, acc_t b) {
  return a == b || (isnan(a) && isnan(b));
}
// j comes before i in the density order (real first, then higher rho, then lower index).
template <typename acc_t>
__device__ __forceinline__ bool denser(bool real_j, acc_t rho_j, int64_t j, bool real_i, acc_t rho_i, int64_t i) {
  if (real_j != real_i) return real_j;
  if (!same_value(rho_j, rho_i)) return greater_nan_first(rho_j, rho_i);
  return j < i;
}
// j comes before i in the score order (higher score, then lower index).
template <typename acc_t>
__device__ __forceinline__ bool ahead(acc_t score_j, int64_t j, acc_t score_i, int64_t i) {
  if (!same_value(score_j, score_i)) return greater_nan_first(score_j, score_i);
  return j < i;
}

template <typename acc_t>
struct Bits;
template <>
struct Bits<float> {
  using type = unsigned int;
  __device__ static type of(float v) { return __float_as_uint(v); }
  __device__ static float value(type b) { return __uint_as_float(b); }
};
template <>
struct Bits<double> {
  using type = unsigned long long;
  __device__ static type of(double v) { return static_cast<type>(__double_as_longlong(v)); }
  __device__ static double value(type b) { return __longlong_as_double(static_cast<long long>(b)); }
};

// max of non-negative values through their bits (NaN skipped, as std::max(m, NaN) keeps m on the CPU).
__device__ __forceinline__ void atomic_max_nonnegative(float* address, float v) {
  if (!(v > 0.0f)) return;
  atomicMax(reinterpret_cast<unsigned int*>(address), __float_as_uint(v));
}
__device__ __forceinline__ void atomic_max_nonnegative(double* address, double v) {
  if (!(v > 0.0)) return;
  atomicMax(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(__double_as_longlong(v)));
}

// =======================================================================================================
// Small N: one block per sample.
// Shared memory: dist [N*N] acc, rho [N], score [N], red_a [N], red_b [N] acc; rank [N], centre [N] int;
// real [N] bool.
// =======================================================================================================
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kSmallThreads)
    small_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ real_all, int64_t n, int64_t width,
                 int64_t num_clusters, int64_t k, acc_t scale, int64_t* __restrict__ idx_out,
                 int64_t* __restrict__ centers_out) {
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* dist = reinterpret_cast<acc_t*>(smem);
  acc_t* rho = dist + n * n;
  acc_t* score = rho + n;
  acc_t* red_a = score + n;
  acc_t* red_b = red_a + n;
  int* rank = reinterpret_cast<int*>(red_b + n);
  int* centre = rank + n;
  bool* real = reinterpret_cast<bool*>(centre + n);
  __shared__ acc_t s_fill, s_largest;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const scalar_t* xb = x + b * n * width;
  for (int64_t i = tid; i < n; i += blockDim.x) real[i] = real_all[b * n + i];

  // 1. Distances, 8 threads per pair (lane l of the group = partial sum l), each pair once.
  const int group = tid / 8, lane8 = tid % 8;
  const int groups = blockDim.x / 8;
  const unsigned group_mask = 0xffu << ((tid % kWarp) & ~7);
  const int64_t width8 = (width / 8) * 8;
  for (int64_t p = group; p < n * n; p += groups) {
    const int64_t i = p / n, j = p % n;
    if (j < i) continue;  // uniform within the group
    if (j == i) {
      if (lane8 == 0) dist[i * n + i] = acc_t(0);
      continue;
    }
    const scalar_t* xi = xb + i * width;
    const scalar_t* xj = xb + j * width;
    acc_t partial = acc_t(0);
    for (int64_t c = lane8; c < width8; c += 8) {
      const acc_t d = sub_rn(static_cast<acc_t>(xi[c]), static_cast<acc_t>(xj[c]));
      partial = add_rn(partial, mul_rn(d, d));
    }
    // ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) lands in lane 0 (a+b == b+a exactly).
    partial = add_rn(partial, __shfl_xor_sync(group_mask, partial, 1));
    partial = add_rn(partial, __shfl_xor_sync(group_mask, partial, 2));
    partial = add_rn(partial, __shfl_xor_sync(group_mask, partial, 4));
    if (lane8 == 0) {
      acc_t rest = acc_t(0);
      for (int64_t c = width8; c < width; ++c) {
        const acc_t d = sub_rn(static_cast<acc_t>(xi[c]), static_cast<acc_t>(xj[c]));
        rest = add_rn(rest, mul_rn(d, d));
      }
      const acc_t value = div_rn(sqrt_rn(add_rn(partial, rest)), scale);
      dist[i * n + j] = value;
      dist[j * n + i] = value;
    }
  }
  __syncthreads();

  // 2. Largest real-real entry and largest entry of a real column, per row, then over rows.
  for (int64_t i = tid; i < n; i += blockDim.x) {
    acc_t largest_real = acc_t(0), largest_column = acc_t(0);
    for (int64_t j = 0; j < n; ++j) {
      const acc_t d = dist[i * n + j];
      if (real[i] || real[j]) largest_column = d > largest_column ? d : largest_column;
      if (real[i] && real[j]) largest_real = d > largest_real ? d : largest_real;
    }
    red_a[i] = largest_real;
    red_b[i] = largest_column;
  }
  __syncthreads();
  if (tid == 0) {
    acc_t largest_real = acc_t(0), largest_column = acc_t(0);
    bool any_padded = false;
    for (int64_t i = 0; i < n; ++i) {
      largest_real = red_a[i] > largest_real ? red_a[i] : largest_real;
      largest_column = red_b[i] > largest_column ? red_b[i] : largest_column;
      any_padded = any_padded || !real[i];
    }
    const acc_t fill = add_rn(largest_real, acc_t(1));
    s_fill = fill;
    s_largest = any_padded ? (largest_column < fill ? fill : largest_column) : largest_column;
  }
  __syncthreads();
  const acc_t fill = s_fill, largest = s_largest;
  for (int64_t e = tid; e < n * n; e += blockDim.x) {
    if (!real[e % n]) dist[e] = fill;
  }
  __syncthreads();

  // 3. Density: the k smallest of the row by insertion (NaN never enters, so it counts as +inf).
  for (int64_t i = tid; i < n; i += blockDim.x) {
    acc_t value = acc_t(0);
    if (real[i]) {
      acc_t smallest[kSmallN];
      for (int64_t t = 0; t < k; ++t) smallest[t] = static_cast<acc_t>(INFINITY);
      for (int64_t j = 0; j < n; ++j) {
        const acc_t v = dist[i * n + j];
        if (v < smallest[k - 1]) {
          int64_t q = k - 1;
          for (; q > 0 && v < smallest[q - 1]; --q) smallest[q] = smallest[q - 1];
          smallest[q] = v;
        }
      }
      acc_t total = mul_rn(smallest[0], smallest[0]);
      for (int64_t t = 1; t < k; ++t) total = add_rn(total, mul_rn(smallest[t], smallest[t]));
      value = density_from_mean(div_rn(total, static_cast<acc_t>(k)));
    }
    rho[i] = value;
  }
  __syncthreads();

  // 4.-5. delta (min over denser tokens, seeded with the largest entry) and score.
  for (int64_t i = tid; i < n; i += blockDim.x) {
    acc_t nearest = largest;
    const bool real_i = real[i];
    const acc_t rho_i = rho[i];
    for (int64_t j = 0; j < n; ++j) {
      if (denser(real[j], rho[j], j, real_i, rho_i, i)) {
        const acc_t d = dist[i * n + j];
        nearest = d < nearest ? d : nearest;
      }
    }
    score[i] = mul_rn(nearest, rho_i);
  }
  __syncthreads();

  // 6. Rank in the score order; the first K are the centres.
  for (int64_t i = tid; i < n; i += blockDim.x) {
    const acc_t s = score[i];
    int r = 0;
    for (int64_t j = 0; j < n; ++j) r += ahead(score[j], j, s, i) ? 1 : 0;
    rank[i] = r;
    if (r < num_clusters) centre[r] = static_cast<int>(i);
  }
  __syncthreads();

  // 7. Assignment.
  for (int64_t t = tid; t < n; t += blockDim.x) {
    int64_t cluster = 0;
    acc_t best = dist[static_cast<int64_t>(centre[0]) * n + t];
    for (int64_t c = 1; c < num_clusters; ++c) {
      const acc_t v = dist[static_cast<int64_t>(centre[c]) * n + t];
      if (v < best) {
        best = v;
        cluster = c;
      }
    }
    if (rank[t] < num_clusters) cluster = rank[t];
    idx_out[b * n + t] = cluster;
  }
  for (int64_t c = tid; c < num_clusters; c += blockDim.x) centers_out[b * num_clusters + c] = centre[c];
}

// =======================================================================================================
// Large N.
// stats[b] = {largest real-real distance, largest entry of a real column (unmasked), any padded (1/0)}.
// =======================================================================================================
constexpr int kTileRows = 8;   // blockDim.y; thread rows i = ty + 8 r, r < 4
constexpr int kTileCols = 16;  // blockDim.x; thread cols j = tx + 16 s, s < 2

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileRows* kTileCols)
    tile_distance_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ real_all, int64_t n, int64_t width,
                         acc_t scale, acc_t* __restrict__ dist, acc_t* __restrict__ stats) {
  const int64_t tile_i = blockIdx.x, tile_j = blockIdx.y;
  if (tile_j < tile_i) return;  // each pair once: the tile below the diagonal is the transpose
  const int64_t b = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kTileCols + tx;
  const int64_t i0 = tile_i * kTile, j0 = tile_j * kTile;
  const scalar_t* xb = x + b * n * width;
  const bool* real = real_all + b * n;

  __shared__ acc_t xi_s[kTile][kTile + 1];
  __shared__ acc_t xj_s[kTile][kTile + 1];

  acc_t lanes[4][2][8];
  acc_t rest[4][2];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      rest[r][s] = acc_t(0);
#pragma unroll
      for (int l = 0; l < 8; ++l) lanes[r][s][l] = acc_t(0);
    }
  const int64_t width8 = (width / 8) * 8;

  for (int64_t c0 = 0; c0 < width; c0 += kTile) {
    for (int e = tid; e < kTile * kTile; e += kTileRows * kTileCols) {
      const int row = e / kTile, col = e % kTile;
      const int64_t c = c0 + col;
      const int64_t ti = i0 + row, tj = j0 + row;
      xi_s[row][col] = (ti < n && c < width) ? static_cast<acc_t>(xb[ti * width + c]) : acc_t(0);
      xj_s[row][col] = (tj < n && c < width) ? static_cast<acc_t>(xb[tj * width + c]) : acc_t(0);
    }
    __syncthreads();
    if (c0 + kTile <= width8) {  // every channel of this chunk goes to lane c mod 8
#pragma unroll
      for (int cc = 0; cc < kTile; ++cc) {
        acc_t a[4], bj[2];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = xi_s[ty + kTileRows * r][cc];
#pragma unroll
        for (int s = 0; s < 2; ++s) bj[s] = xj_s[tx + kTileCols * s][cc];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            const acc_t d = sub_rn(a[r], bj[s]);
            lanes[r][s][cc % 8] = add_rn(lanes[r][s][cc % 8], mul_rn(d, d));
          }
      }
    } else {
#pragma unroll
      for (int cc = 0; cc < kTile; ++cc) {
        const int64_t c = c0 + cc;
        if (c >= width) break;
        acc_t a[4], bj[2];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = xi_s[ty + kTileRows * r][cc];
#pragma unroll
        for (int s = 0; s < 2; ++s) bj[s] = xj_s[tx + kTileCols * s][cc];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            const acc_t d = sub_rn(a[r], bj[s]);
            if (c < width8) {
              lanes[r][s][cc % 8] = add_rn(lanes[r][s][cc % 8], mul_rn(d, d));
            } else {
              rest[r][s] = add_rn(rest[r][s], mul_rn(d, d));
            }
          }
      }
    }
    __syncthreads();
  }

  // Finish, write the upper tile directly and keep it in shared memory for the transposed write.
  acc_t largest_real = acc_t(0), largest_column = acc_t(0);
  acc_t(*tile_s)[kTile + 1] = xi_s;  // reuse (the loop above ended with a barrier)
  acc_t* db = dist + b * n * n;
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int li = ty + kTileRows * r, lj = tx + kTileCols * s;
      const int64_t i = i0 + li, j = j0 + lj;
      acc_t value = div_rn(sqrt_rn(add_rn(lane_tree(lanes[r][s]), rest[r][s])), scale);
      if (i == j) value = acc_t(0);
      tile_s[li][lj] = value;
      if (i < n && j < n) {
        db[i * n + j] = value;
        if (real[i] || real[j]) largest_column = value > largest_column ? value : largest_column;
        if (real[i] && real[j]) largest_real = value > largest_real ? value : largest_real;
      }
    }
  __syncthreads();
  if (tile_j != tile_i) {  // the transposed tile: dist[j, i], coalesced along i
    for (int e = tid; e < kTile * kTile; e += kTileRows * kTileCols) {
      const int lj = e / kTile, li = e % kTile;
      const int64_t i = i0 + li, j = j0 + lj;
      if (i < n && j < n) db[j * n + i] = tile_s[li][lj];
    }
  }
  // Maxima: warp reduction (order-independent), one atomic per warp.
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const acc_t other_real = __shfl_xor_sync(0xffffffffu, largest_real, offset);
    const acc_t other_column = __shfl_xor_sync(0xffffffffu, largest_column, offset);
    largest_real = other_real > largest_real ? other_real : largest_real;
    largest_column = other_column > largest_column ? other_column : largest_column;
  }
  if (tid % kWarp == 0) {
    atomic_max_nonnegative(&stats[b * 3 + 0], largest_real);
    atomic_max_nonnegative(&stats[b * 3 + 1], largest_column);
  }
  if (tile_i == tile_j && tid < kTile) {  // the diagonal tiles see every token once
    const int64_t t = i0 + tid;
    if (t < n && !real[t]) atomic_max_nonnegative(&stats[b * 3 + 2], acc_t(1));
  }
}

// One block per row (b, i): rho[b, i]. Shared: row [n] acc (if it fits, else read from global),
// candidates [k], sorted [k] acc, histogram [256] int.
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    density_kernel(const acc_t* __restrict__ dist, const bool* __restrict__ real_all, const acc_t* __restrict__ stats,
                   int64_t n, int64_t k, acc_t* __restrict__ rho) {
  using bits_t = typename Bits<acc_t>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* row_s = reinterpret_cast<acc_t*>(smem);
  acc_t* candidates = row_s + n;
  acc_t* sorted = candidates + k;
  __shared__ int histogram[256];
  __shared__ bits_t s_prefix;
  __shared__ long long s_remaining;
  __shared__ int s_count;

  const int64_t row = blockIdx.x;  // b * n + i
  const int64_t b = row / n;
  const int tid = threadIdx.x;
  if (!real_all[row]) {
    if (tid == 0) rho[row] = acc_t(0);
    return;
  }
  const bool* real = real_all + b * n;
  const acc_t fill = add_rn(stats[b * 3 + 0], acc_t(1));
  const acc_t* source = dist + row * n;
  for (int64_t j = tid; j < n; j += blockDim.x) {
    acc_t v = real[j] ? source[j] : fill;
    if (isnan(v)) v = static_cast<acc_t>(INFINITY);  // NaN counts as +inf (as the CPU kernel)
    row_s[j] = v;
  }
  if (tid == 0) {
    s_prefix = 0;
    s_remaining = k;  // the k-th smallest has rank `remaining` among the keys matching the prefix
    s_count = 0;
  }
  __syncthreads();

  // Radix select of the k-th smallest key (non-negative values: the bits order like the values).
  constexpr int kBits = 8 * sizeof(bits_t);
  for (int shift = kBits - 8; shift >= 0; shift -= 8) {
    for (int h = tid; h < 256; h += blockDim.x) histogram[h] = 0;
    __syncthreads();
    const bits_t prefix = s_prefix;
    const bits_t high_mask = shift + 8 >= kBits ? bits_t(0) : (~bits_t(0) << (shift + 8));
    for (int64_t j = tid; j < n; j += blockDim.x) {
      const bits_t key = Bits<acc_t>::of(row_s[j]);
      if ((key & high_mask) == prefix) atomicAdd(&histogram[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (tid == 0) {
      long long remaining = s_remaining;
      int digit = 0;
      for (; digit < 255; ++digit) {
        if (histogram[digit] >= remaining) break;
        remaining -= histogram[digit];
      }
      s_prefix = prefix | (static_cast<bits_t>(digit) << shift);
      s_remaining = remaining;
    }
    __syncthreads();
  }
  const bits_t threshold = s_prefix;  // the k-th smallest; `remaining` copies of it are among the k
  // The entries below the threshold (fewer than k), in any order, then sorted by rank counting.
  for (int64_t j = tid; j < n; j += blockDim.x) {
    const acc_t v = row_s[j];
    if (Bits<acc_t>::of(v) < threshold) candidates[atomicAdd(&s_count, 1)] = v;
  }
  __syncthreads();
  const int count = s_count;
  for (int e = tid; e < count; e += blockDim.x) {
    const acc_t v = candidates[e];
    int position = 0;
    for (int f = 0; f < count; ++f) {
      const acc_t u = candidates[f];
      position += (u < v || (u == v && f < e)) ? 1 : 0;
    }
    sorted[position] = v;
  }
  __syncthreads();
  if (tid == 0) {
    const acc_t kth = Bits<acc_t>::value(threshold);
    acc_t total = acc_t(0);
    for (int64_t t = 0; t < k; ++t) {
      const acc_t v = t < count ? sorted[t] : kth;
      total = t == 0 ? mul_rn(v, v) : add_rn(total, mul_rn(v, v));
    }
    rho[row] = density_from_mean(div_rn(total, static_cast<acc_t>(k)));
  }
}

// One block per row (b, i): score[b, i] = delta_i * rho_i.
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    delta_kernel(const acc_t* __restrict__ dist, const bool* __restrict__ real_all, const acc_t* __restrict__ stats,
                 const acc_t* __restrict__ rho_all, int64_t n, acc_t* __restrict__ score) {
  __shared__ acc_t partial[kRowThreads / kWarp];
  const int64_t row = blockIdx.x;
  const int64_t b = row / n, i = row % n;
  const int tid = threadIdx.x;
  const bool* real = real_all + b * n;
  const acc_t* rho = rho_all + b * n;
  const acc_t fill = add_rn(stats[b * 3 + 0], acc_t(1));
  const acc_t column = stats[b * 3 + 1];
  const acc_t largest = stats[b * 3 + 2] > acc_t(0) ? (column < fill ? fill : column) : column;
  const bool real_i = real[i];
  const acc_t rho_i = rho[i];
  const acc_t* source = dist + row * n;
  acc_t nearest = largest;
  for (int64_t j = tid; j < n; j += blockDim.x) {
    if (denser(real[j], rho[j], j, real_i, rho_i, i)) {
      const acc_t d = real[j] ? source[j] : fill;
      nearest = d < nearest ? d : nearest;
    }
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const acc_t other = __shfl_xor_sync(0xffffffffu, nearest, offset);
    nearest = other < nearest ? other : nearest;
  }
  if (tid % kWarp == 0) partial[tid / kWarp] = nearest;
  __syncthreads();
  if (tid == 0) {
    acc_t m = partial[0];
    for (int w = 1; w < kRowThreads / kWarp; ++w) m = partial[w] < m ? partial[w] : m;
    score[row] = mul_rn(m, rho_i);
  }
}

// Ranks in the score order; grid (ceil(n / 256), samples); centres of rank < K.
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    rank_kernel(const acc_t* __restrict__ score_all, int64_t n, int64_t num_clusters, int32_t* __restrict__ rank_all,
                int64_t* __restrict__ centers) {
  __shared__ acc_t chunk[kRowThreads];
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const acc_t* score = score_all + b * n;
  const acc_t s = i < n ? score[i] : acc_t(0);
  int64_t r = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kRowThreads) {
    const int64_t jt = j0 + threadIdx.x;
    chunk[threadIdx.x] = jt < n ? score[jt] : acc_t(0);
    __syncthreads();
    const int64_t end = min(static_cast<int64_t>(kRowThreads), n - j0);
    for (int64_t q = 0; q < end; ++q) r += ahead(chunk[q], j0 + q, s, i) ? 1 : 0;
    __syncthreads();
  }
  if (i < n) {
    rank_all[b * n + i] = static_cast<int32_t>(r);
    if (r < num_clusters) centers[b * num_clusters + r] = i;
  }
}

// One thread per token (b, t).
template <typename acc_t>
__global__ void assign_kernel(const acc_t* __restrict__ dist, const bool* __restrict__ real_all,
                              const int32_t* __restrict__ rank_all, const int64_t* __restrict__ centers,
                              int64_t samples, int64_t n, int64_t num_clusters, int64_t* __restrict__ idx) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (token >= samples * n) return;
  const int64_t b = token / n, t = token % n;
  int64_t cluster = 0;
  if (real_all[token]) {  // a padded column is M + 1 from every centre: cluster 0
    const acc_t* db = dist + b * n * n;
    const int64_t* cb = centers + b * num_clusters;
    acc_t best = db[cb[0] * n + t];
    for (int64_t c = 1; c < num_clusters; ++c) {
      const acc_t v = db[cb[c] * n + t];
      if (v < best) {
        best = v;
        cluster = c;
      }
    }
  }
  const int32_t r = rank_all[token];
  if (r < num_clusters) cluster = r;
  idx[token] = cluster;
}

// =======================================================================================================

template <typename scalar_t, typename acc_t>
void run_small(const at::Tensor& x, const at::Tensor& real, int64_t num_clusters, int64_t k, at::Tensor& idx,
               at::Tensor& centers, cudaStream_t stream) {
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  const size_t shared = static_cast<size_t>(n * n + 4 * n) * sizeof(acc_t) + 2 * n * sizeof(int) + n;
  const acc_t scale = static_cast<acc_t>(std::sqrt(static_cast<double>(width)));
  TORCH_CHECK(batch <= 0x7fffffff, "dpc_knn (cuda kernel): batch too large");
  small_kernel<scalar_t, acc_t><<<static_cast<unsigned>(batch), kSmallThreads, shared, stream>>>(
      x.const_data_ptr<scalar_t>(), real.const_data_ptr<bool>(), n, width, num_clusters, k, scale,
      idx.mutable_data_ptr<int64_t>(), centers.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
void run_large(const at::Tensor& x, const at::Tensor& real, int64_t num_clusters, int64_t k, at::Tensor& idx,
               at::Tensor& centers, cudaStream_t stream) {
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const acc_t scale = static_cast<acc_t>(std::sqrt(static_cast<double>(width)));

  const size_t density_shared = static_cast<size_t>(n + 2 * k) * sizeof(acc_t);
  const size_t static_shared = 256 * sizeof(int) + 64;
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  const size_t limit = properties->sharedMemPerBlockOptin;
  TORCH_CHECK(density_shared + static_shared <= limit, "dpc_knn (cuda kernel): N=", n, " and k=", k, " need ",
              density_shared + static_shared, " bytes of shared memory per block, more than this device's ", limit,
              "; use fewer tokens per sample (or the cpu / torch backend)");
  if (density_shared + static_shared > 48 * 1024) {  // the default limit counts static shared memory too
    C10_CUDA_CHECK(cudaFuncSetAttribute(density_kernel<acc_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(density_shared)));
  }
  const int64_t tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK(tiles <= 65535, "dpc_knn (cuda kernel): N too large");
  const int64_t per_sample = n * n * static_cast<int64_t>(sizeof(acc_t));
  int64_t chunk = std::max<int64_t>(1, kWorkspaceBytes / per_sample);
  chunk = std::min<int64_t>({chunk, batch, 65535, 0x7fffffff / n});

  const auto options = x.options().dtype(acc_dtype);
  at::Tensor dist = at::empty({chunk, n, n}, options);
  at::Tensor stats = at::empty({chunk, 3}, options);
  at::Tensor rho = at::empty({chunk, n}, options);
  at::Tensor score = at::empty({chunk, n}, options);
  at::Tensor rank = at::empty({chunk, n}, x.options().dtype(at::kInt));

  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int64_t samples = std::min(chunk, batch - b0);
    const scalar_t* xb = x.const_data_ptr<scalar_t>() + b0 * n * width;
    const bool* rb = real.const_data_ptr<bool>() + b0 * n;
    int64_t* cb = centers.mutable_data_ptr<int64_t>() + b0 * num_clusters;
    int64_t* ib = idx.mutable_data_ptr<int64_t>() + b0 * n;
    stats.zero_();  // on the current stream

    const dim3 tile_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles), static_cast<unsigned>(samples));
    tile_distance_kernel<scalar_t, acc_t><<<tile_grid, dim3(kTileCols, kTileRows), 0, stream>>>(
        xb, rb, n, width, scale, dist.mutable_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const unsigned rows = static_cast<unsigned>(samples * n);
    density_kernel<acc_t><<<rows, kRowThreads, density_shared, stream>>>(
        dist.const_data_ptr<acc_t>(), rb, stats.const_data_ptr<acc_t>(), n, k, rho.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    delta_kernel<acc_t><<<rows, kRowThreads, 0, stream>>>(dist.const_data_ptr<acc_t>(), rb,
                                                          stats.const_data_ptr<acc_t>(), rho.const_data_ptr<acc_t>(), n,
                                                          score.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const dim3 rank_grid(static_cast<unsigned>((n + kRowThreads - 1) / kRowThreads), static_cast<unsigned>(samples));
    rank_kernel<acc_t><<<rank_grid, kRowThreads, 0, stream>>>(score.const_data_ptr<acc_t>(), n, num_clusters,
                                                              rank.mutable_data_ptr<int32_t>(), cb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    const unsigned token_blocks = static_cast<unsigned>((samples * n + kRowThreads - 1) / kRowThreads);
    assign_kernel<acc_t><<<token_blocks, kRowThreads, 0, stream>>>(
        dist.const_data_ptr<acc_t>(), rb, rank.const_data_ptr<int32_t>(), cb, samples, n, num_clusters, ib);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> dpc_knn_cuda(const at::Tensor& x, const at::Tensor& mask, int64_t num_clusters,
                                                int64_t k) {
  TORCH_CHECK(x.defined() && mask.defined(), "dpc_knn: x and mask must be defined tensors");
  TORCH_CHECK(x.is_cuda(), "dpc_knn (cuda kernel): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(mask.device() == x.device(), "dpc_knn (cuda kernel): mask must be on x's device ", x.device(), ", got ",
              mask.device());
  hbi::check_dpc_knn_args(x, mask, num_clusters, k);
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);
  TORCH_CHECK(n < (int64_t{1} << 31), "dpc_knn (cuda kernel): N must be below 2^31");

  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor real = (mask.scalar_type() == at::kBool ? mask : mask.ne(0)).contiguous();
  at::Tensor idx = at::empty({batch, n}, x.options().dtype(at::kLong));
  at::Tensor centers = at::empty({batch, num_clusters}, x.options().dtype(at::kLong));
  if (batch == 0) return {idx, centers};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "dpc_knn_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (n <= kSmallN) {
      run_small<scalar_t, acc_t>(xc, real, num_clusters, k, idx, centers, stream);
    } else {
      run_large<scalar_t, acc_t>(xc, real, num_clusters, k, idx, centers, stream);
    }
  });
  return {idx, centers};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) { m.impl("dpc_knn", &dpc_knn_cuda); }
