// The per-element rules of dpc_knn (docs/dpc_knn.md) that the CPU kernel (dpc_knn_cpu.cpp) and the CUDA
// kernels (dpc_knn_kernels.cuh) both call, so that the CPU tests run the arithmetic and the tie rules the GPU
// runs: the distance's lane tree and rounding, the padded fill, the density, the density and score orders
// (total orders with NaN above every number, ties to the lower index) and the assignment to the nearest centre.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/host_device.h"
#include "common/rounding.h"

namespace hbi {
namespace dpc {

constexpr int kLanes = 8;  // partial sums of a squared distance: lane l takes channels l, l + 8, ...

// The fixed tree over the 8 partial sums: ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
template <typename acc_t>
HBI_HD acc_t lane_tree(const acc_t* l) {
  return add_rn(add_rn(add_rn(l[0], l[1]), add_rn(l[2], l[3])), add_rn(add_rn(l[4], l[5]), add_rn(l[6], l[7])));
}

// One channel's term of a partial sum: lane += (a - b)^2.
template <typename acc_t>
HBI_HD acc_t add_squared_difference(acc_t lane, acc_t a, acc_t b) {
  const acc_t d = sub_rn(a, b);
  return add_rn(lane, mul_rn(d, d));
}

// The squared distance: the lane tree, then + the remainder (the channels past 8 * floor(C / 8)).
template <typename acc_t>
HBI_HD acc_t squared_from_sums(acc_t tree, acc_t rest) {
  return add_rn(tree, rest);
}
// Dist = sqrt(squared distance) / sqrt(C).
template <typename acc_t>
HBI_HD acc_t distance_from_squared(acc_t squared, acc_t scale) {
  return div_rn(sqrt_rn(squared), scale);
}

// sqrt(C) in acc_t, computed once on the host.
template <typename acc_t>
inline acc_t distance_scale(int64_t width) {
  return static_cast<acc_t>(std::sqrt(static_cast<double>(width)));
}

// Running maximum and minimum; a NaN value leaves them as they are (as std::max(m, NaN) and std::min(m, NaN)).
template <typename acc_t>
HBI_HD acc_t take_max(acc_t m, acc_t v) {
  return v > m ? v : m;
}
template <typename acc_t>
HBI_HD acc_t take_min(acc_t m, acc_t v) {
  return v < m ? v : m;
}

// Padded columns hold M + 1, M the largest real-real distance (0 with fewer than two real tokens).
template <typename acc_t>
HBI_HD acc_t padded_fill(acc_t largest_real) {
  return add_rn(largest_real, acc_t(1));
}
// The largest entry of the masked matrix: the densest token's delta.
template <typename acc_t>
HBI_HD acc_t largest_masked_entry(acc_t largest_in_real_columns, acc_t fill, bool any_padded) {
  return any_padded ? take_max(largest_in_real_columns, fill) : largest_in_real_columns;
}

// Keeps smallest[0..k) the k smallest values seen so far, ascending (start from +inf); NaN never enters,
// so it counts as +inf.
template <typename acc_t>
HBI_HD void insert_smallest(acc_t* smallest, int64_t k, acc_t v) {
  if (v < smallest[k - 1]) {  // false for NaN
    int64_t p = k - 1;
    for (; p > 0 && v < smallest[p - 1]; --p) smallest[p] = smallest[p - 1];
    smallest[p] = v;
  }
}

HBI_HD float density_from_mean(float mean) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(exp(-static_cast<double>(mean)));
#else
  return static_cast<float>(std::exp(-static_cast<double>(mean)));
#endif
}
HBI_HD double density_from_mean(double mean) {
#if defined(__CUDA_ARCH__)
  return exp(-mean);
#else
  return std::exp(-mean);
#endif
}

// rho = exp(-mean of the squares of the k smallest entries), value(t) the t-th smallest: summed one after
// another in ascending order, as the oracle does.
template <typename acc_t, typename Value>
HBI_HD acc_t density_of_ascending(const Value& value, int64_t k) {
  acc_t total = acc_t(0);
  for (int64_t t = 0; t < k; ++t) {
    const acc_t v = value(t);
    total = t == 0 ? mul_rn(v, v) : add_rn(total, mul_rn(v, v));
  }
  return density_from_mean(div_rn(total, static_cast<acc_t>(k)));
}

// The score of a token: delta * rho.
template <typename acc_t>
HBI_HD acc_t score_of(acc_t delta, acc_t rho) {
  return mul_rn(delta, rho);
}

// a ranks above b: NaN above every number (as torch.sort and torch.topk), then the larger.
template <typename acc_t>
HBI_HD bool greater_nan_first(acc_t a, acc_t b) {
  if (is_nan(b)) return false;
  if (is_nan(a)) return true;
  return a > b;
}
template <typename acc_t>
HBI_HD bool same_value(acc_t a, acc_t b) {
  return a == b || (is_nan(a) && is_nan(b));
}
// j comes before i in the density order (real first, then higher rho, then lower index).
template <typename acc_t>
HBI_HD bool denser(bool real_j, acc_t rho_j, int64_t j, bool real_i, acc_t rho_i, int64_t i) {
  if (real_j != real_i) return real_j;
  if (!same_value(rho_j, rho_i)) return greater_nan_first(rho_j, rho_i);
  return j < i;
}
// j comes before i in the score order (higher score, then lower index).
template <typename acc_t>
HBI_HD bool ahead(acc_t score_j, int64_t j, acc_t score_i, int64_t i) {
  if (!same_value(score_j, score_i)) return greater_nan_first(score_j, score_i);
  return j < i;
}

// The cluster of token t: the centre c with the smallest dist[centre[c] * n + t] (strict <, so the lower
// cluster on ties). The caller gives each centre its own cluster afterwards.
template <typename acc_t, typename index_t>
HBI_HD int64_t nearest_centre(const acc_t* dist, int64_t n, const index_t* centre, int64_t num_clusters, int64_t t) {
  int64_t cluster = 0;
  acc_t best = dist[static_cast<int64_t>(centre[0]) * n + t];
  for (int64_t c = 1; c < num_clusters; ++c) {
    const acc_t v = dist[static_cast<int64_t>(centre[c]) * n + t];
    if (v < best) {
      best = v;
      cluster = c;
    }
  }
  return cluster;
}

}  // namespace dpc
}  // namespace hbi
