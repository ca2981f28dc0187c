// The per-element rules of merge_tokens and its backward (docs/merge.md) that the CPU kernels
// (merge_cpu.cpp) and the CUDA kernels (merge_cuda.cu) both call: the ordered sums are sequences of
// these steps, tokens in ascending order on both devices, so the forward output is bit-identical.
#pragma once

#include "common/host_device.h"
#include "common/rounding.h"

namespace hbi {
namespace merge {

constexpr double kEpsilon = 1e-6;

// W[c] += w_n and S[c, ch] += w_n x_n[ch], one rounding per operation.
template <typename acc_t>
HBI_HD acc_t add_weight(acc_t total, acc_t w) {
  return add_rn(total, w);
}
template <typename acc_t>
HBI_HD acc_t add_weighted(acc_t sum, acc_t w, acc_t x) {
  return add_rn(sum, mul_rn(w, x));
}

// W[c] + 1e-6 and out[c, ch] = S[c, ch] / (W[c] + 1e-6).
template <typename acc_t>
HBI_HD acc_t cluster_denominator(acc_t total) {
  return add_rn(total, static_cast<acc_t>(kEpsilon));
}
template <typename acc_t>
HBI_HD acc_t merged_value(acc_t sum, acc_t denominator) {
  return div_rn(sum, denominator);
}

// Backward, with c = idx_n: share = w_n / (W[c] + 1e-6), grad_x[n, ch] = grad[c, ch] * share, and the terms
// grad[c, ch] (x_n[ch] - out[c, ch]) of grad_w[n] = <grad[c], x_n - out[c]> / (W[c] + 1e-6). Plain operators:
// each device keeps its own contraction of the dot product (none on the CPU, -ffp-contract=off; the GPU's sum is
// a warp tree, so it differs from the CPU's by rounding only).
template <typename acc_t>
HBI_HD acc_t token_share(acc_t w, acc_t denominator) {
  return w / denominator;
}
template <typename acc_t>
HBI_HD acc_t grad_x_value(acc_t g, acc_t share) {
  return g * share;
}
template <typename acc_t>
HBI_HD acc_t add_grad_w_term(acc_t dot, acc_t g, acc_t x, acc_t out) {
  return dot + g * (x - out);
}
template <typename acc_t>
HBI_HD acc_t grad_w_value(acc_t dot, acc_t denominator) {
  return dot / denominator;
}

}  // namespace merge
}  // namespace hbi
