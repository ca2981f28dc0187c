// The closed-form textbook index of one pair on the CPU, forward and backward (closed_form.h has the
// math). Players are compacted first: padded words and frames cost nothing and are never read.
//
// Cost per pair, n words and m frames of which real, Q nodes per side (~100 to 200 for logits within
// +-10; up to 2,500 at float64's largest gaps): (n + m) Q exponentials, (n^2 + m^2) Q multiply-adds
// for alpha and gamma, n m log(nm) for the sorts and n m (n + m) for the contraction.
#pragma once
#include <algorithm>
#include <numeric>
#include <vector>

#include "banzhaf/closed_form.h"

namespace hbi {
namespace closed_form {

constexpr int kNodeChunk = 32;  // nodes whose factors are held at once: [players x chunk] tiles

// Factors of all n players at nodes q0 .. q0 + len: joiner[i][c] = a_i * w_q * P (the quadrature weight
// folded in), member[c][t] = b_t (node-major, for the axpy of the product), and, when `grads`, the
// factors' derivatives in u. Returns nothing; the tiles are the caller's.
template <typename acc_t>
struct NodeTiles {
  int n;
  std::vector<acc_t> u, joiner, member, a, b, weight_p, da, db, dlog_phi;
  explicit NodeTiles(int players)
      : n(players),
        u(players),
        joiner(players * kNodeChunk),
        member(players * kNodeChunk),
        a(players * kNodeChunk),
        b(players * kNodeChunk),
        weight_p(kNodeChunk),
        da(players * kNodeChunk),
        db(players * kNodeChunk),
        dlog_phi(players * kNodeChunk) {}

  // Fills the tiles for nodes q0 .. q0 + len - 1 (len <= kNodeChunk).
  void fill(const NodeGrid<acc_t>& grid, int q0, int len, bool grads) {
    for (int c = 0; c < len; ++c) {
      const acc_t s = grid.node(q0 + c);
      acc_t p = 1;
      for (int k = 0; k < n; ++k) {
        const NodeFactors<acc_t> f = node_factors(s, u[k]);
        p *= f.phi;
        a[k * kNodeChunk + c] = f.a;
        b[k * kNodeChunk + c] = f.b;
        member[c * n + k] = f.b;
        if (grads) {
          const NodeFactorGrads<acc_t> g = node_factor_grads(s, u[k]);
          da[k * kNodeChunk + c] = g.a;
          db[k * kNodeChunk + c] = g.b;
          dlog_phi[k * kNodeChunk + c] = g.log_phi;
        }
      }
      const acc_t wp = grid.weight(q0 + c, s) * p;
      weight_p[c] = wp;
      for (int k = 0; k < n; ++k) joiner[k * kNodeChunk + c] = a[k * kNodeChunk + c] * wp;
    }
  }
};

// Largest and smallest of n logits.
template <typename acc_t>
void logit_range(const acc_t* w, int n, acc_t& top, acc_t& bottom) {
  top = bottom = w[0];
  for (int k = 1; k < n; ++k) {
    top = std::max(top, w[k]);
    bottom = std::min(bottom, w[k]);
  }
}

// alpha [n x n] (row i: the joiner) of the softmax over n real players with logits w.
template <typename acc_t>
void softmax_marginals(const acc_t* w, int n, acc_t* alpha) {
  std::fill(alpha, alpha + n * n, acc_t(0));
  if (n == 0) return;
  acc_t top, bottom;
  logit_range(w, n, top, bottom);
  if (top == bottom) {  // equal weights: binomial (a NaN logit fails the test and propagates below)
    const acc_t diagonal = equal_weight_diagonal<acc_t>(n), off = equal_weight_off_diagonal<acc_t>(n);
    for (int i = 0; i < n; ++i)
      for (int t = 0; t < n; ++t) alpha[i * n + t] = i == t ? diagonal : off;
    return;
  }
  const NodeGrid<acc_t> grid = node_grid<acc_t>(bottom - top);
  NodeTiles<acc_t> tiles(n);
  for (int k = 0; k < n; ++k) tiles.u[k] = relative_weight(w[k], top);
  std::vector<acc_t> diagonal(n, acc_t(0));
  for (int q0 = 0; q0 < grid.count; q0 += kNodeChunk) {
    const int len = std::min(kNodeChunk, grid.count - q0);
    tiles.fill(grid, q0, len, false);
    for (int i = 0; i < n; ++i) {
      acc_t* row = alpha + i * n;
      for (int c = 0; c < len; ++c) {
        const acc_t x = acc_t(0.5) * tiles.joiner[i * kNodeChunk + c];
        const acc_t* b = tiles.member.data() + c * n;
        for (int t = 0; t < n; ++t) row[t] += x * b[t];
        const acc_t bi = b[i], ai = tiles.a[i * kNodeChunk + c];
        diagonal[i] += tiles.weight_p[c] * bi * (acc_t(1) - acc_t(0.5) * ai);
      }
    }
  }
  for (int i = 0; i < n; ++i) alpha[i * n + i] += diagonal[i];
}

// grad_w[k] += d/dw_k sum_{i,t} X[i, t] alpha[i, t] (X [n x n]).
template <typename acc_t>
void softmax_marginals_vjp(const acc_t* w, int n, const acc_t* X, acc_t* grad_w) {
  if (n < 2) return;  // one player always has weight 1
  acc_t top, bottom;
  logit_range(w, n, top, bottom);
  // Equal weights are a point like any other here: the quadrature's derivative holds there too.
  const NodeGrid<acc_t> grid = node_grid<acc_t>(bottom - top);
  NodeTiles<acc_t> tiles(n);
  for (int k = 0; k < n; ++k) tiles.u[k] = relative_weight(w[k], top);
  std::vector<acc_t> grad_u(n, acc_t(0)), Xb(n * kNodeChunk), Xta(n * kNodeChunk), K(kNodeChunk);
  for (int q0 = 0; q0 < grid.count; q0 += kNodeChunk) {
    const int len = std::min(kNodeChunk, grid.count - q0);
    tiles.fill(grid, q0, len, true);
    std::fill(Xb.begin(), Xb.end(), acc_t(0));
    std::fill(Xta.begin(), Xta.end(), acc_t(0));
    for (int i = 0; i < n; ++i)
      for (int t = 0; t < n; ++t) {
        const acc_t x = X[i * n + t];
        const acc_t* bt = tiles.b.data() + t * kNodeChunk;
        const acc_t* ai = tiles.a.data() + i * kNodeChunk;
        acc_t* xb = Xb.data() + i * kNodeChunk;
        acc_t* xta = Xta.data() + t * kNodeChunk;
        for (int c = 0; c < len; ++c) {
          xb[c] += x * bt[c];   // (X b)_i
          xta[c] += x * ai[c];  // (X^T a)_t
        }
      }
    // K = 1/2 a . Xb + sum_i X_ii b_i (1 - a_i / 2): the node's integrand contracted with X, over P.
    std::fill(K.begin(), K.end(), acc_t(0));
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < len; ++c) {
        const acc_t a = tiles.a[i * kNodeChunk + c], b = tiles.b[i * kNodeChunk + c];
        K[c] += acc_t(0.5) * a * Xb[i * kNodeChunk + c] + X[i * n + i] * b * (acc_t(1) - acc_t(0.5) * a);
      }
    for (int k = 0; k < n; ++k)
      for (int c = 0; c < len; ++c) {
        const int at = k * kNodeChunk + c;
        const acc_t a = tiles.a[at], b = tiles.b[at], da = tiles.da[at], db = tiles.db[at];
        const acc_t d_node = tiles.dlog_phi[at] * K[c] + acc_t(0.5) * (Xb[at] * da + Xta[at] * db) +
                             X[k * n + k] * (db * (acc_t(1) - acc_t(0.5) * a) - acc_t(0.5) * b * da);
        grad_u[k] += tiles.weight_p[c] * d_node;
      }
  }
  for (int k = 0; k < n; ++k)
    if (!weight_clamped(w[k], top)) grad_w[k] += grad_u[k];  // (node_factor_grads are in w already)
}

// Sorts the n entries x[0], x[stride], ... into `order` (sorts_before).
template <typename acc_t>
void sort_entries(const acc_t* x, int n, int stride, int* order) {
  std::iota(order, order + n, 0);
  std::sort(order, order + n, [&](int i, int k) { return sorts_before(x[i * stride], i, x[k * stride], k); });
}

// gain[k * gain_stride] for the n entries x[k * stride]: 2^-p x_(p) - sum_{q > p} 2^-q x_(q).
template <typename acc_t>
void max_marginals(const acc_t* x, int n, int stride, int* order, acc_t* gain, int gain_stride) {
  sort_entries(x, n, stride, order);
  acc_t below = 0;
  for (int p = n - 1; p >= 0; --p) {
    const acc_t weighted = position_weight<acc_t>(p) * x[order[p] * stride];
    gain[order[p] * gain_stride] = weighted - below;
    below += weighted;
  }
}

// grad_x[k * stride] += d/dx_k sum_j ybar[j * ybar_stride] gain_j.
template <typename acc_t>
void max_marginals_vjp(const acc_t* x, int n, int stride, int* order, const acc_t* ybar, int ybar_stride,
                       acc_t* grad_x) {
  sort_entries(x, n, stride, order);
  acc_t above = 0;  // sum of ybar over the positions before p
  for (int p = 0; p < n; ++p) {
    const acc_t y = ybar[order[p] * ybar_stride];
    grad_x[order[p] * stride] += position_weight<acc_t>(p) * (y - above);
    above += y;
  }
}

// The pair's compacted state: R over real words x real frames, and every marginal.
template <typename acc_t>
struct PairMarginals {
  int n, m;                                 // real words, real frames
  std::vector<acc_t> R, wt, wv;             // R [n x m]
  std::vector<acc_t> alpha, gamma, mu, nu;  // [n x n], [m x m], mu [m x n] (frame j, row t), nu [n x m]
  std::vector<int> order;

  template <typename scalar_t>
  void load(const scalar_t* sim, const scalar_t* text_weight, const scalar_t* video_weight,
            const std::vector<int>& words, const std::vector<int>& frames, int V) {
    n = static_cast<int>(words.size());
    m = static_cast<int>(frames.size());
    R.resize(n * m);
    wt.resize(n);
    wv.resize(m);
    for (int i = 0; i < n; ++i) {
      wt[i] = static_cast<acc_t>(text_weight[words[i]]);
      for (int j = 0; j < m; ++j) R[i * m + j] = static_cast<acc_t>(sim[words[i] * V + frames[j]]);
    }
    for (int j = 0; j < m; ++j) wv[j] = static_cast<acc_t>(video_weight[frames[j]]);
  }

  void compute() {
    alpha.resize(n * n);
    gamma.resize(m * m);
    mu.resize(m * n);
    nu.resize(n * m);
    order.resize(std::max(n, m));
    softmax_marginals(wt.data(), n, alpha.data());
    softmax_marginals(wv.data(), m, gamma.data());
    for (int t = 0; t < n; ++t) max_marginals(R.data() + t * m, m, 1, order.data(), mu.data() + t, n);
    for (int v = 0; v < m; ++v) max_marginals(R.data() + v, n, m, order.data(), nu.data() + v, m);
  }

  // I[i, j] = 1/2 (sum_t alpha[i, t] mu[j, t] + sum_v gamma[j, v] nu[i, v]).
  acc_t interaction(int i, int j) const {
    acc_t text = 0, video = 0;
    for (int t = 0; t < n; ++t) text += alpha[i * n + t] * mu[j * n + t];
    for (int v = 0; v < m; ++v) video += gamma[j * m + v] * nu[i * m + v];
    return acc_t(0.5) * (text + video);
  }

  // Gradients of sum_{i,j} G[i, j] I[i, j] (G [n x m]) in R, wt and wv (compacted, accumulated).
  void backward(const std::vector<acc_t>& G, std::vector<acc_t>& grad_R, std::vector<acc_t>& grad_wt,
                std::vector<acc_t>& grad_wv) const {
    std::vector<acc_t> X(n * n, acc_t(0)), Xg(m * m, acc_t(0)), Ymu(m * n, acc_t(0)), Ynu(n * m, acc_t(0));
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < m; ++j) {
        const acc_t g = acc_t(0.5) * G[i * m + j];
        if (g == acc_t(0)) continue;
        for (int t = 0; t < n; ++t) {
          X[i * n + t] += g * mu[j * n + t];       // d/d alpha[i, t]
          Ymu[j * n + t] += g * alpha[i * n + t];  // d/d mu[j, t]
        }
        for (int v = 0; v < m; ++v) {
          Xg[j * m + v] += g * nu[i * m + v];      // d/d gamma[j, v]
          Ynu[i * m + v] += g * gamma[j * m + v];  // d/d nu[i, v]
        }
      }
    softmax_marginals_vjp(wt.data(), n, X.data(), grad_wt.data());
    softmax_marginals_vjp(wv.data(), m, Xg.data(), grad_wv.data());
    std::vector<int> scratch(std::max(n, m));
    for (int t = 0; t < n; ++t)
      max_marginals_vjp(R.data() + t * m, m, 1, scratch.data(), Ymu.data() + t, n, grad_R.data() + t * m);
    for (int v = 0; v < m; ++v)
      max_marginals_vjp(R.data() + v, n, m, scratch.data(), Ynu.data() + v, m, grad_R.data() + v);
  }
};

}  // namespace closed_form
}  // namespace hbi
