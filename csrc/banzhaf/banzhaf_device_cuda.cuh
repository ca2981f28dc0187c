// Constants and warp primitives of the sampled estimators' CUDA kernels (banzhaf_cells_cuda.cu,
// banzhaf_value_cuda.cu); banzhaf_launch_cuda.cu has the design.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "banzhaf/banzhaf_args.h"

namespace hbi {
namespace banzhaf_cuda {

constexpr int kWarp = 32;
using banzhaf::kMaxExactPlayers;
constexpr int kValueThreads = 128;  // coalitions per round of the value kernel
constexpr unsigned kFull = 0xffffffffu;

// ------------------------------------------------------------------------------------------------
// Device helpers

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T mx(T a, T b) {
  return a < b ? b : a;
}  // std::max

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  // Butterfly: every lane ends with the same value (each step adds the same two operands).
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}
template <typename T>
__device__ __forceinline__ T warp_max(T x) {
  for (int o = 16; o > 0; o >>= 1) x = mx(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

}  // namespace banzhaf_cuda
}  // namespace hbi
