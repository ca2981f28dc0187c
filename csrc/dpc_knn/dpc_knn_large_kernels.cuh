// The five dpc_knn kernels for N > kSmallN: distance tiles, density, delta and score, ranks, assignment
// (dpc_knn_cuda.cu describes the design; the per-element rules are those of dpc_knn_rules.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "dpc_knn/dpc_knn_device.cuh"
#include "dpc_knn/dpc_knn_rules.h"

namespace hbi {
namespace dpc {

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
            lanes[r][s][cc % 8] = add_squared_difference(lanes[r][s][cc % 8], a[r], bj[s]);
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
            if (c < width8) {
              lanes[r][s][cc % 8] = add_squared_difference(lanes[r][s][cc % 8], a[r], bj[s]);
            } else {
              rest[r][s] = add_squared_difference(rest[r][s], a[r], bj[s]);
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
      acc_t value = distance_from_squared(squared_from_sums(lane_tree(lanes[r][s]), rest[r][s]), scale);
      if (i == j) value = acc_t(0);
      tile_s[li][lj] = value;
      if (i < n && j < n) {
        db[i * n + j] = value;
        if (real[i] || real[j]) largest_column = take_max(largest_column, value);
        if (real[i] && real[j]) largest_real = take_max(largest_real, value);
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
    largest_real = take_max(largest_real, other_real);
    largest_column = take_max(largest_column, other_column);
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
  const acc_t fill = padded_fill(stats[b * 3 + 0]);
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
    rho[row] = density_of_ascending<acc_t>([&](int64_t t) { return t < count ? sorted[t] : kth; }, k);
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
  const acc_t fill = padded_fill(stats[b * 3 + 0]);
  const acc_t largest = largest_masked_entry(stats[b * 3 + 1], fill, stats[b * 3 + 2] > acc_t(0));
  const bool real_i = real[i];
  const acc_t rho_i = rho[i];
  const acc_t* source = dist + row * n;
  acc_t nearest = largest;
  for (int64_t j = tid; j < n; j += blockDim.x) {
    if (denser(real[j], rho[j], j, real_i, rho_i, i)) nearest = take_min(nearest, real[j] ? source[j] : fill);
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const acc_t other = __shfl_xor_sync(0xffffffffu, nearest, offset);
    nearest = take_min(nearest, other);
  }
  if (tid % kWarp == 0) partial[tid / kWarp] = nearest;
  __syncthreads();
  if (tid == 0) {
    acc_t m = partial[0];
    for (int w = 1; w < kRowThreads / kWarp; ++w) m = take_min(m, partial[w]);
    score[row] = score_of(m, rho_i);
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
    cluster = nearest_centre(db, n, centers + b * num_clusters, num_clusters, t);
  }
  const int32_t r = rank_all[token];
  if (r < num_clusters) cluster = r;
  idx[token] = cluster;
}

}  // namespace dpc
}  // namespace hbi
