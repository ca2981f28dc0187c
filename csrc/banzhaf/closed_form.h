// The exact textbook Banzhaf interaction of the WTI game by its closed form (docs/banzhaf.md): the
// scalar formulas, written once for the CPU and the CUDA kernels (and mirrored by the Triton kernel).
//
//   I(i, j) = 1/2 [ sum_t alpha[i, t] mu[j, t] + sum_v gamma[j, v] nu[i, v] ]
//
// alpha (gamma): expected change of every word's (frame's) softmax weight when word i (frame j) joins a
// Banzhaf coalition of the others. With u_k = exp(w_k - max w) and phi_k(s) = (1 + exp(-s u_k)) / 2,
//   alpha[i, t] = 1/2 int P(s) a_i(s) b_t(s) ds  (t != i),   alpha[i, i] = int P(s) b_i(s) ds,
//   a_k = (exp(-s u_k) - 1) / phi_k,  b_k = u_k exp(-s u_k) / phi_k,  P = prod_k phi_k,
// taken by the trapezoid rule in y = log s over [log tolerance, log(log(1/tolerance) / u_min)].
// Equal weights have a binomial closed form instead (no quadrature).
// mu (nu): expected change of every row (column) maximum when frame j (word i) joins: with the row's
// real entries sorted from the largest (ties by index), the entry at position p gains
//   2^-p r_p - sum_{q > p} 2^-q r_q.
#pragma once
#include <cmath>

#include "common/host_device.h"

namespace hbi {
namespace closed_form {

using std::ceil;
using std::exp;
using std::ldexp;
using std::log;

// Node spacing in y = log s, the truncation tolerance of the two ends of the integral and the largest
// logit gap kept (weights further below the maximum count as exp(-max_gap)); the trapezoid rule's error
// is about exp(-pi^2 / step). The same settings as hbi_ops/reference/banzhaf_closed_form.py.
template <typename acc_t>
struct Quadrature;
template <>
struct Quadrature<double> {
  static constexpr double step = 0.3, tolerance = 1e-16, max_gap = 700.0;
};
template <>
struct Quadrature<float> {
  static constexpr float step = 0.5f, tolerance = 1e-8f, max_gap = 84.0f;
};

// The nodes of one side of one pair: s_q = exp(low + q * spacing), q = 0 .. count - 1.
template <typename acc_t>
struct NodeGrid {
  acc_t low, spacing;
  int count;

  HBI_HD acc_t node(int q) const { return exp(low + static_cast<acc_t>(q) * spacing); }
  // Trapezoid weight of node q in ds = s dy.
  HBI_HD acc_t weight(int q, acc_t s) const {
    return (q == 0 || q == count - 1) ? acc_t(0.5) * s * spacing : s * spacing;
  }
};

// log_gap: min(w) - max(w) over the side's real players (<= 0).
template <typename acc_t>
HBI_HD NodeGrid<acc_t> node_grid(acc_t log_gap) {
  using Q = Quadrature<acc_t>;
  const acc_t log_u_min = log_gap < -Q::max_gap ? -Q::max_gap : log_gap;
  const acc_t low = log(Q::tolerance);
  const acc_t high = log(-log(Q::tolerance)) - log_u_min;
  const int count = static_cast<int>(ceil((high - low) / Q::step)) + 1;
  return {low, (high - low) / static_cast<acc_t>(count - 1), count};
}

// u = exp(w - max w), with the gap clamped as the grid assumes.
template <typename acc_t>
HBI_HD acc_t relative_weight(acc_t logit, acc_t max_logit) {
  const acc_t gap = logit - max_logit;
  return exp(gap < -Quadrature<acc_t>::max_gap ? -Quadrature<acc_t>::max_gap : gap);
}

// Whether the clamp holds player's weight constant (its logit then gets no gradient).
template <typename acc_t>
HBI_HD bool weight_clamped(acc_t logit, acc_t max_logit) {
  return logit - max_logit < -Quadrature<acc_t>::max_gap;
}

// One player's factors at one node (e = exp(-s u); one exponential and one division).
template <typename acc_t>
struct NodeFactors {
  acc_t phi;  // (1 + e) / 2, multiplied over the players into P (which may underflow to 0 past ~126
              // float players: only where its terms are below float's resolution anyway)
  acc_t a;    // (e - 1) / phi: the joiner's factor (e - 1 is off by ~eps where s u < eps, where its
              // contribution to the integral is ~eps^2)
  acc_t b;    // u e / phi: the member's factor
};

template <typename acc_t>
HBI_HD NodeFactors<acc_t> node_factors(acc_t s, acc_t u) {
  const acc_t e = exp(-s * u);
  const acc_t inv = acc_t(2) / (acc_t(1) + e);  // 1 / phi
  return {acc_t(0.5) * (acc_t(1) + e), (e - acc_t(1)) * inv, u * e * inv};
}

// Their derivatives in the logit w = log u + const (u d/du): every one is bounded (x e^-x <= 1/e with
// x = s u), so the node's weight, up to ~1/u_min, never meets a factor that grows with s.
template <typename acc_t>
struct NodeFactorGrads {
  acc_t log_phi, a, b;
};

template <typename acc_t>
HBI_HD NodeFactorGrads<acc_t> node_factor_grads(acc_t s, acc_t u) {
  const acc_t su = s * u;
  const acc_t e = exp(-su);
  const acc_t one_e = acc_t(1) + e;
  const acc_t xe = su * e;
  return {-xe / one_e, acc_t(-4) * xe / (one_e * one_e), acc_t(2) * u * e * (one_e - su) / (one_e * one_e)};
}

// alpha for n players of equal weight: the number of other members K is Binomial(n - 1, 1/2).
// diagonal: E[1 / (1 + K)]; off the diagonal: 1/2 E[1 / (K' + 2) - 1 / (K' + 1)], K' ~ Bin(n - 2, 1/2).
template <typename acc_t>
HBI_HD acc_t equal_weight_diagonal(int n) {
  return acc_t(2) * (acc_t(1) - ldexp(acc_t(1), -n)) / static_cast<acc_t>(n);
}
template <typename acc_t>
HBI_HD acc_t equal_weight_off_diagonal(int n) {
  if (n < 2) return acc_t(0);
  return acc_t(-2) * (acc_t(1) - static_cast<acc_t>(n + 1) * ldexp(acc_t(1), -n)) /
         (static_cast<acc_t>(n) * static_cast<acc_t>(n - 1));
}

// The order of a row's entries for mu: x before y (x at index i, y at index k) when x is larger, ties
// by index. NaN comes first, so that it propagates into every gain of its row instead of breaking the
// order.
template <typename acc_t>
HBI_HD bool sorts_before(acc_t x, int i, acc_t y, int k) {
  const bool x_nan = x != x, y_nan = y != y;
  if (x_nan != y_nan) return x_nan;
  if (!x_nan && x != y) return x > y;
  return i < k;
}

// 2^-p.
template <typename acc_t>
HBI_HD acc_t position_weight(int p) {
  return ldexp(acc_t(1), -p);
}

}  // namespace closed_form
}  // namespace hbi
