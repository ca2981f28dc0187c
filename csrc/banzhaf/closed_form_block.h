// The closed-form textbook index of one pair as the CUDA kernel computes it: one thread block a pair,
// phases separated by block barriers, the pair's intermediates in a workspace (closed_form.h has the
// math). Written once over a `Block` policy:
//   CudaBlock   (closed_form_cuda.cu): threadIdx.x of kThreads threads, __syncthreads, warp shuffles;
//   SerialBlock (closed_form_block_cpu.cpp): one thread, barriers that do nothing; every phase's loop
//               then covers all its elements in order, so the CPU runs the GPU's per-element code (the
//               tests call it as hbi_ops::closed_form_block_* on CPU tensors).
//
// Phases of a pair (n real words, m real frames; shared: `smem` node-factor tiles, `scratch` reductions):
//   load:       compact the real players; R [n x m], logits into the workspace;
//   marginals:  alpha [n x n], gamma [m x m] from node chunks (factors in smem, P a reduction over the
//               players at each node); each row's (column's) sort positions by counting, then mu [m x n],
//               nu [n x m];
//   forward:    I = 1/2 (alpha mu^T + nu gamma^T) at real cells;
//   backward:   the cotangents X = G mu, Ymu = G^T alpha, Xg = G^T nu, Ynu = G gamma (G = grad / 2), the
//               weight gradients (node chunks with the factors' derivatives) and the gradient in sim.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "banzhaf/closed_form.h"

namespace hbi {
namespace closed_form {

constexpr size_t kFactorBytes = 40 * 1024;  // smem for the node-factor tiles of one chunk
constexpr int kMaxPlayers = 512;            // words (frames) a pair: the index lists' size

template <typename T>
HBI_HD T larger(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
HBI_HD T smaller(T a, T b) {
  return b < a ? b : a;
}

// Workspace of one pair, in acc_t elements; T and V the padded sizes (bounds of the real counts).
struct Workspace {
  int64_t R, wt, wv, alpha, gamma, mu, nu, row_weighted, col_weighted, row_position, col_position;
  int64_t G, X, Xg, Ymu, Ynu, stride;
};

HBI_HD Workspace workspace(int T, int V, bool backward) {
  Workspace w;
  const int64_t tv = static_cast<int64_t>(T) * V;
  int64_t at = 0;
  w.R = at;
  at += tv;
  w.wt = at;
  at += T;
  w.wv = at;
  at += V;
  w.alpha = at;
  at += static_cast<int64_t>(T) * T;
  w.gamma = at;
  at += static_cast<int64_t>(V) * V;
  w.mu = at;
  at += tv;
  w.nu = at;
  at += tv;
  w.row_weighted = at;
  at += tv;
  w.col_weighted = at;
  at += tv;
  w.row_position = at;
  at += tv;
  w.col_position = at;
  at += tv;
  w.G = w.X = w.Xg = w.Ymu = w.Ynu = at;
  if (backward) {
    w.G = at;
    at += tv;
    w.X = at;
    at += static_cast<int64_t>(T) * T;
    w.Xg = at;
    at += static_cast<int64_t>(V) * V;
    w.Ymu = at;
    at += tv;
    w.Ynu = at;
    at += tv;
  }
  w.stride = at;
  return w;
}

// Shared memory of a block: the factor tiles, 2 max(T, V) values (the diagonal, the gradient), then
// `reduction_slots` values for block reductions.
template <typename acc_t>
HBI_HD size_t shared_bytes(int T, int V, int reduction_slots) {
  return kFactorBytes + (2 * static_cast<size_t>(larger(T, V)) + reduction_slots) * sizeof(acc_t);
}

// Nodes a chunk holds: `tiles` [n x chunk] tiles, `per_node` values a node and `fixed` values, within
// kFactorBytes of acc_t (at most 32).
template <typename acc_t>
HBI_HD int chunk_nodes(int n, int tiles, int per_node, int fixed) {
  const int budget = static_cast<int>(kFactorBytes / sizeof(acc_t)) - fixed;
  const int fit = budget / (tiles * larger(n, 1) + per_node);
  return smaller(larger(fit, 1), 32);
}

// A side's logit range, grid and state (every thread of the block holds it).
template <typename acc_t>
struct Side {
  acc_t top;
  NodeGrid<acc_t> grid;  // count 0 when a logit is not finite
  bool equal, finite;
};

template <typename Block, typename acc_t>
HBI_HD Side<acc_t> side_state(const acc_t* w, int n, acc_t* scratch) {
  const acc_t inf = INFINITY;
  acc_t top = -inf, neg_bottom = -inf, bad = 0;
  for (int k = Block::tid(); k < n; k += Block::size) {
    top = larger(top, w[k]);
    neg_bottom = larger(neg_bottom, -w[k]);
    if (!(std::fabs(w[k]) < inf)) bad = 1;
  }
  top = Block::reduce_max(top, scratch);
  neg_bottom = Block::reduce_max(neg_bottom, scratch);
  bad = Block::reduce_max(bad, scratch);
  Side<acc_t> s;
  s.finite = bad == 0;
  s.top = top;
  s.equal = s.finite && top == -neg_bottom;
  s.grid = node_grid<acc_t>(s.finite ? -neg_bottom - top : acc_t(0));
  if (!s.finite) s.grid.count = 0;
  return s;
}

// alpha [n x n] of the softmax over the n compacted logits w (into the workspace).
template <typename Block, typename acc_t>
HBI_HD void softmax_marginals(const acc_t* w, int n, const Side<acc_t>& side, acc_t* alpha, acc_t* smem) {
  const int C = chunk_nodes<acc_t>(n, 2, 1, n);
  acc_t* joiner = smem;          // [n][C]: a_i
  acc_t* member = smem + n * C;  // [n][C]: b_t
  acc_t* wp = member + n * C;    // [C]: w_q P_q
  acc_t* diagonal = wp + C;      // [n]
  for (int e = Block::tid(); e < n * n; e += Block::size) {
    const int i = e / n, t = e % n;
    acc_t value = 0;
    if (!side.finite)
      value = NAN;
    else if (side.equal)
      value = i == t ? equal_weight_diagonal<acc_t>(n) : equal_weight_off_diagonal<acc_t>(n);
    alpha[e] = value;
  }
  for (int k = Block::tid(); k < n; k += Block::size) diagonal[k] = 0;
  if (side.equal || !side.finite) return;
  for (int q0 = 0; q0 < side.grid.count; q0 += C) {
    const int len = smaller(C, side.grid.count - q0);
    Block::sync();
    for (int e = Block::tid(); e < n * len; e += Block::size) {
      const int k = e / len, c = e % len;
      const NodeFactors<acc_t> f = node_factors(side.grid.node(q0 + c), relative_weight(w[k], side.top));
      joiner[k * C + c] = f.a;
      member[k * C + c] = f.b;
    }
    Block::sync();
    for (int c = Block::tid(); c < len; c += Block::size) {
      const acc_t s = side.grid.node(q0 + c);
      acc_t p = 1;
      for (int k = 0; k < n; ++k) p *= node_factors(s, relative_weight(w[k], side.top)).phi;
      wp[c] = side.grid.weight(q0 + c, s) * p;
    }
    Block::sync();
    for (int k = Block::tid(); k < n; k += Block::size) {
      acc_t d = 0;
      for (int c = 0; c < len; ++c) d += wp[c] * member[k * C + c] * (acc_t(1) - acc_t(0.5) * joiner[k * C + c]);
      diagonal[k] += d;
    }
    for (int e = Block::tid(); e < n * n; e += Block::size) {
      const int i = e / n, t = e % n;
      acc_t total = 0;
      for (int c = 0; c < len; ++c) total += joiner[i * C + c] * wp[c] * member[t * C + c];
      alpha[e] += acc_t(0.5) * total;
    }
  }
  Block::sync();
  for (int k = Block::tid(); k < n; k += Block::size) alpha[k * n + k] += diagonal[k];
}

// Every row r of x (n_rows x n_entries, entry e at x[r * rs + e * es]): each entry's position p in the
// row's order and 2^-p x, into position and weighted [n_rows x n_entries].
template <typename Block, typename acc_t>
HBI_HD void sort_positions(const acc_t* x, int rs, int es, int n_rows, int n_entries, acc_t* weighted,
                           acc_t* position) {
  for (int idx = Block::tid(); idx < n_rows * n_entries; idx += Block::size) {
    const int r = idx / n_entries, e = idx % n_entries;
    const acc_t xe = x[r * rs + e * es];
    int p = 0;
    for (int k = 0; k < n_entries; ++k) p += sorts_before(x[r * rs + k * es], k, xe, e);
    position[idx] = static_cast<acc_t>(p);
    weighted[idx] = position_weight<acc_t>(p) * xe;
  }
}

// The gains 2^-p x_e - (the sum of 2^-q x over the entries after e) into out[e * n_rows + r].
template <typename Block, typename acc_t>
HBI_HD void sort_gains(const acc_t* x, int rs, int es, int n_rows, int n_entries, const acc_t* weighted, acc_t* out) {
  for (int idx = Block::tid(); idx < n_rows * n_entries; idx += Block::size) {
    const int r = idx / n_entries, e = idx % n_entries;
    const acc_t xe = x[r * rs + e * es];
    acc_t below = 0;
    for (int k = 0; k < n_entries; ++k)
      if (sorts_before(xe, e, x[r * rs + k * es], k)) below += weighted[r * n_entries + k];
    out[e * n_rows + r] = weighted[idx] - below;
  }
}

// d/dx[r, e] of sum_k y[k * n_rows + r] gain(k, r): 2^-p (y_e - the sum of y over the entries before e).
template <typename acc_t>
HBI_HD acc_t sort_gain_grad(const acc_t* x, int rs, int es, int n_rows, int n_entries, const acc_t* position,
                            const acc_t* y, int r, int e) {
  const acc_t xe = x[r * rs + e * es];
  acc_t above = 0;
  for (int k = 0; k < n_entries; ++k)
    if (sorts_before(x[r * rs + k * es], k, xe, e)) above += y[k * n_rows + r];
  return position_weight<acc_t>(static_cast<int>(position[r * n_entries + e])) * (y[e * n_rows + r] - above);
}

// Compacts pair b: the real words' and frames' indices (words, frames; their counts in counts[0..1]),
// R and the logits into the workspace.
template <typename Block, typename scalar_t, typename acc_t>
HBI_HD void load_pair(const scalar_t* sim, const bool* tm, const bool* vm, const scalar_t* wt, const scalar_t* wv,
                      int64_t b, int T, int V, const Workspace& L, acc_t* ws, int* words, int* frames, int* counts) {
  if (Block::tid() == 0) {
    int n = 0, m = 0;
    for (int t = 0; t < T; ++t)
      if (tm[b * T + t]) words[n++] = t;
    for (int v = 0; v < V; ++v)
      if (vm[b * V + v]) frames[m++] = v;
    counts[0] = n;
    counts[1] = m;
  }
  Block::sync();
  const int n = counts[0], m = counts[1];
  for (int e = Block::tid(); e < n * m; e += Block::size)
    ws[L.R + e] = static_cast<acc_t>(sim[(b * T + words[e / m]) * V + frames[e % m]]);
  for (int k = Block::tid(); k < n; k += Block::size) ws[L.wt + k] = static_cast<acc_t>(wt[b * T + words[k]]);
  for (int k = Block::tid(); k < m; k += Block::size) ws[L.wv + k] = static_cast<acc_t>(wv[b * V + frames[k]]);
  Block::sync();
}

// Every marginal of the loaded pair (n, m real); the sides' states through text and video.
template <typename Block, typename acc_t>
HBI_HD void marginals(int n, int m, const Workspace& L, acc_t* ws, acc_t* smem, acc_t* scratch, Side<acc_t>& text,
                      Side<acc_t>& video) {
  const acc_t* R = ws + L.R;
  text = side_state<Block>(ws + L.wt, n, scratch);
  video = side_state<Block>(ws + L.wv, m, scratch);
  softmax_marginals<Block>(ws + L.wt, n, text, ws + L.alpha, smem);
  Block::sync();
  softmax_marginals<Block>(ws + L.wv, m, video, ws + L.gamma, smem);
  sort_positions<Block>(R, m, 1, n, m, ws + L.row_weighted, ws + L.row_position);  // rows t over the frames
  sort_positions<Block>(R, 1, m, m, n, ws + L.col_weighted, ws + L.col_position);  // columns v over the words
  Block::sync();
  sort_gains<Block>(R, m, 1, n, m, ws + L.row_weighted, ws + L.mu);  // mu[j * n + t]
  sort_gains<Block>(R, 1, m, m, n, ws + L.col_weighted, ws + L.nu);  // nu[i * m + v]
  Block::sync();
}

// The block's shared arrays: smem (kFactorBytes of tiles, then 2 max(T, V) values), scratch (reductions).
template <typename acc_t>
struct BlockShared {
  acc_t* smem;
  acc_t* values;   // [2 max(T, V)]
  acc_t* scratch;  // reduction slots
  int* words;      // [kMaxPlayers]
  int* frames;     // [kMaxPlayers]
  int* counts;     // [2]
};

template <typename Block, typename scalar_t, typename acc_t>
HBI_HD void pair_forward(const scalar_t* sim, const bool* tm, const bool* vm, const scalar_t* wt, const scalar_t* wv,
                         scalar_t* out, acc_t* workspace_all, int64_t b, int T, int V, const BlockShared<acc_t>& sh) {
  const Workspace L = workspace(T, V, false);
  acc_t* ws = workspace_all + b * L.stride;
  load_pair<Block>(sim, tm, vm, wt, wv, b, T, V, L, ws, sh.words, sh.frames, sh.counts);
  const int n = sh.counts[0], m = sh.counts[1];
  if (n == 0 || m == 0) return;  // no real cell: out stays 0
  Side<acc_t> text, video;
  marginals<Block>(n, m, L, ws, sh.smem, sh.scratch, text, video);
  for (int e = Block::tid(); e < n * m; e += Block::size) {
    const int i = e / m, j = e % m;
    acc_t text_part = 0, video_part = 0;
    for (int t = 0; t < n; ++t) text_part += ws[L.alpha + i * n + t] * ws[L.mu + j * n + t];
    for (int v = 0; v < m; ++v) video_part += ws[L.gamma + j * m + v] * ws[L.nu + i * m + v];
    out[(b * T + sh.words[i]) * V + sh.frames[j]] = static_cast<scalar_t>(acc_t(0.5) * (text_part + video_part));
  }
}

// grad_u[k] = d/dw_k of sum_{i,t} X[i, t] alpha[i, t], for the n compacted logits w (node_factor_grads
// are derivatives in w).
template <typename Block, typename acc_t>
HBI_HD void softmax_marginals_vjp(const acc_t* w, int n, const Side<acc_t>& side, const acc_t* X, acc_t* grad_u,
                                  acc_t* smem) {
  const int C = chunk_nodes<acc_t>(n, 7, 2, 0);
  acc_t* a = smem;
  acc_t* bb = a + n * C;
  acc_t* da = bb + n * C;
  acc_t* db = da + n * C;
  acc_t* dlp = db + n * C;
  acc_t* Xb = dlp + n * C;
  acc_t* Xta = Xb + n * C;
  acc_t* wp = Xta + n * C;  // [C]
  acc_t* K = wp + C;        // [C]
  for (int k = Block::tid(); k < n; k += Block::size) grad_u[k] = 0;
  // Equal weights are a point like any other here: side_state gave them the grid of a zero gap.
  const NodeGrid<acc_t> g = side.grid;
  for (int q0 = 0; q0 < g.count; q0 += C) {
    const int len = smaller(C, g.count - q0);
    Block::sync();
    for (int e = Block::tid(); e < n * len; e += Block::size) {
      const int k = e / len, c = e % len;
      const acc_t s = g.node(q0 + c), u = relative_weight(w[k], side.top);
      const NodeFactors<acc_t> f = node_factors(s, u);
      const NodeFactorGrads<acc_t> d = node_factor_grads(s, u);
      a[k * C + c] = f.a;
      bb[k * C + c] = f.b;
      dlp[k * C + c] = d.log_phi;
      da[k * C + c] = d.a;
      db[k * C + c] = d.b;
    }
    Block::sync();
    for (int c = Block::tid(); c < len; c += Block::size) {
      const acc_t s = g.node(q0 + c);
      acc_t p = 1;
      for (int k = 0; k < n; ++k) p *= node_factors(s, relative_weight(w[k], side.top)).phi;
      wp[c] = g.weight(q0 + c, s) * p;
    }
    for (int e = Block::tid(); e < n * len; e += Block::size) {
      const int k = e / len, c = e % len;
      acc_t xb = 0, xta = 0;
      for (int t = 0; t < n; ++t) {
        xb += X[k * n + t] * bb[t * C + c];  // (X b)_k
        xta += X[t * n + k] * a[t * C + c];  // (X^T a)_k
      }
      Xb[k * C + c] = xb;
      Xta[k * C + c] = xta;
    }
    Block::sync();
    for (int c = Block::tid(); c < len; c += Block::size) {
      acc_t total = 0;  // K_q = 1/2 a.Xb + sum_i X_ii b_i (1 - a_i / 2)
      for (int i = 0; i < n; ++i)
        total += acc_t(0.5) * a[i * C + c] * Xb[i * C + c] +
                 X[i * n + i] * bb[i * C + c] * (acc_t(1) - acc_t(0.5) * a[i * C + c]);
      K[c] = total;
    }
    Block::sync();
    for (int k = Block::tid(); k < n; k += Block::size) {
      acc_t total = 0;
      for (int c = 0; c < len; ++c) {
        const int at = k * C + c;
        total += wp[c] * (dlp[at] * K[c] + acc_t(0.5) * (Xb[at] * da[at] + Xta[at] * db[at]) +
                          X[k * n + k] * (db[at] * (acc_t(1) - acc_t(0.5) * a[at]) - acc_t(0.5) * bb[at] * da[at]));
      }
      grad_u[k] += total;
    }
  }
  Block::sync();
  for (int k = Block::tid(); k < n; k += Block::size) {
    const acc_t wk = w[k];
    grad_u[k] = !side.finite ? acc_t(NAN) : (weight_clamped(wk, side.top) ? acc_t(0) : grad_u[k]);
  }
  Block::sync();
}

// out[r, c] = sum_k x[r * xr + k * xk] y[c * yc + k * yk] for r < rows, c < cols (out row-major).
template <typename Block, typename acc_t>
HBI_HD void contract(acc_t* out, int rows, int cols, int inner, const acc_t* x, int xr, int xk, const acc_t* y, int yc,
                     int yk) {
  for (int e = Block::tid(); e < rows * cols; e += Block::size) {
    const int r = e / cols, c = e % cols;
    acc_t total = 0;
    for (int k = 0; k < inner; ++k) total += x[r * xr + k * xk] * y[c * yc + k * yk];
    out[e] = total;
  }
}

template <typename Block, typename scalar_t, typename acc_t>
HBI_HD void pair_backward(const scalar_t* grad, const scalar_t* sim, const bool* tm, const bool* vm, const scalar_t* wt,
                          const scalar_t* wv, scalar_t* grad_sim, scalar_t* grad_wt, scalar_t* grad_wv,
                          acc_t* workspace_all, int64_t b, int T, int V, const BlockShared<acc_t>& sh) {
  const Workspace L = workspace(T, V, true);
  acc_t* ws = workspace_all + b * L.stride;
  load_pair<Block>(sim, tm, vm, wt, wv, b, T, V, L, ws, sh.words, sh.frames, sh.counts);
  const int n = sh.counts[0], m = sh.counts[1];
  if (n == 0 || m == 0) return;  // no real cell: the gradients stay 0
  Side<acc_t> text, video;
  marginals<Block>(n, m, L, ws, sh.smem, sh.scratch, text, video);
  const int* words = sh.words;
  const int* frames = sh.frames;
  for (int e = Block::tid(); e < n * m; e += Block::size)
    ws[L.G + e] = acc_t(0.5) * static_cast<acc_t>(grad[(b * T + words[e / m]) * V + frames[e % m]]);
  Block::sync();
  const acc_t* G = ws + L.G;  // [n x m]; G[i, j] at i * m + j, G^T[j, i] at i * m + j too (strides m, 1)
  contract<Block>(ws + L.X, n, n, m, G, m, 1, ws + L.mu, 1, n);       // X[i, t] = sum_j G[i, j] mu[j, t]
  contract<Block>(ws + L.Ymu, m, n, n, G, 1, m, ws + L.alpha, 1, n);  // Ymu[j, t] = sum_i G[i, j] alpha[i, t]
  contract<Block>(ws + L.Xg, m, m, n, G, 1, m, ws + L.nu, 1, m);      // Xg[j, v] = sum_i G[i, j] nu[i, v]
  contract<Block>(ws + L.Ynu, n, m, m, G, m, 1, ws + L.gamma, 1, m);  // Ynu[i, v] = sum_j G[i, j] gamma[j, v]
  Block::sync();
  acc_t* grad_u = sh.values;
  softmax_marginals_vjp<Block>(ws + L.wt, n, text, ws + L.X, grad_u, sh.smem);
  for (int k = Block::tid(); k < n; k += Block::size) grad_wt[b * T + words[k]] = static_cast<scalar_t>(grad_u[k]);
  Block::sync();
  softmax_marginals_vjp<Block>(ws + L.wv, m, video, ws + L.Xg, grad_u, sh.smem);
  for (int k = Block::tid(); k < m; k += Block::size) grad_wv[b * V + frames[k]] = static_cast<scalar_t>(grad_u[k]);
  const acc_t* R = ws + L.R;
  for (int e = Block::tid(); e < n * m; e += Block::size) {
    const int t = e / m, v = e % m;
    const acc_t through_rows = sort_gain_grad(R, m, 1, n, m, ws + L.row_position, ws + L.Ymu, t, v);
    const acc_t through_columns = sort_gain_grad(R, 1, m, m, n, ws + L.col_position, ws + L.Ynu, v, t);
    grad_sim[(b * T + words[t]) * V + frames[v]] = static_cast<scalar_t>(through_rows + through_columns);
  }
}

}  // namespace closed_form
}  // namespace hbi
