// banzhaf_interaction on CUDA: forward and backward of the paired and msr estimators and of the exact
// reference definition, the same function as csrc/banzhaf/banzhaf_cpu.cpp (same Philox coalitions, same
// per-pair game of banzhaf_game.h, transliterated onto compact real-player indices) up to float rounding.
// The exact textbook index goes to its closed form (closed_form_cuda.cu).
//
// Design.
// * Every kernel block handles one pair b and one chunk of coalitions ("units": Philox samples, or subset
//   codes for the exact estimator), grid = B * chunks (1-D). The number of chunks depends on B, the number
//   of units and the warps per block (fewer when shared memory is short: large T * V on cards with less
//   than an H100's), so the forward is deterministic on a card, and across cards up to rounding.
// * Block prologue: warp 0 compacts the real words/frames (ballots), the pair's R and weight logits go to
//   shared memory in compact form (real players only, row stride odd to avoid bank conflicts).
// * Softmax weights are taken per coalition relative to its own largest logit (DevSide, as
//   banzhaf_game.h's Side): exact for any finite logits.
// * "Cells" kernel (paired forward/backward, exact-reference, msr backward): one warp per
//   coalition. Lanes draw the Philox block(s), set the membership, warp-reduce |S_t|, |S_v|, the softmax state,
//   compute the row top-2 over S_v of every real word and the column top-2 over S_t of every real frame
//   (lanes over rows+columns), then
//     - textbook forward: per-frame P_j/Q_j, per-word G_i/H_i and the reciprocal normalisers, then the
//       O(1) textbook cell delta, cells spread over lanes, summed in double in a per-warp shared buffer
//       (each cell owned by one lane: no races);
//     - reference forward: the O(T+V) cell delta (value1 - value2 - value3 + value4) per cell;
//     - backward (cells): the O(T+V) slow-path cell gradient, scattered with shared-memory atomicAdd into
//       per-block dR / dwt / dwv (acc_t);
//     - backward (value: msr): d estimate / d f(S) = sum over cells of grad * weight of the
//       cell's stratum (table gw[cell][stratum] built beforehand), then the gradient of f(S) by the warp.
//   Per-warp forward sums are added in fixed warp order, per-chunk partials go to a double workspace
//   [B, chunks, ...] and a finalize kernel reduces the chunks in fixed order (forward: deterministic).
//   The backward's shared-memory atomics make the backward's last bits depend on scheduling (the order of
//   float additions inside a block), not its value beyond rounding.
// * "Value" kernel (msr forward, msr counts for the backward): one THREAD per
//   coalition computes f(S) (O(T*V), R read as broadcasts), then threads per cell / word / frame add the
//   round's f into stratum sums and counts (a masked [T x S] x [S x V] product; no atomics).
// Limits: T * V and T + V must fit the shared-memory layout (checked: a clear error otherwise; about
// T * V <= 5000 for float on an H100); exact: at most 24 real players per pair (Python checks; a device
// guard writes NaN for the pair instead of running 2^n > 2^24 coalitions).
//
// Floor for the GPU targets (B=128, T=32 with 20 real words, V=12, 1000 samples, float32, H100):
// * paired textbook: bytes are negligible (inputs 0.2 MB, output 0.2 MB, workspace 16 chunks * 1.5 KB per
//   pair = 3 MB written + read: ~2 us at 3.35 TB/s). Arithmetic: per (pair, sample) the top-2s
//   (2 * 20 * 12 compares), P/Q/G/H (4 * 240 fma + max), then ~30 flops per cell over 240 cells:
//   ~10 kflop per (pair, sample) -> 1.3 Gflop in all: ~25 us at 51 TFLOP/s. The kernel is latency/issue
//   bound (shared-memory loads per cell), expected ~0.1-0.3 ms; target 1 ms.
// * msr textbook: f(S) per sample ~2 * 240 compare/select + 240 fma, strata sums ~240 * 4 per sample:
//   ~2 kflop per (pair, sample) -> 0.25 Gflop: ~5 us; expected ~20-40 us (target 0.1 ms).
// (Not measured here: no GPU on the development machine.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "banzhaf/banzhaf_args.h"
#include "banzhaf/closed_form_cuda.h"
#include "philox.h"

namespace hbi {
namespace banzhaf_cuda {

constexpr int kWarp = 32;
using banzhaf::kMaxExactPlayers;
constexpr int kMaxChunks = 64;
constexpr int kValueThreads = 128;  // coalitions per round of the value kernel
constexpr unsigned kFull = 0xffffffffu;

using banzhaf::Estimator;
using banzhaf::parse_settings;
using banzhaf::Settings;

void check_inputs(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                  const at::Tensor& text_weight, const at::Tensor& video_weight) {
  banzhaf::check_shapes(sim, text_mask, video_mask, text_weight, video_weight);
  const auto T = sim.size(1), V = sim.size(2);
  TORCH_CHECK(sim.is_cuda(), "banzhaf_interaction: sim must be a CUDA tensor");
  const char* names[] = {"text_mask", "video_mask", "text_weight", "video_weight"};
  const at::Tensor* others[] = {&text_mask, &video_mask, &text_weight, &video_weight};
  for (int k = 0; k < 4; ++k)
    TORCH_CHECK(others[k]->device() == sim.device(), "banzhaf_interaction: ", names[k], " must be on sim's device ",
                sim.device(), ", got ", others[k]->device());
  TORCH_CHECK(T <= INT32_MAX / 4 && V <= INT32_MAX / 4 && T * V <= INT32_MAX / 8,
              "banzhaf_interaction: sim is too large for the CUDA kernels");
}

// ------------------------------------------------------------------------------------------------
// Device helpers

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T mx(T a, T b) {
  return a < b ? b : a;
}  // std::max

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  // Butterfly: every lane ends with the same value (each step adds the same two operands).
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
template <typename T>
__device__ __forceinline__ T warp_max(T x) {
  for (int o = 16; o > 0; o >>= 1) x = mx(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~static_cast<size_t>(15); }

struct Carver {
  size_t off = 0;
  __host__ __device__ size_t take(size_t bytes) {
    const size_t o = off;
    off += align16(bytes);
    return o;
  }
};

__host__ __device__ inline int odd_stride(int V) { return V | 1; }

// Shared-memory layout of the pair (common to both kernels): compact player lists, their ranks, the
// compact R [T rows of stride ld] and the raw logits.
struct PairLayout {
  size_t words, frames, rank_w, rank_f, counts, R, wt, wv;
};

template <typename acc_t>
__host__ __device__ inline void carve_pair(Carver& c, int T, int V, PairLayout& L) {
  L.words = c.take(sizeof(int) * T);
  L.frames = c.take(sizeof(int) * V);
  L.rank_w = c.take(sizeof(int) * T);
  L.rank_f = c.take(sizeof(int) * V);
  L.counts = c.take(sizeof(int) * 4);
  L.R = c.take(sizeof(acc_t) * static_cast<size_t>(T) * odd_stride(V));
  L.wt = c.take(sizeof(acc_t) * T);
  L.wv = c.take(sizeof(acc_t) * V);
}

template <typename acc_t>
struct PairData {
  int T, V, ld, nw, nf;
  int *words, *frames, *rank_w, *rank_f;
  acc_t *R, *wt, *wv;
};

// Loads pair `pair` into shared memory. Must be called by every thread of the block; ends with a
// __syncthreads. Afterwards nw / nf (real words / frames) are known to all threads.
template <typename scalar_t, typename acc_t>
__device__ void load_pair(unsigned char* smem, const PairLayout& L, int T, int V, int64_t pair, const scalar_t* sim,
                          const bool* tmask, const bool* vmask, const scalar_t* wt_in, const scalar_t* wv_in,
                          PairData<acc_t>& P) {
  P.T = T;
  P.V = V;
  P.ld = odd_stride(V);
  P.words = reinterpret_cast<int*>(smem + L.words);
  P.frames = reinterpret_cast<int*>(smem + L.frames);
  P.rank_w = reinterpret_cast<int*>(smem + L.rank_w);
  P.rank_f = reinterpret_cast<int*>(smem + L.rank_f);
  int* counts = reinterpret_cast<int*>(smem + L.counts);
  P.R = reinterpret_cast<acc_t*>(smem + L.R);
  P.wt = reinterpret_cast<acc_t*>(smem + L.wt);
  P.wv = reinterpret_cast<acc_t*>(smem + L.wv);
  const int tid = threadIdx.x, lane = tid & 31;
  if (tid < kWarp) {  // warp 0: compaction in increasing position order (ballots)
    int n = 0;
    for (int base = 0; base < T; base += kWarp) {
      const int t = base + lane;
      const bool real = t < T && tmask[pair * T + t];
      const unsigned m = __ballot_sync(kFull, real);
      if (t < T) {
        const int r = n + __popc(m & ((1u << lane) - 1u));
        P.rank_w[t] = real ? r : -1;
        if (real) P.words[r] = t;
      }
      n += __popc(m);
    }
    if (lane == 0) counts[0] = n;
    n = 0;
    for (int base = 0; base < V; base += kWarp) {
      const int v = base + lane;
      const bool real = v < V && vmask[pair * V + v];
      const unsigned m = __ballot_sync(kFull, real);
      if (v < V) {
        const int r = n + __popc(m & ((1u << lane) - 1u));
        P.rank_f[v] = real ? r : -1;
        if (real) P.frames[r] = v;
      }
      n += __popc(m);
    }
    if (lane == 0) counts[1] = n;
  }
  __syncthreads();
  P.nw = counts[0];
  P.nf = counts[1];
  const int nw = P.nw, nf = P.nf;
  for (int c = tid; c < nw * nf; c += blockDim.x) {
    const int a = c / nf, b = c - a * nf;
    P.R[a * P.ld + b] = static_cast<acc_t>(sim[(pair * T + P.words[a]) * static_cast<int64_t>(V) + P.frames[b]]);
  }
  for (int a = tid; a < nw; a += blockDim.x) P.wt[a] = static_cast<acc_t>(wt_in[pair * T + P.words[a]]);
  for (int b = tid; b < nf; b += blockDim.x) P.wv[b] = static_cast<acc_t>(wv_in[pair * V + P.frames[b]]);
  __syncthreads();
}

template <typename acc_t>
struct DevGrads {
  acc_t *sim, *text_weight, *video_weight;  // compact: sim [nw * ld]
};

// Per-warp coalition state, the device twin of PairGame (banzhaf_game.h) on compact indices:
// words a in [0, nw), frames b in [0, nf); i / j below are compact indices too (or -1).
// Softmax weights of one side of a value, k the player removed and possibly re-added: the other members t
// weigh E[t] g / Z, k itself (when added) e / Z. As PairGame::Weights.
template <typename acc_t>
struct DevWeights {
  const acc_t* E;
  acc_t g, e, Z;
};

// One side's softmax state for the warp's coalition, relative to the coalition's own largest logit: the
// device twin of PairGame::Side (E1, E2, join factors per player; Z1, Z2, top warp-uniform).
template <typename acc_t>
struct DevSide {
  acc_t *E1, *E2, *join_g, *join_e;
  acc_t Z1, Z2;
  int top;

  __device__ void set(const acc_t* w, const uint8_t* in, int n, int lane) {
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    acc_t m1 = neg_inf;
    for (int k = lane; k < n; k += kWarp)
      if (in[k]) m1 = mx(m1, w[k]);
    m1 = warp_max(m1);
    int first = INT_MAX;
    for (int k = lane; k < n; k += kWarp)
      if (in[k] && w[k] == m1 && k < first) first = k;
    for (int o = 16; o > 0; o >>= 1) first = min(first, __shfl_xor_sync(kFull, first, o));
    top = first == INT_MAX ? -1 : first;
    acc_t m2 = neg_inf;
    for (int k = lane; k < n; k += kWarp)
      if (in[k] && k != top) m2 = mx(m2, w[k]);
    m2 = warp_max(m2);
    acc_t z1 = 0, z2 = 0;
    for (int k = lane; k < n; k += kWarp) {
      E1[k] = E2[k] = 0;
      if (in[k]) {
        E1[k] = dev_exp(w[k] - m1);
        z1 += E1[k];
        if (k != top) {
          E2[k] = dev_exp(w[k] - m2);
          z2 += E2[k];
        }
      }
      const acc_t base = k == top ? m2 : m1;  // the largest logit of S minus k
      if (w[k] > base) {
        join_g[k] = base == neg_inf ? acc_t(0) : dev_exp(base - w[k]);
        join_e[k] = 1;
      } else {
        join_g[k] = 1;
        join_e[k] = dev_exp(w[k] - base);
      }
    }
    Z1 = warp_sum(z1);
    Z2 = warp_sum(z2);
    __syncwarp();
  }

  __device__ DevWeights<acc_t> weights(int k, bool add) const {
    DevWeights<acc_t> out;
    const bool second = k >= 0 && k == top;
    out.E = second ? E2 : E1;
    const acc_t own = (k >= 0 && !second) ? E1[k] : acc_t(0);
    const acc_t Zc = second ? Z2 : Z1 - own;
    out.g = add ? join_g[k] : acc_t(1);
    out.e = add ? join_e[k] : acc_t(0);
    out.Z = Zc * out.g + out.e;
    return out;
  }
};

template <typename acc_t>
struct WarpGame {
  const PairData<acc_t>* pd;
  int T, V, ld, nw, nf;
  const acc_t *R, *wt, *wv;
  uint32_t* bits;  // Philox words of the current sample
  uint8_t *in_t, *in_v;
  acc_t *r1, *r2, *k1, *k2;
  int *ra, *rb, *ka, *kb;
  acc_t *P1, *Q1, *P2, *Q2, *G1, *H1, *G2, *H2;
  DevSide<acc_t> text, video;
  int nSt, nSv;  // warp-uniform

  __device__ acc_t row_without(int t, int j, int& arg) const {
    if (ra[t] == j && j >= 0) {
      arg = rb[t];
      return r2[t];
    }
    arg = ra[t];
    return r1[t];
  }
  __device__ acc_t col_without(int v, int i, int& arg) const {
    if (ka[v] == i && i >= 0) {
      arg = kb[v];
      return k2[v];
    }
    arg = ka[v];
    return k1[v];
  }

  // Membership from Philox (sample, pair) or from a subset code of the real players (words first).
  __device__ void set_members(bool from_code, uint32_t unit, uint32_t pair, uint64_t seed, int lane) {
    __syncwarp();  // previous readers of bits / in_t / in_v are done
    if (from_code) {
      for (int a = lane; a < nw; a += kWarp) in_t[a] = (unit >> a) & 1u;
      for (int b = lane; b < nf; b += kWarp) in_v[b] = (unit >> (nw + b)) & 1u;
    } else {
      const int blocks = (T + V + 127) / 128;
      const uint32_t k0 = static_cast<uint32_t>(seed), k1s = static_cast<uint32_t>(seed >> 32);
      for (int blk = lane; blk < blocks; blk += kWarp) {
        const Philox4 r = philox4x32_10(unit, pair, static_cast<uint32_t>(blk), 0u, k0, k1s);
        for (int w = 0; w < 4; ++w) bits[blk * 4 + w] = r.v[w];
      }
      __syncwarp();
      for (int a = lane; a < nw; a += kWarp) {
        const int p = pd->words[a];
        in_t[a] = (bits[p >> 5] >> (p & 31)) & 1u;
      }
      for (int b = lane; b < nf; b += kWarp) {
        const int p = T + pd->frames[b];
        in_v[b] = (bits[p >> 5] >> (p & 31)) & 1u;
      }
    }
    __syncwarp();
  }

  // |S_t|, |S_v|, both sides' softmax state, row top-2 over S_v of every real word, column top-2 over S_t
  // of every frame.
  __device__ void build_state(int lane) {
    int ct = 0, cv = 0;
    for (int a = lane; a < nw; a += kWarp) ct += in_t[a];
    for (int b = lane; b < nf; b += kWarp) cv += in_v[b];
    nSt = warp_sum(ct);
    nSv = warp_sum(cv);
    text.set(wt, in_t, nw, lane);
    video.set(wv, in_v, nf, lane);
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    for (int idx = lane; idx < nw + nf; idx += kWarp) {
      acc_t m1 = neg_inf, m2 = neg_inf;
      int a1 = -1, a2 = -1;
      if (idx < nw) {
        const int t = idx;
        for (int v = 0; v < nf; ++v) {
          if (!in_v[v]) continue;
          const acc_t x = R[t * ld + v];
          if (x > m1) {
            m2 = m1;
            a2 = a1;
            m1 = x;
            a1 = v;
          } else if (x > m2) {
            m2 = x;
            a2 = v;
          }
        }
        r1[t] = m1;
        ra[t] = a1;
        r2[t] = m2;
        rb[t] = a2;
      } else {
        const int v = idx - nw;
        for (int t = 0; t < nw; ++t) {
          if (!in_t[t]) continue;
          const acc_t x = R[t * ld + v];
          if (x > m1) {
            m2 = m1;
            a2 = a1;
            m1 = x;
            a1 = t;
          } else if (x > m2) {
            m2 = x;
            a2 = t;
          }
        }
        k1[v] = m1;
        ka[v] = a1;
        k2[v] = m2;
        kb[v] = a2;
      }
    }
    __syncwarp();
  }

  // ---- slow path (per lane) ----------------------------------------------------------------------
  template <bool kGrad>
  __device__ acc_t value_of(int i, int j, bool add_i, bool add_j, bool zero_fill, acc_t scale,
                            const DevGrads<acc_t>* grads) const {
    const bool ei = i >= 0 && in_t[i], ej = j >= 0 && in_v[j];
    const int nt = nSt - ei + add_i, nv = nSv - ej + add_j;
    if (nt == 0 || nv == 0) return 0;
    const DevWeights<acc_t> tw = text.weights(i, add_i), vw = video.weights(j, add_j);
    const bool clamp_rows = zero_fill && nv < V;
    const bool clamp_cols = zero_fill && nt < T;
    const bool rest_v = nSv - ej > 0, rest_t = nSt - ei > 0;
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);

    auto row = [&](int t, int& arg) {
      acc_t m = neg_inf;
      arg = -1;
      if (rest_v) m = row_without(t, j, arg);
      if (add_j && R[t * ld + j] > m) {
        m = R[t * ld + j];
        arg = j;
      }
      if (clamp_rows && m < 0) {
        m = 0;
        arg = -1;
      }
      return m;
    };
    auto col = [&](int v, int& arg) {
      acc_t m = neg_inf;
      arg = -1;
      if (rest_t) m = col_without(v, i, arg);
      if (add_i && R[i * ld + v] > m) {
        m = R[i * ld + v];
        arg = i;
      }
      if (clamp_cols && m < 0) {
        m = 0;
        arg = -1;
      }
      return m;
    };
    // The members of c (S minus i) weigh E[t] g / Z, the added i weighs e / Z (as PairGame::value_of).
    acc_t text_part = 0, video_part = 0;
    int arg;
    for (int t = 0; t < nw; ++t)
      if (in_t[t] && t != i) text_part += tw.E[t] * row(t, arg);
    text_part *= tw.g;
    if (add_i) text_part += tw.e * row(i, arg);
    for (int v = 0; v < nf; ++v)
      if (in_v[v] && v != j) video_part += vw.E[v] * col(v, arg);
    video_part *= vw.g;
    if (add_j) video_part += vw.e * col(j, arg);
    text_part /= tw.Z;
    video_part /= vw.Z;
    if (kGrad) {
      const acc_t half = acc_t(0.5) * scale;
      auto word_grad = [&](int t, acc_t a) {
        const acc_t m = row(t, arg);
        if (arg >= 0) atomicAdd(&grads->sim[t * ld + arg], half * a);
        atomicAdd(&grads->text_weight[t], half * a * (m - text_part));
      };
      auto frame_grad = [&](int v, acc_t c) {
        const acc_t m = col(v, arg);
        if (arg >= 0) atomicAdd(&grads->sim[arg * ld + v], half * c);
        atomicAdd(&grads->video_weight[v], half * c * (m - video_part));
      };
      const acc_t text_scale = tw.g / tw.Z, video_scale = vw.g / vw.Z;
      for (int t = 0; t < nw; ++t)
        if (in_t[t] && t != i) word_grad(t, tw.E[t] * text_scale);
      if (add_i) word_grad(i, tw.e / tw.Z);
      for (int v = 0; v < nf; ++v)
        if (in_v[v] && v != j) frame_grad(v, vw.E[v] * video_scale);
      if (add_j) frame_grad(j, vw.e / vw.Z);
    }
    return acc_t(0.5) * (text_part + video_part);
  }

  template <bool kGrad>
  __device__ acc_t reference_value1(int i, int j, acc_t scale, const DevGrads<acc_t>* grads) const {
    const bool ei = in_t[i], ej = in_v[j];
    const bool rest_v = nSv - ej > 0, rest_t = nSt - ei > 0;
    const DevWeights<acc_t> tc = text.weights(i, false), vc = video.weights(j, false);  // value4's, over c
    const acc_t rij = R[i * ld + j];
    const acc_t row_i = (V > 1 && rij < 0) ? acc_t(0) : rij;
    const acc_t col_j = (T > 1 && rij < 0) ? acc_t(0) : rij;
    auto row = [&](int t, int& arg) {
      arg = -1;
      if (!rest_v) return acc_t(0);
      const acc_t m = row_without(t, j, arg);
      if (m < 0) {
        arg = -1;
        return acc_t(0);
      }
      return m;
    };
    auto col = [&](int v, int& arg) {
      arg = -1;
      if (!rest_t) return acc_t(0);
      const acc_t m = col_without(v, i, arg);
      if (m < 0) {
        arg = -1;
        return acc_t(0);
      }
      return m;
    };
    // Softmax over logits in [0, 1] (probabilities) and the raw logit: shift by (a bound of) their
    // maximum; without other members the raw logit is alone.
    const acc_t shift_t = rest_t ? mx(wt[i], acc_t(1)) : wt[i];
    const acc_t shift_v = rest_v ? mx(wv[j], acc_t(1)) : wv[j];
    acc_t Dt = dev_exp(wt[i] - shift_t), text_part = Dt * row_i;
    acc_t Dv = dev_exp(wv[j] - shift_v), video_part = Dv * col_j;
    int arg;
    for (int t = 0; t < nw; ++t) {
      if (t == i || !in_t[t]) continue;
      const acc_t e = dev_exp(tc.E[t] / tc.Z - shift_t);
      Dt += e;
      text_part += e * row(t, arg);
    }
    for (int v = 0; v < nf; ++v) {
      if (v == j || !in_v[v]) continue;
      const acc_t e = dev_exp(vc.E[v] / vc.Z - shift_v);
      Dv += e;
      video_part += e * col(v, arg);
    }
    text_part /= Dt;
    video_part /= Dv;
    if (kGrad) {
      const acc_t half = acc_t(0.5) * scale;
      const acc_t alpha_i = dev_exp(wt[i] - shift_t) / Dt;
      if (!(V > 1 && rij < 0)) atomicAdd(&grads->sim[i * ld + j], half * alpha_i);
      atomicAdd(&grads->text_weight[i], half * alpha_i * (row_i - text_part));
      acc_t gamma_dot_p = 0;
      for (int t = 0; t < nw; ++t) {
        if (t == i || !in_t[t]) continue;
        const acc_t p = tc.E[t] / tc.Z;
        const acc_t alpha = dev_exp(p - shift_t) / Dt;
        const acc_t m = row(t, arg);
        if (arg >= 0) atomicAdd(&grads->sim[t * ld + arg], half * alpha);
        gamma_dot_p += alpha * (m - text_part) * p;
      }
      for (int t = 0; t < nw; ++t) {
        if (t == i || !in_t[t]) continue;
        const acc_t p = tc.E[t] / tc.Z;
        const acc_t alpha = dev_exp(p - shift_t) / Dt;
        const acc_t gamma = alpha * (row(t, arg) - text_part);
        atomicAdd(&grads->text_weight[t], half * p * (gamma - gamma_dot_p));
      }
      const acc_t beta_j = dev_exp(wv[j] - shift_v) / Dv;
      if (!(T > 1 && rij < 0)) atomicAdd(&grads->sim[i * ld + j], half * beta_j);
      atomicAdd(&grads->video_weight[j], half * beta_j * (col_j - video_part));
      acc_t delta_dot_q = 0;
      for (int v = 0; v < nf; ++v) {
        if (v == j || !in_v[v]) continue;
        const acc_t q = vc.E[v] / vc.Z;
        const acc_t beta = dev_exp(q - shift_v) / Dv;
        const acc_t m = col(v, arg);
        if (arg >= 0) atomicAdd(&grads->sim[arg * ld + v], half * beta);
        delta_dot_q += beta * (m - video_part) * q;
      }
      for (int v = 0; v < nf; ++v) {
        if (v == j || !in_v[v]) continue;
        const acc_t q = vc.E[v] / vc.Z;
        const acc_t beta = dev_exp(q - shift_v) / Dv;
        const acc_t delta = beta * (col(v, arg) - video_part);
        atomicAdd(&grads->video_weight[v], half * q * (delta - delta_dot_q));
      }
    }
    return acc_t(0.5) * (text_part + video_part);
  }

  template <bool kGrad>
  __device__ acc_t cell_delta(int i, int j, bool reference, acc_t scale, const DevGrads<acc_t>* grads) const {
    const acc_t both = reference ? reference_value1<kGrad>(i, j, scale, grads)
                                 : value_of<kGrad>(i, j, true, true, false, scale, grads);
    return both - value_of<kGrad>(i, j, true, false, reference, -scale, grads) -
           value_of<kGrad>(i, j, false, true, reference, -scale, grads) +
           value_of<kGrad>(i, j, false, false, reference, scale, grads);
  }

  // ---- fast path (textbook forward) ----------------------------------------------------------------
  // As PairGame::prepare_cells / cell_delta_fast: sums over S_t (scale E1) and over S_t minus its top
  // word (scale E2), likewise for frames.
  __device__ void prepare_cells(int lane) {
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    for (int idx = lane; idx < nw + nf; idx += kWarp) {
      if (idx < nf) {
        const int j = idx;
        const bool rest_v = nSv - in_v[j] > 0;
        acc_t p1 = 0, q1 = 0, p2 = 0, q2 = 0;
        for (int t = 0; t < nw; ++t) {
          if (!in_t[t]) continue;
          int arg;
          const acc_t m = rest_v ? row_without(t, j, arg) : neg_inf;
          const acc_t mj = mx(m, R[t * ld + j]);
          if (rest_v) p1 += text.E1[t] * m;
          q1 += text.E1[t] * mj;
          if (t == text.top) continue;
          if (rest_v) p2 += text.E2[t] * m;
          q2 += text.E2[t] * mj;
        }
        P1[j] = p1;
        Q1[j] = q1;
        P2[j] = p2;
        Q2[j] = q2;
      } else {
        const int i = idx - nf;
        const bool rest_t = nSt - in_t[i] > 0;
        acc_t g1 = 0, h1 = 0, g2 = 0, h2 = 0;
        for (int v = 0; v < nf; ++v) {
          if (!in_v[v]) continue;
          int arg;
          const acc_t m = rest_t ? col_without(v, i, arg) : neg_inf;
          const acc_t mi = mx(m, R[i * ld + v]);
          if (rest_t) g1 += video.E1[v] * m;
          h1 += video.E1[v] * mi;
          if (v == video.top) continue;
          if (rest_t) g2 += video.E2[v] * m;
          h2 += video.E2[v] * mi;
        }
        G1[i] = g1;
        H1[i] = h1;
        G2[i] = g2;
        H2[i] = h2;
      }
    }
    __syncwarp();
  }

  __device__ acc_t cell_delta_fast(int i, int j) const {
    const bool ei = in_t[i], ej = in_v[j];
    const int nct = nSt - ei, ncv = nSv - ej;
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    const acc_t rij = R[i * ld + j];
    int arg;
    const acc_t row_i = ncv > 0 ? row_without(i, j, arg) : neg_inf;
    const acc_t row_ij = mx(row_i, rij);
    const acc_t col_j = nct > 0 ? col_without(j, i, arg) : neg_inf;
    const acc_t col_ij = mx(col_j, rij);
    const bool second_t = ei && i == text.top, second_v = ej && j == video.top;
    const acc_t own_i = (ei && !second_t) ? text.E1[i] : acc_t(0);
    const acc_t own_j = (ej && !second_v) ? video.E1[j] : acc_t(0);
    const acc_t Ztc = second_t ? text.Z2 : text.Z1 - own_i;
    const acc_t Zvc = second_v ? video.Z2 : video.Z1 - own_j;
    const acc_t text_cj = second_t ? Q2[j] : Q1[j] - own_i * row_ij;
    const acc_t video_ci = second_v ? H2[i] : H1[i] - own_j * col_ij;
    const acc_t g = text.join_g[i], e = text.join_e[i], h = video.join_g[j], f = video.join_e[j];
    const acc_t Zti = Ztc * g + e, Zvj = Zvc * h + f;
    acc_t delta = acc_t(0.5) * ((text_cj * g + e * row_ij) / Zti + (video_ci * h + f * col_ij) / Zvj);
    const acc_t text_c = ncv > 0 ? (second_t ? P2[j] : P1[j] - own_i * row_i) : acc_t(0);
    const acc_t video_c = nct > 0 ? (second_v ? G2[i] : G1[i] - own_j * col_j) : acc_t(0);
    if (ncv > 0) delta -= acc_t(0.5) * ((text_c * g + e * row_i) / Zti + video_ci / Zvc);
    if (nct > 0) delta -= acc_t(0.5) * (text_cj / Ztc + (video_c * h + f * col_j) / Zvj);
    if (nct > 0 && ncv > 0) delta += acc_t(0.5) * (text_c / Ztc + video_c / Zvc);
    return delta;
  }

  // Gradient of f(S) itself (the msr backward), by the whole warp, times `scale`.
  __device__ void value_grad_warp(acc_t scale, const DevGrads<acc_t>* grads, int lane) const {
    if (nSt == 0 || nSv == 0) return;
    acc_t text_part = 0, video_part = 0;
    for (int t = lane; t < nw; t += kWarp)
      if (in_t[t]) text_part += text.E1[t] * r1[t];
    for (int v = lane; v < nf; v += kWarp)
      if (in_v[v]) video_part += video.E1[v] * k1[v];
    text_part = warp_sum(text_part) / text.Z1;
    video_part = warp_sum(video_part) / video.Z1;
    const acc_t half = acc_t(0.5) * scale;
    for (int t = lane; t < nw; t += kWarp) {
      if (!in_t[t]) continue;
      const acc_t a = text.E1[t] / text.Z1;
      if (ra[t] >= 0) atomicAdd(&grads->sim[t * ld + ra[t]], half * a);
      atomicAdd(&grads->text_weight[t], half * a * (r1[t] - text_part));
    }
    for (int v = lane; v < nf; v += kWarp) {
      if (!in_v[v]) continue;
      const acc_t c = video.E1[v] / video.Z1;
      if (ka[v] >= 0) atomicAdd(&grads->sim[ka[v] * ld + v], half * c);
      atomicAdd(&grads->video_weight[v], half * c * (k1[v] - video_part));
    }
  }
};

// ------------------------------------------------------------------------------------------------
// The cells kernel: one warp per coalition.

enum CellsMode : int {
  kFwdFast = 0,   // paired textbook forward: O(1) cells
  kFwdSlow = 1,   // reference forward (paired; exact with i, j outside the subset)
  kBwdCells = 2,  // paired backward (both definitions), exact-reference backward
  kBwdValue = 3,  // msr backward: gradient of f(S) times sum of grad * stratum weight
};

struct CellsLayout {
  PairLayout pair;
  size_t grad_sim, grad_wt, grad_wv, gc, gw;  // block (backward)
  size_t warp0, warp_stride;                  // per warp, from warp0
  size_t bits, in_t, in_v, r1, r2, k1, k2, ra, rb, ka, kb, side[8], fast[8], acc;
  size_t total;
};

template <typename acc_t>
__host__ __device__ inline CellsLayout cells_layout(int T, int V, int warps, int mode) {
  CellsLayout L{};
  Carver c;
  carve_pair<acc_t>(c, T, V, L.pair);
  const size_t TV = static_cast<size_t>(T) * V, TL = static_cast<size_t>(T) * odd_stride(V);
  const bool bwd = mode == kBwdCells || mode == kBwdValue;
  if (bwd) {
    L.grad_sim = c.take(sizeof(acc_t) * TL);
    L.grad_wt = c.take(sizeof(acc_t) * T);
    L.grad_wv = c.take(sizeof(acc_t) * V);
  }
  if (mode == kBwdCells) L.gc = c.take(sizeof(acc_t) * TV);
  if (mode == kBwdValue) L.gw = c.take(sizeof(double) * 4 * TV);
  L.warp0 = c.off;
  Carver w;  // offsets inside one warp's region
  L.bits = w.take(sizeof(uint32_t) * 4 * ((T + V + 127) / 128));
  L.in_t = w.take(T);
  L.in_v = w.take(V);
  L.r1 = w.take(sizeof(acc_t) * T);
  L.r2 = w.take(sizeof(acc_t) * T);
  L.k1 = w.take(sizeof(acc_t) * V);
  L.k2 = w.take(sizeof(acc_t) * V);
  L.ra = w.take(sizeof(int) * T);
  L.rb = w.take(sizeof(int) * T);
  L.ka = w.take(sizeof(int) * V);
  L.kb = w.take(sizeof(int) * V);
  // Softmax state: E1, E2, join_g, join_e of the words [T], then of the frames [V].
  for (int k = 0; k < 8; ++k) L.side[k] = w.take(sizeof(acc_t) * (k < 4 ? T : V));
  if (mode == kFwdFast)  // P1, Q1, P2, Q2 [V], then G1, H1, G2, H2 [T]
    for (int k = 0; k < 8; ++k) L.fast[k] = w.take(sizeof(acc_t) * (k < 4 ? V : T));
  if (!bwd) L.acc = w.take(sizeof(double) * TV);
  L.warp_stride = w.off;
  L.total = L.warp0 + L.warp_stride * warps;
  return L;
}

// Workspace entries per (pair, chunk): forward T*V (per cell), backward T*V + T + V.
__host__ __device__ inline int64_t cells_ws_stride(int T, int V, bool bwd) {
  return static_cast<int64_t>(T) * V + (bwd ? T + V : 0);
}

template <typename scalar_t, typename acc_t, int kMode>
__global__ void __launch_bounds__(128)
    cells_kernel(const scalar_t* __restrict__ sim, const bool* __restrict__ tmask, const bool* __restrict__ vmask,
                 const scalar_t* __restrict__ wt_in, const scalar_t* __restrict__ wv_in,
                 const scalar_t* __restrict__ grad_in, const double* __restrict__ gw_in, double* __restrict__ ws, int T,
                 int V, int chunks, int64_t per_chunk, int64_t units, bool exact, bool reference, uint64_t seed,
                 acc_t unit_scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr bool kBwd = kMode == kBwdCells || kMode == kBwdValue;
  const int warps = blockDim.x / kWarp;
  const CellsLayout L = cells_layout<acc_t>(T, V, warps, kMode);
  const int64_t pair = blockIdx.x / chunks;
  const int chunk = blockIdx.x - static_cast<int>(pair * chunks);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  PairData<acc_t> pd;
  load_pair<scalar_t, acc_t>(smem, L.pair, T, V, pair, sim, tmask, vmask, wt_in, wv_in, pd);
  const int nw = pd.nw, nf = pd.nf, ld = pd.ld;
  const int64_t stride = cells_ws_stride(T, V, kBwd);
  double* out = ws + (pair * chunks + chunk) * stride;

  // Units of this pair and chunk (block-uniform).
  int64_t units_b = units;
  bool active = nw > 0 && nf > 0;
  if (exact) {
    const int n = nw + nf;
    if (n > kMaxExactPlayers)
      active = false;  // device guard; finalize writes NaN
    else
      units_b = int64_t(1) << n;
  }
  // exact: the grid is sized for the largest pair; split this pair's own 2^n evenly over its chunks
  const int64_t per_chunk_b = exact ? (units_b + chunks - 1) / chunks : per_chunk;
  const int64_t begin = static_cast<int64_t>(chunk) * per_chunk_b;
  const int64_t end = begin + per_chunk_b < units_b ? begin + per_chunk_b : units_b;
  if (begin >= end) active = false;

  DevGrads<acc_t> grads{nullptr, nullptr, nullptr};
  acc_t* gc = nullptr;
  double* gw = nullptr;
  if (kBwd) {
    grads.sim = reinterpret_cast<acc_t*>(smem + L.grad_sim);
    grads.text_weight = reinterpret_cast<acc_t*>(smem + L.grad_wt);
    grads.video_weight = reinterpret_cast<acc_t*>(smem + L.grad_wv);
    for (int k = tid; k < T * ld; k += blockDim.x) grads.sim[k] = 0;
    for (int k = tid; k < T; k += blockDim.x) grads.text_weight[k] = 0;
    for (int k = tid; k < V; k += blockDim.x) grads.video_weight[k] = 0;
    if (kMode == kBwdCells) {
      gc = reinterpret_cast<acc_t*>(smem + L.gc);
      for (int c = tid; c < nw * nf; c += blockDim.x) {
        const int a = c / nf, b = c - a * nf;
        gc[c] = static_cast<acc_t>(grad_in[(pair * T + pd.words[a]) * static_cast<int64_t>(V) + pd.frames[b]]);
      }
    } else {
      gw = reinterpret_cast<double*>(smem + L.gw);
      for (int c = tid; c < nw * nf; c += blockDim.x) {
        const int a = c / nf, b = c - a * nf;
        const double* src = gw_in + ((pair * T + pd.words[a]) * static_cast<int64_t>(V) + pd.frames[b]) * 4;
        for (int k = 0; k < 4; ++k) gw[c * 4 + k] = src[k];
      }
    }
  }
  unsigned char* wbase = smem + L.warp0 + L.warp_stride * warp;
  WarpGame<acc_t> g;
  g.pd = &pd;
  g.T = T;
  g.V = V;
  g.ld = ld;
  g.nw = nw;
  g.nf = nf;
  g.R = pd.R;
  g.wt = pd.wt;
  g.wv = pd.wv;
  g.bits = reinterpret_cast<uint32_t*>(wbase + L.bits);
  g.in_t = wbase + L.in_t;
  g.in_v = wbase + L.in_v;
  g.r1 = reinterpret_cast<acc_t*>(wbase + L.r1);
  g.r2 = reinterpret_cast<acc_t*>(wbase + L.r2);
  g.k1 = reinterpret_cast<acc_t*>(wbase + L.k1);
  g.k2 = reinterpret_cast<acc_t*>(wbase + L.k2);
  g.ra = reinterpret_cast<int*>(wbase + L.ra);
  g.rb = reinterpret_cast<int*>(wbase + L.rb);
  g.ka = reinterpret_cast<int*>(wbase + L.ka);
  g.kb = reinterpret_cast<int*>(wbase + L.kb);
  acc_t* side[8];
  for (int k = 0; k < 8; ++k) side[k] = reinterpret_cast<acc_t*>(wbase + L.side[k]);
  g.text.E1 = side[0];
  g.text.E2 = side[1];
  g.text.join_g = side[2];
  g.text.join_e = side[3];
  g.video.E1 = side[4];
  g.video.E2 = side[5];
  g.video.join_g = side[6];
  g.video.join_e = side[7];
  if (kMode == kFwdFast) {
    acc_t* fast[8];
    for (int k = 0; k < 8; ++k) fast[k] = reinterpret_cast<acc_t*>(wbase + L.fast[k]);
    g.P1 = fast[0];
    g.Q1 = fast[1];
    g.P2 = fast[2];
    g.Q2 = fast[3];
    g.G1 = fast[4];
    g.H1 = fast[5];
    g.G2 = fast[6];
    g.H2 = fast[7];
  }
  double* acc = kBwd ? nullptr : reinterpret_cast<double*>(wbase + L.acc);
  if (!kBwd)
    for (int c = lane; c < nw * nf; c += kWarp) acc[c] = 0;
  __syncthreads();

  if (active) {
    const int ncells = nw * nf;
    // Per-cell gradient scale: 1 / num_samples (paired), 1 / 2^(n - 2) (exact reference), as the CPU kernel.
    const acc_t cell_scale = exact ? acc_t(1) / static_cast<acc_t>(units_b >> 2) : unit_scale;
    // Lane's cells c = lane + 32 k walk (a, b) incrementally: no division in the loop.
    const int a0 = lane / nf, b0 = lane - a0 * nf;
    const int da = kWarp / nf, db = kWarp - da * nf;
    for (int64_t u = begin + warp; u < end; u += warps) {
      g.set_members(exact, static_cast<uint32_t>(u), static_cast<uint32_t>(pair), seed, lane);
      g.build_state(lane);
      if (kMode == kFwdFast) {
        g.prepare_cells(lane);
        int a = a0, b = b0;
        for (int c = lane; c < ncells; c += kWarp) {
          acc[c] += static_cast<double>(g.cell_delta_fast(a, b));
          a += da;
          b += db;
          if (b >= nf) {
            b -= nf;
            ++a;
          }
        }
      } else if (kMode == kFwdSlow) {
        int a = a0, b = b0;
        for (int c = lane; c < ncells; c += kWarp) {
          if (!exact || (!g.in_t[a] && !g.in_v[b]))
            acc[c] += static_cast<double>(g.template cell_delta<false>(a, b, true, acc_t(0), nullptr));
          a += da;
          b += db;
          if (b >= nf) {
            b -= nf;
            ++a;
          }
        }
      } else if (kMode == kBwdCells) {
        int a = a0, b = b0;
        for (int c = lane; c < ncells; c += kWarp) {
          const acc_t gg = gc[c] * cell_scale;
          if ((!exact || (!g.in_t[a] && !g.in_v[b])) && gg != acc_t(0))
            g.template cell_delta<true>(a, b, reference, gg, &grads);
          a += da;
          b += db;
          if (b >= nf) {
            b -= nf;
            ++a;
          }
        }
      } else {  // kBwdValue
        double s = 0;
        int a = a0, b = b0;
        for (int c = lane; c < ncells; c += kWarp) {
          s += gw[c * 4 + (g.in_t[a] ? 2 : 0) + (g.in_v[b] ? 1 : 0)];
          a += da;
          b += db;
          if (b >= nf) {
            b -= nf;
            ++a;
          }
        }
        s = warp_sum(s);
        g.value_grad_warp(static_cast<acc_t>(s), &grads, lane);
      }
      __syncwarp();
    }
  }
  __syncthreads();
  // Per-chunk partial, every entry written (zeros at padding), warps added in fixed order.
  if (!kBwd) {
    for (int64_t k = tid; k < static_cast<int64_t>(T) * V; k += blockDim.x) {
      const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
      const int a = pd.rank_w[t], b = pd.rank_f[v];
      double s = 0;
      if (active && a >= 0 && b >= 0) {
        const int c = a * nf + b;
        for (int w = 0; w < warps; ++w)
          s += reinterpret_cast<const double*>(smem + L.warp0 + L.warp_stride * w + L.acc)[c];
      }
      out[k] = s;
    }
  } else {
    const int64_t TV = static_cast<int64_t>(T) * V;
    for (int64_t k = tid; k < TV + T + V; k += blockDim.x) {
      double s = 0;
      if (active) {
        if (k < TV) {
          const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
          const int a = pd.rank_w[t], b = pd.rank_f[v];
          if (a >= 0 && b >= 0) s = static_cast<double>(grads.sim[a * ld + b]);
        } else if (k < TV + T) {
          const int a = pd.rank_w[k - TV];
          if (a >= 0) s = static_cast<double>(grads.text_weight[a]);
        } else {
          const int b = pd.rank_f[k - TV - T];
          if (b >= 0) s = static_cast<double>(grads.video_weight[b]);
        }
      }
      out[k] = s;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// The value kernel: one thread per coalition computes f(S); stratum sums and counts per chunk.

struct ValueLayout {
  PairLayout pair;
  size_t memb, f, sb, cb, sw, cw, sf, cf, sa;
  size_t total;
};

__host__ __device__ inline int member_words(int T, int V) { return (T + V + 31) / 32; }

template <typename acc_t>
__host__ __device__ inline ValueLayout value_layout(int T, int V) {
  ValueLayout L{};
  Carver c;
  carve_pair<acc_t>(c, T, V, L.pair);
  const size_t TV = static_cast<size_t>(T) * V;
  L.memb = c.take(sizeof(uint32_t) * member_words(T, V) * (kValueThreads + 1));
  L.f = c.take(sizeof(double) * kValueThreads);
  L.sb = c.take(sizeof(double) * TV);
  L.cb = c.take(sizeof(double) * TV);
  L.sw = c.take(sizeof(double) * T);
  L.cw = c.take(sizeof(double) * T);
  L.sf = c.take(sizeof(double) * V);
  L.cf = c.take(sizeof(double) * V);
  L.sa = c.take(sizeof(double));
  L.total = c.off;
  return L;
}

// Workspace per (pair, chunk): [sum_both T*V | count_both T*V | sum_word T | count_word T |
// sum_frame V | count_frame V | sum_all], at full (padded) positions; real positions only are written.
__host__ __device__ inline int64_t value_ws_stride(int T, int V) {
  return 2 * static_cast<int64_t>(T) * V + 2 * T + 2 * V + 1;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kValueThreads)
    value_kernel(const scalar_t* __restrict__ sim, const bool* __restrict__ tmask, const bool* __restrict__ vmask,
                 const scalar_t* __restrict__ wt_in, const scalar_t* __restrict__ wv_in, double* __restrict__ ws, int T,
                 int V, int chunks, int64_t per_chunk, int64_t units, uint64_t seed) {
  extern __shared__ __align__(16) unsigned char smem[];
  const ValueLayout L = value_layout<acc_t>(T, V);
  const int64_t pair = blockIdx.x / chunks;
  const int chunk = blockIdx.x - static_cast<int>(pair * chunks);
  const int tid = threadIdx.x;
  const int NT = kValueThreads, MS = kValueThreads + 1;  // member-bit row stride (odd: no conflicts)
  PairData<acc_t> pd;
  load_pair<scalar_t, acc_t>(smem, L.pair, T, V, pair, sim, tmask, vmask, wt_in, wv_in, pd);
  const int nw = pd.nw, nf = pd.nf, ld = pd.ld, n = nw + nf;
  if (nw == 0 || nf == 0) return;  // block-uniform; finalize writes zeros without reading
  uint32_t* memb = reinterpret_cast<uint32_t*>(smem + L.memb);
  double* fbuf = reinterpret_cast<double*>(smem + L.f);
  double* sb = reinterpret_cast<double*>(smem + L.sb);
  double* cb = reinterpret_cast<double*>(smem + L.cb);
  double* sw = reinterpret_cast<double*>(smem + L.sw);
  double* cw = reinterpret_cast<double*>(smem + L.cw);
  double* sf = reinterpret_cast<double*>(smem + L.sf);
  double* cf = reinterpret_cast<double*>(smem + L.cf);
  double* sa = reinterpret_cast<double*>(smem + L.sa);
  for (int c = tid; c < nw * nf; c += NT) {
    sb[c] = 0;
    cb[c] = 0;
  }
  for (int a = tid; a < nw; a += NT) {
    sw[a] = 0;
    cw[a] = 0;
  }
  for (int b = tid; b < nf; b += NT) {
    sf[b] = 0;
    cf[b] = 0;
  }
  if (tid == 0) sa[0] = 0;
  const int nmw = member_words(T, V);
  const int64_t begin = static_cast<int64_t>(chunk) * per_chunk;
  const int64_t end = begin + per_chunk < units ? begin + per_chunk : units;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
  __syncthreads();

  for (int64_t r0 = begin; r0 < end; r0 += NT) {
    const int64_t s = r0 + tid;
    const int in_round = static_cast<int>(end - r0 < NT ? end - r0 : NT);
    // Compact membership bits of this thread's coalition: player p (words, then frames) -> bit p.
    for (int w = 0; w < nmw; ++w) memb[w * MS + tid] = 0;
    if (s < end) {
      int blk = -1;
      Philox4 r{};
      for (int p = 0; p < n; ++p) {
        const int pos = p < nw ? pd.words[p] : T + pd.frames[p - nw];
        if ((pos >> 7) != blk) {
          blk = pos >> 7;
          r = philox4x32_10(static_cast<uint32_t>(s), static_cast<uint32_t>(pair), static_cast<uint32_t>(blk), 0u, k0,
                            k1);
        }
        if ((r.v[(pos >> 5) & 3] >> (pos & 31)) & 1u) memb[(p >> 5) * MS + tid] |= 1u << (p & 31);
      }
    }
    // f(S), as PairGame::value_of(-1, -1, false, false, false): sums in increasing player order.
    // The first 64 players' bits in registers; the others are read from shared memory.
    const uint32_t m0 = memb[tid], m1 = nmw > 1 ? memb[MS + tid] : 0u;
    auto member = [&](int p) -> uint32_t {
      if (p < 32) return (m0 >> p) & 1u;
      if (p < 64) return (m1 >> (p - 32)) & 1u;
      return (memb[(p >> 5) * MS + tid] >> (p & 31)) & 1u;
    };
    // Softmax weights relative to the coalition's own largest logits (exact for any finite logits).
    int nSt = 0, nSv = 0;
    acc_t top_t = neg_inf, top_v = neg_inf;
    for (int a = 0; a < nw; ++a)
      if (member(a)) {
        ++nSt;
        top_t = mx(top_t, pd.wt[a]);
      }
    for (int b = 0; b < nf; ++b)
      if (member(nw + b)) {
        ++nSv;
        top_v = mx(top_v, pd.wv[b]);
      }
    double f = 0;
    if (nSt > 0 && nSv > 0) {
      acc_t text = 0, video = 0, Zt = 0, Zv = 0;
      for (int a = 0; a < nw; ++a) {
        if (!member(a)) continue;
        acc_t m = neg_inf;
        for (int b = 0; b < nf; ++b)
          if (member(nw + b)) m = mx(m, pd.R[a * ld + b]);
        const acc_t e = dev_exp(pd.wt[a] - top_t);
        Zt += e;
        text += e * m;
      }
      for (int b = 0; b < nf; ++b) {
        if (!member(nw + b)) continue;
        acc_t m = neg_inf;
        for (int a = 0; a < nw; ++a)
          if (member(a)) m = mx(m, pd.R[a * ld + b]);
        const acc_t e = dev_exp(pd.wv[b] - top_v);
        Zv += e;
        video += e * m;
      }
      text /= Zt;
      video /= Zv;
      f = static_cast<double>(acc_t(0.5) * (text + video));
    }
    fbuf[tid] = f;
    __syncthreads();
    // Stratum sums over this round's coalitions (each entry owned by one thread: no races).
    for (int c = tid; c < nw * nf; c += NT) {
      const int a = c / nf, b = c - a * nf, pb = nw + b;
      double s_sum = 0, s_cnt = 0;
      for (int k = 0; k < in_round; ++k) {
        const uint32_t both = (memb[(a >> 5) * MS + k] >> (a & 31)) & (memb[(pb >> 5) * MS + k] >> (pb & 31)) & 1u;
        if (both) {
          s_sum += fbuf[k];
          s_cnt += 1;
        }
      }
      sb[c] += s_sum;
      cb[c] += s_cnt;
    }
    for (int p = tid; p < n; p += NT) {
      double s_sum = 0, s_cnt = 0;
      for (int k = 0; k < in_round; ++k)
        if ((memb[(p >> 5) * MS + k] >> (p & 31)) & 1u) {
          s_sum += fbuf[k];
          s_cnt += 1;
        }
      if (p < nw) {
        sw[p] += s_sum;
        cw[p] += s_cnt;
      } else {
        sf[p - nw] += s_sum;
        cf[p - nw] += s_cnt;
      }
    }
    if (tid == 0) {
      double t = 0;
      for (int k = 0; k < in_round; ++k) t += fbuf[k];
      sa[0] += t;
    }
    __syncthreads();
  }
  // Partial of this chunk at full positions (real ones only: finalize reads nothing else).
  double* out = ws + (pair * chunks + chunk) * value_ws_stride(T, V);
  const int64_t TV = static_cast<int64_t>(T) * V;
  for (int c = tid; c < nw * nf; c += NT) {
    const int a = c / nf, b = c - a * nf;
    const int64_t k = static_cast<int64_t>(pd.words[a]) * V + pd.frames[b];
    out[k] = sb[c];
    out[TV + k] = cb[c];
  }
  for (int a = tid; a < nw; a += NT) {
    out[2 * TV + pd.words[a]] = sw[a];
    out[2 * TV + T + pd.words[a]] = cw[a];
  }
  for (int b = tid; b < nf; b += NT) {
    out[2 * TV + 2 * T + pd.frames[b]] = sf[b];
    out[2 * TV + 2 * T + V + pd.frames[b]] = cf[b];
  }
  if (tid == 0) out[2 * TV + 2 * T + 2 * V] = sa[0];
}

// ------------------------------------------------------------------------------------------------
// Finalize kernels: fixed-order reductions over chunks.

// Real players of pair b (O(T + V)); -1 when it has no word or no frame.
__device__ inline int players_of(const bool* tmask, const bool* vmask, int64_t pair, int T, int V, int& nw, int& nf) {
  nw = 0;
  nf = 0;
  for (int t = 0; t < T; ++t) nw += tmask[pair * T + t];
  for (int v = 0; v < V; ++v) nf += vmask[pair * V + v];
  return nw + nf;
}

// Paired / exact-reference forward.
template <typename scalar_t>
__global__ void cells_finalize_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                      const bool* __restrict__ vmask, scalar_t* __restrict__ out, int64_t B, int T,
                                      int V, int chunks, bool exact, double num_samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, total = B * TV;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / TV, k = e - pair * TV;
    const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
    double r = 0;
    if (tmask[pair * T + t] && vmask[pair * V + v]) {
      double s = 0;
      for (int c = 0; c < chunks; ++c) s += ws[(pair * chunks + c) * TV + k];
      if (exact) {
        int nw, nf;
        const int n = players_of(tmask, vmask, pair, T, V, nw, nf);
        if (n > kMaxExactPlayers)
          r = NAN;
        else
          r = s * (1.0 / static_cast<double>((int64_t(1) << n) >> 2));
      } else {
        r = s / num_samples;
      }
    }
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(r));
  }
}

// msr forward from the stratum sums.
template <typename scalar_t>
__global__ void value_finalize_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                      const bool* __restrict__ vmask, scalar_t* __restrict__ out, int64_t B, int T,
                                      int V, int chunks, double num_samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, total = B * TV, stride = value_ws_stride(T, V);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / TV, k = e - pair * TV;
    const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
    double r = 0;
    if (tmask[pair * T + t] && vmask[pair * V + v]) {
      double both = 0, cboth = 0, word = 0, cword = 0, frame = 0, cframe = 0, all = 0;
      for (int c = 0; c < chunks; ++c) {
        const double* p = ws + (pair * chunks + c) * stride;
        both += p[k];
        cboth += p[TV + k];
        word += p[2 * TV + t];
        cword += p[2 * TV + T + t];
        frame += p[2 * TV + 2 * T + v];
        cframe += p[2 * TV + 2 * T + V + v];
        all += p[2 * TV + 2 * T + 2 * V];
      }
      auto mean = [](double total_, double count) { return count > 0 ? total_ / count : 0.0; };
      r = mean(both, cboth) - mean(word - both, cword - cboth) - mean(frame - both, cframe - cboth) +
          mean(all - word - frame + both, num_samples - cword - cframe + cboth);
    }
    out[e] = static_cast<scalar_t>(static_cast<acc_t>(r));
  }
}

// gw[b, t, v, stratum] = d estimate[t, v] / d f(S) for S in the stratum (word in: 2, frame in: 1),
// times grad[t, v]: msr +-1 / (stratum count).
template <typename scalar_t>
__global__ void stratum_weight_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                      const bool* __restrict__ vmask, const scalar_t* __restrict__ grad,
                                      double* __restrict__ gw, int64_t B, int T, int V, int chunks,
                                      double num_samples) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, total = B * TV, stride = value_ws_stride(T, V);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / TV, k = e - pair * TV;
    const int t = static_cast<int>(k / V), v = static_cast<int>(k - static_cast<int64_t>(t) * V);
    double w[4] = {0, 0, 0, 0};
    if (tmask[pair * T + t] && vmask[pair * V + v]) {
      const double g = static_cast<double>(static_cast<acc_t>(grad[e]));
      double cboth = 0, cword = 0, cframe = 0;
      for (int c = 0; c < chunks; ++c) {
        const double* p = ws + (pair * chunks + c) * stride;
        cboth += p[TV + k];
        cword += p[2 * TV + T + t];
        cframe += p[2 * TV + 2 * T + V + v];
      }
      const double count[4] = {num_samples - cword - cframe + cboth, cframe - cboth, cword - cboth, cboth};
      const double sign[4] = {1.0, -1.0, -1.0, 1.0};
      for (int q = 0; q < 4; ++q) w[q] = count[q] > 0 ? g * (sign[q] / count[q]) : 0.0;
    }
    for (int q = 0; q < 4; ++q) gw[e * 4 + q] = w[q];
  }
}

template <typename scalar_t>
__global__ void backward_finalize_kernel(const double* __restrict__ ws, const bool* __restrict__ tmask,
                                         const bool* __restrict__ vmask, scalar_t* __restrict__ grad_sim,
                                         scalar_t* __restrict__ grad_wt, scalar_t* __restrict__ grad_wv, int64_t B,
                                         int T, int V, int chunks, bool exact) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t TV = static_cast<int64_t>(T) * V, per = TV + T + V, total = B * per;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / per, k = e - pair * per;
    acc_t s = 0;  // the CPU kernel accumulates gradients in acc_t
    for (int c = 0; c < chunks; ++c) s += static_cast<acc_t>(ws[(pair * chunks + c) * per + k]);
    if (exact) {  // the forward's device guard: a pair with too many players gets NaN, not a zero gradient
      int nw, nf;
      if (players_of(tmask, vmask, pair, T, V, nw, nf) > kMaxExactPlayers) s = static_cast<acc_t>(NAN);
    }
    if (k < TV)
      grad_sim[pair * TV + k] = static_cast<scalar_t>(s);
    else if (k < TV + T)
      grad_wt[pair * T + (k - TV)] = static_cast<scalar_t>(s);
    else
      grad_wv[pair * V + (k - TV - T)] = static_cast<scalar_t>(s);
  }
}

// ------------------------------------------------------------------------------------------------
// Host side

// Coalitions per pair for the grid: samples, or 2^(most players a pair can have, at most 24).
int64_t unit_count(const Settings& s, int T, int V) {
  if (s.estimator != Estimator::kExact) return s.num_samples;
  return int64_t(1) << std::min(T + V, kMaxExactPlayers);
}

// Chunks per pair: a function of (B, units, granularity) only, so results do not depend on the card.
int chunk_count(int64_t B, int64_t units, int64_t granule) {
  const int64_t want = (units + granule - 1) / granule;
  const int64_t cap_blocks = std::max<int64_t>(1, (2048 + B - 1) / B);  // ~2048 blocks in all
  int64_t chunks = std::min<int64_t>({want, cap_blocks, kMaxChunks});
  chunks = std::max<int64_t>(chunks, 1);
  TORCH_CHECK(B * chunks <= INT32_MAX, "banzhaf_interaction: batch too large for the CUDA grid");
  return static_cast<int>(chunks);
}

int blocks_for(int64_t total) {
  const int64_t b = (total + 255) / 256;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535)));
}

template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes, int T, int V) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(bytes <= prop->sharedMemPerBlockOptin, "banzhaf_interaction (cuda): T = ", T, ", V = ", V, " needs ",
              bytes, " bytes of shared memory per block, more than this device's ", prop->sharedMemPerBlockOptin,
              "; use the triton or cpu backend for such sizes");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Warps per block of the cells kernel: 4, fewer when the per-warp state would not fit.
template <typename acc_t>
int cells_warps(int T, int V, int mode) {
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  int warps = 4;
  while (warps > 1 && cells_layout<acc_t>(T, V, warps, mode).total > limit) warps /= 2;
  return warps;
}

template <typename scalar_t, int kMode>
void launch_cells(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                  const at::Tensor& wv, const at::Tensor* grad, const at::Tensor* gw, at::Tensor& ws, int chunks,
                  int64_t units, const Settings& s, double unit_scale, int warps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  const size_t bytes = cells_layout<acc_t>(T, V, warps, kMode).total;
  auto kernel = cells_kernel<scalar_t, acc_t, kMode>;
  allow_shared(kernel, bytes, T, V);
  const int64_t per_chunk = (units + chunks - 1) / chunks;
  kernel<<<static_cast<unsigned>(B * chunks), warps * kWarp, bytes, at::cuda::getCurrentCUDAStream()>>>(
      sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(), wt.data_ptr<scalar_t>(),
      wv.data_ptr<scalar_t>(), grad ? grad->data_ptr<scalar_t>() : nullptr, gw ? gw->data_ptr<double>() : nullptr,
      ws.data_ptr<double>(), T, V, chunks, per_chunk, units, s.estimator == Estimator::kExact, s.reference, s.seed,
      static_cast<acc_t>(unit_scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_value(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                  const at::Tensor& wv, at::Tensor& ws, int chunks, int64_t units, const Settings& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  const size_t bytes = value_layout<acc_t>(T, V).total;
  auto kernel = value_kernel<scalar_t, acc_t>;
  allow_shared(kernel, bytes, T, V);
  const int64_t per_chunk = (units + chunks - 1) / chunks;
  kernel<<<static_cast<unsigned>(B * chunks), kValueThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(), wt.data_ptr<scalar_t>(),
      wv.data_ptr<scalar_t>(), ws.data_ptr<double>(), T, V, chunks, per_chunk, units, s.seed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct Prepared {
  at::Tensor sim, tm, vm, wt, wv;
};

Prepared prepare(const at::Tensor& sim, const at::Tensor& text_mask, const at::Tensor& video_mask,
                 const at::Tensor& text_weight, const at::Tensor& video_weight) {
  return {sim.contiguous(), text_mask.to(at::kBool).contiguous(), video_mask.to(at::kBool).contiguous(),
          text_weight.contiguous(), video_weight.contiguous()};
}

// Uses the value kernel (rather than the cells kernel) for the forward pass? (msr; the exact textbook
// index never gets here: its closed form runs instead.)
bool value_path(const Settings& s) { return s.estimator == Estimator::kMsr; }

at::Tensor banzhaf_interaction_cuda(const at::Tensor& sim_in, const at::Tensor& text_mask_in,
                                    const at::Tensor& video_mask_in, const at::Tensor& text_weight_in,
                                    const at::Tensor& video_weight_in, c10::string_view definition,
                                    c10::string_view estimator, int64_t num_samples, int64_t seed) {
  check_inputs(sim_in, text_mask_in, video_mask_in, text_weight_in, video_weight_in);
  const Settings s = parse_settings(definition, estimator, num_samples, seed);
  c10::cuda::CUDAGuard guard(sim_in.device());
  const Prepared p = prepare(sim_in, text_mask_in, video_mask_in, text_weight_in, video_weight_in);
  if (s.estimator == Estimator::kExact && !s.reference) return closed_form::forward_cuda(p.sim, p.tm, p.vm, p.wt, p.wv);
  const int64_t B = p.sim.size(0);
  const int T = static_cast<int>(p.sim.size(1)), V = static_cast<int>(p.sim.size(2));
  auto out = at::empty_like(p.sim);
  if (out.numel() == 0) return out;
  const int64_t units = unit_count(s, T, V);
  const bool exact = s.estimator == Estimator::kExact;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.sim.scalar_type(), "banzhaf_interaction_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (value_path(s)) {
      const int chunks = chunk_count(B, units, kValueThreads);
      auto ws = at::empty({B * chunks * value_ws_stride(T, V)}, p.sim.options().dtype(at::kDouble));
      launch_value<scalar_t>(p.sim, p.tm, p.vm, p.wt, p.wv, ws, chunks, units, s);
      value_finalize_kernel<scalar_t><<<blocks_for(B * T * V), 256, 0, stream>>>(
          ws.data_ptr<double>(), p.tm.data_ptr<bool>(), p.vm.data_ptr<bool>(), out.data_ptr<scalar_t>(), B, T, V,
          chunks, static_cast<double>(s.num_samples));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      const int mode = s.reference ? kFwdSlow : kFwdFast;
      const int warps = cells_warps<acc_t>(T, V, mode);
      const int chunks = chunk_count(B, units, static_cast<int64_t>(warps) * 4);
      auto ws = at::empty({B * chunks * cells_ws_stride(T, V, false)}, p.sim.options().dtype(at::kDouble));
      if (s.reference)
        launch_cells<scalar_t, kFwdSlow>(p.sim, p.tm, p.vm, p.wt, p.wv, nullptr, nullptr, ws, chunks, units, s, 0.0,
                                         warps);
      else
        launch_cells<scalar_t, kFwdFast>(p.sim, p.tm, p.vm, p.wt, p.wv, nullptr, nullptr, ws, chunks, units, s, 0.0,
                                         warps);
      cells_finalize_kernel<scalar_t><<<blocks_for(B * T * V), 256, 0, stream>>>(
          ws.data_ptr<double>(), p.tm.data_ptr<bool>(), p.vm.data_ptr<bool>(), out.data_ptr<scalar_t>(), B, T, V,
          chunks, exact, static_cast<double>(s.num_samples));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> banzhaf_interaction_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& sim_in, const at::Tensor& text_mask_in,
    const at::Tensor& video_mask_in, const at::Tensor& text_weight_in, const at::Tensor& video_weight_in,
    c10::string_view definition, c10::string_view estimator, int64_t num_samples, int64_t seed) {
  check_inputs(sim_in, text_mask_in, video_mask_in, text_weight_in, video_weight_in);
  TORCH_CHECK(grad_in.sizes() == sim_in.sizes(), "banzhaf_interaction_backward: grad must be ", sim_in.sizes(),
              ", got ", grad_in.sizes());
  TORCH_CHECK(grad_in.device() == sim_in.device(), "banzhaf_interaction_backward: grad must be on sim's device ",
              sim_in.device(), ", got ", grad_in.device());
  const Settings s = parse_settings(definition, estimator, num_samples, seed);
  c10::cuda::CUDAGuard guard(sim_in.device());
  const Prepared p = prepare(sim_in, text_mask_in, video_mask_in, text_weight_in, video_weight_in);
  const auto grad = grad_in.to(p.sim.scalar_type()).contiguous();
  if (s.estimator == Estimator::kExact && !s.reference)
    return closed_form::backward_cuda(grad, p.sim, p.tm, p.vm, p.wt, p.wv);
  const int64_t B = p.sim.size(0);
  const int T = static_cast<int>(p.sim.size(1)), V = static_cast<int>(p.sim.size(2));
  auto grad_sim = at::empty_like(p.sim);
  auto grad_wt = at::empty_like(p.wt);
  auto grad_wv = at::empty_like(p.wv);
  if (B == 0 || T == 0 || V == 0) return {grad_sim.zero_(), grad_wt.zero_(), grad_wv.zero_()};
  const int64_t units = unit_count(s, T, V);
  const bool exact = s.estimator == Estimator::kExact;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.sim.scalar_type(), "banzhaf_interaction_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const int mode = value_path(s) ? kBwdValue : kBwdCells;
        const int warps = cells_warps<acc_t>(T, V, mode);
        const int chunks = chunk_count(B, units, static_cast<int64_t>(warps) * 4);
        auto ws = at::empty({B * chunks * cells_ws_stride(T, V, true)}, p.sim.options().dtype(at::kDouble));
        if (mode == kBwdValue) {
          // Stratum weights: msr needs the stratum counts first (a first pass over the coalitions).
          auto gw = at::empty({B * T * V * 4}, p.sim.options().dtype(at::kDouble));
          const int count_chunks = chunk_count(B, units, kValueThreads);
          auto counts = at::empty({B * count_chunks * value_ws_stride(T, V)}, p.sim.options().dtype(at::kDouble));
          launch_value<scalar_t>(p.sim, p.tm, p.vm, p.wt, p.wv, counts, count_chunks, units, s);
          stratum_weight_kernel<scalar_t><<<blocks_for(B * T * V), 256, 0, stream>>>(
              counts.data_ptr<double>(), p.tm.data_ptr<bool>(), p.vm.data_ptr<bool>(), grad.data_ptr<scalar_t>(),
              gw.data_ptr<double>(), B, T, V, count_chunks, static_cast<double>(s.num_samples));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          launch_cells<scalar_t, kBwdValue>(p.sim, p.tm, p.vm, p.wt, p.wv, nullptr, &gw, ws, chunks, units, s, 0.0,
                                            warps);
        } else {
          // paired: grad / num_samples per sample (1 / num_samples in acc_t, as the CPU kernel); exact
          // reference: grad / 2^(n - 2), n of the pair, formed inside the kernel.
          const acc_t per_sample = acc_t(1) / static_cast<acc_t>(s.num_samples);
          launch_cells<scalar_t, kBwdCells>(p.sim, p.tm, p.vm, p.wt, p.wv, &grad, nullptr, ws, chunks, units, s,
                                            exact ? 0.0 : static_cast<double>(per_sample), warps);
        }
        backward_finalize_kernel<scalar_t><<<blocks_for(B * (T * V + T + V)), 256, 0, stream>>>(
            ws.data_ptr<double>(), p.tm.data_ptr<bool>(), p.vm.data_ptr<bool>(), grad_sim.data_ptr<scalar_t>(),
            grad_wt.data_ptr<scalar_t>(), grad_wv.data_ptr<scalar_t>(), B, T, V, chunks, exact);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_sim, grad_wt, grad_wv};
}

}  // namespace banzhaf_cuda
}  // namespace hbi

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) {
  m.impl("banzhaf_interaction", &hbi::banzhaf_cuda::banzhaf_interaction_cuda);
  m.impl("banzhaf_interaction_backward", &hbi::banzhaf_cuda::banzhaf_interaction_backward_cuda);
}
