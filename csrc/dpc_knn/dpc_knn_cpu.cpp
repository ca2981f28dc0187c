// CPU kernel of hbi_ops::dpc_knn (docs/dpc_knn.md): density-peaks clustering with k-nearest-neighbour
// density, one sample per task of at::parallel_for.
//
// Per sample (N tokens of width C), with the steps numbered as in the specification:
//   1. Dist[i, j] = sqrt(sum_c (x_ic - x_jc)^2) / sqrt(C), from the differences themselves (never
//      |a|^2 + |b|^2 - 2ab, whose cancellation error would break ties differently from the oracle), each
//      pair once so the matrix is exactly symmetric. The sum runs in 8 interleaved lanes (SIMD) in a fixed
//      order; it differs from torch.cdist's only in rounding, and exact ties (equal tokens, exact
//      coordinates) come out exact in both. O(N^2 C / 2).
//   2. Columns of padded tokens become M + 1, M the largest real-real distance (0 with < 2 real tokens).
//   3. rho_i = exp(-mean of the k smallest squared entries of row i): insertion into a sorted list of k
//      (small k) or std::nth_element, then the k values summed one after another in ascending order (as
//      the oracle does); exp taken in double and rounded once for float. Padded tokens get rho = 0. O(N^2).
//   4. Density order: real before padded, then higher rho, then lower index (one std::sort, O(N log N)).
//   5. delta_i = min of Dist[i, j] over the tokens j before i in that order; the densest token gets the
//      largest entry of the masked matrix. O(N^2 / 2).
//   6. Centres: the K highest delta * rho, ties to the lower index (std::partial_sort, O(N log K)).
//   7. Each token joins the centre with the smallest Dist[centre, token] (ties: lower cluster), each
//      centre its own cluster. O(K N).
// Arithmetic runs in at::opmath_type (float for float16 / bfloat16 / float32, double for float64), so the
// results are identical to the oracle's (hbi_ops/reference/dpc_knn.py) up to the order of the distance sum.
// The per-element rules (rounding, fill, density, orders, assignment) are those of dpc_knn_rules.h, which the
// CUDA kernels call too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "dpc_knn/dpc_knn_args.h"
#include "dpc_knn/dpc_knn_rules.h"

namespace {

using hbi::dpc::kLanes;
constexpr int64_t kTile = 32;        // tokens per side of a distance tile
constexpr int64_t kInsertionK = 16;  // k up to which the k smallest are kept by insertion

// sum_c (a_c - b_c)^2 in a fixed order that does not depend on the vector width the compiler picks:
// kLanes interleaved partial sums (lane l takes c = l, l + kLanes, ...; GCC keeps them in SIMD
// registers), then the fixed lane tree of dpc_knn_rules.h, then the remainder.

template <typename acc_t>
inline acc_t squared_distance(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t width) {
  acc_t lanes[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= width; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = hbi::dpc::add_squared_difference(lanes[l], a[c + l], b[c + l]);
  }
  acc_t rest = acc_t(0);
  for (; c < width; ++c) rest = hbi::dpc::add_squared_difference(rest, a[c], b[c]);
  return hbi::dpc::squared_from_sums(hbi::dpc::lane_tree(lanes), rest);
}

template <typename acc_t>
struct Workspace {
  std::vector<acc_t> xs;       // [N, C] the sample in acc_t
  std::vector<acc_t> dist;     // [N, N] masked distances
  std::vector<acc_t> scratch;  // [N] the k smallest of a row (or the row, for nth_element)
  std::vector<acc_t> rho, delta, score;
  std::vector<int64_t> order, candidates;

  Workspace(int64_t n, int64_t c)
      : xs(n * c), dist(n * n), scratch(n), rho(n), delta(n), score(n), order(n), candidates(n) {}
};

template <typename scalar_t, typename acc_t>
void cluster_sample(const scalar_t* __restrict__ x, const bool* __restrict__ real, int64_t n, int64_t width,
                    int64_t num_clusters, int64_t k, int64_t* __restrict__ idx, int64_t* __restrict__ centers,
                    Workspace<acc_t>& ws) {
  acc_t* __restrict__ xs = ws.xs.data();
  acc_t* __restrict__ dist = ws.dist.data();

  // 1. Distances (each pair once, so the matrix is exactly symmetric), in tiles so that the mirrored
  //    writes stay in cache. On the way: the largest real-real distance (step 2) and the largest entry
  //    of a real column (step 5; a pair (i, j) gives entries in column j and in column i).
  for (int64_t e = 0; e < n * width; ++e) xs[e] = static_cast<acc_t>(x[e]);
  const acc_t scale = hbi::dpc::distance_scale<acc_t>(width);
  acc_t largest_real = acc_t(0), largest_in_real_columns = acc_t(0);
  bool any_padded = false;
  for (int64_t i = 0; i < n; ++i) {
    dist[i * n + i] = acc_t(0);
    any_padded = any_padded || !real[i];
  }
  for (int64_t ib = 0; ib < n; ib += kTile) {
    const int64_t i_end = std::min(n, ib + kTile);
    for (int64_t jb = ib; jb < n; jb += kTile) {
      const int64_t j_end = std::min(n, jb + kTile);
      for (int64_t i = ib; i < i_end; ++i) {
        const acc_t* xi = xs + i * width;
        acc_t* __restrict__ row = dist + i * n;
        const int64_t j_begin = std::max(jb, i + 1);
        for (int64_t j = j_begin; j < j_end; ++j) row[j] = squared_distance(xi, xs + j * width, width);
        for (int64_t j = j_begin; j < j_end; ++j) {
          const acc_t d = hbi::dpc::distance_from_squared(row[j], scale);
          row[j] = d;
          dist[j * n + i] = d;
          if (real[i] || real[j]) largest_in_real_columns = hbi::dpc::take_max(largest_in_real_columns, d);
          if (real[i] && real[j]) largest_real = hbi::dpc::take_max(largest_real, d);
        }
      }
    }
  }

  // 2. Padded columns -> M + 1 (M = largest_real, 0 with fewer than two real tokens).
  const acc_t fill = hbi::dpc::padded_fill(largest_real);
  if (any_padded) {
    for (int64_t i = 0; i < n; ++i) {
      acc_t* row = dist + i * n;
      for (int64_t j = 0; j < n; ++j)
        if (!real[j]) row[j] = fill;
    }
  }
  // The largest entry of the masked matrix (distances are >= 0; the diagonal of a real column is 0).
  const acc_t largest = hbi::dpc::largest_masked_entry(largest_in_real_columns, fill, any_padded);

  // 3. Density. The k smallest entries of each row, NaN counting as +inf: for small k one pass keeping
  //    them sorted by insertion, else std::nth_element; summed in ascending order.
  acc_t* rho = ws.rho.data();
  acc_t* scratch = ws.scratch.data();
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    if (!real[i]) {
      rho[i] = acc_t(0);
      continue;
    }
    const acc_t* row = dist + i * n;
    if (k <= kInsertionK) {
      std::fill(scratch, scratch + k, kInf);
      for (int64_t j = 0; j < n; ++j) hbi::dpc::insert_smallest(scratch, k, row[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) scratch[j] = std::isnan(row[j]) ? kInf : row[j];
      if (k < n) std::nth_element(scratch, scratch + (k - 1), scratch + n);
      std::sort(scratch, scratch + k);
    }
    rho[i] = hbi::dpc::density_of_ascending<acc_t>([&](int64_t t) { return scratch[t]; }, k);
  }

  // 4. Density order, densest first (denser and ahead stay strict weak orders with NaN: std::sort on a
  //    broken order is undefined behaviour).
  int64_t* order = ws.order.data();
  std::iota(order, order + n, int64_t(0));
  std::sort(order, order + n,
            [&](int64_t a, int64_t b) { return hbi::dpc::denser(real[a], rho[a], a, real[b], rho[b], b); });

  // 5. Distance to the nearest denser token.
  acc_t* delta = ws.delta.data();
  delta[order[0]] = largest;
  for (int64_t p = 1; p < n; ++p) {
    const int64_t i = order[p];
    const acc_t* row = dist + i * n;
    acc_t nearest = row[order[0]];
    for (int64_t q = 1; q < p; ++q) nearest = hbi::dpc::take_min(nearest, row[order[q]]);
    delta[i] = nearest;
  }

  // 6. Centres: the K highest scores, ties to the lower index.
  acc_t* score = ws.score.data();
  for (int64_t i = 0; i < n; ++i) score[i] = hbi::dpc::score_of(delta[i], rho[i]);
  int64_t* candidates = ws.candidates.data();
  std::iota(candidates, candidates + n, int64_t(0));
  std::partial_sort(candidates, candidates + num_clusters, candidates + n,
                    [&](int64_t a, int64_t b) { return hbi::dpc::ahead(score[a], a, score[b], b); });
  std::copy(candidates, candidates + num_clusters, centers);

  // 7. Assignment to the nearest centre (the rule of dpc_knn_rules.h), each centre its own cluster.
  for (int64_t t = 0; t < n; ++t) idx[t] = hbi::dpc::nearest_centre(dist, n, centers, num_clusters, t);
  for (int64_t c = 0; c < num_clusters; ++c) idx[centers[c]] = c;
}

std::tuple<at::Tensor, at::Tensor> dpc_knn_cpu(const at::Tensor& x, const at::Tensor& mask, int64_t num_clusters,
                                               int64_t k) {
  TORCH_CHECK(x.defined() && mask.defined(), "dpc_knn: x and mask must be defined tensors");
  TORCH_CHECK(x.device().is_cpu(), "dpc_knn (cpu kernel): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(mask.device().is_cpu(), "dpc_knn (cpu kernel): mask must be a CPU tensor, got ", mask.device());
  hbi::check_dpc_knn_args(x, mask, num_clusters, k);
  const int64_t batch = x.size(0), n = x.size(1), width = x.size(2);

  const at::Tensor xc = x.contiguous();
  const at::Tensor real = (mask.scalar_type() == at::kBool ? mask : mask.ne(0)).contiguous();
  at::Tensor idx = at::empty({batch, n}, x.options().dtype(at::kLong));
  at::Tensor centers = at::empty({batch, num_clusters}, x.options().dtype(at::kLong));
  if (batch == 0) return {idx, centers};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "dpc_knn_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = xc.const_data_ptr<scalar_t>();
    const bool* real_data = real.const_data_ptr<bool>();
    int64_t* idx_data = idx.mutable_data_ptr<int64_t>();
    int64_t* centers_data = centers.mutable_data_ptr<int64_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      Workspace<acc_t> ws(n, width);
      for (int64_t b = begin; b < end; ++b) {
        cluster_sample<scalar_t, acc_t>(x_data + b * n * width, real_data + b * n, n, width, num_clusters, k,
                                        idx_data + b * n, centers_data + b * num_clusters, ws);
      }
    });
  });
  return {idx, centers};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CPU, m) { m.impl("dpc_knn", &dpc_knn_cpu); }
