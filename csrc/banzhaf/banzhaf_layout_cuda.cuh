// Shared-memory layouts of the cells and value kernels and the per-(pair, chunk) workspace strides: the
// same functions on the host (sizes, launch heuristics) and in the kernels (offsets).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "banzhaf/banzhaf_device_cuda.cuh"
#include "banzhaf/banzhaf_warp_unit.h"

namespace hbi {
namespace banzhaf_cuda {

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

// ------------------------------------------------------------------------------------------------
// The cells kernel's (banzhaf_cells_cuda.cu): the pair, the block's gradient sinks, then one region a warp.

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

// ------------------------------------------------------------------------------------------------
// The value kernel's (banzhaf_value_cuda.cu): the pair, member bits and f(S) of a round, stratum sums.

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

}  // namespace banzhaf_cuda
}  // namespace hbi
