// The fused tensor-core forward kernel of wti_similarity for float16 / bfloat16 (wti_cuda.cu describes it).
#pragma once
#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "wti/wti_device.cuh"
#include "wti/wti_epilogue.cuh"

namespace hbi {
namespace wti {

// ---------------------------------------------------------------------------------------------------------
// forward, fused tensor-core kernel (float16 / bfloat16)
// ---------------------------------------------------------------------------------------------------------

namespace fused {

constexpr int kRows = 128;        // tile rows: TA texts x T words
constexpr int kCols = 192;        // tile columns: TB videos x V frames
constexpr int kK = 32;            // D step
constexpr int kThreads = 256;     // 8 warps: 2 (rows) x 4 (columns)
constexpr int kLdStage = kK + 8;  // halves per staged row (80 bytes: 32-byte aligned fragments, fewer conflicts)
constexpr int kLdC = kCols + 4;   // floats per row of the fp32 tile
constexpr int kWarpRows = 64, kWarpCols = 48;
constexpr int kFragRows = kWarpRows / 16, kFragCols = kWarpCols / 16;  // 4 x 3 fragments per warp
constexpr int kStageElems = (kRows + kCols) * kLdStage;                // one stage, in 16-bit elements
constexpr size_t kStageBytes = 2 * kStageElems * 2;                    // two stages
constexpr size_t kTileBytes = size_t{kRows} * kLdC * sizeof(float);
constexpr size_t kMainBytes = kTileBytes > kStageBytes ? kTileBytes : kStageBytes;
// after the main buffer: masks (bytes) and weights (floats) of the tile's rows and columns
constexpr size_t kSmemBytes = kMainBytes + kRows * sizeof(float) + kCols * sizeof(float) + kRows + kCols;
constexpr int kVecPerRow = kK / 8;                     // 16-byte vectors per staged row
constexpr int kXVecs = kRows * kVecPerRow / kThreads;  // 2 per thread
constexpr int kYVecs = kCols * kVecPerRow / kThreads;  // 3 per thread
static_assert(kRows * kVecPerRow % kThreads == 0 && kCols * kVecPerRow % kThreads == 0, "tile split");
static_assert(kTileBytes % 16 == 0 && kStageElems * 2 % 32 == 0, "alignment");

template <typename T>
struct WmmaType;
template <>
struct WmmaType<at::Half> {
  using type = __half;
};
template <>
struct WmmaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// 8 consecutive 16-bit elements of row `row` (< rows) at column k0 of a [rows, D] matrix, zero beyond D or rows.
template <bool kVector>
__device__ __forceinline__ uint4 load8(const uint16_t* base, int64_t row, int64_t rows, int64_t D, int64_t k0) {
  uint4 out = make_uint4(0, 0, 0, 0);
  if (row >= rows) return out;
  const uint16_t* src = base + row * D + k0;
  if (kVector) {  // D % 8 == 0 and a 16-byte aligned base: the vector is entirely inside or outside
    if (k0 < D) out = __ldg(reinterpret_cast<const uint4*>(src));
  } else {
    uint16_t v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = (k0 + e < D) ? __ldg(src + e) : uint16_t{0};
    out.x = v[0] | (uint32_t{v[1]} << 16);
    out.y = v[2] | (uint32_t{v[3]} << 16);
    out.z = v[4] | (uint32_t{v[5]} << 16);
    out.w = v[6] | (uint32_t{v[7]} << 16);
  }
  return out;
}

template <typename scalar_t, bool kVector>
__global__ void __launch_bounds__(kThreads, 1)
    wti_forward_fused_kernel(const scalar_t* __restrict__ text, const scalar_t* __restrict__ video,
                             const scalar_t* __restrict__ text_weight, const scalar_t* __restrict__ video_weight,
                             const bool* __restrict__ text_mask, const bool* __restrict__ video_mask, int64_t A,
                             int64_t B, int T, int V, int64_t D, int TA, int TB, int64_t tiles_b, bool zero_padding,
                             scalar_t* __restrict__ score, int32_t* __restrict__ t2v, int32_t* __restrict__ v2t) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using mma_t = typename WmmaType<scalar_t>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  uint16_t* stage = reinterpret_cast<uint16_t*>(smem);  // [2][kRows + kCols][kLdStage]
  float* tile = reinterpret_cast<float*>(smem);         // [kRows][kLdC], after the GEMM
  float* p_s = reinterpret_cast<float*>(smem + kMainBytes);
  float* q_s = p_s + kRows;
  bool* mt_s = reinterpret_cast<bool*>(q_s + kCols);
  bool* mv_s = mt_s + kRows;

  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  const int64_t tile_a = blockIdx.x / tiles_b, tile_b = blockIdx.x % tiles_b;
  const int64_t a0 = tile_a * TA, b0 = tile_b * TB;
  // rows of this tile: rows a0*T .. of X_flat (at most TA*T of them, fewer at the end); same for columns
  const int64_t row0 = a0 * T, col0 = b0 * V;
  const int64_t rows = std::min<int64_t>(int64_t{TA} * T, A * T - row0);
  const int64_t cols = std::min<int64_t>(int64_t{TB} * V, B * V - col0);
  const uint16_t* x = reinterpret_cast<const uint16_t*>(text) + row0 * D;
  const uint16_t* y = reinterpret_cast<const uint16_t*>(video) + col0 * D;

  for (int r = tid; r < kRows; r += kThreads) {
    const bool real = r < rows;
    mt_s[r] = real ? text_mask[row0 + r] : false;
    p_s[r] = real ? static_cast<float>(text_weight[row0 + r]) : 0.f;
  }
  for (int c = tid; c < kCols; c += kThreads) {
    const bool real = c < cols;
    mv_s[c] = real ? video_mask[col0 + c] : false;
    q_s[c] = real ? static_cast<float>(video_weight[col0 + c]) : 0.f;
  }

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragRows][kFragCols];
#pragma unroll
  for (int i = 0; i < kFragRows; ++i)
#pragma unroll
    for (int j = 0; j < kFragCols; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  const int warp_row = (warp / 4) * kWarpRows, warp_col = (warp % 4) * kWarpCols;
  const int64_t steps = (D + kK - 1) / kK;
  uint4 x_reg[kXVecs], y_reg[kYVecs];
  auto fetch = [&](int64_t k0) {
#pragma unroll
    for (int i = 0; i < kXVecs; ++i) {
      const int vec = tid + i * kThreads, r = vec / kVecPerRow, kv = vec % kVecPerRow;
      x_reg[i] = load8<kVector>(x, r, rows, D, k0 + kv * 8);
    }
#pragma unroll
    for (int i = 0; i < kYVecs; ++i) {
      const int vec = tid + i * kThreads, r = vec / kVecPerRow, kv = vec % kVecPerRow;
      y_reg[i] = load8<kVector>(y, r, cols, D, k0 + kv * 8);
    }
  };
  auto store = [&](int buffer) {
    uint16_t* xs = stage + buffer * kStageElems;
    uint16_t* ys = xs + kRows * kLdStage;
#pragma unroll
    for (int i = 0; i < kXVecs; ++i) {
      const int vec = tid + i * kThreads, r = vec / kVecPerRow, kv = vec % kVecPerRow;
      *reinterpret_cast<uint4*>(xs + r * kLdStage + kv * 8) = x_reg[i];
    }
#pragma unroll
    for (int i = 0; i < kYVecs; ++i) {
      const int vec = tid + i * kThreads, r = vec / kVecPerRow, kv = vec % kVecPerRow;
      *reinterpret_cast<uint4*>(ys + r * kLdStage + kv * 8) = y_reg[i];
    }
  };

  if (steps > 0) {
    fetch(0);
    store(0);
  }
  __syncthreads();
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = static_cast<int>(step & 1);
    if (step + 1 < steps) fetch((step + 1) * kK);  // global loads in flight during the MMAs
    const mma_t* xs = reinterpret_cast<const mma_t*>(stage + buffer * kStageElems);
    const mma_t* ys = xs + kRows * kLdStage;
#pragma unroll
    for (int kk = 0; kk < kK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> a_frag[kFragRows];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> b_frag[kFragCols];
#pragma unroll
      for (int i = 0; i < kFragRows; ++i)
        wmma::load_matrix_sync(a_frag[i], xs + (warp_row + i * 16) * kLdStage + kk, kLdStage);
#pragma unroll
      for (int j = 0; j < kFragCols; ++j)  // B(k, c) = Y[c][k]: column-major with leading dimension kLdStage
        wmma::load_matrix_sync(b_frag[j], ys + (warp_col + j * 16) * kLdStage + kk, kLdStage);
#pragma unroll
      for (int i = 0; i < kFragRows; ++i)
#pragma unroll
        for (int j = 0; j < kFragCols; ++j) wmma::mma_sync(acc[i][j], a_frag[i], b_frag[j], acc[i][j]);
    }
    // the other buffer was last read in step - 1, which every thread finished before the barrier of step - 1
    if (step + 1 < steps) store(buffer ^ 1);
    __syncthreads();
  }
  // every warp is past the last barrier: the staging buffers are free for the fp32 tile
#pragma unroll
  for (int i = 0; i < kFragRows; ++i)
#pragma unroll
    for (int j = 0; j < kFragCols; ++j)
      wmma::store_matrix_sync(tile + (warp_row + i * 16) * kLdC + warp_col + j * 16, acc[i][j], kLdC,
                              wmma::mem_row_major);
  __syncthreads();

  const int pairs = TA * TB;
  for (int pair = warp; pair < pairs; pair += kThreads / kWarp) {
    const int a_local = pair / TB, b_local = pair % TB;
    const int64_t a = a0 + a_local, b = b0 + b_local;
    if (a >= A || b >= B) continue;  // warp-uniform
    const int r = a_local * T, c = b_local * V;
    const int64_t out = a * B + b;
    pair_epilogue<float, float, scalar_t>(tile + r * kLdC + c, kLdC, T, V, mt_s + r, mv_s + c, p_s + r, q_s + c,
                                          zero_padding, lane, t2v + out * T, v2t + out * V, score + out);
  }
#else
  __trap();  // only PTX for an older architecture, JIT-compiled on a newer card: fail loudly, write nothing
#endif
}

}  // namespace fused

}  // namespace wti
}  // namespace hbi
