// One pair in shared memory: warp 0 compacts the real players (ballots), then the block loads the compact
// R and logits (PairData, banzhaf_warp_side.h). Used by the cells and value kernels.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "banzhaf/banzhaf_device_cuda.cuh"
#include "banzhaf/banzhaf_layout_cuda.cuh"
#include "banzhaf/banzhaf_warp_side.h"

namespace hbi {
namespace banzhaf_cuda {

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

}  // namespace banzhaf_cuda
}  // namespace hbi
