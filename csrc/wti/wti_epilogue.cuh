// The per-pair epilogue of the wti_similarity forward (one warp per (text, video) pair: maxima, arg-maxima,
// score), called by the fused tensor-core kernel and by the fallback kernel over a block of S from at::mm.
#pragma once
#include <cstdint>

#include "wti/wti_device.cuh"
#include "wti/wti_rules.h"

namespace hbi {
namespace wti {

// ---------------------------------------------------------------------------------------------------------
// the per-pair epilogue: one warp, S of the pair at s[t * ld + v]
// ---------------------------------------------------------------------------------------------------------

// Row maxima over real frames (lanes over words), column maxima over real words (lanes over frames), first
// arg-max and validity by the rules of wti_rules.h (those of the CPU kernel), score by a butterfly sum (fixed order).
// Masks and weights may live in shared or global memory (generic pointers).
template <typename acc_t, typename weight_t, typename out_t>
__device__ __forceinline__ void pair_epilogue(const acc_t* s, int64_t ld, int T, int V, const bool* mt, const bool* mv,
                                              const weight_t* p, const weight_t* q, bool zero_padding, int lane,
                                              int32_t* t2v_out, int32_t* v2t_out, out_t* score_out) {
  int num_words = 0, num_frames = 0;
  for (int base = 0; base < T; base += kWarp) {
    const int t = base + lane;
    num_words += __popc(__ballot_sync(kFull, t < T && mt[t]));
  }
  for (int base = 0; base < V; base += kWarp) {
    const int v = base + lane;
    num_frames += __popc(__ballot_sync(kFull, v < V && mv[v]));
  }
  const bool zero_in_rows = zero_competes(zero_padding, num_frames, V);
  const bool zero_in_cols = zero_competes(zero_padding, num_words, T);
  acc_t partial = 0;
  for (int t = lane; t < T; t += kWarp) {
    int arg = -1;
    if (mt[t]) {
      acc_t best;
      const acc_t* row = s + static_cast<int64_t>(t) * ld;
      arg = first_max(V, [&](int v) { return row[v]; }, [&](int v) { return mv[v]; }, best);
      if (kept_maximum(arg, best, zero_in_rows)) {
        partial += static_cast<acc_t>(p[t]) * best;
      } else {
        arg = -1;
      }
    }
    t2v_out[t] = arg;
  }
  for (int v = lane; v < V; v += kWarp) {
    int arg = -1;
    if (mv[v]) {
      acc_t best;
      arg =
          first_max(T, [&](int t) { return s[static_cast<int64_t>(t) * ld + v]; }, [&](int t) { return mt[t]; }, best);
      if (kept_maximum(arg, best, zero_in_cols)) {
        partial += static_cast<acc_t>(q[v]) * best;
      } else {
        arg = -1;
      }
    }
    v2t_out[v] = arg;
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) partial += __shfl_xor_sync(kFull, partial, offset);
  if (lane == 0) *score_out = static_cast<out_t>(partial / 2);
}

// ---------------------------------------------------------------------------------------------------------
// forward, fallback: epilogue over a block of S computed by at::mm
// ---------------------------------------------------------------------------------------------------------

// S [texts * T, B * V] of texts a0 .. a0 + texts; one warp per pair.
template <typename scalar_t, typename acc_t>
__global__ void wti_forward_epilogue_kernel(const acc_t* __restrict__ sim, int64_t a0, int64_t texts, int64_t B, int T,
                                            int V, const scalar_t* __restrict__ text_weight,
                                            const scalar_t* __restrict__ video_weight,
                                            const bool* __restrict__ text_mask, const bool* __restrict__ video_mask,
                                            bool zero_padding, scalar_t* __restrict__ score, int32_t* __restrict__ t2v,
                                            int32_t* __restrict__ v2t) {
  const int lane = threadIdx.x % kWarp;
  const int64_t pair = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (pair >= texts * B) return;  // warp-uniform
  const int64_t a_local = pair / B, b = pair % B, a = a0 + a_local;
  const int64_t ld = B * V;
  const int64_t out = a * B + b;
  pair_epilogue<acc_t, scalar_t, scalar_t>(sim + a_local * T * ld + b * V, ld, T, V, text_mask + a * T,
                                           video_mask + b * V, text_weight + a * T, video_weight + b * V, zero_padding,
                                           lane, t2v + out * T, v2t + out * V, score + out);
}

}  // namespace wti
}  // namespace hbi
