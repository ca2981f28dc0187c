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
//
// This file: argument checks, launch heuristics (fused or fallback path, block sizes, shared memory), the entry
// points and their registration; the kernels are in wti_forward_fused.cuh, wti_epilogue.cuh and
// wti_backward_kernels.cuh, the max / arg-max and padding rules in wti_rules.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "wti/wti_backward_kernels.cuh"
#include "wti/wti_epilogue.cuh"
#include "wti/wti_forward_fused.cuh"

namespace {

using namespace hbi::wti;

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

// video's dtype, then text_weight [A, T] and video_weight [B, V] (after text and video are checked).
void check_weights(const char* op, const at::Tensor& text, const at::Tensor& video, const at::Tensor& text_weight,
                   const at::Tensor& video_weight, const at::Device& device) {
  const int64_t A = text.size(0), T = text.size(1), B = video.size(0), V = video.size(1);
  check_same_dtype(video, op, "video", text);
  check_float_cuda(text_weight, op, "text_weight", 2, device);
  check_shape(text_weight, op, "text_weight", {A, T});
  check_same_dtype(text_weight, op, "text_weight", text);
  check_float_cuda(video_weight, op, "video_weight", 2, device);
  check_shape(video_weight, op, "video_weight", {B, V});
  check_same_dtype(video_weight, op, "video_weight", text);
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
  check_weights(op, text, video, text_weight, video_weight, device);
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

template <typename scalar_t>
void backward_side(const at::Tensor& grad, const at::Tensor& own, const at::Tensor& own_weight, const at::Tensor& oth,
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
  const int chunk = static_cast<int>(std::min<int64_t>(L_own, bwd::kRows));
  const int chunks = static_cast<int>((L_own + chunk - 1) / chunk);
  const int items = L_own >= bwd::kRows ? 1 : static_cast<int>(std::min<int64_t>(n_own, bwd::kRows / L_own));
  const int R = items * chunk;
  const int words = static_cast<int>((L_oth + 31) / 32);
  const int64_t per_item = int64_t{items} * sizeof(acc_t) + int64_t{R} * 4 * (1 + words);
  const int batch = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(64, bwd::kSmemBudget / per_item)));
  const size_t smem = static_cast<size_t>(per_item * batch) + 16;
  const int64_t groups = (n_own + items - 1) / items;
  const int64_t slices = (D + bwd::kCols - 1) / bwd::kCols;
  TORCH_CHECK(groups * chunks * slices <= std::numeric_limits<int32_t>::max(),
              "wti_similarity_backward: too many rows or features for one launch");
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(smem <= props->sharedMemPerBlockOptin,
              "wti_similarity_backward (cuda kernel): too many words or frames (", L_oth, ")");
  at::Tensor partial = at::empty({slices, n_own, L_own}, own.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const bool vector = D % 2 == 0 && reinterpret_cast<uintptr_t>(oth.const_data_ptr()) % (2 * sizeof(scalar_t)) == 0 &&
                      reinterpret_cast<uintptr_t>(own.const_data_ptr()) % (2 * sizeof(scalar_t)) == 0;
  auto kernel = vector ? bwd::wti_backward_side_kernel<scalar_t, true> : bwd::wti_backward_side_kernel<scalar_t, false>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  kernel<<<static_cast<unsigned>(groups * chunks * slices), bwd::kThreads, smem, stream>>>(
      grad.const_data_ptr<acc_t>(), own.const_data_ptr<scalar_t>(), own_weight.const_data_ptr<scalar_t>(),
      oth.const_data_ptr<scalar_t>(), oth_weight.const_data_ptr<scalar_t>(), own_idx.const_data_ptr<int32_t>(),
      oth_idx.const_data_ptr<int32_t>(), n_own, n_oth, static_cast<int>(L_own), static_cast<int>(L_oth), D, ps_own,
      ps_oth, items, chunk, chunks, batch, words, grad_own.data_ptr<scalar_t>(), partial.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t count = n_own * L_own;
  bwd::sum_slices_kernel<scalar_t><<<static_cast<unsigned>((count + 255) / 256), 256, 0, stream>>>(
      partial.const_data_ptr<acc_t>(), slices, count, grad_own_weight.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

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
  check_weights(op, text, video, text_weight, video_weight, device);
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
    backward_side<scalar_t>(g, x, p, y, q, i, j, B, 1, grad_text, grad_text_weight);
    // pass 2 owns videos: own rows v, own index v2t, other index t2v; pair (b, a) = a*B + b
    backward_side<scalar_t>(g, y, q, x, p, j, i, 1, B, grad_video, grad_video_weight);
  });
  return {grad_text, grad_video, grad_text_weight, grad_video_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) {
  m.impl("wti_similarity", &wti_similarity_cuda);
  m.impl("wti_similarity_backward", &wti_similarity_backward_cuda);
}
