// The launchers of the cells and value kernels (banzhaf_cells_cuda.cu, banzhaf_value_cuda.cu, instantiated
// there for float, double, half and bfloat16), called by banzhaf_launch_cuda.cu; inputs prepared by it.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cuda_runtime.h>

#include <cstdint>

#include "banzhaf/banzhaf_args.h"

namespace hbi {
namespace banzhaf_cuda {

using banzhaf::Estimator;
using banzhaf::Settings;

template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes, int T, int V) {
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(bytes <= prop->sharedMemPerBlockOptin, "banzhaf_interaction (cuda): T = ", T, ", V = ", V, " needs ",
              bytes, " bytes of shared memory per block, more than this device's ", prop->sharedMemPerBlockOptin,
              "; use the triton or cpu backend for such sizes");
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// mode: a CellsMode (banzhaf_layout_cuda.cuh).
template <typename scalar_t, int kMode>
void launch_cells(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                  const at::Tensor& wv, const at::Tensor* grad, const at::Tensor* gw, at::Tensor& ws, int chunks,
                  int64_t units, const Settings& s, double unit_scale, int warps);

template <typename scalar_t>
void launch_value(const at::Tensor& sim, const at::Tensor& tm, const at::Tensor& vm, const at::Tensor& wt,
                  const at::Tensor& wv, at::Tensor& ws, int chunks, int64_t units, const Settings& s);

}  // namespace banzhaf_cuda
}  // namespace hbi
