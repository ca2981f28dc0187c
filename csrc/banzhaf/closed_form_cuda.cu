// The exact textbook Banzhaf interaction by its closed form on CUDA, forward and backward: one block a
// pair running closed_form_block.h (the phases and their per-element code, which the CPU tests also run
// serially as hbi_ops::closed_form_block_*), with closed_form.h's formulas.
//
// The pair's intermediates live in a global workspace (L1/L2-resident: ~10 KB a pair at the full size);
// the node-factor tiles in shared memory.
//
// Floor (B = 128, T = 32 with 20 real words, V = 12, float32, H100): per pair ~150 nodes a side, 20 x 150
// + 12 x 150 exponentials and logs, 20^2 x 150 + 12^2 x 150 multiply-adds, ~12^2 x 20 + 20^2 x 12 compares
// for the sorts: ~0.1 Mflop a pair, 13 Mflop in all, far below a microsecond of the card; one wave of 128
// blocks of 256 threads, latency-bound by ~20 block barriers: a few microseconds plus the launch.
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

#include "banzhaf/closed_form_block.h"
#include "banzhaf/closed_form_cuda.h"

namespace hbi {
namespace closed_form {
namespace {

constexpr int kThreads = 256;

// The block policy of closed_form_block.h on the GPU.
// (__host__ __device__ as the code that calls it; only device code instantiates it.)
struct CudaBlock {
  static constexpr int size = kThreads;
  __host__ __device__ static int tid() {
#ifdef __CUDA_ARCH__
    return static_cast<int>(threadIdx.x);
#else
    return 0;
#endif
  }
  __host__ __device__ static void sync() {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  // Maximum over the block; scratch: kThreads / 32 slots.
  template <typename T>
  __host__ __device__ static T reduce_max(T x, T* scratch) {
#ifdef __CUDA_ARCH__
    for (int o = 16; o > 0; o >>= 1) x = larger(x, __shfl_xor_sync(0xffffffffu, x, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    T total = scratch[0];
    for (int k = 1; k < kThreads / 32; ++k) total = larger(total, scratch[k]);
    return total;
#else
    return x;
#endif
  }
};

template <typename acc_t>
__device__ BlockShared<acc_t> block_shared(unsigned char* raw, int T, int V, int* words, int* frames, int* counts) {
  acc_t* smem = reinterpret_cast<acc_t*>(raw);
  acc_t* values = smem + kFactorBytes / sizeof(acc_t);
  return {smem, values, values + 2 * larger(T, V), words, frames, counts};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    closed_form_forward_kernel(const scalar_t* __restrict__ sim, const bool* __restrict__ tm,
                               const bool* __restrict__ vm, const scalar_t* __restrict__ wt,
                               const scalar_t* __restrict__ wv, scalar_t* __restrict__ out, acc_t* workspace_all, int T,
                               int V) {
  extern __shared__ unsigned char raw[];
  __shared__ int words[kMaxPlayers], frames[kMaxPlayers], counts[2];
  const BlockShared<acc_t> sh = block_shared<acc_t>(raw, T, V, words, frames, counts);
  pair_forward<CudaBlock>(sim, tm, vm, wt, wv, out, workspace_all, blockIdx.x, T, V, sh);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    closed_form_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ sim,
                                const bool* __restrict__ tm, const bool* __restrict__ vm,
                                const scalar_t* __restrict__ wt, const scalar_t* __restrict__ wv,
                                scalar_t* __restrict__ grad_sim, scalar_t* __restrict__ grad_wt,
                                scalar_t* __restrict__ grad_wv, acc_t* workspace_all, int T, int V) {
  extern __shared__ unsigned char raw[];
  __shared__ int words[kMaxPlayers], frames[kMaxPlayers], counts[2];
  const BlockShared<acc_t> sh = block_shared<acc_t>(raw, T, V, words, frames, counts);
  pair_backward<CudaBlock>(grad, sim, tm, vm, wt, wv, grad_sim, grad_wt, grad_wv, workspace_all, blockIdx.x, T, V, sh);
}

template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void check_sizes(int T, int V) {
  TORCH_CHECK(T <= kMaxPlayers && V <= kMaxPlayers,
              "banzhaf_interaction (cuda): the exact estimator takes at "
              "most ",
              kMaxPlayers, " words and ", kMaxPlayers, " frames a pair, got T = ", T, ", V = ", V,
              "; use the triton or cpu backend");
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                        const at::Tensor& wv) {
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  auto out = at::zeros_like(sim);
  if (out.numel() == 0) return out;
  check_sizes(T, V);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sim.scalar_type(), "banzhaf_closed_form_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Workspace L = workspace(T, V, false);
    auto ws = at::empty({B * L.stride}, sim.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const size_t bytes = shared_bytes<acc_t>(T, V, kThreads / 32);
    auto kernel = closed_form_forward_kernel<scalar_t, acc_t>;
    allow_shared(kernel, bytes);
    kernel<<<static_cast<unsigned>(B), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
        sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(), wt.data_ptr<scalar_t>(),
        wv.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), ws.data_ptr<acc_t>(), T, V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad, const at::Tensor& sim,
                                                             const at::Tensor& tm, const at::Tensor& vm,
                                                             const at::Tensor& wt, const at::Tensor& wv) {
  const int64_t B = sim.size(0);
  const int T = static_cast<int>(sim.size(1)), V = static_cast<int>(sim.size(2));
  auto grad_sim = at::zeros_like(sim);
  auto grad_wt = at::zeros_like(wt);
  auto grad_wv = at::zeros_like(wv);
  if (sim.numel() == 0) return {grad_sim, grad_wt, grad_wv};
  check_sizes(T, V);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, sim.scalar_type(), "banzhaf_closed_form_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Workspace L = workspace(T, V, true);
        auto ws = at::empty({B * L.stride}, sim.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const size_t bytes = shared_bytes<acc_t>(T, V, kThreads / 32);
        auto kernel = closed_form_backward_kernel<scalar_t, acc_t>;
        allow_shared(kernel, bytes);
        kernel<<<static_cast<unsigned>(B), kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
            grad.data_ptr<scalar_t>(), sim.data_ptr<scalar_t>(), tm.data_ptr<bool>(), vm.data_ptr<bool>(),
            wt.data_ptr<scalar_t>(), wv.data_ptr<scalar_t>(), grad_sim.data_ptr<scalar_t>(),
            grad_wt.data_ptr<scalar_t>(), grad_wv.data_ptr<scalar_t>(), ws.data_ptr<acc_t>(), T, V);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_sim, grad_wt, grad_wv};
}

// hbi_ops::closed_form_block_{forward,backward} on CUDA tensors: the kernels themselves.
at::Tensor block_forward_cuda(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                              const at::Tensor& wv) {
  c10::cuda::CUDAGuard guard(sim.device());
  return forward_cuda(sim.contiguous(), tm.to(at::kBool).contiguous(), vm.to(at::kBool).contiguous(), wt.contiguous(),
                      wv.contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_backward_cuda(const at::Tensor& grad, const at::Tensor& sim,
                                                                   const at::Tensor& tm, const at::Tensor& vm,
                                                                   const at::Tensor& wt, const at::Tensor& wv) {
  c10::cuda::CUDAGuard guard(sim.device());
  return backward_cuda(grad.to(sim.scalar_type()).contiguous(), sim.contiguous(), tm.to(at::kBool).contiguous(),
                       vm.to(at::kBool).contiguous(), wt.contiguous(), wv.contiguous());
}

}  // namespace closed_form
}  // namespace hbi

TORCH_LIBRARY_IMPL(hbi_ops, CUDA, m) {
  m.impl("closed_form_block_forward", &hbi::closed_form::block_forward_cuda);
  m.impl("closed_form_block_backward", &hbi::closed_form::block_backward_cuda);
}
