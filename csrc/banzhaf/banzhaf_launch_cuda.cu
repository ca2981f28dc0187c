// banzhaf_interaction on CUDA: forward and backward of the paired and msr estimators and of the exact
// reference definition, the same function as csrc/banzhaf/banzhaf_cpu.cpp (same Philox coalitions, the same
// per-pair game code, which the CPU runs with one lane: banzhaf_sampled_cpu.cpp) up to float rounding.
// The exact textbook index goes to its closed form (closed_form_cuda.cu). This file: the launch heuristics
// (units, chunks, warps), the two ops and their registration. The rest, by role:
//   banzhaf_device_cuda.cuh   constants, warp primitives, the lane policy CudaLane;
//   banzhaf_layout_cuda.cuh   shared-memory layouts, workspace strides;
//   banzhaf_pair_cuda.cuh     the pair into shared memory;
//   banzhaf_warp_side.h, banzhaf_warp_game.h, banzhaf_warp_unit.h  the game of a pair for a warp's
//                             coalition (WarpGame) and one unit of the cells kernel, host and device code
//                             over a lane policy: the cpu backend runs them with one lane
//                             (banzhaf_sampled_cpu.cpp);
//   banzhaf_cells_cuda.cu, banzhaf_value_cuda.cu  the kernels and their launchers (banzhaf_kernels_cuda.h);
//   banzhaf_finalize_cuda.cuh the reductions over chunks.
//
// Design.
// * Every kernel block handles one pair b and one chunk of coalitions ("units": Philox samples, or subset
//   codes for the exact estimator), grid = B * chunks (1-D). The number of chunks depends on B, the number
//   of units and the warps per block (fewer when shared memory is short: large T * V on cards with less
//   than an H100's), so the forward is deterministic on a card, and across cards up to rounding.
// * Block prologue: warp 0 compacts the real words/frames (ballots), the pair's R and weight logits go to
//   shared memory in compact form (real players only, row stride odd to avoid bank conflicts).
// * Softmax weights are taken per coalition relative to its own largest logit (DevSide): exact for any finite logits.
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
#include <cstdint>
#include <string>

#include "banzhaf/banzhaf_args.h"
#include "banzhaf/banzhaf_finalize_cuda.cuh"
#include "banzhaf/banzhaf_kernels_cuda.h"
#include "banzhaf/banzhaf_layout_cuda.cuh"
#include "banzhaf/closed_form_cuda.h"

namespace hbi {
namespace banzhaf_cuda {

constexpr int kMaxChunks = 64;

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

// Warps per block of the cells kernel: 4, fewer when the per-warp state would not fit.
template <typename acc_t>
int cells_warps(int T, int V, int mode) {
  const size_t limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  int warps = 4;
  while (warps > 1 && cells_layout<acc_t>(T, V, warps, mode).total > limit) warps /= 2;
  return warps;
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
