// The CPU kernel of the sampled estimators (paired, msr) and of the exact reference definition: the CUDA
// cells kernel's per-coalition code (banzhaf_warp_unit.h, WarpGame of banzhaf_warp_game.h) run with one lane
// a pair, in parallel over pairs, so that every CPU test of these estimators runs the GPU's game of a pair
// (membership, softmax state, top-2s, cell deltas, gradients). Only the parallel execution (lanes, warps,
// chunks, atomics) is the device's own. The msr forward's f(S) is WarpGame's value (the GPU's value kernel
// computes it per thread); the strata and the finishing steps follow the finalize kernels' formulas.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "banzhaf/banzhaf_sampled_cpu.h"
#include "banzhaf/banzhaf_warp_unit.h"

namespace hbi {
namespace banzhaf_cuda {
namespace {

using banzhaf::Estimator;
using banzhaf::Settings;

// The lane policy of banzhaf_warp_side.h with one lane: reductions are identities, the sinks plain adds.
struct SerialLane {
  static constexpr int width = 1;
  template <typename T>
  static T sum(T x) {
    return x;
  }
  template <typename T>
  static T max(T x) {
    return x;
  }
  static int min(int x) { return x; }
  static void sync() {}
  template <typename T>
  static void add(T* sink, T x) {
    *sink += x;
  }
};

// One pair's compact data and one lane's coalition state: the kernel's shared memory, in vectors.
template <typename acc_t>
struct SerialPair {
  int T, V, ld;
  std::vector<int> words, frames, rank_w, rank_f;
  std::vector<acc_t> R, wt, wv, r1, r2, k1, k2, side[8], fast[8];
  std::vector<uint32_t> bits;
  std::vector<uint8_t> in_t, in_v;
  std::vector<int> ra, rb, ka, kb;
  PairData<acc_t> pd;
  WarpGame<acc_t, SerialLane> g;

  SerialPair(int T_, int V_)
      : T(T_),
        V(V_),
        ld(V_ | 1),
        words(T_),
        frames(V_),
        rank_w(T_),
        rank_f(V_),
        R(static_cast<size_t>(T_) * (V_ | 1)),
        wt(T_),
        wv(V_),
        r1(T_),
        r2(T_),
        k1(V_),
        k2(V_),
        bits(4 * ((T_ + V_ + 127) / 128)),
        in_t(T_),
        in_v(V_),
        ra(T_),
        rb(T_),
        ka(V_),
        kb(V_) {
    for (int k = 0; k < 8; ++k) {
      side[k].resize(k < 4 ? T : V);  // E1, E2, join_g, join_e of the words, then of the frames
      fast[k].resize(k < 4 ? V : T);  // P1, Q1, P2, Q2 [V], then G1, H1, G2, H2 [T]
    }
    pd = PairData<acc_t>{T,        V,         ld,       0, 0, words.data(), frames.data(), rank_w.data(), rank_f.data(),
                         R.data(), wt.data(), wv.data()};
    g.pd = &pd;
    g.T = T;
    g.V = V;
    g.ld = ld;
    g.R = R.data();
    g.wt = wt.data();
    g.wv = wv.data();
    g.bits = bits.data();
    g.in_t = in_t.data();
    g.in_v = in_v.data();
    g.r1 = r1.data();
    g.r2 = r2.data();
    g.k1 = k1.data();
    g.k2 = k2.data();
    g.ra = ra.data();
    g.rb = rb.data();
    g.ka = ka.data();
    g.kb = kb.data();
    g.text = {side[0].data(), side[1].data(), side[2].data(), side[3].data(), 0, 0, -1};
    g.video = {side[4].data(), side[5].data(), side[6].data(), side[7].data(), 0, 0, -1};
    g.P1 = fast[0].data();
    g.Q1 = fast[1].data();
    g.P2 = fast[2].data();
    g.Q2 = fast[3].data();
    g.G1 = fast[4].data();
    g.H1 = fast[5].data();
    g.G2 = fast[6].data();
    g.H2 = fast[7].data();
  }
  SerialPair(const SerialPair&) = delete;  // g points into this object

  // As load_pair (banzhaf_pair_cuda.cuh): real players in increasing position order, R and logits compact.
  template <typename scalar_t>
  void load(int64_t pair, const scalar_t* sim, const bool* tm, const bool* vm, const scalar_t* wt_in,
            const scalar_t* wv_in) {
    int nw = 0, nf = 0;
    for (int t = 0; t < T; ++t) {
      const bool real = tm[pair * T + t];
      rank_w[t] = real ? nw : -1;
      if (real) words[nw++] = t;
    }
    for (int v = 0; v < V; ++v) {
      const bool real = vm[pair * V + v];
      rank_f[v] = real ? nf : -1;
      if (real) frames[nf++] = v;
    }
    pd.nw = g.nw = nw;
    pd.nf = g.nf = nf;
    for (int a = 0; a < nw; ++a)
      for (int b = 0; b < nf; ++b)
        R[a * ld + b] = static_cast<acc_t>(sim[(pair * T + words[a]) * static_cast<int64_t>(V) + frames[b]]);
    for (int a = 0; a < nw; ++a) wt[a] = static_cast<acc_t>(wt_in[pair * T + words[a]]);
    for (int b = 0; b < nf; ++b) wv[b] = static_cast<acc_t>(wv_in[pair * V + frames[b]]);
  }
};

// Per-stratum sample counts (or value sums) at compact indices: both in [nw * nf], word in, frame in, all.
struct Strata {
  std::vector<double> both, word, frame;
  double all = 0;
};

template <typename acc_t>
void add_strata(const WarpGame<acc_t, SerialLane>& g, Strata& s, double value) {
  for (int a = 0; a < g.nw; ++a) {
    if (!g.in_t[a]) continue;
    s.word[a] += value;
    for (int b = 0; b < g.nf; ++b)
      if (g.in_v[b]) s.both[a * g.nf + b] += value;
  }
  for (int b = 0; b < g.nf; ++b)
    if (g.in_v[b]) s.frame[b] += value;
  s.all += value;
}

template <typename acc_t>
Strata msr_strata(WarpGame<acc_t, SerialLane>& g, const Settings& s, uint32_t pair, bool values) {
  Strata st{std::vector<double>(g.nw * g.nf, 0.0), std::vector<double>(g.nw, 0.0), std::vector<double>(g.nf, 0.0)};
  for (int64_t u = 0; u < s.num_samples; ++u) {
    g.set_members(false, static_cast<uint32_t>(u), pair, s.seed, 0);
    double f = 1.0;
    if (values) {
      g.build_state(0);
      f = static_cast<double>(g.template value_of<false>(-1, -1, false, false, false, acc_t(0), nullptr));
    }
    add_strata(g, st, f);
  }
  return st;
}

// Units of the pair: samples, or the 2^n subset codes of its real players (exact).
int64_t pair_units(const Settings& s, int n) {
  return s.estimator == Estimator::kExact ? int64_t(1) << n : s.num_samples;
}

// The pair's forward at compact cells [nw * nf].
template <typename acc_t>
std::vector<double> forward_pair(SerialPair<acc_t>& p, const Settings& s, uint32_t pair) {
  auto& g = p.g;
  const int nw = g.nw, nf = g.nf, n = nw + nf;
  std::vector<double> acc(nw * nf, 0.0);
  const double num = static_cast<double>(s.num_samples);
  if (s.estimator == Estimator::kMsr) {  // as value_finalize_kernel
    const Strata sum = msr_strata(g, s, pair, true), cnt = msr_strata(g, s, pair, false);
    auto mean = [](double total, double count) { return count > 0 ? total / count : 0.0; };
    for (int a = 0; a < nw; ++a)
      for (int b = 0; b < nf; ++b) {
        const int c = a * nf + b;
        acc[c] =
            mean(sum.both[c], cnt.both[c]) - mean(sum.word[a] - sum.both[c], cnt.word[a] - cnt.both[c]) -
            mean(sum.frame[b] - sum.both[c], cnt.frame[b] - cnt.both[c]) +
            mean(sum.all - sum.word[a] - sum.frame[b] + sum.both[c], num - cnt.word[a] - cnt.frame[b] + cnt.both[c]);
      }
    return acc;
  }
  const bool exact = s.estimator == Estimator::kExact;
  const int64_t units = pair_units(s, n);
  const CellWalk walk = cell_walk<SerialLane>(nw, nf, 0);
  const DevGrads<acc_t> none{nullptr, nullptr, nullptr};
  const acc_t* no_gc = nullptr;
  for (int64_t u = 0; u < units; ++u) {
    if (s.reference)
      cells_unit<kFwdSlow>(g, walk, u, pair, s.seed, exact, true, acc_t(0), acc.data(), no_gc, nullptr, &none, 0);
    else
      cells_unit<kFwdFast>(g, walk, u, pair, s.seed, exact, false, acc_t(0), acc.data(), no_gc, nullptr, &none, 0);
  }
  const double per_subset = 1.0 / static_cast<double>(units >> 2);  // as cells_finalize_kernel
  for (double& x : acc) x = exact ? x * per_subset : x / num;
  return acc;
}

// The pair's backward into grads (compact: sim [nw * ld], words [nw], frames [nf]); G the incoming
// gradient at compact cells [nw * nf].
template <typename acc_t>
void backward_pair(SerialPair<acc_t>& p, const Settings& s, uint32_t pair, const std::vector<acc_t>& G,
                   const DevGrads<acc_t>& grads) {
  auto& g = p.g;
  const int nw = g.nw, nf = g.nf, n = nw + nf;
  const bool exact = s.estimator == Estimator::kExact;
  const int64_t units = pair_units(s, n);
  const CellWalk walk = cell_walk<SerialLane>(nw, nf, 0);
  if (s.estimator == Estimator::kMsr) {  // stratum weights as stratum_weight_kernel
    const Strata cnt = msr_strata(g, s, pair, false);
    const double num = static_cast<double>(s.num_samples);
    std::vector<double> gw(4 * nw * nf);
    for (int a = 0; a < nw; ++a)
      for (int b = 0; b < nf; ++b) {
        const int c = a * nf + b;
        const double cboth = cnt.both[c], cword = cnt.word[a], cframe = cnt.frame[b];
        const double count[4] = {num - cword - cframe + cboth, cframe - cboth, cword - cboth, cboth};
        const double sign[4] = {1.0, -1.0, -1.0, 1.0};
        for (int q = 0; q < 4; ++q)
          gw[c * 4 + q] = count[q] > 0 ? static_cast<double>(G[c]) * (sign[q] / count[q]) : 0.0;
      }
    const acc_t* no_gc = nullptr;
    for (int64_t u = 0; u < units; ++u)
      cells_unit<kBwdValue>(g, walk, u, pair, s.seed, false, false, acc_t(0), nullptr, no_gc, gw.data(), &grads, 0);
    return;
  }
  // As the launcher and the kernel: 1 / num_samples (paired), 1 / 2^(n - 2) (exact reference).
  const acc_t cell_scale =
      exact ? acc_t(1) / static_cast<acc_t>(units >> 2) : acc_t(1) / static_cast<acc_t>(s.num_samples);
  for (int64_t u = 0; u < units; ++u)
    cells_unit<kBwdCells>(g, walk, u, pair, s.seed, exact, s.reference, cell_scale, nullptr, G.data(), nullptr, &grads,
                          0);
}

struct Inputs {
  at::Tensor sim, tm, vm, wt, wv;
  int64_t B;
  int T, V;
};

// body(pair_state, b) for every pair with a real word and a real frame, in parallel over pairs.
template <typename scalar_t, typename Body>
void for_each_pair(const Inputs& in, Body&& body) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, in.B, 1, [&](int64_t begin, int64_t end) {
    SerialPair<acc_t> p(in.T, in.V);
    for (int64_t b = begin; b < end; ++b) {
      p.load(b, in.sim.data_ptr<scalar_t>(), in.tm.data_ptr<bool>(), in.vm.data_ptr<bool>(), in.wt.data_ptr<scalar_t>(),
             in.wv.data_ptr<scalar_t>());
      if (p.g.nw > 0 && p.g.nf > 0) body(p, b);
    }
  });
}

}  // namespace

at::Tensor sampled_forward(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                           const at::Tensor& wv, const Settings& s) {
  const Inputs in{sim, tm, vm, wt, wv, sim.size(0), static_cast<int>(sim.size(1)), static_cast<int>(sim.size(2))};
  auto out = at::zeros_like(in.sim);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.sim.scalar_type(), "banzhaf_sampled_forward", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    for_each_pair<scalar_t>(in, [&](auto& p, int64_t b) {
      const std::vector<double> acc = forward_pair(p, s, static_cast<uint32_t>(b));
      for (int a = 0; a < p.g.nw; ++a)
        for (int c = 0; c < p.g.nf; ++c)
          o[(b * in.T + p.words[a]) * in.V + p.frames[c]] = static_cast<scalar_t>(acc[a * p.g.nf + c]);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_backward(const at::Tensor& grad, const at::Tensor& sim,
                                                                const at::Tensor& tm, const at::Tensor& vm,
                                                                const at::Tensor& wt, const at::Tensor& wv,
                                                                const Settings& s) {
  const Inputs in{sim, tm, vm, wt, wv, sim.size(0), static_cast<int>(sim.size(1)), static_cast<int>(sim.size(2))};
  auto grad_sim = at::zeros_like(in.sim);
  auto grad_wt = at::zeros_like(in.wt);
  auto grad_wv = at::zeros_like(in.wv);
  if (in.sim.numel() == 0) return {grad_sim, grad_wt, grad_wv};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.sim.scalar_type(), "banzhaf_sampled_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g_in = grad.data_ptr<scalar_t>();
    scalar_t *gs = grad_sim.data_ptr<scalar_t>(), *gt = grad_wt.data_ptr<scalar_t>();
    scalar_t* gv = grad_wv.data_ptr<scalar_t>();
    const int T = in.T, V = in.V;
    for_each_pair<scalar_t>(in, [&](auto& p, int64_t b) {
      const int nw = p.g.nw, nf = p.g.nf, ld = p.ld;
      std::vector<acc_t> G(nw * nf), d_sim(T * ld, acc_t(0)), d_wt(T, acc_t(0)), d_wv(V, acc_t(0));
      for (int a = 0; a < nw; ++a)
        for (int c = 0; c < nf; ++c)
          G[a * nf + c] = static_cast<acc_t>(g_in[(b * T + p.words[a]) * static_cast<int64_t>(V) + p.frames[c]]);
      backward_pair(p, s, static_cast<uint32_t>(b), G, DevGrads<acc_t>{d_sim.data(), d_wt.data(), d_wv.data()});
      for (int a = 0; a < nw; ++a) {
        gt[b * T + p.words[a]] = static_cast<scalar_t>(d_wt[a]);
        for (int c = 0; c < nf; ++c)
          gs[(b * T + p.words[a]) * static_cast<int64_t>(V) + p.frames[c]] = static_cast<scalar_t>(d_sim[a * ld + c]);
      }
      for (int c = 0; c < nf; ++c) gv[b * V + p.frames[c]] = static_cast<scalar_t>(d_wv[c]);
    });
  });
  return {grad_sim, grad_wt, grad_wv};
}

}  // namespace banzhaf_cuda
}  // namespace hbi
