// The fused dpc_knn kernel for N <= kSmallN: one block per sample, everything in shared memory
// (dpc_knn_cuda.cu describes the design; the per-element rules are those of dpc_knn_rules.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "dpc_knn/dpc_knn_device.cuh"
#include "dpc_knn/dpc_knn_rules.h"

namespace hbi {
namespace dpc {

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
    for (int64_t c = lane8; c < width8; c += 8)
      partial = add_squared_difference(partial, static_cast<acc_t>(xi[c]), static_cast<acc_t>(xj[c]));
    // ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) lands in lane 0 (a+b == b+a exactly).
    partial = add_rn(partial, __shfl_xor_sync(group_mask, partial, 1));
    partial = add_rn(partial, __shfl_xor_sync(group_mask, partial, 2));
    partial = add_rn(partial, __shfl_xor_sync(group_mask, partial, 4));
    if (lane8 == 0) {
      acc_t rest = acc_t(0);
      for (int64_t c = width8; c < width; ++c)
        rest = add_squared_difference(rest, static_cast<acc_t>(xi[c]), static_cast<acc_t>(xj[c]));
      const acc_t value = distance_from_squared(squared_from_sums(partial, rest), scale);
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
      if (real[i] || real[j]) largest_column = take_max(largest_column, d);
      if (real[i] && real[j]) largest_real = take_max(largest_real, d);
    }
    red_a[i] = largest_real;
    red_b[i] = largest_column;
  }
  __syncthreads();
  if (tid == 0) {
    acc_t largest_real = acc_t(0), largest_column = acc_t(0);
    bool any_padded = false;
    for (int64_t i = 0; i < n; ++i) {
      largest_real = take_max(largest_real, red_a[i]);
      largest_column = take_max(largest_column, red_b[i]);
      any_padded = any_padded || !real[i];
    }
    const acc_t fill = padded_fill(largest_real);
    s_fill = fill;
    s_largest = largest_masked_entry(largest_column, fill, any_padded);
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
      for (int64_t j = 0; j < n; ++j) insert_smallest(smallest, k, dist[i * n + j]);
      value = density_of_ascending<acc_t>([&](int64_t t) { return smallest[t]; }, k);
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
      if (denser(real[j], rho[j], j, real_i, rho_i, i)) nearest = take_min(nearest, dist[i * n + j]);
    }
    score[i] = score_of(nearest, rho_i);
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
    int64_t cluster = nearest_centre(dist, n, centre, num_clusters, t);
    if (rank[t] < num_clusters) cluster = rank[t];
    idx_out[b * n + t] = cluster;
  }
  for (int64_t c = tid; c < num_clusters; c += blockDim.x) centers_out[b * num_clusters + c] = centre[c];
}

}  // namespace dpc
}  // namespace hbi
