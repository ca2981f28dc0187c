// One pair in shared memory (compact real players, R and the logits) and the softmax state of one side of
// a warp's coalition: the building blocks of WarpGame (banzhaf_warp_game_cuda.cuh) and the value kernel.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "banzhaf/banzhaf_device_cuda.cuh"
#include "banzhaf/banzhaf_layout_cuda.cuh"

namespace hbi {
namespace banzhaf_cuda {

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

}  // namespace banzhaf_cuda
}  // namespace hbi
