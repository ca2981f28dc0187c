// CUDA kernels of hbi_ops::wti_similarity and hbi_ops::wti_similarity_backward (docs/wti.md).
// Same schemas, outputs and arg-max convention as csrc/wti/wti_cpu.cpp (read its header first):
//   t2v_argmax[a, b, t] = the real frame v whose S[a, b, t, v] is the first maximum of word t, or -1 when that
//   maximum is not a real entry (t padded; the video has no real frame; in zero-padding mode a masked 0 beats
//   every real entry, i.e. the video has padding and every real entry is < 0). v2t_argmax likewise, and
//   score[a, b] = 1/2 (sum_t p[a,t] S[a,b,t,i] + sum_v q[b,v] S[a,b,j,v]) over the non-negative indices.
//
// Forward, fused (float16 / bfloat16 on sm_80+, T <= 128, V <= 192): S is the GEMM X_flat [A*T, D] @
// Y_flat^T [D, B*V]. One block of 256 threads owns a tile of TA = 128 / T texts x TB = 192 / V videos, i.e. a
// 128 x 192 tile of that GEMM whose rows are contiguous rows of X_flat and whose columns are contiguous rows of
// Y_flat. Tensor cores (WMMA 16x16x16, fp32 accumulation; 8 warps as 2 x 4, 4 x 3 fragments each) run over D
// in steps of 32 with register-staged double buffering in shared memory; the fp32 tile then goes to shared
// memory (aliasing the staging buffers) and one warp per (a, b) pair takes row maxima (lanes over words),
// column maxima (lanes over frames), their first arg-max, and the score (butterfly shuffle sum: fixed order,
// deterministic). Only score [A, B] and the arg-max indices [A, B, T] / [A, B, V] are written: memory is
// O(A B (T + V)) for the kept indices, never O(A B T V).
// Fallback (float32 / float64: exact FMA arithmetic is needed for the float32 tolerance, TF32 would not do;
// larger T or V; pre-sm_80 cards): blocks of texts whose S holds at most 2^26 entries go through at::mm in the
// accumulation type (cuBLAS), and the same warp-per-pair epilogue reads that block. Temporary memory is bounded
// by the block (256 MB float32), not by A B T V.
//
// Backward, sparse from the kept indices, deterministic, no float atomics, two launches of one kernel:
//   pass 1 owns texts:  Z[a,t] = sum_b c Y[b, i(a,b,t)],  Wx[a,t] = sum_{b, v: j(a,b,v)=t} c q[b,v] Y[b,v]
//                       grad_X = p Z + Wx,  grad_p[a,t] = <X[a,t], Z[a,t]>           (c = grad_score[a,b] / 2)
//   pass 2 owns videos: the same with the roles of (X, p, i) and (Y, q, j) swapped.
// A block owns up to 128 "own rows" (several own items x their rows) and a 64-column slice of D; each warp
// owns rows warp, warp+8, ... (16 at most) and each lane two columns, so Z and W live in registers (64 fp32).
// For a batch of other items the block stages in shared memory c, the own-row indices and, per own row, a
// bitmask of the other rows whose index points at it (built with integer atomicOr: order-free, exact); the
// warps then gather the other side's feature rows (L1/L2-resident) in a fixed order. grad of the weights:
// per-slice warp sums into a [D / 64, N, L] buffer, summed over slices in fixed order by a small kernel.
//
// Floors at the GPU target (A = B = 1000, T = 32, V = 12, D = 512, fp16):
//   forward: 2 A B T V D = 393 GFLOP. H100 SXM dense fp16 tensor-core peak ~989 TFLOP/s (wgmma; mma.sync/WMMA
//     reaches roughly 60% of it) -> 0.40 ms floor (~0.65 ms for mma.sync); bytes: X 32.8 MB + Y 12.3 MB read,
//     score 2 MB + indices A B (T + V) 4 B = 176 MB written -> 0.066 ms at 3.35 TB/s (0.052 ms at 4.24 TB/s on
//     H200). Compute-bound: expected ~1-1.5 ms for this WMMA kernel (mma.sync, no TMA/wgmma), vs 14.7 ms torch.
//   backward: 2 passes x A B (T + V) D = 45 G gathered elements, one fp32 FMA each (90 GFLOP) -> 1.8 ms at
//     51 TFLOP/s; but every FMA needs its own gathered fp16 element (2 bytes) from L1, and L1 at 128 B/clk/SM caps
//     that at 64 FMA/clk/SM -> ~2.7 ms for both passes on H100 SXM (the real floor of this formulation); DRAM:
//     read X, Y, indices 176 MB, write grads ~45 MB -> 0.07 ms. Expected ~3-5 ms vs 22.8 ms torch backward.
//     (A dense tensor-core formulation, grad_X = M Y_flat with M [A T, B V] built from the indices, would be
//     4 x 393 GFLOP in TF32: not cheaper.)
// Not measured yet: this file was written and compiled on a machine without a GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

// ---------------------------------------------------------------------------------------------------------
// argument checks (same messages as the CPU kernel, CUDA flavour)
// ---------------------------------------------------------------------------------------------------------

void check_float_cuda(const at::Tensor& tensor, const char* op, const char* name, int64_t dim,
                      const at::Device& device) {
  TORCH_CHECK(tensor.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(tensor.device() == device, op, " (cuda kernel): ", name, " must be on ", device, ", got ",
              tensor.device());
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", tensor.scalar_type());
  TORCH_CHECK(tensor.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ", tensor.sizes());
}

void check_shape(const at::Tensor& tensor, const char* op, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(tensor.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ", tensor.sizes());
}

void check_same_dtype(const at::Tensor& tensor, const char* op, const char* name, const at::Tensor& text) {
  TORCH_CHECK(tensor.scalar_type() == text.scalar_type(), op, ": ", name, " has dtype ", tensor.scalar_type(),
              " but text has ", text.scalar_type(), "; all features and weights must share one dtype");
}

// ---------------------------------------------------------------------------------------------------------
// the per-pair epilogue: one warp, S of the pair at s[t * ld + v]
// ---------------------------------------------------------------------------------------------------------

// Row maxima over real frames (lanes over words), column maxima over real words (lanes over frames), first
// arg-max, validity as in the CPU kernel, score by a butterfly sum (fixed order). Masks and weights may live in
// shared or global memory (generic pointers).
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
  const bool zero_in_rows = zero_padding && num_frames < V;
  const bool zero_in_cols = zero_padding && num_words < T;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  acc_t partial = 0;
  for (int t = lane; t < T; t += kWarp) {
    int arg = -1;
    if (mt[t]) {
      acc_t best = neg_inf;
      const acc_t* row = s + static_cast<int64_t>(t) * ld;
      for (int v = 0; v < V; ++v) {
        if (!mv[v]) continue;
        const acc_t value = row[v];
        if (value > best) {
          best = value;
          arg = v;
        }
      }
      if (arg >= 0 && !(zero_in_rows && best < 0)) {
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
      acc_t best = neg_inf;
      for (int t = 0; t < T; ++t) {
        if (!mt[t]) continue;
        const acc_t value = s[static_cast<int64_t>(t) * ld + v];
        if (value > best) {
          best = value;
          arg = t;
        }
      }
      if (arg >= 0 && !(zero_in_cols && best < 0)) {
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

constexpr int64_t kFallbackEntries = int64_t{1} << 26;

template <typename scalar_t>
void forward_fallback(const at::Tensor& text, const at::Tensor& video, const at::Tensor& text_weight,
                      const at::Tensor& video_weight, const at::Tensor& text_mask, const at::Tensor& video_mask,
                      bool zero_padding, at::Tensor& score, at::Tensor& t2v, at::Tensor& v2t) {
  using acc_t = at::opmath_type<scalar_t>;
  // Exact float32 products whatever torch.backends.cuda.matmul.allow_tf32 says: TF32 would move the maxima
  at::NoTF32Guard disable_tf32;
  const int64_t A = text.size(0), T = text.size(1), D = text.size(2);
  const int64_t B = video.size(0), V = video.size(1);
  const auto acc = text.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const at::Tensor x = text.to(acc).contiguous().view({A * T, D});
  const at::Tensor y_t = video.to(acc).contiguous().view({B * V, D}).t();
  const int64_t per_text = std::max<int64_t>(1, T * B * V);
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(A, kFallbackEntries / per_text));
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t a0 = 0; a0 < A; a0 += block) {
    const int64_t texts = std::min(block, A - a0);
    const at::Tensor sim = at::mm(x.narrow(0, a0 * T, texts * T), y_t).contiguous();  // [texts*T, B*V]
    const int64_t warps = texts * B;
    constexpr int threads = 256;
    const int64_t blocks = (warps * kWarp + threads - 1) / threads;
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "wti_similarity: too many pairs");
    wti_forward_epilogue_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        sim.const_data_ptr<acc_t>(), a0, texts, B, static_cast<int>(T), static_cast<int>(V),
        text_weight.const_data_ptr<scalar_t>(), video_weight.const_data_ptr<scalar_t>(),
        text_mask.const_data_ptr<bool>(), video_mask.const_data_ptr<bool>(), zero_padding, score.data_ptr<scalar_t>(),
        t2v.data_ptr<int32_t>(), v2t.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t>
bool forward_fused(const at::Tensor& text, const at::Tensor& video, const at::Tensor& text_weight,
                   const at::Tensor& video_weight, const at::Tensor& text_mask, const at::Tensor& video_mask,
                   bool zero_padding, at::Tensor& score, at::Tensor& t2v, at::Tensor& v2t) {
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
    const int64_t A = text.size(0), T = text.size(1), D = text.size(2);
    const int64_t B = video.size(0), V = video.size(1);
    if (T < 1 || V < 1 || T > fused::kRows || V > fused::kCols) return false;
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    // sm_86 / sm_89 (99 KB a block, 576 bytes short; kLdC must stay a multiple of 4 for wmma) take the fallback
    if (props->major < 8 || props->sharedMemPerBlockOptin < fused::kSmemBytes) return false;
    const int TA = static_cast<int>(fused::kRows / T), TB = static_cast<int>(fused::kCols / V);
    const int64_t tiles_a = (A + TA - 1) / TA, tiles_b = (B + TB - 1) / TB;
    if (tiles_a * tiles_b > std::numeric_limits<int32_t>::max()) return false;
    const bool vector = D % 8 == 0 && reinterpret_cast<uintptr_t>(text.const_data_ptr()) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(video.const_data_ptr()) % 16 == 0;
    auto kernel =
        vector ? fused::wti_forward_fused_kernel<scalar_t, true> : fused::wti_forward_fused_kernel<scalar_t, false>;
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(fused::kSmemBytes)));
    kernel<<<static_cast<unsigned>(tiles_a * tiles_b), fused::kThreads, fused::kSmemBytes,
             at::cuda::getCurrentCUDAStream()>>>(
        text.const_data_ptr<scalar_t>(), video.const_data_ptr<scalar_t>(), text_weight.const_data_ptr<scalar_t>(),
        video_weight.const_data_ptr<scalar_t>(), text_mask.const_data_ptr<bool>(), video_mask.const_data_ptr<bool>(), A,
        B, static_cast<int>(T), static_cast<int>(V), D, TA, TB, tiles_b, zero_padding, score.data_ptr<scalar_t>(),
        t2v.data_ptr<int32_t>(), v2t.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return true;
  } else {
    return false;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> wti_similarity_cuda(const at::Tensor& text, const at::Tensor& video,
                                                                   const at::Tensor& text_weight,
                                                                   const at::Tensor& video_weight,
                                                                   const at::Tensor& text_mask,
                                                                   const at::Tensor& video_mask, bool zero_padding) {
  constexpr const char* op = "wti_similarity";
  TORCH_CHECK(text.defined(), "wti_similarity: text is undefined");
  const at::Device device = text.device();
  TORCH_CHECK(device.is_cuda(), "wti_similarity (cuda kernel): text must be a CUDA tensor, got ", device);
  check_float_cuda(text, op, "text", 3, device);
  check_float_cuda(video, op, "video", 3, device);
  const int64_t A = text.size(0), T = text.size(1), D = text.size(2);
  const int64_t B = video.size(0), V = video.size(1);
  TORCH_CHECK(video.size(2) == D, "wti_similarity: video must have the feature width D = ", D,
              " of text (shape [B, V, ", D, "]), got shape ", video.sizes());
  check_same_dtype(video, op, "video", text);
  check_float_cuda(text_weight, op, "text_weight", 2, device);
  check_shape(text_weight, op, "text_weight", {A, T});
  check_same_dtype(text_weight, op, "text_weight", text);
  check_float_cuda(video_weight, op, "video_weight", 2, device);
  check_shape(video_weight, op, "video_weight", {B, V});
  check_same_dtype(video_weight, op, "video_weight", text);
  for (auto [mask, name, rows, length] :
       {std::make_tuple(&text_mask, "text_mask", A, T), std::make_tuple(&video_mask, "video_mask", B, V)}) {
    TORCH_CHECK(mask->defined(), "wti_similarity: ", name, " is undefined");
    TORCH_CHECK(mask->device() == device, "wti_similarity (cuda kernel): ", name, " must be on ", device, ", got ",
                mask->device());
    TORCH_CHECK(mask->scalar_type() == at::kBool, "wti_similarity: ", name, " must be a bool tensor, got ",
                mask->scalar_type());
    check_shape(*mask, op, name, {rows, length});
  }
  TORCH_CHECK(T < (int64_t{1} << 30) && V < (int64_t{1} << 30),
              "wti_similarity: too many words or frames for int32 arg-max indices");

  c10::cuda::CUDAGuard guard(device);
  at::Tensor score = at::empty({A, B}, text.options());
  at::Tensor t2v = at::empty({A, B, T}, text.options().dtype(at::kInt));
  at::Tensor v2t = at::empty({A, B, V}, text.options().dtype(at::kInt));
  if (A == 0 || B == 0) return {score, t2v, v2t};
  const at::Tensor x = text.contiguous(), y = video.contiguous();
  const at::Tensor p = text_weight.contiguous(), q = video_weight.contiguous();
  const at::Tensor mt = text_mask.contiguous(), mv = video_mask.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, text.scalar_type(), "wti_similarity_cuda", [&] {
    if (!forward_fused<scalar_t>(x, y, p, q, mt, mv, zero_padding, score, t2v, v2t)) {
      forward_fallback<scalar_t>(x, y, p, q, mt, mv, zero_padding, score, t2v, v2t);
    }
  });
  return {score, t2v, v2t};
}

// ---------------------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------------------

namespace bwd {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int kRowsPerWarp = 16;
constexpr int kRows = kWarps * kRowsPerWarp;  // own rows per block (128)
constexpr int kVec = 2;                       // columns per lane
constexpr int kCols = kWarp * kVec;           // D slice per block (64)
constexpr size_t kSmemBudget = 40 * 1024;

template <typename scalar_t, typename acc_t, bool kVector>
__device__ __forceinline__ void load2(const scalar_t* src, int64_t d, int64_t D, acc_t out[kVec]) {
  if (kVector) {  // D even and an aligned base: both columns are inside (d < D, d even)
    if constexpr (std::is_same_v<scalar_t, at::Half>) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(src));
      out[0] = f.x;
      out[1] = f.y;
    } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(src));
      out[0] = f.x;
      out[1] = f.y;
#else
      out[0] = static_cast<acc_t>(src[0]);
      out[1] = static_cast<acc_t>(src[1]);
#endif
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      const float2 f = *reinterpret_cast<const float2*>(src);
      out[0] = f.x;
      out[1] = f.y;
    } else {
      const double2 f = *reinterpret_cast<const double2*>(src);
      out[0] = f.x;
      out[1] = f.y;
    }
  } else {
    out[0] = static_cast<acc_t>(src[0]);
    out[1] = d + 1 < D ? static_cast<acc_t>(src[1]) : acc_t(0);
  }
}

// One side of the backward ("own" items n, rows r; "other" items m, rows l); pair (n, m) = n*ps_own + m*ps_oth.
//   own_idx[pair, r] : the other row of own row r (-1: none), oth_idx[pair, l] : the own row of other row l.
//   z[n,r] = sum_m c F_oth[m, own_idx],   w[n,r] = sum_{m, l: oth_idx = r} c w_oth[m,l] F_oth[m,l]
//   grad_own[n,r] = w_own[n,r] z + w,     partial[slice, n, r] = <F_own[n,r], z> over the block's columns.
// Grid (1-D): own groups x row chunks x D slices, slices fastest. A block: `items` own items x `chunk` rows
// each (<= kRows).
template <typename scalar_t, bool kVector>
__global__ void __launch_bounds__(kThreads)
    wti_backward_side_kernel(const at::opmath_type<scalar_t>* __restrict__ grad, const scalar_t* __restrict__ own,
                             const scalar_t* __restrict__ own_weight, const scalar_t* __restrict__ oth,
                             const scalar_t* __restrict__ oth_weight, const int32_t* __restrict__ own_idx,
                             const int32_t* __restrict__ oth_idx, int64_t n_own, int64_t n_oth, int L_own, int L_oth,
                             int64_t D, int64_t ps_own, int64_t ps_oth, int items, int chunk, int chunks, int batch,
                             int words, scalar_t* __restrict__ grad_own, at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int R = items * chunk;
  acc_t* c_s = reinterpret_cast<acc_t*>(smem_raw);                    // [items][batch]
  int32_t* idx_s = reinterpret_cast<int32_t*>(c_s + items * batch);   // [batch][R]
  uint32_t* mask_s = reinterpret_cast<uint32_t*>(idx_s + batch * R);  // [batch][R][words]

  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  // Blocks: D slices fastest, so the slices of one group run together and share its index reads in L2
  const int64_t slices = (D + kCols - 1) / kCols;
  const int64_t slice = blockIdx.x % slices, block = blockIdx.x / slices;
  const int64_t group = block / chunks;
  const int r0 = static_cast<int>(block % chunks) * chunk;  // first own row of the chunk
  const int64_t n0 = group * items;
  const int64_t d = slice * kCols + lane * kVec;
  const bool lane_active = d < D;

  acc_t z[kRowsPerWarp][kVec], w[kRowsPerWarp][kVec];
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k)
#pragma unroll
    for (int e = 0; e < kVec; ++e) z[k][e] = w[k][e] = acc_t(0);

  int c_row[kRowsPerWarp];  // offset of the row's own item in c_s (row / chunk is costly in the inner loop)
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) c_row[k] = ((warp + k * kWarps) / chunk) * batch;

  for (int64_t m0 = 0; m0 < n_oth; m0 += batch) {
    const int in_batch = static_cast<int>(std::min<int64_t>(batch, n_oth - m0));
    __syncthreads();  // the previous batch is done with the staging area
    for (int i = tid; i < in_batch * R * words; i += kThreads) mask_s[i] = 0u;
    for (int i = tid; i < items * in_batch; i += kThreads) {
      const int item = i / in_batch, ml = i % in_batch;
      const int64_t n = n0 + item;
      c_s[item * batch + ml] = n < n_own ? grad[n * ps_own + (m0 + ml) * ps_oth] / 2 : acc_t(0);
    }
    for (int i = tid; i < in_batch * R; i += kThreads) {
      const int ml = i / R, row = i % R, item = row / chunk, r = r0 + row % chunk;
      const int64_t n = n0 + item;
      int32_t idx = -1;
      if (n < n_own && r < L_own) {
        idx = own_idx[(n * ps_own + (m0 + ml) * ps_oth) * L_own + r];
        if (idx >= L_oth) idx = -1;  // out of range: ignored (the op does not sync to validate)
      }
      idx_s[i] = idx;
    }
    __syncthreads();
    for (int64_t i = tid; i < int64_t{items} * in_batch * L_oth; i += kThreads) {
      const int l = static_cast<int>(i % L_oth);
      const int64_t rest = i / L_oth;
      const int ml = static_cast<int>(rest % in_batch), item = static_cast<int>(rest / in_batch);
      const int64_t n = n0 + item;
      if (n >= n_own) continue;
      const int32_t r = oth_idx[(n * ps_own + (m0 + ml) * ps_oth) * L_oth + l];
      if (r < r0 || r >= r0 + chunk || r >= L_own) continue;
      const int row = item * chunk + (r - r0);
      atomicOr(&mask_s[(static_cast<int64_t>(ml) * R + row) * words + (l >> 5)], 1u << (l & 31));
    }
    __syncthreads();

    for (int ml = 0; ml < in_batch; ++ml) {
      const int64_t m = m0 + ml;
      const scalar_t* oth_m = oth + m * L_oth * D + d;
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        const int row = warp + k * kWarps;
        if (row >= R) break;  // warp-uniform
        const acc_t c = c_s[c_row[k] + ml];
        if (c == acc_t(0)) continue;
        const int32_t idx = idx_s[ml * R + row];
        if (idx >= 0 && lane_active) {
          acc_t y[kVec];
          load2<scalar_t, acc_t, kVector>(oth_m + static_cast<int64_t>(idx) * D, d, D, y);
#pragma unroll
          for (int e = 0; e < kVec; ++e) z[k][e] += c * y[e];
        }
        const uint32_t* bits_row = mask_s + (static_cast<int64_t>(ml) * R + row) * words;
        for (int word = 0; word < words; ++word) {
          uint32_t bits = bits_row[word];
          while (bits) {  // warp-uniform: every lane reads the same word
            const int l = word * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            if (lane_active) {
              const acc_t coef = c * static_cast<acc_t>(oth_weight[m * L_oth + l]);
              acc_t y[kVec];
              load2<scalar_t, acc_t, kVector>(oth_m + static_cast<int64_t>(l) * D, d, D, y);
#pragma unroll
              for (int e = 0; e < kVec; ++e) w[k][e] += coef * y[e];
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) {
    const int row = warp + k * kWarps;
    if (row >= R) break;
    const int64_t n = n0 + row / chunk;
    const int r = r0 + row % chunk;
    if (n >= n_own || r >= L_own) continue;  // warp-uniform
    const int64_t own_row = n * L_own + r;
    acc_t dot = 0;
    if (lane_active) {
      const acc_t pw = static_cast<acc_t>(own_weight[own_row]);
      acc_t f[kVec];
      load2<scalar_t, acc_t, kVector>(own + own_row * D + d, d, D, f);
      scalar_t* out = grad_own + own_row * D + d;
      out[0] = static_cast<scalar_t>(pw * z[k][0] + w[k][0]);
      if (d + 1 < D) out[1] = static_cast<scalar_t>(pw * z[k][1] + w[k][1]);
      dot = f[0] * z[k][0] + (d + 1 < D ? f[1] * z[k][1] : acc_t(0));
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(kFull, dot, offset);
    if (lane == 0) partial[slice * n_own * L_own + own_row] = dot;
  }
}

// out[i] = sum over slices s of partial[s, i], in slice order.
template <typename scalar_t>
__global__ void sum_slices_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, int64_t slices, int64_t count,
                                  scalar_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  at::opmath_type<scalar_t> sum = 0;
  for (int64_t s = 0; s < slices; ++s) sum += partial[s * count + i];
  out[i] = static_cast<scalar_t>(sum);
}

template <typename scalar_t>
void side(const at::Tensor& grad, const at::Tensor& own, const at::Tensor& own_weight, const at::Tensor& oth,
          const at::Tensor& oth_weight, const at::Tensor& own_idx, const at::Tensor& oth_idx, int64_t ps_own,
          int64_t ps_oth, at::Tensor& grad_own, at::Tensor& grad_own_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_own = own.size(0), L_own = own.size(1), D = own.size(2);
  const int64_t n_oth = oth.size(0), L_oth = oth.size(1);
  if (n_own == 0 || L_own == 0 || D == 0) return;  // nothing to write (grad_own_weight stays zero)
  if (n_oth == 0 || L_oth == 0) {
    grad_own.zero_();
    return;
  }
  const int chunk = static_cast<int>(std::min<int64_t>(L_own, kRows));
  const int chunks = static_cast<int>((L_own + chunk - 1) / chunk);
  const int items = L_own >= kRows ? 1 : static_cast<int>(std::min<int64_t>(n_own, kRows / L_own));
  const int R = items * chunk;
  const int words = static_cast<int>((L_oth + 31) / 32);
  const int64_t per_item = int64_t{items} * sizeof(acc_t) + int64_t{R} * 4 * (1 + words);
  const int batch = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(64, kSmemBudget / per_item)));
  const size_t smem = static_cast<size_t>(per_item * batch) + 16;
  const int64_t groups = (n_own + items - 1) / items;
  const int64_t slices = (D + kCols - 1) / kCols;
  TORCH_CHECK(groups * chunks * slices <= std::numeric_limits<int32_t>::max(),
              "wti_similarity_backward: too many rows or features for one launch");
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(smem <= props->sharedMemPerBlockOptin,
              "wti_similarity_backward (cuda kernel): too many words or frames (", L_oth, ")");
  at::Tensor partial = at::empty({slices, n_own, L_own}, own.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const bool vector = D % 2 == 0 && reinterpret_cast<uintptr_t>(oth.const_data_ptr()) % (2 * sizeof(scalar_t)) == 0 &&
                      reinterpret_cast<uintptr_t>(own.const_data_ptr()) % (2 * sizeof(scalar_t)) == 0;
  auto kernel = vector ? wti_backward_side_kernel<scalar_t, true> : wti_backward_side_kernel<scalar_t, false>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  kernel<<<static_cast<unsigned>(groups * chunks * slices), kThreads, smem, stream>>>(
      grad.const_data_ptr<acc_t>(), own.const_data_ptr<scalar_t>(), own_weight.const_data_ptr<scalar_t>(),
      oth.const_data_ptr<scalar_t>(), oth_weight.const_data_ptr<scalar_t>(), own_idx.const_data_ptr<int32_t>(),
      oth_idx.const_data_ptr<int32_t>(), n_own, n_oth, static_cast<int>(L_own), static_cast<int>(L_oth), D, ps_own,
      ps_oth, items, chunk, chunks, batch, words, grad_own.data_ptr<scalar_t>(), partial.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t count = n_own * L_own;
  sum_slices_kernel<scalar_t><<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), slices, count, grad_own_weight.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace bwd

void check_index_cuda(const at::Tensor& tensor, const char* name, at::IntArrayRef expected, const at::Device& device) {
  TORCH_CHECK(tensor.defined(), "wti_similarity_backward: ", name, " is undefined");
  TORCH_CHECK(tensor.device() == device, "wti_similarity_backward (cuda kernel): ", name, " must be on ", device,
              ", got ", tensor.device());
  TORCH_CHECK(tensor.scalar_type() == at::kInt, "wti_similarity_backward: ", name, " must be int32, got ",
              tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == expected, "wti_similarity_backward: ", name, " must have shape ", expected, ", got ",
              tensor.sizes());
  // Values are not range-checked here (that would synchronise with the host): the kernel ignores indices
  // outside [0, length) instead of reading out of bounds.
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wti_similarity_backward_cuda(
    const at::Tensor& grad_score, const at::Tensor& text, const at::Tensor& video, const at::Tensor& text_weight,
    const at::Tensor& video_weight, const at::Tensor& t2v_argmax, const at::Tensor& v2t_argmax) {
  constexpr const char* op = "wti_similarity_backward";
  TORCH_CHECK(text.defined(), "wti_similarity_backward: text is undefined");
  const at::Device device = text.device();
  TORCH_CHECK(device.is_cuda(), "wti_similarity_backward (cuda kernel): text must be a CUDA tensor, got ", device);
  check_float_cuda(text, op, "text", 3, device);
  check_float_cuda(video, op, "video", 3, device);
  const int64_t A = text.size(0), T = text.size(1), D = text.size(2);
  const int64_t B = video.size(0), V = video.size(1);
  TORCH_CHECK(video.size(2) == D, "wti_similarity_backward: video must have the feature width D = ", D,
              " of text, got shape ", video.sizes());
  check_same_dtype(video, op, "video", text);
  check_float_cuda(text_weight, op, "text_weight", 2, device);
  check_shape(text_weight, op, "text_weight", {A, T});
  check_same_dtype(text_weight, op, "text_weight", text);
  check_float_cuda(video_weight, op, "video_weight", 2, device);
  check_shape(video_weight, op, "video_weight", {B, V});
  check_same_dtype(video_weight, op, "video_weight", text);
  check_float_cuda(grad_score, op, "grad_score", 2, device);
  check_shape(grad_score, op, "grad_score", {A, B});
  check_index_cuda(t2v_argmax, "t2v_argmax", {A, B, T}, device);
  check_index_cuda(v2t_argmax, "v2t_argmax", {A, B, V}, device);
  TORCH_CHECK(T < (int64_t{1} << 30) && V < (int64_t{1} << 30), "wti_similarity_backward: too many words or frames");

  c10::cuda::CUDAGuard guard(device);
  const at::Tensor x = text.contiguous(), y = video.contiguous();
  const at::Tensor p = text_weight.contiguous(), q = video_weight.contiguous();
  const at::Tensor i = t2v_argmax.contiguous(), j = v2t_argmax.contiguous();
  at::Tensor grad_text = at::empty_like(x), grad_video = at::empty_like(y);
  at::Tensor grad_text_weight = at::zeros_like(p), grad_video_weight = at::zeros_like(q);
  if (A == 0 || B == 0) {
    grad_text.zero_();
    grad_video.zero_();
    return {grad_text, grad_video, grad_text_weight, grad_video_weight};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, text.scalar_type(), "wti_similarity_backward_cuda", [&] {
    // the incoming gradient in the accumulate type, as the cpu kernel reads it (not rounded to float16 first)
    const at::Tensor g = grad_score.to(c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value).contiguous();
    // pass 1 owns texts: own rows t, own index t2v, other index v2t; pair (a, b) = a*B + b
    bwd::side<scalar_t>(g, x, p, y, q, i, j, B, 1, grad_text, grad_text_weight);
    // pass 2 owns videos: own rows v, own index v2t, other index t2v; pair (b, a) = a*B + b
    bwd::side<scalar_t>(g, y, q, x, p, j, i, 1, B, grad_video, grad_video_weight);
  });
  return {grad_text, grad_video, grad_text_weight, grad_video_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) {
  m.impl("wti_similarity", &wti_similarity_cuda);
  m.impl("wti_similarity_backward", &wti_similarity_backward_cuda);
}
