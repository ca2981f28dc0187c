// The compact pair, the gradient sinks and one side's softmax state of a warp's coalition, written once for
// the CUDA kernels and the CPU: `Lane` is the warp's policy (width, reductions, the sinks' add):
//   CudaLane   (banzhaf_device_cuda.cuh): 32 lanes, shuffles, shared-memory atomics;
//   SerialLane (banzhaf_sampled_cpu.cpp, the cpu backend): one lane, reductions are identities, `+=`;
// so that hbi_ops::banzhaf_warp_game_* runs the GPU's per-coalition code on the CPU (the tests).
#pragma once
#include <climits>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HBI_WARP_FN __host__ __device__
#define HBI_WARP_INLINE __host__ __device__ __forceinline__
#else
#define HBI_WARP_FN
#define HBI_WARP_INLINE inline
#endif

namespace hbi {
namespace banzhaf_cuda {

HBI_WARP_INLINE float dev_exp(float x) { return expf(x); }
HBI_WARP_INLINE double dev_exp(double x) { return exp(x); }

template <typename T>
HBI_WARP_INLINE T mx(T a, T b) {
  return a < b ? b : a;
}  // std::max

// The pair's real players and its data at compact indices (load_pair fills it in shared memory).
template <typename acc_t>
struct PairData {
  int T, V, ld, nw, nf;
  int *words, *frames, *rank_w, *rank_f;
  acc_t *R, *wt, *wv;
};

template <typename acc_t>
struct DevGrads {
  acc_t *sim, *text_weight, *video_weight;  // compact: sim [nw * ld]
};

// Per-warp coalition state on compact indices:
// words a in [0, nw), frames b in [0, nf); i / j below are compact indices too (or -1).
// Softmax weights of one side of a value, k the player removed and possibly re-added: the other members t
// weigh E[t] g / Z, k itself (when added) e / Z.
template <typename acc_t>
struct DevWeights {
  const acc_t* E;
  acc_t g, e, Z;
};

// One side's softmax state for the warp's coalition, relative to the coalition's own largest logit
// (E1, E2, join factors per player; Z1, Z2, top warp-uniform).
template <typename acc_t, typename Lane>
struct DevSide {
  acc_t *E1, *E2, *join_g, *join_e;
  acc_t Z1, Z2;
  int top;

  HBI_WARP_FN void set(const acc_t* w, const uint8_t* in, int n, int lane) {
    const acc_t neg_inf = static_cast<acc_t>(-INFINITY);
    acc_t m1 = neg_inf;
    for (int k = lane; k < n; k += Lane::width)
      if (in[k]) m1 = mx(m1, w[k]);
    m1 = Lane::max(m1);
    int first = INT_MAX;
    for (int k = lane; k < n; k += Lane::width)
      if (in[k] && w[k] == m1 && k < first) first = k;
    first = Lane::min(first);
    top = first == INT_MAX ? -1 : first;
    acc_t m2 = neg_inf;
    for (int k = lane; k < n; k += Lane::width)
      if (in[k] && k != top) m2 = mx(m2, w[k]);
    m2 = Lane::max(m2);
    acc_t z1 = 0, z2 = 0;
    for (int k = lane; k < n; k += Lane::width) {
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
    Z1 = Lane::sum(z1);
    Z2 = Lane::sum(z2);
    Lane::sync();
  }

  HBI_WARP_FN DevWeights<acc_t> weights(int k, bool add) const {
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
